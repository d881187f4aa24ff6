"""Federated algorithms as strategies (configure_round / aggregate_round); no Ray."""

from firm_ray.federation.strategies import (
    AggregateResult,
    FedAvgStrategy,
    FmgdaStrategy,
    RoundFailed,
    Strategy,
    build_strategy,
    sample_clients,
)

__all__ = [
    "AggregateResult",
    "FedAvgStrategy",
    "FmgdaStrategy",
    "RoundFailed",
    "Strategy",
    "build_strategy",
    "sample_clients",
]
