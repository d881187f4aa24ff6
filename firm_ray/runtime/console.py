"""What a run prints: one line per round (rewards, KL, lambdas, disagreement, drift, clients,
time, skipped steps, faults), the clients left out, and how to continue after a signal.

Every line is printed with ``markup=False``: reasons and paths are data, never rich markup.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import Any

from rich.console import Console

from firm_ray.config import FirmConfig
from firm_ray.runtime.aggregator import latest_checkpoint

MAX_FAILURES_SHOWN = 5  # left-out clients printed per round (all of them are in the row)


def print_round(console: Console, config: FirmConfig, row: dict[str, Any]) -> None:
    """The round's line, then its fault events and (at most MAX_FAILURES_SHOWN) left-out
    clients; ``row`` is the round's metrics row (runtime/round_row.py)."""
    names = row["reward_names"]
    rewards = row["rewards"]
    reward_text = (
        ", ".join(f"{n} {v:.3f}" for n, v in zip(names, rewards, strict=True))
        if rewards
        else "(not evaluated)"
    )
    lambdas = [v for v in row["client_lambdas"].values() if v]
    mean_lam = (
        "[" + ", ".join(f"{sum(c) / len(c):.2f}" for c in zip(*lambdas, strict=True)) + "]"
        if lambdas
        else "-"
    )
    dis = row["disagreement"]
    kl = "-" if row["kl"] is None else f"{row['kl']:.3f}"
    dis_text = "-" if dis is None else f"{dis:.3f}"
    stationarity = row.get("pareto_stationarity")
    stationarity_text = "" if stationarity is None else f" | stationarity {stationarity:.3g}"
    ok = len(row["clients"]) - len(row["failed"])
    skipped = row.get("skipped_steps") or 0
    reasons = row.get("skip_reasons") or ["no reason given"]
    skip_text = f" | skipped {skipped}/{row['local_steps']}: {reasons[0]}" if skipped else ""
    faults = row.get("faults") or {}
    restarts = faults.get("worker_restarts", 0) + faults.get("aggregator_restarts", 0)
    lost = faults.get("node_losses", 0)
    fault_text = (
        f" | faults: {faults['worker_restarts']} worker / {faults['aggregator_restarts']} "
        f"aggregator restart(s), re-ran {faults['reruns'] or 'none'}"
        + (f", {lost} node(s) lost" if lost else "")
        if restarts or lost
        else ""
    )
    drift = row["param_drift"]
    drift_text = "-" if drift is None else f"{drift:.4f}"  # withheld under DP
    console.print(
        f"round {row['round'] + 1}/{config.federation.rounds}: {reward_text} | kl {kl}"
        f"{stationarity_text} | mean lambda {mean_lam} | disagreement {dis_text} | "
        f"drift {drift_text} | {ok}/{len(row['clients'])} clients | "
        f"{row['timing']['round_wall']:.1f} s{skip_text}{fault_text}{protection_text(row)}",
        markup=False,
    )
    for event in faults.get("events", []):
        console.print(f"  fault: {event}", markup=False)
    for failure in row["failed"][:MAX_FAILURES_SHOWN]:
        console.print(f"  client {failure['client']} left out: {failure['reason']}", markup=False)
    if len(row["failed"]) > MAX_FAILURES_SHOWN:
        more = len(row["failed"]) - MAX_FAILURES_SHOWN
        console.print(f"  ... and {more} more (metrics.jsonl: failed)", markup=False)


def print_interrupted(
    console: Console, signum: int, run_dir: Path | str | None, summary: dict[str, Any] | None
) -> None:
    """What a signal left: nothing, a completed run, or the resume command (one line)."""
    name = signal.Signals(signum).name
    if run_dir is None:
        console.print(f"{name}: stopped while starting; nothing was written", markup=False)
        return
    run_dir = Path(run_dir)
    if summary and summary.get("status") == "completed":
        console.print(f"{name}: the run had completed: {run_dir}", markup=False)
    elif latest_checkpoint(run_dir) is None:
        console.print(
            f"{name}: stopped before the first round ended; nothing to resume ({run_dir})",
            markup=False,
        )
    else:
        console.print(
            f"{name}: stopped; continue with: firm-ray run --resume {shlex.quote(str(run_dir))}",
            markup=False,
            soft_wrap=True,  # one line to copy, however narrow the terminal
        )


def protection_text(row: dict[str, Any]) -> str:
    """The round's DP budget and robust-aggregation / attack facts for its console line."""
    parts = []
    privacy = row.get("privacy")
    if privacy:
        eps = privacy.get("epsilon")
        eps_text = "inf" if eps is None or eps == float("inf") else f"{eps:.3g}"
        clipped = privacy.get("server_clipped") or []
        parts.append(
            f"epsilon {eps_text} (delta {privacy['delta']:g}), clip {privacy['clip']:.3g}"
            + (f", server clipped {clipped}" if clipped else "")
        )
    robust = row.get("robustness")
    if robust:
        text = robust["aggregator"]
        if robust.get("selected") is not None:
            text += f" selected {robust['selected']}"
        if robust.get("clipped"):
            text += f", {robust['clipped']} clipped"
        if robust.get("attack"):
            text += f" | attack {robust['attack']} by {robust.get('attackers') or 'none'}"
        parts.append(text)
    return "".join(f" | {p}" for p in parts)
