"""The algorithm plug-ins: registry, options, dotted paths, torchjd weightings, definitions."""

from __future__ import annotations

import pytest
import torch

from firm_ray.algorithms import REGISTRY, Algorithm, build_algorithm, build_strategy, resolve
from firm_ray.algorithms.jd import AGGREGATORS, available_aggregators, missing_extra
from firm_ray.algorithms.jd_projector import BvlsProjector
from firm_ray.config import (
    ALGORITHMS,
    MULTI_OBJECTIVE_ALGORITHMS,
    ConfigError,
    config_from_dict,
    dump_config,
    load_config,
)
from firm_ray.core import firm_weights
from firm_ray.federation import FedAvgStrategy, Strategy
from firm_ray.trainer.losses import advantages


class Halves(Algorithm):
    """A test-defined algorithm (loaded by dotted path): lambda = (1/2, 1/2) whatever p is."""

    def direction(self, grads, losses, preference, proximal):
        lam = torch.full_like(preference, 0.5)
        return lam, lam.to(grads.dtype) @ grads, lam


class EveryOther(FedAvgStrategy):
    """Server state and a custom selection: even clients, then odd ones; counts its rounds."""

    def __init__(self, config, trajectories: int = 1) -> None:
        super().__init__(config, trajectories)
        self.rounds = 0

    def configure_round(self, round_index: int) -> list[int]:
        n = self.config.federation.num_clients
        return list(range(round_index % 2, n, 2)) if round_index >= 0 else [n]

    def state_dict(self) -> dict:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = state["rounds"]


class Counting(Algorithm):
    """A test-defined algorithm with server state (the aggregator checkpoints it)."""

    def strategy(self, config) -> EveryOther:
        return EveryOther(config)


def cfg(*overrides: str):
    return load_config(None, list(overrides))


def test_registry_matches_the_config_constants() -> None:
    assert set(REGISTRY) == set(ALGORITHMS)
    multi = {n for n, c in REGISTRY.items() if c.min_objectives >= 2}
    assert multi == set(MULTI_OBJECTIVE_ALGORITHMS)
    assert {n: c.default_optimizer for n, c in REGISTRY.items()}["fmgda"] == "sgd"
    assert all(c.default_optimizer == "adamw" for n, c in REGISTRY.items() if n != "fmgda")
    assert REGISTRY["fmgda"].payload == "objective_deltas"
    assert all(c.label for c in REGISTRY.values())


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["algorithm.beta=-1.0"], "algorithm.beta = -1.0: must be >= 0"),
        (["algorithm.bta=1"], "algorithm.bta: unknown key (did you mean 'beta'?)"),
        (["algorithm.name=frm"], "algorithm.name = 'frm': must be one of centralized, fedavg_ls"),
        (["algorithm.name=fedavg_ls", "algorithm.scalarization=sum"], "algorithm.scalarization"),
        (["algorithm.name=jd", "algorithm.aggregator=nope"], "algorithm.aggregator = 'nope'"),
        (["algorithm.name=nowhere.mod:X"], "algorithm.name = 'nowhere.mod:X': cannot import"),
        (["algorithm.name=test_algorithms:cfg"], "algorithm.name = 'test_algorithms:cfg': "),
    ],
)
def test_option_errors_are_one_line(overrides, expected) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(*overrides)
    assert "\n" not in str(info.value) and str(info.value).startswith(expected), str(info.value)


def test_a_key_of_another_algorithm_is_dropped_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"algorithm.beta: not an option of algorithm 'fedavg_ls'"):
        c = cfg("algorithm.name=fedavg_ls", "algorithm.beta=0.5")
    assert "beta" not in c.algorithm.options() and c.algorithm.option("beta") is None
    assert c.algorithm.scalarization == "normalize_then_sum"
    again = config_from_dict(__import__("yaml").safe_load(dump_config(c)))
    assert again == c  # round-trips, and without the ignored key no second warning


def test_options_round_trip_and_assignment_is_validated() -> None:
    c = cfg("algorithm.beta=0.25", "algorithm.grad_norm=l2")
    assert (c.algorithm.beta, c.algorithm.grad_norm, c.algorithm.beta_scale) == (
        0.25,
        "l2",
        "relative",
    )
    assert config_from_dict(__import__("yaml").safe_load(dump_config(c))) == c
    with pytest.raises(ConfigError, match="must be >= 0"):
        c.algorithm.beta = -1.0
    assert c.algorithm.beta == 0.25  # the rejected value did not stay


def test_missing_torchjd_extra_names_the_pip_extra() -> None:
    unavailable = [a for a in AGGREGATORS if missing_extra(a)]
    for name in unavailable:
        with pytest.raises(ConfigError, match=r'pip install "torchjd\['):
            cfg("algorithm.name=jd", f"algorithm.aggregator={name}")
    for name in available_aggregators():
        assert cfg("algorithm.name=jd", f"algorithm.aggregator={name}").algorithm.aggregator


