"""The client side of secure aggregation, played by a ClientWorker (runtime/worker.py).

``train`` under ``privacy.secure_aggregation`` trains, clips (and noises) the update as under
DP, then hands it to `SecureClients.start`: the delta (fmgda: its M deltas concatenated) is
encoded in fixed point and kept IN THIS PROCESS, beside a fresh `SecAggClient` (keys from
os.urandom); the worker returns the tensor-free header and the client's two public keys.
The driver then calls `share`, `mask` and `unmask` on the same worker (runtime/secagg_driver.py
runs the protocol of Bonawitz et al. 2017, Fig. 4). Secrets (private keys, self-mask seed,
the encoded update, received shares) never leave the process; a client's state is dropped
after it answers the unmasking request, and every state of an earlier round when the worker
trains a later one (a client dropped mid-protocol leaves nothing behind past its round).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from firm_ray.core.aggregation import state_delta
from firm_ray.privacy.secagg import ClientKeys, SecAggClient, SecAggParams, encode_counted, pack
from firm_ray.privacy.secagg_vector import flatten_deltas
from firm_ray.runtime.wire import encode_update
from firm_ray.types import AdapterState, ClientUpdate


@dataclass
class _Pending:
    client: SecAggClient
    params: SecAggParams
    clients: int  # k, the public n of the encoding
    encoded: np.ndarray
    clipped: int
    seconds: float = 0.0
    ciphertexts: dict[int, bytes] = field(default_factory=dict)


def round_spec(params: SecAggParams, clients: int) -> dict[str, Any]:
    """What the server tells every client of a round (JSON-able, in the instructions)."""
    return {"clip": params.clip, "threshold": params.threshold, "bits": params.bits, "n": clients}


def spec_params(spec: dict[str, Any]) -> tuple[SecAggParams, int]:
    """(parameters, k) from `round_spec`'s dict."""
    params = SecAggParams(clip=spec["clip"], threshold=int(spec["threshold"]), bits=spec["bits"])
    return params, int(spec["n"])


class SecureClients:
    """The secure-aggregation clients one worker plays, keyed by (round, client)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], _Pending] = {}

    def start(
        self, update: ClientUpdate, reference: AdapterState, spec: dict[str, Any]
    ) -> tuple[ClientUpdate, list[ClientKeys]]:
        """(the tensor-free header, [the client's public keys]) in place of the wire update;
        no keys for an update that cannot take part (invalid, nothing trained, non-finite):
        the server rejects it from its header, as it would a plain one."""
        start = time.perf_counter()
        key = (update.round, update.client_id)
        self._pending = {k: v for k, v in self._pending.items() if k[0] >= update.round}
        self._pending.pop(key, None)  # a retried round starts over with fresh keys
        payloads = [update.adapter] if update.adapter is not None else update.objective_deltas
        header, _ = encode_update(replace(update, adapter=None, objective_deltas=None))
        kind = "adapter" if update.adapter is not None else "objective_deltas"
        header.payload = kind  # type: ignore[attr-defined]
        if not update.valid or not payloads:
            return header, []
        is_adapter = update.adapter is not None
        deltas = [state_delta(p, reference) for p in payloads] if is_adapter else payloads
        params, clients = spec_params(spec)
        try:
            vector = flatten_deltas(deltas, list(reference))
            encoded, clipped = encode_counted(vector, params, clients)
        except ValueError:  # non-finite entries have no encoding: rejected like a plain NaN
            header.valid, header.reason = False, "non-finite values in the update"
            return header, []
        client = SecAggClient(update.client_id)
        elapsed = time.perf_counter() - start
        self._pending[key] = _Pending(client, params, clients, encoded, clipped, elapsed)
        return header, [client.advertise()]

    def _get(self, round_index: int, client_id: int) -> _Pending:
        pending = self._pending.get((round_index, client_id))
        if pending is None:
            raise ValueError(
                f"secagg: this worker holds no state of client {client_id} in round "
                f"{round_index} (restarted, or the client already finished)"
            )
        return pending

    def share(
        self, round_index: int, client_id: int, roster: dict[int, ClientKeys]
    ) -> dict[int, bytes]:
        """Round 1: the encrypted shares of the client's mask key and self-mask seed."""
        pending = self._get(round_index, client_id)
        start = time.perf_counter()
        out = pending.client.share_keys(roster, pending.params)
        pending.seconds += time.perf_counter() - start
        return out

    def mask(
        self, round_index: int, client_id: int, ciphertexts: dict[int, bytes]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Round 2: (the masked vector packed, as a uint8 array: zero-copy through Ray;
        {seconds spent in the protocol so far, coordinates the encoding clipped})."""
        pending = self._get(round_index, client_id)
        start = time.perf_counter()
        y = pending.client.masked_input(pending.encoded, ciphertexts, pending.params)
        packed = np.frombuffer(pack(y, pending.params), dtype=np.uint8)
        pending.encoded = np.empty(0, dtype=np.uint64)  # the update is not needed any more
        pending.seconds += time.perf_counter() - start
        return packed, {"seconds": pending.seconds, "clipped": float(pending.clipped)}

    def unmask(
        self, round_index: int, client_id: int, survivors: list[int], dropped: list[int]
    ) -> dict[int, bytes]:
        """Round 3: the shares the server needs; the client's state is dropped after."""
        pending = self._get(round_index, client_id)
        try:
            return pending.client.unmask(survivors, dropped)
        finally:
            del self._pending[(round_index, client_id)]

    def held(self) -> list[tuple[int, int]]:
        """(round, client) pairs with state in this process (tests)."""
        return sorted(self._pending)
