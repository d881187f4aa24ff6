"""A sweep's trials: one flat row per trial directory, read from its run files alone.

A sweep (``firm-ray sweep``) runs many federated runs that differ in preference, beta,
algorithm or seed. Each trial writes an ordinary run directory, so this module reads nothing but
those files (no Ray, no Tune state) and works on a sweep that is still running, crashed half-way
or was copied elsewhere; calling it again overwrites the report with a fresh one.

Sweep directory layout (see docs/ARTIFACTS.md, "Sweep directories")
------------------------------------------------------------------

``sweeps/<name>/``

- ``sweep.yaml``: the sweep spec as given (top-level key ``sweep:`` with ``name``, ...).
- ``trials/<trial_id>/``: one run directory per trial (``config.yaml``, ``metrics.jsonl``,
  ``summary.json``; any of them may be missing).
- ``tune/``: Ray Tune's experiment state; ignored here.

Written by ``build_sweep_report`` (:mod:`firm_ray.tracking.sweep_report`; atomically, replaced
on every call):

- ``trials.csv`` / ``trials.json``: one row per trial directory (columns: ``TRIAL_COLUMNS`` plus
  ``final/<name>``, ``initial/<name>``, ``smoothness/<name>``, ``preference/<name>`` per
  objective, and ``on_front``).
- ``pareto.json``: the Pareto analysis over the completed trials
  (:mod:`firm_ray.tracking.sweep_analysis`, keys ``PARETO_KEYS``).
- ``pareto.png`` and ``drift.png`` (:mod:`firm_ray.tracking.sweep_plots`).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from firm_ray.config import load_config
from firm_ray.tracking.jsonl import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    read_metrics,
    read_summary,
)
from firm_ray.tracking.summary import finite_number, finite_vector, load_summary

__all__ = [
    "DRIFT_PNG",
    "PARETO_JSON",
    "PARETO_PNG",
    "PER_OBJECTIVE",
    "SWEEP_SPEC_FILE",
    "TRIALS_CSV",
    "TRIALS_DIR",
    "TRIALS_JSON",
    "TRIAL_COLUMNS",
    "collect_trials",
    "is_sweep_dir",
    "trial_label",
]

SWEEP_SPEC_FILE = "sweep.yaml"
TRIALS_DIR = "trials"
TRIALS_CSV = "trials.csv"
TRIALS_JSON = "trials.json"
PARETO_JSON = "pareto.json"
PARETO_PNG = "pareto.png"
DRIFT_PNG = "drift.png"

TRIAL_COLUMNS = (
    "trial_id",
    "label",
    "status",
    "algorithm",
    "beta",
    "preference",
    "seed",
    "mu",
    "learning_rate",
    "reward_names",
    "hypervolume",
    "mean_disagreement",
    "mean_param_drift",
    "mean_update_cosine",
    "final_update_cosine",
    "mean_update_coherence",
    "final_update_coherence",
    "final_pareto_stationarity",
    "final_kl",
    "epsilon",
    "aggregator",
    "attack",
    "bytes_up_per_client_round",
    "rounds_completed",
    "wall_time_s",
    "run_dir",
    "error",
)
"""The fixed columns of a trial row; the per-objective ones follow the sweep's reward names."""

PER_OBJECTIVE = ("preference", "final", "initial", "smoothness")
"""The per-objective column prefixes: ``<prefix>/<reward name>``."""

_CONFLICT = ("update_cosine", "update_coherence", "pareto_stationarity")

# --------------------------------------------------------------------------- trials


def is_sweep_dir(path: str | os.PathLike[str]) -> bool:
    """True for a directory written by ``firm-ray sweep`` (has sweep.yaml or trials/), so the
    CLI can tell ``firm-ray report SWEEP_DIR`` from ``firm-ray report RUN_DIR``."""
    path = Path(path)
    return (path / SWEEP_SPEC_FILE).is_file() or (path / TRIALS_DIR).is_dir()


def trial_label(algorithm: str | None, beta: float | None) -> str:
    """How a trial is grouped in plots and tables: ``"firm β=1"`` (beta only matters for FIRM),
    else the algorithm name."""
    if algorithm == "firm" and beta is not None:
        return f"firm β={beta:g}"
    return str(algorithm or "unknown")


def _natural_key(name: str) -> list[Any]:
    """Sort trial_2 before trial_10 (str and int parts alternate, so keys always compare)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _empty_row(trial_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS)
    row.update(trial_id=trial_dir.name, run_dir=str(trial_dir), status="not started")
    return row


def _config_fields(trial_dir: Path) -> dict[str, Any]:
    """The trial's settings from config.yaml; a config that no longer validates (written by an
    older version, edited by hand) is read as plain YAML, best effort."""
    path = trial_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        cfg = load_config(path)
    except ValueError:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a mapping") from None
        algo = data.get("algorithm") or {}
        rewards = data.get("rewards") or []
        names = [str(r.get("name", f"r{i}")) for i, r in enumerate(rewards) if isinstance(r, dict)]
        pref = finite_vector(algo.get("preference"))
        if pref is None and names and algo.get("preference") is None:
            pref = [1.0 / len(names)] * len(names)
        return {
            "algorithm": algo.get("name"),
            "beta": finite_number(algo.get("beta")),
            "preference": pref,
            "mu": finite_number(algo.get("mu")),
            "seed": (data.get("experiment") or {}).get("seed"),
            "learning_rate": finite_number((data.get("trainer") or {}).get("learning_rate")),
            "reward_names": names or None,
        }
    return {
        "algorithm": cfg.algorithm.name,
        # algorithm options (beta: firm only) exist only for the algorithms that have them
        "beta": getattr(cfg.algorithm, "beta", None),
        "preference": cfg.algorithm.preference_vector(cfg.num_objectives),
        "mu": cfg.algorithm.mu,
        "seed": cfg.experiment.seed,
        "learning_rate": cfg.trainer.learning_rate,
        "reward_names": [r.name for r in cfg.rewards],
    }


def _quiet_metrics(trial_dir: Path) -> list[dict[str, Any]] | None:
    """metrics.jsonl rows, None without the file. A running trial's half-written last line is
    normal here, so read_metrics' warning about it is silenced."""
    if not (trial_dir / METRICS_FILE).is_file():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return read_metrics(trial_dir)


