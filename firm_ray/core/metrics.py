"""Per-round federation metrics: how far clients' objective weightings and adapters spread, how
much their updates conflict, how steadily the global rewards move, and how far the global model
is from Pareto stationarity.

These are the diagnostics FIRM's analysis is about: in-client regularization should keep the
clients' preference weights (lambdas) close, limit client drift from the global model, and make
the per-objective reward curves smooth rather than oscillating from round to round. Lambda
disagreement is 0 by construction for algorithms without client-chosen weights (fedavg_ls,
fmgda); :class:`UpdateConflict` and :func:`pareto_stationarity` mean the same for every
algorithm, so they are the ones to compare algorithms on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from firm_ray.core.aggregation import state_distance
from firm_ray.core.solver import firm_weights

__all__ = [
    "UpdateConflict",
    "disagreement",
    "param_drift",
    "pareto_stationarity",
    "smoothness",
]


def _as_matrix(values: Tensor | Sequence[Sequence[float]], name: str) -> Tensor:
    """A finite 2-D float64 tensor, or a ValueError that says what was wrong."""
    try:
        mat = torch.as_tensor(values, dtype=torch.float64, device="cpu")  # metric values: host math
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a 2-D numeric array: {exc}") from exc
    if mat.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(mat.shape)}")
    if not bool(torch.isfinite(mat).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return mat


def disagreement(lambdas: Tensor | Sequence[Sequence[float]]) -> float:
    """Mean over clients i of ||lambda_i - mean_j lambda_j||_2 for lambdas of shape [clients, M].

    Zero means every client weighted the objectives identically; a single client gives 0.0.
    """
    mat = _as_matrix(lambdas, "lambdas")
    if mat.shape[0] == 0 or mat.shape[1] == 0:
        raise ValueError(f"lambdas must be non-empty, got shape {tuple(mat.shape)}")
    centered = mat - mat.mean(dim=0, keepdim=True)
    return float(torch.linalg.vector_norm(centered, dim=1).mean())


def param_drift(
    client_states: Iterable[Mapping[str, Tensor]], new_global: Mapping[str, Tensor]
) -> float:
    """Mean over clients of ||theta_i - theta^{t+1}||_2 (global L2 over all adapter tensors).

    Iterates `client_states` once, so a generator of downloaded adapters is never held in full.
    """
    total = 0.0
    count = 0
    for state in client_states:
        total += state_distance(state, new_global)
        count += 1
    if count == 0:
        raise ValueError("param_drift needs at least one client state")
    return total / count


def smoothness(reward_history: Tensor | Sequence[Sequence[float]]) -> list[float]:
    """Per objective, the population std (ddof=0) of round-to-round reward changes.

    `reward_history` is [rounds, M]. A steady trend (constant change) scores 0 and oscillation
    scores high. With fewer than 2 changes (fewer than 3 rounds) the spread of changes is not
    defined, so every objective gets 0.0.
    """
    hist = _as_matrix(reward_history, "reward_history")
    num_objectives = hist.shape[1]
    changes = hist[1:] - hist[:-1]
    if changes.shape[0] < 2:
        return [0.0] * num_objectives
    std = changes.std(dim=0, correction=0)
    return [float(v) for v in std]


class UpdateConflict:
    """Client-update conflict of one round, streamed: ``add`` each client's delta
    theta_i - theta^t once (any order), then ``result()``.

    - ``update_cosine``: mean over client pairs i < j of cos(delta_i, delta_j). 1: every client
      moved the same way; ~0: unrelated directions; < 0: clients undo each other. One pass, from
      the sum of unit vectors U = sum_i u_i: sum_{i != j} u_i.u_j = ||U||^2 - sum_i ||u_i||^2.
    - ``update_coherence``: ||mean_i delta_i|| / mean_i ||delta_i|| in [0, 1]: how much of the
      clients' movement survives averaging (1: identical directions, 0: they cancel).

    Both are None with fewer than 2 clients. A zero delta (a client that did not move) has no
    direction: it counts as orthogonal to every other (cosine 0) and adds 0 to both sums; if
    every delta is zero ``update_coherence`` is None. Unweighted (every client counts once,
    whatever its data size), so the numbers mean the same for every algorithm.

    Memory: two adapter-sized float64 accumulators (sum of deltas, sum of unit deltas); each
    added delta is only read (it may be a view of a read-only buffer).
    """

    def __init__(self) -> None:
        self._sum: dict[str, Tensor] = {}
        self._unit_sum: dict[str, Tensor] = {}
        self._count = 0
        self._unit_sq = 0.0  # sum_i ||u_i||^2: the number of non-zero deltas
        self._norm_sum = 0.0

    @property
    def count(self) -> int:
        """Number of deltas added so far."""
        return self._count

    def add(self, delta: Mapping[str, Tensor]) -> None:
        """Fold one client's delta in; ValueError for a non-finite one or a layout differing
        from the first delta's (names and shapes), before anything changes."""
        self._check(delta)
        with torch.no_grad():
            sq = sum(
                float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64)) ** 2
                for t in delta.values()
            )
            norm = math.sqrt(sq)
            if not math.isfinite(norm):
                raise ValueError(f"delta #{self._count} is not finite (norm {norm})")
            for name, tensor in delta.items():
                x = tensor.detach().to(dtype=torch.float64)
                if name not in self._sum:
                    self._sum[name] = torch.zeros_like(x)
                    self._unit_sum[name] = torch.zeros_like(x)
                self._sum[name].add_(x.to(self._sum[name].device))
                if norm > 0.0:
                    self._unit_sum[name].add_(x.to(self._unit_sum[name].device), alpha=1 / norm)
        self._count += 1
        self._norm_sum += norm
        self._unit_sq += 1.0 if norm > 0.0 else 0.0

    def result(self) -> dict[str, float | None]:
        """{"update_cosine", "update_coherence"} (None with fewer than 2 deltas)."""
        n = self._count
        if n < 2:
            return {"update_cosine": None, "update_coherence": None}
        unit_sq = _sq_norm(self._unit_sum.values())
        cosine = (unit_sq - self._unit_sq) / (n * (n - 1))
        coherence = (
            math.sqrt(_sq_norm(self._sum.values())) / self._norm_sum if self._norm_sum else None
        )
        return {"update_cosine": float(cosine), "update_coherence": coherence}

    def _check(self, delta: Mapping[str, Tensor]) -> None:
        what = f"delta #{self._count}"
        if not delta:
            raise ValueError(f"{what} is empty")
        for name, tensor in delta.items():
            if not isinstance(tensor, Tensor):
                raise ValueError(f"{what}: {name!r} is a {type(tensor).__name__}, not a Tensor")
        if not self._sum:
            return
        if set(delta) != set(self._sum):
            raise ValueError(
                f"{what}: tensor names differ from the first delta's; missing "
                f"{sorted(set(self._sum) - set(delta))}, unexpected "
                f"{sorted(set(delta) - set(self._sum))}"
            )
        for name, acc in self._sum.items():
            if delta[name].shape != acc.shape:
                raise ValueError(
                    f"{what}: shape of {name!r} is {tuple(delta[name].shape)}, expected "
                    f"{tuple(acc.shape)}"
                )


def _sq_norm(tensors: Iterable[Tensor]) -> float:
    return sum(float(torch.dot(t.reshape(-1), t.reshape(-1))) for t in tensors)


def pareto_stationarity(grads: Tensor) -> float:
    """||sum_m lambda*_m g_m|| for the min-norm convex combination lambda* of the [M, P]
    per-objective gradients (MGDA's problem, ``firm_weights(gram, 0.0)``).

    0 exactly at a Pareto-stationary point (some convex combination of the gradients vanishes:
    no direction improves every objective), which is the convergence criterion of FIRM's
    analysis; for one objective it is ||g||. float64 math; ValueError for a non-2-D, empty or
    non-finite input.
    """
    if grads.dim() != 2 or grads.shape[0] == 0 or grads.shape[1] == 0:
        raise ValueError(f"grads must be a non-empty [M, P] matrix, got {tuple(grads.shape)}")
    g = grads.detach().to(dtype=torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise ValueError("grads contain NaN or Inf values")
    lam = firm_weights(g @ g.T, 0.0)
    return float(torch.linalg.vector_norm(lam.to(g.device) @ g))
