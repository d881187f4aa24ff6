"""How the server combines a round's accepted uploads: the one place that knows the rule.

- ``robustness.aggregator: mean`` without DP: FedAvg's sample-weighted mean, streamed
  (`StreamingAverage`, memory of one adapter), exactly as before this module existed.
- a robust rule (core/robust.py): every accepted delta theta_i - theta^t is kept (k adapters in
  memory), then trimmed mean, coordinate median, (Multi-)Krum or norm bounding.
- ``privacy.secure_aggregation``: the same DP mean on the sum that secure aggregation
  delivered (`Combiner.set_secure_sums`); the uploads the strategy streams are placeholders,
  so the server cannot re-check the clients' clipping.
- ``privacy.clip`` set: DP-FedAvg (McMahan et al. 2018). Clients clip their deltas to C
  (trainer/client_upload.py); the server checks the bound again (an update above it is scaled
  down and counted), sums the deltas with uniform weights, divides by the fixed number k of
  clients sampled per round and adds N(0, (sigma C / k)^2) per coordinate (central noise;
  distributed noise was added by the clients). Adaptive clipping (Andrew et al. 2021) moves C
  each round from the clients' noisy count of unclipped updates.

One `Combiner` per run keeps what lasts across rounds (adaptive C; checkpointed through
`state_dict`); `Combiner.round` gives the per-round object the strategies feed: one average
per stream (fmgda: one per objective). The strategies stay rule-agnostic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from firm_ray.config import FirmConfig
from firm_ray.config.privacy import count_noise_std
from firm_ray.core.aggregation import StreamingAverage, state_delta
from firm_ray.core.robust import min_clients, robust_aggregate, stack_states, unstack
from firm_ray.privacy import (
    AdaptiveClip,
    clip_joint,
    gaussian_like,
    joint_norm,
    noise_generator,
    update_noise_multiplier,
)
from firm_ray.types import AdapterState, ClientUpdate

CLIP_TOLERANCE = 1e-5  # relative slack of the server's check of the clients' clipping
UNCLIPPED_KEY = "dp_unclipped"  # the client's bit for adaptive clipping: ||delta|| <= C


class Average(Protocol):
    def add(self, state: AdapterState, weight: float, client: int) -> None: ...

    def result(self) -> AdapterState: ...


class _Mean:
    """FedAvg: the streamed sample-weighted mean of the payloads themselves (unchanged)."""

    def __init__(self) -> None:
        self.average = StreamingAverage()

    def add(self, state: AdapterState, weight: float, client: int) -> None:
        self.average.add(state, weight, check_finite=False)  # the strategy scanned it

    def result(self) -> AdapterState:
        return self.average.result()


def _plus(reference: AdapterState | None, delta: dict[str, torch.Tensor]) -> AdapterState:
    """reference + delta in the reference's dtypes (delta itself when there is no reference)."""
    if reference is None:
        return delta
    return {k: (reference[k].to(delta[k].dtype) + delta[k]).to(reference[k].dtype) for k in delta}


def _delta(state: AdapterState, reference: AdapterState | None) -> dict[str, torch.Tensor]:
    return state_delta(state, reference) if reference is not None else dict(state)


class _Robust:
    """A robust rule over the deltas of every accepted update (all held at once)."""

    def __init__(self, config: FirmConfig, reference: AdapterState | None) -> None:
        self.cfg = config.robustness
        self.reference = reference
        self.deltas: list[dict[str, torch.Tensor]] = []
        self.weights: list[float] = []
        self.clients: list[int] = []
        self.info: dict[str, Any] = {}

    def add(self, state: AdapterState, weight: float, client: int) -> None:
        self.deltas.append(_delta(state, self.reference))
        self.weights.append(weight)
        self.clients.append(client)

    def result(self) -> AdapterState:
        cfg = self.cfg
        x, layout = stack_states(self.deltas)
        out = robust_aggregate(
            cfg.aggregator,
            x,
            torch.tensor(self.weights, dtype=x.dtype),
            trim_fraction=cfg.trim_fraction,
            f=cfg.byzantine,
            m=cfg.multi_krum_m,
            bound=cfg.norm_bound,
        )
        self.info = {
            "selected": None if out.selected is None else [self.clients[i] for i in out.selected],
            "clipped": out.clipped,
            "trimmed": out.trimmed,
        }
        return _plus(self.reference, unstack(out.vector, layout))


