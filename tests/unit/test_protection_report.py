"""DP and robust-aggregation facts reach the summary, the console line, the report and W&B
(tracking/summary.py, runtime/console.py, tracking/report.py, tracking/wandb_tracker.py)."""

from __future__ import annotations

from wandb_offline import read_offline_run

from firm_ray.runtime.console import protection_text
from firm_ray.tracking.summary import privacy_totals, robustness_totals
from firm_ray.tracking.wandb_tracker import WandbTracker


def _rows() -> list[dict]:
    return [
        {
            "round": 0,
            "failed": [{"client": 3, "reason": "non-finite tensor 'a'"}],
            "privacy": {
                "epsilon": 1.5, "delta": 1e-5, "clip": 0.5, "noise_std": 0.1,
                "server_clipped": [2], "next_clip": 0.45,
            },
            "robustness": {"aggregator": "krum", "selected": [1], "clipped": 0, "trimmed": 0,
                           "attack": "nan", "attackers": [3]},
        },
        {
            "round": 1,
            "failed": [],
            "privacy": {
                "epsilon": 2.25, "delta": 1e-5, "clip": 0.45, "noise_std": 0.09,
                "server_clipped": [], "next_clip": 0.4,
            },
            "robustness": {"aggregator": "krum", "selected": [3], "clipped": 0, "trimmed": 0,
                           "attack": "nan", "attackers": [3]},
        },
    ]  # fmt: skip


def test_summary_totals() -> None:
    rows = _rows()
    assert privacy_totals(rows) == {
        "epsilon": 2.25,
        "delta": 1e-5,
        "final_clip": 0.4,
        "server_clipped_client_rounds": 1,
    }
    assert robustness_totals(rows) == {
        "aggregator": "krum",
        "attack": "nan",
        "attacker_client_rounds": 2,
        "attacker_updates_rejected": 1,
        "attacker_updates_selected": 1,
    }
    plain = [{"round": 0, "privacy": None, "robustness": None}, {"round": 1}]
    assert privacy_totals(plain) is None and robustness_totals(plain) is None


def test_console_line() -> None:
    rows = _rows()
    text = protection_text(rows[0])
    assert "epsilon 1.5 (delta 1e-05), clip 0.5, server clipped [2]" in text
    assert "krum selected [1] | attack nan by [3]" in text
    assert protection_text({"privacy": None, "robustness": None}) == ""
    noiseless = {"privacy": {**rows[0]["privacy"], "epsilon": None}}
    assert "epsilon inf" in protection_text(noiseless)


def test_wandb_history_and_summary_keys(tmp_path) -> None:
    """A real offline W&B run: the rows' DP and robustness blocks become flat history keys."""
    settings = {"enabled": True, "project": "p", "mode": "offline", "log_adapter": False}
    tracker = WandbTracker(settings, tmp_path / "run", "r")
    for row in _rows():
        tracker.log_round(row["round"], {k: v for k, v in row.items() if k != "round"})
    tracker.log_summary(
        {"status": "completed", "privacy": privacy_totals(_rows()), "robustness": None}
    )
    tracker.close()
    history = read_offline_run(tmp_path / "run")["history"]
    first, second = history[0], history[1]
    assert first["privacy/epsilon"] == 1.5 and second["privacy/epsilon"] == 2.25
    assert first["privacy/server_clipped"] == 1 and second["privacy/clip"] == 0.45
    assert first["robustness/attackers"] == 1
    assert first["robustness/attackers_selected"] == 0
    assert second["robustness/attackers_selected"] == 1


def test_sweep_trial_rows_carry_epsilon_and_the_rule(tmp_path) -> None:
    from firm_ray.config import FirmConfig
    from firm_ray.tracking.jsonl import JsonlTracker
    from firm_ray.tracking.summary import build_summary
    from firm_ray.tracking.sweep_trials import collect_trials

    trial = tmp_path / "trials" / "t0"
    rows = [{**row, "rewards": [0.5, 0.6], "reward_names": ["a", "b"]} for row in _rows()]
    with JsonlTracker(trial) as tracker:
        tracker.log_config(FirmConfig().model_dump(mode="json"))
        for row in rows:
            tracker.log_round(row["round"], {k: v for k, v in row.items() if k != "round"})
        tracker.log_summary(build_summary(trial, rows, "firm", 0, [0.4, 0.5], 1.0, "completed"))
    (record,) = collect_trials(tmp_path)
    assert (record["epsilon"], record["aggregator"], record["attack"]) == (2.25, "krum", "nan")
