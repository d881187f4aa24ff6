"""The Weights & Biases run tracker: ``WandbTracker`` and ``make_tracker``.

``wandb`` is imported inside functions only: ``import firm_ray.tracking`` must stay light (and
work where wandb is not installed), and only a run that switches W&B on pays for it.

Design choices:

- **Never a login prompt**, and W&B never stops a training run: see
  :mod:`firm_ray.tracking.wandb_common` (modes, ``wandb.init``).
- **One run handle per tracker** (``reinit="create_new"``): the tracker logs only through its
  own ``Run`` object and never finishes a run it did not start (a notebook user's run, a sweep
  summary run).
- **Resume**: the run id lives in ``run_dir/wandb_run_id.txt``; ``firm-ray run --resume`` reuses
  it with ``resume="allow"`` so W&B continues the same run. A fresh run in the same directory
  gets a new id (its metrics.jsonl is emptied too). Offline, every (re)start writes its own
  ``wandb/offline-run-*-<id>/run-<id>.wandb``; ``wandb sync`` uploads them into one run.
- **Flat scalar keys** per round (``reward/<name>``, ``lambda/<name>/mean``, ...; the list is in
  docs/ARTIFACTS.md), None and non-finite values skipped rather than logged as NaN. Per-client
  lambdas go into ONE ``client_lambdas`` table logged at the end (a table per round would
  create a new table version every round, 1,000 clients times the rounds).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import string
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from firm_ray.tracking.jsonl import (
    METRICS_FILE,
    JsonlTracker,
    MultiTracker,
    Tracker,
    read_metrics,
    to_jsonable,
    write_text_atomic,
)
from firm_ray.tracking.wandb_common import effective_mode, init_run, usable_mode
from firm_ray.tracking.wandb_sweep import log_sweep_summary

__all__ = [
    "RUN_ID_FILE",
    "WandbTracker",
    "log_sweep_summary",
    "make_tracker",
]

RUN_ID_FILE = "wandb_run_id.txt"
TABLE_KEY = "client_lambdas"
_ID_CHARS = string.ascii_lowercase + string.digits
_STEP_KEYS = {
    "local_steps": "steps/local",
    "skipped_steps": "steps/skipped",
    "skip_fraction": "steps/skip_fraction",
    "skip_rejected_clients": "clients/skip_rejected",
    "truncated_fraction": "truncated_fraction",
    "importance_weight": "importance_weight",
}
"""metrics row key -> W&B history key of the local-step metrics."""
_CONFLICT_KEYS = {
    "update_cosine": "conflict/update_cosine",
    "update_coherence": "conflict/update_coherence",
    "pareto_stationarity": "eval/pareto_stationarity",
}
"""metrics row key -> W&B history key of the metrics that compare across algorithms."""


# --------------------------------------------------------------------------------------------
# helpers


def _finite(value: Any) -> float | int | None:
    """The value as a loggable number, or None for None, NaN, inf, bools and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _names(names: Sequence[str], n: int) -> list[str]:
    """Objective names for an n-long per-objective list (``obj<i>`` past the known names)."""
    return [str(names[i]) if i < len(names) else f"obj{i}" for i in range(n)]


def _put_list(out: dict[str, Any], prefix: str, values: Any, names: Sequence[str]) -> None:
    """``out[prefix/<name>] = value`` for each finite entry of a per-objective list."""
    if not isinstance(values, (list, tuple)):
        return
    for name, value in zip(_names(names, len(values)), values, strict=True):
        if (v := _finite(value)) is not None:
            out[f"{prefix}/{name}"] = v


def _put_dict(out: dict[str, Any], prefix: str, values: Any) -> None:
    """``out[prefix/<key>] = value`` for each finite entry of a {str: number} dict."""
    if not isinstance(values, Mapping):
        return
    for key, value in values.items():
        if (v := _finite(value)) is not None:
            out[f"{prefix}/{key}"] = v


