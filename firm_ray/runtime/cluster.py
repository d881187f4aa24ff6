"""The actors of one run: start-up (placement group, aggregator, workers, the model loaded
within ``runtime.worker_start_timeout_s``), replacement after a fault, and tear-down.

The aggregator is pinned to the driver's node (it writes the checkpoints into the run
directory) and takes no CPU; worker i runs in placement-group bundle first_bundle + i, its own
or, inside a Ray Tune trial, the trial's, so a replaced worker gets the same resources.

When a node dies, Ray (2.60) keeps the placement group and re-places the bundles that were on
it, on any node with room (state RESCHEDULING meanwhile); a worker created in such a bundle
starts once the bundle is placed again. :meth:`Cluster.unplaced` watches that after every
replacement: a progress line every 30 s, and after ``runtime.placement_timeout_s`` the run
fails with one line naming the workers that could not be placed and the cluster's resources.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)
from rich.console import Console

from firm_ray.config import FirmConfig
from firm_ray.runtime.aggregator import Aggregator
from firm_ray.runtime.errors import RunError
from firm_ray.runtime.faults import (
    PLACEMENT_POLL_S,
    PROGRESS_EVERY_S,
    UNREACHABLE_WAIT_S,
    ActorFault,
    AggregatorDied,
    FaultLog,
    alive_nodes,
    dead_node,
    describe_actor_error,
)
from firm_ray.runtime.placement import place_workers, placement_error
from firm_ray.tracking.storage import atomic_write_text


@dataclass
class Cluster:
    """The actors of one run, how to replace them, and how to tear them down."""

    workers: list[Any]
    aggregator: Any
    group: Any
    started_ray: bool
    worker_cls: Any
    config_dict: dict[str, Any]
    run_dir: Path
    faults: FaultLog
    owns_group: bool = True
    """False inside a Ray Tune trial: the group is the trial's and Tune removes it."""
    first_bundle: int = 0
    """Worker i runs in bundle first_bundle + i (a Tune trial's group may hold more bundles)."""
    starting: dict[int, Any] = field(default_factory=dict)
    """ready() of the replaced workers still loading the model (their first queued task)."""
    console: Console | None = None
    replaced_at: float | None = None
    """When a worker was replaced whose bundle may not be placed (yet): see unplaced()."""
    bundle_nodes: dict[int, str] = field(default_factory=dict)
    """Worker index -> the node of its bundle, as last seen placed."""
    actor_nodes: dict[int, str] = field(default_factory=dict)
    """Worker index -> the node its current actor was placed on (once known)."""
    shown_at: float = 0.0

    def worker_options(self, index: int) -> dict[str, Any]:
        runtime = self.config_dict["runtime"]
        return {
            "num_cpus": runtime["num_cpus_per_worker"],
            "num_gpus": runtime["num_gpus_per_worker"],
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group,
                placement_group_bundle_index=self.first_bundle + index,
            ),
        }

    def start_worker(self, index: int) -> Any:
        return self.worker_cls.options(**self.worker_options(index)).remote(self.config_dict, index)

    def restart_worker(
        self, index: int, event: str = "", bounded: bool = True, node: str | None = None
    ) -> None:
        """Replace a dead or stuck worker by a fresh one in the same bundle; counted in the
        round's faults (``bounded``: against runtime.max_worker_restarts; ``node``: the
        worker died with that node, counted against runtime.max_node_losses instead)."""
        if node:
            self.faults.node_lost(node)
            if event and "died)" not in event:
                note = f" (node {node[:12]} died)"
                head, sep, tail = event.partition("; re-running")
                event = f"{head}{note}{sep}{tail}"
        if event:
            self.faults.worker_fault(event, bounded and not node)
        ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self.start_worker(index)
        self.starting[index] = self.workers[index].ready.remote()
        self.actor_nodes.pop(index, None)  # known once its bundle is placed
        self.replaced_at = self.replaced_at or time.monotonic()

    def unplaced(self) -> set[int]:
        """Workers whose bundle has no live node yet (Ray re-places the bundles of a lost
        node). No Ray call unless a worker was replaced since the last all-placed answer.
        Prints a progress line every PROGRESS_EVERY_S and raises RunError after
        runtime.placement_timeout_s."""
        if self.replaced_at is None:
            return set()
        alive = alive_nodes()
        nodes = self.placed_nodes()
        waiting = {i for i, node in nodes.items() if node not in alive}
        now = time.monotonic()
        waited = now - self.replaced_at
        if not waiting:
            moved = sorted(i for i, node in nodes.items() if node != self.bundle_nodes.get(i))
            if moved:
                where = sorted({nodes[i][:12] for i in moved})
                self.faults.replaced(
                    len(moved),
                    f"worker(s) {moved} re-placed on node(s) {where} after {waited:.1f} s",
                )
            self.replaced_at, self.bundle_nodes = None, nodes
            self.actor_nodes = {**nodes, **self.actor_nodes}
            return set()
        limit = self.config_dict["runtime"]["placement_timeout_s"]
        what = f"worker(s) {sorted(waiting)} (a bundle of {self.bundle()} each)"
        if waited >= limit:
            raise RunError(placement_error(what, limit, "after a node was lost", self.bundle()))
        if self.console and now - max(self.shown_at, self.replaced_at) >= PROGRESS_EVERY_S:
            self.shown_at = now
            self.console.print(
                f"waiting for Ray to re-place {what} after a node was lost: {waited:.0f} s "
                f"(runtime.placement_timeout_s = {limit:g})",
                markup=False,
            )
        return waiting

    def placed_nodes(self) -> dict[int, str]:
        """Worker index -> the node its bundle is on ('' while Ray re-places it)."""
        table = ray.util.placement_group_table(self.group)["bundles_to_node_id"]
        return {i: table.get(self.first_bundle + i, "") for i in range(len(self.workers))}

    def lost_node(self, index: int) -> str | None:
        """The node worker ``index``'s actor was placed on, if Ray has declared it dead."""
        node = self.actor_nodes.get(index)
        return node if node and node not in alive_nodes() else None

    def replace_unreachable(self, index: int, event: str) -> None:
        """Replace a worker whose calls fail as unavailable once Ray has decided about its
        node (see faults.py): blocks up to UNREACHABLE_WAIT_S."""
        start = time.monotonic()
        node = self.lost_node(index)
        while not node and time.monotonic() - start < UNREACHABLE_WAIT_S:
            time.sleep(PLACEMENT_POLL_S)
            node = self.lost_node(index)
        self.restart_worker(index, event, node=node)

    def wait_placed(self) -> None:
        """Block until every worker's bundle is placed (see unplaced)."""
        while self.unplaced():
            time.sleep(PLACEMENT_POLL_S)

    def bundle(self) -> dict[str, float]:
        return dict(self.group.bundle_specs[self.first_bundle])

    def start_aggregator(self) -> Any:
        """The aggregator writes checkpoints into the run directory: pinned to this node."""
        return (
            ray.remote(Aggregator)
            .options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    ray.get_runtime_context().get_node_id(), soft=False
                ),
            )
            .remote(self.config_dict, str(self.run_dir))
        )

    def restart_aggregator(self, event: str) -> None:
        self.faults.aggregator_fault(event)
        ray.kill(self.aggregator, no_restart=True)
        self.aggregator = self.start_aggregator()

    def from_aggregator(self, ref: Any) -> Any:
        """ray.get of an aggregator call; AggregatorDied if the actor died."""
        try:
            return ray.get(ref)
        except ActorFault as err:
            raise AggregatorDied(describe_actor_error(err)) from None

    def on_worker0(self, method: str, *args: Any) -> Any:
        """Call ``method`` on worker 0 (evaluation, theta^0, the adapter's files), on a
        replaced worker 0 if it dies."""
        while True:
            try:
                return ray.get(getattr(self.workers[0], method).remote(*args))
            except ActorFault as err:
                if err.actor_init_failed:
                    raise
                event = f"worker 0 died during {method}: {describe_actor_error(err)}"
                if isinstance(err, ray.exceptions.ActorUnavailableError):
                    self.replace_unreachable(0, event)
                else:
                    self.restart_worker(0, event, node=dead_node(err))
                self.wait_placed()
                self.wait_loaded(0)

    def wait_loaded(self, index: int) -> None:
        """Wait for a replaced worker to load the model, at most runtime.worker_start_timeout_s,
        with a line every PROGRESS_EVERY_S (a death meanwhile surfaces on its next call)."""
        limit = self.config_dict["runtime"]["worker_start_timeout_s"]
        start = shown = time.monotonic()
        while not ray.wait([self.starting[index]], timeout=PLACEMENT_POLL_S)[0]:
            now = time.monotonic()
            if now - start >= limit:
                raise RunError(
                    f"replaced worker {index} not ready within runtime.worker_start_timeout_s = "
                    f"{limit:g} s; raise it for a large model or a slow download"
                )
            if self.console and now - shown >= PROGRESS_EVERY_S:
                shown = now
                self.console.print(
                    f"waiting for replaced worker {index} to load the model: {now - start:.0f} s "
                    f"(runtime.worker_start_timeout_s = {limit:g})",
                    markup=False,
                )

    def shutdown(self) -> None:
        for actor in [*self.workers, self.aggregator]:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        if self.owns_group and self.group is not None:
            remove_placement_group(self.group)
        if self.started_ray:
            ray.shutdown()


