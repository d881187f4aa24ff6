"""Optimizer backends: how a FIRM direction becomes a parameter update.

The trainer computes the per-objective gradients and lambda itself; a backend only applies
``direction = sum_m lambda_m g_m`` (+ the proximal gradient). ``torch`` writes it into ``.grad``
and steps AdamW. ``deepspeed`` (firm_ray.trainer.deepspeed_backend) cannot take a hand-made
gradient under ZeRO (it partitions gradients in backward hooks), so it backpropagates the
equivalent scalar sum_m lambda_m L_m with lambda held constant, through the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from firm_ray.config import TrainerConfig
from firm_ray.core.gradients import assign_flat_grad


class Backend(Protocol):
    """What the local trainer needs from an optimizer backend."""

    needs_graph: bool  # True: apply() backpropagates combined_loss, keep the autograd graph

    @property
    def forward_model(self) -> Any:
        """The module to run training forward passes through (DeepSpeed: the engine's module
        with the engine's forward set-up, see deepspeed_backend.EngineForward)."""

    def reset(self) -> None:
        """Fresh optimizer state for a new round (local optimizer state is not carried over)."""

    def apply(self, direction: torch.Tensor, combined_loss: Callable[[], torch.Tensor]) -> float:
        """Take one step along ``direction``; returns the gradient norm before clipping."""


class TorchBackend:
    """AdamW on the trainable parameters, gradient clipping by global norm."""

    needs_graph = False

    def __init__(self, model: Any, params: Sequence[torch.nn.Parameter], cfg: TrainerConfig):
        self.model = model
        self.params = list(params)
        self.cfg = cfg
        self.reset()

    @property
    def forward_model(self) -> Any:
        return self.model

    def reset(self) -> None:
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.cfg.learning_rate or 5e-4, weight_decay=self.cfg.weight_decay
        )

    def apply(self, direction: torch.Tensor, combined_loss: Callable[[], torch.Tensor]) -> float:
        assign_flat_grad(self.params, direction)
        if self.cfg.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        else:
            norm = direction.norm()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


def build_backend(model: Any, params: Sequence[torch.nn.Parameter], cfg: TrainerConfig) -> Backend:
    """The backend named by ``trainer.backend``."""
    if cfg.backend == "torch":
        return TorchBackend(model, params, cfg)
    if cfg.backend == "deepspeed":
        from firm_ray.trainer.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(model, params, cfg)
    raise ValueError(f"trainer.backend = {cfg.backend!r}: must be 'torch' or 'deepspeed'")
