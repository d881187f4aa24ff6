"""The W&B tracker, driven for real in offline mode and read back from the run's transaction log
(``read_offline_run``, tests/wandb_offline.py): exact logged values, None/NaN skipped, the
client_lambdas table, the adapter artifact, resume into the same run, make_tracker's choice of
trackers, the sweep summary. No mocks: if wandb logs something else, or nothing, these fail."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from wandb_offline import read_offline_run

from firm_ray.config import FirmConfig
from firm_ray.tracking import MultiTracker, make_tracker, read_metrics
from firm_ray.tracking.jsonl import JsonlTracker
from firm_ray.tracking.wandb_tracker import (
    RUN_ID_FILE,
    WandbTracker,
    _thin_rounds,
    log_sweep_summary,
)

matplotlib.use("Agg")

NAMES = ["relevance", "harmlessness"]
SETTINGS = {
    "enabled": True,
    "project": "firm-ray-tests",
    "entity": None,
    "group": "from-settings",
    "tags": ["unit"],
    "mode": "offline",
    "log_adapter": True,
}


@pytest.fixture(scope="module", autouse=True)
def _wandb_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep W&B's staging copies (artifacts), cache and settings out of the home directory.
    Module-wide: wandb warns when its environment changes after its first run."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            mp.setenv(var, str(home / var.lower()))
        yield


def row(r: int) -> dict[str, Any]:
    """A metrics row as the round loop logs it: 2 objectives, clients 0 and 3 (plus 5 in round
    2, which fails); no eval in round 1; KL NaN in round 2."""
    clients = [0, 3, 5] if r == 2 else [0, 3]
    lambdas = {"0": [0.2 + 0.1 * r, 0.8 - 0.1 * r], "3": [0.6, 0.4]}
    return {
        "rewards": None if r == 1 else [0.5 + 0.125 * r, 0.25 + 0.0625 * r],
        "reward_names": NAMES,
        "rewards_by_category": None if r == 1 else {"chat": [0.5, 0.75]},
        "kl": float("nan") if r == 2 else 0.015 * (r + 1),
        "client_lambdas": lambdas,
        "disagreement": 0.125 + r,
        "param_drift": 0.5,
        "bytes_up": {"0": 1000, "3": 3000},
        "bytes_down": {"0": 500, "3": 500},
        "clients": clients,
        "failed": [{"client": 5, "reason": "timeout"}] if r == 2 else [],
        "train_rewards": [0.25 * (r + 1), 0.5],
        "timing": {"round_wall": 2.5, "generate": 1.25},
        "memory": {"driver_rss": 812.5},
        "local_steps": 8,
        "skipped_steps": 2 * r,
        "skip_fraction": 0.25 * r,
        "skip_reasons": ["reward 'relevance' returned nan for item 1"] if r else [],
        "truncated_fraction": 0.125,
        "importance_weight": None if r == 1 else 0.875,
        "skip_rejected_clients": 1 if r == 2 else 0,
        "faults": {
            "worker_restarts": 2 if r == 1 else 0,
            "aggregator_restarts": 0,
            "reruns": [0, 3] if r == 1 else [],
            "events": [],
        },
        "update_cosine": None if r == 1 else 0.25 - 0.5 * r,
        "update_coherence": None if r == 1 else 0.75,
        "pareto_stationarity": None if r == 1 else 0.125 * (r + 1),
    }


SUMMARY = {
    "algorithm": "firm",
    "seed": 7,
    "reward_names": NAMES,
    "initial_rewards": [0.25, 0.125],
    "final_rewards": [0.75, 0.375],
    "final_round": 2,
    "hypervolume": 0.125,
    "smoothness": [0.0625, 0.03125],
    "bytes_up_per_client_round": 2000.0,
    "bytes_down_per_client_round": 500.0,
    "mean_disagreement": 1.125,
    "final_kl": None,
    "failed_client_rounds": 1,
    "rounds_completed": 3,
    "wall_time_s": 12.5,
    "run_dir": "runs/x",
    "status": "completed",
}


def firm_config(enabled: bool = True, mode: str = "offline", log_adapter: bool = False) -> dict:
    config = FirmConfig().model_dump(mode="json")
    config["tracking"]["wandb"].update(
        enabled=enabled, mode=mode, log_adapter=log_adapter, project="firm-ray-tests"
    )
    return config


def write_plot(path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def table_rows(run: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """A logged table's JSON file (columns, data), found through its history value's path."""
    assert value["_type"] == "table-file"
    for files_dir in run["files_dirs"]:
        if (files_dir / value["path"]).is_file():
            return json.loads((files_dir / value["path"]).read_text())
    raise AssertionError(f"table file {value['path']} not found")


def by_step(run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {h["_step"]: h for h in run["history"]}


def test_rounds_summary_config_table_plots_and_adapter_are_logged(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = firm_config()
    tracker = WandbTracker(SETTINGS, run_dir, "my-run", config=config, group="grp")
    tracker.log_config(config)
    for r in range(3):
        tracker.log_round(r, row(r))
    write_plot(run_dir / "plots" / "rewards.png")
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    tracker.log_summary(SUMMARY)
    tracker.close()
    tracker.close()  # idempotent

    run = read_offline_run(run_dir)
    assert run["run_id"] == (run_dir / RUN_ID_FILE).read_text().strip() == tracker.run_id
    (meta,) = run["runs"]
    assert (meta["name"], meta["group"], meta["job_type"]) == ("my-run", "grp", "run")
    assert (meta["project"], meta["tags"], meta["exit_code"]) == ("firm-ray-tests", ["unit"], 0)

    steps = by_step(run)
    assert sorted(steps) == [0, 1, 2]
    h0, h1, h2 = steps[0], steps[1], steps[2]
    assert h0["reward/relevance"] == 0.5 and h0["reward/harmlessness"] == 0.25
    assert h2["reward/relevance"] == 0.75 and h2["reward/harmlessness"] == 0.375
    assert h0["reward_by_category/chat/harmlessness"] == 0.75
    assert not any(k.startswith(("reward/", "reward_by_category/")) for k in h1)  # not evaluated
    assert h0["kl"] == 0.015 and h1["kl"] == 0.03 and "kl" not in h2  # NaN skipped
    assert h1["train_reward/relevance"] == 0.5 and h1["train_reward/harmlessness"] == 0.5
    assert h1["disagreement"] == 1.125 and h1["param_drift"] == 0.5
    assert (h0["conflict/update_cosine"], h2["conflict/update_cosine"]) == (0.25, -0.75)
    assert (h0["conflict/update_coherence"], h2["eval/pareto_stationarity"]) == (0.75, 0.375)
    assert not any(k.startswith(("conflict/", "eval/")) for k in h1)  # None: left out
    assert (h0["bytes_up/mean"], h0["bytes_up/total"], h0["bytes_down/mean"]) == (2000, 4000, 500)
    assert h0["timing/round_wall"] == 2.5 and h0["timing/generate"] == 1.25
    assert h0["memory/driver_rss"] == 812.5
    assert (h2["clients/sampled"], h2["clients/failed"]) == (3, 1)
    assert (h0["clients/sampled"], h0["clients/failed"]) == (2, 0)
    assert (h2["steps/local"], h2["steps/skipped"], h2["steps/skip_fraction"]) == (8, 4, 0.5)
    assert (h1["faults/worker_restarts"], h1["faults/client_reruns"]) == (2, 2)
    assert (h0["faults/worker_restarts"], h0["faults/aggregator_restarts"]) == (0, 0)
    assert (h0["steps/skipped"], h2["clients/skip_rejected"], h0["clients/skip_rejected"]) == (
        0,
        1,
        0,
    )
    assert h0["truncated_fraction"] == 0.125 and h0["importance_weight"] == 0.875
    assert "importance_weight" not in h1  # None: left out
    assert not any("skip_reason" in key for h in steps.values() for key in h)  # numbers only
    assert h1["lambda/relevance/min"] == pytest.approx(0.3)
    assert h1["lambda/relevance/max"] == pytest.approx(0.6)
    assert h1["lambda/relevance/mean"] == pytest.approx(0.45)
    assert h1["lambda/harmlessness/mean"] == pytest.approx(0.55)
    for h in run["history"]:
        for key, value in h.items():
            assert not (isinstance(value, float) and not math.isfinite(value)), key

    # The per-client table: once, at the last round's step, one row per (round, client).
    assert [s for s, h in steps.items() if "client_lambdas" in h] == [2]
    table = table_rows(run, h2["client_lambdas"])
    assert table["columns"] == ["round", "client", "lambda_relevance", "lambda_harmlessness"]
    assert len(table["data"]) == 6
    assert {(r, c) for r, c, *_ in table["data"]} == {(r, c) for r in range(3) for c in (0, 3)}
    assert [0, 0, 0.2, 0.8] in table["data"] and [2, 3, 0.6, 0.4] in table["data"]
    scatter = run["config"]["_wandb"]["visualize"]["client_lambdas_scatter"]["panel_config"]
    assert scatter["fieldSettings"] == {"x": "round", "y": "lambda_relevance"}

    image = h2["plots/rewards"]
    assert image["_type"] == "image-file"
    assert (run["files_dirs"][0] / image["path"]).read_bytes()[:4] == b"\x89PNG"

    (model,) = [a for a in run["artifacts"] if a["type"] == "model"]
    assert model["name"] == "my-run-adapter"
    assert model["files"] == {"adapter_config.json": 8, "adapter_model.safetensors": 64}

    summary = run["summary"]
    assert summary["final/relevance"] == 0.75 and summary["final/harmlessness"] == 0.375
    assert summary["initial/relevance"] == 0.25
    assert summary["smoothness/harmlessness"] == 0.03125
    assert summary["hypervolume"] == 0.125 and summary["mean_disagreement"] == 1.125
    assert summary["bytes_up_per_client_round"] == 2000 and summary["wall_time_s"] == 12.5
    assert (summary["status"], summary["algorithm"], summary["seed"]) == ("completed", "firm", 7)
    assert summary["reward_names"] == NAMES
    assert "final_kl" not in summary and "final_rewards" not in summary

    assert run["config"]["algorithm"] == config["algorithm"]
    assert run["config"]["tracking"]["wandb"]["project"] == "firm-ray-tests"


def test_failed_run_exits_1_and_adapter_is_not_logged_when_off(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_config.json").write_text("{}")
    tracker = WandbTracker({**SETTINGS, "log_adapter": False, "group": None}, run_dir, "r")
    tracker.log_round(0, row(0))
    tracker.log_summary({**SUMMARY, "status": "failed"})
    tracker.close()

    run = read_offline_run(run_dir)
    assert run["runs"][0]["exit_code"] == 1 and run["runs"][0]["group"] == ""
    assert run["summary"]["status"] == "failed"
    assert not [a for a in run["artifacts"] if a["type"] == "model"]


def test_resume_continues_the_same_run_and_the_table_covers_all_rounds(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = firm_config()
    first = make_tracker(config, run_dir, name="exp")
    first.log_config(config)
    for r in range(3):
        first.log_round(r, row(r))
    first.close()  # killed after round 2, no summary: the W&B run ends with exit code 1
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()

    second = make_tracker(config, run_dir, resume_from_round=2, name="exp")  # re-runs round 2
    for r in (2, 3):
        second.log_round(r, row(r))
    second.log_summary(SUMMARY)
    second.close()

    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    assert [m["round"] for m in read_metrics(run_dir)] == [0, 1, 2, 3]
    run = read_offline_run(run_dir)
    assert [m["run_id"] for m in run["runs"]] == [run_id, run_id]
    assert [m["exit_code"] for m in run["runs"]] == [1, 0]
    assert [h["_step"] for h in run["history"]] == [0, 1, 2, 2, 3]
    last = run["history"][-1]
    assert last["reward/relevance"] == 0.875  # round 3's value
    table = table_rows(run, last["client_lambdas"])
    assert sorted((r, c) for r, c, *_ in table["data"]) == [
        (r, c) for r in range(4) for c in (0, 3)
    ]

    fresh = make_tracker(config, run_dir, name="exp")  # not resumed: a new W&B run
    fresh.log_round(0, row(0))
    fresh.close()
    new_id = (run_dir / RUN_ID_FILE).read_text().strip()
    assert new_id != run_id
    assert read_offline_run(run_dir)["runs"][0]["run_id"] == new_id
    assert [m["round"] for m in read_metrics(run_dir)] == [0]


@pytest.mark.parametrize(
    ("enabled", "mode", "env_mode", "with_wandb"),
    [
        (True, "offline", "offline", True),
        (False, "offline", "offline", False),
        (True, "disabled", "offline", False),
        (True, "offline", "disabled", False),  # WANDB_MODE=disabled wins over the config
    ],
)
def test_make_tracker_always_writes_jsonl_and_wandb_only_when_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    enabled: bool,
    mode: str,
    env_mode: str,
    with_wandb: bool,
) -> None:
    monkeypatch.setenv("WANDB_MODE", env_mode)
    run_dir = tmp_path / "run"
    config = firm_config(enabled=enabled, mode=mode)
    tracker = make_tracker(config, run_dir)
    assert isinstance(tracker, MultiTracker)
    kinds = [type(t) for t in tracker.trackers]
    assert kinds == ([JsonlTracker, WandbTracker] if with_wandb else [JsonlTracker])
    tracker.log_config(config)
    for r in range(2):
        tracker.log_round(r, row(r))
    tracker.log_summary(SUMMARY)
    tracker.close()

    assert [m["round"] for m in read_metrics(run_dir)] == [0, 1]
    assert math.isnan(row(2)["kl"])  # (the JSONL side of NaN is tested in test_tracking)
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file()
    assert (run_dir / "wandb").exists() == with_wandb
    assert (run_dir / RUN_ID_FILE).exists() == with_wandb
    if with_wandb:
        run = read_offline_run(run_dir)
        assert run["runs"][0]["name"] == "run"  # default name: the run directory's
        assert by_step(run)[1]["kl"] == 0.03


def test_online_without_credentials_falls_back_to_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No login prompt, no network: 'online' without an API key logs offline and warns."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_dir = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="no W&B credentials"):
        tracker = WandbTracker({**SETTINGS, "mode": "online"}, run_dir, "r")
    assert tracker.mode == "offline"
    tracker.log_round(0, row(0))
    tracker.close()
    assert by_step(read_offline_run(run_dir))[0]["reward/relevance"] == 0.5


def test_importing_tracking_does_not_import_wandb() -> None:
    code = (
        "import sys, firm_ray.tracking, firm_ray.tracking.wandb_tracker\n"
        "assert callable(firm_ray.tracking.make_tracker)\n"
        "assert 'wandb' not in sys.modules, 'wandb imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_log_sweep_summary_logs_trials_pareto_scatter_and_images(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    image = sweep_dir / "pareto.png"
    write_plot(image)
    trials = [
        {
            "trial_id": "t0",
            "algorithm": "firm",
            "beta": 0.1,
            "preference": [0.5, 0.5],
            "seed": 0,
            "final/relevance": 0.75,
            "final/harmlessness": 0.25,
            "hypervolume": 0.125,
            "mean_disagreement": 0.5,
            "pareto": True,
            "status": "completed",
        },
        {  # no beta, preference as a string, NaN hypervolume, an extra key
            "trial_id": "t1",
            "algorithm": "fedavg_ls",
            "preference": "0.8,0.2",
            "seed": 1,
            "final/relevance": 0.5,
            "final/harmlessness": 0.5,
            "hypervolume": float("nan"),
            "pareto": False,
            "status": "completed",
            "extra": {"note": 1},
        },
        {"trial_id": "t2", "algorithm": "firm", "status": "failed", "pareto": False},
    ]
    log_sweep_summary(
        SETTINGS, sweep_dir, "sweep-1", "sweep-grp", trials, NAMES, [image, tmp_path / "nope.png"]
    )

    run = read_offline_run(sweep_dir)
    (meta,) = run["runs"]
    assert (meta["name"], meta["group"], meta["job_type"]) == (
        "sweep-1",
        "sweep-grp",
        "sweep-summary",
    )
    assert meta["exit_code"] == 0
    (h,) = run["history"]
    table = table_rows(run, h["trials"])
    cols = table["columns"]
    assert cols[:6] == ["trial_id", "algorithm", "beta", "preference", "seed", "status"]
    assert set(cols) >= {"final/relevance", "final/harmlessness", "pareto", "extra"}
    data = {r[cols.index("trial_id")]: dict(zip(cols, r, strict=True)) for r in table["data"]}
    assert sorted(data) == ["t0", "t1", "t2"]
    assert data["t0"]["final/relevance"] == 0.75 and data["t0"]["pareto"] is True
    assert json.loads(data["t0"]["preference"]) == [0.5, 0.5]
    assert data["t1"]["preference"] == "0.8,0.2"
    assert data["t1"]["beta"] is None and data["t1"]["hypervolume"] is None
    assert json.loads(data["t1"]["extra"]) == {"note": 1}
    assert data["t2"]["final/relevance"] is None and data["t2"]["status"] == "failed"
    panel = run["config"]["_wandb"]["visualize"]["pareto_front"]["panel_config"]
    assert panel["fieldSettings"] == {"x": "final/relevance", "y": "final/harmlessness"}
    assert panel["stringSettings"]["title"] == "Pareto front"
    assert h["images/pareto"]["_type"] == "image-file"
    assert "images/nope" not in h
    assert run["summary"]["trials"] == 3


def test_log_sweep_summary_does_nothing_when_wandb_is_off(tmp_path: Path) -> None:
    for settings in ({**SETTINGS, "enabled": False}, {**SETTINGS, "mode": "disabled"}):
        log_sweep_summary(settings, tmp_path / "sweep", "s", "g", [{"trial_id": "t"}], NAMES, [])
    assert not (tmp_path / "sweep" / "wandb").exists()


def test_reader_stops_at_a_truncated_tail_and_rejects_corruption(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    tracker = WandbTracker(SETTINGS, run_dir, "r")
    for r in range(3):
        tracker.log_round(r, row(r))
    tracker.close()
    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = log.read_bytes()
    full = read_offline_run(run_dir)

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    (copy_log,) = (copy / "wandb").glob("offline-run-*/run-*.wandb")
    copy_log.write_bytes(data[: len(data) - 5])  # a killed writer's torn last record
    assert read_offline_run(copy, wait_s=0)["history"] == full["history"]

    corrupt = bytearray(data)
    corrupt[40] ^= 0xFF
    copy_log.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="checksum"):
        read_offline_run(copy, wait_s=0)


def test_thin_rounds_keeps_whole_rounds_spread_over_the_run() -> None:
    rows = [[r, c, 0.5] for r in range(100) for c in range(30)]  # 3,000 rows
    with pytest.warns(RuntimeWarning, match="table limit"):
        kept = _thin_rounds(rows, 1000)
    rounds = sorted({r for r, *_ in kept})
    assert len(kept) <= 1000 and rounds[0] == 0 and rounds[-1] == 99
    assert all(sum(1 for r2, *_ in kept if r2 == r) == 30 for r in rounds)  # whole rounds
    assert _thin_rounds(rows[:10], 1000) == rows[:10]
