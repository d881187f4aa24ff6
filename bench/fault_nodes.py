"""A multi-node Ray on this machine for bench/faults.py's node_kill, and a real node loss.

``ray.cluster_utils.Cluster`` (as tests/e2e/test_multinode_artifacts.py): a head with 0 CPUs
(the run's driver connects there, and the aggregator is pinned to the driver's node) and two
1-CPU worker nodes, each its own raylet, all on 127.0.0.1. The run's two 0.5-CPU worker
bundles can only go to a worker node; after that node is lost the other one has room for them.

``kill(node)`` is a node loss, not a shutdown: every process of the node (the Ray workers its
raylet started, then the raylet and the node's other processes) gets SIGKILL at once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import psutil

TRACE_ENV = "FIRM_RAY_TASK_TRACE"
NODE = {"node_ip_address": "127.0.0.1", "include_dashboard": False}


class LocalCluster:
    """Context manager: the nodes are up inside ``with``, all removed after it."""

    def __init__(self, trace: Path) -> None:
        self.trace = trace
        self.cluster: Any = None
        self.workers: list[Any] = []
        self.killed: list[str] = []
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> LocalCluster:
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        # keep 127.0.0.1 as every node's IP (see firm_ray/runtime/local_ray.py), and give the
        # raylets the trace variable: the Ray workers they start write the task trace
        env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", TRACE_ENV: str(self.trace)}
        self._saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0})
            self.workers = [self.cluster.add_node(**NODE, num_cpus=1) for _ in range(2)]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.cluster is not None:
                self.cluster.shutdown()
        finally:
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def client_env(self) -> dict[str, str]:
        """The environment of a `firm_ray run` that runs on this cluster."""
        return {"RAY_ADDRESS": self.cluster.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    @staticmethod
    def _raylet(node: Any) -> int:
        from ray._private import ray_constants

        return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid

    def node_of(self, pid: int) -> Any:
        """The worker node whose raylet started process ``pid``."""
        ancestors = {p.pid for p in psutil.Process(pid).parents()}
        for node in self.workers:
            if node in self.cluster.worker_nodes and self._raylet(node) in ancestors:
                return node
        raise RuntimeError(f"process {pid} runs on no live worker node of this cluster")

    def kill(self, node: Any) -> None:
        """Node loss: SIGKILL the node's Ray workers, then its raylet and other processes."""
        for proc in psutil.Process(self._raylet(node)).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.cluster.remove_node(node, allow_graceful=False)
        self.killed.append(node.node_id)

    def describe(self) -> dict[str, Any]:
        return {
            "head": self.cluster.head_node.node_id if self.cluster.head_node else None,
            "workers": [n.node_id for n in self.workers],
            "killed": self.killed,
        }
