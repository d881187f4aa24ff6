"""The installed entry points answer --version/--help without importing torch or ray."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml

from firm_ray import __version__

QUICKSTART = Path(__file__).resolve().parents[2] / "tune_configs" / "quickstart.yaml"


def test_python_dash_m_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "firm_ray", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"firm-ray {__version__}"


def test_console_script_help_is_light() -> None:
    script = shutil.which("firm-ray")
    assert script is not None, "firm-ray console script not installed (run scripts/setup.sh)"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "check-config" in out.stdout
    probe = "import sys, firm_ray.cli.main; print('torch' in sys.modules, 'ray' in sys.modules)"
    light = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert light.stdout.strip() == "False False"


def test_build_world_prints_the_cached_model(world_model_dir, capsys) -> None:
    from firm_ray.cli.main import main

    assert main(["build-world"]) == 0
    assert (
        f"warm-start model: {world_model_dir}" in capsys.readouterr().out
    )  # already built by the fixture: finds it in the cache
    assert (world_model_dir / "config.json").exists()
    assert (world_model_dir / "tokenizer.json").exists()


def test_sweep_arguments_are_checked_before_ray_starts(tmp_path, capsys) -> None:
    from firm_ray.cli.main import main

    assert main(["sweep"]) == 2
    assert "give a SWEEP_FILE, or --resume SWEEP_DIR" in capsys.readouterr().out
    assert main(["sweep", "a.yaml", "--resume", str(tmp_path)]) == 2
    assert main(["sweep", "--resume", str(tmp_path), "--output-dir", "x"]) == 2
    assert "drop --output-dir" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: sweep file not found" in capsys.readouterr().out
    assert main(["sweep", "--resume", str(tmp_path)]) == 2  # not a sweep directory: user error
    assert "not a sweep directory" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sweep:\n  name: s\n  base: nowhere.yaml\n  space: {algorithm.beta: {grid: [0]}}\n"
    )
    assert main(["sweep", str(bad)]) == 2
    assert "sweep.base nowhere.yaml" in capsys.readouterr().out


# --------------------------------------------------------------------------- pre-flight and errors


def _raised(err: BaseException) -> str:
    """The traceback text of ``err`` raised for real (what a Ray worker formats)."""
    try:
        raise err
    except BaseException:
        return traceback.format_exc()


def _task_error(cause: BaseException, function: str = "ClientWorker.evaluate()") -> Any:
    """The exception ray.get raises for a task that raised ``cause`` (Ray's own classes)."""
    from ray.exceptions import RayTaskError

    error = RayTaskError(function, _raised(cause), cause, pid=1, ip="127.0.0.1")
    return error.as_instanceof_cause()


def test_check_config_runs_the_preflight(tmp_path, capsys) -> None:
    from firm_ray.cli.main import main

    config = [str(QUICKSTART), "--set", f"experiment.output_dir={tmp_path / 'runs'}"]
    bad = [*config, "--set", "data.source=jsonl", "--set", f"data.path={tmp_path / 'x.jsonl'}"]
    assert main(["check-config", *bad]) == 2
    assert capsys.readouterr().out == f"error: data.path {tmp_path / 'x.jsonl'}: file not found\n"
    assert main(["check-config", *bad, "--no-preflight"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("# pre-flight skipped (--no-preflight)\n")
    assert yaml.safe_load(out)["data"]["source"] == "jsonl"
    assert main(["check-config", *config]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("# pre-flight ok: model paths; data: 1,099 train / 123 eval prompts")
    assert not (tmp_path / "runs").exists()


def test_run_stops_at_the_preflight_before_a_run_directory(tmp_path, capsys) -> None:
    from firm_ray.cli.main import main

    rewards = "rewards=[{name: a, type: length}, {name: b, type: python, kwargs: {function: x.y}}]"
    argv = ["run", str(QUICKSTART), "--set", f"experiment.output_dir={tmp_path}"]
    assert main([*argv, "--set", rewards]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: rewards[1].kwargs.function (reward 'b'): python reward")
    assert out.count("\n") == 1 and list(tmp_path.iterdir()) == []
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_a_score_error_in_a_worker_is_one_user_line() -> None:
    from firm_ray.cli.errors import describe
    from firm_ray.rewards.base import ScoreError

    err = _task_error(ScoreError("reward 'r' returned nan for item 0 (32 of 32 items non-finite)"))
    assert isinstance(err, ScoreError) and str(err).count("\n") >= 3  # with Ray's frames
    failure = describe(err)
    assert failure.message == "reward 'r' returned nan for item 0 (32 of 32 items non-finite)"
    assert (failure.exit_code, failure.in_worker) == (2, True)
    nested = _task_error(_task_error(ScoreError("reward 'r': inner")), "Aggregator.aggregate()")
    assert describe(nested).message == "reward 'r': inner"


def test_a_failed_worker_init_is_read_from_ray_s_creation_traceback() -> None:
    """Ray's ActorDiedError keeps only the creation task's formatted traceback."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from firm_ray.cli.errors import describe
    from firm_ray.data.sources import DataError

    cause = DataError("data.path /x.jsonl: file not found")
    task = RayTaskError("ClientWorker.__init__()", _raised(cause), cause, pid=1, ip="127.0.0.1")
    died = ActorDiedError.from_task_error(task)
    assert died.actor_init_failed and not hasattr(died, "cause")
    failure = describe(died)
    assert (failure.message, failure.exit_code) == ("data.path /x.jsonl: file not found", 2)
    other = RayTaskError("f", _raised(MemoryError("x")), MemoryError("x"), pid=1, ip="127.0.0.1")
    assert describe(ActorDiedError.from_task_error(other)).message == (
        "a Ray worker failed to start: MemoryError"
    )


def test_foreign_errors_from_a_worker_show_their_type_only() -> None:
    """A reward or library message may quote client text: it stays out of the console line."""
    from firm_ray.cli.errors import describe

    failure = describe(_task_error(ValueError("SECRET completion text")))
    assert failure.message == "internal error in a Ray worker: ValueError"
    assert failure.exit_code == 1


def test_driver_errors_and_their_exit_codes(tmp_path) -> None:
    from firm_ray.cli.errors import Failure, describe, report
    from firm_ray.runtime.loop import RunError

    assert describe(RunError("round 0 failed")) == Failure("round 0 failed", 1)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "f"))
    assert describe(full).message == (
        f"{tmp_path / 'f'}: No space left on device (ENOSPC); free space, or fix the path or "
        "its permissions"
    )
    assert describe(full).exit_code == 2
    assert describe(KeyError("k")).message == "internal error: KeyError: 'k'"
    log = tmp_path / "run" / "error.log"
    line, code = report(_task_error(ValueError("boom")), log, ["x"])
    assert line == f"error: internal error in a Ray worker: ValueError (traceback: {log})"
    assert code == 1 and "ValueError: boom" in log.read_text()
    assert log.read_text().startswith("--- ")


def test_storage_errors_are_user_errors() -> None:
    from firm_ray.cli.errors import describe

    storage = pytest.importorskip("firm_ray.tracking.storage")
    err = storage.StorageError("runs/x/summary.json: disk full; free some space", path="runs/x")
    assert (describe(err).message, describe(err).exit_code) == (str(err), 2)


def test_sweep_preflights_its_base_config_and_each_variant(tmp_path, capsys) -> None:
    from firm_ray.cli.main import main

    sweep = tmp_path / "s.yaml"
    (tmp_path / "base.yaml").write_text(QUICKSTART.read_text())
    sweep.write_text(
        "sweep:\n  name: s\n  base: base.yaml\n"
        f"  output_dir: {tmp_path / 'sweeps'}\n"
        "  variants:\n    firm: [algorithm.name=firm]\n"
        f"    other_data: [data.source=jsonl, 'data.path={tmp_path / 'none.jsonl'}']\n"
        "  space: {algorithm.beta: {grid: [0.1]}}\n"
    )
    assert main(["sweep", str(sweep)]) == 2
    assert (
        capsys.readouterr().out == f"error: data.path {tmp_path / 'none.jsonl'}: file not found\n"
    )
    assert not (tmp_path / "sweeps").exists()