class _DpMean:
    """DP-FedAvg's estimator: (sum of clipped deltas + N(0, std^2)) / k, k fixed."""

    def __init__(
        self, reference: AdapterState | None, k: int, std: float, generator: torch.Generator
    ) -> None:
        self.reference, self.k, self.std, self.generator = reference, k, std, generator
        self.sum: dict[str, torch.Tensor] | None = None

    def add(self, state: AdapterState, weight: float, client: int) -> None:
        delta = _delta(state, self.reference)  # weights are uniform: sample counts are private
        if self.sum is None:
            # a copy: the delta may be a view of a read-only payload (fmgda's uploaded deltas)
            self.sum = {
                k: v.to(torch.float64 if v.dtype == torch.float64 else torch.float32, copy=True)
                for k, v in delta.items()
            }
        else:
            for name, acc in self.sum.items():
                acc.add_(delta[name].to(acc.dtype))

    def result(self) -> AdapterState:
        assert self.sum is not None, "no update was added"
        mean = {name: acc / self.k for name, acc in self.sum.items()}
        if self.std > 0:  # std is the sum's: the average's is std / k
            noise = gaussian_like(mean, self.std / self.k, self.generator)
            mean = {name: v + noise[name].to(v.dtype) for name, v in mean.items()}
        return _plus(self.reference, mean)


class _SecureMean(_DpMean):
    """DP-FedAvg's estimator on the sum of the clipped deltas as secure aggregation delivered
    it: the server never holds an individual update, so ``add`` takes none."""

    def __init__(
        self,
        reference: AdapterState | None,
        k: int,
        std: float,
        generator: torch.Generator,
        total: dict[str, torch.Tensor],
    ) -> None:
        super().__init__(reference, k, std, generator)
        self.sum = total

    def add(self, state: AdapterState, weight: float, client: int) -> None:
        pass  # the client's contribution is inside ``total`` already


class RoundCombiner:
    """One round's combination: ``admit`` each accepted update, ``average(stream)`` for each
    payload stream, ``finish`` for the round's metrics (and adaptive clipping's step)."""

    def __init__(self, owner: Combiner, round_index: int) -> None:
        self.owner, self.round = owner, round_index
        self.averages: list[Any] = []
        self.server_clipped: list[int] = []
        self.unclipped = 0
        self.reported = 0
        self.secure_sums, owner.secure_sums = owner.secure_sums, None

    def admit(
        self, update: ClientUpdate, payloads: list[AdapterState], reference: AdapterState | None
    ) -> list[AdapterState]:
        """The payloads to average. Under DP with central noise the server checks that the
        client's whole delta is within C (scaled down and counted when not: a buggy or
        malicious client); it reads the adaptive-clipping bit in every DP mode."""
        clip = self.owner.clip
        if clip is None:
            return payloads
        bit = update.metrics.get(UNCLIPPED_KEY)
        if isinstance(bit, (int, float)) and not isinstance(bit, bool):
            self.unclipped += int(bit >= 0.5)
            self.reported += 1
        if self.secure_sums is not None:
            return payloads  # placeholders: only the masked sum exists (no check possible)
        if self.owner.instructions().get("local_noise_std"):
            # distributed noise: the client's own noise lies on top of its clipped delta, so
            # the norm says nothing about the clipping (scaling it down would also shrink the
            # noise the accounting relies on); the clip is the client's, as under SecAgg
            return payloads
        deltas = [_delta(p, reference) for p in payloads]
        if joint_norm(deltas) <= clip * (1 + CLIP_TOLERANCE):
            return payloads
        self.server_clipped.append(update.client_id)
        clipped, _, _ = clip_joint(deltas, clip)
        return [_plus(reference, d) for d in clipped]

    def average(self, stream: int, reference: AdapterState | None) -> Average:
        """A fresh average for payload stream ``stream`` (deltas of ``reference``; None: the
        payloads are deltas already)."""
        owner = self.owner
        if owner.clip is not None:
            std = owner.central_noise_std()
            generator = noise_generator(owner.noise_seed, "dp_noise", self.round, stream)
            if self.secure_sums is not None:
                total = self.secure_sums[stream]
                average: Any = _SecureMean(reference, owner.k, std, generator, total)
            else:
                average = _DpMean(reference, owner.k, std, generator)
        elif owner.rule != "mean":
            average = _Robust(owner.config, reference)
        else:
            average = _Mean()
        self.averages.append(average)
        return average

    def finish(self, accepted: int) -> dict[str, Any]:
        """The round's aggregation metrics; under adaptive clipping, C moves for the next round
        (from the clients' bits, with the count noise)."""
        owner = self.owner
        metrics: dict[str, Any] = {"rule": owner.rule if owner.clip is None else "dp_mean"}
        robust = [a.info for a in self.averages if isinstance(a, _Robust)]
        if robust:
            metrics["robust"] = robust[0] if len(robust) == 1 else robust
        if owner.clip is not None:
            metrics["clip"] = owner.clip
            metrics["noise_std"] = owner.central_noise_std() / owner.k
            metrics["server_clipped"] = self.server_clipped
            if owner.adaptive is not None:
                if self.reported < accepted:
                    metrics["unclipped_reports_missing"] = accepted - self.reported
                generator = noise_generator(owner.noise_seed, "dp_count", self.round)
                metrics["next_clip"] = owner.adaptive.update(self.unclipped, owner.k, generator)
        return metrics


