"""Federated averaging of LoRA adapter state dicts (ordered name -> tensor mappings).

The server of FIRM only ever averages adapters, so everything here works on plain mappings of
tensors and never materializes more than one adapter-sized buffer: with hundreds of clients
(or large adapters) holding every upload before averaging would not fit in the driver's memory.

Arithmetic runs in float32 (float64 when the inputs are float64) and results are cast back to the
input dtype, so bf16/fp16 adapters are averaged without accumulating rounding error per client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

__all__ = [
    "StreamingAverage",
    "all_finite",
    "apply_delta",
    "first_non_finite",
    "flatten_state",
    "server_update",
    "state_delta",
    "state_distance",
    "state_norm",
    "weighted_average",
]

StateDict = Mapping[str, Tensor]


def _work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32: enough precision, half the memory."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _check_same_layout(reference: StateDict, other: StateDict, what: str) -> None:
    """Raise a ValueError naming the offending key(s) unless names and shapes match exactly."""
    ref_keys, other_keys = set(reference), set(other)
    if ref_keys != other_keys:
        missing = sorted(ref_keys - other_keys)
        unexpected = sorted(other_keys - ref_keys)
        raise ValueError(
            f"{what}: state names differ from the reference; missing {missing}, "
            f"unexpected {unexpected}"
        )
    for name, ref_tensor in reference.items():
        tensor = other[name]
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{what}: {name!r} is a {type(tensor).__name__}, not a Tensor")
        if tensor.shape != ref_tensor.shape:
            raise ValueError(
                f"{what}: shape of {name!r} is {tuple(tensor.shape)}, "
                f"expected {tuple(ref_tensor.shape)}"
            )


def all_finite(tensor: Tensor) -> bool:
    """True when no entry is NaN or inf.

    Fast path: any NaN/inf entry makes the sum NaN/inf, so a finite sum proves every entry
    finite (one reduction instead of a boolean tensor as large as the input); only a sum that
    overflowed with finite entries takes the full check.
    """
    if not tensor.is_floating_point():
        return True
    wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    if math.isfinite(float(tensor.sum(dtype=wide))):
        return True
    return bool(torch.isfinite(tensor).all())


def first_non_finite(state: StateDict) -> str | None:
    """Name of the first tensor with a NaN or inf entry, or None."""
    return next((name for name, t in state.items() if not all_finite(t)), None)


def _check_tensors(state: StateDict, what: str, check_finite: bool = True) -> None:
    """Reject non-tensor, non-floating and (unless the caller has already checked them)
    non-finite entries; one bad client poisons the mean."""
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{what}: {name!r} is a {type(tensor).__name__}, not a Tensor")
        if not tensor.is_floating_point():
            raise ValueError(f"{what}: {name!r} has non-floating dtype {tensor.dtype}")
        if check_finite and not all_finite(tensor):
            raise ValueError(f"{what}: {name!r} contains NaN or Inf values")


class StreamingAverage:
    """Weighted mean of state dicts fed one at a time, in memory of a single adapter.

    One accumulator per key holds the running weighted mean (the running weighted sum divided by
    the running total weight). Updating the mean instead of the raw sum makes a single client, or
    identical clients, come back bit-exact, while costing the same memory and precision.
    Accumulators are float32, or float64 for keys whose first tensor is float64; `result()` casts
    back to the dtype of the first state's tensors.

    Every added state is validated completely before any accumulator changes, so a rejected
    client leaves the average untouched. Added tensors are only read, never modified: they may
    be views of read-only buffers (an update in Ray's object store).
    """

    def __init__(self) -> None:
        self._acc: dict[str, Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._shapes: dict[str, torch.Size] = {}
        self._count = 0
        self._total_weight = 0.0

    @property
    def count(self) -> int:
        """Number of states added so far."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights added so far."""
        return self._total_weight

    def add(self, state: StateDict, weight: float, *, check_finite: bool = True) -> None:
        """Fold `state` into the mean with `weight` (> 0 and finite, e.g. a client's data size).

        ``check_finite=False`` skips the NaN/inf scan (one pass over the state) for a caller
        that has just run it (the strategies check every update once, to name the bad tensor
        in the round's log); layout, type and dtype are always checked.
        """
        try:
            w = float(weight)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"weight must be a real number, got {weight!r}") from exc
        if not math.isfinite(w) or w <= 0.0:
            raise ValueError(f"weight must be finite and > 0, got {weight!r}")
        what = f"state #{self._count}"
        if self._count == 0:
            if len(state) == 0:
                raise ValueError(f"{what}: state is empty")
        else:
            self._check_layout(state, what)
        _check_tensors(state, what, check_finite)

        with torch.no_grad():
            if self._count == 0:
                for name, tensor in state.items():
                    acc_dtype = _work_dtype(tensor.dtype)
                    self._acc[name] = tensor.detach().to(dtype=acc_dtype, copy=True)
                    self._dtypes[name] = tensor.dtype
                    self._shapes[name] = tensor.shape
            else:
                new_total = self._total_weight + w
                frac = w / new_total
                for name, acc in self._acc.items():
                    x = state[name].detach().to(device=acc.device, dtype=acc.dtype)
                    acc.lerp_(x, frac)  # mean += frac * (x - mean), in place
        self._count += 1
        self._total_weight += w

    def result(self) -> dict[str, Tensor]:
        """The weighted mean as fresh tensors in the original dtype and key order."""
        if self._count == 0:
            raise ValueError("StreamingAverage.result() called before any state was added")
        return {
            name: acc.to(dtype=self._dtypes[name], copy=True) for name, acc in self._acc.items()
        }

    def _check_layout(self, state: StateDict, what: str) -> None:
        ref_keys, keys = set(self._shapes), set(state)
        if ref_keys != keys:
            raise ValueError(
                f"{what}: state names differ from the first state; missing "
                f"{sorted(ref_keys - keys)}, unexpected {sorted(keys - ref_keys)}"
            )
        for name, shape in self._shapes.items():
            tensor = state[name]
            if isinstance(tensor, Tensor) and tensor.shape != shape:
                raise ValueError(
                    f"{what}: shape of {name!r} is {tuple(tensor.shape)}, "
                    f"expected {tuple(shape)} as in the first state"
                )


