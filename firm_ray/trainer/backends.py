"""Optimizer backends: how a FIRM direction becomes a parameter update.

The trainer computes the per-objective gradients and lambda itself; a backend only applies
``direction = sum_m lambda_m g_m`` (+ the proximal gradient). ``torch`` writes it into ``.grad``,
clips it by global norm and steps AdamW or SGD (``trainer.optimizer``). ``deepspeed``
(firm_ray.trainer.deepspeed_backend) cannot take a hand-made gradient under ZeRO (it partitions
gradients in backward hooks), so it backpropagates the equivalent scalar sum_m lambda_m L_m with
lambda held constant, through the engine, with the same optimizer choice.

The optimizer is fresh every local trajectory (``reset`` at the start of each round): no AdamW
moments or SGD momentum buffer are carried from one round, or one client, to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from firm_ray.config import ConfigError, TrainerConfig
from firm_ray.core.gradients import assign_flat_grad

OPTIMIZERS = ("adamw", "sgd")

DEFAULT_LEARNING_RATES: dict[str, float] = {"adamw": 5e-4, "sgd": 0.5}
"""The client learning rate when ``trainer.learning_rate`` is None.

adamw: 5e-4, the rate firm_ray always used. sgd: chosen by a stated rule, not tuned on any
result: SGD's first step has the L2 norm of AdamW's first step at 5e-4 (both after clipping the
direction to ``max_grad_norm``), rounded to one significant digit. AdamW's first step is
lr * g / (|g| + eps) elementwise (bias-corrected moments of one gradient), about lr * sqrt(n)
for n parameters with a non-zero gradient, whatever the gradient's norm; SGD's is lr * ||g||.
Measured (``python bench/sgd_lr_rule.py --clients 8``, CPU, float32, the built-in world model,
default config: LoRA r 8 on 7,168 parameters, max_grad_norm 1): over the 24 first steps of round
0 (8 clients; firm: 1 trajectory each, fmgda: 1 per objective), ||AdamW step|| = 0.0277
(= 5e-4 * sqrt(3072): only the B matrices have a gradient at B = 0), ||clipped g|| 0.018-0.15
(median 0.057; never clipped), lr_sgd = ratio per step 0.19-1.52, median 0.49 -> 0.5 (firm
alone 0.51, fmgda alone 0.44; from a trained adapter, where A has gradients too, 0.81). Other
models and LoRA sizes give other ratios (AdamW's step grows with sqrt(n), SGD's with ||g||):
set ``trainer.learning_rate`` there. So do other reward scales: with ``trainer.advantage:
group_mean`` (no std division) the same rule gives 2.05 -> 2 (``--set
trainer.advantage=group_mean``; median clipped |g| 0.0135), four times this default.
"""


def resolve_optimizer(cfg: TrainerConfig, algorithm_default: str = "adamw") -> tuple[str, float]:
    """(optimizer name, learning rate) of a client: ``trainer.optimizer`` or, when None, the
    algorithm's default (fmgda: 'sgd', as in Yang et al. 2023; others 'adamw');
    ``trainer.learning_rate`` or, when None, that optimizer's :data:`DEFAULT_LEARNING_RATES`."""
    name = cfg.optimizer or algorithm_default
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"optimizer {name!r} (the algorithm's default): must be one of {', '.join(OPTIMIZERS)}"
        )
    if name != "sgd" and cfg.momentum > 0:
        raise ConfigError(
            f"trainer.momentum = {cfg.momentum!r}: only used with trainer.optimizer 'sgd', and "
            f"the optimizer here is {name!r} (the algorithm's default); set trainer.optimizer"
        )
    lr = cfg.learning_rate if cfg.learning_rate is not None else DEFAULT_LEARNING_RATES[name]
    return name, float(lr)


def make_optimizer(
    params: Sequence[torch.nn.Parameter], name: str, lr: float, cfg: TrainerConfig
) -> torch.optim.Optimizer:
    """torch.optim.AdamW (decoupled weight decay, torch's betas and eps) or torch.optim.SGD
    (``trainer.momentum``, no dampening, not Nesterov; weight decay as an L2 term added to the
    clipped gradient)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer {name!r}: must be one of {', '.join(OPTIMIZERS)}")


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
    """AdamW or SGD on the trainable parameters, gradient clipping by global norm."""

    needs_graph = False

    def __init__(
        self,
        model: Any,
        params: Sequence[torch.nn.Parameter],
        cfg: TrainerConfig,
        algorithm_default: str = "adamw",
    ):
        self.model = model
        self.params = list(params)
        self.cfg = cfg
        self.optimizer_name, self.learning_rate = resolve_optimizer(cfg, algorithm_default)
        self.reset()

    @property
    def forward_model(self) -> Any:
        return self.model

    def reset(self) -> None:
        self.optimizer = make_optimizer(
            self.params, self.optimizer_name, self.learning_rate, self.cfg
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


def build_backend(
    model: Any,
    params: Sequence[torch.nn.Parameter],
    cfg: TrainerConfig,
    algorithm_default: str = "adamw",
) -> Backend:
    """The backend named by ``trainer.backend``; ``algorithm_default`` is the optimizer used
    when ``trainer.optimizer`` is None (the algorithm plug-in's default)."""
    if cfg.backend == "torch":
        return TorchBackend(model, params, cfg, algorithm_default)
    if cfg.backend == "deepspeed":
        from firm_ray.trainer.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(model, params, cfg, algorithm_default=algorithm_default)
    raise ValueError(f"trainer.backend = {cfg.backend!r}: must be 'torch' or 'deepspeed'")
