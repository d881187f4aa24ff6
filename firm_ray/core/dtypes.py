"""The one map from config dtype names to torch dtypes, shared by policies and reward models.

``model.dtype`` and an ``hf_reward_model``'s ``kwargs.dtype`` accept the same names; one map
keeps them from drifting apart (a dtype added to one and not the other would be a config that
validates but fails to load).
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["AUTO", "DTYPE_NAMES", "TORCH_DTYPES", "torch_dtype"]

AUTO = "auto"  # the checkpoint's own dtype (from_pretrained decides)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

DTYPE_NAMES: tuple[str, ...] = (AUTO, *TORCH_DTYPES)


def torch_dtype(name: str) -> torch.dtype | Literal["auto"]:
    """What ``from_pretrained(dtype=...)`` takes for a config name: 'auto' passes through.

    Raises ValueError naming the allowed names for anything else.
    """
    if name == AUTO:
        return AUTO
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: must be one of {', '.join(DTYPE_NAMES)}") from None
