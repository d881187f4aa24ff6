"""Per-objective reward normalization with running statistics.

Why: objectives arrive on unrelated scales (cosine relevance mostly in [0, 0.6], harmlessness in
[0, 1], a reward model's logits anywhere). Advantages inherit those scales and so do the
per-objective gradients, whose norms drive the min-norm (FIRM/MGDA) weights. ``normalize: true``
maps an objective to roughly zero mean and unit variance: ``(r - mean) / (std + 1e-8)``.

Design choices:

- The statistics include the current batch (updated before normalizing), so the first batch is
  already well scaled and the output is a pure function of (stored statistics, batch).
- Batches are merged with Chan et al.'s parallel form of Welford's algorithm in float64: exact
  for any batching (the result equals numpy's mean/std, ddof=0, of all scores seen so far) and
  stable over millions of scores.
- The statistics are *client state*, not worker state: a Ray worker may serve different clients
  in different rounds, so statistics kept in the worker would mix clients and make results depend
  on scheduling. The runtime saves `state_dict()` with a client's state after its round and loads
  it before the client's next one; checkpoints resume exactly for the same reason.
- Every ``score`` call updates the statistics. Evaluation should report raw rewards, scored with
  ``reward.inner``, so that held-out prompts neither move nor are moved by training statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from firm_ray.rewards.base import Reward, RewardError, Scorer, check_scores

__all__ = ["EPS", "NormalizedReward", "RunningMeanStd"]

EPS = 1e-8


class RunningMeanStd:
    """Running count, mean and sum of squared deviations (M2) of a scalar stream, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def var(self) -> float:
        """Population variance (ddof=0) of everything seen; 0 before any data."""
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, values: torch.Tensor) -> None:
        """Merge a batch (Chan et al.): exact for any split of the stream into batches."""
        x = values.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        n_b = int(x.numel())
        if n_b == 0:
            return
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"count", "mean", "m2"}:
            raise RewardError(
                f"normalization state must have keys count, mean, m2; got {sorted(state)}"
            )
        count, mean, m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
        if count < 0 or m2 < 0 or not (math.isfinite(mean) and math.isfinite(m2)):
            raise RewardError(f"invalid normalization state {state!r}")
        self.count, self.mean, self.m2 = count, mean, m2


class NormalizedReward(Reward):
    """Wraps a reward: updates the running statistics with each batch, then standardizes it."""

    def __init__(self, inner: Scorer) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.stats = RunningMeanStd()

    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        raw = check_scores(self.name, self.inner.score(prompts, completions), completions)
        self.stats.update(raw)
        out = (raw.double() - self.stats.mean) / (self.stats.std + EPS)
        return out.float()

    def state_dict(self) -> dict[str, Any]:
        """The running statistics, as plain Python numbers (picklable, JSON-serializable)."""
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)

    def __repr__(self) -> str:
        return f"NormalizedReward({self.inner!r})"
