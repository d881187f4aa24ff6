"""fedavg_ls: FedAvg of clients that optimize a fixed linear scalarization sum_m p_m L_m.

lambda = p at every step, no solve: the step needs only the gradient of the combined loss (one
gradient row, not M). ``scalarization`` says where the preference meets the rewards:

- ``normalize_then_sum`` (default; GDPO): each reward gets its own advantage (normalized per
  objective), then the losses are combined with p;
- ``sum_then_normalize`` (TRL's multi-objective default): the rewards are first combined into
  one reward R @ p, which gets one advantage; the step then has one objective (preference [1]).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from firm_ray.algorithms.base import Algorithm, register


class FedAvgLsOptions(BaseModel):
    """fedavg_ls's keys of the ``algorithm:`` block."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    scalarization: Literal["normalize_then_sum", "sum_then_normalize"] = "normalize_then_sum"
    """'normalize_then_sum' (GDPO): advantages per reward, losses combined by p;
    'sum_then_normalize' (TRL): rewards combined by p first, one advantage."""


@register("fedavg_ls", label="FedAvg + linear scalarization")
class FedAvgLs(Algorithm):
    """Fixed weights lambda = p; one combined gradient per step."""

    Options = FedAvgLsOptions
    per_objective_gradients = False

    def transform_rewards(
        self, rewards: torch.Tensor, preference: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.options.scalarization == "normalize_then_sum":
            return rewards, preference
        combined = rewards @ preference.to(rewards.dtype)
        return combined[:, None], torch.ones(1, dtype=preference.dtype, device=preference.device)
