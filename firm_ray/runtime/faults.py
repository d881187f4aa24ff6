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
ActorFault = ray.exceptions.RayActorError  # ActorDiedError, ActorUnavailableError


class AggregatorDied(Exception):
    """The aggregator actor died during a call; the round loop recreates it."""


def describe_actor_error(err: BaseException) -> str:
    """One short line for a dead actor (Ray's message is a multi-line report with advice):
    the error type, Ray's exit type and the first sentence of its exit detail."""
    text = getattr(err, "error_msg", None) or str(err)
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
    """Worker and aggregator restarts and re-run clients: per round (the metrics row) and per
    run (the bounds)."""

    max_worker_restarts: int
    max_aggregator_restarts: int
    worker_restarts_total: int = 0
    aggregator_restarts_total: int = 0
    worker_restarts: int = 0
    aggregator_restarts: int = 0
    reruns: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def take_round(self) -> dict[str, Any]:
        """The faults since the last call (the round's row), reset for the next round."""
        row = {
            "worker_restarts": self.worker_restarts,
            "aggregator_restarts": self.aggregator_restarts,
            "reruns": sorted(self.reruns),
            "events": self.events,
        }
        self.worker_restarts = self.aggregator_restarts = 0
        self.reruns, self.events = [], []
        return row

    def carry(self, row: dict[str, Any]) -> None:
        """Put the faults of a row that is not logged (a replayed round) back for the next."""
        self.worker_restarts += row["worker_restarts"]
        self.aggregator_restarts += row["aggregator_restarts"]
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
) -> tuple[dict[int, tuple[ClientUpdate, Any]], list[dict[str, Any]]]:
    """Run the clients on whichever worker is free, surviving worker faults.

    Returns ({client: (header, payloads ref)}, failures). Each worker holds up to
    ``TASKS_IN_FLIGHT`` tasks (the next one waits in the actor's queue, so there is no gap
    between tasks), and the driver only fetches the small header of a finished task: the
    adapter payload goes from the worker to the aggregator without passing through here.
    A client whose own code raised is left out; clients of a dead or stuck worker re-run.
    """
    client_timeout = fed.client_timeout_s or fed.round_timeout_s
    queue = deque(clients)
    lanes: list[deque[_Task]] = [deque() for _ in cluster.workers]
    results: dict[int, tuple[ClientUpdate, Any]] = {}
    failures: list[dict[str, Any]] = []
    deadline = time.monotonic() + fed.round_timeout_s
    for worker, ready in cluster.starting.items():  # a fresh worker loads the model first
        lanes[worker].append(_Task(None, ready))

    def replace(worker: int, event: str) -> None:
        lost = sorted(t.client for t in lanes[worker] if t.client is not None)
        lanes[worker].clear()
        cluster.restart_worker(worker, f"{event}; re-running client(s) {lost}")
        cluster.faults.reruns.extend(lost)
        queue.extendleft(reversed(lost))
        lanes[worker].append(_Task(None, cluster.starting[worker]))

    while queue or any(t.client is not None for lane in lanes for t in lane):
        while queue:
            worker = min(range(len(lanes)), key=lambda w: (len(lanes[w]), w))
            if len(lanes[worker]) >= TASKS_IN_FLIGHT:
                break
            client = queue.popleft()
            header, payloads = (
                cluster.workers[worker]
                .train.options(num_returns=2)
                .remote(client, round_index, payload, states.get(client) or None)
            )
            lanes[worker].append(_Task(client, header, payloads))
        now = time.monotonic()
        limits = [deadline]
        for lane in lanes:
            if lane:
                head = lane[0]
                head.started = head.started or now
                limit = runtime.worker_start_timeout_s if head.client is None else client_timeout
                limits.append(head.started + limit)
        refs = {t.ref: w for w, lane in enumerate(lanes) for t in lane}
        done, _ = ray.wait(list(refs), num_returns=1, timeout=max(0.0, min(limits) - now))
        now = time.monotonic()
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
                if head is None or head.started is None:
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
            replace(worker, f"worker {worker} died {doing}: {describe_actor_error(err)}")
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
    return results, failures


__all__ = [
    "TASKS_IN_FLIGHT",
    "ActorFault",
    "AggregatorDied",
    "FaultLog",
    "describe_actor_error",
    "dispatch",
]
