"""Bad input through the real command line (``python -m firm_ray``): a user mistake is one
``error:`` line and exit code 2. Mistakes the driver can see are caught by the pre-flight before
Ray starts or a run directory exists; those only a worker can meet (a reward failing on real
completions, a data file gone when the workers start) come back from real Ray workers as the
same one line, with the traceback in ``<run_dir>/error.log``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_rewards import SECRET
from tiny_world import ROOT, TINY, firm_ray_cli

pytestmark = pytest.mark.e2e

QUICKSTART = ROOT / "tune_configs" / "quickstart.yaml"


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def rows(n: int) -> list[str]:
    return [json.dumps({"prompt": f"question {i}?", "category": f"c{i % 2}"}) for i in range(n)]


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (overrides, start of the one error line)."""
    lines = rows(8)
    lines[4] = '{"prompt": "unterminated'
    (tmp / "bad.jsonl").write_text("\n".join(lines) + "\n")
    (tmp / "field.jsonl").write_text("\n".join([*rows(3), json.dumps({"text": "x"})]) + "\n")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "wrong.csv").write_text("text,category\nhello there,a\n")
    data = "data.source=jsonl"
    return {
        "bad line": ([data, f"data.path={tmp / 'bad.jsonl'}"], f"data.path {tmp}/bad.jsonl row 5"),
        "missing field": (
            [data, f"data.path={tmp / 'field.jsonl'}"],
            f"data.path {tmp}/field.jsonl row 4: missing field 'prompt'",
        ),
        "empty file": (
            [data, f"data.path={tmp / 'empty.jsonl'}"],
            f"data.path {tmp}/empty.jsonl: no prompts",
        ),
        "csv wrong column": (
            ["data.source=csv", f"data.path={tmp / 'wrong.csv'}"],
            f"data.path {tmp}/wrong.csv row 1: missing field 'prompt'",
        ),
        "missing data.path": (
            [data, f"data.path={tmp / 'none.jsonl'}"],
            f"data.path {tmp}/none.jsonl: file not found",
        ),
        "reward module": (
            [
                "rewards=[{name: relevance, type: relevance}, "
                "{name: mine, type: python, kwargs: {function: no_such_module_xyz.score}}]"
            ],
            "rewards[1].kwargs.function (reward 'mine'): python reward function",
        ),
        "model dir": (
            [f"model.name_or_path={tmp / 'no-model'}"],
            f"model.name_or_path '{tmp}/no-model': not found (no such directory",
        ),
    }


def test_preflight_errors_are_one_line_exit_2_and_leave_nothing(tmp_path: Path) -> None:
    """Every bad input of issue 14's list, through `run` and `check-config`: exit 2, one
    ``error:`` line and nothing else (Ray never starts), no run directory."""
    out = tmp_path / "runs"
    for name, (overrides, start) in bad_inputs(tmp_path).items():
        argv = [str(QUICKSTART), *sets(f"experiment.output_dir={out}", *TINY, *overrides)]
        for command in ("run", "check-config"):
            done = firm_ray_cli(command, *argv, timeout=300)
            assert done.returncode == 2, (name, command, done.stdout)
            lines = done.stdout.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), (name, lines)
        assert not out.exists(), name


def run_failing(
    tmp_path: Path, name: str, *overrides: str, flags: tuple[str, ...] = ()
) -> tuple[str, Path]:
    argv = sets(f"experiment.output_dir={tmp_path}", f"experiment.name={name}", *TINY)
    overrides = ("federation.rounds=1", *overrides)
    done = firm_ray_cli("run", str(QUICKSTART), *argv, *sets(*overrides), *flags)
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stdout
    run_dir = tmp_path / name
    assert errors[0].endswith(f" (traceback: {run_dir / 'error.log'})"), errors
    return done.stdout, run_dir


def broken(function: str) -> str:
    reward = f"{{name: broken, type: python, kwargs: {{function: bad_rewards.{function}}}}}"
    return f"rewards=[{{name: relevance, type: relevance}}, {reward}]"


def test_a_reward_returning_nan_at_the_initial_evaluation(tmp_path: Path) -> None:
    output, run_dir = run_failing(tmp_path, "nan", broken("nan_everywhere"))
    assert "error: reward 'broken' returned nan for item 0" in output
    assert "Traceback" not in output and "RayTaskError" not in output
    log = (run_dir / "error.log").read_text()
    assert "RayTaskError(ScoreError)" in log and "check_scores" in log  # the worker's frames


def test_a_raising_reward_is_one_line_with_its_message_withheld(tmp_path: Path) -> None:
    output, run_dir = run_failing(tmp_path, "raise", broken("raises"))
    assert (
        "error: reward 'broken': bad_rewards.raises raised ValueError (its message is withheld: "
        "it may quote prompt or completion text)"
    ) in output
    assert SECRET not in output and SECRET not in (run_dir / "error.log").read_text()


def test_data_gone_when_the_workers_start(tmp_path: Path) -> None:
    """--no-preflight stands in for a file deleted between the pre-flight and the workers'
    start: the worker's failed __init__ (Ray's ActorDiedError) becomes the DataError's line."""
    gone = tmp_path / "gone.jsonl"
    output, run_dir = run_failing(
        tmp_path, "gone", "data.source=jsonl", f"data.path={gone}", flags=("--no-preflight",)
    )
    assert f"error: data.path {gone}: file not found (traceback: " in output
    assert "DataError: data.path" in (run_dir / "error.log").read_text()
    assert (run_dir / "config.yaml").exists()
