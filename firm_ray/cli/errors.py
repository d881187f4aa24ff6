"""One console line (and an exit code) for any error a run raises; its traceback goes to a file.

Why: an error raised inside a Ray worker reaches the driver wrapped (``RayTaskError`` around the
worker's exception, possibly nested; ``ActorDiedError`` for an actor whose ``__init__`` failed,
which keeps only the creation task's formatted traceback as text). A user who named a missing
file or wrote a reward returning NaN should read firm_ray's own one-line message, not 60-190
lines of Ray frames. `describe` unwraps to the firm_ray exception and classifies it:

- user errors (exit 2): ConfigError, DataError, RewardError / ScoreError, ModelLoadError,
  PreflightError, StorageError, and OSError of a full, read-only or forbidden path on the driver;
- everything else is internal (exit 1): RunError / SweepError keep their one-line message;
  other exceptions raised on the driver show their type and first line; those raised in a
  worker show their type only (their message may quote prompt or completion text, which must
  not cross the client boundary; the log file has the traceback Ray carried).

Classes are matched by qualified name along the exception's MRO, so nothing heavy (torch, Ray)
is imported here and classes of modules that may not exist yet (tracking.storage) still match.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from firm_ray import __version__

USER_ERRORS = frozenset(
    {
        "firm_ray.config.ConfigError",
        "firm_ray.data.sources.DataError",
        "firm_ray.rewards.base.RewardError",
        "firm_ray.rewards.base.ScoreError",
        "firm_ray.models.policy.ModelLoadError",
        "firm_ray.runtime.preflight.PreflightError",
        "firm_ray.tracking.storage.StorageError",
    }
)
"""Errors the user fixes in their config, data, reward or environment: exit code 2."""
OWN_ERRORS = frozenset(
    {
        "firm_ray.runtime.errors.RunError",
        "firm_ray.runtime.loop.RunError",
        "firm_ray.runtime.sweep.SweepError",
    }
)
"""firm_ray's own run-level errors (one-line messages quoting no text): exit code 1."""
_USER_OS_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$")
_MAX_LINE = 400


@dataclass(frozen=True)
class Failure:
    """What the console shows for an error: ``message`` (one line) and the exit code."""

    message: str
    exit_code: int
    in_worker: bool = False


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _names(err: BaseException) -> set[str]:
    return {_qualname(c) for c in type(err).__mro__}


def _one_line(text: str) -> str:
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."


def _classify(names: set[str], message: str, type_name: str, in_worker: bool) -> Failure:
    if names & USER_ERRORS:
        return Failure(_one_line(message), 2, in_worker)
    if names & OWN_ERRORS:
        return Failure(_one_line(message), 1, in_worker)
    if in_worker:
        return Failure(f"internal error in a Ray worker: {type_name}", 1, True)
    return Failure(f"internal error: {type_name}: {_one_line(message)}".rstrip(": "), 1)


def _from_creation_traceback(text: str) -> Failure:
    """An actor's failed ``__init__``: Ray's ActorDiedError keeps only the formatted traceback,
    whose last ``module.Class: message`` line is the exception."""
    for line in reversed(_ANSI.sub("", text).splitlines()):
        match = _EXCEPTION_LINE.match(line.strip())
        if match is None or " " in match.group(1):
            continue
        name, message = match.groups()
        names = {name}
        failure = _classify(names, message, name, in_worker=True)
        if failure.exit_code == 2 or names & OWN_ERRORS:
            return failure
        return Failure(f"a Ray worker failed to start: {name}", 1, True)
    return Failure("a Ray worker failed to start (see the log for Ray's message)", 1, True)


def describe(err: BaseException) -> Failure:
    """The one-line message and exit code for ``err``; see the module docstring."""
    in_worker = False
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        names = _names(err)
        cause = getattr(err, "cause", None)
        if "ray.exceptions.RayTaskError" in names and isinstance(cause, BaseException):
            err, in_worker = cause, True  # the worker's own exception (nested: unwrap again)
            continue
        if "ray.exceptions.RayActorError" in names:
            if getattr(err, "actor_init_failed", False):
                return _from_creation_traceback(str(err))
            return Failure(f"a Ray actor died: {_one_line(str(err))}", 1, True)
        if "ray.exceptions.RayError" in names and not names & (USER_ERRORS | OWN_ERRORS):
            return Failure(f"Ray error: {type(err).__name__}: {_one_line(str(err))}", 1, True)
        break
    if isinstance(err, OSError) and err.errno in _USER_OS_ERRNOS and not in_worker:
        where = f"{err.filename}: " if err.filename else ""
        reason = f"{err.strerror} ({errno.errorcode.get(err.errno or 0, '?')})"
        return Failure(f"{where}{reason}; free space, or fix the path or its permissions", 2)
    return _classify(names, str(err), type(err).__name__, in_worker)


def write_error_log(err: BaseException, path: Path, argv: list[str] | None = None) -> Path | None:
    """Append ``err``'s traceback (with Ray's remote traceback inside) to ``path``; returns the
    path, or None when it cannot be written (the console line then says so)."""
    when = datetime.datetime.now().isoformat(timespec="seconds")
    command = " ".join(argv if argv is not None else sys.argv)
    text = "".join(traceback.format_exception(err))
    before = path.stat().st_size if path.exists() else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"--- {when} firm-ray {__version__}: {command}\n{_ANSI.sub('', text)}\n")
    except OSError:  # e.g. the disk that failed the run is full: leave no empty or torn log
        with contextlib.suppress(OSError):
            if before is None:
                path.unlink(missing_ok=True)
            else:
                os.truncate(path, before)
        return None
    return path


def report(
    err: BaseException, log_path: Path | None, argv: list[str] | None = None
) -> tuple[str, int]:
    """The console line for ``err`` (naming the log with its traceback) and the exit code;
    writes the log when ``log_path`` is given."""
    failure = describe(err)
    written = write_error_log(err, log_path, argv) if log_path is not None else None
    if written is not None:
        where = f" (traceback: {written})"
    elif log_path is not None:
        where = f" (could not write the traceback to {log_path})"
    else:
        where = ""
    return f"error: {failure.message}{where}", failure.exit_code
