"""Per-round metrics: lambda disagreement, client parameter drift, reward smoothness, client-update
conflict and Pareto stationarity."""

from __future__ import annotations

import math

import pytest
import torch

from firm_ray.core.metrics import (
    UpdateConflict,
    disagreement,
    param_drift,
    pareto_stationarity,
    smoothness,
)


def test_disagreement_of_identical_lambdas_is_zero():
    assert disagreement([[0.2, 0.3, 0.5]] * 4) == 0.0
    assert disagreement(torch.tensor([[0.5, 0.5]])) == 0.0


def test_disagreement_of_single_client_is_zero():
    assert disagreement([[1.0, 0.0, 0.0]]) == 0.0


@pytest.mark.parametrize("lambdas", [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
def test_disagreement_of_opposite_vertices(lambdas):
    assert disagreement(lambdas) == pytest.approx(math.sqrt(2) / 2)


def test_disagreement_three_clients_by_hand():
    lambdas = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    # mean = (0.5, 0.5); distances: sqrt(0.5), sqrt(0.5), 0 -> mean sqrt(0.5) * 2 / 3
    assert disagreement(lambdas) == pytest.approx(2 * math.sqrt(0.5) / 3)
    lambdas2 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    # mean = 1/3 each; each distance sqrt((2/3)^2 + 2 (1/3)^2) = sqrt(6)/3
    assert disagreement(torch.tensor(lambdas2)) == pytest.approx(math.sqrt(6) / 3)


def test_disagreement_is_permutation_invariant_and_float32_ok():
    gen = torch.Generator().manual_seed(0)
    lam = torch.softmax(torch.randn(10, 3, generator=gen), dim=1)
    perm = torch.randperm(10, generator=gen)
    assert disagreement(lam) == pytest.approx(disagreement(lam[perm]))
    assert disagreement(lam.float()) == pytest.approx(disagreement(lam.double()), rel=1e-6)


@pytest.mark.parametrize(
    "bad", [[], [[]], [0.5, 0.5], [[[0.5, 0.5]]], [[0.5, float("nan")]], [[1.0], [1.0, 2.0]]]
)
def test_disagreement_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        disagreement(bad)


def test_param_drift_by_hand():
    new_global = {"a": torch.zeros(2), "b": torch.zeros(1, 1)}
    clients = [
        {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])},  # distance 5
        {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([[0.0]])},  # distance 1
        {"a": torch.zeros(2), "b": torch.zeros(1, 1)},  # distance 0
    ]
    assert param_drift(clients, new_global) == pytest.approx(2.0)


def test_param_drift_iterates_once_over_a_generator():
    new_global = {"w": torch.ones(4)}
    seen = []

    def clients():
        for i in range(3):
            seen.append(i)
            yield {"w": torch.ones(4) + i}  # distance = i * 2

    assert param_drift(clients(), new_global) == pytest.approx((0 + 2 + 4) / 3)
    assert seen == [0, 1, 2]


