"""DP primitives against their definitions: joint L2 clipping (McMahan et al. 2018), seeded
Gaussian noise, adaptive clipping's geometric update and noise split (Andrew et al. 2021)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from firm_ray.privacy import (
    AdaptiveClip,
    clip_joint,
    gaussian_like,
    joint_norm,
    noise_generator,
    update_noise_multiplier,
)


def make_state(seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.lora_A": (torch.randn(4, 16, generator=g) * scale).to(dtype),
        "layer.lora_B": (torch.randn(16, 4, generator=g) * scale).to(dtype),
        "bias": (torch.randn(3, generator=g) * scale).to(dtype),
    }


def norm_by_hand(states: list[dict]) -> float:
    """Definition: sqrt of the sum of squares of every entry of every tensor (Python floats)."""
    return math.sqrt(sum(x * x for s in states for t in s.values() for x in t.flatten().tolist()))


def test_joint_norm_is_the_l2_norm_of_everything() -> None:
    states = [make_state(0), make_state(1, 3.0, torch.float64), make_state(2, 0.5, torch.bfloat16)]
    assert joint_norm(states) == pytest.approx(norm_by_hand(states), rel=1e-12)
    assert joint_norm([]) == 0.0
    with pytest.raises(ValueError, match="non-float"):
        joint_norm([{"steps": torch.arange(3)}])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("clip", [0.5, 5.0, 1e3])
def test_clip_joint_bounds_norm_and_keeps_direction(dtype: torch.dtype, clip: float) -> None:
    states = [make_state(3, 1.0, dtype)]
    before = [{k: v.clone() for k, v in s.items()} for s in states]
    norm = norm_by_hand(states)
    clipped, reported, scaled = clip_joint(states, clip)
    assert reported == pytest.approx(norm, rel=1e-12)
    assert scaled == (norm > clip)
    after = norm_by_hand(clipped)
    assert after <= clip  # exactly, even after rounding back to bf16
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-6
    assert after == pytest.approx(min(norm, clip), rel=tolerance)
    scale = min(1.0, clip / norm)
    for original, out, kept in zip(states, clipped, before, strict=True):
        for name, tensor in original.items():
            assert out[name].dtype == dtype and out[name].shape == tensor.shape
            assert out[name].data_ptr() != tensor.data_ptr()
            torch.testing.assert_close(tensor, kept[name], rtol=0, atol=0)  # input untouched
            expected = (tensor.double() * scale).to(dtype)
            torch.testing.assert_close(out[name], expected, rtol=tolerance, atol=1e-6)


def test_clip_joint_bounds_the_whole_contribution_of_a_client() -> None:
    """fmgda's M deltas: two states each of norm C are scaled by 1/sqrt(2), not left alone."""
    first, second = make_state(4, dtype=torch.float64), make_state(5, dtype=torch.float64)
    c = 2.0
    first = {k: v * (c / norm_by_hand([first])) for k, v in first.items()}
    second = {k: v * (c / norm_by_hand([second])) for k, v in second.items()}
    clipped, norm, scaled = clip_joint([first, second], c)
    assert scaled and norm == pytest.approx(c * math.sqrt(2), rel=1e-12)
    for original, out in zip((first, second), clipped, strict=True):
        assert norm_by_hand([out]) == pytest.approx(c / math.sqrt(2), rel=1e-12)
        for name in original:
            torch.testing.assert_close(out[name], original[name] / math.sqrt(2))


def test_clip_joint_refuses_what_it_cannot_bound() -> None:
    state = make_state(6)
    with pytest.raises(ValueError, match="clip"):
        clip_joint([state], 0.0)
    with pytest.raises(ValueError, match="clip"):
        clip_joint([state], float("inf"))
    state["bias"][0] = float("nan")
    with pytest.raises(ValueError, match="joint norm is nan"):
        clip_joint([state], 1.0)


def test_gaussian_like_has_the_calibrated_std() -> None:
    state = {
        "a": torch.zeros(200, 250, dtype=torch.bfloat16),
        "b": torch.zeros(50_000, dtype=torch.float64),
    }
    std = 0.37
    noise = gaussian_like(state, std, noise_generator(11, "round", 3))
    assert list(noise) == ["a", "b"]
    assert noise["a"].dtype == torch.float32 and noise["a"].shape == (200, 250)
    assert noise["b"].dtype == torch.float64 and noise["b"].shape == (50_000,)
    values = torch.cat([noise["a"].flatten().double(), noise["b"]])
    assert values.numel() == 100_000
    assert values.std().item() == pytest.approx(std, rel=0.01)
    assert abs(values.mean().item()) < 4 * std / math.sqrt(values.numel())
    assert torch.equal(gaussian_like(state, 0.0, noise_generator(1))["a"], torch.zeros(200, 250))


