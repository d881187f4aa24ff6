"""The reward contract and its guards.

A reward maps a batch of (prompt, completion) pairs to one float32 score per pair. Scores feed
per-objective advantages and the FIRM solver inside a Ray worker, where one NaN silently poisons
every gradient of the round and surfaces, if at all, as a diverged adapter rounds later. So every
score crosses `check_scores` first, which fails at once naming the reward, the item index and what
was wrong.

No prompt or completion text may leave a client, and these messages do (skip reasons in the
round metrics, errors reaching the driver). So every message raised while scoring is built from
names, counts, indices and types only (`ScoreError`); an exception raised by reward code itself
is replaced by one naming its type, its own message withheld (`withheld`), because it may quote
the text it was scoring.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "Reward",
    "RewardError",
    "ScoreError",
    "Scorer",
    "check_inputs",
    "check_scores",
    "withheld",
]


class RewardError(ValueError):
    """A reward that cannot be built, or a scorer that returned unusable scores."""


class ScoreError(RewardError):
    """A scoring failure whose message firm_ray built from names, counts, indices and types:
    it carries no prompt or completion text, so it may cross the client boundary as it is."""


def withheld(name: str, exc: BaseException, source: str = "") -> ScoreError:
    """The ScoreError replacing ``exc``, raised by reward ``name``'s own code (``source``: the
    function, when it is worth naming); raise it ``from None`` so no traceback carries ``exc``."""
    where = f"{source} raised" if source else "raised"
    return ScoreError(
        f"reward {name!r}: {where} {type(exc).__name__} (its message is withheld: it may quote "
        "prompt or completion text)"
    )


@runtime_checkable
class Scorer(Protocol):
    """Anything with a ``name`` and a batched ``score``: what `score_all` accepts."""

    name: str

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor: ...


def _not_a_number(scores: Any) -> str:
    """What torch could not read in ``scores``, in words that quote none of them (a reward may
    hand back the completions themselves)."""
    what = f"a {type(scores).__name__}"
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Iterable):
        return what
    for i, item in enumerate(scores):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            return f"{what} whose item {i} is a {type(item).__name__}"
    return what


def check_inputs(name: str, prompts: Sequence[str], completions: Sequence[str]) -> None:
    """Raise ScoreError unless prompts and completions pair up one to one."""
    if isinstance(prompts, str) or isinstance(completions, str):
        raise ScoreError(
            f"reward {name!r}: prompts and completions must be sequences of strings, not a string"
        )
    if len(prompts) != len(completions):
        raise ScoreError(
            f"reward {name!r}: got {len(prompts)} prompts for {len(completions)} completions "
            "(prompts[i] must be the prompt of completions[i])"
        )


def check_scores(name: str, scores: Any, completions: Sequence[str]) -> torch.Tensor:
    """The scores as a float32 CPU tensor of shape [n]; ScoreError on a wrong shape, NaN or inf.

    Accepts a tensor, numpy array or list of numbers (what user callables tend to return). The
    message names the reward, the item index and what was wrong, never the text scored.
    """
    n = len(completions)
    try:
        out = torch.as_tensor(scores, dtype=torch.float32, device="cpu").detach()
    except (TypeError, ValueError, RuntimeError):
        raise ScoreError(
            f"reward {name!r} returned {_not_a_number(scores)}, not a list of numbers"
        ) from None
    if out.dim() != 1 or out.shape[0] != n:
        raise ScoreError(
            f"reward {name!r} returned scores of shape {tuple(out.shape)} for {n} completions "
            f"(expected shape ({n},))"
        )
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        value = float(out[i])
        kind = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        count = int(bad.sum())
        more = f" ({count} of {n} items non-finite)" if count > 1 else ""
        raise ScoreError(f"reward {name!r} returned {kind} for item {i}{more}")
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
        """float32 scores of shape [n] on the CPU, checked (see `check_scores`); anything
        ``_score`` raises becomes a ScoreError naming its type only (see `withheld`)."""
        check_inputs(self.name, prompts, completions)
        if len(completions) == 0:
            return torch.zeros(0, dtype=torch.float32)
        try:
            raw = self._score(prompts, completions)
        except ScoreError:
            raise
        except Exception as exc:
            raise withheld(self.name, exc, self._source()) from None
        return check_scores(self.name, raw, completions)

    def _source(self) -> str:
        """What to name, besides the reward, when its code raises (e.g. a user function)."""
        return ""

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
