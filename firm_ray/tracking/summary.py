"""A run's summary (summary.json) and the readers of its metrics rows, from its files alone.

The runtime (``build_summary`` at the end of a run), ``firm-ray report`` (``load_summary``) and
the sweep report share this one implementation, so a summary rebuilt later from metrics.jsonl
equals the one written at the end of the run. Plots: :mod:`firm_ray.tracking.plots`; the
terminal report: :mod:`firm_ray.tracking.report`.

Run directory schema (stable: add keys, never rename or remove; see docs/ARTIFACTS.md)
------------------------------------------------------------------------------------

``runs/<name>/``

- ``config.yaml``: the resolved config (``load_config`` of it gives the run's config back).
- ``metrics.jsonl``: one JSON object per round, in round order, one row per round (a resumed
  run drops the rows it re-runs). Keys:

  ``round`` int, 0-based.
  ``rewards`` list[float] per objective: mean reward of the GLOBAL policy on the held-out eval
  set after this round's aggregation; null when not evaluated this round.
  ``reward_names`` list[str], the objectives in config order.
  ``rewards_by_category`` {category: list[float]} or null.
  ``kl`` float or null: KL of the global policy to the reference on the eval set.
  ``client_lambdas`` {client_id as str: list[float]}: each sampled client's mean lambda over
  its local steps.
  ``disagreement`` float or null: mean_i ||lambda_i - mean_j lambda_j||_2.
  ``param_drift`` float: mean_i ||theta_i - theta^{t+1}||_2.
  ``bytes_up`` / ``bytes_down`` {client_id as str: int}: exact serialized payload per client.
  ``clients`` list[int]: the sampled clients.
  ``failed`` list of {"client": int, "reason": str}.
  ``train_rewards`` list[float]: mean over clients of the rewards seen in local training.
  ``timing`` {"generate", "score", "forward", "backward", "solve", "step": client seconds summed
  over clients, null when withheld (DP); "aggregation", "evaluation", "round_wall",
  "orchestration_overhead": seconds}.
  ``local_steps`` / ``skipped_steps`` int: local steps the reporting clients attempted / skipped;
  ``skip_fraction`` float or null; ``skip_reasons`` list[str] (distinct, at most 3, no client
  text); ``truncated_fraction``, ``importance_weight`` float or null (means over clients);
  ``skip_rejected_clients`` int: clients left out because every local step was skipped.
  ``faults`` {"worker_restarts", "aggregator_restarts": int, "reruns": list[int], "events":
  list[str]}: actors replaced and clients re-run in this round (runtime/faults.py).
  ``update_cosine`` float or null: mean pairwise cosine of the accepted clients' deltas
  theta_i - theta^t; ``update_coherence`` float or null: ||mean_i delta_i|| / mean_i ||delta_i||
  (both null with fewer than 2 clients; every algorithm). ``pareto_stationarity`` float or null:
  norm of the min-norm convex combination of the per-objective gradients of the global model on
  the eval prompts (FIRM's convergence criterion); null when not evaluated. Rows of older runs
  lack these three keys: readers treat them as unknown.

  Non-finite floats are written as null (strict JSON). A killed run may leave a truncated last
  line; readers skip it (``read_metrics``).
- ``summary.json``: ``algorithm``, ``seed``, ``reward_names``, ``initial_rewards`` (eval rewards
  of the initial policy), ``final_rewards`` (the last evaluated round's), ``final_round``,
  ``hypervolume`` (of the final reward vector w.r.t. the initial rewards as reference point; 0
  when it does not dominate them, null when either is unknown), ``smoothness`` (per objective:
  std of round-to-round changes over the evaluated rows), ``bytes_up_per_client_round``,
  ``bytes_down_per_client_round`` (means over client-rounds), ``mean_disagreement``,
  ``final_kl``, ``failed_client_rounds``, ``rounds_completed``, ``wall_time_s``, ``run_dir``,
  ``status`` ("completed" | "failed" | "stopped": ended early by a sweep's scheduler |
  "interrupted": SIGINT/SIGTERM, resumable),
  ``local_steps``, ``skipped_steps``, ``skip_fraction``, ``first_skip_reason``, ``faults``
  ({"worker_restarts", "aggregator_restarts", "client_reruns"}) (run totals),
  ``mean_update_cosine``, ``mean_update_coherence`` (means of the non-null row values),
  ``final_pareto_stationarity`` (the last non-null one); null when unknown.
- ``adapter/`` (PEFT dir), ``plots/*.png`` (``make_plots``), ``checkpoints/``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from firm_ray.core.metrics import smoothness
from firm_ray.core.pareto import hypervolume
from firm_ray.tracking.jsonl import CONFIG_FILE, SUMMARY_FILE, read_metrics, read_summary

__all__ = [
    "CONFLICT_KEYS",
    "FAULT_COUNTS",
    "METRICS_KEYS",
    "STATUSES",
    "SUMMARY_KEYS",
    "StepTotals",
    "build_summary",
    "evaluated_rounds",
    "fault_totals",
    "finite_number",
    "finite_vector",
    "load_summary",
    "read_config_yaml",
    "row_reward_names",
]

METRICS_KEYS = (
    "round",
    "rewards",
    "reward_names",
    "rewards_by_category",
    "kl",
    "client_lambdas",
    "client_grad_norms",
    "disagreement",
    "param_drift",
    "bytes_up",
    "bytes_down",
    "clients",
    "failed",
    "train_rewards",
    "timing",
    "local_steps",
    "skipped_steps",
    "skip_fraction",
    "skip_reasons",
    "truncated_fraction",
    "importance_weight",
    "skip_rejected_clients",
    "faults",
    "update_cosine",
    "update_coherence",
    "pareto_stationarity",
    "privacy",
    "robustness",
)
"""The keys of every metrics.jsonl row (rows of older runs lack the last five)."""

CONFLICT_KEYS = ("update_cosine", "update_coherence", "pareto_stationarity")
"""Issue 15's cross-algorithm metrics: null or absent (older runs) when unknown."""

