"""A user's ``python`` reward that breaks on part of the training data, for
test_broken_reward_run.py (Ray workers import it by its dotted path, ``broken_rewards.score``).

Held-out eval prompts are always scored (a word count), so the run gets past its evaluations;
a training prompt selected by ``every`` (crc32 of its text, modulo) makes the reward return
NaN for its completions (``mode="nan"``) or raise an error that quotes a completion
(``mode="raise"``): the two ways a buggy reward fails.
"""

from __future__ import annotations

import functools
import math
import zlib

from firm_ray.config import DataConfig
from firm_ray.data.sources import load_prompts

SECRET = "SECRET-COMPLETION-TEXT"
"""Put into the raised error's message next to the completion: it must never leave a client."""


@functools.cache
def eval_texts(seed: int) -> frozenset[str]:
    """The built-in world's held-out prompts for ``seed`` (the run's own split)."""
    return frozenset(p.text for p in load_prompts(DataConfig(), seed).eval)


def broken(prompt: str, seed: int, every: int) -> bool:
    return prompt not in eval_texts(seed) and zlib.crc32(prompt.encode()) % every == 0


def score(
    prompts: list[str], completions: list[str], mode: str = "nan", every: int = 1, seed: int = 0
) -> list[float]:
    if mode == "raise" and any(broken(p, seed, every) for p in prompts):
        raise ValueError(f"{SECRET}: cannot score {completions[0]!r}")
    return [
        math.nan if mode == "nan" and broken(p, seed, every) else min(1.0, len(c.split()) / 12)
        for p, c in zip(prompts, completions, strict=True)
    ]
