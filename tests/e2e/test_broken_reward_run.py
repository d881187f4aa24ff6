"""A broken user reward end to end (real local Ray, real trainers): skipped local steps are
counted in metrics.jsonl, summary.json and the console, a client that skipped every step is left
out, the run fails once too many steps were skipped, and no completion text leaves a client."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from broken_rewards import SECRET
from rich.console import Console
from tiny_world import TINY

from firm_ray.config import load_config
from firm_ray.runtime.loop import RunError, run
from firm_ray.tracking.jsonl import read_metrics, read_summary

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
ERROR = re.compile(
    r"^(\d+)% of local steps skipped \((\d+) of (\d+); > trainer.max_skip_fraction = ([\d.]+)\); "
    r"first reason: (.+)$"
)


@pytest.fixture(autouse=True)
def _workers_import_the_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray workers this run starts inherit PYTHONPATH: they import broken_rewards."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def config(tmp_path: Path, name: str, mode: str, every: int, *extra: str):
    broken = f"{{function: broken_rewards.score, mode: {mode}, every: {every}}}"
    return load_config(
        "tune_configs/quickstart.yaml",
        [
            f"experiment.output_dir={tmp_path}",
            f"experiment.name={name}",
            *TINY,
            "federation.local_steps=2",
            "rewards=[{name: relevance, type: relevance}, "
            f"{{name: broken, type: python, kwargs: {broken}}}]",
            *extra,
        ],
    )


def everything_written(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in run_dir.rglob("*.json*"))


def test_nan_on_some_prompts_completes_below_the_bound_with_the_counts(tmp_path: Path) -> None:
    console = Console(record=True, width=400)
    summary = run(config(tmp_path, "nan", "nan", 13, "federation.rounds=3"), console=console)
    run_dir = Path(summary["run_dir"])
    rows = read_metrics(run_dir)
    assert summary["status"] == "completed" and len(rows) == 3
    assert all(r["local_steps"] == 4 for r in rows)  # 2 clients x 2 local steps
    skipped = [r["skipped_steps"] for r in rows]
    assert 0 < sum(skipped) <= 0.5 * 12, skipped  # default trainer.max_skip_fraction = 0.5
    assert (summary["local_steps"], summary["skipped_steps"]) == (12, sum(skipped))
    reason = re.compile(
        r"reward 'broken' returned nan for item \d+( \(\d+ of 8 items non-finite\))?"
    )
    assert reason.fullmatch(summary["first_skip_reason"])
    for row in rows:
        assert row["skip_fraction"] == pytest.approx(row["skipped_steps"] / 4)
        assert (
            all(reason.fullmatch(r) for r in row["skip_reasons"]) and len(row["skip_reasons"]) <= 3
        )
        assert bool(row["skip_reasons"]) == bool(row["skipped_steps"])
    # a client that skipped both its steps is left out of the average with its reason
    left_out = [(r, f) for r in rows for f in r["failed"]]
    assert sum(r["skip_rejected_clients"] for r in rows) == len(left_out) >= 1
    row, failure = left_out[0]
    assert re.fullmatch(rf"all 2 local steps skipped: {reason.pattern}", failure["reason"])
    assert str(failure["client"]) not in row["client_lambdas"]
    text = console.export_text()
    for row in rows:
        line = next(x for x in text.splitlines() if x.startswith(f"round {row['round'] + 1}/3:"))
        assert (f"| skipped {row['skipped_steps']}/4: " in line) == bool(row["skipped_steps"])
    assert f"client {failure['client']} left out: all 2 local steps skipped" in text


def test_a_raising_reward_fails_the_run_past_max_skip_fraction(tmp_path: Path) -> None:
    """Rows already written stay; the error names the first reason with the reward's own
    message (which quotes a completion) withheld."""
    cfg = config(
        tmp_path, "raise", "raise", 7, "federation.rounds=3", "trainer.max_skip_fraction=0.3"
    )
    with pytest.raises(RunError) as err:
        run(cfg)
    match = ERROR.match(str(err.value))
    assert match, str(err.value)
    percent, skipped, local, bound, reason = match.groups()
    assert int(skipped) / int(local) > 0.3 and bound == "0.3"
    assert int(percent) == round(100 * int(skipped) / int(local))
    assert reason == (
        "reward 'broken': broken_rewards.score raised ValueError (its message is withheld: it "
        "may quote prompt or completion text)"
    )
    run_dir = tmp_path / "raise"
    summary, rows = read_summary(run_dir), read_metrics(run_dir)
    assert summary["status"] == "failed" and summary["first_skip_reason"] == reason
    assert (summary["local_steps"], summary["skipped_steps"]) == (int(local), int(skipped))
    assert rows and sum(r["local_steps"] for r in rows) == int(local)  # the last round's row too
    assert (run_dir / "checkpoints" / "latest").exists()
    assert SECRET not in str(err.value) and SECRET not in everything_written(run_dir)


def test_a_reward_broken_on_every_training_prompt_fails_in_the_first_round(tmp_path: Path) -> None:
    """Every client skips every step: no usable update, and the run fails with the skip error
    (not a retry of the same seeds), counting the failed round's steps in the summary."""
    with pytest.raises(RunError) as err:
        run(config(tmp_path, "all", "nan", 1, "federation.rounds=2"))
    match = ERROR.match(str(err.value))
    assert match, str(err.value)
    assert match.group(1, 2, 3) == ("100", "4", "4")
    summary = read_summary(tmp_path / "all")
    assert summary["status"] == "failed" and summary["rounds_completed"] == 0
    assert (summary["local_steps"], summary["skipped_steps"]) == (4, 4)
    assert summary["first_skip_reason"].startswith("reward 'broken' returned nan for item 0")
    assert json.loads((tmp_path / "all" / "summary.json").read_text()) == summary
