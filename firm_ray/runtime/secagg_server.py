"""The server side of secure aggregation, in the Aggregator actor (runtime/aggregator.py).

One `SecAggServer` per secure round (Bonawitz et al. 2017, Fig. 4): `secagg_roster` screens
the clients' headers and collects their public keys, `secagg_route` routes the encrypted
shares, `secagg_add` streams the masked vectors into the running sum (one at a time, straight
from the object store, each dropped after it is added) and closes the masked-input phase,
`aggregate_secure` unmasks, decodes the sum (n = k, the public number of clients sampled per
round, as on the clients) and hands it to the algorithm's strategy: DP-FedAvg's mean of the sum
(central noise added here) through `Combiner.set_secure_sums`; fmgda's M deltas are split back
from the one vector each client masked, then its server MGDA runs as usual.

A protocol failure below the threshold (fewer than t = k // 2 + 1 clients left) raises
RoundFailed: the round loop redoes the round once with fresh keys, then fails with one line.
"""

from __future__ import annotations

import time
from typing import Any

import ray
import torch

from firm_ray.config import FirmConfig
from firm_ray.federation import RoundFailed
from firm_ray.privacy.secagg import ClientKeys, SecAggServer, decode_sum, unpack
from firm_ray.privacy.secagg_vector import round_params, split_sum
from firm_ray.runtime.secagg_client import round_spec, spec_params
from firm_ray.types import ClientUpdate

__all__ = ["SecureServerMixin", "secure_round_spec"]


def secure_round_spec(config: FirmConfig, told: dict[str, Any]) -> dict[str, Any]:
    """The round's public secure-aggregation parameters from its DP instructions."""
    k = config.federation.clients_sampled_per_round
    params = round_params(
        told["clip"], told.get("local_noise_std") or 0.0, k, config.privacy.secagg_bits
    )
    return round_spec(params, k)


def _failed(err: ValueError) -> RoundFailed:
    return RoundFailed(f"secure aggregation: {err}")