def test_noise_is_reproducible_and_independent_across_parts() -> None:
    state = make_state(7)
    reordered = dict(reversed(list(state.items())))
    one = gaussian_like(state, 1.0, noise_generator(5, 2, "client", 0))
    again = gaussian_like(reordered, 1.0, noise_generator(5, 2, "client", 0))
    for name in state:
        assert torch.equal(one[name], again[name])
    for other in (noise_generator(5, 2, "client", 1), noise_generator(6, 2, "client", 0)):
        different = gaussian_like(state, 1.0, other)
        assert not any(torch.equal(one[n], different[n]) for n in state)
    # "1" and 1 are distinct parts; None seeds from os.urandom (two draws differ)
    assert noise_generator(0, 1).initial_seed() != noise_generator(0, "1").initial_seed()
    assert noise_generator(None).initial_seed() != noise_generator(None).initial_seed()
    with pytest.raises(TypeError):
        noise_generator(0, 1.5)  # type: ignore[arg-type]


def test_adaptive_clip_follows_the_geometric_update_by_hand() -> None:
    clip = AdaptiveClip(initial=1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=0.0)
    expected = 1.0
    for unclipped, k in ((7, 10), (2, 10), (10, 10), (0, 4)):
        expected = expected * math.exp(-0.2 * (unclipped / k - 0.5))
        assert clip.update(unclipped, k, noise_generator(0)) == pytest.approx(expected, rel=1e-15)
        assert clip.clip == pytest.approx(expected, rel=1e-15)
    noisy = AdaptiveClip(initial=2.0, target_quantile=0.8, learning_rate=0.5, count_noise_std=1.5)
    mirror = torch.Generator().manual_seed(99)
    draw = torch.randn((), generator=mirror, dtype=torch.float64).item()
    b = (6 + 1.5 * draw) / 10
    new = noisy.update(6, 10, torch.Generator().manual_seed(99))
    assert new == pytest.approx(2.0 * math.exp(-0.5 * (b - 0.8)), rel=1e-15)
    assert new != pytest.approx(2.0 * math.exp(-0.5 * (0.6 - 0.8)))  # the noise is there


@pytest.mark.parametrize("target", [0.3, 0.7])
def test_adaptive_clip_converges_to_the_target_quantile(target: float) -> None:
    """Update norms ~ lognormal(0, 1), so P(norm <= C) = Phi(ln C); start 100x too large."""
    rng = np.random.default_rng(0)
    clip = AdaptiveClip(100.0, target, learning_rate=0.2, count_noise_std=2.0)
    generator = noise_generator(0, "count")
    k, history = 50, []
    for _ in range(600):
        norms = rng.lognormal(0.0, 1.0, size=k)
        clip.update(int((norms <= clip.clip).sum()), k, generator)
        history.append(clip.clip)
    settled = math.exp(np.mean(np.log(history[-200:])))
    quantile = 0.5 * (1 + math.erf(math.log(settled) / math.sqrt(2)))
    assert quantile == pytest.approx(target, abs=0.04)


def test_adaptive_clip_state_round_trips_through_json() -> None:
    settings = dict(initial=1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    clip = AdaptiveClip(**settings)
    for unclipped in (3, 9, 1):
        clip.update(unclipped, 10, noise_generator(1, unclipped))
    restored = AdaptiveClip(**settings)
    restored.load_state_dict(json.loads(json.dumps(clip.state_dict())))
    assert restored.clip == clip.clip and restored.updates == 3
    assert restored.update(4, 10, noise_generator(2)) == clip.update(4, 10, noise_generator(2))
    other = AdaptiveClip(**{**settings, "count_noise_std": 2.0})
    with pytest.raises(ValueError, match="count_noise_std"):
        other.load_state_dict(clip.state_dict())
    with pytest.raises(ValueError, match="saved clip"):
        restored.load_state_dict({**clip.state_dict(), "clip": -1.0})


def test_adaptive_clip_rejects_bad_counts_and_settings() -> None:
    clip = AdaptiveClip(1.0, 0.5, 0.2, 0.0)
    for unclipped, k in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError):
            clip.update(unclipped, k, noise_generator(0))
    with pytest.raises(ValueError, match="target_quantile"):
        AdaptiveClip(1.0, 1.5, 0.2, 0.0)
    with pytest.raises(ValueError, match="initial clip"):
        AdaptiveClip(0.0, 0.5, 0.2, 0.0)


def test_update_noise_multiplier_is_andrew_theorem_1() -> None:
    # z = 1, sigma_b = 2: z_delta = (1 - 1/16)^(-1/2) = 4 / sqrt(15)
    assert update_noise_multiplier(1.0, 2.0) == pytest.approx(4 / math.sqrt(15), rel=1e-15)
    for z, sigma_b in ((0.5, 10.0), (1.1, 0.6), (3.0, 20.0)):
        z_delta = update_noise_multiplier(z, sigma_b)
        assert z_delta > z
        assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2, rel=1e-12)
    assert update_noise_multiplier(0.0, 0.0) == 0.0
    for z, sigma_b in ((1.0, 0.5), (1.0, 0.0), (2.0, 0.9)):
        with pytest.raises(ValueError) as caught:
            update_noise_multiplier(z, sigma_b)
        assert str(z) in str(caught.value) and str(sigma_b) in str(caught.value)
        assert "\n" not in str(caught.value)
