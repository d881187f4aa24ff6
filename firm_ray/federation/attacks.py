"""Byzantine client attacks for robustness experiments (pure: torch and stdlib, no Ray).

Threat model: a fixed, seeded set of malicious clients (`attackers`) receive theta^t like every
client and control their own training and upload; they collude only through the shared attack
(kind, scale, seed), never seeing honest clients' updates (so no omniscient ALIE / min-max attacks).

The attacks, acting on the client's delta d = theta_i - theta^t (fmgda: on each of its M deltas):

- ``sign_flip``: d -> -s d. s = 1 (the default) is the sign-flipping attack of Allen-Zhu et al.
  2021 (ICLR, "Byzantine-resilient non-convex stochastic gradient descent") and the bit-flipping
  attack of Karimireddy, He & Jaggi 2021 (ICML, "Learning from history for Byzantine robust
  optimization"); s > 1 boosts the reversal like the omniscient workers of Blanchard et al. 2017
  (NeurIPS, Krum), here from the attacker's own delta since it never sees honest updates.
- ``scale``: d -> s d, the boosting of model replacement (Bagdasaryan et al. 2020, AISTATS,
  "How to backdoor federated learning": X~ = gamma (X - G^t) + G^t).
- ``gaussian``: d -> N(0, s^2 I), an update unrelated to the data (the Gaussian Byzantine workers
  of Blanchard et al. 2017; the Gaussian attack of Fang et al. 2020, USENIX Security, "Local
  model poisoning attacks to Byzantine-robust federated learning"). Blanchard et al. drew
  gradients with s = 200; choose s relative to the RMS entry of an honest adapter delta.
- ``nan``: every entry NaN: exercises the server's rejection of non-finite uploads.
- ``opposite_preference``: the client trains honestly for the mirrored preference
  (`mirrored_preference`); it changes training, not the upload.
- ``lambda_lie``: the upload is honest but the reported lambda (the weights FIRM's in-client
  solver chose, which the server logs and uses for disagreement) is the maximally disagreeing
  one-hot vector (`lie_about_lambda`).

An attacked update carries nothing that announces the attack (a real attacker would not).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections.abc import Sequence

import torch

from firm_ray.core.aggregation import state_delta
from firm_ray.types import AdapterState, ClientUpdate

__all__ = [
    "ATTACKS",
    "PAYLOAD_ATTACKS",
    "attack_payloads",
    "attack_update",
    "attackers",
    "is_self_mirrored",
    "lie_about_lambda",
    "mirrored_preference",
]

ATTACKS = ("sign_flip", "scale", "gaussian", "nan", "opposite_preference", "lambda_lie")
PAYLOAD_ATTACKS = ("sign_flip", "scale", "gaussian", "nan")


def _check_kind(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        raise ValueError(f"unknown attack kind {kind!r}; allowed: {', '.join(allowed)}")


def _check_scale(kind: str, scale: float) -> float:
    """sign_flip, scale and gaussian need a finite scale > 0 (0 would send a zero update, a
    negative one would turn sign_flip into scale and back); nan ignores it."""
    try:
        s = float(scale)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"attack scale must be a real number, got {scale!r}") from exc
    if kind != "nan" and (not math.isfinite(s) or s <= 0.0):
        raise ValueError(f"attack scale must be finite and > 0 for {kind}, got {scale!r}")
    return s


def attackers(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The malicious clients, fixed for the whole run: floor(fraction * num_clients) of them.

    A seeded uniform choice: a shuffle of all client ids by random.Random("firm_ray/attackers/
    {seed}") whose first k are taken, so it depends on (num_clients, fraction, seed) only, and
    for one seed the attackers at a smaller fraction are a subset of those at a larger one
    (a benchmark sweeping 10 / 20 / 30 % adds attackers instead of redrawing them).
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    try:
        f = float(fraction)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"attack fraction must be a real number, got {fraction!r}") from exc
    if not (0.0 <= f < 1.0):
        raise ValueError(f"attack fraction must be in [0, 1), got {fraction!r}")
    count = math.floor(f * num_clients + 1e-9)
    order = list(range(num_clients))
    random.Random(f"firm_ray/attackers/{seed}").shuffle(order)
    return frozenset(order[:count])


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _attack_delta(
    kind: str, delta: torch.Tensor, scale: float, generator: torch.Generator
) -> torch.Tensor:
    """The attacked version of one delta tensor (working precision, a new tensor)."""
    if kind == "sign_flip":
        return delta.mul(-scale)
    if kind == "scale":
        return delta.mul(scale)
    if kind == "gaussian":
        noise = torch.randn(
            delta.shape, generator=generator, dtype=delta.dtype, device=generator.device
        )
        return noise.mul_(scale).to(delta.device)
    return torch.full_like(delta, math.nan)  # nan


def _attack_state(
    kind: str,
    payload: AdapterState,
    reference: AdapterState | None,
    scale: float,
    generator: torch.Generator,
) -> AdapterState:
    if reference is None:
        delta = {
            name: t.detach().to(dtype=_work_dtype(t.dtype), copy=True)
            for name, t in payload.items()
        }
    else:
        delta = state_delta(payload, reference)  # checks names and shapes
    out: AdapterState = {}
    with torch.no_grad():
        for name, tensor in payload.items():
            attacked = _attack_delta(kind, delta[name], scale, generator)
            if reference is not None:
                base = reference[name].detach().to(device=attacked.device, dtype=attacked.dtype)
                attacked = attacked.add_(base)
            out[name] = attacked.to(dtype=tensor.dtype, device=tensor.device)
    return out


def attack_payloads(
    kind: str,
    payloads: list[AdapterState],
    reference: AdapterState | None,
    scale: float,
    generator: torch.Generator,
) -> list[AdapterState]:
    """The attacked payloads: new tensors in the original dtypes and devices, inputs untouched.

    ``reference`` is theta^t when the payloads are adapters theta_i (the attack acts on
    theta_i - theta^t and adds theta^t back), None when they are already deltas (fmgda's
    theta_i^m - theta^t). Arithmetic is float32 (float64 for float64 tensors), cast back at the
    end. ``gaussian`` draws from ``generator`` payload by payload, key by key in order, so a
    generator seeded per (seed, round, client) makes the attack reproducible.
    """
    _check_kind(kind, PAYLOAD_ATTACKS)
    s = _check_scale(kind, scale)
    return [_attack_state(kind, p, reference, s, generator) for p in payloads]


def mirrored_preference(preference: Sequence[float]) -> list[float]:
    """The preference reversed, (0.8, 0.2) -> (0.2, 0.8), (a, b, c) -> (c, b, a): the weight of
    objective m goes to objective M-1-m, so the client optimizes the opposite trade-off while
    staying on the simplex."""
    values = [float(p) for p in preference]
    if not values:
        raise ValueError("preference must not be empty")
    return values[::-1]


def is_self_mirrored(preference: Sequence[float], tol: float = 1e-12) -> bool:
    """True when reversing changes nothing (uniform or any palindromic preference): an
    opposite_preference client would then be honest, so the config refuses it."""
    values = [float(p) for p in preference]
    return all(abs(a - b) <= tol for a, b in zip(values, reversed(values), strict=True))


def lie_about_lambda(lam: Sequence[float]) -> list[float]:
    """The false lambda of a lambda_lie client: all weight on the objective its true lambda
    weights least (ties: the lowest index). Its distance to the truth is maximal among
    simplex points for the weight the client actually gave each objective."""
    values = [float(x) for x in lam]
    if not values:
        raise ValueError("lambda must not be empty")
    if not all(math.isfinite(x) for x in values):
        raise ValueError(f"lambda must be finite, got {values}")
    least = min(range(len(values)), key=lambda m: (values[m], m))
    return [1.0 if m == least else 0.0 for m in range(len(values))]


def _lied_metrics(metrics: dict) -> dict:
    """A copy of ``metrics`` whose finite 'lambda' list is replaced by the lie. An absent
    lambda stays absent; a non-finite one (the trainer's NaN marker of a client that took no
    local step, whose update the server rejects anyway) is left as reported."""
    out = copy.deepcopy(metrics)
    lam = out.get("lambda")
    if lam is None:
        return out
    if isinstance(lam, (str, bytes)) or not isinstance(lam, Sequence):
        raise ValueError(f"metrics['lambda'] must be a list of floats, got {type(lam).__name__}")
    if all(math.isfinite(float(x)) for x in lam):
        out["lambda"] = lie_about_lambda(lam)
    return out


def attack_update(
    kind: str,
    update: ClientUpdate,
    reference: AdapterState | None,
    scale: float,
    generator: torch.Generator,
) -> ClientUpdate:
    """A new ClientUpdate as the malicious client would send it (``update`` is untouched).

    Payload kinds act on ``update.adapter`` (``reference`` = theta^t, required) and on
    ``update.objective_deltas`` (``reference`` ignored); a missing payload stays missing.
    ``lambda_lie`` replaces metrics['lambda']; ``opposite_preference`` returns an equal copy (it
    acted on training). client_id, round, num_samples, valid, reason, client_state and every
    other metric are kept, and nothing is added. Unattacked payload tensors are shared with
    ``update`` (not copied: read them only); metrics and client_state are copies.
    """
    _check_kind(kind, ATTACKS)
    adapter, deltas = update.adapter, update.objective_deltas
    metrics = copy.deepcopy(update.metrics)
    if kind in PAYLOAD_ATTACKS:
        s = _check_scale(kind, scale)
        if adapter is not None:
            if reference is None:
                raise ValueError(f"{kind} on an adapter upload needs theta^t as the reference")
            adapter = _attack_state(kind, adapter, reference, s, generator)
        if deltas is not None:
            deltas = [_attack_state(kind, d, None, s, generator) for d in deltas]
    elif kind == "lambda_lie":
        metrics = _lied_metrics(update.metrics)
    return dataclasses.replace(
        update,
        adapter=adapter,
        objective_deltas=deltas,
        metrics=metrics,
        client_state=copy.deepcopy(update.client_state),
    )
