"""Per-trial records for the claims study, read from the trials' own files (no Ray).

Why not the sweep report's rows: the study needs metrics the trials table does not carry
(per-round update conflict, Pareto-stationarity, per-client gradient norms, the knobs that
define a setting), and reading config.yaml / summary.json / metrics.jsonl directly (the stable
artifact interface, docs/ARTIFACTS.md) keeps the bench working while the report's modules move.
Keys absent from older runs read as None; nothing here raises on a missing metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TRIALS_DIR = "trials"


def algo_key(algorithm: dict[str, Any]) -> str:
    """The study's name for an algorithm block: firm_b<beta>, jd_<aggregator>, else its name."""
    name = str(algorithm.get("name"))
    if name == "firm":
        return f"firm_b{float(algorithm.get('beta', 1.0)):g}"
    if name == "jd":
        return f"jd_{algorithm.get('aggregator', 'mgda')}"
    return name


def setting_key(advantage: str, optimizer: str | None, m: int) -> str:
    """One cell of the knob grid, e.g. ``group/adamw/M2``."""
    return f"{advantage}/{optimizer or 'default'}/M{m}"


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
    return rows


def _stationarity(row: dict[str, Any]) -> float | None:
    value = row.get("pareto_stationarity")
    if value is None and isinstance(row.get("eval"), dict):
        value = row["eval"].get("pareto_stationarity")
    return float(value) if isinstance(value, (int, float)) else None


def grad_norm_ratios(metrics: Sequence[dict[str, Any]]) -> list[float]:
    """max_m ||g_m|| / min_m ||g_m|| per client-round, from the rows' ``client_grad_norms``
    ({client: [M] mean per-objective gradient norm over its local steps}); [] when the trainer
    did not log them (runs before the metric existed)."""
    out = []
    for row in metrics:
        for norms in (row.get("client_grad_norms") or {}).values():
            vals = [float(v) for v in norms or [] if isinstance(v, (int, float))]
            if len(vals) >= 2 and min(vals) > 0 and all(map(math.isfinite, vals)):
                out.append(max(vals) / min(vals))
    return out


def lambda_deviations(
    metrics: Sequence[dict[str, Any]], preference: Sequence[float]
) -> list[float]:
    """||lambda_i - p||_2 per client-round: how far the clients' weights sit from the
    preference (0 for fedavg_ls by construction). At beta = 0 it measures how much the raw
    min-norm weights move, i.e. how much room regularization toward p has."""
    p = np.asarray(preference, dtype=float)
    out = []
    for row in metrics:
        for lam in (row.get("client_lambdas") or {}).values():
            if lam and len(lam) == p.size and all(isinstance(v, (int, float)) for v in lam):
                value = float(np.linalg.norm(np.asarray(lam, dtype=float) - p))
                if math.isfinite(value):
                    out.append(value)
    return out


def simplex_disagreement(metrics: Sequence[dict[str, Any]]) -> float | None:
    """Mean over rounds of the disagreement of the clients' lambdas each divided by its sum.

    FIRM's lambdas lie on the simplex already (this equals the run's ``disagreement``); jd's
    weights need not (PCGrad's are about 1 each, UPGrad's sum to more than 1), so the raw
    disagreement of jd measures another scale. Divided by their sums, every algorithm's weights
    are the mix of objectives its direction takes, and disagreement compares like with like."""
    per_round = []
    for row in metrics:
        mixes = []
        for lam in (row.get("client_lambdas") or {}).values():
            if not lam or not all(isinstance(v, (int, float)) for v in lam):
                continue
            total = float(sum(lam))
            if total > 0 and math.isfinite(total):
                mixes.append(np.asarray(lam, dtype=float) / total)
        if len(mixes) >= 2:
            mat = np.stack(mixes)
            per_round.append(float(np.linalg.norm(mat - mat.mean(axis=0), axis=1).mean()))
    return float(np.mean(per_round)) if per_round else None


def trial_record(run_dir: Path) -> dict[str, Any] | None:
    """One finished trial as the study's record, or None when it has no completed summary."""
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    if not (summary_path.is_file() and config_path.is_file()):
        return None
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("status") != "completed":
        return None
    cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    names = [r["name"] for r in cfg["rewards"]]
    m = len(names)
    algorithm, trainer = cfg["algorithm"], cfg["trainer"]
    preference = algorithm.get("preference") or [1.0 / m] * m
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    stationarity = [s for s in map(_stationarity, metrics) if s is not None]
    evals = [r for r in metrics if r.get("rewards") is not None]
    return {
        "run_dir": str(run_dir),
        "algo": algo_key(algorithm),
        "algorithm": algorithm.get("name"),
        "setting": setting_key(trainer.get("advantage", "group"), trainer.get("optimizer"), m),
        "advantage": trainer.get("advantage", "group"),
        "optimizer": trainer.get("optimizer"),
        "learning_rate": trainer.get("learning_rate"),
        "m": m,
        "seed": int(cfg["experiment"]["seed"]),
        "preference": [round(float(p), 6) for p in preference],
        "reward_names": names,
        "final": summary.get("final_rewards"),
        "initial": summary.get("initial_rewards"),
        "smoothness": summary.get("smoothness"),
        "mean_disagreement": summary.get("mean_disagreement"),
        "simplex_disagreement": simplex_disagreement(metrics),
        "mean_param_drift": _mean(r.get("param_drift") for r in metrics),
        "mean_update_cosine": _mean(r.get("update_cosine") for r in metrics),
        "mean_update_coherence": _mean(r.get("update_coherence") for r in metrics),
        "final_stationarity": stationarity[-1] if stationarity else None,
        "bytes_up_per_client_round": summary.get("bytes_up_per_client_round"),
        "wall_time_s": summary.get("wall_time_s"),
        "final_kl": summary.get("final_kl"),
        "rounds": len(metrics),
        "grad_norm_ratios": grad_norm_ratios(metrics),
        "lambda_deviation": lambda_deviations(metrics, preference),
        "curves": {
            "rewards": [r["rewards"] for r in evals],
            "disagreement": [r.get("disagreement") for r in metrics],
            "param_drift": [r.get("param_drift") for r in metrics],
            "update_cosine": [r.get("update_cosine") for r in metrics],
        },
    }


def load_records(sweep_dirs: Iterable[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of the completed trials under each sweep directory, and one line per trial
    directory left out (not completed or unreadable), so nothing is dropped silently."""
    records, skipped = [], []
    for sweep_dir in sweep_dirs:
        trials = Path(sweep_dir) / TRIALS_DIR
        if not trials.is_dir():
            continue
        for run_dir in sorted(p for p in trials.iterdir() if p.is_dir()):
            try:
                rec = trial_record(run_dir)
            except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
                skipped.append(f"{run_dir}: unreadable ({type(exc).__name__})")
                continue
            if rec is None:
                skipped.append(f"{run_dir}: not completed")
            else:
                records.append(rec)
    return records, skipped
