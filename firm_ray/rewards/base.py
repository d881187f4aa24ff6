"""The reward contract and its guards.

A reward maps a batch of (prompt, completion) pairs to one float32 score per pair. Scores feed
per-objective advantages and the FIRM solver inside a Ray worker, where one NaN silently poisons
every gradient of the round and surfaces, if at all, as a diverged adapter rounds later. So every
score crosses `check_scores` first, which fails at once with the reward, the item and its text.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Reward", "RewardError", "Scorer", "check_inputs", "check_scores"]


class RewardError(ValueError):
    """A reward that cannot be built, or a scorer that returned unusable scores."""


@runtime_checkable
class Scorer(Protocol):
    """Anything with a ``name`` and a batched ``score``: what `score_all` accepts."""

    name: str

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor: ...


def _show(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_inputs(name: str, prompts: Sequence[str], completions: Sequence[str]) -> None:
    """Raise RewardError unless prompts and completions pair up one to one."""
    if isinstance(prompts, str) or isinstance(completions, str):
        raise RewardError(
            f"reward {name!r}: prompts and completions must be sequences of strings, not a string"
        )
    if len(prompts) != len(completions):
        raise RewardError(
            f"reward {name!r}: got {len(prompts)} prompts for {len(completions)} completions "
            "(prompts[i] must be the prompt of completions[i])"
        )


def check_scores(name: str, scores: Any, completions: Sequence[str]) -> torch.Tensor:
    """The scores as a float32 CPU tensor of shape [n]; RewardError on a wrong shape, NaN or inf.

    Accepts a tensor, numpy array or list of numbers (what user callables tend to return).
    """
    n = len(completions)
    try:
        out = torch.as_tensor(scores).detach().to(device="cpu", dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RewardError(
            f"reward {name!r} returned {type(scores).__name__}, not a list of numbers ({exc})"
        ) from None
    if out.dim() != 1 or out.shape[0] != n:
        raise RewardError(
            f"reward {name!r} returned scores of shape {tuple(out.shape)} for {n} completions "
            f"(expected shape ({n},))"
        )
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        value = float(out[i])
        kind = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        raise RewardError(
            f"reward {name!r} returned {kind} for item {i} (completion {_show(completions[i])})"
        )
    return out


class Reward(ABC):
    """Base class of the built-in rewards: ``score`` validates, ``_score`` computes.

    ``prompts[i]`` is the prompt of ``completions[i]``; in RLHF each prompt repeats G times, so
    implementations dedupe expensive per-prompt work. Rewards are stateless unless they override
    `state_dict` / `load_state_dict` (normalization keeps running statistics there).
    """

    name: str

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """float32 scores of shape [n] on the CPU, checked (see `check_scores`)."""
        check_inputs(self.name, prompts, completions)
        if len(completions) == 0:
            return torch.zeros(0, dtype=torch.float32)
        return check_scores(self.name, self._score(prompts, completions), completions)

    @abstractmethod
    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> Any:
        """Raw scores for a non-empty batch: tensor, array or list of n numbers."""

    def state_dict(self) -> dict[str, Any]:
        """Persistent state (plain Python values); empty for stateless rewards."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`; stateless rewards accept only an empty dict."""
        if state:
            raise RewardError(f"reward {self.name!r} is stateless; got state keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
