"""A node lost mid-round (issue 14, item 8): a real Ray cluster of several nodes on this machine
(``ray.cluster_utils.Cluster``, every node on 127.0.0.1, as in test_multinode_artifacts.py).
The head has no CPU, so the driver and the Aggregator (zero CPUs, pinned to the driver's node)
run there and the ClientWorkers land on a worker node. ``Cluster.remove_node`` kills that
node's raylet and every process on it (its workers, its object store): a real node death, as
when a machine goes away. With room on another node the run re-places the workers there and
ends with the adapter of an uninterrupted run on the same topology, tensor for tensor; with no
room anywhere it fails after ``runtime.placement_timeout_s`` with one line. A sweep on a
cluster whose second node does not share the sweep directory is refused before any trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from rich.console import Console
from test_faults import TaskTrace, assert_same_adapter, train_of
from tiny_world import TINY

from firm_ray.config import load_config
from firm_ray.runtime.loop import RunError, run
from firm_ray.runtime.sweep import SweepError, run_sweep
from firm_ray.runtime.worker import TRACE_ENV
from firm_ray.tracking.jsonl import read_metrics

pytestmark = pytest.mark.e2e

NODE = {"node_ip_address": "127.0.0.1", "include_dashboard": False}


def config(tmp_path: Path, name: str, *extra: str):
    return load_config(
        "tune_configs/quickstart.yaml",
        [
            f"experiment.output_dir={tmp_path}",
            f"experiment.name={name}",
            *TINY,
            "federation.rounds=2",
            "lora.r=16",  # a 120 kB update: kept in the worker node's object store, as real ones
            *extra,
        ],
    )


def start_cluster(monkeypatch: pytest.MonkeyPatch, trace: Path, worker_nodes: int) -> Cluster:
    """A 0-CPU head and ``worker_nodes`` 1-CPU nodes (each holds both 0.5-CPU workers); every
    process the nodes start inherits the task-trace variable. ``ray.init`` keeps 127.0.0.1
    only with Ray's cluster flag off (see test_multinode_artifacts.two_nodes)."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.setenv(TRACE_ENV, str(trace))
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0})
    for _ in range(worker_nodes):
        cluster.add_node(**NODE, num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    return cluster


@pytest.fixture
def cluster_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started: list[Cluster] = []

    def make(worker_nodes: int) -> tuple[Cluster, TaskTrace]:
        path = tmp_path / "tasks.jsonl"
        started.append(start_cluster(monkeypatch, path, worker_nodes))
        return started[-1], TaskTrace(path)

    yield make
    ray.shutdown()
    for cluster in started:
        cluster.shutdown()


def remove_node_of(cluster: Cluster, killed: dict) -> Callable[[dict], str]:
    """Remove the node whose raylet runs the traced task's process (its ancestor)."""

    def act(line: dict) -> str:
        parents = {p.pid for p in psutil.Process(line["pid"]).parents()}
        (node,) = [
            n for n in cluster.worker_nodes if n.all_processes["raylet"][0].process.pid in parents
        ]
        killed.update(node=node.node_id, at=time.time(), pid=line["pid"])
        cluster.remove_node(node, allow_graceful=False)  # SIGKILL: its raylet and processes
        deadline = time.time() + 300
        while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
            assert time.time() < deadline, "Ray never declared the removed node dead"
            time.sleep(0.2)
        killed["dead_after"] = time.time() - killed["at"]  # Ray's health check
        return f"removed node {node.node_id[:12]}"

    return act


def test_node_lost_mid_round_workers_replaced_same_adapter(tmp_path: Path, cluster_of) -> None:
    cluster, trace = cluster_of(2)
    baseline = run(config(tmp_path, "baseline"))  # uninterrupted, on the same topology
    assert baseline["status"] == "completed"
    trace.path.unlink()

    killed: dict = {}
    thread = trace.on([(train_of(0, 1), remove_node_of(cluster, killed))])
    summary = run(config(tmp_path, "node"))
    thread.join(timeout=5)
    assert not trace.errors, trace.errors
    assert summary["status"] == "completed" and killed

    run_dir = Path(summary["run_dir"])
    assert_same_adapter(run_dir, Path(baseline["run_dir"]))
    rows = read_metrics(run_dir)
    faults = rows[1]["faults"]
    assert faults["node_losses"] == 1 and faults["bundles_replaced"] == 2, faults
    # the clients the dead workers held re-ran (one may have finished as its node died: its
    # update was then only in that node's object store, and it re-ran at the end of the round)
    assert faults["worker_restarts"] == 2, faults
    assert faults["reruns"] and set(faults["reruns"]) <= set(rows[1]["clients"]), faults
    assert f"node {killed['node'][:12]} lost" in faults["events"]
    died = [e for e in faults["events"] if e.startswith("worker ")]
    assert len(died) == 2 and all(f"node {killed['node'][:12]} died" in e for e in died), faults
    assert any("re-placed on node(s)" in e for e in faults["events"]), faults
    assert not rows[1]["failed"] and rows[0]["faults"]["node_losses"] == 0
    # the run went on: the replaced workers loaded the model and ran the round's clients
    after = [x for x in trace.lines() if x["time"] > killed["at"] and x["pid"] != killed["pid"]]
    trains = [x for x in after if x["task"] == "train"]
    assert trains and trains[0]["round"] == 1 and trains[0]["time"] > after[0]["time"]
    started, trained = after[0]["time"] - killed["at"], trains[0]["time"] - killed["at"]
    placed = next(e for e in faults["events"] if "re-placed" in e)
    print(
        f"node kill -> declared dead {killed['dead_after']:.1f} s -> replaced worker started "
        f"{started:.1f} s -> first client task {trained:.1f} s; {placed}"
    )


def test_node_lost_with_no_room_fails_after_placement_timeout(tmp_path: Path, cluster_of) -> None:
    cluster, trace = cluster_of(1)
    killed: dict = {}
    thread = trace.on([(train_of(0, 0), remove_node_of(cluster, killed))])
    with pytest.raises(RunError) as err:
        run(config(tmp_path, "noroom", "runtime.placement_timeout_s=15"))
    failed_after = time.time() - killed["at"]
    print(f"node declared dead {killed['dead_after']:.1f} s after the kill")
    thread.join(timeout=5)
    assert not trace.errors, trace.errors
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith("could not place worker(s) [0, 1] (a bundle of {'CPU': 0.5} each)")
    assert "runtime.placement_timeout_s = 15 s after a node was lost" in message
    assert "the cluster's 1 live node(s) have CPU 0 (0 free), GPU 0 (0 free)" in message
    # the timeout runs from the workers' replacement, once Ray declared the node dead (both
    # seen by polling: a second of slack)
    assert 14 <= failed_after - killed["dead_after"] < 120, (failed_after, killed)
    summary = json.loads((Path(err.value.run_dir) / "summary.json").read_text())
    assert summary["status"] == "failed"
    print(f"node kill -> RunError: {failed_after:.1f} s; {message}")


def test_a_sweep_without_shared_storage_fails_fast(tmp_path: Path, monkeypatch) -> None:
    """A second node with its own view of the sweep's output directory, as a machine that
    does not mount the NFS share: the node (namespaced_node.py) runs in a mount namespace of its own
    (``unshare -m``) with a tmpfs over that directory. Every trial could land there, so the
    sweep refuses before any trial starts, in one line saying what to do."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a node with its own mount namespace")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    root = (tmp_path / "sweeps").resolve()
    root.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 1})
    starter = Path(__file__).with_name("namespaced_node.py")
    script = (
        f"mount -t tmpfs -o size=1m none {root} && exec {sys.executable} {starter} "
        f"{cluster.address}"
    )
    node = subprocess.Popen(  # its own session: the group is this node's processes
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ray.init(address=cluster.address)
        deadline = time.time() + 300
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert node.poll() is None and time.time() < deadline, "the second node never joined"
            time.sleep(1)
        (other,) = [
            n["NodeID"]
            for n in ray.nodes()
            if n["Alive"] and n["NodeID"] != cluster.head_node.node_id
        ]
        spec = {
            "name": "unshared",
            "base": str(Path("tune_configs/quickstart.yaml").resolve()),
            "set": [*TINY, "runtime.num_workers=1", "federation.rounds=1"],
            "output_dir": str(tmp_path / "unused"),
            "space": {"experiment.seed": {"grid": [0, 1]}},
        }
        path = tmp_path / "unshared.yaml"
        path.write_text(yaml.safe_dump({"sweep": spec}, sort_keys=False))
        start = time.time()
        with pytest.raises(SweepError) as err:
            run_sweep(path, console=Console(quiet=True), output_dir=root)
        took = time.time() - start
    finally:
        ray.shutdown()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)  # the node and its processes
        node.wait(timeout=60)
        cluster.shutdown()
    message = str(err.value)
    sweep_dir = root / "unshared"
    assert "\n" not in message, message
    assert message.startswith("this Ray has 2 nodes and a trial writes its run directory")
    assert f"{sweep_dir} is not shared with 1 of them (node {other[:12]}: " in message
    assert message.endswith(
        "pass --output-dir on storage every node mounts (NFS or a shared volume)"
    )
    assert not (sweep_dir / "trials").exists() and not (sweep_dir / "tune").exists()
    assert not list(sweep_dir.glob(".storage-probe-*"))
    print(f"sweep refused in {took:.1f} s: {message}")


def test_workers_that_cannot_fit_a_local_ray_fail_at_once(tmp_path: Path, monkeypatch) -> None:
    """A local Ray this run starts never gains a node: no placement wait (it was 60 s)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start = time.time()
    with pytest.raises(RunError) as err:
        run(config(tmp_path, "big", "runtime.num_cpus_per_worker=4096"))
    took = time.time() - start
    message = str(err.value)
    assert "\n" not in message and not ray.is_initialized()
    assert message.startswith(
        "could not place 2 worker(s) (a bundle of {'CPU': 4096.0} each) on the local Ray this "
        "run started: it has CPU "
    )
    assert message.endswith(
        "lower runtime.num_workers / num_cpus_per_worker / num_gpus_per_worker, or run on a cluster"
    )
    assert took < 45, took  # Ray's start-up on 2 busy cores; the old code waited 60 s more
    print(f"refused in {took:.1f} s: {message}")
