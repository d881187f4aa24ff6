"""The bookkeeping a local step is made of besides its losses: micro-batch slices, the state
the PPO epochs of one step share (pi_old, truncated importance weights), phase timers, skipped
steps and the per-round metrics of a trajectory. Pure torch; no model code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import torch

from firm_ray.models.generation import Samples


class Timer:
    """``with timer("generate"):`` appends the span's seconds to ``log["time_generate"]``."""

    def __init__(self, log: dict[str, list]) -> None:
        self.log = log

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.log[f"time_{name}"].append(time.perf_counter() - start)


def set_activation_checkpointing(model: Any, enabled: bool) -> None:
    """Hugging Face's non-reentrant activation checkpointing on (or back off: a worker's
    model outlives one trainer config). It works with the factored per-objective gradients:
    their hooks sit on the original forward's layer outputs, which the recomputation feeds."""
    new_api = hasattr(model, "activation_checkpointing_enable")  # transformers >= 5
    active = model.is_activation_checkpointing if new_api else model.is_gradient_checkpointing
    if enabled == bool(active):
        return
    if enabled and new_api:
        model.activation_checkpointing_enable({"use_reentrant": False})
    elif enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif new_api:
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def skip_step(log: dict[str, list], reason: str) -> None:
    """Count a skipped step and keep its reason (names a reward / item index, never text)."""
    log["skipped_steps"].append(1.0)
    log["skip_reasons"].append(reason)


def micro_batches(num_rows: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]


def loss_mask(samples: Samples, mask_truncated: bool) -> torch.Tensor:
    """[S, T] float mask of the completion tokens the loss uses: with trainer.mask_truncated,
    completions that hit max_new_tokens without an EOS are left out."""
    mask = samples.completion_mask.to(torch.float32)
    if mask_truncated:
        mask = mask * (~samples.truncated)[:, None].to(mask.dtype)
    return mask


def bf16_autocast(device: torch.device, mixed_precision: str) -> AbstractContextManager:
    """bf16 autocast on ``device`` when trainer.mixed_precision is 'bf16' (else a no-op)."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16"
    )


class EpochState:
    """What the PPO epochs of one local step share: the batch, advantages, reference and
    pi_old log-probs (pi_old: epoch 0's own detached forward unless given), and the truncated
    importance weights min(pi_old / pi_sample, cap) that correct for sampling != policy."""

    def __init__(
        self,
        samples: Samples,
        mask: torch.Tensor,
        adv: torch.Tensor,
        ref_logp: torch.Tensor | None,
        old_logp: torch.Tensor | None,
    ) -> None:
        self.samples, self.mask, self.adv, self.ref_logp = samples, mask, adv, ref_logp
        self.old_logp = old_logp
        self._collected: list[torch.Tensor] = []
        self.weights: torch.Tensor | None = None
        self._weights: list[torch.Tensor] = []
        self.clipped = self.tokens = torch.zeros(())

    def importance_weight(self, rows: slice, old: torch.Tensor, cap: float) -> torch.Tensor:
        if self.weights is not None:
            return self.weights[rows]
        if self.old_logp is None:
            self._collected.append(old)
        weight = torch.exp(old - self.samples.sample_logp[rows]).clamp(max=cap)
        weight = weight * self.mask[rows]
        self._weights.append(weight)
        return weight

    def keep_old_logp_from_first_epoch(self) -> None:
        if self.old_logp is None and self._collected:
            self.old_logp = torch.cat(self._collected)
        if self.weights is None and self._weights:
            self.weights = torch.cat(self._weights)

    def mean_importance_weight(self) -> float:
        assert self.weights is not None
        return float(self.weights.sum() / self.mask.sum().clamp_min(1.0))


def summarize(log: dict[str, list], num_objectives: int) -> dict[str, Any]:
    """Per-round metrics of one trajectory (means over steps; counts and timings summed)."""
    out: dict[str, Any] = {}
    for key, values in log.items():
        if key == "skip_reasons":
            out[key] = list(dict.fromkeys(values))[:3]
        elif key.startswith("time_") or key in ("steps", "skipped_steps"):
            out[key] = float(sum(values))
        elif values and isinstance(values[0], list):
            out[key] = np.mean(np.asarray(values, dtype=float), axis=0).tolist()
        else:
            out[key] = float(np.mean(values)) if values else float("nan")
    out["steps"] = float(sum(log.get("steps", [])))
    out["skipped_steps"] = float(sum(log.get("skipped_steps", [])))
    out.setdefault("skip_reasons", [])
    out.setdefault("lambda", [math.nan] * num_objectives)
    return out


def merge_metric(key: str, values: list[Any]) -> Any:
    """Merge one metric over fmgda's M trajectories (counts add up, the rest is averaged)."""
    if key == "skip_reasons":
        return list(dict.fromkeys(x for v in values for x in v))[:3]
    if key in ("steps", "skipped_steps") or key.startswith("time_"):
        return float(sum(values))
    if values and isinstance(values[0], list):
        return np.mean(np.asarray(values, dtype=float), axis=0).tolist()
    return float(np.mean(values))
