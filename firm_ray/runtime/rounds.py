"""One federated round on the run's actors: sample clients, give out their state, dispatch to
free workers (runtime/faults.py re-runs a dead or stuck worker's clients), aggregate (retried
once when too few updates were usable), evaluate when due; the row comes from round_row.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from rich.console import Console

from firm_ray.config import FirmConfig
from firm_ray.federation import RoundFailed
from firm_ray.federation.strategies import round_step_metrics
from firm_ray.runtime.cluster import Cluster
from firm_ray.runtime.errors import RunError
from firm_ray.runtime.faults import AggregatorDied, dispatch
from firm_ray.runtime.round_row import round_row
from firm_ray.runtime.secagg_driver import secure_aggregate

ROUND_RETRIES = 1


@dataclass(frozen=True)
class Broadcast:
    """The global adapter as the workers receive it: its object ref (serialized once by the
    aggregator, read in place by every task) and its exact size in bytes."""

    ref: Any
    nbytes: int

    @classmethod
    def of(cls, ref: Any, cluster: Cluster) -> Broadcast:
        """``ref``: the aggregator's ``global_payload()`` (AggregatorDied if it died)."""
        return cls(ref, int(cluster.from_aggregator(ref).nbytes))


def one_round(
    config: FirmConfig,
    round_index: int,
    cluster: Cluster,
    payload: Broadcast,
    console: Console,
    on_failed: Callable[[dict[str, Any]], None] | None = None,
    recover: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Broadcast]:
    """One round from the global adapter ``payload``; (its metrics row, the new adapter).

    ``on_failed`` sees the step metrics of an attempt that could not aggregate (too few usable
    updates) before it is retried or fails the run; it may raise instead. ``recover`` brings a
    dead aggregator back to the state the round started from; the aggregator's call is then
    repeated (the clients' updates are kept: they are seeded, in the object store, and the
    restored client state is the one they were trained from). Without it AggregatorDied
    propagates.
    """

    def on_aggregator(call: Callable[[], Any], doing: str) -> Any:
        while True:
            try:
                return call()
            except AggregatorDied as err:
                if recover is None:
                    raise
                recover(f"{doing} in round {round_index + 1}: {err}")

    def aggregate() -> tuple[dict[str, Any], Any]:
        server_ref, new_payload = cluster.aggregator.aggregate.options(num_returns=2).remote(
            round_index, [results[c][0] for c in done], [[results[c][1]] for c in done], failures
        )
        return cluster.from_aggregator(server_ref), new_payload

    fed = config.federation
    timeout = fed.client_timeout_s or fed.round_timeout_s
    clients = on_aggregator(  # the algorithm's selection (default: seeded sample_clients)
        lambda: cluster.from_aggregator(cluster.aggregator.configure_round.remote(round_index)),
        "selecting the round's clients",
    )
    for attempt in range(ROUND_RETRIES + 1):
        round_start = time.perf_counter()
        states = on_aggregator(
            lambda: cluster.from_aggregator(cluster.aggregator.states_for.remote(clients)),
            "giving out client state",
        )
        instructions = on_aggregator(  # DP: this round's clip norm (adaptive: it moves)
            lambda: cluster.from_aggregator(cluster.aggregator.instructions.remote()),
            "giving out the round's instructions",
        )
        results, failures = dispatch(
            fed, config.runtime, round_index, clients, payload.ref, states, cluster, instructions
        )
        steps = round_step_metrics([header for header, _ in results.values()], config)
        done = sorted(results)
        try:
            if config.privacy.secure_aggregation:
                # no repeat inside a secure round (fresh keys are needed): a dead aggregator
                # is restored and the round redone
                try:
                    server_ref, new_payload = secure_aggregate(
                        cluster, round_index, results, failures, timeout
                    )
                    server = cluster.from_aggregator(server_ref)
                    break
                except AggregatorDied as err:
                    if recover is None:
                        raise
                    if attempt == ROUND_RETRIES:
                        raise RunError(
                            f"round {round_index} failed: the aggregator died during secure "
                            f"aggregation: {err}"
                        ) from None
                    recover(f"secure aggregation in round {round_index + 1}: {err}")
                    console.print(f"[yellow]round {round_index}: redone (aggregator died)[/]")
                    continue
            server, new_payload = on_aggregator(aggregate, "aggregating")
            break
        except ray.exceptions.RayTaskError as err:
            if not isinstance(err.cause, RoundFailed):
                raise
            if on_failed is not None:
                on_failed(steps)
            if attempt == ROUND_RETRIES:
                raise RunError(f"round {round_index} failed: {err.cause}") from None
            console.print(f"[yellow]round {round_index}: {err.cause}; retrying[/]")
    evaluation = None
    if (round_index + 1) % fed.eval_every == 0 or round_index == fed.rounds - 1:
        evaluation = cluster.on_worker0("evaluate", new_payload)
    row = round_row(
        config,
        round_index,
        clients=clients,
        delivered=[c for c in clients if c in results],
        broadcast_bytes=payload.nbytes,
        failures=failures,
        steps=steps,
        server=server,
        evaluation=evaluation,
        round_wall=time.perf_counter() - round_start,
        faults=cluster.faults.take_round(),
    )
    return row, Broadcast(new_payload, server["bytes_down_next"])