class Combiner:
    """The run's combination rule and its state across rounds."""

    def __init__(self, config: FirmConfig) -> None:
        self.config = config
        self.rule = config.robustness.aggregator
        self.k = config.federation.clients_sampled_per_round
        p = config.privacy
        self.noise_seed = None if p.secure_noise else config.experiment.seed
        self.adaptive: AdaptiveClip | None = None
        self.noise_multiplier = p.noise_multiplier
        if p.enabled and p.adaptive_clip:
            sigma_b = count_noise_std(p, self.k)
            assert p.clip is not None
            self.adaptive = AdaptiveClip(p.clip, p.target_quantile, p.clip_learning_rate, sigma_b)
            if p.noise_multiplier > 0:
                self.noise_multiplier = update_noise_multiplier(p.noise_multiplier, sigma_b)
        self._fixed_clip = p.clip
        self.secure_sums: list[dict[str, torch.Tensor]] | None = None

    def set_secure_sums(self, sums: list[dict[str, torch.Tensor]]) -> None:
        """Secure aggregation: the next `round` averages these sums of the clipped deltas
        (one per payload stream) instead of the uploads it is fed (placeholders)."""
        if self.clip is None:
            raise ValueError("secure aggregation needs privacy.clip")
        self.secure_sums = sums

    @property
    def clip(self) -> float | None:
        """C this round (None: no DP)."""
        return self.adaptive.clip if self.adaptive is not None else self._fixed_clip

    def central_noise_std(self) -> float:
        """The std the server adds to the SUM of the clipped deltas (0 with distributed noise)."""
        if self.clip is None or self.config.privacy.noise != "central":
            return 0.0
        return self.noise_multiplier * self.clip

    def instructions(self) -> dict[str, float]:
        """What every client of the round is told beside theta^t: the clip norm and its own
        noise std (distributed noise: sigma C / sqrt(k), so the k noisy deltas sum to sigma C)."""
        if self.clip is None:
            return {}
        local = 0.0
        if self.config.privacy.noise == "distributed":
            local = self.noise_multiplier * self.clip / math.sqrt(self.k)
        return {"clip": self.clip, "local_noise_std": local}

    def min_updates(self) -> int:
        """The fewest accepted updates the rule accepts."""
        return min_clients(self.rule, self.config.robustness.byzantine)

    def round(self, round_index: int) -> RoundCombiner:
        return RoundCombiner(self, round_index)

    def state_dict(self) -> dict[str, Any]:
        return {"adaptive_clip": self.adaptive.state_dict()} if self.adaptive is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adaptive is not None and state.get("adaptive_clip"):
            self.adaptive.load_state_dict(state["adaptive_clip"])


__all__: Sequence[str] = ("UNCLIPPED_KEY", "Average", "Combiner", "RoundCombiner")
