"""Faults end to end (real local Ray, real processes killed by PID): a worker or the aggregator
SIGKILLed mid-round, a worker frozen (SIGSTOP), SIGINT / SIGTERM of `python -m firm_ray run`.
Every run that survives a fault ends with the adapter of the uninterrupted run, tensor for
tensor, and its metrics row says what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import torch
from safetensors.torch import load_file
from tiny_world import TINY

from firm_ray.config import load_config
from firm_ray.runtime.aggregator import latest_checkpoint
from firm_ray.runtime.loop import RunError, run
from firm_ray.runtime.worker import TRACE_ENV
from firm_ray.tracking.jsonl import read_metrics

pytestmark = pytest.mark.e2e

ROUNDS = 3
WAIT_S = 600  # generous: 2 cores shared with other jobs


def overrides(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        f"experiment.output_dir={tmp_path}",
        f"experiment.name={name}",
        *TINY,
        f"federation.rounds={ROUNDS}",
        *extra,
    ]


def config(tmp_path: Path, name: str, *extra: str):
    return load_config("tune_configs/quickstart.yaml", overrides(tmp_path, name, *extra))


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def assert_same_adapter(run_dir: Path, baseline: Path) -> None:
    a, b = final_adapter(run_dir), final_adapter(baseline)
    assert a.keys() == b.keys() and a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every faulted run must reproduce."""
    summary = run(config(tmp_path_factory.mktemp("baseline"), "baseline"))
    assert summary["status"] == "completed"
    return Path(summary["run_dir"])


class TaskTrace:
    """Reads the workers' task trace ($FIRM_RAY_TASK_TRACE) and acts on it from a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: list[str] = []
        self.errors: list[BaseException] = []

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        return [json.loads(x) for x in text.splitlines() if x.endswith("}")]

    def on(self, steps: list[tuple[Callable[[list[dict]], dict | None], Callable[[dict], str]]]):
        """For each (find, act) in order: wait until ``find(lines)`` returns a line, then
        ``act(line)`` (its description goes to ``done``)."""

        def watch() -> None:
            try:
                for find, act in steps:
                    deadline = time.time() + WAIT_S
                    while (line := find(self.lines())) is None:
                        assert time.time() < deadline, "the traced task never started"
                        time.sleep(0.02)
                    self.done.append(act(line))
            except BaseException as err:  # reported by the test
                self.errors.append(err)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread


def train_of(worker: int, round_index: int) -> Callable[[list[dict]], dict | None]:
    def find(lines: list[dict]) -> dict | None:
        return next(
            (
                x
                for x in lines
                if x["task"] == "train" and x["worker"] == worker and x["round"] == round_index
            ),
            None,
        )

    return find


def nth_evaluate(n: int) -> Callable[[list[dict]], dict | None]:
    def find(lines: list[dict]) -> dict | None:
        evaluations = [x for x in lines if x["task"] == "evaluate"]
        return evaluations[n - 1] if len(evaluations) >= n else None

    return find


def kill(sig: int = signal.SIGKILL) -> Callable[[dict], str]:
    def act(line: dict) -> str:
        os.kill(line["pid"], sig)
        return f"{signal.Signals(sig).name} {line['task']} worker {line['worker']}"

    return act


def kill_aggregator(line: dict) -> str:
    """SIGKILL this test's aggregator actor (a descendant of this process, so never another
    job's), found by the title Ray gives its process."""
    mine = psutil.Process().children(recursive=True)
    found = [p for p in mine if _cmdline(p).startswith("ray::Aggregator")]
    assert len(found) == 1, [_cmdline(p) for p in mine]
    found[0].kill()
    return f"SIGKILL aggregator during round {line['round']}"


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


@pytest.fixture
def trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TaskTrace:
    """The Ray this test's run starts inherits the variable: its workers write the trace."""
    path = tmp_path / "tasks.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(path))
    return TaskTrace(path)


