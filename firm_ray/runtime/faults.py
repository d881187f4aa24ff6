"""How the run survives its actors' faults: dead or stuck workers are replaced (runtime/
cluster.py) and their clients re-run here, a dead aggregator is recreated by the round loop
(runtime/loop.py).

A worker fault costs nothing: every client task is seeded by (experiment seed, client, round)
and client state lives with the aggregator, so a client re-run on another (or a replaced)
worker returns the same update. A worker counts as dead when any of its calls raises
RayActorError (ActorDiedError, ActorUnavailableError): it is killed for good and replaced by a
fresh actor in the same placement-group bundle, and every client it held (running or queued
in its actor) goes back to the front of the round's queue. It counts as stuck when one client
task runs longer than ``federation.client_timeout_s`` (timed from when the task reaches the
head of its worker's queue), or a replacement does not load the model within
``runtime.worker_start_timeout_s``: the same, after a kill. Evaluation, theta^0 and the final
adapter's files are retried on the replaced worker 0. Replacements are bounded per run by
``runtime.max_worker_restarts`` (a crash on every try, e.g. out of memory, fails the run with
one line naming the last death); replacements at the round timeout (late clients, left out as
before) are counted but not bounded. A worker that fails to *start* (its ``__init__`` raised)
is not a fault but an error in the run's inputs: it is raised, not retried.

A lost node (its raylet and every process on it gone) kills the workers on it. Their calls
first fail as ActorUnavailableError, until Ray's health check declares the node dead (seconds
to a minute): such a worker is left alone (its clients wait) until its node is declared dead
(or ``UNREACHABLE_WAIT_S`` passed: then it is a plain worker fault), so it is replaced once,
into the bundle Ray re-places on the remaining nodes, and not first into its dead node. The
replacements start once their bundle is placed, which the run waits for up to
``runtime.placement_timeout_s`` (runtime/cluster.py). Finished client updates whose adapter
payload lived only in the lost node's object store are re-run too: a payload made on another
node is pulled to the driver's node (where the aggregator reads it) as soon as it exists, and
at the end of the round the clients whose producing node died meanwhile run again. Node
losses are bounded by ``runtime.max_node_losses``, not by ``max_worker_restarts``.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from firm_ray.runtime.errors import RunError
from firm_ray.types import ClientUpdate

if TYPE_CHECKING:
    from firm_ray.runtime.cluster import Cluster

TASKS_IN_FLIGHT = 2  # per worker: one running, one queued in the actor
PLACEMENT_POLL_S = 1.0  # how often a bundle being re-placed is checked
PROGRESS_EVERY_S = 30.0  # a printed line while replaced workers are placed or load the model
UNREACHABLE_WAIT_S = 90.0  # for Ray to declare the node of an unreachable worker dead
ActorFault = ray.exceptions.RayActorError  # ActorDiedError, ActorUnavailableError


def dead_node(err: BaseException) -> str | None:
    """The node id when ``err`` says the actor died because its node died, else None."""
    text = getattr(err, "error_msg", None) or str(err)
    found = re.search(r"its node has died\. Node Id: ([0-9a-f]+)", text)
    return found.group(1) if found else None


class AggregatorDied(Exception):
    """The aggregator actor died during a call; the round loop recreates it."""


def describe_actor_error(err: BaseException) -> str:
    """One short line for a dead actor (Ray's message is a multi-line report with advice):
    the error type, Ray's exit type and the first sentence of its exit detail."""
    text = getattr(err, "error_msg", None) or str(err)
    node = dead_node(err)
    if node:
        return f"{type(err).__name__} (its node {node[:12]} died)"
    kind = re.search(r"Worker exit type: (\w+)", text)
    detail = re.search(r"Worker exit detail: ([^.]*)", text)
    if kind or detail:
        parts = [m.group(1).strip() for m in (kind, detail) if m]
        return f"{type(err).__name__} ({': '.join(parts)[:160]})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if "dead because" in line), "")
    return f"{type(err).__name__} ({reason[:160]})" if reason else type(err).__name__


@dataclass
class FaultLog:
    """Worker and aggregator restarts, lost nodes, re-placed bundles and re-run clients: per
    round (the metrics row) and per run (the bounds)."""

    max_worker_restarts: int
    max_aggregator_restarts: int
    max_node_losses: int = 3
    worker_restarts_total: int = 0
    aggregator_restarts_total: int = 0
    worker_restarts: int = 0
    aggregator_restarts: int = 0
    node_losses: int = 0
    bundles_replaced: int = 0
    lost_nodes: set[str] = field(default_factory=set)
    reruns: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def take_round(self) -> dict[str, Any]:
        """The faults since the last call (the round's row), reset for the next round."""
        row = {
            "worker_restarts": self.worker_restarts,
            "aggregator_restarts": self.aggregator_restarts,
            "node_losses": self.node_losses,
            "bundles_replaced": self.bundles_replaced,
            "reruns": sorted(self.reruns),
            "events": self.events,
        }
        self.worker_restarts = self.aggregator_restarts = 0
        self.node_losses = self.bundles_replaced = 0
        self.reruns, self.events = [], []
        return row

    def carry(self, row: dict[str, Any]) -> None:
        """Put the faults of a row that is not logged (a replayed round) back for the next."""
        self.worker_restarts += row["worker_restarts"]
        self.aggregator_restarts += row["aggregator_restarts"]
        self.node_losses += row.get("node_losses", 0)
        self.bundles_replaced += row.get("bundles_replaced", 0)
        self.reruns += row["reruns"]
        self.events += row["events"]

    def worker_fault(self, event: str, bounded: bool = True) -> None:
        self.worker_restarts += 1
        self.events.append(event)
        if not bounded:
            return
        self.worker_restarts_total += 1
        if self.worker_restarts_total > self.max_worker_restarts:
            raise RunError(
                f"{self.worker_restarts_total} worker faults, more than "
                f"runtime.max_worker_restarts = {self.max_worker_restarts}; last: {event}. "
                "A crash on every try is usually memory: lower trainer.micro_batch_size or "
                "raise the workers' memory"
            )

    def node_lost(self, node: str) -> None:
        """A node died (counted once however many of its workers report it)."""
        if node in self.lost_nodes:
            return
        self.lost_nodes.add(node)
        self.node_losses += 1
        self.events.append(f"node {node[:12]} lost")
        if len(self.lost_nodes) > self.max_node_losses:
            raise RunError(
                f"{len(self.lost_nodes)} nodes lost, more than runtime.max_node_losses = "
                f"{self.max_node_losses}; last: {node}. Check the cluster's nodes (ray status)"
            )

    def replaced(self, count: int, event: str) -> None:
        """``count`` worker bundles re-placed by Ray after a node loss."""
        self.bundles_replaced += count
        self.events.append(event)

    def aggregator_fault(self, event: str) -> None:
        self.aggregator_restarts += 1
        self.aggregator_restarts_total += 1
        self.events.append(event)
        if self.aggregator_restarts_total > self.max_aggregator_restarts:
            raise RunError(
                f"{self.aggregator_restarts_total} aggregator faults, more than "
                f"runtime.max_aggregator_restarts = {self.max_aggregator_restarts}; last: "
                f"{event}. The aggregator holds one adapter (M for fmgda) and the client "
                "state: check the driver node's memory"
            )


@dataclass
class _Task:
    client: int | None  # None: the ready() call of a replaced worker
    ref: Any
    payloads: Any = None
    started: float | None = None  # when it reached the head of its worker's queue


def dispatch(
    fed: Any,
    runtime: Any,
    round_index: int,
    clients: list[int],
    payload: Any,
    states: dict[int, dict],
    cluster: Cluster,
    instructions: dict[str, Any] | None = None,
) -> tuple[dict[int, tuple[ClientUpdate, Any]], list[dict[str, Any]]]:
    """Run the clients on whichever worker is free, surviving worker and node faults.

    Returns ({client: (header, payloads ref)}, failures). Each worker holds up to
    ``TASKS_IN_FLIGHT`` tasks (the next one waits in the actor's queue, so there is no gap
    between tasks), and the driver only fetches the small header of a finished task: the
    adapter payload goes from the worker to the aggregator's node without passing through
    this process. A client whose own code raised is left out; clients of a dead or stuck
    worker re-run, and so do finished ones whose payload was only on a node that died.
    ``instructions``: what every client is told beside theta^t (the DP clip norm), or None.
    """
    client_timeout = fed.client_timeout_s or fed.round_timeout_s
    queue = deque(clients)
    lanes: list[deque[_Task]] = [deque() for _ in cluster.workers]
    results: dict[int, tuple[ClientUpdate, Any]] = {}
    failures: list[dict[str, Any]] = []
    made_on: dict[int, set[str]] = {}  # client -> the other node(s) its payload was made on
    fetching: dict[Any, int] = {}  # payload ref -> client, being pulled to this node
    here = ray.get_runtime_context().get_node_id()
    unreachable: dict[int, tuple[float, str]] = {}  # worker -> (since, what failed)
    deadline = time.monotonic() + fed.round_timeout_s
    loading = Progress(cluster, runtime.worker_start_timeout_s)
    for worker, ready in cluster.starting.items():  # a fresh worker loads the model first
        lanes[worker].append(_Task(None, ready))

    def replace(worker: int, event: str, node: str | None = None) -> None:
        lost = sorted(t.client for t in lanes[worker] if t.client is not None)
        lanes[worker].clear()
        cluster.restart_worker(worker, f"{event}; re-running client(s) {lost}", node=node)
        cluster.faults.reruns.extend(lost)
        queue.extendleft(reversed(lost))
        lanes[worker].append(_Task(None, cluster.starting[worker]))

    while True:
        if not (queue or fetching or any(t.client is not None for ln in lanes for t in ln)):
            lost = lost_with_nodes(made_on)
            if not lost:
                break
            for client in lost:
                del results[client], made_on[client]
            cluster.faults.reruns.extend(lost)
            cluster.faults.events.append(
                f"client(s) {lost}: finished, but their update was only on a lost node; re-run"
            )
            queue.extend(lost)
        now = time.monotonic()
        for worker, (since, event) in list(unreachable.items()):
            node = cluster.lost_node(worker)
            if node or now - since >= UNREACHABLE_WAIT_S:
                del unreachable[worker]
                replace(worker, event if node else f"{event} for {now - since:.0f} s", node)
        unplaced = cluster.unplaced() | set(unreachable)  # no Ray call unless one was replaced
        placed = [w for w in range(len(lanes)) if w not in unplaced] or list(range(len(lanes)))
        while queue:
            worker = min(placed, key=lambda w: (len(lanes[w]), w))
            if len(lanes[worker]) >= TASKS_IN_FLIGHT:
                break
            client = queue.popleft()
            header, payloads = (
                cluster.workers[worker]
                .train.options(num_returns=2)
                .remote(client, round_index, payload, states.get(client) or None, instructions)
            )
            lanes[worker].append(_Task(client, header, payloads))
        now = time.monotonic()
        limits = [deadline, now + PLACEMENT_POLL_S] if unplaced else [deadline]
        # a worker's clock starts once it is placed (and reachable)
        for worker, lane in enumerate(lanes):
            if lane and worker not in unplaced:
                head = lane[0]
                head.started = head.started or now
                limit = runtime.worker_start_timeout_s if head.client is None else client_timeout
                limits.append(head.started + limit)
        loading.show([w for w, ln in enumerate(lanes) if ln and ln[0].client is None], unplaced)
        refs = {t.ref: w for w, lane in enumerate(lanes) if w not in unreachable for t in lane}
        waited = list(refs) + list(fetching)
        done, _ = ray.wait(waited, num_returns=1, timeout=max(0.0, min(limits) - now))
        now = time.monotonic()
        if done and done[0] in fetching:  # a payload is on this node now
            del fetching[done[0]]
            continue
        if not done:
            if now >= deadline:  # round timeout: everyone still running or queued is late
                for worker, lane in enumerate(lanes):
                    late = [t.client for t in lane if t.client is not None]
                    failures += [{"client": c, "reason": "late (round_timeout_s)"} for c in late]
                    if late:
                        event = f"worker {worker} replaced at the round timeout (late: {late})"
                        cluster.restart_worker(worker, event, bounded=False)
                failures += [{"client": c, "reason": "late (not started)"} for c in queue]
                break
            for worker, lane in enumerate(lanes):
                head = lane[0] if lane else None
                if head is None or head.started is None or worker in unplaced:
                    continue
                if head.client is None and now >= head.started + runtime.worker_start_timeout_s:
                    replace(worker, f"worker {worker} not ready within worker_start_timeout_s")
                elif head.client is not None and now >= head.started + client_timeout:
                    replace(
                        worker,
                        f"worker {worker} stuck: client {head.client} ran over "
                        f"client_timeout_s = {client_timeout:g} s",
                    )
            continue
        worker = refs[done[0]]
        task = next(t for t in lanes[worker] if t.ref == done[0])
        try:
            value = ray.get(done[0])
        except ActorFault as err:
            if err.actor_init_failed:
                raise
            doing = "starting" if task.client is None else f"running client {task.client}"
            event = f"worker {worker} died {doing}: {describe_actor_error(err)}"
            if isinstance(err, ray.exceptions.ActorUnavailableError):
                unreachable[worker] = (now, f"worker {worker} unreachable {doing}")
            else:
                replace(worker, event, dead_node(err))
            continue
        except ray.exceptions.RayTaskError as err:
            failures.append(
                {"client": task.client, "reason": f"{type(err.cause).__name__}: {err.cause}"[:300]}
            )
            value = None
        lanes[worker].remove(task)
        if task.client is None:
            cluster.starting.pop(worker, None)
        if lanes[worker]:
            lanes[worker][0].started = now
        if task.client is not None and value is not None:
            results[task.client] = (value, task.payloads)
            nodes = payload_nodes(task.payloads) - {here}
            if nodes:  # made on another node: pull it here before that node can be lost
                made_on[task.client] = nodes
                fetching[task.payloads] = task.client
    return results, failures


def payload_nodes(ref: Any) -> set[str]:
    """The nodes holding an object (none for a small one kept in this process)."""
    locations = ray.experimental.get_object_locations([ref]).get(ref) or {}
    return set(locations.get("node_ids") or [])


def lost_with_nodes(made_on: dict[int, set[str]]) -> list[int]:
    """Clients whose update was made on a node that is dead now. Their payload may have
    reached this node first, but once its producing node is gone Ray may hold only an error
    in its place, so they are re-run (seeded: the same update)."""
    if not made_on:
        return []
    alive = alive_nodes()
    return sorted(c for c, nodes in made_on.items() if not nodes <= alive)


def alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


class Progress:
    """A printed line every PROGRESS_EVERY_S while replaced workers load the model mid-round
    (the round's spinner alone would say nothing about them)."""

    def __init__(self, cluster: Cluster, limit: float) -> None:
        self.cluster, self.limit = cluster, limit
        self.since: float | None = None
        self.shown = 0.0

    def show(self, loading: list[int], unplaced: set[int]) -> None:
        waiting = [w for w in loading if w not in unplaced]
        now = time.monotonic()
        if not waiting:
            self.since = None
            return
        self.since = self.since or now
        if now - max(self.since, self.shown) >= PROGRESS_EVERY_S and self.cluster.console:
            self.shown = now
            self.cluster.console.print(
                f"waiting for replaced worker(s) {waiting} to load the model: "
                f"{now - self.since:.0f} s (runtime.worker_start_timeout_s = {self.limit:g})",
                markup=False,
            )


__all__ = [
    "TASKS_IN_FLIGHT",
    "ActorFault",
    "AggregatorDied",
    "FaultLog",
    "dead_node",
    "describe_actor_error",
    "dispatch",
]
