"""Secure aggregation's runtime pieces without Ray: the round parameters (range C + 6 s,
t = k // 2 + 1), flattening / splitting updates, the workers' client state (SecureClients) with
the library's server, the DP mean on the unmasked sum, and the config errors."""

from __future__ import annotations

import pytest
import torch

from firm_ray.config import ConfigError, load_config
from firm_ray.federation.combine import Combiner
from firm_ray.privacy import gaussian_like, noise_generator
from firm_ray.privacy.secagg import SecAggServer, decode_sum, fixed_point_scale, unpack
from firm_ray.privacy.secagg_vector import flatten_deltas, round_params, split_sum, threshold_of
from firm_ray.runtime.secagg_client import SecureClients, round_spec
from firm_ray.types import ClientUpdate

LAYOUT = {"b.weight": (3, 2), "a.weight": (2, 4)}  # not sorted: the adapter's own order


def _state(seed: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale for k, s in LAYOUT.items()}


def test_threshold_is_the_smallest_majority() -> None:
    for k in range(2, 40):
        t = threshold_of(k)
        assert 2 * t > k and 2 * (t - 1) <= k  # brute force: smallest t with t > k / 2
    with pytest.raises(ValueError, match="k >= 2"):
        threshold_of(1)


def test_round_params_cover_the_local_noise() -> None:
    p = round_params(0.5, 0.1, 10, 32)
    assert p.clip == pytest.approx(0.5 + 6 * 0.1) and p.threshold == 6 and p.bits == 32
    assert round_params(0.5, 0.0, 3, 20).clip == 0.5


def test_flatten_then_split_is_the_identity_in_the_adapters_order() -> None:
    deltas = [_state(1), _state(2)]
    vector = flatten_deltas(deltas, list(LAYOUT))
    expected = torch.cat([d[k].reshape(-1).double() for d in deltas for k in LAYOUT])
    assert torch.equal(vector, expected)
    back = split_sum(vector, LAYOUT)
    assert len(back) == 2
    for d, b in zip(deltas, back, strict=True):
        assert list(b) == list(LAYOUT)
        assert all(torch.equal(b[k], d[k].double()) for k in LAYOUT)
    with pytest.raises(ValueError, match="whole number"):
        split_sum(vector[:-1], LAYOUT)
    with pytest.raises(ValueError, match="not the adapter's"):
        flatten_deltas([{"a.weight": torch.zeros(2, 4)}], list(LAYOUT))


def _update(client: int, objective_deltas: list) -> ClientUpdate:
    return ClientUpdate(
        client_id=client, round=3, num_samples=4, objective_deltas=objective_deltas,
        metrics={"steps": 2.0},
    )  # fmt: skip


def test_worker_state_and_server_give_the_plain_sum_of_m_deltas() -> None:
    """Four clients (fmgda-like: 2 deltas each), one drops after masking: the unmasked,
    decoded sum of the other three equals the plain per-objective sums within n / scale."""
    k, reference = 4, _state(0, 1.0)
    params = round_params(0.05, 0.0, k, 32)
    spec = round_spec(params, k)
    workers = [SecureClients(), SecureClients()]  # clients of one worker in sequence
    uploads = {c: [_state(10 * c + 1), _state(10 * c + 2)] for c in range(k)}
    keys, worker_of = {}, {}
    for c in range(k):
        worker_of[c] = workers[c % 2]
        header, sent = worker_of[c].start(_update(c, uploads[c]), reference, spec)
        assert header.objective_deltas is None and header.payload == "objective_deltas"
        (keys[c],) = sent
    server = SecAggServer(params, k)
    roster = server.collect_keys(keys)
    routed = server.route_shares({c: worker_of[c].share(3, c, roster) for c in roster})
    masked = {c: worker_of[c].mask(3, c, routed[c]) for c in routed}
    for c in (0, 1, 3):  # client 2's masked vector never arrives
        packed, info = masked[c]
        assert info["clipped"] == 0.0 and info["seconds"] >= 0
        server.add_masked(c, unpack(packed, params))
    survivors, dropped = server.unmask_request()
    assert (survivors, dropped) == ([0, 1, 3], [2])
    total = server.finish({c: worker_of[c].unmask(3, c, survivors, dropped) for c in survivors})
    sums = split_sum(decode_sum(total, params, k), LAYOUT)
    resolution = k / fixed_point_scale(params, k)
    for m in range(2):
        for name in LAYOUT:
            plain = sum(uploads[c][m][name].double() for c in survivors)
            assert torch.allclose(sums[m][name], plain, rtol=0, atol=resolution)
    # the survivors' state is gone after unmasking; the dropped client's when a later round trains
    assert workers[0].held() == [(3, 2)] and workers[1].held() == []
    workers[0].start(ClientUpdate(client_id=0, round=4, num_samples=0), reference, spec)
    assert workers[0].held() == []
    with pytest.raises(ValueError, match="holds no state"):
        workers[0].share(3, 2, roster)


def test_non_finite_update_is_flagged_invalid_and_sends_no_keys() -> None:
    bad = _state(1)
    bad["a.weight"][0, 0] = float("nan")
    spec = round_spec(round_params(0.05, 0.0, 2, 32), 2)
    header, sent = SecureClients().start(_update(0, [bad]), _state(0), spec)
    assert sent == [] and not header.valid and header.reason == "non-finite values in the update"


def _config(*extra: str):
    return load_config(
        "tune_configs/quickstart.yaml",
        ["federation.num_clients=4", "federation.clients_per_round=1.0", *extra],
    )


def test_dp_mean_of_the_secure_sum_is_the_dp_mean_of_the_deltas() -> None:
    """The DP-FedAvg estimate from the unmasked sum equals (sum / k + noise): the same value
    and the same seeded noise as the plain DP mean of the k deltas."""
    cfg = _config(
        "privacy.clip=0.5", "privacy.noise_multiplier=1.0", "privacy.secure_aggregation=true"
    )
    reference = _state(0, 1.0)
    deltas = [_state(c + 1) for c in range(4)]
    total = {k: sum(d[k] for d in deltas) for k in LAYOUT}
    combiner = Combiner(cfg)
    combiner.set_secure_sums([total])
    secure = combiner.round(7).average(0, reference)
    secure.add({}, 1.0, 0)  # a placeholder: ignored
    got = secure.result()
    sigma_c = 1.0 * 0.5  # sigma * C, the std on the sum
    generator = noise_generator(cfg.experiment.seed, "dp_noise", 7, 0)
    draw = gaussian_like(total, sigma_c / 4, generator)
    for k in LAYOUT:
        assert torch.allclose(got[k], reference[k] + total[k] / 4 + draw[k], atol=1e-6)
    assert combiner.secure_sums is None  # consumed by that round
    plain = Combiner(cfg).round(7).average(0, reference)
    for c, d in enumerate(deltas):
        plain.add({k: reference[k] + d[k] for k in LAYOUT}, 1.0, c)
    expected = plain.result()  # once: every call draws the noise again
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in LAYOUT)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "needs privacy.clip"),
        (("privacy.clip=0.1", "robustness.aggregator=krum"), "needs the individual updates"),
        (("privacy.clip=0.1", "federation.clients_per_round=0.25"), "at least 2 clients"),
    ],
)
def test_config_errors(extra: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config("privacy.secure_aggregation=true", *extra)


def test_secagg_bits_range() -> None:
    assert _config("privacy.clip=0.1", "privacy.secure_aggregation=true").privacy.secagg_bits == 32
    with pytest.raises(ConfigError, match="secagg_bits"):
        _config("privacy.secagg_bits=8")
