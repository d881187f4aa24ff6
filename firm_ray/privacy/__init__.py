"""Privacy primitives of the federation: client-level DP and its accounting (no Ray, no config).

- :mod:`firm_ray.privacy.dp` (torch only): joint clipping, seeded Gaussian noise, adaptive
  clipping (McMahan et al. 2018; Andrew et al. 2021);
- :mod:`firm_ray.privacy.accounting` (dp_accounting): epsilon of k-of-n client sampling without
  replacement under replace-one (Wang, Balle, Kasiviswanathan 2019);
- :mod:`firm_ray.privacy.secagg` (cryptography): secure aggregation (Bonawitz et al. 2017),
  imported from its module, so nothing here loads cryptography.

``ClientAccountant`` is loaded on first use, so a client worker that only clips never imports
dp_accounting (about a second of imports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from firm_ray.privacy.dp import (
    AdaptiveClip,
    clip_joint,
    gaussian_like,
    joint_norm,
    noise_generator,
    update_noise_multiplier,
)

if TYPE_CHECKING:
    from firm_ray.privacy.accounting import ClientAccountant

__all__ = [
    "AdaptiveClip",
    "ClientAccountant",
    "clip_joint",
    "gaussian_like",
    "joint_norm",
    "noise_generator",
    "update_noise_multiplier",
]


def __getattr__(name: str) -> Any:
    if name == "ClientAccountant":
        from firm_ray.privacy.accounting import ClientAccountant

        return ClientAccountant
    raise AttributeError(f"module 'firm_ray.privacy' has no attribute {name!r}")
