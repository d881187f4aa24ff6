"""Pareto analysis of a preference sweep: which runs are non-dominated, and how much objective
space they cover (hypervolume).

Rewards are maximized by default (`maximize=True`); pass `maximize=False` for costs. The heavy
lifting is moocore's exact O(n log n) (2-D/3-D) algorithms; this module only validates input so a
NaN or a misshaped reference fails loudly instead of silently producing a wrong front.
"""

from __future__ import annotations

import moocore
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["hypervolume", "pareto_front", "pareto_mask"]


def _as_points(points: ArrayLike, num_objectives: int | None = None) -> np.ndarray:
    """A finite float64 [n, M] array; an empty input becomes [0, M] (M from the caller if known)."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0 and arr.ndim <= 1:
        return np.zeros((0, num_objectives or 0), dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array [n, M], got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError("points must have at least one objective column")
    if num_objectives is not None and arr.shape[1] != num_objectives:
        raise ValueError(
            f"points have {arr.shape[1]} objectives but the reference has {num_objectives}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("points contain NaN or Inf values")
    return arr


def pareto_mask(points: ArrayLike, maximize: bool = True) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `points` ([n, M]).

    Every copy of a duplicated non-dominated point is kept (True): duplicates are usually distinct
    runs that reached the same rewards, and dropping all but one would hide runs from the report.
    """
    arr = _as_points(points)
    if arr.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    mask = moocore.is_nondominated(arr, maximise=bool(maximize), keep_weakly=True)
    return np.asarray(mask, dtype=bool)


def pareto_front(points: ArrayLike, maximize: bool = True) -> np.ndarray:
    """The non-dominated points (duplicates kept, as in `pareto_mask`), sorted ascending by the
    first objective and then by the following ones, ready to plot as a front."""
    arr = _as_points(points)
    front = arr[pareto_mask(arr, maximize=maximize)] if arr.shape[0] else arr
    if front.shape[0] == 0:
        return front
    order = np.lexsort(front.T[::-1])
    return front[order]


def hypervolume(points: ArrayLike, reference: ArrayLike, maximize: bool = True) -> float:
    """Volume of objective space dominated by `points` and bounded by `reference`.

    Only points strictly better than the reference in every objective add volume; the others are
    dropped before calling moocore, and 0.0 is returned when none remain.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 1 or ref.shape[0] == 0:
        raise ValueError(f"reference must be a non-empty 1-D vector, got shape {ref.shape}")
    if not np.isfinite(ref).all():
        raise ValueError("reference contains NaN or Inf values")
    arr = _as_points(points, num_objectives=ref.shape[0])
    better = arr > ref if maximize else arr < ref
    arr = arr[better.all(axis=1)]
    if arr.shape[0] == 0:
        return 0.0
    return float(moocore.hypervolume(arr, ref=ref, maximise=bool(maximize)))
