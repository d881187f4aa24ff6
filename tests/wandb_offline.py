"""Read an offline W&B run back from its ``.wandb`` transaction logs: what the tests check the
tracker logged (history, summary, config, artifacts, exit codes), with no mocks.

A plain module next to the tests (tests/conftest.py's directory is on sys.path under pytest's
default import mode), imported by tests/unit/test_wandb_tracker.py and tests/e2e/test_sweep.py.
It is not part of firm_ray: the tracker never reads its own logs.

Why the reader waits: ``run.finish()`` returns once wandb-core has answered the exit record, but
the service writes and closes the transaction log asynchronously (``inform_finish`` is sent
without waiting), so a file read in the same process right after ``close()`` can still be its
7-byte header (seen in 2 of 8 tries on 2 cores). At process exit wandb's teardown waits for the
service, so a user's ``wandb sync`` after the run always sees a complete log; only an
in-process reader has to wait, and ``read_offline_run`` does (``wait_s``).
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firm_ray.tracking.wandb_tracker import RUN_ID_FILE

__all__ = ["read_offline_run"]

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


def _has_exit(path: Path) -> bool:
    """Whether the log already holds its exit record (wandb-core writes it asynchronously)."""
    from wandb.proto import wandb_internal_pb2 as pb

    try:
        for payload in _log_payloads(path):
            record = pb.Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "exit":
                return True
    except (OSError, ValueError):
        pass
    return False


def _wait_for_exit(paths: list[Path], wait_s: float) -> None:
    """Poll until every log holds its exit record, at most ``wait_s`` seconds; a log that never
    gets one (a killed writer, a truncated copy) is then read as it is."""
    deadline = time.monotonic() + wait_s
    pending = list(paths)
    while pending:
        pending = [p for p in pending if not _has_exit(p)]
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


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


def read_offline_run(
    run_dir: str | os.PathLike[str], run_id: str | None = None, *, wait_s: float = 120.0
) -> dict[str, Any]:
    """What an offline W&B run under ``run_dir/wandb/`` logged, read from its transaction logs.

    ``run_id`` defaults to the one in ``run_dir/wandb_run_id.txt``, else the latest run's. The
    logs of every (re)start of that run are merged in start order: ``history`` (rows, each with
    ``_step``; media values are dicts whose ``path`` is relative to a ``files_dirs`` entry),
    ``summary`` and ``config`` (the last value of each key wins), ``artifacts`` (name, type,
    files: {path: size}), ``runs`` (per start: run_id, name, group, job_type, tags, project,
    exit_code), ``files_dirs`` and ``run_id``. Raises FileNotFoundError without such a run.

    First waits up to ``wait_s`` (generous: a loaded machine) until the logs of that run (all
    logs when the id is unknown) hold their exit records; 0 reads them as they are.
    """
    run_dir = Path(run_dir)
    if run_id is None and (run_dir / RUN_ID_FILE).is_file():
        run_id = (run_dir / RUN_ID_FILE).read_text(encoding="utf-8").strip() or None
    paths = [p for p in (run_dir / "wandb").glob("*run-*/run-*.wandb") if not p.parent.is_symlink()]
    _wait_for_exit([p for p in paths if run_id is None or p.name == f"run-{run_id}.wandb"], wait_s)
    logs = [_read_log(p) for p in paths]
    logs = [log for log in logs if log["run"]]
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