def test_param_drift_rejects_empty_and_mismatched():
    with pytest.raises(ValueError, match="at least one"):
        param_drift([], {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="'w'"):
        param_drift([{"w": torch.ones(2)}], {"w": torch.ones(3)})


def test_smoothness_of_linear_ramp_is_zero():
    hist = [[0.1 * r, 1.0 - 0.2 * r] for r in range(10)]
    assert smoothness(hist) == pytest.approx([0.0, 0.0], abs=1e-12)


def test_smoothness_of_alternating_series():
    # changes of 0,1,0,1: +1,-1,+1 -> mean 1/3, population std sqrt(8/9)
    hist = torch.tensor([[0.0, 5.0], [1.0, 5.0], [0.0, 5.0], [1.0, 5.0]])
    result = smoothness(hist)
    assert result == pytest.approx([math.sqrt(8) / 3, 0.0])
    # long alternation: changes +-a with ~zero mean -> std close to a
    long = [[2.0 * (r % 2)] for r in range(1001)]
    assert smoothness(long)[0] == pytest.approx(2.0, rel=1e-5)


def test_smoothness_matches_numpy_population_std():
    import numpy as np

    gen = np.random.default_rng(0)
    hist = gen.normal(size=(20, 3))
    expected = np.diff(hist, axis=0).std(axis=0, ddof=0)
    assert smoothness(hist.tolist()) == pytest.approx(expected.tolist())


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_smoothness_needs_two_changes(rounds):
    hist = torch.arange(rounds * 2, dtype=torch.float32).reshape(rounds, 2) ** 2
    assert smoothness(hist) == [0.0, 0.0]


@pytest.mark.parametrize("bad", [[1.0, 2.0, 3.0], [[1.0], [float("inf")], [2.0]]])
def test_smoothness_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        smoothness(bad)


# ------------------------------------------------------------------------- update conflict
def _flat(state):
    return torch.cat([t.reshape(-1).double() for t in state.values()])


def _brute_force(deltas):
    flats = [_flat(d) for d in deltas]
    cos = [
        float(torch.dot(a, b) / (a.norm() * b.norm())) if a.norm() and b.norm() else 0.0
        for i, a in enumerate(flats)
        for b in flats[i + 1 :]
    ]
    norms = [float(f.norm()) for f in flats]
    mean = torch.stack(flats).mean(dim=0)
    return sum(cos) / len(cos), float(mean.norm()) / (sum(norms) / len(norms))


def _conflict(deltas):
    acc = UpdateConflict()
    for d in deltas:
        acc.add(d)
    return acc.result()


@pytest.mark.parametrize("n", [2, 3, 7])
def test_update_conflict_matches_brute_force_pairwise(n):
    gen = torch.Generator().manual_seed(n)
    shared = torch.randn(5, 3, generator=gen)
    deltas = [
        {
            "a": (shared + torch.randn(5, 3, generator=gen)).float(),  # partly agreeing
            "b": torch.randn(4, generator=gen).to(torch.bfloat16),
        }
        for _ in range(n)
    ]
    cosine, coherence = _brute_force(deltas)
    got = _conflict(deltas)
    assert got["update_cosine"] == pytest.approx(cosine, rel=1e-12, abs=1e-12)
    assert got["update_coherence"] == pytest.approx(coherence, rel=1e-12)
    assert -1.0 <= got["update_cosine"] <= 1.0 and 0.0 <= got["update_coherence"] <= 1.0


def test_update_conflict_known_cases():
    d = {"w": torch.tensor([3.0, 4.0])}
    same = _conflict([d, {"w": torch.tensor([6.0, 8.0])}])
    assert same["update_cosine"] == pytest.approx(1.0) and same["update_coherence"] == 1.0
    opposite = _conflict([d, {"w": -d["w"]}])
    assert opposite == {"update_cosine": pytest.approx(-1.0), "update_coherence": 0.0}
    orthogonal = _conflict([{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])}])
    assert orthogonal["update_cosine"] == pytest.approx(0.0, abs=1e-15)
    assert orthogonal["update_coherence"] == pytest.approx(math.sqrt(5) / 2 / 1.5)
    # a client that did not move: orthogonal to everyone, 0 in both sums
    still = _conflict([d, d, {"w": torch.zeros(2)}])
    assert still["update_cosine"] == pytest.approx(1 / 3)
    assert still["update_coherence"] == pytest.approx(1.0)
    assert _conflict([{"w": torch.zeros(2)}] * 2) == {
        "update_cosine": 0.0,
        "update_coherence": None,
    }


def test_update_conflict_needs_two_clients_and_is_order_free():
    assert _conflict([]) == {"update_cosine": None, "update_coherence": None}
    assert _conflict([{"w": torch.ones(3)}]) == {"update_cosine": None, "update_coherence": None}
    gen = torch.Generator().manual_seed(1)
    deltas = [{"w": torch.randn(10, generator=gen)} for _ in range(5)]
    forward, backward = _conflict(deltas), _conflict(deltas[::-1])
    assert forward["update_cosine"] == pytest.approx(backward["update_cosine"], rel=1e-12)


def test_update_conflict_rejects_bad_deltas_before_changing_anything():
    acc = UpdateConflict()
    acc.add({"w": torch.ones(2)})
    with pytest.raises(ValueError, match="shape of 'w'"):
        acc.add({"w": torch.ones(3)})
    with pytest.raises(ValueError, match="missing"):
        acc.add({"v": torch.ones(2)})
    with pytest.raises(ValueError, match="not finite"):
        acc.add({"w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="empty"):
        UpdateConflict().add({})
    assert acc.count == 1
    acc.add({"w": torch.ones(2)})
    assert acc.result()["update_cosine"] == pytest.approx(1.0)


# ------------------------------------------------------------------------- Pareto stationarity
def test_pareto_stationarity_known_cases():
    g = torch.tensor([3.0, 4.0, 0.0])
    assert pareto_stationarity(torch.stack([g, -g])) == pytest.approx(0.0, abs=1e-12)
    assert pareto_stationarity(torch.stack([g, g])) == pytest.approx(5.0)
    assert pareto_stationarity(g[None]) == pytest.approx(5.0)  # one objective: ||g||
    # orthogonal equal norms: the midpoint, ||(g1 + g2) / 2|| = sqrt(2) / 2
    assert pareto_stationarity(torch.eye(2)) == pytest.approx(math.sqrt(2) / 2)
    # the min-norm point of a segment between a and b lies on it: here at (0, 1)
    segment = torch.tensor([[-1.0, 1.0], [2.0, 1.0]])
    assert pareto_stationarity(segment) == pytest.approx(1.0)


def test_pareto_stationarity_three_objectives_vs_brute_force():
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    steps = torch.linspace(0, 1, 201, dtype=torch.float64)
    best = min(
        float(torch.linalg.vector_norm(a * grads[0] + b * grads[1] + (1 - a - b) * grads[2]))
        for a in steps
        for b in steps
        if a + b <= 1
    )
    got = pareto_stationarity(grads)
    assert got <= best + 1e-12 and got == pytest.approx(best, rel=1e-2)


@pytest.mark.parametrize(
    "bad", [torch.zeros(0, 3), torch.zeros(3), torch.tensor([[1.0, float("inf")]])]
)
def test_pareto_stationarity_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        pareto_stationarity(bad)
