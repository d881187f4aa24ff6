"""Adapter state in and out: the flat, ordered, named set of LoRA tensors that crosses the wire,
its exact serialized bytes (safetensors), and the PEFT directory users load afterwards.

Names are peft's (adapter name stripped), so a state taken from one process loads into any
other process holding the same base model and LoRA config, e.g. another Ray worker.
"""

from __future__ import annotations

import json
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

AdapterState = dict[str, torch.Tensor]


def get_adapter_state(model: Any) -> AdapterState:
    """The adapter's tensors, detached CPU copies in a fixed (module) order."""
    from peft import get_peft_model_state_dict

    return {
        name: tensor.detach().to("cpu", copy=True)
        for name, tensor in get_peft_model_state_dict(model).items()
    }


def set_adapter_state(model: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into the model's adapter; names and shapes must match exactly."""
    from peft import set_peft_model_state_dict

    current = get_adapter_state(model)
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"adapter state does not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tensor.shape != current[name].shape:
            raise ValueError(
                f"adapter tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(current[name].shape)}"
            )
    with torch.no_grad():
        set_peft_model_state_dict(model, dict(state))


# safetensors dtype names, in the order safetensors lays tensors out (by dtype, descending
# by its internal rank, then by name); other dtypes go through safetensors itself.
_DTYPES: dict[torch.dtype, str] = {
    torch.int64: "I64",
    torch.float64: "F64",
    torch.float32: "F32",
    torch.int32: "I32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_RANK = {name: rank for rank, name in enumerate(_DTYPES.values())}
_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPES.items()}

Payload = bytes | bytearray | memoryview | np.ndarray
"""An adapter's safetensors bytes: ``bytes`` or any 1-D uint8 buffer holding the same bytes
(a numpy array crosses Ray's object store without copies, a ``bytes`` object does not)."""


def _plain_ascii(text: str) -> bool:
    """Printable ASCII only: then Python's and serde_json's JSON escaping agree byte for byte."""
    return text.isascii() and text.isprintable()


def adapter_to_buffer(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The safetensors bytes of :func:`adapter_to_bytes` as a writable 1-D uint8 numpy array.

    Built in place: the header is written the way safetensors writes it and every tensor is
    copied once, straight into the array (``safetensors.torch.save`` copies each tensor twice
    and returns ``bytes``, which Ray copies again on both sides of the object store).
    ``bytes(adapter_to_buffer(s)) == adapter_to_bytes(s)`` exactly (tests/unit/test_wire.py);
    states safetensors would lay out differently (other dtypes, names that need JSON escapes)
    go through safetensors itself.
    """
    order = json.dumps(list(state))
    tensors = {k: v.detach() for k, v in state.items()}
    if not all(
        v.dtype in _DTYPES and v.device.type == "cpu" and _plain_ascii(k)
        for k, v in tensors.items()
    ) or not _plain_ascii(order):
        return np.frombuffer(adapter_to_bytes_safetensors(state), dtype=np.uint8).copy()
    names = sorted(tensors, key=lambda k: (_RANK[_DTYPES[tensors[k].dtype]], k))
    entries = [f'"__metadata__":{{"order":{json.dumps(order)}}}']
    offset = 0
    spans = []
    for name in names:
        t = tensors[name]
        size = t.numel() * t.element_size()
        shape = ",".join(str(d) for d in t.shape)
        entries.append(
            f'"{name}":{{"dtype":"{_DTYPES[t.dtype]}","shape":[{shape}],'
            f'"data_offsets":[{offset},{offset + size}]}}'
        )
        spans.append((name, offset, size))
        offset += size
    header = ("{" + ",".join(entries) + "}").encode()
    header += b" " * (-len(header) % 8)
    start = 8 + len(header)
    buffer = np.empty(start + offset, dtype=np.uint8)
    buffer[:8] = np.frombuffer(struct.pack("<Q", len(header)), dtype=np.uint8)
    buffer[8:start] = np.frombuffer(header, dtype=np.uint8)
    flat = torch.from_numpy(buffer)
    with torch.no_grad():
        for name, begin, size in spans:
            if size:
                t = tensors[name]
                view = flat[start + begin : start + begin + size].view(t.dtype)
                view.copy_(t.reshape(-1))
    return buffer


def adapter_to_bytes_safetensors(state: Mapping[str, torch.Tensor]) -> bytes:
    """``safetensors.torch.save`` of a state with its key order in the metadata (the reference
    encoding :func:`adapter_to_buffer` reproduces)."""
    order = json.dumps(list(state))
    return save_bytes({k: v.contiguous() for k, v in state.items()}, metadata={"order": order})


def adapter_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a state: what a client uploads (len() is the exact payload size).

    safetensors sorts tensors by name; the original order rides along in the header metadata.
    """
    return adapter_to_buffer(state).tobytes()


def adapter_from_bytes(payload: Payload, *, copy: bool = True) -> AdapterState:
    """Inverse of :func:`adapter_to_bytes` / :func:`adapter_to_buffer`, in the order the state
    was written.

    ``copy=False`` returns views of ``payload`` itself (no copy; what the runtime uses for
    buffers it got from Ray's object store). Those tensors share memory with a buffer that may
    be read-only (``bytes``, an object-store array): callers must never modify them in place;
    everything in firm_ray that receives them only reads them (aggregation copies into its own
    accumulators first). ``copy=True`` (the default) returns tensors owning their memory.
    """
    view = memoryview(payload).cast("B")
    header_len = struct.unpack("<Q", view[:8])[0]
    header = json.loads(bytes(view[8 : 8 + header_len]))
    metadata = header.pop("__metadata__", None) or {}
    order = json.loads(metadata["order"]) if "order" in metadata else sorted(header)
    if any(info["dtype"] not in _TORCH_DTYPES for info in header.values()):
        tensors = load_bytes(bytes(view))
        return {name: tensors[name] for name in order}
    start = 8 + header_len
    out: AdapterState = {}
    with warnings.catch_warnings():
        # a read-only buffer: torch warns that it cannot mark the tensor read-only (see above)
        warnings.simplefilter("ignore", UserWarning)
        for name in order:
            info = header[name]
            dtype = _TORCH_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            if end > begin:
                tensor = torch.frombuffer(
                    view, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin
                ).reshape(info["shape"])
            else:
                tensor = torch.empty(info["shape"], dtype=dtype)
            out[name] = tensor.clone() if copy else tensor
    return out


def save_adapter(model: Any, directory: str | Path) -> Path:
    """Write a PEFT directory (adapter_config.json + weights) loadable with
    ``peft.PeftModel.from_pretrained(base, directory)``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    # peft keeps target_modules as a set and writes it in hash order, which differs from process
    # to process: sorted, the same adapter gives the same bytes wherever it is saved
    config_file = directory / "adapter_config.json"
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory
