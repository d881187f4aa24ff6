"""Plain data that crosses process (Ray actor) boundaries: what a client sends back.

Only tensors, numbers and strings, so Ray's serializer moves them without pickling any model
object. No gradients, prompts or completions are ever part of an update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

AdapterState = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """One client's result for one round.

    ``adapter`` is the client's final adapter theta_i (FIRM, fedavg_ls, centralized).
    ``objective_deltas`` is used by fmgda instead: one delta theta_i^m - theta^t per objective.
    ``num_samples`` is the client's local data size (FedAvg weights by it).
    ``valid`` is False when the update must be rejected (e.g. a non-finite adapter); ``reason``
    says why. ``metrics`` holds scalars and short lists (mean lambda, rewards, KL, timings, ...).
    ``client_state`` is state that must follow the client, not the worker (running reward
    normalization statistics): the server keeps it and hands it back next time.
    """

    client_id: int
    round: int
    num_samples: int
    adapter: AdapterState | None = None
    objective_deltas: list[AdapterState] | None = None
    metrics: dict[str, float | list[float]] = field(default_factory=dict)
    valid: bool = True
    reason: str = ""
    client_state: dict = field(default_factory=dict)
