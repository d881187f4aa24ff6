"""Trackers: where a run's config, per-round metrics and summary go.

The :class:`Tracker` protocol is four calls (``log_config``, ``log_round``, ``log_summary``,
``close``) so the round loop never knows whether it writes plain files, W&B, both or nothing.
:class:`JsonlTracker` writes the run directory's files (schema: ``firm_ray.tracking.report`` and
docs/ARTIFACTS.md) so that a run killed at any moment loses nothing already logged: every
``metrics.jsonl`` line is flushed and fsynced, ``summary.json`` and ``config.yaml`` are replaced
atomically. A W&B tracker implements the same protocol and is imported lazily.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from firm_ray.tracking.storage import atomic_write_text, storage_errors

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "JsonlTracker",
    "MultiTracker",
    "NullTracker",
    "Tracker",
    "read_metrics",
    "read_summary",
    "to_jsonable",
    "write_json_atomic",
    "write_text_atomic",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@runtime_checkable
class Tracker(Protocol):
    """What the round loop logs to. Implementations must accept plain JSON-like values."""

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved config (``FirmConfig.model_dump(mode="json")``), once, before round 0."""

    def log_round(self, round: int, metrics: dict[str, Any]) -> None:
        """One round's metrics (the keys of a metrics.jsonl row, ``round`` excluded)."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The run's summary (``report.build_summary``), at the end of a run or on failure."""

    def close(self) -> None:
        """Release files / connections; safe to call twice."""


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from numpy/torch scalars and arrays, tuples and Paths.

    Non-finite floats become None (null): NaN/Infinity are not JSON, and jq, pandas or a browser
    would reject the whole file for one bad KL value.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy / torch scalars and arrays
    if callable(tolist):
        return to_jsonable(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return to_jsonable(item())
    raise TypeError(f"cannot log a value of type {type(value).__name__}: {value!r}")


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, resume: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then ``os.replace`` it in,
    so a reader sees the old file or the new one, never half of one; a disk error raises a
    one-line StorageError (``storage.atomic_write_text``)."""
    return atomic_write_text(path, text, resume=resume)


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, *, resume: str | os.PathLike[str] | None = None
) -> Path:
    """``write_text_atomic`` of pretty, strict JSON (non-finite floats as null)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(path, text, resume=resume)


def _dump_row(row: Mapping[str, Any]) -> str:
    return json.dumps(to_jsonable(row), separators=(",", ":"), allow_nan=False)


def _config_yaml(config: dict[str, Any]) -> str:
    """The config as firm-ray check-config prints it when it validates, plain YAML otherwise
    (a tracker must not fail a run over an unusual config dict)."""
    from firm_ray.config import ConfigError, config_from_dict, dump_config

    try:
        return dump_config(config_from_dict(config))
    except (ConfigError, TypeError, ValueError):
        return yaml.safe_dump(to_jsonable(config), sort_keys=False, allow_unicode=True)


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl``, in file order.

    A truncated or unparsable LAST line is what a killed process leaves behind: it is skipped
    with a warning. A bad line anywhere else means the file was damaged and raises ValueError
    naming the line. Raises FileNotFoundError when the file does not exist.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (is {run_dir} a firm_ray run dir?)")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as exc:
            if lineno == len(lines):
                warnings.warn(
                    f"{path}:{lineno}: skipping a truncated last line ({exc}); "
                    "the run was probably killed while writing it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            raise ValueError(f"{path}:{lineno}: not a JSON object ({exc})") from None
        rows.append(row)
    return rows


def read_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run_dir/summary.json`` as a dict (FileNotFoundError while the run has not finished)."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no summary (the run has not finished)") from None
    try:
        summary = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    return summary


class JsonlTracker:
    """Writes ``config.yaml``, ``metrics.jsonl`` and ``summary.json`` into ``run_dir``.

    ``resume_from_round=None`` starts a fresh run: an existing metrics.jsonl is emptied.
    ``resume_from_round=r`` (resuming from a checkpoint taken before round r) keeps the rows with
    round < r and drops the rest, rewriting the file atomically, so that re-running rounds
    r, r+1, ... leaves exactly one row per round. Rounds must be logged in increasing order.
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], resume_from_round: int | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS_FILE
        self._last_round: int | None = None
        kept: list[dict[str, Any]] = []
        if resume_from_round is not None:
            if resume_from_round < 0:
                raise ValueError(f"resume_from_round must be >= 0, got {resume_from_round}")
            if self.metrics_path.exists():
                kept = [
                    row
                    for row in read_metrics(self.run_dir)
                    if int(row.get("round", -1)) < resume_from_round
                ]
            if kept:
                self._last_round = max(int(row["round"]) for row in kept)
        if resume_from_round is None or self.metrics_path.exists():
            # Rewrite (possibly empty) so a truncated tail or later rounds never survive.
            text = "".join(_dump_row(r) + "\n" for r in kept)
            write_text_atomic(self.metrics_path, text, resume=self._resume)
        with storage_errors(self.metrics_path, METRICS_FILE, resume=self._resume):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._fh: io.FileIO | None = open(self.metrics_path, "ab", buffering=0)  # noqa: SIM115

    @property
    def _resume(self) -> Path | None:
        """The run directory for the resume hint of a disk error, once it has a checkpoint
        directory (before that there is nothing to resume)."""
        return self.run_dir if (self.run_dir / "checkpoints").is_dir() else None

    def log_config(self, config: dict[str, Any]) -> None:
        write_text_atomic(self.run_dir / CONFIG_FILE, _config_yaml(config))

    def log_round(self, round: int, metrics: dict[str, Any]) -> None:
        """Append one row, fsynced. An append cannot be atomic: if it fails (disk full) the file
        is cut back to its previous length, so no torn line is left, and StorageError is raised;
        the tracker stays usable once space is freed."""
        if self._fh is None:
            raise RuntimeError(f"{self.metrics_path}: tracker is closed")
        round = int(round)
        if "round" in metrics and int(metrics["round"]) != round:
            raise ValueError(f"metrics['round'] = {metrics['round']} but round = {round}")
        if self._last_round is not None and round <= self._last_round:
            raise ValueError(
                f"round {round} logged after round {self._last_round}: metrics.jsonl keeps one "
                "row per round in increasing order (resume with resume_from_round)"
            )
        line = _dump_row({"round": round, **{k: v for k, v in metrics.items() if k != "round"}})
        data = memoryview((line + "\n").encode("utf-8"))
        with storage_errors(
            self.metrics_path, f"the metrics row of round {round}", resume=self._resume
        ):
            fd = self._fh.fileno()
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # no torn line (O_APPEND writes at the end)
                raise
        self._last_round = round

    def log_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary, resume=self._resume)

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()

    def __enter__(self) -> JsonlTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullTracker:
    """Logs nothing (tracking switched off, or Tune trials that report elsewhere)."""

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def log_round(self, round: int, metrics: dict[str, Any]) -> None:
        pass

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class MultiTracker:
    """Fans every call out to several trackers, in order.

    ``close`` closes all of them even when one fails, then re-raises the first error, so a
    broken W&B connection never leaves metrics.jsonl open.
    """

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers: list[Tracker] = list(trackers)

    def log_config(self, config: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_config(config)

    def log_round(self, round: int, metrics: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_round(round, metrics)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_summary(summary)

    def close(self) -> None:
        first: BaseException | None = None
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> MultiTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
