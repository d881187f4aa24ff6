"""Placing a run's own workers: a PACK placement group of one bundle per worker, within
``runtime.placement_timeout_s`` (an autoscaling cluster adds nodes meanwhile) with a progress
line, and the one-line error naming what could not be placed and the cluster's resources
(also used when Ray cannot re-place the bundles of a lost node: runtime/cluster.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from rich.console import Console

from firm_ray.config import FirmConfig
from firm_ray.runtime.errors import RunError
from firm_ray.runtime.faults import PLACEMENT_POLL_S, PROGRESS_EVERY_S, alive_nodes

__all__ = ["place_workers", "placement_error"]


def place_workers(
    config: FirmConfig, bundle: dict[str, float], console: Console, local: bool
) -> PlacementGroup:
    """Our own PACK placement group of W worker bundles, placed within
    runtime.placement_timeout_s (a progress line every PROGRESS_EVERY_S); on a local Ray this
    run started, which never gains a node, a group that cannot fit fails at once."""
    count, limit = config.runtime.num_workers, config.runtime.placement_timeout_s
    what = f"{count} worker(s) (a bundle of {bundle} each)"
    total = ray.cluster_resources()
    if local and any(count * v > total.get(k, 0.0) + 1e-9 for k, v in bundle.items()):
        raise RunError(placement_error(what, 0, "on the local Ray this run started", bundle))
    group = placement_group([bundle] * count, strategy="PACK")
    start = shown = time.monotonic()
    while not ray.wait([group.ready()], timeout=PLACEMENT_POLL_S)[0]:
        now = time.monotonic()
        if now - start >= limit:
            remove_placement_group(group)
            raise RunError(placement_error(what, limit, "", bundle))
        if now - shown >= PROGRESS_EVERY_S:
            shown = now
            console.print(
                f"waiting for Ray to place {what}: {now - start:.0f} s "
                f"(runtime.placement_timeout_s = {limit:g})",
                markup=False,
            )
    return group


def placement_error(what: str, limit: float, when: str, keys: Iterable[str] = ()) -> str:
    """One line: what could not be placed, the cluster's resources, what to do (``limit`` 0:
    a local Ray that cannot hold them at all)."""
    total, free = ray.cluster_resources(), ray.available_resources()
    have = ", ".join(
        f"{k} {total.get(k, 0.0):g} ({free.get(k, 0.0):g} free)"
        for k in sorted({"CPU", "GPU", *keys})
    )
    lower = "lower runtime.num_workers / num_cpus_per_worker / num_gpus_per_worker"
    if not limit:
        return f"could not place {what} {when}: it has {have}; {lower}, or run on a cluster"
    return (
        f"could not place {what} within runtime.placement_timeout_s = {limit:g} s"
        f"{' ' + when if when else ''}; the cluster's {len(alive_nodes())} live node(s) have "
        f"{have}. Add a node with room for them, raise runtime.placement_timeout_s (an "
        f"autoscaling cluster adds nodes in minutes), or {lower}"
    )
