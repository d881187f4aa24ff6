"""Weights & Biases tracker, the sweep-summary run, and a reader for offline W&B runs.

``wandb`` is imported inside functions only: ``import firm_ray.tracking`` must stay light (and
work where wandb is not installed), and only a run that switches W&B on pays for it.

Design choices:

- **Never a login prompt.** ``offline`` and ``disabled`` need no account. ``online`` without
  credentials (``WANDB_API_KEY``, netrc, settings file) falls back to ``offline`` with a warning
  instead of prompting, and so does an ``online`` ``wandb.init`` that fails (no network): a
  tracker must not stop a training run. ``WANDB_MODE=offline|disabled`` in the environment wins
  over a less restrictive config, so a CI job or a test session keeps W&B off the network
  without editing configs.
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

import json
import math
import os
import re
import secrets
import string
import struct
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
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

__all__ = [
    "RUN_ID_FILE",
    "WandbTracker",
    "log_sweep_summary",
    "make_tracker",
    "read_offline_run",
]

RUN_ID_FILE = "wandb_run_id.txt"
TABLE_KEY = "client_lambdas"
_MODES = ("disabled", "offline", "online")  # most restrictive first
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


def _effective_mode(mode: str) -> str:
    """The config's mode, unless ``WANDB_MODE`` in the environment is more restrictive."""
    if mode not in _MODES:
        raise ValueError(f"wandb mode must be one of {_MODES}, got {mode!r}")
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "dryrun":
        env = "offline"
    if env in _MODES and _MODES.index(env) < _MODES.index(mode):
        return env
    return mode


def _usable_mode(mode: str) -> str:
    """``online`` only when credentials exist (checked without prompting or any network call);
    otherwise ``offline`` with a warning, so wandb.init never shows a login prompt."""
    mode = _effective_mode(mode)
    if mode != "online":
        return mode
    import wandb

    try:
        logged_in = bool(wandb.login(prompt=False, verify=False))
    except Exception:  # a malformed key or settings file: same answer, no credentials
        logged_in = False
    if not logged_in:
        warnings.warn(
            "W&B mode 'online' but no W&B credentials (WANDB_API_KEY, ~/.netrc or `wandb "
            "login`): logging offline instead; upload later with `wandb sync`",
            RuntimeWarning,
            stacklevel=3,
        )
        return "offline"
    return mode


