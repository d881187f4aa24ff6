"""Skipped local steps are counted, shown and bounded: per-round step metrics from real client
updates, the server leaving out clients that skipped every step (and counting them against
min_clients), run totals in summary.json, the skip-fraction error and the console line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from firm_ray.algorithms import build_strategy
from firm_ray.config import FirmConfig, load_config
from firm_ray.federation import RoundFailed
from firm_ray.federation.strategies import round_step_metrics
from firm_ray.runtime.console import print_round
from firm_ray.runtime.loop import RunError, check_skip_fraction
from firm_ray.tracking import build_summary, summary_table
from firm_ray.tracking.report import StepTotals
from firm_ray.types import ClientUpdate

REASON = "reward 'harmlessness' returned nan for item 5"


def cfg(*overrides: str) -> FirmConfig:
    return load_config("tune_configs/quickstart.yaml", ["federation.local_steps=4", *overrides])


def update(
    client: int,
    steps: float | None,
    skipped: float,
    reasons: list[str] | None = None,
    adapter: dict[str, torch.Tensor] | None = None,
    **metrics: Any,
) -> ClientUpdate:
    """A client's update as the trainer returns it (``steps`` None: a trainer that reports only
    skipped_steps); all steps skipped means no adapter, flagged invalid, as the contract says."""
    values: dict[str, Any] = {"skipped_steps": skipped, "skip_reasons": reasons or [], **metrics}
    if steps is not None:
        values["steps"] = steps
    everything = steps is not None and skipped >= steps
    return ClientUpdate(
        client_id=client,
        round=0,
        num_samples=10,
        adapter=None if everything else adapter,
        metrics=values,
        valid=not everything,
        reason=f"all {steps:g} local steps skipped: {(reasons or ['?'])[0]}" if everything else "",
    )


def test_round_step_metrics_sum_count_and_average_over_clients() -> None:
    updates = [
        update(3, 4, 1, [REASON], truncated_fraction=0.25, importance_weight=1.0),
        update(1, 4, 4, [REASON, "non-finite loss or gradient"], truncated_fraction=0.75),
        update(2, 4, 0, [], truncated_fraction=0.5, importance_weight=0.5),
        update(5, 4, 2, ["reward 'x' raised ValueError", "a fourth reason", REASON]),
    ]
    got = round_step_metrics(updates, cfg())
    assert got == {
        "local_steps": 16,
        "skipped_steps": 7,
        "skip_fraction": 7 / 16,
        # distinct, in client-id order (1, 2, 3, 5), at most 3
        "skip_reasons": [REASON, "non-finite loss or gradient", "reward 'x' raised ValueError"],
        "truncated_fraction": 0.5,
        "importance_weight": 0.75,
        "skip_rejected_clients": 1,
    }
    empty = round_step_metrics([], cfg())
    assert empty["local_steps"] == 0 and empty["skip_fraction"] is None
    assert empty["truncated_fraction"] is None and empty["importance_weight"] is None


def test_trainer_without_a_steps_count_attempted_local_steps_per_trajectory() -> None:
    """Until the trainer reports ``steps``: federation.local_steps per trajectory (M for fmgda)."""
    got = round_step_metrics([update(0, None, 1, [REASON]), update(1, None, 0)], cfg())
    assert (got["local_steps"], got["skipped_steps"], got["skip_rejected_clients"]) == (8, 1, 0)
    refused = ClientUpdate(2, 0, 10, valid=False, reason="received a non-finite global adapter")
    assert round_step_metrics([refused], cfg())["local_steps"] == 0  # no step attempted
    fmgda = round_step_metrics([update(0, None, 8, [REASON])], cfg("algorithm.name=fmgda"))
    assert (fmgda["local_steps"], fmgda["skipped_steps"], fmgda["skip_rejected_clients"]) == (
        8,
        8,
        1,
    )


def test_clients_that_skipped_every_step_are_left_out_and_count_against_min_clients() -> None:
    gen = torch.Generator().manual_seed(0)
    theta = {"a": torch.zeros(6), "b": torch.zeros(2, 3)}
    good = {k: torch.randn(v.shape, generator=gen) for k, v in theta.items()}
    unchanged = {k: v.clone() for k, v in theta.items()}  # what a client that never stepped has
    updates = [
        update(0, 4, 1, [REASON], adapter=good),
        update(1, 4, 4, [REASON]),  # the trainer's contract: invalid, no adapter
        # a trainer that still returns theta^t as valid: the server must leave it out too
        ClientUpdate(2, 0, 10, adapter=unchanged, metrics={"steps": 4.0, "skipped_steps": 4.0}),
    ]
    result = build_strategy(cfg()).aggregate_round(0, theta, iter(updates), [])
    assert result.accepted == [0]
    assert result.rejected == [
        {"client": 1, "reason": f"all 4 local steps skipped: {REASON}"},
        {"client": 2, "reason": "all 4 local steps skipped: no reason given"},
    ]
    assert all(torch.equal(result.state[k], good[k]) for k in theta)  # not diluted by theta^t
    with pytest.raises(RoundFailed, match=r"only 1 usable client update\(s\), .*min_clients = 2"):
        build_strategy(cfg("federation.min_clients=2")).aggregate_round(0, theta, iter(updates), [])


def rows(*counts: tuple[int, int, list[str]]) -> list[dict[str, Any]]:
    return [
        {"round": r, "rewards": None, "reward_names": ["a", "b"], "failed": [], "local_steps": n,
         "skipped_steps": k, "skip_reasons": reasons}
        for r, (n, k, reasons) in enumerate(counts)
    ]  # fmt: skip


def test_summary_has_run_totals_and_the_first_reason(tmp_path: Path) -> None:
    metrics = rows((8, 0, []), (8, 3, [REASON, "other"]), (8, 1, ["later"]))
    summary = build_summary(tmp_path, metrics, "firm", 0, None, 1.0, "completed")
    assert (summary["local_steps"], summary["skipped_steps"]) == (24, 4)
    assert summary["skip_fraction"] == pytest.approx(4 / 24)
    assert summary["first_skip_reason"] == REASON
    # the run's own totals win when they hold a failed round's steps no row has
    totals = StepTotals.of_rows(metrics).plus({"local_steps": 8, "skipped_steps": 8})
    failed = build_summary(tmp_path, metrics, "firm", 0, None, 1.0, "failed", step_totals=totals)
    assert (failed["local_steps"], failed["skipped_steps"]) == (32, 12)
    # rows written before step counts existed: unknown, not zero
    old = build_summary(tmp_path, [{"round": 0, "failed": []}], "firm", 0, None, 1.0, "completed")
    assert old["local_steps"] is None and old["skip_fraction"] is None
    assert old["first_skip_reason"] is None


def test_summary_table_shows_skipped_steps_only_when_there_are_some(tmp_path: Path) -> None:
    def shown(metrics: list[dict[str, Any]]) -> str:
        summary = build_summary(tmp_path, metrics, "firm", 0, None, 1.0, "completed")
        (tmp_path / "metrics.jsonl").write_text("")
        (tmp_path / "summary.json").write_text(json.dumps(summary))
        console = Console(record=True, width=200)
        console.print(summary_table(tmp_path))
        return console.export_text()

    text = shown(rows((8, 0, []), (8, 3, [REASON])))
    assert re.search(
        rf"skipped local steps +│ 3/16 \(19%\); first reason: {re.escape(REASON)}", text
    )
    assert "skipped local steps" not in shown(rows((8, 0, [])))


def test_skip_fraction_bound_fails_with_one_line_naming_the_first_reason() -> None:
    totals = StepTotals.of_rows(rows((8, 2, [REASON]), (8, 8, ["later"])))
    with pytest.raises(RunError) as err:
        check_skip_fraction(totals, 0.5)
    assert str(err.value) == (
        "62% of local steps skipped (10 of 16; > trainer.max_skip_fraction = 0.5); "
        f"first reason: {REASON}"
    )
    check_skip_fraction(totals, 0.625)  # exactly at the bound: not exceeded
    check_skip_fraction(totals, 1.0)  # 1.0: never fails
    check_skip_fraction(StepTotals(), 0.0)  # no steps yet
    with pytest.raises(RunError, match=r"^6% of local steps skipped"):
        check_skip_fraction(StepTotals.of_rows(rows((16, 1, [REASON]))), 0.0)


def test_console_line_shows_skips_and_left_out_clients_only_when_there_are_some() -> None:
    def printed(skipped: int, failed: list[dict[str, Any]]) -> str:
        row = {
            "round": 0, "rewards": [0.5, 0.25], "reward_names": ["a", "b"], "kl": 0.01,
            "client_lambdas": {"0": [0.5, 0.5]}, "disagreement": 0.0, "param_drift": 0.1,
            "clients": [0, 1], "failed": failed, "timing": {"round_wall": 1.0},
            "local_steps": 16, "skipped_steps": skipped,
            "skip_reasons": [REASON] if skipped else [],
        }  # fmt: skip
        console = Console(record=True, width=300)
        print_round(console, cfg("federation.rounds=3"), row)
        return console.export_text()

    left_out = [{"client": 1, "reason": f"all 4 local steps skipped: {REASON}"}]
    text = printed(3, left_out)
    assert text.splitlines()[0].endswith(f"| 1/2 clients | 1.0 s | skipped 3/16: {REASON}")
    assert f"client 1 left out: all 4 local steps skipped: {REASON}" in text
    clean = printed(0, [])
    assert "skipped" not in clean and "left out" not in clean and len(clean.splitlines()) == 1
