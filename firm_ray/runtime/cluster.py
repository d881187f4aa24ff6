"""The actors of one run: start-up (placement group, aggregator, workers, the model loaded
within ``runtime.worker_start_timeout_s``), replacement after a fault, and tear-down.

The aggregator is pinned to the driver's node (it writes the checkpoints into the run
directory) and takes no CPU; worker i runs in placement-group bundle first_bundle + i, its own
or, inside a Ray Tune trial, the trial's, so a replaced worker gets the same resources.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)
from rich.console import Console

from firm_ray.config import FirmConfig
from firm_ray.runtime.aggregator import Aggregator
from firm_ray.runtime.errors import RunError
from firm_ray.runtime.faults import ActorFault, AggregatorDied, FaultLog, describe_actor_error

PLACEMENT_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 30.0  # a printed line while the workers load the model


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

    def restart_worker(self, index: int, event: str = "", bounded: bool = True) -> None:
        """Replace a dead or stuck worker by a fresh one in the same bundle; counted in the
        round's faults (``bounded``: against runtime.max_worker_restarts)."""
        if event:
            self.faults.worker_fault(event, bounded)
        ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self.start_worker(index)
        self.starting[index] = self.workers[index].ready.remote()

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
                self.restart_worker(0, event)

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
        faults=FaultLog(runtime.max_worker_restarts, runtime.max_aggregator_restarts),
    )
    try:
        bundle = worker_bundle(config)
        group = ray.util.get_current_placement_group()
        if group is not None:  # inside a Tune trial: our workers use the trial's last W bundles
            cluster.owns_group = False
            cluster.first_bundle = check_trial_group(group, bundle, runtime.num_workers)
            cluster.group = group
        else:  # reserve our own bundles
            cluster.group = placement_group([bundle] * runtime.num_workers, strategy="PACK")
            ready, _ = ray.wait([cluster.group.ready()], timeout=PLACEMENT_TIMEOUT_S)
            if not ready:
                raise RunError(
                    f"could not place {runtime.num_workers} worker(s) of {bundle} within "
                    f"{PLACEMENT_TIMEOUT_S:.0f} s; cluster resources: "
                    f"{ray.cluster_resources()}. Lower runtime.num_workers / "
                    "num_cpus_per_worker / num_gpus_per_worker."
                )
        cluster.aggregator = cluster.start_aggregator()
        cluster.workers = [cluster.start_worker(i) for i in range(runtime.num_workers)]
        facts = wait_for_workers(config, cluster, console)
    except BaseException:
        cluster.shutdown()
        raise
    stats = facts[0]["partition"]
    (run_dir / "partition.json").write_text(json.dumps(stats, indent=2))
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
                    cluster.restart_worker(
                        index, f"worker {index} died loading the model: {describe_actor_error(err)}"
                    )
                    refs[cluster.starting.pop(index)] = index
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


__all__ = ["Cluster", "check_trial_group", "start_cluster", "wait_for_workers", "worker_bundle"]
