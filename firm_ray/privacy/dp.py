"""Client-level DP primitives: joint clipping, seeded Gaussian noise, adaptive clipping.

Client-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning differentially private
recurrent language models", ICLR, Algorithm 1): each sampled client's update
``delta_i = theta_i - theta^t`` is clipped to L2 norm ``C`` (:func:`clip_joint`); the server sums
the clipped deltas, divides by the FIXED number ``k`` of clients sampled per round (public, so
uniform weights, never sample counts), and adds Gaussian noise of std ``sigma * C / k`` per
coordinate (central DP). With secure aggregation (distributed DP) each client instead adds noise of
std ``sigma * C / sqrt(k)`` to its own clipped delta, so the sum carries std ``sigma * C``: the
same mechanism, provided all ``k`` noisy shares reach the sum (a dropout removes its share of the
noise). :func:`gaussian_like` draws that noise.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially private learning
with adaptive clipping", NeurIPS, Algorithm 1, geometric update): :class:`AdaptiveClip` moves
``C`` toward the ``gamma`` quantile of the clients' update norms from a noised count of unclipped
clients, and :func:`update_noise_multiplier` (their Theorem 1) splits a privacy budget ``z``
between the updates and that count.

Only torch and the standard library are imported: client workers clip without loading the
accounting library.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "AdaptiveClip",
    "clip_joint",
    "gaussian_like",
    "joint_norm",
    "noise_generator",
    "update_noise_multiplier",
]

# A cast of the scaled tensors back to a low-precision dtype can round the norm a hair above C;
# clip_joint then retries with a slightly smaller scale, at most this many times.
_MAX_SHRINKS = 12


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _check_non_negative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def joint_norm(states: Sequence[Mapping[str, Tensor]]) -> float:
    """L2 norm over all tensors of all states, accumulated in float64.

    Joint because one client's whole contribution is what DP bounds: fmgda uploads M deltas per
    client, so their concatenation, not each delta, must have norm <= C.
    """
    total = 0.0
    for index, state in enumerate(states):
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                raise ValueError(
                    f"joint_norm: tensor {name!r} of state {index} has non-float dtype "
                    f"{tensor.dtype}; only floating-point updates can be clipped"
                )
            total += float(torch.sum(tensor.detach().to(torch.float64) ** 2))
    return math.sqrt(total)


def _scaled(states: Sequence[Mapping[str, Tensor]], scale: float) -> list[dict[str, Tensor]]:
    return [
        {
            name: (tensor.detach().to(torch.float64) * scale).to(tensor.dtype)
            for name, tensor in state.items()
        }
        for state in states
    ]


def clip_joint(
    states: Sequence[Mapping[str, Tensor]], clip: float
) -> tuple[list[dict[str, Tensor]], float, bool]:
    """Scale every state by ``min(1, clip / joint_norm)``: one client's contribution <= ``clip``.

    Returns ``(clipped copies, norm before, scaled down?)``. Inputs are never modified and each
    tensor keeps its dtype; the scale is applied in float64, and if casting back (bf16, fp16)
    rounds the joint norm above ``clip`` the scale is shrunk until it does not, so the
    sensitivity bound the accountant relies on holds exactly. A non-finite norm (NaN/inf
    entries) raises ValueError: such an update cannot be bounded and must be rejected.
    """
    clip = _check_positive("clip", clip)
    norm = joint_norm(states)
    if not math.isfinite(norm):
        raise ValueError(f"clip_joint: the update's joint norm is {norm}; it cannot be clipped")
    if norm <= clip:
        copies = [
            {name: tensor.detach().clone() for name, tensor in state.items()} for state in states
        ]
        return copies, norm, False
    scale, eps = clip / norm, _coarsest_eps(states)
    for attempt in range(_MAX_SHRINKS + 1):
        clipped = _scaled(states, scale)
        after = joint_norm(clipped)
        if after <= clip:
            return clipped, norm, True
        # re-rounding is random: shrink by a margin starting far below one ulp, doubling per try
        scale *= (clip / after) * (1.0 - eps * 2.0 ** (attempt - 6))
    raise ValueError(
        f"clip_joint: norm {after!r} still above clip {clip!r} after {_MAX_SHRINKS} shrinks"
    )


def _coarsest_eps(states: Sequence[Mapping[str, Tensor]]) -> float:
    """Machine epsilon of the least precise dtype present (the rounding a cast can add)."""
    eps = [torch.finfo(t.dtype).eps for state in states for t in state.values()]
    return max(eps, default=torch.finfo(torch.float64).eps)


def gaussian_like(
    state: Mapping[str, Tensor], std: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """N(0, std^2) per entry, same names and shapes as ``state``.

    float32 noise (float64 for float64 tensors), so noise added to a bf16 adapter is not rounded
    before the sum. Drawn on the generator's device in sorted-name order (the same seed gives the
    same noise whatever the mapping's insertion order), then moved to each tensor's device.
    """
    std = _check_non_negative("std", std)
    noise: dict[str, Tensor] = {}
    for name in sorted(state):
        tensor = state[name]
        dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        draw = torch.randn(
            tuple(tensor.shape), generator=generator, dtype=dtype, device=generator.device
        )
        noise[name] = (draw * std).to(tensor.device)
    return {name: noise[name] for name in state}


def noise_generator(seed: int | None, *parts: int | str) -> torch.Generator:
    """A CPU generator seeded from ``(seed, *parts)`` through SHA-256, e.g. (seed, round, client).

    A fixed ``seed`` makes simulations reproducible, and distinct parts give independent streams.
    ``seed=None`` seeds from ``os.urandom``: what a real deployment must use, since anyone who
    knows the seed can subtract the noise. Even then torch's Mersenne Twister is not a
    cryptographic generator and floating-point Gaussian sampling leaks through its low-order bits
    (Mironov 2012, "On significance of the least significant bits for differential privacy"):
    this is a research simulator, not a hardened DP implementation.
    """
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, str)):
            raise TypeError(f"noise_generator parts must be int or str, got {type(part).__name__}")
    if seed is None:
        value = int.from_bytes(os.urandom(8), "little")
    else:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"noise_generator seed must be an int or None, got {seed!r}")
        digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
        value = int.from_bytes(digest[:8], "little")
    generator = torch.Generator()
    generator.manual_seed(value & ((1 << 63) - 1))
    return generator


class AdaptiveClip:
    """Geometric quantile tracking of the clip norm (Andrew et al. 2021, Algorithm 1).

    Each round ``b = (sum_i 1[||delta_i|| <= C] + N(0, sigma_b^2)) / k`` and
    ``C <- C * exp(-eta * (b - gamma))``: C shrinks while more than a ``gamma`` fraction of the
    clients fit under it and grows otherwise, so it settles at the ``gamma`` quantile of the
    update norms. The count is noised because it is released too (see
    :func:`update_noise_multiplier` for its share of the budget).
    """

    def __init__(
        self,
        initial: float,
        target_quantile: float,
        learning_rate: float,
        count_noise_std: float,
    ) -> None:
        self.initial = _check_positive("initial clip", initial)
        target_quantile = float(target_quantile)
        if not 0.0 <= target_quantile <= 1.0:
            raise ValueError(f"target_quantile must be in [0, 1], got {target_quantile!r}")
        self.target_quantile = target_quantile
        self.learning_rate = _check_positive("learning_rate", learning_rate)
        self.count_noise_std = _check_non_negative("count_noise_std", count_noise_std)
        self._clip = self.initial
        self.updates = 0

    @property
    def clip(self) -> float:
        """The clip norm C to use this round."""
        return self._clip

    def update(self, unclipped: int, num_clients: int, generator: torch.Generator) -> float:
        """One geometric step from the count of clients with norm <= C; returns the new C.

        ``num_clients`` is the fixed k sampled per round (public), as in the paper's 1/m.
        """
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"num_clients must be an int >= 1, got {num_clients!r}")
        if isinstance(unclipped, bool) or not isinstance(unclipped, int):
            raise ValueError(f"unclipped must be an int, got {unclipped!r}")
        if not 0 <= unclipped <= num_clients:
            raise ValueError(f"unclipped must be in [0, {num_clients}], got {unclipped}")
        noise = 0.0
        if self.count_noise_std > 0:
            draw = torch.randn((), generator=generator, dtype=torch.float64)
            noise = float(draw) * self.count_noise_std
        fraction = (unclipped + noise) / num_clients
        self._clip = self._clip * math.exp(-self.learning_rate * (fraction - self.target_quantile))
        self.updates += 1
        return self._clip

    def state_dict(self) -> dict:
        """JSON-able state (checkpointed with the server state)."""
        return {
            "clip": self._clip,
            "updates": self.updates,
            "initial": self.initial,
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_noise_std": self.count_noise_std,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore C; refuses a state saved with other settings (the accounting would differ)."""
        for key in ("initial", "target_quantile", "learning_rate", "count_noise_std"):
            if key not in state:
                raise ValueError(f"AdaptiveClip state lacks {key!r}")
            if float(state[key]) != getattr(self, key):
                raise ValueError(
                    f"AdaptiveClip state has {key}={state[key]!r} but this run has "
                    f"{getattr(self, key)!r}"
                )
        self._clip = _check_positive("saved clip", state.get("clip", float("nan")))
        updates = state.get("updates", 0)
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise ValueError(f"AdaptiveClip state has updates={updates!r}, want an int >= 0")
        self.updates = updates


def update_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """The updates' noise multiplier when the clip count is released too (Andrew et al., Thm 1).

    Releasing the updates with ``z_delta`` and the count with std ``sigma_b`` is as private as one
    Gaussian mechanism with ``z`` when ``z^-2 = z_delta^-2 + (2 sigma_b)^-2``, hence
    ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``. The relation holds under replace-one as well:
    there the sum's sensitivity is 2C and the count's is 1 (twice the paper's add/remove values,
    C and 1/2 for the centred count), so both sides scale alike and the accountant keeps ``z``.
    ``z = 0`` (no DP) returns 0.
    """
    z = _check_non_negative("noise_multiplier", noise_multiplier)
    sigma_b = _check_non_negative("count_noise_std", count_noise_std)
    if z == 0:
        return 0.0
    if 2.0 * sigma_b <= z:
        raise ValueError(
            f"count_noise_std {sigma_b!r} is too small for noise_multiplier {z!r}: adaptive "
            f"clipping needs 2 * count_noise_std > noise_multiplier"
        )
    return (z**-2 - (2.0 * sigma_b) ** -2) ** -0.5
