"""SIGINT and SIGTERM during ``run()``: the first stops the run cleanly, the second exits at once.

The first signal abandons the round in progress (a round is minutes of training; the last
checkpoint is where ``--resume`` continues, and the resumed run is bit-identical). It is
raised as a KeyboardInterrupt in the main thread at once, except inside a ``critical()``
section (writing a round's metrics row), where it waits for the section to end. ``run()``
then writes summary.json with status ``interrupted``, closes the trackers, shuts down the Ray
it started and raises RunInterrupted. A second signal while that happens kills the processes
of the Ray this process started (SIGKILL, so none is orphaned) and exits with 128 + the signal.

Handlers are installed only by ``run()`` in the main thread and the previous ones are restored
afterwards: Ray Tune runs ``FederatedRun.step()`` in other threads, and the Python API may run
inside a program with its own handlers. (``ray.init`` installs its own SIGTERM handler, so the
run re-asserts its handlers once Ray has started: `reassert`.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The handlers of one run and what they received."""

    def __init__(self) -> None:
        self.signum: int | None = None
        """The first signal received, if any."""
        self._critical = 0
        self._raised = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting now\n")
            hard_exit(128 + signum)
        self.signum = signum
        name = signal.Signals(signum).name
        sys.stderr.write(
            f"\n{name}: stopping (the round in progress is abandoned; the run resumes from its "
            "last checkpoint). Send it again to exit at once.\n"
        )
        sys.stderr.flush()
        if not self._critical:
            self._raise()

    def _raise(self) -> None:
        self._raised = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self, deliver: bool = True) -> Iterator[None]:
        """A section the first signal does not cut short; it is raised when the section ends
        (``deliver``), or left to the caller to see in ``signum``."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if deliver and not self._critical and self.signum is not None and not self._raised:
                self._raise()


ACTIVE: StopSignals | None = None
"""The handlers of the run in progress in the main thread, if any."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopSignals]:
    """Install the run's handlers for its duration (main thread only; elsewhere the returned
    object never sees a signal)."""
    global ACTIVE
    stop = StopSignals()
    if not _main_thread() or ACTIVE is not None:
        yield stop
        return
    stop.install()
    ACTIVE = stop
    try:
        yield stop
    finally:
        ACTIVE = None
        stop.restore()


def reassert() -> None:
    """Put the run's handlers back after ``ray.init`` replaced the SIGTERM handler."""
    if ACTIVE is not None and _main_thread():
        ACTIVE.install()


def critical() -> contextlib.AbstractContextManager[None]:
    """`StopSignals.critical` of the active run (a no-op outside it or off the main thread)."""
    if ACTIVE is not None and _main_thread():
        return ACTIVE.critical()
    return contextlib.nullcontext()


def started_ray_processes() -> list[psutil.Process]:
    """The processes of the Ray node this process started (GCS, raylet, agents, workers);
    empty when it only connected to a cluster."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        infos = [i for group in (node.all_processes if node else {}).values() for i in group]
    except Exception:  # a private API: never let it stop an exit
        return []
    found: list[psutil.Process] = []
    for info in infos:
        try:
            proc = psutil.Process(info.process.pid)
            found += [proc, *proc.children(recursive=True)]
        except (psutil.Error, AttributeError):
            continue
    return found


def hard_exit(code: int) -> None:
    """SIGKILL the Ray this process started, then exit without cleanup."""
    for proc in started_ray_processes():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    sys.stderr.flush()
    os._exit(code)


__all__ = ["StopSignals", "critical", "hard_exit", "reassert", "stop_on_signals"]
