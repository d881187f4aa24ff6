"""What crosses the network: adapters as safetensors bytes, so every payload has an exact size.

A client update travels as (ClientUpdate without tensors, [payloads]), each payload the
safetensors bytes of one adapter held in a 1-D uint8 numpy array (``bytes(payload)`` is exactly
what ``safetensors.torch.save`` writes, and ``safetensors.torch.load`` reads it): Ray's object
store hands numpy arrays over without copying (``bytes`` objects are copied into and out of
it), so an update is written once by the worker and read in place by the aggregator. The server
decodes it one update at a time while it aggregates, as read-only views of the store's buffer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from firm_ray.models.adapter import Payload, adapter_from_bytes, adapter_to_buffer
from firm_ray.types import AdapterState, ClientUpdate

PayloadKind = Literal["adapter", "objective_deltas"]


@dataclasses.dataclass
class UpdateHeader(ClientUpdate):
    """A ClientUpdate without tensors that says how to decode its payloads: ``payload`` names
    the ClientUpdate field they fill ('adapter': one adapter; 'objective_deltas': one delta
    per objective, fmgda). The loop and fault handling read it as any ClientUpdate."""

    payload: PayloadKind = "adapter"


WireUpdate = tuple[ClientUpdate, list[Payload]]


def encode_update(update: ClientUpdate) -> WireUpdate:
    """Split an update into its tensor-free header and its serialized adapters."""
    fields = {f.name: getattr(update, f.name) for f in dataclasses.fields(ClientUpdate)}
    fields.update(adapter=None, objective_deltas=None)
    if update.adapter is not None:
        payloads = [adapter_to_buffer(update.adapter)]
        kind: PayloadKind = "adapter"
    else:
        payloads = [adapter_to_buffer(d) for d in update.objective_deltas or []]
        kind = "objective_deltas" if update.objective_deltas is not None else "adapter"
    return UpdateHeader(**fields, payload=kind), payloads


def decode_update(wire: WireUpdate, *, copy: bool = True) -> ClientUpdate:
    """The update with its tensors back, as its header's ``payload`` says (a plain
    ClientUpdate header: 'adapter'); ``copy=False`` decodes them as views of the payload
    buffers (no copy; read them only, see ``adapter_from_bytes``)."""
    header, payloads = wire
    states: list[AdapterState] = [adapter_from_bytes(p, copy=copy) for p in payloads]
    kind = getattr(header, "payload", "adapter")
    fields = {f.name: getattr(header, f.name) for f in dataclasses.fields(ClientUpdate)}
    if kind == "objective_deltas":
        fields.update(adapter=None, objective_deltas=states or None)
    else:
        fields.update(adapter=states[0] if states else None, objective_deltas=None)
    return ClientUpdate(**fields)


def payload_bytes(wire: WireUpdate) -> int:
    """Exact upload size of an update: the sum of its serialized adapters."""
    return sum(memoryview(p).nbytes for p in wire[1])
