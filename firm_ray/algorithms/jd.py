"""jd: the multi-task-learning literature in-client, through torchjd's weightings.

Like FIRM, each client turns its M per-objective gradients into one direction at every local
step and uploads one adapter (FedAvg on the server); the weights come from a torchjd
``Weighting`` of the Gram matrix of the (optionally normalized) gradients, with the FedProx term
in every row as for FIRM. lambda is the weight vector the Weighting returns (not necessarily on
the simplex: UPGrad's sum to more than 1), so ``disagreement`` compares what clients did.

``algorithm.aggregator`` and whether it uses ``algorithm.preference``:

- ``upgrad`` (Quinton & Rey 2024): yes, as UPGrad's ``pref_vector``. Its dual-cone projection
  is solved by jd_projector.BvlsProjector (SciPy's bounded least squares: the same QP and
  preprocessing as torchjd's default QuadprogProjector, whose quadprog is GPL), so no extra.
- ``dualproj`` (GEM's projection, Lopez-Paz & Ranzato 2017): yes (``pref_vector``); same
  projector.
- ``aligned_mtl`` (Senushkin et al. 2023): yes (``pref_vector``).
- ``mgda`` (Desideri 2012; torchjd's Frank-Wolfe): no.
- ``pcgrad`` (Yu et al. 2020): no; its random projection order draws from torch's RNG, which
  the trainer seeds per (client, round, step).
- ``imtl_g`` (Liu et al. 2021): no.
- ``fairgrad`` (Ban & Ji 2024, ``fairgrad_alpha``): no; needs scipy (a dependency of firm_ray,
  for the projector above).
- ``cagrad`` (Liu et al. 2021, ``cagrad_c``): no; needs the extra ``cagrad`` (cvxpy).
- ``nash_mtl`` (Navon et al. 2022): no; needs the extra ``nash_mtl`` (cvxpy, ecos); fresh
  state every local trajectory.

An aggregator whose extra is not installed is a one-line config error naming the extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from firm_ray.algorithms.base import Algorithm, register
from firm_ray.algorithms.firm import scaled_gradients


@dataclass(frozen=True)
class JdAggregator:
    """How to build one torchjd weighting and what it needs."""

    weighting: str  # class name in torchjd.aggregation
    uses_preference: bool = False
    on_matrix: bool = False  # takes the [M, P] matrix, not its Gram matrix
    dual_cone: bool = False  # projects onto the dual cone: given jd_projector.BvlsProjector
    extra: str = ""  # torchjd pip extra
    deps: tuple[str, ...] = ()


AGGREGATORS: dict[str, JdAggregator] = {
    "upgrad": JdAggregator("UPGradWeighting", True, dual_cone=True),
    "dualproj": JdAggregator("DualProjWeighting", True, dual_cone=True),
    "aligned_mtl": JdAggregator("AlignedMTLWeighting", True),
    "mgda": JdAggregator("MGDAWeighting"),
    "pcgrad": JdAggregator("PCGradWeighting"),
    "imtl_g": JdAggregator("IMTLGWeighting"),
    "fairgrad": JdAggregator("FairGradWeighting"),
    "cagrad": JdAggregator("CAGradWeighting", extra="cagrad", deps=("cvxpy", "clarabel")),
    "nash_mtl": JdAggregator("NashMTL", on_matrix=True, extra="nash_mtl", deps=("cvxpy", "ecos")),
}


def missing_extra(name: str) -> str:
    """'' when the aggregator's optional dependencies are importable, else the pip command."""
    spec = AGGREGATORS[name]
    if all(find_spec(d) is not None for d in spec.deps):
        return ""
    return f'pip install "torchjd[{spec.extra}]"'


def available_aggregators() -> list[str]:
    """The aggregators that work with what is installed."""
    return [name for name in AGGREGATORS if not missing_extra(name)]


class JdOptions(BaseModel):
    """jd's keys of the ``algorithm:`` block."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    aggregator: Literal[
        "upgrad",
        "dualproj",
        "aligned_mtl",
        "mgda",
        "pcgrad",
        "imtl_g",
        "fairgrad",
        "cagrad",
        "nash_mtl",
    ] = "mgda"
    """The torchjd weighting turning the M gradients into one direction (see jd.py)."""
    grad_norm: Literal["none", "l2"] = "none"
    """Per-objective gradient normalization before the weighting (as for firm)."""
    cagrad_c: float = Field(0.5, ge=0, allow_inf_nan=False)
    """CAGrad's c (radius of the ball around the mean gradient)."""
    fairgrad_alpha: float = Field(1.0, gt=0, allow_inf_nan=False)
    """FairGrad's alpha (alpha-fairness of the per-objective improvements)."""

    @field_validator("aggregator")
    @classmethod
    def _installed(cls, name: str) -> str:
        hint = missing_extra(name)
        if hint:
            raise ValueError(f"needs torchjd's optional dependencies: {hint}")
        return name


@register("jd", label="torchjd")
class Jd(Algorithm):
    """In-client torchjd weighting; one adapter per client, FedAvg on the server."""

    Options = JdOptions
    min_objectives = 2

    def __init__(self, config: Any, num_objectives: int) -> None:
        super().__init__(config, num_objectives)
        self.spec = AGGREGATORS[self.options.aggregator]

    def weighting(self, preference: torch.Tensor) -> Any:
        """A fresh torchjd weighting (stateful ones start over every step)."""
        import torchjd.aggregation as tja

        cls = getattr(tja, self.spec.weighting)
        name = self.options.aggregator
        if self.spec.dual_cone:  # not torchjd's default projector: its quadprog is GPL
            from firm_ray.algorithms.jd_projector import BvlsProjector

            return cls(pref_vector=preference, projector=BvlsProjector())
        if self.spec.uses_preference:
            return cls(pref_vector=preference)
        if name == "cagrad":
            return cls(c=self.options.cagrad_c)
        if name == "fairgrad":
            return cls(alpha=self.options.fairgrad_alpha)
        if name == "nash_mtl":
            return cls(n_tasks=self.num_objectives).weighting
        return cls()

    def weights(self, scaled: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
        """torchjd's weights for the rows of ``scaled`` (float64 [M, P])."""
        weighting = self.weighting(preference.to(scaled.dtype))
        stat = scaled if self.spec.on_matrix else scaled @ scaled.T
        return weighting(stat).to(scaled.dtype)

    def direction(
        self,
        grads: torch.Tensor,
        losses: torch.Tensor,
        preference: torch.Tensor,
        proximal: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scaled, scales = scaled_gradients(grads, self.options.grad_norm, proximal)
        lam = self.weights(scaled, preference)
        return lam, (lam @ scaled).to(grads.dtype), lam * scales
