"""The instruments of bench/faults.py: launching and watching `python -m firm_ray run`, the task
trace that times a fault, and the checks of what a faulted run left behind.

A plain module next to the bench (``python bench/faults.py`` puts bench/ on sys.path). It
imports no firm_ray code that could hide a fault: run directories are read as files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "tune_configs" / "quickstart.yaml"
EVENT_TASKS = ("train", "evaluate", "adapter_files")
"""Trace lines that count as moments a fault can be timed at (not start-up's ready lines)."""
POLL_S = 0.01
SNAPSHOT_S = 0.5
LEFTOVER_GRACE_S = 20.0


def tiny_overrides() -> list[str]:
    """The e2e tests' tiny quickstart (tests/e2e/tiny_world.py): one definition for both."""
    spec = importlib.util.spec_from_file_location(
        "tiny_world", REPO / "tests" / "e2e" / "tiny_world.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a real module load: it has __file__, like pytest's import
    return list(module.TINY)


def run_command(output_dir: Path, name: str, rounds: int) -> list[str]:
    """`python -m firm_ray run` of the tiny quickstart into ``output_dir/name``."""
    import sys

    sets = [
        f"experiment.output_dir={output_dir}",
        f"experiment.name={name}",
        *tiny_overrides(),
        f"federation.rounds={rounds}",
    ]
    cmd = [sys.executable, "-m", "firm_ray", "run", str(QUICKSTART)]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def resume_command(run_dir: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "firm_ray", "run", "--resume", str(run_dir)]


# ------------------------------------------------------------------------------ processes
def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


@dataclass
class Launched:
    """One `firm_ray` process in its own session (its pid is its process group id), its
    output in ``log``, and every descendant seen while it ran (pid -> (create time, cmd))."""

    popen: subprocess.Popen
    log: Path
    started: float
    seen: dict[int, tuple[float, str]] = field(default_factory=dict)
    rc: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def snapshot(self) -> None:
        for proc in self.descendants():
            try:
                self.seen.setdefault(proc.pid, (proc.create_time(), _cmdline(proc)[:100]))
            except psutil.Error:
                continue

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def launch(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Launched:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:  # the child holds its own copy of the descriptor
        popen = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {}), "COLUMNS": "200"},
        )
    return Launched(popen, log, time.monotonic())


def supervise(
    launched: Launched, timeout_s: float, poll: Callable[[Launched], None] | None = None
) -> Launched:
    """Wait for the process (at most ``timeout_s``, then its group is SIGKILLed), calling
    ``poll`` every POLL_S; then count its descendants still alive LEFTOVER_GRACE_S later
    (``leftovers``: what a stopped run left running) and SIGKILL those, by pid."""
    deadline = launched.started + timeout_s
    last_snapshot = 0.0
    while launched.popen.poll() is None:
        now = time.monotonic()
        if now >= deadline:
            launched.timed_out = True
            _killpg(launched.pid)
            launched.popen.wait()
            break
        if now - last_snapshot >= SNAPSHOT_S:
            launched.snapshot()
            last_snapshot = now
        if poll is not None:
            poll(launched)
        time.sleep(POLL_S)
    launched.rc = launched.popen.returncode
    launched.seconds = time.monotonic() - launched.started
    launched.leftovers = reap(launched.seen, LEFTOVER_GRACE_S)
    return launched


