"""Adapter state in and out: the flat, ordered, named set of LoRA tensors that crosses the wire,
its exact serialized bytes (safetensors), and the PEFT directory users load afterwards.

Names are peft's (adapter name stripped), so a state taken from one process loads into any
other process holding the same base model and LoRA config, e.g. another Ray worker.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def adapter_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a state: what a client uploads (len() is the exact payload size).

    safetensors sorts tensors by name; the original order rides along in the header metadata.
    """
    order = json.dumps(list(state))
    return save_bytes({k: v.contiguous() for k, v in state.items()}, metadata={"order": order})


def adapter_from_bytes(payload: bytes) -> AdapterState:
    """Inverse of :func:`adapter_to_bytes`, in the order the state was written."""
    tensors = load_bytes(payload)
    header_len = struct.unpack("<Q", payload[:8])[0]
    metadata = json.loads(payload[8 : 8 + header_len]).get("__metadata__") or {}
    order = json.loads(metadata["order"]) if "order" in metadata else sorted(tensors)
    return {name: tensors[name] for name in order}


def save_adapter(model: Any, directory: str | Path) -> Path:
    """Write a PEFT directory (adapter_config.json + weights) loadable with
    ``peft.PeftModel.from_pretrained(base, directory)``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    return directory
