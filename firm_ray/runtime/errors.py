"""The run's exceptions: what a caller (the CLI, a script, a Tune trial) catches."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any


class RunError(RuntimeError):
    """The run cannot continue; the message says why and what to change."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run cleanly: summary.json says ``interrupted``, trackers
    are closed and the Ray this run started is shut down.

    A KeyboardInterrupt, so a script looping over runs stops too and ``except Exception`` does
    not swallow it (``firm-ray run`` exits with 130). ``summary`` is summary.json's content
    (None when the run was stopped while starting), ``signum`` the signal.
    """

    def __init__(self, signum: int, run_dir: Path | None, summary: dict[str, Any] | None) -> None:
        self.signum = signum
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.summary = summary
        name = signal.Signals(signum).name
        super().__init__(f"{name}: run stopped" + (f" ({run_dir})" if run_dir else ""))


def attach_run_dir(err: BaseException, run_dir: Path | str | None) -> None:
    """Tell the caller where the failed run's directory is (``err.run_dir``), so the CLI can
    write the traceback there; some exception types refuse new attributes."""
    if run_dir is None or getattr(err, "run_dir", None):
        return
    with contextlib.suppress(AttributeError, TypeError):
        setattr(err, "run_dir", str(run_dir))  # noqa: B010 (may raise on a frozen type)


__all__ = ["RunError", "RunInterrupted", "attach_run_dir"]
