"""The metrics row of one round (a metrics.jsonl line; schema in docs/ARTIFACTS.md), assembled
from what the round produced: the aggregator's result, the evaluation, timings and faults.

Pure bookkeeping, no Ray calls: runtime/rounds.py runs the round and hands its pieces here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firm_ray.config import FirmConfig
from firm_ray.federation.attacks import attackers
from firm_ray.runtime.aggregator import process_rss_mb
from firm_ray.runtime.privacy_budget import epsilon_after

# client-side phases (seconds summed over the accepted clients) in a row's ``timing``
CLIENT_PHASES = ("generate", "score", "forward", "backward", "solve", "step")


def client_phase_seconds(
    client_metrics: dict[str, dict[str, Any]], accepted: Sequence[str]
) -> dict[str, float | None]:
    """Seconds of each client phase summed over the accepted clients; None for a phase no
    client reported (under DP every phase is withheld: a 0 would read as a measurement)."""
    out: dict[str, float | None] = {}
    for key in CLIENT_PHASES:
        values = [
            client_metrics[c][f"time_{key}"] for c in accepted if f"time_{key}" in client_metrics[c]
        ]
        out[key] = sum(values) if values else None
    return out


def round_row(
    config: FirmConfig,
    round_index: int,
    *,
    clients: Sequence[int],
    delivered: Sequence[int],
    broadcast_bytes: int,
    failures: list[dict[str, Any]],
    steps: dict[str, Any],
    server: dict[str, Any],
    evaluation: dict[str, Any] | None,
    round_wall: float,
    faults: dict[str, Any],
) -> dict[str, Any]:
    """The row of round ``round_index``.

    ``delivered``: the sampled clients whose update reached the driver (each was sent
    ``broadcast_bytes``); ``failures``: those left out before aggregation; ``server``: the
    aggregator's metrics (accepted / rejected clients, lambdas, drift, update conflict ...);
    ``evaluation``: the worker's evaluation of the new global adapter, None when the round was
    not evaluated; ``round_wall``: seconds from dispatch to the end of the evaluation.
    """
    client_metrics = server["client_metrics"]
    accepted = [str(c) for c in server["accepted"]]
    timing: dict[str, float | None] = client_phase_seconds(client_metrics, accepted)
    eval_seconds = evaluation["seconds"] if evaluation else 0.0
    busiest = busiest_worker_seconds(client_metrics)
    timing.update(
        aggregation=server["aggregation_seconds"],
        evaluation=eval_seconds,
        round_wall=round_wall,
        orchestration_overhead=max(
            0.0, round_wall - busiest - server["aggregation_seconds"] - eval_seconds
        ),
    )
    train_rewards = [
        client_metrics[c]["rewards"] for c in accepted if "rewards" in client_metrics[c]
    ]
    return {
        "round": round_index,
        "rewards": evaluation["rewards"] if evaluation else None,
        "reward_names": [r.name for r in config.rewards],
        "rewards_by_category": evaluation["rewards_by_category"] if evaluation else None,
        "kl": evaluation["kl"] if evaluation else None,
        "client_lambdas": server["client_lambdas"],
        # mean per-objective gradient norms of each client's steps (first PPO epoch, before
        # algorithm.grad_norm): unequal norms are what let FIRM's beta matter
        "client_grad_norms": {c: client_metrics[c].get("objective_grad_norms") for c in accepted},
        "disagreement": server["disagreement"],
        "param_drift": server["param_drift"],
        "bytes_up": server["bytes_up"],
        "bytes_down": {str(c): broadcast_bytes for c in delivered},
        "clients": list(clients),
        "failed": failures + server["rejected"],
        "train_rewards": [sum(col) / len(col) for col in zip(*train_rewards, strict=True)]
        if train_rewards
        else None,
        "server": server["server"],
        "timing": timing,
        "faults": faults,
        **steps,
        "memory": {
            "driverprocess_rss_mb": process_rss_mb(),
            "aggregatorprocess_rss_mb": server["rss_mb"],
        },
        # cross-algorithm metrics (issue 15): the aggregator's update conflict (None until it
        # reports it) and the evaluation's Pareto stationarity (None when not evaluated)
        "update_cosine": server.get("update_cosine"),
        "update_coherence": server.get("update_coherence"),
        "pareto_stationarity": evaluation.get("pareto_stationarity") if evaluation else None,
        # issue 16: DP (epsilon so far, clip, server-side clipping) and robust aggregation /
        # attacks; None when off
        "privacy": privacy_row(config, round_index, server["server"].get("aggregation") or {}),
        "robustness": robustness_row(config, clients, server["server"].get("aggregation") or {}),
    }


def privacy_row(config: FirmConfig, round_index: int, aggregation: dict) -> dict | None:
    """epsilon after this round (at privacy.delta), the clip norm used, the noise std of the
    average, the clients the server had to clip and (adaptive) the next round's clip."""
    if not config.privacy.enabled:
        return None
    return {
        "epsilon": epsilon_after(config, round_index + 1),
        "delta": config.privacy.delta,
        "clip": aggregation.get("clip"),
        "noise_std": aggregation.get("noise_std"),
        "server_clipped": aggregation.get("server_clipped", []),
        "next_clip": aggregation.get("next_clip"),
        # secure aggregation (None when off): bytes per client and message, seconds, clipped
        # coordinates of the fixed-point encoding, t, the clients dropped mid-protocol
        **(aggregation.get("secagg") or {}),
    }


def robustness_row(config: FirmConfig, clients: Sequence[int], aggregation: dict) -> dict | None:
    """The aggregation rule and what it did (Krum's choice, norm_bound's clipped count), and
    the malicious clients among this round's (attack experiments)."""
    r = config.robustness
    if r.aggregator == "mean" and r.attack.kind is None:
        return None
    row: dict[str, Any] = {"aggregator": r.aggregator, **(aggregation.get("robust") or {})}
    if r.attack.kind is not None:
        seed = r.attack.seed if r.attack.seed is not None else config.experiment.seed
        bad = attackers(config.federation.num_clients, r.attack.fraction, seed)
        row["attack"] = r.attack.kind
        row["attackers"] = [c for c in clients if c in bad]
    return row


def busiest_worker_seconds(client_metrics: dict[str, dict[str, Any]]) -> float:
    """Task seconds of the worker that worked longest this round (the round's critical path
    on the client side)."""
    per_worker: dict[float, float] = {}
    for m in client_metrics.values():
        per_worker[m.get("worker", 0.0)] = per_worker.get(m.get("worker", 0.0), 0.0) + m.get(
            "task_seconds", 0.0
        )
    return max(per_worker.values(), default=0.0)
