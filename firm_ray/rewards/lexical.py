"""Cheap, model-free or tiny-model rewards: harmlessness, sentiment, length, conciseness.

These run on the CPU in microseconds to milliseconds per batch and need no device. Their
packages (scikit-learn via alt-profanity-check, vaderSentiment) are imported on first build, so
``import firm_ray.rewards`` stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from firm_ray.rewards.base import Reward

__all__ = ["HarmlessnessReward", "LengthReward", "SentimentReward"]


@functools.lru_cache(maxsize=1)
def _profanity_prob() -> Any:
    """alt-profanity-check's predict_prob (its sklearn model loads at import, about 1 s)."""
    from profanity_check import predict_prob

    return predict_prob


@functools.lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class HarmlessnessReward(Reward):
    """1 - P(offensive) of the completion (alt-profanity-check's linear SVM). In [0, 1]."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._predict_prob = _profanity_prob()

    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        prob = self._predict_prob(list(completions))
        return 1.0 - torch.as_tensor(prob, dtype=torch.float64)


class SentimentReward(Reward):
    """VADER compound sentiment of the completion. In [-1, 1]."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._analyzer = _vader()

    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        cache: dict[str, float] = {}  # G samples of one prompt often repeat a completion
        for text in completions:
            if text not in cache:
                cache[text] = self._analyzer.polarity_scores(text)["compound"]
        return [cache[text] for text in completions]


class LengthReward(Reward):
    """Word-count rewards (words = whitespace split), in [0, 1].

    ``mode="length"``: min(1, n / target) rewards reaching a target length;
    ``mode="conciseness"``: max(0, 1 - n / target) rewards brevity. Together they conflict.
    """

    def __init__(self, name: str, mode: str, target: int) -> None:
        super().__init__(name)
        if mode not in ("length", "conciseness"):
            raise ValueError(f"mode must be 'length' or 'conciseness', not {mode!r}")
        self.mode = mode
        self.target = target

    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        words = torch.tensor([len(c.split()) for c in completions], dtype=torch.float64)
        ratio = words / self.target
        if self.mode == "length":
            return ratio.clamp(max=1.0)
        return (1.0 - ratio).clamp(min=0.0)
