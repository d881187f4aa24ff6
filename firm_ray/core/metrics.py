"""Per-round federation metrics: how far clients' objective weightings and adapters spread, and
how steadily the global rewards move.

These are the diagnostics FIRM's analysis is about: in-client regularization should keep the
clients' preference weights (lambdas) close, limit client drift from the global model, and make
the per-objective reward curves smooth rather than oscillating from round to round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from firm_ray.core.aggregation import state_distance

__all__ = ["disagreement", "param_drift", "smoothness"]


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
