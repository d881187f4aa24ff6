"""FIRM: in-client regularized min-norm weights (the paper's algorithm).

Each client solves lambda* = argmin_{lambda in simplex} ||sum_m lambda_m g_m||^2 +
beta ||lambda - p||^2 on its M per-objective gradients at every local step, steps along
sum_m lambda_m g_m, and uploads one adapter; the server averages them (FedAvg + server_lr).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from firm_ray.algorithms.base import Algorithm, register
from firm_ray.core import effective_beta, firm_weights
from firm_ray.core.gradients import gradient_scales


class FirmOptions(BaseModel):
    """FIRM's keys of the ``algorithm:`` block."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    beta: float = Field(1.0, ge=0, allow_inf_nan=False)
    """FIRM regularization strength of the min-norm problem (0 = plain MGDA weights)."""
    beta_scale: Literal["relative", "absolute"] = "relative"
    """'relative': effective beta = beta * mean squared per-objective gradient norm, so beta is
    scale-free; 'absolute': beta is used as is."""
    grad_norm: Literal["none", "l2"] = "none"
    """Per-objective gradient normalization before the min-norm solve: 'l2' scales each g_m to
    unit norm. (LibMTL's 'loss' modes divide by |L_m|, which for a policy-gradient surrogate with
    zero-mean advantages is ~1e-8: noise, so they are not offered.)"""


def scaled_gradients(
    grads: torch.Tensor, grad_norm: str, proximal: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 [M, P] normalized gradients with the proximal term in every row, scales [M])."""
    scales = gradient_scales(grads, grad_norm)
    scaled = grads.double() * scales[:, None]
    if proximal is not None:
        scaled = scaled + proximal.double()[None]  # the proximal term is in every L_m
    return scaled, scales


@register("firm", label="FIRM")
class Firm(Algorithm):
    """In-client regularized min-norm (MGDA at beta = 0, linear scalarization as beta -> inf)."""

    Options = FirmOptions
    min_objectives = 2

    def direction(
        self,
        grads: torch.Tensor,
        losses: torch.Tensor,
        preference: torch.Tensor,
        proximal: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        opts = self.options
        scaled, scales = scaled_gradients(grads, opts.grad_norm, proximal)
        gram = scaled @ scaled.T
        lam = firm_weights(gram, effective_beta(gram, opts.beta, opts.beta_scale), preference)
        return lam, (lam @ scaled).to(grads.dtype), lam * scales