def worker_bundle(config: FirmConfig) -> dict[str, float]:
    """The resources of one ClientWorker (one placement-group bundle)."""
    bundle = {"CPU": float(config.runtime.num_cpus_per_worker)}
    if config.runtime.num_gpus_per_worker > 0:
        bundle["GPU"] = float(config.runtime.num_gpus_per_worker)
    return bundle


def start_cluster(
    config: FirmConfig, run_dir: Path, console: Console, worker_body: type, started_ray: bool
) -> Cluster:
    """The placement group, the aggregator and W workers with the model loaded, on the Ray
    the caller connected to (``started_ray``: and started, so shut it down with the actors);
    on any error (or a signal) everything started here is released again."""
    runtime = config.runtime
    cluster = Cluster(
        workers=[],
        aggregator=None,
        group=None,
        started_ray=started_ray,
        worker_cls=ray.remote(worker_body),
        config_dict=config.model_dump(mode="json"),
        run_dir=run_dir,
        faults=FaultLog(
            runtime.max_worker_restarts, runtime.max_aggregator_restarts, runtime.max_node_losses
        ),
        console=console,
    )
    try:
        bundle = worker_bundle(config)
        group = ray.util.get_current_placement_group()
        if group is not None:  # inside a Tune trial: our workers use the trial's last W bundles
            cluster.owns_group = False
            cluster.first_bundle = check_trial_group(group, bundle, runtime.num_workers)
            cluster.group = group
        else:  # reserve our own bundles
            local = started_ray and not (runtime.address or os.environ.get("RAY_ADDRESS"))
            cluster.group = place_workers(config, bundle, console, local)
        cluster.aggregator = cluster.start_aggregator()
        cluster.workers = [cluster.start_worker(i) for i in range(runtime.num_workers)]
        cluster.bundle_nodes = cluster.actor_nodes = cluster.placed_nodes()
        facts = wait_for_workers(config, cluster, console)
    except BaseException:
        cluster.shutdown()
        raise
    stats = facts[0]["partition"]
    atomic_write_text(
        run_dir / "partition.json", json.dumps(stats, indent=2), what="partition.json"
    )
    console.print(
        f"{config.federation.num_clients} clients (sizes {stats.get('sizes')}), "
        f"{facts[0]['eval_prompts']} eval prompts, adapter of "
        f"{facts[0]['adapter_parameters']:,} parameters, {runtime.num_workers} worker(s)"
    )
    return cluster