def test_dotted_path_algorithm_loads_and_runs_its_direction() -> None:
    c = cfg("algorithm.name=test_algorithms:Halves")
    algo = build_algorithm(c.algorithm, 2)
    assert isinstance(algo, Halves) and resolve("test_algorithms:Halves") is Halves
    grads = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    lam, direction, coef = algo.direction(grads, torch.zeros(2), torch.tensor([0.9, 0.1]), None)
    assert torch.equal(direction, torch.tensor([0.5, 1.5])) and torch.equal(lam, coef)
    strategy = build_strategy(c)
    assert isinstance(strategy, FedAvgStrategy) and strategy.state_dict() == {}


JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0], [1.0, -2.0, 0.5]], dtype=torch.float64)


@pytest.mark.parametrize("name", available_aggregators())
def test_jd_weights_are_torchjds_own(name) -> None:
    """lambda is what torchjd's Weighting gives; the direction is lambda @ J, as torchjd's
    Aggregator computes it from the same Jacobian."""
    import torchjd.aggregation as tja

    pref = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    algo = build_algorithm(
        cfg(
            "algorithm.name=jd",
            f"algorithm.aggregator={name}",
            "rewards=[{name: a, type: length}, {name: b, type: relevance}, {name: c, type: "
            "harmlessness}]",
        ).algorithm,
        3,
    )
    torch.manual_seed(0)
    lam, direction, coef = algo.direction(JACOBIAN, torch.zeros(3), pref, None)
    torch.manual_seed(0)
    spec = AGGREGATORS[name]
    weighting = getattr(tja, spec.weighting)
    own = (
        weighting(pref_vector=pref, projector=BvlsProjector())
        if spec.dual_cone
        else weighting(pref_vector=pref)
        if spec.uses_preference
        else weighting(alpha=1.0)
        if name == "fairgrad"
        else weighting()
    )
    expected = own(JACOBIAN @ JACOBIAN.T)
    assert torch.allclose(lam, expected, atol=1e-9)
    assert torch.allclose(direction, expected @ JACOBIAN, atol=1e-9)
    assert torch.equal(coef, lam)  # grad_norm none: scales are 1
    if name == "mgda":  # torchjd's Frank-Wolfe MGDA vs our exact min-norm solver
        ours = firm_weights(JACOBIAN @ JACOBIAN.T, 0.0)
        assert torch.allclose(lam / lam.sum(), ours, atol=2e-3)


def test_centralized_is_firms_update() -> None:
    grads = torch.randn(2, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pref = torch.tensor([0.3, 0.7], dtype=torch.float64)
    prox = torch.full((50,), 0.01, dtype=torch.float64)
    firm = build_algorithm(cfg("algorithm.beta=0.3", "algorithm.grad_norm=l2").algorithm, 2)
    central = build_algorithm(
        cfg(
            "algorithm.name=centralized",
            "algorithm.beta=0.3",
            "algorithm.grad_norm=l2",
            "federation.num_clients=1",
            "federation.clients_per_round=1.0",
        ).algorithm,
        2,
    )
    for a, b in zip(
        firm.direction(grads, torch.zeros(2), pref, prox),
        central.direction(grads, torch.zeros(2), pref, prox),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_scalarization_definitions_on_a_hand_checked_example() -> None:
    """TRL sums the rewards then normalizes; GDPO normalizes each then sums (with p).

    One group of two completions, rewards (r1, r2) = (0, 10) and (1, 0), p = (1/2, 1/2).
    GDPO: per-objective advantages (-1, +1) for r1 and (+1, -1) for r2 (std of 2 values
    normalizes each to unit size), so the p-weighted advantages cancel: (0, 0).
    TRL: R @ p = (5, 0.5), one advantage (+1, -1): the large-scale reward wins."""
    rewards = torch.tensor([[0.0, 10.0], [1.0, 0.0]])
    pref = torch.tensor([0.5, 0.5], dtype=torch.float64)
    gdpo = build_algorithm(cfg("algorithm.name=fedavg_ls").algorithm, 2)
    trl = build_algorithm(
        cfg("algorithm.name=fedavg_ls", "algorithm.scalarization=sum_then_normalize").algorithm, 2
    )
    r, p = gdpo.transform_rewards(rewards, pref)
    assert torch.equal(r, rewards) and torch.equal(p, pref)
    combined = advantages(r, group_size=2) @ p.float()
    assert torch.allclose(combined, torch.zeros(2), atol=1e-4)
    r, p = trl.transform_rewards(rewards, pref)
    assert torch.equal(r, torch.tensor([[5.0], [0.5]])) and torch.equal(p, torch.ones(1).double())
    adv = advantages(r, group_size=2)[:, 0]
    assert torch.allclose(adv, torch.tensor([1.0, -1.0]), atol=1e-4)


def test_fmgda_runs_one_one_hot_trajectory_per_objective() -> None:
    algo = build_algorithm(cfg("algorithm.name=fmgda").algorithm, 3)
    got = algo.trajectories(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    assert [t.tolist() for t in got] == [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    assert not algo.per_objective_gradients
    strategy = build_strategy(load_config(None, ["algorithm.name=fmgda"]))
    assert isinstance(strategy, Strategy) and strategy.trajectories == 2
