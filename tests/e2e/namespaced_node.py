"""A Ray worker node, joined to the cluster at argv[1], with 1 CPU on 127.0.0.1; it prints its
node id and runs until killed. test_node_faults starts it in a mount namespace of its own
(``unshare -m``), so it can see a different filesystem than the driver, as another machine
would. Started the way ``ray.cluster_utils.Cluster.add_node`` starts a node (``ray start``
refuses a loopback worker node)."""

from __future__ import annotations

import sys
import time

from ray._private import ray_constants
from ray._private.node import Node
from ray._private.parameter import RayParams

if __name__ == "__main__":
    ray_constants.ENABLE_RAY_CLUSTER = False  # keep the node IP 127.0.0.1
    params = RayParams(
        node_ip_address="127.0.0.1",
        gcs_address=sys.argv[1],
        num_cpus=1,
        num_gpus=0,
        object_store_memory=150 * 1024 * 1024,
        min_worker_port=0,
        max_worker_port=0,
        include_log_monitor=False,
        node_manager_port=0,
    )
    params.dashboard_agent_listen_port = None
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(node.node_id, flush=True)
    while True:
        time.sleep(3600)
