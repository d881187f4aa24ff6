"""A sweep's Pareto analysis: which completed trials are non-dominated, and hypervolumes.

Only trials with status ``completed``, finite final rewards and the sweep's objectives enter the
front and the hypervolumes; pareto.json lists the others with the reason. Any number of
objectives: moocore computes the front and the exact hypervolume in 2-D, 3-D and beyond.

Reference point: the elementwise minimum of those trials' ``initial_rewards``. Every trial of one
world and seed starts from the same initial policy, so its initial eval rewards are the natural
"no progress" corner and a hypervolume measures improvement over it; with several seeds (or
worlds) the initial rewards differ slightly and their minimum is the conservative common
reference, one point against which all trials are compared.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from firm_ray.config import ALGORITHMS
from firm_ray.core.pareto import hypervolume, pareto_mask
from firm_ray.tracking.summary import finite_vector
from firm_ray.tracking.sweep_trials import SWEEP_SPEC_FILE

__all__ = ["PARETO_KEYS", "SweepAnalysis", "analyse_sweep"]

PARETO_KEYS = (
    "sweep_name",
    "sweep_dir",
    "reward_names",
    "reference",
    "reference_rule",
    "n_trials",
    "n_included",
    "n_excluded",
    "excluded",
    "hypervolume",
    "front",
    "by_label",
    "by_algorithm",
    "files",
)
"""The keys of pareto.json."""

_REFERENCE_RULE = (
    "elementwise minimum of the included trials' initial_rewards (the initial policy's eval "
    "rewards; identical for every trial of one world and seed, and the conservative common "
    "corner when seeds differ)"
)


def _sweep_name(sweep_dir: Path) -> str:
    try:
        spec = yaml.safe_load((sweep_dir / SWEEP_SPEC_FILE).read_text(encoding="utf-8"))
        name = (spec.get("sweep") or {}).get("name")
    except (OSError, AttributeError, yaml.YAMLError):
        name = None
    return str(name) if name else sweep_dir.resolve().name


def _sweep_reward_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The objectives most completed trials share (a sweep normally has one set)."""
    counts = Counter(
        tuple(r["reward_names"]) for r in rows if r["reward_names"] and r["status"] == "completed"
    )
    if not counts:
        counts = Counter(tuple(r["reward_names"]) for r in rows if r["reward_names"])
    return list(counts.most_common(1)[0][0]) if counts else []


def _objective_vector(row: dict[str, Any], prefix: str, names: Sequence[str]) -> list[float] | None:
    values = [row.get(f"{prefix}/{n}") for n in names]
    return finite_vector(values) if names else None


def _exclusion(row: dict[str, Any], names: Sequence[str]) -> str | None:
    """Why a trial stays out of the front, or None when it enters it."""
    if row["status"] != "completed":
        return f"status {row['status']}"
    if row["reward_names"] and list(row["reward_names"]) != list(names):
        return f"objectives {row['reward_names']} differ from the sweep's {list(names)}"
    if _objective_vector(row, "final", names) is None:
        return "final_rewards missing or non-finite"
    return None


def _group_key(row: dict[str, Any]) -> tuple[int, float, str]:
    algo = row["algorithm"]
    order = ALGORITHMS.index(algo) if algo in ALGORITHMS else len(ALGORITHMS)
    return (order, -1.0 if row["beta"] is None else float(row["beta"]), row["label"])


def _analyse(
    included: Sequence[dict[str, Any]],
    points: np.ndarray,
    reference: np.ndarray | None,
    key: Callable[[dict[str, Any]], str],
) -> dict[str, dict[str, Any]]:
    """Per group: trials, hypervolume of their final points (common reference), their front."""
    groups: dict[str, list[int]] = {}
    for i, row in sorted(enumerate(included), key=lambda ir: _group_key(ir[1])):
        groups.setdefault(key(row), []).append(i)
    out = {}
    for name, idx in groups.items():
        pts = points[idx]
        mask = pareto_mask(pts)
        out[name] = {
            "n_trials": len(idx),
            "hypervolume": None if reference is None else hypervolume(pts, reference),
            "front": [included[i]["trial_id"] for i, on in zip(idx, mask, strict=True) if on],
            "trial_ids": [included[i]["trial_id"] for i in idx],
        }
    return out


@dataclass(frozen=True)
class SweepAnalysis:
    """pareto.json's content, the trials it includes and their final points ([n, M])."""

    pareto: dict[str, Any]
    included: list[dict[str, Any]]
    points: np.ndarray


def analyse_sweep(
    sweep_dir: Path, rows: list[dict[str, Any]], files: Sequence[str]
) -> SweepAnalysis:
    """The Pareto analysis of ``rows`` (``collect_trials``'s); sets each row's ``on_front``
    (None for a trial left out). ``files``: the report files, listed in pareto.json."""
    names = _sweep_reward_names(rows)
    included, excluded = [], []
    for row in rows:
        reason = _exclusion(row, names)
        if reason is None:
            included.append(row)
        else:
            excluded.append(
                {"trial_id": row["trial_id"], "status": row["status"], "reason": reason}
            )
    points = np.array([_objective_vector(r, "final", names) for r in included], dtype=np.float64)
    points = points.reshape(len(included), len(names))
    initials = [v for r in included if (v := _objective_vector(r, "initial", names)) is not None]
    reference = np.min(initials, axis=0) if initials else None

    mask = pareto_mask(points) if len(included) else np.zeros(0, dtype=bool)
    on_front = {r["trial_id"] for r, on in zip(included, mask, strict=True) if on}
    included_ids = {id(r) for r in included}
    for row in rows:
        row["on_front"] = row["trial_id"] in on_front if id(row) in included_ids else None
    front = sorted(
        (
            {
                "trial_id": r["trial_id"],
                "label": r["label"],
                "algorithm": r["algorithm"],
                "seed": r["seed"],
                "preference": r["preference"],
                "point": points[i].tolist(),
            }
            for i, r in enumerate(included)
            if r["trial_id"] in on_front
        ),
        key=lambda f: tuple(f["point"]),
    )
    overall = None
    if reference is not None and len(included):
        overall = hypervolume(points, reference)
    pareto = {
        "sweep_name": _sweep_name(sweep_dir),
        "sweep_dir": str(sweep_dir),
        "reward_names": names,
        "reference": None if reference is None else reference.tolist(),
        "reference_rule": _REFERENCE_RULE
        + ("" if initials else "; null: no included trial reported initial_rewards"),
        "n_trials": len(rows),
        "n_included": len(included),
        "n_excluded": len(excluded),
        "excluded": excluded,
        "hypervolume": overall,
        "front": front,
        "by_label": _analyse(included, points, reference, lambda r: r["label"]),
        "by_algorithm": _analyse(included, points, reference, lambda r: str(r["algorithm"])),
        "files": list(files),
    }
    return SweepAnalysis(pareto, included, points)