def run_with(trace: TaskTrace, steps: list, cfg: Any) -> tuple[Path, list[dict]]:
    thread = trace.on(steps)
    summary = run(cfg)
    thread.join(timeout=5)
    assert not trace.errors, trace.errors
    assert len(trace.done) == len(steps), trace.done
    assert summary["status"] == "completed"
    run_dir = Path(summary["run_dir"])
    return run_dir, read_metrics(run_dir)


def test_worker_1_killed_mid_round(tmp_path: Path, trace: TaskTrace, baseline: Path) -> None:
    run_dir, rows = run_with(trace, [(train_of(1, 1), kill())], config(tmp_path, "w1"))
    assert_same_adapter(run_dir, baseline)
    faults = rows[1]["faults"]
    assert faults["worker_restarts"] == 1 and faults["aggregator_restarts"] == 0
    assert faults["reruns"] == [train_of(1, 1)(trace.lines())["client"]], faults
    assert "worker 1 died running client" in faults["events"][0]
    assert not rows[1]["failed"] and len(rows[1]["clients"]) == 2
    assert rows[0]["faults"]["worker_restarts"] == rows[2]["faults"]["worker_restarts"] == 0
    assert all(not r["faults"]["events"] for r in read_metrics(baseline))


def test_worker_0_killed_mid_round_and_during_evaluation(
    tmp_path: Path, trace: TaskTrace, baseline: Path
) -> None:
    """Worker 0 also computes theta^0, the evaluations and the final adapter's files."""
    steps = [(train_of(0, 0), kill()), (nth_evaluate(3), kill())]  # 3rd: after round 2
    run_dir, rows = run_with(trace, steps, config(tmp_path, "w0"))
    assert rows[0]["faults"]["worker_restarts"] == 1
    assert rows[0]["faults"]["reruns"] == [train_of(0, 0)(trace.lines())["client"]]
    assert rows[1]["faults"]["worker_restarts"] == 1 and rows[1]["faults"]["reruns"] == []
    assert "worker 0 died during evaluate" in rows[1]["faults"]["events"][0]
    assert rows[1]["rewards"] is not None
    assert_same_adapter(run_dir, baseline)


def test_aggregator_killed_mid_round(tmp_path: Path, trace: TaskTrace, baseline: Path) -> None:
    run_dir, rows = run_with(trace, [(train_of(0, 1), kill_aggregator)], config(tmp_path, "agg"))
    faults = rows[1]["faults"]
    assert faults["aggregator_restarts"] == 1 and faults["worker_restarts"] == 0, faults
    assert "aggregator died aggregating in round 2" in faults["events"][0], faults
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert_same_adapter(run_dir, baseline)


def test_aggregator_killed_before_the_first_checkpoint(
    tmp_path: Path, trace: TaskTrace, baseline: Path
) -> None:
    """Killed while round 1 is evaluated (its checkpoint not yet written): the aggregator is
    rebuilt from theta^0, which worker 0 must return as initialized, not the adapter it loaded
    for the evaluation (bench/faults.py found round 1 applied twice)."""
    steps = [(nth_evaluate(2), kill_aggregator)]  # 1st: theta^0's evaluation; 2nd: round 1's
    run_dir, rows = run_with(trace, steps, config(tmp_path, "agg0"))
    restarts = sum(r["faults"]["aggregator_restarts"] for r in rows)
    assert restarts == 1, [r["faults"] for r in rows]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert_same_adapter(run_dir, baseline)


