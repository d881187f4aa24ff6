"""What leaves a client (trainer/client_upload.py): attacks only from malicious clients, DP
clipping (jointly over fmgda's deltas), local noise, and the withheld metrics and state."""

from __future__ import annotations

import math

import pytest
import torch

from firm_ray.config import load_config
from firm_ray.core.aggregation import state_delta, state_norm
from firm_ray.federation.attacks import attackers
from firm_ray.federation.combine import UNCLIPPED_KEY
from firm_ray.privacy import joint_norm
from firm_ray.trainer.client_upload import DP_KEPT_METRICS, ClientUploads
from firm_ray.types import ClientUpdate

METRICS = {
    "steps": 2.0,
    "skipped_steps": 0.0,
    "lambda": [0.3, 0.7],
    "rewards": [0.1, 0.9],
    "loss": 1.5,
    "skip_reasons": [],
    "objective_grad_norms": [0.1, 0.2],
}


def _theta() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 4, generator=g), "b": torch.randn(6, generator=g)}


def _update(theta, scale: float, client: int = 0) -> ClientUpdate:
    g = torch.Generator().manual_seed(client + 1)
    return ClientUpdate(
        client_id=client,
        round=3,
        num_samples=12,
        adapter={k: v + scale * torch.randn(v.shape, generator=g) for k, v in theta.items()},
        metrics=dict(METRICS),
        client_state={"relevance": {"mean": 0.4, "count": 10}},
    )


def test_without_dp_or_attack_the_update_is_untouched():
    uploads = ClientUploads(load_config(None, []))
    theta = _theta()
    update = _update(theta, 1.0)
    assert uploads.prepare(update, theta, {}) is update


def test_dp_clips_the_delta_and_withholds_everything_else():
    config = load_config(None, ["privacy.clip=0.5"])
    uploads = ClientUploads(config)
    theta = _theta()
    update = _update(theta, 1.0)
    out = uploads.prepare(update, theta, {"clip": 0.5, "local_noise_std": 0.0})
    delta = state_delta(out.adapter, theta)
    before = state_delta(update.adapter, theta)
    assert state_norm(delta) == pytest.approx(0.5, rel=1e-5)
    scale = state_norm(delta) / state_norm(before)
    for k in theta:  # same direction
        torch.testing.assert_close(delta[k], before[k] * scale, rtol=1e-4, atol=1e-6)
    assert set(out.metrics) <= set(DP_KEPT_METRICS)
    assert out.metrics[UNCLIPPED_KEY] == 0.0 and out.metrics["steps"] == 2.0
    assert out.client_state == {}
    assert update.metrics["lambda"] == [0.3, 0.7]  # the input is untouched
    small = uploads.prepare(_update(theta, 1e-4), theta, {"clip": 0.5, "local_noise_std": 0.0})
    assert small.metrics[UNCLIPPED_KEY] == 1.0


def test_dp_clips_fmgda_deltas_jointly_and_adds_local_noise():
    config = load_config(None, ["algorithm.name=fmgda", "privacy.clip=1.0"])
    uploads = ClientUploads(config)
    theta = _theta()
    deltas = [{k: torch.full_like(v, 3.0) for k, v in theta.items()} for _ in range(2)]
    update = ClientUpdate(
        client_id=1, round=0, num_samples=4, objective_deltas=deltas, metrics=dict(METRICS)
    )
    out = uploads.prepare(update, theta, {"clip": 1.0, "local_noise_std": 0.0})
    assert joint_norm(out.objective_deltas) == pytest.approx(1.0, rel=1e-6)
    assert state_norm(out.objective_deltas[0]) == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    big = {"w": torch.zeros(100_000)}
    zero = ClientUpdate(client_id=1, round=0, num_samples=4, objective_deltas=[big, dict(big)])
    noisy = uploads.prepare(
        zero, {"w": torch.zeros(100_000)}, {"clip": 1.0, "local_noise_std": 0.2}
    )
    for d in noisy.objective_deltas:
        assert float(d["w"].std()) == pytest.approx(0.2, rel=0.02)


def test_only_malicious_clients_attack():
    config = load_config(
        None,
        [
            "federation.num_clients=10",
            "robustness.attack.kind=sign_flip",
            "robustness.attack.fraction=0.3",
        ],
    )
    uploads = ClientUploads(config)
    bad = attackers(10, 0.3, config.experiment.seed)
    assert uploads.malicious == bad and len(bad) == 3
    theta = _theta()
    for client in range(10):
        update = _update(theta, 0.1, client)
        out = uploads.prepare(update, theta, {})
        expect = state_delta(update.adapter, theta)
        got = state_delta(out.adapter, theta)
        sign = -1.0 if client in bad else 1.0
        for k in theta:
            torch.testing.assert_close(got[k], sign * expect[k], rtol=1e-5, atol=1e-6)


def test_opposite_preference_attackers_train_for_the_mirrored_preference():
    config = load_config(
        None,
        [
            "algorithm.preference=[0.8,0.2]",
            "robustness.attack.kind=opposite_preference",
            "robustness.attack.fraction=0.25",
        ],
    )
    uploads = ClientUploads(config)
    (bad, *_) = sorted(uploads.malicious)
    good = next(c for c in range(8) if c not in uploads.malicious)
    assert uploads.preference_of(bad) == pytest.approx([0.2, 0.8])
    assert uploads.preference_of(good) is None
