"""Run artifacts: trackers write what readers read back, a killed or resumed run keeps one row per
round, the summary is computed right, plots and the terminal report are produced."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from firm_ray.config import FirmConfig, dump_config
from firm_ray.core.metrics import smoothness
from firm_ray.tracking import (
    METRICS_KEYS,
    SUMMARY_KEYS,
    JsonlTracker,
    MultiTracker,
    NullTracker,
    Tracker,
    build_summary,
    load_summary,
    make_plots,
    print_report,
    read_metrics,
    read_summary,
)

NAMES = {2: ["relevance", "harmlessness"], 3: ["relevance", "harmlessness", "sentiment"]}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_rows(num_objectives: int, rounds: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Realistic rows: 8 clients, 4 sampled per round, eval every 2nd round and at the end,
    one failed client in round 3 (every local step skipped), rewards trending up with noise."""
    rng = np.random.default_rng(seed)
    names = NAMES[num_objectives]
    base = np.linspace(0.2, 0.4, num_objectives)
    rows = []
    for rnd in range(rounds):
        clients = sorted(rng.choice(8, size=4, replace=False).tolist())
        reason = "all 4 local steps skipped: reward 'relevance' returned nan for item 3"
        failed = [{"client": clients[-1], "reason": reason}] if rnd == 3 else []
        ok = [c for c in clients if c not in {f["client"] for f in failed}]
        lambdas = {str(c): rng.dirichlet(np.ones(num_objectives)).tolist() for c in ok}
        evaluated = rnd % 2 == 0 or rnd == rounds - 1
        rewards = (base + 0.03 * (rnd + 1) + rng.normal(0, 0.01, num_objectives)).tolist()
        rows.append(
            {
                "round": rnd,
                "rewards": rewards if evaluated else None,
                "reward_names": names,
                "rewards_by_category": (
                    {"howto": rewards, "sad": [r - 0.05 for r in rewards]} if evaluated else None
                ),
                "kl": 0.01 * rnd if evaluated else None,
                "client_lambdas": lambdas,
                "client_grad_norms": {c: [0.05, 0.02 + 0.01 * rnd] for c in lambdas},
                "disagreement": float(rng.uniform(0.05, 0.3)) if len(ok) > 1 else None,
                "param_drift": float(rng.uniform(0.01, 0.1)),
                "bytes_up": {str(c): 73_760 for c in ok},
                "bytes_down": {str(c): 73_760 for c in clients},
                "clients": clients,
                "failed": failed,
                "train_rewards": (base + 0.025 * (rnd + 1)).tolist(),
                "timing": {
                    "generate": 1.2,
                    "score": 0.8,
                    "forward": 0.5,
                    "backward": 0.3,
                    "solve": 0.001,
                    "step": 0.05,
                    "aggregation": 0.02,
                    "evaluation": 0.4 if evaluated else 0.0,
                    "round_wall": 1.9,
                    "orchestration_overhead": 0.1,
                },
                "local_steps": 16,
                "skipped_steps": 4 if rnd == 3 else 0,
                "skip_fraction": 0.25 if rnd == 3 else 0.0,
                "skip_reasons": ["reward 'relevance' returned nan for item 3"] if rnd == 3 else [],
                "truncated_fraction": 0.125,
                "importance_weight": 1.0,
                "skip_rejected_clients": 1 if rnd == 3 else 0,
                "faults": {
                    "worker_restarts": 1 if rnd == 5 else 0,
                    "aggregator_restarts": 1 if rnd == 6 else 0,
                    "reruns": [clients[0]] if rnd == 5 else [],
                    "events": ["worker 1 died: ActorDiedError"] if rnd == 5 else [],
                },
                # issue 15's cross-algorithm metrics (no rng: the draws above stay as they were)
                "update_cosine": 0.5 - 0.05 * rnd if len(ok) > 1 else None,
                "update_coherence": 0.75 - 0.02 * rnd if len(ok) > 1 else None,
                "pareto_stationarity": 1.0 / (rnd + 1) if evaluated else None,
                # issue 16: no DP, plain mean, no attack
                "privacy": None,
                "robustness": None,
            }
        )
    return rows