def _init_run(mode: str, **kwargs: Any) -> Any:
    """``wandb.init`` with this module's fixed choices; an online start that fails (network,
    server) is retried offline rather than stopping the training run."""
    import wandb

    def init(m: str) -> Any:
        return wandb.init(
            mode=m,  # type: ignore[arg-type]
            reinit="create_new",
            settings=wandb.Settings(quiet=True),
            **kwargs,
        )

    if mode != "online":
        return init(mode)
    try:
        return init(mode)
    except Exception as exc:
        warnings.warn(
            f"W&B online start failed ({type(exc).__name__}: {exc}); logging offline instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return init("offline")


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
        self.mode = _usable_mode(str(self.settings.get("mode", "offline")))

        id_file = self.run_dir / RUN_ID_FILE
        run_id = None
        if resume_from_round is not None and id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip() or None
        if run_id is None:
            run_id = _new_run_id()
        if self.mode != "disabled":
            write_text_atomic(id_file, run_id + "\n")

        self.run = _init_run(
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
            self.run.finish(exit_code=exit_code)
            if self.mode != "disabled":
                _wait_for_log(Path(self.run.settings.sync_file))

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
    mode = _effective_mode(str(settings.get("mode", "offline")))
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


_TRIAL_COLUMNS = (  # shown first when present; then final/<name>; then the rest
    "trial_id",
    "algorithm",
    "beta",
    "preference",
    "seed",
    "status",
)
_TRIAL_COLUMNS_AFTER = ("pareto", "on_front", "hypervolume", "mean_disagreement")


def _trial_table(
    trials: Sequence[Mapping[str, Any]], reward_names: Sequence[str]
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the trials table: the known columns first (those present), then
    the others in first-seen order. Lists and dicts become JSON strings, non-finite numbers
    None, and a column whose values mix types (W&B rejects that) is written as strings."""
    seen: dict[str, None] = {}
    for trial in trials:
        seen.update(dict.fromkeys(str(k) for k in trial))
    finals = [f"final/{n}" for n in reward_names]
    columns = [c for c in (*_TRIAL_COLUMNS, *finals, *_TRIAL_COLUMNS_AFTER) if c in seen]
    columns += [c for c in seen if c not in columns]

    def cell(value: Any) -> Any:
        value = to_jsonable(value)
        if isinstance(value, (list, dict)):
            return json.dumps(value)
        return value

    rows = [[cell(trial.get(c)) for c in columns] for trial in trials]
    for j in range(len(columns)):
        kinds = {
            "bool" if isinstance(r[j], bool) else "num" if isinstance(r[j], (int, float)) else "str"
            for r in rows
            if r[j] is not None
        }
        if len(kinds) > 1:
            for r in rows:
                if r[j] is not None:
                    r[j] = str(r[j])
    return columns, rows


def log_sweep_summary(
    settings: Mapping[str, Any],
    sweep_dir: str | os.PathLike[str],
    name: str,
    group: str,
    trials: list[dict[str, Any]],
    reward_names: list[str],
    images: list[Path],
) -> None:
    """One W&B run (job_type ``sweep-summary``, in ``group``) with the table of ``trials``, a
    "Pareto front" scatter of the first two objectives' ``final/<name>`` and ``images`` (those
    that exist). Does nothing when W&B is off (``enabled`` false or mode ``disabled``)."""
    if not settings.get("enabled", True):
        return
    mode = _usable_mode(str(settings.get("mode", "offline")))
    if mode == "disabled":
        return
    import wandb

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    run = _init_run(
        mode,
        project=settings.get("project") or "firm-ray",
        entity=settings.get("entity"),
        group=group,
        tags=list(settings.get("tags") or []),
        dir=str(sweep_dir),
        name=name,
        job_type="sweep-summary",
        config={"reward_names": list(reward_names), "trials": len(trials)},
    )
    try:
        columns, rows = _trial_table(trials, reward_names)
        data: dict[str, Any] = {}
        if columns:
            table = wandb.Table(columns=columns, data=rows)
            data["trials"] = table
            x, y = (f"final/{n}" for n in [*reward_names[:2], "", ""][:2])
            if x in columns and y in columns:
                data["pareto_front"] = wandb.plot.scatter(table, x, y, title="Pareto front")
        for path in images:
            path = Path(path)
            if path.is_file():
                data[f"images/{path.stem}"] = wandb.Image(str(path))
        if data:
            run.log(data)
        run.summary.update({"trials": len(trials)})
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish(exit_code=0)
    _wait_for_log(Path(run.settings.sync_file))


# --------------------------------------------------------------------------------------------
# reading offline runs back

_LOG_BLOCK = 32768
_LOG_HEADER = struct.Struct("<4sHB")  # ident ':W&B', magic 0xBEE1, version
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32 (IEEE) of type+data, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _log_payloads(path: Path) -> Iterator[bytes]:
    """The records of a ``.wandb`` transaction log: LevelDB's log format (32 KiB blocks of
    checksummed chunks) after a 7-byte W&B header. wandb 0.31 has no Python reader any more
    (its writer is wandb-core, in Go), hence this one. A truncated tail (a killed process)
    ends the iteration; a bad checksum before it raises ValueError."""
    data = path.read_bytes()
    if len(data) < _LOG_HEADER.size:
        return
    ident, magic, _version = _LOG_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B transaction log")
    pos = _LOG_HEADER.size
    pending: bytes | None = None
    while pos + _CHUNK_HEADER.size <= len(data):
        left = _LOG_BLOCK - pos % _LOG_BLOCK
        if left < _CHUNK_HEADER.size:  # block trailer (zero padding)
            pos += left
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if crc == length == kind == 0:  # zero padding up to the block end
            pos += left
            continue
        start = pos + _CHUNK_HEADER.size
        payload = data[start : start + length]
        if len(payload) < length:
            return
        if zlib.crc32(bytes([kind]) + payload) != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        pos = start + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind in (_MIDDLE, _LAST) and pending is not None:
            pending += payload
            if kind == _LAST:
                yield pending
                pending = None


def _wait_for_log(path: Path, timeout_s: float = 10.0) -> bool:
    """Wait until the run's transaction log holds its exit record: ``run.finish()`` returns
    before wandb-core has flushed and closed the file (it is told to close the stream without
    waiting for an answer), so a reader or ``wandb sync`` started right after the tracker's
    ``close()`` could see a partial file. False if it did not appear in time."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for payload in _log_payloads(path):
                record = pb.Record()
                record.ParseFromString(payload)
                if record.WhichOneof("record_type") == "exit":
                    return True
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _set_item(target: dict[str, Any], item: Any, value: Any) -> None:
    """Store a history/summary/config item under its key, nesting for multi-part keys."""
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _del_item(target: dict[str, Any], item: Any) -> None:
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.get(part, {})
    target.pop(path[-1], None)


def _read_log(path: Path) -> dict[str, Any]:
    """One .wandb file as run metadata, history rows, summary/config updates, artifacts."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {
        "file": path,
        "files_dir": path.parent / "files",
        "run": {},
        "history": [],
        "summary": {},
        "config": {},
        "artifacts": [],
        "exit_code": None,
    }
    for payload in _log_payloads(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out["run"] = {
                "run_id": r.run_id,
                "project": r.project,
                "entity": r.entity,
                "name": r.display_name,
                "group": r.run_group,
                "job_type": r.job_type,
                "tags": list(r.tags),
                "start_time": r.start_time.seconds + r.start_time.nanos / 1e9,
            }
            for item in r.config.update:
                _set_item(out["config"], item, json.loads(item.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_item(row, item, json.loads(item.value_json))
            out["history"].append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set_item(out["summary"], item, json.loads(item.value_json))
            for item in record.summary.remove:
                _del_item(out["summary"], item)
        elif kind == "config":
            for item in record.config.update:
                _set_item(out["config"], item, json.loads(item.value_json))
            for item in record.config.remove:
                _del_item(out["config"], item)
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": list(a.aliases),
                    "digest": a.digest,
                    "files": {c.path: c.size for c in a.manifest.contents},
                }
            )
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def read_offline_run(run_dir: str | os.PathLike[str], run_id: str | None = None) -> dict[str, Any]:
    """What an offline W&B run under ``run_dir/wandb/`` logged, read from its transaction logs.

    ``run_id`` defaults to the one in ``run_dir/wandb_run_id.txt``, else the latest run's. The
    logs of every (re)start of that run are merged in start order: ``history`` (rows, each with
    ``_step``; media values are dicts whose ``path`` is relative to a ``files_dirs`` entry),
    ``summary`` and ``config`` (the last value of each key wins), ``artifacts`` (name, type,
    files: {path: size}), ``runs`` (per start: run_id, name, group, job_type, tags, project,
    exit_code), ``files_dirs`` and ``run_id``. Raises FileNotFoundError without such a run.
    """
    run_dir = Path(run_dir)
    logs = [
        _read_log(p)
        for p in (run_dir / "wandb").glob("*run-*/run-*.wandb")
        if not p.parent.is_symlink()
    ]
    logs = [log for log in logs if log["run"]]
    if run_id is None and (run_dir / RUN_ID_FILE).is_file():
        run_id = (run_dir / RUN_ID_FILE).read_text(encoding="utf-8").strip() or None
    if run_id is None and logs:
        run_id = max(logs, key=lambda log: log["run"]["start_time"])["run"]["run_id"]
    logs = sorted(
        (log for log in logs if log["run"]["run_id"] == run_id),
        key=lambda log: log["run"]["start_time"],
    )
    if not logs:
        raise FileNotFoundError(f"{run_dir}/wandb: no offline W&B run (id {run_id})")
    merged: dict[str, Any] = {
        "run_id": run_id,
        "runs": [{**log["run"], "exit_code": log["exit_code"]} for log in logs],
        "history": [row for log in logs for row in log["history"]],
        "summary": {},
        "config": {},
        "artifacts": [a for log in logs for a in log["artifacts"]],
        "files_dirs": [log["files_dir"] for log in logs],
    }
    for log in logs:
        merged["summary"].update(log["summary"])
        merged["config"].update(log["config"])
    return merged
