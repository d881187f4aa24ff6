"""The server side of algorithms (Strategy: configure_round / aggregate_round / state); no Ray.

The algorithms themselves live in firm_ray.algorithms, one file each."""

from firm_ray.federation.strategies import (
    AggregateResult,
    FedAvgStrategy,
    RoundFailed,
    Strategy,
    sample_clients,
)

__all__ = [
    "AggregateResult",
    "FedAvgStrategy",
    "RoundFailed",
    "Strategy",
    "sample_clients",
]
