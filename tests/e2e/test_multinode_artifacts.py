"""Where a run's files are written when Ray spans several nodes (cluster/README.md, "Where results
are written"): a real Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``:
its own GCS, two raylets with different node ids, everything on 127.0.0.1). The head's one CPU
is taken (by another actor, as by another job on a real head), so the ClientWorkers land on the
other node, as on a cluster whose GPU workers are separate machines, and Ray's scheduler, left
to itself, would put the zero-CPU Aggregator there too (it does without the node pin).

Every Ray worker process of the job and the driver (this process) record, through a Python
audit hook, each file they create, open for writing, rename or delete under the run directory,
with their node id. The nodes share this machine's disk, so what is checked is who writes, not
where the bytes land: only processes on the driver's node may write (the driver: config,
metrics, summary, plots, final adapter; the Aggregator actor: checkpoints), never a worker.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console
from tiny_world import TINY
from write_audit import read_records, recorder, runtime_env

from firm_ray.config import load_config
from firm_ray.runtime.loop import FederatedRun
from firm_ray.runtime.sweep import run_sweep

pytestmark = pytest.mark.e2e


@ray.remote(num_cpus=1)
class Busy:
    """Holds one CPU of the node it runs on (any other work on the driver's node)."""


@pytest.fixture
def two_nodes(monkeypatch):
    """A 1-CPU head (the driver's node) and a 1-CPU worker node, on 127.0.0.1.

    ``ray.init(address=...)`` replaces 127.0.0.1 by this machine's outward IP unless Ray's
    cluster mode flag is off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ray is
    imported: set for the processes the nodes start, and on the already imported constant).
    """
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    node = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 1})
    worker = cluster.add_node(**node, num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_every_artifact_is_written_on_the_drivers_node(tmp_path, two_nodes) -> None:
    cluster, worker_node = two_nodes
    root, log_dir = (tmp_path / "runs").resolve(), (tmp_path / "writes").resolve()
    root.mkdir()
    log_dir.mkdir()
    ray.init(address=cluster.address, runtime_env=runtime_env(root, log_dir))
    driver_node = ray.get_runtime_context().get_node_id()
    assert driver_node == cluster.head_node.node_id != worker_node
    busy = Busy.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False)
    ).remote()
    ray.get(busy.__ray_ready__.remote())  # the head's CPU is in use from here on
    record = recorder(str(root), str(log_dir), lambda: driver_node)
    sys.addaudithook(record)
    try:
        config = load_config(
            "tune_configs/quickstart.yaml",
            [f"experiment.output_dir={root}", "experiment.name=mn", *TINY, "federation.rounds=2"],
        )
        run = FederatedRun(config)
        # both ClientWorkers' bundles are on the worker node (the head has no free CPU)
        bundles = ray.util.placement_group_table(run.cluster.group)["bundles_to_node_id"]
        assert len(bundles) == 2 and set(bundles.values()) == {worker_node}
        while not run.done:
            run.step()
        summary = run.finish("completed")
    finally:
        record.state["on"] = False  # audit hooks cannot be removed: switch this one off

    run_dir = Path(summary["run_dir"]).resolve()
    assert summary["status"] == "completed"
    assert (run_dir / "checkpoints" / "round_0001" / "adapter.safetensors").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    records = read_records(log_dir)
    by_node: dict[str, set[int]] = {}
    for r in records:
        by_node.setdefault(r["node"], set()).add(r["pid"])
    # the worker node's processes (the ClientWorker) wrote nothing under the run directory
    assert set(by_node) == {driver_node}, by_node
    me = os.getpid()

    def writers(match: str) -> set[int]:
        return {r["pid"] for r in records if any(match in path for path in r["paths"])}

    checkpoint_writers = writers("/checkpoints/")
    adapter_writers = writers("/adapter/") | writers("/.adapter.")  # written aside, renamed
    # checkpoints: the Aggregator actor, a process of its own on the driver's node
    assert checkpoint_writers and me not in checkpoint_writers
    # the final adapter, metrics, summary and plots: the driver itself
    assert adapter_writers == {me}
    for name in ("metrics.jsonl", "summary.json", "config.yaml", "partition.json"):
        assert writers(f"/{name}") == {me}, name
    # the worker did run there (a node that wrote nothing because it ran nothing proves
    # nothing): every sampled client came back with an update
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(row["bytes_up"] and not row["failed"] for row in rows)


def test_a_sweep_trial_writes_its_run_on_the_node_it_runs_on(tmp_path, two_nodes) -> None:
    """Inside a Ray Tune trial the run's driver is the trial actor, placed by Tune with the
    trial's first worker bundle (sweep.trial_resources: an empty head bundle), and the
    Aggregator follows it: the trial's run directory is written on that node, here the worker
    node, while the sweep's own files come from the sweep driver. So a multi-node sweep needs
    storage every node shares (cluster/README.md)."""
    cluster, worker_node = two_nodes
    root, log_dir = (tmp_path / "sweeps").resolve(), (tmp_path / "writes").resolve()
    log_dir.mkdir()
    spec = {
        "name": "mn",
        "base": str(Path("tune_configs/quickstart.yaml").resolve()),
        "set": [*TINY, "runtime.num_workers=1", "federation.rounds=1"],
        "output_dir": str(root),
        "space": {"experiment.seed": {"grid": [0]}},
    }
    path = tmp_path / "mn.yaml"
    path.write_text(yaml.safe_dump({"sweep": spec}, sort_keys=False))
    ray.init(address=cluster.address, runtime_env=runtime_env(root, log_dir))
    driver_node = ray.get_runtime_context().get_node_id()
    busy = Busy.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False)
    ).remote()
    ray.get(busy.__ray_ready__.remote())
    record = recorder(str(root), str(log_dir), lambda: driver_node)
    sys.addaudithook(record)
    try:
        result = run_sweep(path, console=Console(quiet=True))
    finally:
        record.state["on"] = False

    sweep_dir = Path(result["sweep_dir"]).resolve()
    (run_dir,) = [p for p in (sweep_dir / "trials").iterdir() if p.is_dir()]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    records = read_records(log_dir)

    def nodes(match: str) -> set[str]:
        return {r["node"] for r in records if any(match in p for p in r["paths"])}

    assert nodes(f"{run_dir}/checkpoints/") == {worker_node}  # the trial's Aggregator
    # the trial actor (the adapter is written in a sibling temporary directory, then renamed)
    assert nodes(f"{run_dir}/adapter/") | nodes(f"{run_dir}/.adapter.") == {worker_node}
    assert nodes(f"{run_dir}/") == {worker_node}
    assert nodes(f"{sweep_dir}/pareto.json") == {driver_node}  # the sweep driver (this process)
