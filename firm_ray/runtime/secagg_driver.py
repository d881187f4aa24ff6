"""The driver's part of a secure round: it relays the messages of Bonawitz et al. 2017 (Fig. 4)
between the workers (each client's state lives in the worker that trained it,
runtime/secagg_client.py) and the aggregator (runtime/secagg_server.py).

    train -> keys -> aggregator.secagg_roster -> worker.secagg_share (per client)
    -> aggregator.secagg_route -> worker.secagg_mask (the packed masked vector goes to the
    aggregator through the object store) -> aggregator.secagg_add -> worker.secagg_unmask
    -> aggregator.aggregate_secure (unmask, decode, DP mean, server step)

The driver only ever holds public keys, ciphertexts, shares of the round's survivors' self
masks or of the dropped clients' mask keys, and references to masked vectors. A client whose
worker dies (or raises, or runs past ``federation.client_timeout_s``) after the key exchange
counts as dropped: it cannot re-run inside the round (it would need fresh keys); the worker is
replaced for the next round. Fewer than t clients left: the aggregator raises RoundFailed and
the round loop redoes the round (runtime/rounds.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray

from firm_ray.runtime.faults import ActorFault, describe_actor_error
from firm_ray.types import ClientUpdate

if TYPE_CHECKING:
    from firm_ray.runtime.cluster import Cluster

KEY_BYTES = 64  # two raw X25519 public keys
ID_BYTES = 4  # a client id on the wire (uint32)


class _Relay:
    """Calls on the clients' workers; a client whose call fails is dropped, with the reason."""

    def __init__(self, cluster: Cluster, round_index: int, timeout_s: float) -> None:
        self.cluster, self.round, self.timeout_s = cluster, round_index, timeout_s
        self.dropped: dict[int, str] = {}
        self.dead: set[int] = set()  # workers lost during this round's protocol

    def call(
        self,
        worker_of: dict[int, int],
        clients: list[int],
        method: str,
        args: Callable[[int], tuple],
        returns: int = 1,
    ) -> dict[int, Any]:
        """{client: refs} of ``method(round, client, *args(client))`` on each client's worker."""
        refs = {}
        for c in clients:
            worker = worker_of[c]
            if worker in self.dead:
                self.dropped[c] = f"secagg: worker {worker} was lost after the key exchange"
                continue
            actor_method = getattr(self.cluster.workers[worker], method)
            if returns > 1:
                actor_method = actor_method.options(num_returns=returns)
            refs[c] = actor_method.remote(self.round, c, *args(c))
        return refs

    def get(self, worker_of: dict[int, int], refs: dict[int, Any]) -> dict[int, Any]:
        """The values, in client order; failures drop the client (and replace a dead worker)."""
        out = {}
        deadline = time.monotonic() + self.timeout_s
        for c, ref in refs.items():
            worker = worker_of[c]
            if worker in self.dead:
                self.dropped[c] = f"secagg: worker {worker} was lost after the key exchange"
                continue
            try:
                out[c] = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            except ActorFault as err:
                self._lost(
                    worker,
                    f"worker {worker} died in secure aggregation: {describe_actor_error(err)}",
                )
                self.dropped[c] = f"secagg: worker {worker} died after the key exchange"
            except ray.exceptions.GetTimeoutError:
                self._lost(
                    worker,
                    f"worker {worker} stuck in secure aggregation (over {self.timeout_s:g} s)",
                )
                self.dropped[c] = f"secagg: worker {worker} ran out of time"
            except ray.exceptions.RayTaskError as err:
                self.dropped[c] = f"{type(err.cause).__name__}: {err.cause}"[:300]
        return out

    def _lost(self, worker: int, event: str) -> None:
        self.dead.add(worker)
        self.cluster.restart_worker(worker, f"{event}; its clients count as dropped")


def secure_aggregate(
    cluster: Cluster,
    round_index: int,
    results: dict[int, tuple[ClientUpdate, Any]],
    failures: list[dict[str, Any]],
    timeout_s: float,
) -> tuple[dict[str, Any], Any]:
    """Run the secure round over the clients that trained (``results`` from dispatch: header
    and the ref of their [public keys]); (the server metrics, the new adapter's ref)."""
    agg = cluster.aggregator
    done = sorted(results)
    headers = [results[c][0] for c in done]
    worker_of = {c: int(results[c][0].metrics.get("worker", 0)) for c in done}
    relay = _Relay(cluster, round_index, timeout_s)
    keys: dict[int, Any] = {}
    for c in done:
        try:
            sent = ray.get(results[c][1])
        except ray.exceptions.RayError as err:
            relay.dropped[c] = f"secagg: keys lost ({type(err).__name__})"
            continue
        if sent:
            keys[c] = sent[0]
    roster = cluster.from_aggregator(agg.secagg_roster.remote(round_index, headers, keys))
    members = sorted(roster)
    bytes_of = {c: {"keys": KEY_BYTES, "shares": 0, "masked": 0, "unmask": 0} for c in members}
    shares = relay.get(
        worker_of, relay.call(worker_of, members, "secagg_share", lambda c: (roster,))
    )
    for c, box in shares.items():
        bytes_of[c]["shares"] = sum(len(ct) + ID_BYTES for ct in box.values())
    routed = cluster.from_aggregator(agg.secagg_route.remote(shares))
    masked = relay.call(worker_of, sorted(routed), "secagg_mask", lambda c: (routed[c],), returns=2)
    info = relay.get(worker_of, {c: refs[1] for c, refs in masked.items()})
    survivors, dropped, sizes, left_out = cluster.from_aggregator(
        agg.secagg_add.remote({c: [masked[c][0]] for c in sorted(info)})
    )
    relay.dropped.update(left_out)
    for c, size in sizes.items():
        bytes_of[c]["masked"] = size
    answers = relay.get(
        worker_of,
        relay.call(worker_of, survivors, "secagg_unmask", lambda c: (survivors, dropped)),
    )
    for c, answer in answers.items():
        bytes_of[c]["unmask"] = sum(len(s) + ID_BYTES for s in answer.values())
    for c in survivors:  # in the sum whether or not it answered (>= t answers suffice)
        relay.dropped.pop(c, None)
    client_info = {c: {"bytes": bytes_of[c], **info.get(c, {})} for c in members}
    lost = [{"client": c, "reason": r} for c, r in sorted(relay.dropped.items())]
    return agg.aggregate_secure.options(num_returns=2).remote(
        round_index, headers, failures + lost, answers, client_info
    )
