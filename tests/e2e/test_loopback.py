"""Loopback only (issue 14): every process of the Ray that firm_ray starts listens on 127.0.0.1.

The sockets are read from the kernel (psutil) for every process of the started Ray session:
the driver, its descendants (GCS, raylet, monitor, API server, log monitor, agents, workers,
the Aggregator and ClientWorker actors) and any process whose command line names the session
directory. ``::ffff:127.0.0.1`` is 127.0.0.1 as an IPv6 socket writes it (gRPC's dual-stack
listeners): it accepts connections to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import grpc
import psutil
import pytest
import ray
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
from tiny_world import TINY

from firm_ray.config import load_config
from firm_ray.runtime.local_ray import start_local_ray
from firm_ray.runtime.loop import FederatedRun

pytestmark = pytest.mark.e2e

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
DEADLINE_S = 300  # generous: 2 cores shared with other test sessions


def session_processes() -> dict[int, psutil.Process]:
    """The driver, its descendants, and every process naming this Ray session's directory."""
    me = psutil.Process()
    procs = {me.pid: me} | {p.pid: p for p in me.children(recursive=True)}
    session = ray._private.worker._global_node.get_session_dir_path()
    for proc in psutil.process_iter(["cmdline"]):
        if any(session in arg for arg in proc.info["cmdline"] or []):
            procs[proc.pid] = proc
    return procs


def label(proc: psutil.Process) -> str:
    """A short name: gcs_server, raylet, ray::ClientWorker, dashboard.py, ... or 'driver'."""
    if proc.pid == psutil.Process().pid:
        return "driver"
    args = proc.cmdline()
    title = " ".join(args).strip()
    if title.startswith("ray::"):
        return title.split()[0]
    for arg in args[:3]:
        name = Path(arg).name
        if name not in ("python", "python3") and not name.startswith("python3."):
            return name
    return title[:60]


def listeners() -> list[tuple[str, str, int, str]]:
    """(process, address, port, tcp|udp) of every listening TCP / bound UDP socket."""
    rows = []
    for proc in session_processes().values():
        try:
            name, conns = label(proc), proc.net_connections(kind="inet")
        except psutil.Error:  # exited meanwhile (an idle worker)
            continue
        for c in conns:
            if c.type.name == "SOCK_STREAM" and c.status == psutil.CONN_LISTEN:
                rows.append((name, c.laddr.ip, c.laddr.port, "tcp"))
            elif c.type.name == "SOCK_DGRAM" and not c.raddr:
                rows.append((name, c.laddr.ip, c.laddr.port, "udp"))
    return rows


def wait_for(names: set[str]) -> list[tuple[str, str, int, str]]:
    """Poll until every named process listens somewhere; return all listeners then."""
    deadline = time.time() + DEADLINE_S
    while True:
        rows = listeners()
        missing = names - {row[0] for row in rows}
        if not missing:
            return rows
        assert time.time() < deadline, f"{sorted(missing)} never listened; seen: {rows}"
        time.sleep(2)


def assert_loopback(rows: list[tuple[str, str, int, str]]) -> None:
    exposed = [row for row in rows if row[1] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback (process, address, port, proto): {exposed}"


def gcs_call(metadata: list[tuple[str, str]] | None) -> grpc.StatusCode:
    """One read-only GCS call over plain gRPC, as a client that is not Ray would make it."""
    address = ray._private.worker._global_node.gcs_address
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetAllNodeInfo(
                gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=60
            )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_run_listens_on_loopback_only(tmp_path, world_model_dir) -> None:
    """A real federated round: every socket of the run's Ray is on 127.0.0.1, no web UI runs,
    and the GCS refuses a client without the cluster's token, which only its owner can read
    (loopback is open to every user of this host)."""
    config = load_config(
        "tune_configs/quickstart.yaml",
        [f"experiment.output_dir={tmp_path}", "experiment.name=lo", *TINY, "federation.rounds=1"],
    )
    assert not config.runtime.dashboard
    token_file = Path.home() / ".ray" / "auth_token"  # where Ray keeps it without RAY_AUTH_TOKEN*
    from_file = not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ)
    if from_file and token_file.exists():  # as Ray leaves it (written under umask 022)
        token_file.chmod(0o644)
    experiment = FederatedRun(config)
    try:
        experiment.step()
        # (monitor.py / dashboard.py metrics ports and the agent's 52365 are fixed ports: another
        # Ray on this machine may hold them, so they are checked when present, not required)
        rows = wait_for(
            {
                "driver",
                "gcs_server",
                "raylet",
                "ray::DashboardAgent",
                "ray::RuntimeEnvAgent",
                "ray::Aggregator",
                "ray::ClientWorker",
            }
        )
        assert_loopback(rows)
        # runtime.dashboard false: Ray's API server still runs (Ray always starts it), but only
        # with its usage-stats module and no web UI
        api = [p for p in session_processes().values() if label(p) == "dashboard.py"]
        assert len(api) == 1 and "--disable-frontend" in api[0].cmdline()
        assert ray._private.worker._global_node.webui_url in (None, "")
        # loopback keeps other hosts out; the token keeps other local users out
        token = ray._raylet.AuthenticationTokenLoader.instance().get_token_for_http_header()
        assert gcs_call(None) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            gcs_call([("authorization", "Bearer " + "0" * 32)]) == grpc.StatusCode.UNAUTHENTICATED
        )
        assert gcs_call(list(token.items())) == grpc.StatusCode.OK
        # ... and other users cannot read the token
        if from_file:
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    finally:
        experiment.finish("completed")
        ray.shutdown()


def test_dashboard_on_loopback_only() -> None:
    """runtime.dashboard true: the web dashboard too listens on 127.0.0.1 only."""
    start_local_ray(dashboard=True, num_cpus=1)
    try:
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        url = ray._private.worker._global_node.webui_url
        host, port = url.rsplit(":", 1)
        assert host == "127.0.0.1"
        deadline = time.time() + DEADLINE_S
        while not any(row[0] == "dashboard.py" and row[2] == int(port) for row in listeners()):
            assert time.time() < deadline, f"the dashboard never listened on {url}"
            time.sleep(2)
        assert_loopback(wait_for({"driver", "gcs_server", "raylet", "ray::DashboardAgent"}))
    finally:
        ray.shutdown()
