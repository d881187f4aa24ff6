"""Records every object a client worker hands back to the driver or the aggregator.

`AuditedWorker` is the real ClientWorker with each remote method wrapped: whatever the method
returns (or raises) is described (structure, every string verbatim, every payload's safetensors
header parsed) and appended to a JSONL file, one per worker process. Shipped to the workers by
value (``ray.cloudpickle.register_pickle_by_value``), so no PYTHONPATH is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from firm_ray.runtime.worker import ClientWorker

AUDITED = (
    "ready", "initial_adapter", "train", "evaluate", "adapter_files",
    "secagg_share", "secagg_mask", "secagg_unmask",
)  # fmt: skip


def _safetensors_header(buffer: bytes) -> dict[str, Any]:
    (size,) = struct.unpack("<Q", buffer[:8])
    return json.loads(buffer[8 : 8 + size])


def describe(obj: Any) -> Any:
    """A JSON description keeping every string and the layout of every binary object."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            "__type__": type(obj).__name__,
            **{f.name: describe(getattr(obj, f.name)) for f in dataclasses.fields(obj)},
        }
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and obj.ndim == 1:
        try:
            header = _safetensors_header(obj.tobytes())
        except (struct.error, ValueError, UnicodeDecodeError):  # not safetensors: opaque bytes
            return {"__type__": "uint8_array", "nbytes": int(obj.nbytes)}
        return {"__type__": "safetensors", "nbytes": int(obj.nbytes), "header": header}
    if isinstance(obj, bytes):
        return {"__type__": "bytes", "nbytes": len(obj)}
    if isinstance(obj, torch.Tensor):
        return {"__type__": "tensor", "shape": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__type__": "dict", "items": [[describe(k), describe(v)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__type__": type(obj).__name__, "items": [describe(v) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return {"__type__": type(obj).__name__, "repr": repr(obj)[:200]}


class AuditedWorker(ClientWorker):
    """ClientWorker whose every result is recorded under ``LOG_DIR`` (set by the test before
    the class is shipped)."""

    LOG_DIR = ""

    def _record(self, method: str, outcome: str, value: Any) -> None:
        path = Path(self.LOG_DIR) / f"worker-{os.getpid()}.jsonl"
        with path.open("a", encoding="utf-8") as f:
            row = {"method": method, "outcome": outcome, "value": describe(value)}
            f.write(json.dumps(row) + "\n")

    def _audited(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            value = getattr(super(), method)(*args, **kwargs)
        except BaseException as err:
            self._record(method, "raised", {"type": type(err).__name__, "message": str(err)})
            raise
        self._record(method, "returned", value)
        return value

    def ready(self, *a: Any, **k: Any) -> Any:
        return self._audited("ready", *a, **k)

    def initial_adapter(self, *a: Any, **k: Any) -> Any:
        return self._audited("initial_adapter", *a, **k)

    def train(self, *a: Any, **k: Any) -> Any:
        return self._audited("train", *a, **k)

    def evaluate(self, *a: Any, **k: Any) -> Any:
        return self._audited("evaluate", *a, **k)

    def adapter_files(self, *a: Any, **k: Any) -> Any:
        return self._audited("adapter_files", *a, **k)

    def secagg_share(self, *a: Any, **k: Any) -> Any:
        return self._audited("secagg_share", *a, **k)

    def secagg_mask(self, *a: Any, **k: Any) -> Any:
        return self._audited("secagg_mask", *a, **k)

    def secagg_unmask(self, *a: Any, **k: Any) -> Any:
        return self._audited("secagg_unmask", *a, **k)


def read_log(log_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(Path(log_dir).glob("worker-*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
    ]


def strings(described: Any) -> list[str]:
    """Every string inside a description (keys and values), except the type tags."""
    out: list[str] = []
    if isinstance(described, str):
        out.append(described)
    elif isinstance(described, list):
        for v in described:
            out += strings(v)
    elif isinstance(described, dict):
        for k, v in described.items():
            if k != "__type__":
                out += strings(v)
    return out
