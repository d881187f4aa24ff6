"""What crosses the network: adapters as safetensors bytes, so every payload has an exact size.

A client update travels as (ClientUpdate without tensors, [payload bytes]); the server decodes it
one update at a time while it aggregates.
"""

from __future__ import annotations

import dataclasses

from firm_ray.models.adapter import adapter_from_bytes, adapter_to_bytes
from firm_ray.types import AdapterState, ClientUpdate

WireUpdate = tuple[ClientUpdate, list[bytes]]


def encode_update(update: ClientUpdate) -> WireUpdate:
    """Split an update into its tensor-free header and its serialized adapters."""
    if update.adapter is not None:
        payloads = [adapter_to_bytes(update.adapter)]
    else:
        payloads = [adapter_to_bytes(d) for d in update.objective_deltas or []]
    header = dataclasses.replace(update, adapter=None, objective_deltas=None)
    return header, payloads


def decode_update(wire: WireUpdate, fmgda: bool) -> ClientUpdate:
    header, payloads = wire
    states: list[AdapterState] = [adapter_from_bytes(p) for p in payloads]
    if fmgda:
        return dataclasses.replace(header, objective_deltas=states or None)
    return dataclasses.replace(header, adapter=states[0] if states else None)


def payload_bytes(wire: WireUpdate) -> int:
    """Exact upload size of an update: the sum of its serialized adapters."""
    return sum(len(p) for p in wire[1])
