"""The algorithm contract and its registry: one class per algorithm, one file each.

An algorithm says what a client does in a round and how the server combines what comes back.

Client side (an `Algorithm` instance inside each worker's `LocalTrainer`), per round:

1. ``trajectories(preference)``: the preference vector of each local trajectory of K steps
   from theta^t (firm, fedavg_ls, jd: one, the client's preference; fmgda: M, one-hot each).
2. ``transform_rewards(rewards [N, M], preference)``: optional, before the advantages; returns
   the rewards and preference the step optimizes (fedavg_ls ``sum_then_normalize``: one column
   R @ p and preference [1]).
3. ``per_objective_gradients``: False when the step needs only the gradient of the combined
   loss sum_m c_m L_m, c the trajectory's preference (one gradient row instead of M).
4. ``direction(grads [M, P], losses [M], preference [M], proximal [P] | None)`` -> (lambda [M],
   direction [P], loss_coef [M]): lambda is logged (disagreement), direction goes to the
   optimizer, and loss_coef weights the L_m of the combined loss that a backend running its own
   backward (DeepSpeed) differentiates; its gradient must be the direction.
5. ``upload(final adapters, one per trajectory, theta^t)``: the payloads sent back, described
   by ``payload``: 'adapter' (one adapter) or 'objective_deltas' (fmgda: one delta each).

Server side: ``strategy(config)`` builds the `Strategy` (firm_ray.federation) that the
Aggregator actor drives: ``configure_round(round) -> client ids``, ``aggregate_round(...)`` and
``state_dict`` / ``load_state_dict`` for server state kept across rounds (checkpointed).

Metadata: ``Options`` (a pydantic model of the algorithm's own keys of the ``algorithm:`` block;
the common keys name / preference / mu / server_lr are not in it), ``min_objectives``,
``default_optimizer`` (what ``trainer.optimizer: null`` resolves to) and ``label`` (reports).

Registration: ``@register("name")`` on a built-in class; any other class is named in the config
by its dotted path ``package.module:ClassName`` and imported on demand (in the driver and in
every Ray worker, so the module must be importable there).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from firm_ray.core.aggregation import state_delta
from firm_ray.federation import FedAvgStrategy, Strategy
from firm_ray.types import AdapterState

if TYPE_CHECKING:
    from firm_ray.config import AlgorithmConfig, FirmConfig

PayloadKind = Literal["adapter", "objective_deltas"]


class NoOptions(BaseModel):
    """An algorithm without keys of its own."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Algorithm:
    """Base class: FedAvg of one adapter per client, lambda = p (linear scalarization)."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    min_objectives: ClassVar[int] = 1
    default_optimizer: ClassVar[str] = "adamw"
    per_objective_gradients: ClassVar[bool] = True
    payload: ClassVar[PayloadKind] = "adapter"

    def __init__(self, config: AlgorithmConfig, num_objectives: int) -> None:
        self.config = config
        self.num_objectives = num_objectives
        self.options: Any = self.Options.model_validate(config.options())

    # ----------------------------------------------------------------------- client side
    def trajectories(self, preference: torch.Tensor) -> list[torch.Tensor]:
        """The preference of each local trajectory of the round (each starts from theta^t)."""
        return [preference]

    def transform_rewards(
        self, rewards: torch.Tensor, preference: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards, preference) the step optimizes; default: unchanged, one per objective."""
        return rewards, preference

    def direction(
        self,
        grads: torch.Tensor,
        losses: torch.Tensor,
        preference: torch.Tensor,
        proximal: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lambda, direction, loss_coef). Default (``per_objective_gradients`` False):
        ``grads`` is the one row of sum_m p_m g_m, so lambda = loss_coef = p."""
        direction = grads[0] + (proximal if proximal is not None else 0.0)
        return preference, direction, preference

    def upload(self, adapters: Sequence[AdapterState], global_adapter: AdapterState) -> list:
        """The payloads of the update: the one trajectory's final adapter."""
        return [adapters[0]]

    # ----------------------------------------------------------------------- server side
    def strategy(self, config: FirmConfig) -> Strategy:
        """The server side: the sample-weighted FedAvg average (+ server_lr)."""
        return FedAvgStrategy(config, trajectories=len(self._unit_trajectories()))

    def local_adapter(
        self, payloads: Sequence[AdapterState], previous: AdapterState
    ) -> AdapterState:
        """The client's local model theta_i, for the drift metric."""
        return payloads[0]

    def _unit_trajectories(self) -> list[torch.Tensor]:
        m = self.num_objectives
        return self.trajectories(torch.full((m,), 1.0 / m, dtype=torch.float64))


def mean_delta_adapter(payloads: Sequence[AdapterState], previous: AdapterState) -> AdapterState:
    """theta^t + the mean of per-objective deltas (fmgda's local model, for drift)."""
    return {k: previous[k] + sum(d[k] for d in payloads) / len(payloads) for k in previous}


def deltas_of(adapters: Sequence[AdapterState], global_adapter: AdapterState) -> list:
    """One delta theta_i^m - theta^t per trajectory."""
    return [state_delta(a, global_adapter) for a in adapters]


# --------------------------------------------------------------------------- registry

REGISTRY: dict[str, type[Algorithm]] = {}


def register(name: str, label: str | None = None) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: make ``algorithm.name: <name>`` select this class."""

    def add(cls: type[Algorithm]) -> type[Algorithm]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"algorithm {name!r} is already registered by {REGISTRY[name]}")
        cls.name, cls.label = name, label or cls.label or name
        REGISTRY[name] = cls
        return cls

    return add


class UnknownAlgorithm(ValueError):
    """``algorithm.name`` is neither registered nor an importable dotted path."""


def resolve(name: str) -> type[Algorithm]:
    """The class of ``algorithm.name``: a registered name or ``package.module:ClassName``."""
    if name in REGISTRY:
        return REGISTRY[name]
    module_name, colon, attr = name.partition(":")
    if not colon or not module_name or not attr:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownAlgorithm(
            f"must be one of {known}, or a dotted path 'package.module:ClassName'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownAlgorithm(f"cannot import module {module_name!r} ({exc})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise UnknownAlgorithm(
            f"{module_name!r} has no firm_ray.algorithms.Algorithm subclass {attr!r}"
        )
    if not cls.label:
        cls.label = attr
    return cls


def build_algorithm(config: AlgorithmConfig, num_objectives: int) -> Algorithm:
    """The client-side instance of ``config.name``."""
    return resolve(config.name)(config, num_objectives)


def build_strategy(config: FirmConfig) -> Strategy:
    """The server-side strategy of ``config.algorithm.name``."""
    return build_algorithm(config.algorithm, config.num_objectives).strategy(config)
