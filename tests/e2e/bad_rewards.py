"""User ``python`` rewards broken on every input, for test_bad_input.py: Ray workers import
them by dotted path (``bad_rewards.nan_everywhere``), so they fail at the run's initial
evaluation, which only a worker can reach (the pre-flight imports a reward but never calls it)."""

from __future__ import annotations

import math

SECRET = "SECRET-COMPLETION-TEXT"
"""Put into a raised error's message with a completion: it must never reach the console."""


def nan_everywhere(prompts: list[str], completions: list[str]) -> list[float]:
    return [math.nan] * len(completions)


def wrong_length(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.0] * (len(completions) + 1)


def raises(prompts: list[str], completions: list[str]) -> list[float]:
    raise ValueError(f"{SECRET}: cannot score {completions[0]!r}")