def weighted_average(states: Iterable[tuple[StateDict, float]]) -> dict[str, Tensor]:
    """Weighted mean of `(state, weight)` pairs, pulled lazily so a generator of downloads works
    without holding every client adapter at once."""
    avg = StreamingAverage()
    for state, weight in states:
        avg.add(state, weight)
    return avg.result()


def server_update(
    global_state: StateDict, averaged_state: StateDict, server_lr: float = 1.0
) -> dict[str, Tensor]:
    """theta + eta_s * (avg - theta): the server step of FedAvg with a server learning rate.

    eta_s = 1 is plain FedAvg and returns copies of the averaged values exactly (no rounding from
    `theta + (avg - theta)`); other values interpolate (eta_s < 1) or extrapolate (eta_s > 1).
    Results take the dtype of `global_state`.
    """
    lr = float(server_lr)
    if not math.isfinite(lr) or lr <= 0.0:
        raise ValueError(f"server_lr must be finite and > 0, got {server_lr!r}")
    _check_same_layout(global_state, averaged_state, "averaged_state")
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, theta in global_state.items():
            avg = averaged_state[name].detach().to(device=theta.device)
            if lr == 1.0:
                out[name] = avg.to(dtype=theta.dtype, copy=True)
                continue
            work = _work_dtype(theta.dtype, avg.dtype)
            base = theta.detach().to(dtype=work, copy=True)
            base.lerp_(avg.to(dtype=work), lr)
            out[name] = base.to(dtype=theta.dtype)
    return out


def state_delta(new: StateDict, old: StateDict) -> dict[str, Tensor]:
    """new - old per key, in float32 (float64 if either side is), so low-precision adapters
    round-trip exactly through `apply_delta(old, delta)`."""
    _check_same_layout(new, old, "old")
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, n in new.items():
            o = old[name].detach().to(device=n.device)
            work = _work_dtype(n.dtype, o.dtype)
            out[name] = n.detach().to(dtype=work, copy=True).sub_(o.to(dtype=work))
    return out


def apply_delta(state: StateDict, delta: StateDict, scale: float = 1.0) -> dict[str, Tensor]:
    """state + scale * delta per key, computed in float32/float64 and cast to `state`'s dtypes."""
    s = float(scale)
    if not math.isfinite(s):
        raise ValueError(f"scale must be finite, got {scale!r}")
    _check_same_layout(state, delta, "delta")
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, t in state.items():
            d = delta[name].detach().to(device=t.device)
            work = _work_dtype(t.dtype, d.dtype)
            acc = t.detach().to(dtype=work, copy=True).add_(d.to(dtype=work), alpha=s)
            out[name] = acc.to(dtype=t.dtype)
    return out


def flatten_state(state: StateDict) -> Tensor:
    """All tensors as one 1-D float32 vector in key order (for logging and similarity checks)."""
    parts = [t.detach().reshape(-1).to(torch.float32) for t in state.values()]
    if not parts:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(parts)


def _sq_norm(tensor: Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor, dtype=torch.float64)) ** 2


def state_norm(state: StateDict) -> float:
    """Global L2 norm over all tensors, as a float64 sum of per-tensor squared norms (no concat)."""
    with torch.no_grad():
        return math.sqrt(sum(_sq_norm(t.detach()) for t in state.values()))


def state_distance(a: StateDict, b: StateDict) -> float:
    """Global L2 distance ||a - b|| over all tensors, one tensor-sized temporary at a time.

    Per tensor the squared norm is a dot product in the inputs' working precision (float32
    unless one is float64); the per-tensor sums are added in float64. For a metric this is
    plenty (relative error ~4e-7 for a 1M-float32 tensor) and it is 2x faster than a float64
    norm, which matters because the aggregator computes it once per client per round.
    """
    _check_same_layout(a, b, "b")
    total = 0.0
    with torch.no_grad():
        for name, x in a.items():
            work = _work_dtype(x.dtype, b[name].dtype)
            diff = x.detach().to(dtype=work) - b[name].detach().to(device=x.device, dtype=work)
            flat = diff.reshape(-1)
            total += float(torch.dot(flat, flat))
    return math.sqrt(total)