class SecureServerMixin:
    """Aggregator methods of a secure round (the Aggregator supplies config, strategy, state)."""

    config: FirmConfig
    strategy: Any
    state: Any
    _secagg: SecAggServer | None = None
    _secagg_info: dict[str, Any] | None = None

    def secagg_roster(
        self, round_index: int, headers: list[ClientUpdate], keys: dict[int, ClientKeys]
    ) -> dict[int, ClientKeys]:
        """Round 0: the roster U1, the clients whose header passes the server's screening
        (``Strategy.check_header``) and who sent keys; fewer than t: RoundFailed."""
        told = self.instructions()  # type: ignore[attr-defined]
        params, k = spec_params(told["secagg"])
        self._secagg = SecAggServer(params, k)
        self._secagg_info = {"round": round_index, "params": params, "k": k, "server_s": 0.0}
        usable = {
            h.client_id: keys[h.client_id]
            for h in headers
            if keys.get(h.client_id) is not None and not self.strategy.check_header(h)
        }
        try:
            return self._secagg.collect_keys(usable)
        except ValueError as err:
            raise _failed(err) from None

    def _server(self) -> SecAggServer:
        if self._secagg is None:
            raise RoundFailed("secure aggregation: no secure round is open (aggregator restarted)")
        return self._secagg

    def secagg_route(self, shares: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Round 1: recipient -> {sender: ciphertext}."""
        try:
            return self._server().route_shares(shares)
        except ValueError as err:
            raise _failed(err) from None

    def secagg_add(
        self, masked: dict[int, list[Any]]
    ) -> tuple[list[int], list[int], dict[int, int], dict[int, str]]:
        """Round 2, streamed in client-id order (``masked[c] = [ref]``): each packed vector is
        fetched, added to the running sum and dropped. Returns (survivors, dropped, bytes per
        masked vector, why each unusable one was left out); fewer than t: RoundFailed."""
        server = self._server()
        start = time.perf_counter()
        sizes: dict[int, int] = {}
        left_out: dict[int, str] = {}
        for client in sorted(masked):
            try:
                packed = ray.get(masked[client][0])
                sizes[client] = int(memoryview(packed).nbytes)
                server.add_masked(client, unpack(packed, server.params))
            except ray.exceptions.RayError as err:
                left_out[client] = f"secagg: masked input lost ({type(err).__name__})"
            except ValueError as err:
                left_out[client] = str(err)[:200]
        try:
            survivors, dropped = server.unmask_request()
        except ValueError as err:
            raise _failed(err) from None
        assert self._secagg_info is not None
        self._secagg_info["server_s"] += time.perf_counter() - start
        return survivors, dropped, sizes, left_out

    def aggregate_secure(
        self,
        round_index: int,
        headers: list[ClientUpdate],
        failures: list[dict[str, Any]],
        responses: dict[int, dict[int, bytes]],
        client_info: dict[int, dict[str, Any]],
    ) -> tuple[dict[str, Any], Any]:
        """Round 3 and the server update: unmask the sum, decode it, average it (DP mean,
        central noise) and apply the algorithm's server step. ``headers``: every client that
        reported (sorted by id); the survivors' payloads are placeholders, those screened
        out are rejected as usual, the others were dropped during the protocol (``failures``
        names them). ``client_info[c]``: bytes per message and seconds on the client."""
        start = time.perf_counter()
        server, info = self._server(), self._secagg_info
        assert info is not None and self.state is not None
        self._secagg = None
        finish_start = time.perf_counter()
        try:
            total = server.finish(responses)
        except ValueError as err:
            raise _failed(err) from None
        vector = decode_sum(total, info["params"], info["k"])
        server_s = info["server_s"] + time.perf_counter() - finish_start
        layout = {name: tensor.shape for name, tensor in self.state.items()}
        sums = [
            {
                n: v.to(torch.float64 if self.state[n].dtype == torch.float64 else torch.float32)
                for n, v in d.items()
            }
            for d in split_sum(vector, layout)
        ]
        survivors = set(server.contributors)
        listed = {f["client"] for f in failures}

        def placeholders(header: ClientUpdate) -> ClientUpdate:
            if header.client_id not in survivors:
                return header  # no payload: rejected by the screening (its header's reason)
            if getattr(header, "payload", "adapter") == "objective_deltas":
                header.objective_deltas = [{} for _ in sums]
            else:
                header.adapter = {}
            return header

        screened = [h for h in headers if h.client_id in survivors or self.strategy.check_header(h)]
        failures = failures + [
            {"client": h.client_id, "reason": "secagg: dropped out of the secure round"}
            for h in headers
            if h.client_id not in survivors
            and h.client_id not in listed
            and not self.strategy.check_header(h)
        ]
        self.strategy.combiner.set_secure_sums(sums)
        previous = self.state
        try:
            result = self.strategy.aggregate_round(
                round_index, previous, (placeholders(h) for h in screened), failures
            )
        finally:
            self.strategy.combiner.secure_sums = None
        trained = {h.client_id for h in headers}
        result.rejected = [  # the row's `failed`: who left during the protocol, and why
            *result.rejected,
            *(f for f in failures if f["client"] in trained and f["client"] not in survivors),
        ]
        for h in screened:  # the headers go back into the metrics tensor-free
            h.adapter, h.objective_deltas = None, None
        per_client = {str(c): client_info.get(c, {}).get("bytes", {}) for c in sorted(survivors)}
        block = {
            "secure_aggregation": True,
            "secagg_bytes_up": per_client,
            "secagg_seconds": {
                "clients": float(
                    sum(client_info.get(c, {}).get("seconds", 0.0) for c in survivors)
                ),
                "server": server_s,
            },
            "secagg_clipped": int(sum(client_info.get(c, {}).get("clipped", 0) for c in survivors)),
            "secagg_threshold": server.params.threshold,
            "secagg_dropped": sorted(
                h.client_id
                for h in headers
                if h.client_id not in survivors and not self.strategy.check_header(h)
            ),
        }
        result.metrics.setdefault("aggregation", {})["secagg"] = block
        bytes_up = {c: int(sum(b.values())) for c, b in per_client.items()}
        return self._close_round(  # type: ignore[attr-defined]
            start, previous, result, headers, {}, bytes_up
        )