SUMMARY_KEYS = (
    "algorithm",
    "seed",
    "reward_names",
    "initial_rewards",
    "final_rewards",
    "final_round",
    "hypervolume",
    "smoothness",
    "bytes_up_per_client_round",
    "bytes_down_per_client_round",
    "mean_disagreement",
    "final_kl",
    "failed_client_rounds",
    "rounds_completed",
    "wall_time_s",
    "run_dir",
    "status",
    "local_steps",
    "skipped_steps",
    "skip_fraction",
    "first_skip_reason",
    "faults",
    "mean_update_cosine",
    "mean_update_coherence",
    "final_pareto_stationarity",
    "privacy",
    "robustness",
)
"""The keys of summary.json."""

STATUSES = ("completed", "failed", "stopped", "interrupted")

FAULT_COUNTS = ("worker_restarts", "aggregator_restarts", "node_losses")


# --------------------------------------------------------------------------- reading rows


def finite_vector(value: Any) -> list[float] | None:
    """A list of finite floats, or None when missing / null / partly null / non-finite."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if any(v is None for v in value):
        return None
    out = [float(v) for v in value]
    return out if all(math.isfinite(v) for v in out) else None


def finite_number(value: Any) -> float | None:
    """A finite float, or None for None, bools, non-numbers, NaN and inf."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def row_reward_names(metrics: Sequence[dict[str, Any]]) -> list[str]:
    """The objectives of the last row that names them ([] when none does)."""
    for row in reversed(metrics):
        names = row.get("reward_names")
        if names:
            return [str(n) for n in names]
    return []


def evaluated_rounds(metrics: Sequence[dict[str, Any]]) -> list[tuple[int, list[float]]]:
    """(round, rewards) of the rows where the global policy was evaluated."""
    out = []
    for row in metrics:
        rewards = finite_vector(row.get("rewards"))
        if rewards is not None:
            out.append((int(row["round"]), rewards))
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _column(metrics: Sequence[dict[str, Any]], key: str) -> list[float]:
    """The finite values of ``key`` over the rows, in row order (null and absent skipped)."""
    return [v for row in metrics if (v := finite_number(row.get(key))) is not None]


