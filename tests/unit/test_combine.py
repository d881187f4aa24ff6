"""The server's combination of a round's uploads (federation/combine.py) inside the real
strategies: FedAvg unchanged, DP-FedAvg's clipped and noised mean, robust rules, attacks."""

from __future__ import annotations

import math

import pytest
import torch

from firm_ray.algorithms import build_algorithm
from firm_ray.config import load_config
from firm_ray.core.aggregation import StreamingAverage, server_update, state_delta, state_norm
from firm_ray.federation import RoundFailed
from firm_ray.federation.combine import UNCLIPPED_KEY
from firm_ray.types import ClientUpdate


def _config(*overrides: str):
    return load_config(
        None, ["federation.num_clients=8", "federation.clients_per_round=0.5", *overrides]
    )


def _theta(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)}


def _update(client: int, theta, delta_scale: float, seed: int, **metrics) -> ClientUpdate:
    g = torch.Generator().manual_seed(100 + seed)
    adapter = {k: v + delta_scale * torch.randn(v.shape, generator=g) for k, v in theta.items()}
    return ClientUpdate(
        client_id=client,
        round=0,
        num_samples=10 + client,
        adapter=adapter,
        metrics={"steps": 2.0, "skipped_steps": 0.0, **metrics},
    )


def _strategy(config):
    return build_algorithm(config.algorithm, config.num_objectives).strategy(config)


def test_mean_is_fedavg_bit_for_bit():
    config = _config()
    theta = _theta()
    updates = [_update(c, theta, 0.1, c) for c in range(4)]
    result = _strategy(config).aggregate_round(0, theta, iter(updates), [])
    reference = StreamingAverage()
    for u in updates:
        reference.add(u.adapter, float(u.num_samples))
    expected = server_update(theta, reference.result(), 1.0)
    for k in theta:
        assert torch.equal(result.state[k], expected[k])
    assert result.metrics["aggregation"] == {"rule": "mean"}


def test_dp_mean_is_clipped_sum_over_k_with_calibrated_noise():
    """Without noise: theta + sum(clip(delta_i)) / k with uniform weights. With noise: the noise
    of the average has std sigma C / k (empirically, over many coordinates)."""
    clip = 0.5
    config = _config(f"privacy.clip={clip}")
    k = config.federation.clients_sampled_per_round
    theta = _theta()
    updates = [_update(c, theta, 0.01, c) for c in range(3)]  # small: within C (clients clipped)
    result = _strategy(config).aggregate_round(0, theta, iter(updates), [])
    expected = {k_: theta[k_] + sum(u.adapter[k_] - theta[k_] for u in updates) / k for k_ in theta}
    for name in theta:
        torch.testing.assert_close(result.state[name], expected[name], rtol=0, atol=1e-6)
    assert result.metrics["aggregation"]["server_clipped"] == []

    sigma = 2.0
    big = {"w": torch.zeros(200_000)}
    config = _config(f"privacy.clip={clip}", f"privacy.noise_multiplier={sigma}")
    zero = ClientUpdate(
        client_id=0, round=0, num_samples=1, adapter=dict(big), metrics={"steps": 1.0}
    )
    result = _strategy(config).aggregate_round(0, big, iter([zero]), [])
    noise = result.state["w"]
    assert float(noise.std()) == pytest.approx(sigma * clip / k, rel=0.01)
    assert abs(float(noise.mean())) < 5 * sigma * clip / k / math.sqrt(noise.numel())
    assert result.metrics["aggregation"]["noise_std"] == pytest.approx(sigma * clip / k)


def test_one_clients_influence_is_bounded_by_clip_over_k():
    """Replacing one client's update by an arbitrary one moves the (noise-free part of the)
    average by at most 2C / k; a client that did not clip is clipped by the server, counted."""
    clip = 0.3
    config = _config(f"privacy.clip={clip}", "privacy.noise_multiplier=1.0")
    k = config.federation.clients_sampled_per_round
    theta = _theta()
    honest = [_update(c, theta, 0.001, c) for c in range(3)]
    liar = _update(3, theta, 1000.0, 3)  # ignored the clipping: norm ~ 1e4
    a = _strategy(config).aggregate_round(
        0, theta, iter([*honest, _update(3, theta, 0.001, 3)]), []
    )
    b = _strategy(config).aggregate_round(0, theta, iter([*honest, liar]), [])
    moved = state_norm(state_delta(b.state, a.state))  # same seed, same round: same noise
    assert moved <= 2 * clip / k * (1 + 1e-4)
    assert b.metrics["aggregation"]["server_clipped"] == [3]
    assert a.metrics["aggregation"]["server_clipped"] == []


def test_adaptive_clip_moves_c_from_the_clients_bits():
    config = _config("privacy.clip=1.0", "privacy.adaptive_clip=true", "privacy.count_noise_std=0")
    theta = _theta()
    strategy = _strategy(config)
    ups = [_update(c, theta, 0.001, c, **{UNCLIPPED_KEY: 1.0}) for c in range(4)]
    result = strategy.aggregate_round(0, theta, iter(ups), [])
    k = config.federation.clients_sampled_per_round
    # Andrew et al. 2021: C <- C exp(-eta (b - gamma)), b = 4/4 unclipped, gamma 0.5, eta 0.2
    expected = 1.0 * math.exp(-0.2 * (4 / k - 0.5))
    assert result.metrics["aggregation"]["next_clip"] == pytest.approx(expected)
    assert strategy.combiner.clip == pytest.approx(expected)
    assert strategy.combiner.instructions()["clip"] == pytest.approx(expected)
    state = strategy.combiner.state_dict()
    fresh = _strategy(config)
    fresh.combiner.load_state_dict(state)
    assert fresh.combiner.clip == pytest.approx(expected)