def _killpg(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _alive(pid: int, created: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
            return None  # gone, or the pid was reused
        return proc
    except psutil.Error:
        return None


def reap(seen: dict[int, tuple[float, str]], grace_s: float) -> list[str]:
    """The processes of ``seen`` still alive after ``grace_s`` (their commands), SIGKILLed."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = {
            pid: (created, cmd) for pid, (created, cmd) in seen.items() if _alive(pid, created)
        }
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for pid, (created, _) in alive.items():
        proc = _alive(pid, created)
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    return [cmd for _, cmd in alive.values()]


def aggregator_pid(launched: Launched) -> int | None:
    """The run's Aggregator actor process (a descendant of its driver), by its Ray title."""
    found = [p.pid for p in launched.descendants() if _cmdline(p).startswith("ray::Aggregator")]
    return found[0] if len(found) == 1 else None


# ------------------------------------------------------------------------------ task trace
def trace_lines(path: Path) -> list[dict[str, Any]]:
    """The workers' task trace ($FIRM_RAY_TASK_TRACE); a line still being written is left out."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def events(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in lines if x["task"] in EVENT_TASKS]


def label(event: dict[str, Any], before: list[dict[str, Any]]) -> str:
    """``train r2 c3``, ``evaluate after r1``, ``adapter_files``: where a moment falls."""
    if event["task"] == "train":
        return f"train r{event['round'] + 1} c{event['client']}"
    trained = [x["round"] for x in before if x["task"] == "train"]
    return f"{event['task']} after r{max(trained) + 1}" if trained else f"{event['task']} (start)"


@dataclass
class Trigger:
    """Acts once: ``delay_s`` after the trace shows its event number ``index`` (0-based over
    EVENT_TASKS lines); ``act(line, launched)`` returns what it did."""

    trace: Path
    index: int
    delay_s: float
    act: Callable[[dict[str, Any], Launched], str]
    due: float | None = None
    line: dict[str, Any] | None = None
    done: str | None = None
    error: str | None = None

    def __call__(self, launched: Launched) -> None:
        if self.done is not None or self.error is not None:
            return
        if self.due is None:
            seen = events(trace_lines(self.trace))
            if len(seen) <= self.index:
                return
            self.line, self.due = seen[self.index], time.monotonic() + self.delay_s
        if time.monotonic() >= self.due:
            try:
                self.done = self.act(self.line, launched)
            except Exception as err:  # the bench's own failure to inject: reported per trial
                self.error = f"{type(err).__name__}: {err}"


# ------------------------------------------------------------------------------ checks
def adapter_difference(run_dir: Path, reference: Path) -> dict[str, Any]:
    """torch.equal on every tensor of the final adapter (adapter/adapter_model.safetensors);
    a run without one is compared on its newest checkpoint against the reference's checkpoint
    of the same round. ``identical`` is None when there is nothing to compare."""
    import torch
    from safetensors.torch import load_file

    final = run_dir / "adapter" / "adapter_model.safetensors"
    if final.is_file():
        mine, theirs, what = final, reference / "adapter" / "adapter_model.safetensors", "final"
    else:
        rounds = sorted((run_dir / "checkpoints").glob("round_*/adapter.safetensors"))
        if not rounds:
            return {"identical": None, "compared": "nothing (no adapter, no checkpoint)"}
        mine = rounds[-1]
        theirs = reference / "checkpoints" / mine.parent.name / mine.name
        what = f"checkpoint {mine.parent.name}"
    try:
        a, b = load_file(str(mine)), load_file(str(theirs))
    except Exception as err:
        return {"identical": False, "compared": what, "error": f"{type(err).__name__}: {err}"}
    differ = sorted(k for k in a.keys() & b.keys() if not torch.equal(a[k], b[k]))
    differ += sorted(a.keys() ^ b.keys())
    return {
        "identical": not differ and bool(a),
        "compared": what,
        "tensors": len(b),
        "differ": len(differ),
    }


def metrics_rounds(run_dir: Path) -> tuple[list[int], int]:
    """The round of every row of metrics.jsonl in file order, and the unparsable lines."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return [], 0
    rounds, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rounds.append(int(json.loads(line)["round"]))
        except (ValueError, KeyError, TypeError):
            bad += 1
    return rounds, bad


def half_written(run_dir: Path) -> list[str]:
    """Files of size 0 and leftover temporaries (firm_ray's hidden ``.NAME.<hex>.tmp`` files and
    directories, anything named ``*.tmp``) under ``run_dir``, relative paths."""
    found = []
    for path in sorted(run_dir.rglob("*")):
        parts = path.relative_to(run_dir).parts
        temporary = [p.startswith(".") or p.endswith(".tmp") for p in parts]
        if temporary[-1] and not any(temporary[:-1]):  # a temporary directory counts once
            found.append("/".join(parts) + ("/" if path.is_dir() else "") + " (temporary)")
        elif not any(temporary) and path.is_file() and path.stat().st_size == 0:
            found.append("/".join(parts) + " (0 bytes)")
    return found


def data_lost(run_dir: Path, reference_rounds: list[int]) -> list[str]:
    """What a run lost or duplicated against the reference: metrics rows missing or twice,
    unparsable rows, the summary missing or not completed, half-written files."""
    lost = []
    rounds, bad = metrics_rounds(run_dir)
    missing = sorted(set(reference_rounds) - set(rounds))
    twice = sorted({r for r in rounds if rounds.count(r) > 1})
    extra = sorted(set(rounds) - set(reference_rounds))
    if missing:
        lost.append(f"metrics rows missing for round(s) {[r + 1 for r in missing]}")
    if twice:
        lost.append(f"metrics rows duplicated for round(s) {[r + 1 for r in twice]}")
    if extra:
        lost.append(f"metrics rows for unknown round(s) {[r + 1 for r in extra]}")
    if bad:
        lost.append(f"{bad} unparsable metrics line(s)")
    status = summary_status(run_dir)
    if status is None:
        lost.append("summary.json missing or unreadable")
    elif status != "completed":
        lost.append(f"summary status {status}")
    lost += half_written(run_dir)
    return lost


def summary_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def has_traceback(output: str) -> bool:
    return "Traceback (most recent call last)" in output
