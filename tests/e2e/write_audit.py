"""Who writes under a directory: a Python audit hook recording, per process, every file created,
opened for writing, renamed or deleted below a root, with the process's Ray node id.

A plain module next to the tests (pytest's default import mode puts this directory on sys.path);
Ray worker processes import it through ``runtime_env`` (see :func:`runtime_env`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT_ENV = "FIRM_RAY_AUDIT_ROOT"
LOG_ENV = "FIRM_RAY_AUDIT_LOG"

# audit events that change the file system -> positions of their path arguments
WRITE_EVENTS = {
    "open": (0,),
    "os.rename": (0, 1),  # os.replace raises os.rename too
    "os.mkdir": (0,),
    "os.remove": (0,),
    "os.rmdir": (0,),
    "shutil.rmtree": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def recorder(root: str, log_dir: str, node_id: Callable[[], str]) -> Callable[[str, tuple], None]:
    """An audit hook appending one JSON line per write under ``root`` to ``log_dir/<pid>.jsonl``;
    ``node_id()`` is called once, at the first write."""
    state: dict[str, Any] = {"busy": False, "node": None, "on": True}

    def hook(event: str, args: tuple) -> None:
        if event not in WRITE_EVENTS or state["busy"] or not state["on"]:
            return
        if event == "open":
            mode, flags = args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if not writes:
                return
        paths = [args[i] for i in WRITE_EVENTS[event] if i < len(args)]
        paths = [os.fsdecode(p) for p in paths if isinstance(p, str | bytes | os.PathLike)]
        hits = [os.path.abspath(p) for p in paths]
        hits = [p for p in hits if p.startswith(root + os.sep)]
        if not hits:
            return
        state["busy"] = True  # the hook's own writes (and node_id()'s) are not recorded
        try:
            if state["node"] is None:
                state["node"] = node_id()
            line = {"event": event, "paths": hits, "pid": os.getpid(), "node": state["node"]}
            with open(os.path.join(log_dir, f"{os.getpid()}.jsonl"), "a") as log:
                log.write(json.dumps(line) + "\n")
        finally:
            state["busy"] = False

    hook.state = state  # type: ignore[attr-defined]  # hook.state["on"] = False stops it
    return hook


def _ray_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def install_from_env() -> None:
    """Ray's ``worker_process_setup_hook``: record this worker process's writes."""
    sys.addaudithook(recorder(os.environ[ROOT_ENV], os.environ[LOG_ENV], _ray_node_id))


def runtime_env(root: Path, log_dir: Path) -> dict[str, Any]:
    """A job runtime env that installs the recorder in every Ray worker process."""
    path = os.pathsep.join(
        p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
    )
    return {
        "env_vars": {"PYTHONPATH": path, ROOT_ENV: str(root), LOG_ENV: str(log_dir)},
        "worker_process_setup_hook": f"{__name__}.install_from_env",
    }


def read_records(log_dir: Path) -> list[dict[str, Any]]:
    """Every recorded write, from every process."""
    return [
        json.loads(x) for f in sorted(log_dir.glob("*.jsonl")) for x in f.read_text().splitlines()
    ]