def _per_client_values(metrics: Sequence[dict[str, Any]], key: str) -> list[float]:
    values: list[float] = []
    for row in metrics:
        per_client = row.get(key) or {}
        values.extend(float(v) for v in per_client.values() if finite_number(v) is not None)
    return values


# --------------------------------------------------------------------------- local steps


@dataclass(frozen=True)
class StepTotals:
    """Local steps attempted and skipped over a run, and the first reason a step was skipped.

    ``known`` is False for rows written before step counts existed (their totals are unknown,
    not zero). The round loop keeps these to enforce ``trainer.max_skip_fraction``.
    """

    local: int = 0
    skipped: int = 0
    first_reason: str | None = None
    known: bool = False

    def plus(self, row: Mapping[str, Any]) -> StepTotals:
        """These totals with one metrics row's (or one failed round's) counts added."""
        if finite_number(row.get("local_steps")) is None:
            return self
        reasons = row.get("skip_reasons") or []
        first = self.first_reason or (str(reasons[0]) if reasons else None)
        return StepTotals(
            local=self.local + int(row["local_steps"]),
            skipped=self.skipped + int(finite_number(row.get("skipped_steps")) or 0),
            first_reason=first,
            known=True,
        )

    @classmethod
    def of_rows(cls, metrics: Sequence[Mapping[str, Any]]) -> StepTotals:
        totals = cls()
        for row in metrics:
            totals = totals.plus(row)
        return totals

    @property
    def fraction(self) -> float | None:
        """skipped / attempted, None before any step."""
        return self.skipped / self.local if self.local > 0 else None


# --------------------------------------------------------------------------- summary


def build_summary(
    run_dir: str | os.PathLike[str],
    metrics: Sequence[dict[str, Any]],
    algorithm: str,
    seed: int,
    initial_rewards: Sequence[float] | None,
    wall_time_s: float,
    status: str,
    *,
    reward_names: Sequence[str] | None = None,
    step_totals: StepTotals | None = None,
    pending_faults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json's fields from the metrics rows (see the module docstring).

    ``reward_names`` is only needed when no row carries them (a run that failed before round 0).
    ``step_totals``: the run's own counts when they include steps no row holds (a round that
    failed, e.g. because every client skipped every step); default: summed over the rows.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    names = row_reward_names(metrics) or [str(n) for n in (reward_names or [])]
    initial = finite_vector(initial_rewards)
    evaluated = evaluated_rounds(metrics)
    final_round, final = evaluated[-1] if evaluated else (None, None)

    hv: float | None = None
    if initial is not None and final is not None and len(initial) == len(final):
        hv = hypervolume([final], initial)

    smooth = smoothness([r for _, r in evaluated]) if evaluated else None
    disagreements = _column(metrics, "disagreement")
    stationarity = _column(metrics, "pareto_stationarity")
    final_kl = next(
        (kl for row in reversed(metrics) if (kl := finite_number(row.get("kl"))) is not None), None
    )
    steps = step_totals if step_totals is not None else StepTotals.of_rows(metrics)
    return {
        "algorithm": str(algorithm),
        "seed": int(seed),
        "reward_names": names,
        "initial_rewards": initial,
        "final_rewards": final,
        "final_round": final_round,
        "hypervolume": hv,
        "smoothness": smooth,
        "bytes_up_per_client_round": _mean(_per_client_values(metrics, "bytes_up")),
        "bytes_down_per_client_round": _mean(_per_client_values(metrics, "bytes_down")),
        "mean_disagreement": _mean(disagreements),
        "final_kl": final_kl,
        "failed_client_rounds": sum(len(row.get("failed") or []) for row in metrics),
        "rounds_completed": len(metrics),
        "wall_time_s": float(wall_time_s),
        "run_dir": str(Path(run_dir)),
        "status": status,
        "local_steps": steps.local if steps.known else None,
        "skipped_steps": steps.skipped if steps.known else None,
        "skip_fraction": steps.fraction if steps.known else None,
        "first_skip_reason": steps.first_reason,
        "faults": fault_totals(list(metrics), pending_faults),
        "mean_update_cosine": _mean(_column(metrics, "update_cosine")),
        "mean_update_coherence": _mean(_column(metrics, "update_coherence")),
        "final_pareto_stationarity": stationarity[-1] if stationarity else None,
        "privacy": privacy_totals(metrics),
        "robustness": robustness_totals(metrics),
    }


