"""The Ray a run or sweep runs on: an existing cluster, or a local one on loopback only.

A local Ray (no ``RAY_ADDRESS`` / ``runtime.address``) must not be reachable from the network:
its GCS, raylet and workers execute whatever code a connected client sends. Passing
``_node_ip_address="127.0.0.1"`` to ``ray.init`` is not enough with Ray 2.60:
``ray.init`` replaces a loopback node IP by the host's address
(``ray/_private/worker.py:1844`` calls ``services.resolve_ip_for_localhost``, which keeps
loopback only when ``ray_constants.ENABLE_RAY_CLUSTER`` is false, ``services.py:815``), and
every bind address follows the node IP: the GCS, raylet, object manager and worker gRPC
servers listen on 127.0.0.1 only when the node IP is 127.0.0.1 (else on ``::`` / 0.0.0.0),
and so do the dashboard agent (``dashboard/agent.py:165``), the runtime-env agent, the
metrics export ports (``dashboard/head.py:362``, ``autoscaler/_private/monitor.py:207``) and
the dashboard. :func:`start_local_ray` therefore turns ``ENABLE_RAY_CLUSTER`` off for the
duration of ``ray.init`` (the driver's module constant, and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
in the environment the spawned processes inherit), then restores both. See docs/SECURITY.md.

One process cannot be left out: Ray starts its API server (``dashboard/dashboard.py``) even
with ``include_dashboard=False`` (``_private/node.py:1666``), then with only its usage-stats
module and no web UI (``_private/services.py:1386``); its one listening socket, the dashboard
metrics port, is on 127.0.0.1 too (and ``ray.init`` turns usage-stats reporting off for a
cluster it starts, ``_private/worker.py:1884``, so that module sends nothing).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
from ray._private import ray_constants

from firm_ray.config import FirmConfig

__all__ = ["LOCAL_RAY_ENV", "LOOPBACK", "init_ray", "start_local_ray"]

LOOPBACK = "127.0.0.1"
LOCAL_RAY_ENV = {
    # keep a loopback node IP (ray_constants.ENABLE_RAY_CLUSTER, read by the spawned processes)
    ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0",
}
"""Set while a local Ray starts, whatever the environment holds (restored afterwards)."""


@contextmanager
def _loopback_env() -> Iterator[None]:
    """Environment and constant for a loopback-only ``ray.init``; everything restored after.

    The processes Ray spawns copy the environment when they start (the raylet passes its own to
    the workers and agents it starts later), so restoring it after ``ray.init`` changes nothing
    for this Ray session and leaves the caller's environment as it was.
    """
    saved = {key: os.environ.get(key) for key in LOCAL_RAY_ENV}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOCAL_RAY_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_local_ray(dashboard: bool = False, **init_kwargs: object) -> None:
    """Start a new single-node Ray whose every process listens on 127.0.0.1 only.

    ``dashboard`` starts Ray's web dashboard (on 127.0.0.1, port 8265 or the next free one);
    ``init_kwargs`` go to ``ray.init`` (e.g. ``num_cpus``). Token authentication stays as Ray
    sets it (on by default since Ray 2.52: a client needs ``~/.ray/auth_token``); that file is
    made private to its owner if it is not (one line on stderr says so).
    """
    kwargs: dict[str, object] = {"log_to_driver": True, "configure_logging": False}
    kwargs.update(init_kwargs)
    with _loopback_env():
        ray.init(
            address="local",  # never attach to some other `ray start` cluster on this machine
            _node_ip_address=LOOPBACK,
            include_dashboard=dashboard,
            dashboard_host=LOOPBACK,
            **kwargs,
        )
    notice = _private_token_file()
    if notice is not None:
        print(notice, file=sys.stderr)


def _private_token_file() -> str | None:
    """Make Ray's token file readable by its owner only; returns a line saying so, or None.

    Ray 2.60 writes ``~/.ray/auth_token`` with the default umask (0644 under umask 022:
    ``authentication_token_setup.py:47``), so any user of this machine could read the token
    that keeps them out of this loopback-only Ray.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        info = path.stat()
        if info.st_uid != os.getuid() or not info.st_mode & 0o077:
            return None
        path.chmod(0o600)
    except OSError:
        return None
    return (
        f"firm-ray: made Ray's token file {path} private (mode 0600, was "
        f"{stat.S_IMODE(info.st_mode):04o}): other users of this machine could read it"
    )


def init_ray(config: FirmConfig) -> bool:
    """Connect to RAY_ADDRESS / runtime.address, or start a loopback-only local Ray.

    Returns whether this call started or connected (the caller then shuts Ray down), False
    when Ray was already initialized (a Tune trial, a test, a notebook).
    """
    if ray.is_initialized():
        return False
    address = config.runtime.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    start_local_ray(dashboard=config.runtime.dashboard)
    return True