def _trial_row(trial_dir: Path) -> dict[str, Any]:
    row = _empty_row(trial_dir)
    errors: list[str] = []
    try:
        fields = _config_fields(trial_dir)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        fields = {}
        errors.append(f"config.yaml: {exc}")

    metrics: list[dict[str, Any]] | None = None
    try:
        metrics = _quiet_metrics(trial_dir)
    except (OSError, ValueError) as exc:
        errors.append(str(exc))

    summary: dict[str, Any] = {}
    if (trial_dir / SUMMARY_FILE).is_file():
        try:
            summary = read_summary(trial_dir)
            row["status"] = str(summary.get("status") or "unknown")
        except (OSError, ValueError) as exc:
            row["status"] = "unreadable"
            errors.append(str(exc))
    elif metrics:
        row["status"] = "incomplete"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            summary = load_summary(trial_dir)  # provisional, from metrics.jsonl
        summary.pop("status", None)

    names = summary.get("reward_names") or fields.get("reward_names") or []
    names = [str(n) for n in names]
    algorithm = fields.get("algorithm") or summary.get("algorithm")
    beta = fields.get("beta") if algorithm == "firm" else None
    seed = fields.get("seed", summary.get("seed"))
    row.update(
        algorithm=algorithm,
        beta=beta,
        label=trial_label(algorithm, beta),
        preference=fields.get("preference"),
        seed=None if seed is None else int(seed),
        mu=fields.get("mu"),
        learning_rate=fields.get("learning_rate"),
        reward_names=names or None,
        hypervolume=finite_number(summary.get("hypervolume")),
        mean_disagreement=finite_number(summary.get("mean_disagreement")),
        final_kl=finite_number(summary.get("final_kl")),
        bytes_up_per_client_round=finite_number(summary.get("bytes_up_per_client_round")),
        rounds_completed=summary.get("rounds_completed", len(metrics) if metrics else 0),
        wall_time_s=finite_number(summary.get("wall_time_s")),
    )
    privacy = summary.get("privacy") or {}  # issue 16: null without DP / a robust rule
    robust = summary.get("robustness") or {}
    row["epsilon"] = finite_number(privacy.get("epsilon")) if privacy else None
    row["aggregator"] = robust.get("aggregator")
    row["attack"] = robust.get("attack")
    drifts = [d for r in metrics or [] if (d := finite_number(r.get("param_drift"))) is not None]
    row["mean_param_drift"] = float(np.mean(drifts)) if drifts else None
    for key in _CONFLICT:  # from the rows: absent in runs written before issue 15
        values = [v for r in metrics or [] if (v := finite_number(r.get(key))) is not None]
        row[f"final_{key}"] = values[-1] if values else None
        if key != "pareto_stationarity":  # an eval-time norm: its final value is what counts
            row[f"mean_{key}"] = float(np.mean(values)) if values else None
    for prefix, values in (
        ("preference", fields.get("preference")),
        ("final", summary.get("final_rewards")),
        ("initial", summary.get("initial_rewards")),
        ("smoothness", summary.get("smoothness")),
    ):
        values = list(values) if isinstance(values, (list, tuple)) else []
        for m, name in enumerate(names):
            row[f"{prefix}/{name}"] = finite_number(values[m]) if m < len(values) else None
    row["error"] = "; ".join(errors) or None
    return row


def collect_trials(sweep_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One flat row per directory under ``trials/``, sorted by trial id (naturally: t2 < t10).

    Every trial appears, however broken: status is the summary's (``completed``/``failed``),
    ``incomplete`` (metrics rows but no summary yet: running or killed), ``not started``
    (neither) or ``unreadable`` (a damaged file; ``error`` says which); unknown values are None.
    ``beta`` is set only for FIRM, the one algorithm it affects. Raises FileNotFoundError when
    ``sweep_dir`` is not a sweep directory.
    """
    sweep_dir = Path(sweep_dir)
    if not is_sweep_dir(sweep_dir):
        raise FileNotFoundError(
            f"{sweep_dir}: not a sweep directory (no {SWEEP_SPEC_FILE} and no {TRIALS_DIR}/)"
        )
    trials_dir = sweep_dir / TRIALS_DIR
    if not trials_dir.is_dir():
        return []
    dirs = [p for p in trials_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    rows = []
    for trial_dir in sorted(dirs, key=lambda p: _natural_key(p.name)):
        try:
            rows.append(_trial_row(trial_dir))
        except Exception as exc:  # one bad trial never takes the report down
            row = _empty_row(trial_dir)
            row.update(status="unreadable", label="unknown", error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
    return rows