def wait_for_workers(config: FirmConfig, cluster: Cluster, console: Console) -> list[dict]:
    """Every worker's ready() (the model loaded; on a cluster, downloaded first), at most
    runtime.worker_start_timeout_s, with a progress line; a worker killed while loading is
    replaced (a fault), one whose __init__ raised fails the run."""
    limit = config.runtime.worker_start_timeout_s
    count = len(cluster.workers)
    what = f"{count} worker(s) to load {config.model.name_or_path}"
    refs = {w.ready.remote(): i for i, w in enumerate(cluster.workers)}
    facts: dict[int, dict] = {}
    start = time.monotonic()
    shown = start
    with console.status(f"waiting for {what}") as status:
        while refs:
            now = time.monotonic()
            if now - start >= limit:
                raise RunError(
                    f"{len(refs)} of {what} not ready within runtime.worker_start_timeout_s = "
                    f"{limit:g} s; raise it for a large model or a slow download, or see the "
                    "workers' logs (Ray's session_latest/logs) for what they are doing"
                )
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=min(1.0, limit))
            for ref in done:
                index = refs.pop(ref)
                try:
                    facts[index] = ray.get(ref)
                except ActorFault as err:
                    if err.actor_init_failed:
                        raise
                    event = f"worker {index} died loading the model: {describe_actor_error(err)}"
                    if isinstance(err, ray.exceptions.ActorUnavailableError):
                        cluster.replace_unreachable(index, event)
                    else:
                        cluster.restart_worker(index, event, node=dead_node(err))
                    refs[cluster.starting.pop(index)] = index
            cluster.unplaced()  # fails after runtime.placement_timeout_s
            waited = time.monotonic() - start
            status.update(f"waiting for {what}: {len(facts)}/{count} ready, {waited:.0f} s")
            if refs and waited - (shown - start) >= PROGRESS_EVERY_S:
                shown = time.monotonic()
                console.print(
                    f"waiting for {what}: {len(facts)}/{count} ready after {waited:.0f} s "
                    f"(runtime.worker_start_timeout_s = {limit:g})",
                    markup=False,
                )
    return [facts[i] for i in range(count)]


def check_trial_group(group: Any, bundle: dict[str, float], num_workers: int) -> int:
    """Index of the first worker bundle in the current (Tune trial's) placement group.

    Fails at once, naming both layouts, when the group cannot hold our W workers: an actor
    asking for more than its bundle would wait forever instead.
    """
    specs = group.bundle_specs
    ours = specs[len(specs) - num_workers :] if len(specs) >= num_workers else []
    fits = len(ours) == num_workers and all(
        spec.get(k, 0.0) + 1e-9 >= v for spec in ours for k, v in bundle.items()
    )
    if not fits:
        raise RunError(
            f"this run needs {num_workers} bundle(s) of {bundle} for its workers, but the "
            f"placement group it runs in has {specs}; build the trial's resources with "
            "firm_ray.runtime.sweep.trial_resources(config)"
        )
    return len(specs) - num_workers


__all__ = [
    "Cluster",
    "check_trial_group",
    "start_cluster",
    "wait_for_workers",
    "worker_bundle",
]