def test_stuck_worker_is_replaced_and_its_client_rerun(
    tmp_path: Path, trace: TaskTrace, baseline: Path
) -> None:
    """A frozen process (SIGSTOP) past federation.client_timeout_s."""
    cfg = config(tmp_path, "stuck", "federation.client_timeout_s=45")
    stopped: list[int] = []

    def freeze(line: dict) -> str:
        stopped.append(line["pid"])
        return kill(signal.SIGSTOP)(line)

    try:
        run_dir, rows = run_with(trace, [(train_of(1, 1), freeze)], cfg)
    finally:
        for pid in stopped:  # never leave a frozen process behind, whatever happened
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
    faults = rows[1]["faults"]
    assert faults["worker_restarts"] == 1 and faults["reruns"] == [
        train_of(1, 1)(trace.lines())["client"]
    ]
    assert "stuck" in faults["events"][0] and "client_timeout_s = 45" in faults["events"][0]
    assert not rows[1]["failed"]
    assert_same_adapter(run_dir, baseline)


def test_worker_restarts_are_bounded(tmp_path: Path, trace: TaskTrace) -> None:
    thread = trace.on([(train_of(1, 0), kill())])
    with pytest.raises(RunError, match=r"more than runtime.max_worker_restarts = 0; last: ") as err:
        run(config(tmp_path, "bounded", "runtime.max_worker_restarts=0"))
    thread.join(timeout=5)
    message = str(err.value)
    assert "\n" not in message and "worker 1 died running client" in message
    run_dir = Path(err.value.run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert not ray.is_initialized()


def test_worker_start_timeout(tmp_path: Path) -> None:
    with pytest.raises(RunError) as err:
        run(config(tmp_path, "slow", "runtime.worker_start_timeout_s=0.5"))
    message = str(err.value)
    assert "not ready within runtime.worker_start_timeout_s = 0.5 s" in message, message
    assert "to load builtin:tiny-world" in message and "\n" not in message
    assert Path(err.value.run_dir) == tmp_path / "slow"
    assert not ray.is_initialized()


# ------------------------------------------------------------------------------ signals
def _alive(procs: list[psutil.Process]) -> list[str]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {_cmdline(proc)[:80]}")
        except psutil.Error:
            continue
    return alive


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_resumes(tmp_path: Path, baseline: Path, sig: int) -> None:
    name = signal.Signals(sig).name
    cmd = [sys.executable, "-m", "firm_ray", "run", "tune_configs/quickstart.yaml"]
    for item in overrides(tmp_path, name):
        cmd += ["--set", item]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    run_dir = tmp_path / name
    deadline = time.time() + WAIT_S
    try:
        while latest_checkpoint(run_dir) is None:  # round 1 is complete
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "round 1 never finished"
            time.sleep(0.1)
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in _cmdline(p) for p in ray_processes)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out[-3000:]
    assert f"continue with: firm-ray run --resume {run_dir}" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert not (run_dir / "adapter").exists()
    deadline = time.time() + 30
    while _alive(ray_processes) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(ray_processes), _alive(ray_processes)
    resumed = subprocess.run(
        [sys.executable, "-m", "firm_ray", "run", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert [r["round"] for r in read_metrics(run_dir)] == list(range(ROUNDS))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert_same_adapter(run_dir, baseline)


def test_second_sigint_exits_at_once(tmp_path: Path) -> None:
    """The second Ctrl-C, while the first one's clean stop runs, kills the started Ray and
    exits with 130; no Ray process survives."""
    cmd = [sys.executable, "-m", "firm_ray", "run", "tune_configs/quickstart.yaml"]
    for item in overrides(tmp_path, "twice"):
        cmd += ["--set", item]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    run_dir = tmp_path / "twice"
    deadline = time.time() + WAIT_S
    out: list[str] = []
    try:
        while latest_checkpoint(run_dir) is None:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "round 1 never finished"
            time.sleep(0.1)
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None
        for line in proc.stdout:  # the first signal's handler has run: send the second
            out.append(line)
            if line.startswith("SIGINT: stopping"):
                proc.send_signal(signal.SIGINT)
                break
        out.append(proc.communicate(timeout=60)[0])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = "".join(out)
    assert proc.returncode == 130, text[-3000:]
    assert "SIGINT again: exiting now" in text, text[-3000:]
    deadline = time.time() + 30
    while _alive(ray_processes) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(ray_processes), _alive(ray_processes)