def without_conflict_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as a run written before issue 15 logged them."""
    keys = ("update_cosine", "update_coherence", "pareto_stationarity")
    return [{k: v for k, v in row.items() if k not in keys} for row in rows]


def write_run(run_dir: Path, num_objectives: int, rounds: int = 8) -> list[dict[str, Any]]:
    """A finished run written through the tracker API itself."""
    rows = synthetic_rows(num_objectives, rounds)
    config = FirmConfig().model_dump(mode="json")
    config["rewards"] = [{"name": n} for n in NAMES[num_objectives]]
    with JsonlTracker(run_dir) as tracker:
        tracker.log_config(config)
        for row in rows:
            tracker.log_round(row["round"], {k: v for k, v in row.items() if k != "round"})
        initial = [0.15] * num_objectives
        tracker.log_summary(
            build_summary(run_dir, rows, "firm", 0, initial, wall_time_s=15.2, status="completed")
        )
    return rows


@pytest.mark.parametrize("num_objectives", [2, 3])
def test_read_back_equals_logged(tmp_path: Path, num_objectives: int) -> None:
    rows = write_run(tmp_path, num_objectives)
    assert read_metrics(tmp_path) == rows
    assert all(set(row) == set(METRICS_KEYS) for row in read_metrics(tmp_path))
    summary = read_summary(tmp_path)
    assert set(summary) == set(SUMMARY_KEYS)
    assert summary["reward_names"] == NAMES[num_objectives]
    assert (summary["local_steps"], summary["skipped_steps"]) == (16 * len(rows), 4)
    assert summary["first_skip_reason"] == "reward 'relevance' returned nan for item 3"
    assert summary["faults"] == {
        "worker_restarts": 1,
        "aggregator_restarts": 1,
        "node_losses": 0,
        "client_reruns": 1,
    }
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_config_yaml_is_the_resolved_config(tmp_path: Path) -> None:
    with JsonlTracker(tmp_path) as tracker:
        tracker.log_config(FirmConfig().model_dump(mode="json"))
    assert (tmp_path / "config.yaml").read_text() == dump_config(FirmConfig())
    with JsonlTracker(tmp_path / "other") as tracker:  # not a valid config: plain YAML
        tracker.log_config({"note": "anything", "x": [1, 2]})
    assert "note: anything" in (tmp_path / "other" / "config.yaml").read_text()


def test_rows_are_on_disk_before_close_and_values_are_plain_json(tmp_path: Path) -> None:
    tracker = JsonlTracker(tmp_path)
    tracker.log_round(0, {"kl": np.float32(0.5), "clients": np.array([3, 1]), "x": float("nan")})
    assert read_metrics(tmp_path) == [{"round": 0, "kl": 0.5, "clients": [3, 1], "x": None}]
    json.loads((tmp_path / "metrics.jsonl").read_text())  # strict JSON: no NaN token
    with pytest.raises(ValueError, match="increasing order"):
        tracker.log_round(0, {})
    with pytest.raises(ValueError, match="round"):
        tracker.log_round(1, {"round": 2})
    tracker.close()
    tracker.close()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.log_round(1, {})


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    rows = write_run(tmp_path, 2, rounds=4)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 4, "rewards": [0.1, ')  # killed mid-write
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        assert read_metrics(tmp_path) == rows


def test_damaged_middle_line_raises(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\nnot json\n{"round": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing")


def test_resume_drops_rows_from_the_resume_round_on(tmp_path: Path) -> None:
    rows = write_run(tmp_path, 2, rounds=6)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 6, "rew')  # and a truncated tail from the kill
    with (
        pytest.warns(RuntimeWarning, match="truncated"),
        JsonlTracker(tmp_path, resume_from_round=3) as tracker,
    ):
        assert read_metrics(tmp_path) == rows[:3]
        with pytest.raises(ValueError, match="increasing order"):
            tracker.log_round(2, {})
        for row in rows[3:]:
            tracker.log_round(row["round"], {k: v for k, v in row.items() if k != "round"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_metrics(tmp_path) == rows
    # A fresh (non-resumed) tracker on the same directory starts an empty file.
    JsonlTracker(tmp_path).close()
    assert read_metrics(tmp_path) == []


def test_resume_on_a_directory_without_metrics(tmp_path: Path) -> None:
    with JsonlTracker(tmp_path, resume_from_round=2) as tracker:
        tracker.log_round(2, {"param_drift": 0.1})
    assert read_metrics(tmp_path) == [{"round": 2, "param_drift": 0.1}]


def _row(rnd: int, rewards: list[float] | None, **extra: Any) -> dict[str, Any]:
    row = {"round": rnd, "rewards": rewards, "reward_names": ["a", "b"], "failed": []}
    row.update(extra)
    return row


def test_summary_fields_by_hand(tmp_path: Path) -> None:
    metrics = [
        _row(0, [0.3, 0.5], disagreement=0.2, bytes_up={"0": 100, "1": 300}, kl=0.01),
        _row(
            1, None, disagreement=None, bytes_up={"2": 200}, failed=[{"client": 1, "reason": "x"}]
        ),
        _row(2, [0.4, 0.6], disagreement=0.4, bytes_up={"0": 400}, kl=0.03),
        _row(3, [0.5, 0.65], disagreement=0.3, bytes_down={"0": 10, "1": 30}, kl=None),
    ]
    summary = build_summary(tmp_path, metrics, "firm", 7, [0.2, 0.5], 12.5, "completed")
    assert summary["final_rewards"] == [0.5, 0.65]
    assert summary["final_round"] == 3
    # The final point dominates (0.2, 0.5): a box of (0.5 - 0.2) x (0.65 - 0.5).
    assert summary["hypervolume"] == pytest.approx(0.3 * 0.15)
    # Changes over the evaluated rows: (0.1, 0.1), (0.1, 0.05) -> std (0, 0.025).
    assert summary["smoothness"] == pytest.approx([0.0, 0.025])
    assert summary["mean_disagreement"] == pytest.approx(0.3)
    assert summary["bytes_up_per_client_round"] == pytest.approx(250.0)
    assert summary["bytes_down_per_client_round"] == pytest.approx(20.0)
    assert summary["final_kl"] == pytest.approx(0.03)
    assert summary["failed_client_rounds"] == 1
    assert summary["rounds_completed"] == 4
    assert summary["algorithm"] == "firm" and summary["seed"] == 7
    assert summary["initial_rewards"] == [0.2, 0.5]
    assert summary["wall_time_s"] == 12.5 and summary["status"] == "completed"
    assert summary["run_dir"] == str(tmp_path)
    assert set(summary) == set(SUMMARY_KEYS)


def test_summary_edge_cases(tmp_path: Path) -> None:
    metrics = [_row(0, [0.1, 0.9]), _row(1, [0.3, 0.4])]
    # The final point is worse than the initial one in objective b: no dominated volume.
    summary = build_summary(tmp_path, metrics, "fedavg_ls", 0, [0.2, 0.5], 1.0, "failed")
    assert summary["hypervolume"] == 0.0
    assert summary["smoothness"] == [0.0, 0.0]  # fewer than 3 evaluated rows
    assert summary["mean_disagreement"] is None
    assert summary["bytes_up_per_client_round"] is None
    # Three objectives, hand-checked box volume.
    m3 = [{"round": 0, "rewards": [0.5, 0.4, 0.2], "reward_names": ["a", "b", "c"]}]
    assert build_summary(tmp_path, m3, "firm", 0, [0, 0, 0], 1.0, "completed")[
        "hypervolume"
    ] == pytest.approx(0.5 * 0.4 * 0.2)
    # Unknown initial rewards or no evaluation at all: hypervolume is undefined.
    assert (
        build_summary(tmp_path, metrics, "firm", 0, None, 1.0, "completed")["hypervolume"] is None
    )
    empty = build_summary(tmp_path, [], "firm", 0, [0.1], 0.0, "failed", reward_names=["a"])
    assert empty["final_rewards"] is None and empty["hypervolume"] is None
    assert empty["reward_names"] == ["a"] and empty["rounds_completed"] == 0
    with pytest.raises(ValueError, match="status"):
        build_summary(tmp_path, metrics, "firm", 0, None, 1.0, "running")


def test_summary_smoothness_matches_core_on_synthetic_run(tmp_path: Path) -> None:
    rows = write_run(tmp_path, 3)
    evaluated = [r["rewards"] for r in rows if r["rewards"] is not None]
    summary = read_summary(tmp_path)
    assert summary["smoothness"] == pytest.approx(smoothness(evaluated))
    assert summary["final_rewards"] == evaluated[-1]
    assert summary["final_round"] == 7
    disagreements = [r["disagreement"] for r in rows if r["disagreement"] is not None]
    assert summary["mean_disagreement"] == pytest.approx(np.mean(disagreements))
    assert summary["bytes_up_per_client_round"] == 73_760
    assert summary["failed_client_rounds"] == 1
    expected_hv = math.prod(f - 0.15 for f in evaluated[-1])
    assert summary["hypervolume"] == pytest.approx(expected_hv)


@pytest.mark.parametrize("num_objectives", [2, 3])
def test_plots_are_valid_pngs(tmp_path: Path, num_objectives: int) -> None:
    write_run(tmp_path, num_objectives)
    paths = make_plots(tmp_path)
    names = ["rewards.png", "lambdas.png", "disagreement.png", "conflict.png"]
    assert [p.name for p in paths] == names
    for path in paths:
        assert path.parent == tmp_path / "plots"
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert len(data) > 10_000, f"{path} looks empty ({len(data)} bytes)"


def test_plots_of_an_empty_run(tmp_path: Path) -> None:
    JsonlTracker(tmp_path).close()
    assert make_plots(tmp_path) == []


def test_print_report_shows_objectives_and_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "quickstart"
    write_run(run_dir, 3)
    make_plots(run_dir)
    console = Console(record=True, width=250)
    print_report(run_dir, console)
    text = console.export_text()
    for name in NAMES[3]:
        assert name in text
    assert str(run_dir) in text
    assert "firm" in text and "completed" in text and "hypervolume" in text
    assert "72.0 KiB" in text  # 73,760 bytes per client-round
    assert "rewards.png" in text
    assert (
        "1 worker restart(s), 1 aggregator restart(s), 0 node(s) lost, 1 client re-run(s)" in text
    )


def test_report_of_a_run_without_summary_is_provisional(tmp_path: Path) -> None:
    write_run(tmp_path, 2)
    (tmp_path / "summary.json").unlink()  # killed before the end
    summary = load_summary(tmp_path)
    assert summary["status"] == "incomplete"
    assert summary["rounds_completed"] == 8
    assert summary["wall_time_s"] == pytest.approx(8 * 1.9)
    console = Console(record=True, width=250)
    print_report(tmp_path, console)
    assert "incomplete" in console.export_text()


class _Recorder:
    def __init__(self, fail_close: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_close = fail_close

    def log_config(self, config: dict[str, Any]) -> None:
        self.calls.append(("config", config))

    def log_round(self, round: int, metrics: dict[str, Any]) -> None:
        self.calls.append(("round", (round, metrics)))

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.calls.append(("summary", summary))

    def close(self) -> None:
        self.calls.append(("close", None))
        if self.fail_close:
            raise OSError("connection lost")


def test_multi_tracker_fans_out_and_closes_everything(tmp_path: Path) -> None:
    first, second = _Recorder(fail_close=True), _Recorder()
    jsonl = JsonlTracker(tmp_path)
    multi = MultiTracker([first, jsonl, second, NullTracker()])
    for tracker in (first, jsonl, NullTracker(), multi):
        assert isinstance(tracker, Tracker)
    multi.log_config({"a": 1})
    multi.log_round(0, {"param_drift": 0.5})
    multi.log_summary({"status": "completed"})
    with pytest.raises(OSError, match="connection lost"):
        multi.close()
    assert second.calls == first.calls
    assert [c[0] for c in second.calls] == ["config", "round", "summary", "close"]
    assert jsonl._fh is None  # closed despite the earlier failure
    assert read_metrics(tmp_path) == [{"round": 0, "param_drift": 0.5}]
    assert read_summary(tmp_path) == {"status": "completed"}


def test_summary_counts_faults_no_row_holds(tmp_path: Path) -> None:
    """The last round replayed after an aggregator death while checkpointing: its faults are in
    no row, and the summary still counts them (bench/faults.py found them lost)."""
    rows = synthetic_rows(2, rounds=2)
    pending = {"worker_restarts": 0, "aggregator_restarts": 1, "reruns": [], "events": ["x"]}
    summary = build_summary(tmp_path, rows, "firm", 0, None, 1.0, "completed")
    assert summary["faults"]["aggregator_restarts"] == 0
    summary = build_summary(
        tmp_path, rows, "firm", 0, None, 1.0, "completed", pending_faults=pending
    )
    assert summary["faults"]["aggregator_restarts"] == 1


def test_summary_of_the_update_conflict_and_stationarity_metrics(tmp_path: Path) -> None:
    rows = write_run(tmp_path, 2)
    summary = read_summary(tmp_path)
    cosines = [r["update_cosine"] for r in rows if r["update_cosine"] is not None]
    coherences = [r["update_coherence"] for r in rows if r["update_coherence"] is not None]
    assert len(cosines) == 8  # every round has >= 2 accepted clients
    assert summary["mean_update_cosine"] == pytest.approx(np.mean(cosines))
    assert summary["mean_update_coherence"] == pytest.approx(np.mean(coherences))
    assert summary["final_pareto_stationarity"] == pytest.approx(1.0 / 8)  # round 7, evaluated
    # Nulls (fewer than 2 clients, a round not evaluated) are skipped, not counted as 0.
    gappy = [
        {**rows[0], "update_cosine": None, "pareto_stationarity": 0.5},
        {**rows[1], "update_cosine": -0.25, "pareto_stationarity": None},
        {**rows[2], "update_cosine": float("nan"), "pareto_stationarity": None},
    ]
    got = build_summary(tmp_path, gappy, "fmgda", 0, None, 1.0, "completed")
    assert got["mean_update_cosine"] == -0.25
    assert got["final_pareto_stationarity"] == 0.5  # the last non-null one


def test_runs_written_before_the_conflict_metrics_still_report(tmp_path: Path) -> None:
    old = without_conflict_keys(synthetic_rows(2))
    summary = build_summary(tmp_path, old, "firm", 0, [0.1, 0.1], 1.0, "completed")
    assert summary["mean_update_cosine"] is None
    assert summary["mean_update_coherence"] is None
    assert summary["final_pareto_stationarity"] is None
    with JsonlTracker(tmp_path) as tracker:
        for row in old:
            tracker.log_round(row["round"], {k: v for k, v in row.items() if k != "round"})
        tracker.log_summary(summary)
    names = [p.name for p in make_plots(tmp_path)]
    assert names == ["rewards.png", "lambdas.png", "disagreement.png"]  # no conflict.png
    console = Console(record=True, width=200)
    print_report(tmp_path, console)
    text = console.export_text()
    assert "update cosine" not in text and "stationarity" not in text


def test_report_shows_the_conflict_metrics(tmp_path: Path) -> None:
    write_run(tmp_path, 3)
    make_plots(tmp_path)
    console = Console(record=True, width=200)
    print_report(tmp_path, console)
    text = console.export_text()
    summary = read_summary(tmp_path)
    value = f"{summary['mean_update_cosine']:.4g}"
    assert re.search(rf"mean update cosine\s*│\s*{re.escape(value)}\s", text), text
    assert "mean update coherence" in text and "final Pareto stationarity" in text
    assert "conflict.png" in text