def privacy_totals(metrics: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """DP over the run: epsilon spent (the last row's, at ``delta``), the final clip norm and
    the client-rounds the server had to clip; None when the run had no DP."""
    rows = [row["privacy"] for row in metrics if isinstance(row.get("privacy"), dict)]
    if not rows:
        return None
    last = rows[-1]
    return {
        "epsilon": finite_number(last.get("epsilon")),  # null: infinite (no noise)
        "delta": last.get("delta"),
        "final_clip": last.get("next_clip") or last.get("clip"),
        "server_clipped_client_rounds": sum(len(r.get("server_clipped") or []) for r in rows),
    }


def robustness_totals(metrics: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The aggregation rule and the attack over the run: malicious client-rounds, how many of
    them the server rejected (e.g. NaN) and, for (Multi-)Krum, how many it selected anyway."""
    rows = [row["robustness"] for row in metrics if isinstance(row.get("robustness"), dict)]
    if not rows:
        return None
    attacker_rounds = rejected = selected = 0
    for row, block in zip(
        (r for r in metrics if isinstance(r.get("robustness"), dict)), rows, strict=True
    ):
        bad = set(block.get("attackers") or [])
        attacker_rounds += len(bad)
        rejected += sum(1 for f in row.get("failed") or [] if f.get("client") in bad)
        selected += sum(1 for c in block.get("selected") or [] if c in bad)
    return {
        "aggregator": rows[0].get("aggregator"),
        "attack": rows[0].get("attack"),
        "attacker_client_rounds": attacker_rounds,
        "attacker_updates_rejected": rejected,
        "attacker_updates_selected": selected if any("selected" in r for r in rows) else None,
    }


def fault_totals(
    metrics: Sequence[dict[str, Any]], pending: dict[str, Any] | None = None
) -> dict[str, int]:
    """Workers replaced, aggregators recreated, nodes lost and clients re-run over the run's rows
    (each row's ``faults``, written by runtime/faults.py; rows of older runs have none and count
    0), plus ``pending``: faults no row holds (the last round replayed while checkpointing)."""
    totals = dict.fromkeys((*FAULT_COUNTS, "client_reruns"), 0)
    for faults in [*(row.get("faults") or {} for row in metrics), pending or {}]:
        for key in FAULT_COUNTS:
            totals[key] += int(finite_number(faults.get(key)) or 0)
        totals["client_reruns"] += len(faults.get("reruns") or [])
    return totals


def read_config_yaml(run_dir: Path) -> dict[str, Any]:
    """config.yaml as plain YAML ({} when missing or unreadable): readers of old runs must not
    depend on the current schema."""
    try:
        data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def load_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """summary.json, or, for a run still going or killed before writing it, a provisional
    summary rebuilt from metrics.jsonl and config.yaml with status "incomplete"."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY_FILE).is_file():
        return read_summary(run_dir)
    metrics = read_metrics(run_dir)  # FileNotFoundError: not a run dir
    config = read_config_yaml(run_dir)
    algorithm = (config.get("algorithm") or {}).get("name", "unknown")
    seed = (config.get("experiment") or {}).get("seed", 0)
    names = [r.get("name", f"r{i}") for i, r in enumerate(config.get("rewards") or [])]
    wall = sum(finite_number((row.get("timing") or {}).get("round_wall")) or 0.0 for row in metrics)
    summary = build_summary(
        run_dir, metrics, algorithm, seed, None, wall, "failed", reward_names=names
    )
    summary["status"] = "incomplete"
    return summary