def _new_run_id() -> str:
    """An id in W&B's own format (8 lowercase alphanumerics)."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(8))


def _artifact_name(name: str) -> str:
    """Artifact names allow letters, digits, '-', '_' and '.' only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def _thin_rounds(rows: list[list[Any]], max_rows: int) -> list[list[Any]]:
    """At most ``max_rows`` rows, keeping whole rounds evenly spread over the run (W&B
    truncates a logged table at ``wandb.Table.MAX_ROWS``, which would keep only the first
    rounds)."""
    if len(rows) <= max_rows:
        return rows
    rounds = sorted({row[0] for row in rows})
    every = math.ceil(len(rows) / max_rows)
    while True:
        kept = set(rounds[::every]) | {rounds[-1]}
        thinned = [row for row in rows if row[0] in kept]
        if len(thinned) <= max_rows or every >= len(rounds):
            break
        every += 1
    warnings.warn(
        f"{TABLE_KEY}: {len(rows)} rows exceed W&B's table limit of {max_rows}; logging every "
        f"{every}th round ({len(thinned)} rows); metrics.jsonl has all of them",
        RuntimeWarning,
        stacklevel=3,
    )
    return thinned[-max_rows:]


# --------------------------------------------------------------------------------------------
# the tracker


class WandbTracker:
    """Logs the round loop's config, rounds and summary to one W&B run (see module docstring).

    ``settings`` is ``WandbConfig.model_dump()`` (``enabled`` is the caller's business: this
    class logs whenever it is built). ``group`` overrides ``settings["group"]``. With
    ``resume_from_round`` set (a resumed run) it continues the W&B run whose id is in
    ``run_dir/wandb_run_id.txt`` and seeds the client_lambdas table with the earlier rounds
    from metrics.jsonl, so the table logged at the end covers the whole run; without it, it
    starts a new W&B run and records its id there.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        run_dir: str | os.PathLike[str],
        name: str,
        config: dict[str, Any] | None = None,
        group: str | None = None,
        job_type: str = "run",
        *,
        resume_from_round: int | None = None,
    ) -> None:
        import wandb

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.settings = dict(settings)
        self.name = name
        self.mode = usable_mode(str(self.settings.get("mode", "offline")))

        id_file = self.run_dir / RUN_ID_FILE
        run_id = None
        if resume_from_round is not None and id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip() or None
        if run_id is None:
            run_id = _new_run_id()
        if self.mode != "disabled":
            write_text_atomic(id_file, run_id + "\n")

        self.run = init_run(
            self.mode,
            project=self.settings.get("project") or "firm-ray",
            entity=self.settings.get("entity"),
            group=group if group is not None else self.settings.get("group"),
            tags=list(self.settings.get("tags") or []),
            dir=str(self.run_dir),
            name=name,
            config=to_jsonable(config) if config is not None else None,
            job_type=job_type,
            id=run_id,
            resume="allow",
        )
        if self.mode == "online" and getattr(self.run, "offline", False):
            self.mode = "offline"  # the online start failed and _init_run fell back
        self.run_id: str = self.run.id if self.mode != "disabled" else run_id
        self._wandb = wandb
        self._reward_names: list[str] = []
        self._lambda_rows: list[list[Any]] = []
        self._table_rows_logged = -1  # row count at the last table log; -1: never logged
        self._last_round: int | None = None
        self._logged_files: dict[str, float] = {}  # path -> mtime already logged
        self._status: str | None = None
        self._closed = False
        if resume_from_round is not None and (self.run_dir / METRICS_FILE).is_file():
            for row in read_metrics(self.run_dir):
                if int(row.get("round", -1)) < resume_from_round:
                    self._collect(int(row["round"]), row)

    # -- Tracker protocol ---------------------------------------------------------------------

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(to_jsonable(config), allow_val_change=True)

    def log_round(self, round: int, metrics: dict[str, Any]) -> None:
        round = int(round)
        row = self._collect(round, metrics)
        if row:
            self.run.log(row, step=round)
        self._last_round = round

    def log_summary(self, summary: dict[str, Any]) -> None:
        summary = to_jsonable(summary)
        self._status = summary.get("status") if isinstance(summary.get("status"), str) else None
        self.run.summary.update(self.summary_values(summary))
        self._log_media()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._log_media()
        finally:
            exit_code = 0 if self._status not in (None, "failed") else 1
            # Returns once wandb-core acknowledged the exit record; it writes the offline log
            # out asynchronously, complete by the time this process exits (no need to wait).
            self.run.finish(exit_code=exit_code)

    def __enter__(self) -> WandbTracker:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and self._status is None:
            self._status = "failed"
        self.close()

    # -- conversions --------------------------------------------------------------------------

    def _collect(self, round: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The flat W&B row of one metrics row; records its per-client lambdas for the table."""
        m = to_jsonable(dict(metrics))  # numpy/torch -> plain, non-finite -> None
        if isinstance(m.get("reward_names"), list) and m["reward_names"]:
            self._reward_names = [str(n) for n in m["reward_names"]]
        names = self._reward_names
        out: dict[str, Any] = {}
        _put_list(out, "reward", m.get("rewards"), names)
        _put_list(out, "train_reward", m.get("train_rewards"), names)
        for category, values in (m.get("rewards_by_category") or {}).items():
            _put_list(out, f"reward_by_category/{category}", values, names)
        for key in ("kl", "disagreement", "param_drift"):
            if (v := _finite(m.get(key))) is not None:
                out[key] = v
        for key, name in _CONFLICT_KEYS.items():  # absent in rows of runs before issue 15
            if (v := _finite(m.get(key))) is not None:
                out[name] = v
        privacy = m.get("privacy") or {}  # issue 16: DP budget and clipping
        for key in ("epsilon", "clip", "noise_std", "next_clip"):
            if (v := _finite(privacy.get(key))) is not None:
                out[f"privacy/{key}"] = v
        if privacy:
            out["privacy/server_clipped"] = len(privacy.get("server_clipped") or [])
        robust = m.get("robustness") or {}
        if robust:
            out["robustness/attackers"] = len(robust.get("attackers") or [])
            for key in ("clipped", "trimmed"):
                if (v := _finite(robust.get(key))) is not None:
                    out[f"robustness/{key}"] = v
            if robust.get("selected") is not None:
                bad = set(robust.get("attackers") or [])
                out["robustness/attackers_selected"] = sum(c in bad for c in robust["selected"])
        for key in ("bytes_up", "bytes_down"):
            sizes = [v for v in (m.get(key) or {}).values() if _finite(v) is not None]
            if sizes:
                out[f"{key}/mean"] = sum(sizes) / len(sizes)
                out[f"{key}/total"] = sum(sizes)
        _put_dict(out, "timing", m.get("timing"))
        _put_dict(out, "memory", m.get("memory"))
        if isinstance(m.get("clients"), list):
            out["clients/sampled"] = len(m["clients"])
        if isinstance(m.get("failed"), list):
            out["clients/failed"] = len(m["failed"])
        # local steps: numbers only (skip_reasons stay in metrics.jsonl and the console)
        for key, name in _STEP_KEYS.items():
            if (v := _finite(m.get(key))) is not None:
                out[name] = v
        faults = m.get("faults") or {}
        for key in ("worker_restarts", "aggregator_restarts", "node_losses", "bundles_replaced"):
            if (v := _finite(faults.get(key))) is not None:
                out[f"faults/{key}"] = v
        if faults:
            out["faults/client_reruns"] = len(faults.get("reruns") or [])

        lambdas = m.get("client_lambdas") or {}
        per_objective: dict[int, list[float]] = {}
        width = max((len(v) for v in lambdas.values() if isinstance(v, list)), default=0)
        for client, lam in lambdas.items():
            if not isinstance(lam, list):
                continue
            cells = [_finite(x) for x in lam] + [None] * (width - len(lam))
            try:
                client_id: int | str = int(client)
            except ValueError:
                client_id = str(client)
            self._lambda_rows.append([round, client_id, *cells])
            for i, x in enumerate(cells):
                if x is not None:
                    per_objective.setdefault(i, []).append(x)
        for i, name in enumerate(_names(names, width)):
            xs = per_objective.get(i)
            if xs:
                out[f"lambda/{name}/mean"] = sum(xs) / len(xs)
                out[f"lambda/{name}/min"] = min(xs)
                out[f"lambda/{name}/max"] = max(xs)
        return out

    def summary_values(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Flat W&B summary keys: per-objective lists by name (``final/<name>``,
        ``initial/<name>``, ``smoothness/<name>``), finite scalars and strings as they are,
        other lists as lists; None and non-finite values left out."""
        names = [str(n) for n in summary.get("reward_names") or self._reward_names]
        per_objective = {
            "final_rewards": "final",
            "initial_rewards": "initial",
            "smoothness": "smoothness",
        }
        out: dict[str, Any] = {}
        for key, value in summary.items():
            if key in per_objective:
                _put_list(out, per_objective[key], value, names)
            elif isinstance(value, (bool, str)):
                out[key] = value
            elif (v := _finite(value)) is not None:
                out[key] = v
            elif isinstance(value, list) and value:
                out[key] = value
            elif isinstance(value, Mapping):
                _put_dict(out, key, value)
        return out

    # -- end-of-run media ---------------------------------------------------------------------

    def _log_media(self) -> None:
        """The client_lambdas table, the plots and the adapter: each logged once, again only
        if it changed (so log_summary and close can both call this, in either order with
        make_plots / the adapter save)."""
        if self.mode == "disabled":
            return
        wandb = self._wandb
        data: dict[str, Any] = {}
        width = max((len(r) for r in self._lambda_rows), default=2) - 2
        if width > 0 and len(self._lambda_rows) != self._table_rows_logged:
            lam_cols = [f"lambda_{n}" for n in _names(self._reward_names, width)]
            rows = [r + [None] * (width + 2 - len(r)) for r in self._lambda_rows]
            if not all(isinstance(r[1], int) for r in rows):  # one type per column
                rows = [[r[0], str(r[1]), *r[2:]] for r in rows]
            rows = _thin_rounds(rows, wandb.Table.MAX_ROWS)
            table = wandb.Table(columns=["round", "client", *lam_cols], data=rows)
            data[TABLE_KEY] = table
            data[f"{TABLE_KEY}_scatter"] = wandb.plot.scatter(
                table, "round", lam_cols[0], title=f"client {lam_cols[0]} per round"
            )
            self._table_rows_logged = len(self._lambda_rows)
        for png in sorted((self.run_dir / "plots").glob("*.png")):
            if self._changed(png):
                data[f"plots/{png.stem}"] = wandb.Image(str(png))
        if data:
            # At the last round's step: a row of its own would be one step past the run, and a
            # resumed run would then find its next round already taken.
            self.run.log(data, step=self._last_round)

        adapter = self.run_dir / "adapter"
        if self.settings.get("log_adapter") and adapter.is_dir() and self._changed(adapter):
            artifact = wandb.Artifact(
                f"{_artifact_name(self.name)}-adapter",
                type="model",
                metadata={"run_dir": str(self.run_dir), "status": self._status},
            )
            artifact.add_dir(str(adapter))
            self.run.log_artifact(artifact)

    def _changed(self, path: Path) -> bool:
        """True (and remembered) when ``path`` was not logged yet or changed since."""
        if path.is_dir():
            mtimes = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
            if not mtimes:
                return False
            mtime = max(mtimes)
        else:
            mtime = path.stat().st_mtime
        if self._logged_files.get(str(path)) == mtime:
            return False
        self._logged_files[str(path)] = mtime
        return True


# --------------------------------------------------------------------------------------------
# factory and sweep summary


def make_tracker(
    config: Mapping[str, Any],
    run_dir: str | os.PathLike[str],
    resume_from_round: int | None = None,
    *,
    name: str | None = None,
    group: str | None = None,
) -> Tracker:
    """The round loop's tracker: metrics.jsonl always, plus W&B when
    ``tracking.wandb.enabled`` (and its mode is not ``disabled``).

    ``config`` is ``FirmConfig.model_dump(mode="json")``; ``name`` defaults to the run
    directory's name. With ``resume_from_round`` set, JSONL drops the rows it will re-run and
    W&B continues the run recorded in ``run_dir/wandb_run_id.txt``.
    """
    run_dir = Path(run_dir)
    trackers: list[Tracker] = [JsonlTracker(run_dir, resume_from_round=resume_from_round)]
    settings = dict((config.get("tracking") or {}).get("wandb") or {})
    mode = effective_mode(str(settings.get("mode", "offline")))
    if settings.get("enabled") and mode != "disabled":
        try:
            trackers.append(
                WandbTracker(
                    settings,
                    run_dir,
                    name or run_dir.name,
                    config=dict(config),
                    group=group,
                    resume_from_round=resume_from_round,
                )
            )
        except BaseException:
            trackers[0].close()
            raise
    return MultiTracker(trackers)
