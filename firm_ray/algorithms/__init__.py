"""Algorithms as one-file plug-ins (the contract: base.py); importing this registers them."""

from firm_ray.algorithms import centralized, fedavg_ls, firm, fmgda, jd  # noqa: F401 (register)
from firm_ray.algorithms.base import (
    REGISTRY,
    Algorithm,
    NoOptions,
    UnknownAlgorithm,
    build_algorithm,
    build_strategy,
    register,
    resolve,
)

__all__ = [
    "REGISTRY",
    "Algorithm",
    "NoOptions",
    "UnknownAlgorithm",
    "build_algorithm",
    "build_strategy",
    "register",
    "resolve",
]