def test_distributed_noise_instruction():
    config = _config("privacy.clip=0.5", "privacy.noise_multiplier=2", "privacy.noise=distributed")
    combiner = _strategy(config).combiner
    k = config.federation.clients_sampled_per_round
    assert combiner.instructions() == {"clip": 0.5, "local_noise_std": 2 * 0.5 / math.sqrt(k)}
    assert combiner.central_noise_std() == 0.0


def test_krum_rejects_sign_flipped_outliers_and_needs_enough_clients():
    config = _config(  # k = 5 = 2f + 3 sampled; one dropout leaves Krum too few
        "robustness.aggregator=krum", "robustness.byzantine=1", "federation.clients_per_round=0.625"
    )
    theta = _theta()
    honest = [_update(c, theta, 0.01, c) for c in range(4)]
    evil = ClientUpdate(
        client_id=7,
        round=0,
        num_samples=10,
        adapter={k: v - 50.0 for k, v in theta.items()},
        metrics={"steps": 2.0},
    )
    result = _strategy(config).aggregate_round(0, theta, iter([*honest, evil]), [])
    chosen = result.metrics["aggregation"]["robust"]["selected"]
    assert chosen and chosen[0] in range(4)
    (pick,) = [u for u in honest if u.client_id == chosen[0]]
    for k in theta:
        torch.testing.assert_close(result.state[k], pick.adapter[k])
    with pytest.raises(RoundFailed, match=r"krum.*needs 5"):
        _strategy(config).aggregate_round(0, theta, iter(honest), [])


def test_coordinate_median_per_objective_for_fmgda():
    """fmgda's M delta streams each get the rule (reference None: the payloads are deltas)."""
    config = _config("algorithm.name=fmgda", "robustness.aggregator=coordinate_median")
    theta = _theta()
    ups = []
    for c in range(3):
        g = torch.Generator().manual_seed(c)
        deltas = [
            {k: torch.randn(v.shape, generator=g) for k, v in theta.items()} for _ in range(2)
        ]
        ups.append(
            ClientUpdate(
                client_id=c, round=0, num_samples=5, objective_deltas=deltas, metrics={"steps": 4.0}
            )
        )
    result = _strategy(config).aggregate_round(0, theta, iter(ups), [])
    lam = result.metrics["server_lambda"]
    medians = [
        {
            k: torch.stack([u.objective_deltas[m][k] for u in ups]).median(dim=0).values
            for k in theta
        }
        for m in range(2)
    ]
    for k in theta:
        step = lam[0] * medians[0][k].double() + lam[1] * medians[1][k].double()
        torch.testing.assert_close(result.state[k], (theta[k].double() + step).float())


def test_dp_mean_for_fmgda_clips_jointly_and_averages_each_objective_over_k():
    """fmgda's M deltas: the server's check is on their joint norm; each objective's average is
    its clipped deltas' sum / k (uniform weights), then fmgda's MGDA on the averages."""
    clip = 1.0
    config = _config("algorithm.name=fmgda", f"privacy.clip={clip}")
    k = config.federation.clients_sampled_per_round
    theta = _theta()
    ones = {name: torch.ones_like(v) for name, v in theta.items()}
    n = sum(v.numel() for v in theta.values())
    small = [
        {name: v * 0.01 for name, v in ones.items()},
        {name: v * -0.02 for name, v in ones.items()},
    ]
    big = [{name: v * 3.0 for name, v in ones.items()}, {name: v * 4.0 for name, v in ones.items()}]
    steps = {"steps": 4.0}
    ups = [
        ClientUpdate(client_id=0, round=0, num_samples=50, objective_deltas=small, metrics=steps),
        ClientUpdate(client_id=1, round=0, num_samples=1, objective_deltas=big, metrics=steps),
    ]
    strategy = _strategy(config)
    result = strategy.aggregate_round(0, theta, iter(ups), [])
    assert result.metrics["aggregation"]["server_clipped"] == [1]
    scale = clip / math.sqrt(n * (3.0**2 + 4.0**2))  # joint over both deltas: 5 sqrt(n) -> 1
    means = [(0.01 + 3.0 * scale) / k, (-0.02 + 4.0 * scale) / k]
    lam = result.metrics["server_lambda"]
    step = lam[0] * means[0] + lam[1] * means[1]
    for name in theta:
        torch.testing.assert_close(result.state[name], theta[name] + step, rtol=1e-5, atol=1e-6)


def test_distributed_noise_is_not_clipped_away_by_the_server():
    """With distributed noise an update is its clipped delta plus the client's own noise, far
    above C in norm: the server must average it as sent (a re-check would shrink the noise the
    accounting counts on, and every client would be listed as clipped)."""
    clip, sigma = 0.1, 1.0
    config = _config(f"privacy.clip={clip}", f"privacy.noise_multiplier={sigma}",
                     "privacy.noise=distributed")  # fmt: skip
    k = config.federation.clients_sampled_per_round
    theta = {"w": torch.zeros(50_000)}
    g = torch.Generator().manual_seed(7)
    std = sigma * clip / math.sqrt(k)
    ups = [
        ClientUpdate(client_id=c, round=0, num_samples=3, metrics={"steps": 1.0},
                     adapter={"w": std * torch.randn(50_000, generator=g)})
        for c in range(k)
    ]  # fmt: skip
    result = _strategy(config).aggregate_round(0, theta, iter(ups), [])
    assert result.metrics["aggregation"]["server_clipped"] == []
    expected = sum(u.adapter["w"] for u in ups) / k
    torch.testing.assert_close(result.state["w"], expected)
    assert float(result.state["w"].std()) == pytest.approx(sigma * clip / k, rel=0.02)
