"""Reward functions, one per objective: ``reward.score(prompts, completions) -> [n]`` scores.

Usage::

    from firm_ray.config import load_config
    from firm_ray.rewards import build_rewards, score_all

    rewards = build_rewards(load_config(None).rewards, device="cpu")  # once per worker
    scores = score_all(rewards, prompts, completions)                  # [n, M] float32

Types (``RewardSpec.type``) and their ``kwargs``:

- ``relevance``: cosine of MiniLM prompt/completion embeddings, [-1, 1];
  model (sentence-transformers dir or id), batch_size=64, device.
- ``harmlessness``: 1 - P(offensive) from alt-profanity-check, [0, 1].
- ``sentiment``: VADER compound score, [-1, 1].
- ``length``: min(1, words / target_words), target_words=12.
- ``conciseness``: max(0, 1 - words / max_words), max_words=32.
- ``hf_reward_model``: a sequence classifier's logit; model (required), tokenizer,
  format (chat_template | concat | pair), separator, batch_size=16, device, max_length=512,
  label_index, dtype (float32 | bfloat16 | float16 | auto), revision, trust_remote_code.
- ``python``: function ("pkg.mod.func" or "pkg.mod:func"); other kwargs go to the function.

``normalize: true`` wraps a reward in running mean/std standardization (see
`firm_ray.rewards.normalize`); its statistics are client state (``state_dict``).

Heavy packages (sentence-transformers, transformers, scikit-learn) are imported by the builders,
not here, and loaded models are cached per process, so building rewards again is cheap.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from firm_ray.config import RewardSpec
from firm_ray.rewards.base import (
    Reward,
    RewardError,
    ScoreError,
    Scorer,
    check_inputs,
    check_scores,
    withheld,
)
from firm_ray.rewards.normalize import NormalizedReward, RunningMeanStd

__all__ = [
    "REGISTRY",
    "NormalizedReward",
    "Reward",
    "RewardError",
    "RunningMeanStd",
    "ScoreError",
    "Scorer",
    "build_reward",
    "build_rewards",
    "check_scores",
    "score_all",
]


# --------------------------------------------------------------------------- kwarg checks


def _pos_int(name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RewardError(f"reward {name!r}: kwargs.{key} = {value!r}: must be an integer >= 1")
    return value


def _str(name: str, key: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        what = "a non-empty string" + (" or null" if optional else "")
        raise RewardError(f"reward {name!r}: kwargs.{key} = {value!r}: must be {what}")
    return value


# --------------------------------------------------------------------------- factories
# Keyword-only parameters of a factory are exactly the kwargs its type accepts (checked by
# build_reward); ``device`` is filled from build_reward's argument when the spec has none.


def _relevance(
    name: str, /, *, model: str | None = None, batch_size: int = 64, device: str = "cpu"
) -> Reward:
    from firm_ray.rewards.relevance import RelevanceReward

    return RelevanceReward(
        name,
        model=_str(name, "model", model, optional=True),
        batch_size=_pos_int(name, "batch_size", batch_size),
        device=str(_str(name, "device", device)),
    )


def _harmlessness(name: str, /) -> Reward:
    from firm_ray.rewards.lexical import HarmlessnessReward

    return HarmlessnessReward(name)


def _sentiment(name: str, /) -> Reward:
    from firm_ray.rewards.lexical import SentimentReward

    return SentimentReward(name)


def _length(name: str, /, *, target_words: int = 12) -> Reward:
    from firm_ray.rewards.lexical import LengthReward

    return LengthReward(name, "length", _pos_int(name, "target_words", target_words))


def _conciseness(name: str, /, *, max_words: int = 32) -> Reward:
    from firm_ray.rewards.lexical import LengthReward

    return LengthReward(name, "conciseness", _pos_int(name, "max_words", max_words))


def _hf_reward_model(
    name: str,
    /,
    *,
    model: str,
    tokenizer: str | None = None,
    format: str = "chat_template",
    separator: str = "\n",
    batch_size: int = 16,
    device: str = "cpu",
    max_length: int = 512,
    label_index: int | None = None,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Reward:
    from firm_ray.rewards.hf import HFRewardModel

    if label_index is not None and (
        isinstance(label_index, bool) or not isinstance(label_index, int)
    ):
        raise RewardError(
            f"reward {name!r}: kwargs.label_index = {label_index!r}: must be an integer or null"
        )
    if not isinstance(separator, str):
        raise RewardError(f"reward {name!r}: kwargs.separator = {separator!r}: must be a string")
    if not isinstance(trust_remote_code, bool):
        raise RewardError(
            f"reward {name!r}: kwargs.trust_remote_code = {trust_remote_code!r}: must be a boolean"
        )
    return HFRewardModel(
        name,
        model=str(_str(name, "model", model)),
        tokenizer=_str(name, "tokenizer", tokenizer, optional=True),
        format=str(_str(name, "format", format)),
        separator=separator,
        batch_size=_pos_int(name, "batch_size", batch_size),
        device=str(_str(name, "device", device)),
        max_length=_pos_int(name, "max_length", max_length),
        label_index=label_index,
        dtype=str(_str(name, "dtype", dtype)),
        revision=_str(name, "revision", revision, optional=True),
        trust_remote_code=trust_remote_code,
    )


def _python(name: str, /, *, function: str, **kwargs: Any) -> Reward:
    from firm_ray.rewards.custom import PythonReward

    return PythonReward(name, function, **kwargs)


REGISTRY: dict[str, Callable[..., Reward]] = {
    "relevance": _relevance,
    "harmlessness": _harmlessness,
    "sentiment": _sentiment,
    "length": _length,
    "conciseness": _conciseness,
    "hf_reward_model": _hf_reward_model,
    "python": _python,
}
"""Reward type name -> factory ``(name, **kwargs) -> Reward``."""


# --------------------------------------------------------------------------- public API


def build_reward(spec: RewardSpec | Mapping[str, Any], device: str | None = None) -> Reward:
    """The reward described by one config entry (wrapped in normalization if asked).

    ``device`` is where model-based rewards run when the spec's kwargs name none (the worker's
    device); an explicit ``kwargs.device`` wins. RewardError names the reward and the problem.
    """
    if not isinstance(spec, RewardSpec):
        spec = RewardSpec.model_validate(dict(spec))
    if spec.type not in REGISTRY:
        raise RewardError(
            f"reward {spec.name!r}: unknown type {spec.type!r}; known: {', '.join(REGISTRY)}"
        )
    factory = REGISTRY[spec.type]
    params = list(inspect.signature(factory).parameters.values())[1:]
    allowed = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    kwargs = dict(spec.kwargs)
    if not open_ended:
        for key in kwargs:
            if key not in allowed:
                raise RewardError(
                    f"reward {spec.name!r} ({spec.type}): unknown kwarg {key!r}; allowed: "
                    + (", ".join(allowed) if allowed else "none")
                )
    required = [p.name for p in params if p.name in allowed and p.default is p.empty]
    for key in required:
        if key not in kwargs:
            raise RewardError(f"reward {spec.name!r} ({spec.type}): kwargs.{key} is required")
    if "device" in allowed and "device" not in kwargs and device is not None:
        kwargs["device"] = str(device)
    reward = factory(spec.name, **kwargs)
    return NormalizedReward(reward) if spec.normalize else reward


def build_rewards(
    specs: Sequence[RewardSpec | Mapping[str, Any]], device: str | None = None
) -> list[Reward]:
    """One reward per spec, in order (the objective order of the FIRM solver)."""
    rewards = [build_reward(spec, device=device) for spec in specs]
    names = [r.name for r in rewards]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RewardError(f"duplicate reward names: {', '.join(duplicates)}")
    return rewards


def score_all(
    rewards: Sequence[Scorer], prompts: Sequence[str], completions: Sequence[str]
) -> torch.Tensor:
    """Scores of every reward as a float32 [n, M] tensor (column m = rewards[m]), checked.

    Any exception a reward raises becomes a ScoreError (a RewardError) naming the reward and
    the exception's type, its message withheld and the chain cut (``from None``): the message
    may quote a prompt or completion, and this error leaves the client (skip reasons, errors on
    the driver). firm_ray's own checks (ScoreError) pass through: they quote no text.
    """
    columns = []
    for reward in rewards:
        check_inputs(reward.name, prompts, completions)
        try:
            raw = reward.score(prompts, completions)
        except ScoreError:
            raise
        except Exception as exc:
            raise withheld(reward.name, exc) from None
        columns.append(check_scores(reward.name, raw, completions))
    if not columns:
        return torch.zeros(len(completions), 0, dtype=torch.float32)
    return torch.stack(columns, dim=1)
