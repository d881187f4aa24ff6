"""The server side of an algorithm: the Strategy hooks and the generic machinery they share.

    configure_round(round_index) -> client ids to train this round (default: seeded sample)
    aggregate_round(round_index, global_state, updates, failures) -> AggregateResult
    state_dict() / load_state_dict(state): server state kept across rounds (checkpointed)

Each algorithm (firm_ray/algorithms/) builds its Strategy; this module holds what they share.

``updates`` is an iterable consumed once, in client-id order (so the result does not depend on
which worker finished first), and may be a generator that fetches one update at a time: the
strategies stream it and keep one adapter-sized accumulator (M of them for fmgda), whatever
the number of clients. ``failures`` lists the clients left out (late, crashed, rejected).

`FedAvgStrategy` (firm, fedavg_ls, centralized, jd): theta^{t+1} = theta^t + eta_s * (sum_i
w_i theta_i - theta^t), w_i proportional to local sample counts (eta_s = 1 is FedAvg).

An update flagged invalid, and one whose client skipped every local step (it is theta^t itself:
averaging it in would only pull the mean back), is rejected with its reason and counts against
``federation.min_clients``. `local_step_counts` / `round_step_metrics` read the step counts
clients report (``steps``, ``skipped_steps``, ``skip_reasons``, ...) for the round metrics.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from firm_ray.config import FirmConfig
from firm_ray.core.aggregation import first_non_finite, server_update
from firm_ray.federation.combine import Combiner
from firm_ray.types import AdapterState, ClientUpdate


@dataclass
class AggregateResult:
    """The new global adapter and what the server learned while computing it."""

    state: AdapterState
    accepted: list[int]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class RoundFailed(RuntimeError):
    """Fewer than ``federation.min_clients`` usable updates came back."""


MAX_SKIP_REASONS = 3


def _count(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def local_step_counts(
    update: ClientUpdate, config: FirmConfig, trajectories: int | None = None
) -> tuple[float, float]:
    """(attempted, skipped) local steps of one client this round.

    ``steps`` is the trainer's own count (over all trajectories, e.g. fmgda's M). A trainer that
    reports only ``skipped_steps`` attempted ``federation.local_steps`` per trajectory (None:
    the algorithm's number of trajectories); an update with neither (a client that refused to
    train) attempted none.
    """
    skipped = _count(update.metrics.get("skipped_steps"))
    steps = _count(update.metrics.get("steps"))
    if steps is None and skipped is None:
        return 0.0, 0.0
    skipped = skipped or 0.0
    if steps is None:
        if trajectories is None:
            trajectories = config.algorithm.num_trajectories(config.num_objectives)
        steps = float(config.federation.local_steps * trajectories)
    return steps, min(skipped, steps)


def _reasons(update: ClientUpdate) -> list[str]:
    reasons = update.metrics.get("skip_reasons") or []
    return [str(r) for r in reasons] if isinstance(reasons, list) else []


def all_steps_skipped(
    update: ClientUpdate, config: FirmConfig, trajectories: int | None = None
) -> bool:
    """The client attempted local steps and skipped every one (its update is theta^t)."""
    steps, skipped = local_step_counts(update, config, trajectories)
    return steps > 0 and skipped >= steps


def round_step_metrics(updates: Iterable[ClientUpdate], config: FirmConfig) -> dict[str, Any]:
    """The round's step metrics over the clients that reported back (accepted or rejected).

    ``local_steps`` / ``skipped_steps`` are sums, ``skip_fraction`` their ratio (None without
    steps), ``skip_reasons`` the first distinct reasons in client-id order,
    ``truncated_fraction`` / ``importance_weight`` means over the clients reporting them, and
    ``skip_rejected_clients`` the clients left out because all their steps were skipped.
    """
    steps = skipped = 0.0
    reasons: list[str] = []
    truncated: list[float] = []
    importance: list[float] = []
    rejected = 0
    for update in sorted(updates, key=lambda u: u.client_id):
        attempted, missed = local_step_counts(update, config)
        steps, skipped = steps + attempted, skipped + missed
        rejected += all_steps_skipped(update, config)
        for reason in _reasons(update):
            if reason not in reasons and len(reasons) < MAX_SKIP_REASONS:
                reasons.append(reason)
        if (t := _count(update.metrics.get("truncated_fraction"))) is not None:
            truncated.append(t)
        if (w := _count(update.metrics.get("importance_weight"))) is not None:
            importance.append(w)
    return {
        "local_steps": round(steps),
        "skipped_steps": round(skipped),
        "skip_fraction": skipped / steps if steps > 0 else None,
        "skip_reasons": reasons,
        "truncated_fraction": sum(truncated) / len(truncated) if truncated else None,
        "importance_weight": sum(importance) / len(importance) if importance else None,
        "skip_rejected_clients": rejected,
    }


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> list[int]:
    """Seeded client selection, independent of everything but (seed, round)."""
    rng = random.Random(f"firm_ray/clients/{seed}/{round_index}")
    return sorted(rng.sample(range(num_clients), per_round))


class Strategy:
    """Base strategy: seeded client sampling and the server-side checks of every update.

    ``trajectories``: local trajectories per client (what a client that reports no step count
    attempted, ``federation.local_steps`` each)."""

    def __init__(self, config: FirmConfig, trajectories: int = 1) -> None:
        self.config = config
        self.trajectories = trajectories
        self.min_clients = config.federation.min_clients
        self.server_lr = config.algorithm.server_lr
        self.combiner = Combiner(config)  # mean | robust rule | DP mean (federation/combine.py)

    def state_dict(self) -> dict[str, Any]:
        """Server state kept across rounds (JSON-serializable; saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (on resume and aggregator recovery)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no server state, got {sorted(state)}")

    def configure_round(self, round_index: int) -> list[int]:
        """The clients that train in round ``round_index`` (sorted ids): seeded by
        (experiment.seed, round), ``federation.clients_per_round`` of them."""
        fed = self.config.federation
        return sample_clients(
            self.config.experiment.seed,
            round_index,
            fed.num_clients,
            fed.clients_sampled_per_round,
        )

    def aggregate_round(
        self,
        round_index: int,
        global_state: AdapterState,
        updates: Iterable[ClientUpdate],
        failures: list[dict[str, Any]],
    ) -> AggregateResult:
        raise NotImplementedError

    def _check(self, update: ClientUpdate, payloads: list[AdapterState] | None) -> str:
        """Why an update must be rejected ('' when it is fine).

        This is the one NaN/inf scan of an update (StreamingAverage.add is told to skip its
        own): every payload is scanned before any of them is averaged, so a client whose
        second fmgda delta is bad never half-updates the per-objective averages.
        """
        if not update.valid:
            return update.reason or "client flagged its update invalid"
        if all_steps_skipped(update, self.config, self.trajectories):
            steps, _ = local_step_counts(update, self.config, self.trajectories)
            first = next(iter(_reasons(update)), "no reason given")
            return f"all {steps:g} local steps skipped: {first}"
        if not payloads:
            return "no payload"
        if update.num_samples <= 0:
            return f"num_samples = {update.num_samples}"
        bad = first_non_finite(payloads[0])
        if bad:
            return f"non-finite tensor {bad!r}"
        bad = next(filter(None, (first_non_finite(d) for d in payloads[1:])), None)
        return f"non-finite delta tensor {bad!r}" if bad else ""

    def check_header(self, update: ClientUpdate) -> str:
        """Why an update must be rejected, judged from its tensor-free header alone ('' when
        it is fine): secure aggregation's server never sees the payload (it cannot check it
        for NaNs either; a client with non-finite values flags its update invalid)."""
        return self._check(update, [{}])

    def _screen(
        self,
        updates: Iterable[ClientUpdate],
        payloads_of: Callable[[ClientUpdate], list[AdapterState] | None],
        rejected: list[dict[str, Any]],
    ) -> Iterator[tuple[ClientUpdate, list[AdapterState]]]:
        """The usable updates with their payloads; the others go to ``rejected`` with why."""
        for update in updates:
            payloads = payloads_of(update)
            reason = self._check(update, payloads)
            if reason:
                rejected.append({"client": update.client_id, "reason": reason})
                continue
            assert payloads is not None
            yield update, payloads

    def _enough(self, accepted: list[int], rejected: list[dict], failures: list[dict]) -> None:
        if len(accepted) < self.min_clients:
            raise RoundFailed(
                f"only {len(accepted)} usable client update(s), federation.min_clients = "
                f"{self.min_clients}; left out: {[*failures, *rejected]}"
            )
        need = self.combiner.min_updates()
        if len(accepted) < need:
            rule = self.config.robustness.aggregator
            raise RoundFailed(
                f"only {len(accepted)} usable client update(s), robustness.aggregator {rule!r} "
                f"needs {need} (byzantine = {self.config.robustness.byzantine}); left out: "
                f"{[*failures, *rejected]}"
            )


class FedAvgStrategy(Strategy):
    """Sample-weighted average of client adapters (firm, fedavg_ls, centralized, jd)."""

    def aggregate_round(
        self,
        round_index: int,
        global_state: AdapterState,
        updates: Iterable[ClientUpdate],
        failures: list[dict[str, Any]],
    ) -> AggregateResult:
        combine = self.combiner.round(round_index)
        average = combine.average(0, global_state)
        accepted: list[int] = []
        rejected: list[dict[str, Any]] = []
        adapters = self._screen(
            updates, lambda u: [u.adapter] if u.adapter is not None else None, rejected
        )
        for update, payloads in adapters:
            (adapter,) = combine.admit(update, payloads, global_state)
            average.add(adapter, float(update.num_samples), update.client_id)
            accepted.append(update.client_id)
        self._enough(accepted, rejected, failures)
        state = server_update(global_state, average.result(), self.server_lr)
        metrics = {"aggregation": combine.finish(len(accepted))}
        return AggregateResult(state=state, accepted=accepted, rejected=rejected, metrics=metrics)
