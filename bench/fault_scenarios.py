"""One function per fault of bench/faults.py: start the run, inject the fault at the drawn
moment, recover as a user would (``--resume`` where the run cannot go on by itself), and
record what the run directory holds afterwards against the reference.

Every process signalled or killed here is a descendant of the bench (checked by pid before
acting), never another job's.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from fault_kit import (
    Launched,
    Trigger,
    adapter_difference,
    aggregator_pid,
    data_lost,
    error_lines,
    half_written,
    has_traceback,
    launch,
    resume_command,
    run_command,
    summary_status,
    supervise,
    trace_lines,
)

TRACE_ENV = "FIRM_RAY_TASK_TRACE"  # firm_ray.runtime.worker.TRACE_ENV (checked in main)
DISK_SIZE = "96m"  # the pre-flight asks for 64 MiB free: the run starts, then the disk fills
RESUME_LINE = "continue with: firm-ray run --resume"


@dataclass(frozen=True)
class Moment:
    index: int
    """The run's trace event (train / evaluate / adapter_files start) to wait for."""
    delay_s: float


@dataclass
class Context:
    work: Path
    rounds: int
    seed: int
    timeout_s: float
    reference: Path = Path()
    reference_events: list[dict[str, Any]] = field(default_factory=list)
    reference_rounds: list[int] = field(default_factory=list)


def _mine(pid: int) -> psutil.Process:
    """``pid`` if it is a descendant of the bench (never another job's process)."""
    mine = {p.pid: p for p in psutil.Process().children(recursive=True)}
    if pid not in mine:
        raise RuntimeError(f"pid {pid} is not a process this bench started")
    return mine[pid]


def _worker_pid(trace: Path, worker: int) -> int:
    lines = [x for x in trace_lines(trace) if x["worker"] == worker]
    if not lines:
        raise RuntimeError(f"worker {worker} has no line in the task trace yet")
    return lines[-1]["pid"]


def _run(
    ctx: Context, tdir: Path, moment: Moment, act: Any, out: Path | None = None, **env: str
) -> tuple[Path, Launched, Trigger]:
    trace = tdir / "trace.jsonl"
    trigger = Trigger(trace, moment.index, moment.delay_s, act)
    out = out or tdir
    proc = launch(
        run_command(out, "run", ctx.rounds), tdir / "run.log", {TRACE_ENV: str(trace), **env}
    )
    supervise(proc, ctx.timeout_s, trigger)
    return out / "run", proc, trigger


def _resume(ctx: Context, tdir: Path, run_dir: Path) -> Launched:
    proc = launch(resume_command(run_dir), tdir / "resume.log")
    return supervise(proc, ctx.timeout_s)


def _process(name: str, proc: Launched) -> dict[str, Any]:
    output = proc.output()
    return {
        "process": name,
        "rc": proc.rc,
        "seconds": round(proc.seconds, 1),
        "timed_out": proc.timed_out,
        "leftovers": proc.leftovers,
        "error_lines": error_lines(output),
        "traceback": has_traceback(output),
        "tail": output.splitlines()[-6:],
    }


def _faults_logged(run_dir: Path) -> dict[str, Any]:
    import json

    totals = {"worker_restarts": 0, "aggregator_restarts": 0, "events": []}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            faults = json.loads(line).get("faults") or {}
        except ValueError:
            continue
        totals["worker_restarts"] += faults.get("worker_restarts", 0)
        totals["aggregator_restarts"] += faults.get("aggregator_restarts", 0)
        totals["events"] += faults.get("events", [])
    return totals


def _finish(
    ctx: Context,
    record: dict[str, Any],
    run_dir: Path,
    trigger: Trigger,
    procs: list[tuple[str, Launched]],
) -> None:
    """The outcome of a trial, from the run directory and the processes' output."""
    record["injected"] = trigger.done
    record["inject_error"] = trigger.error
    if trigger.line is not None:
        record["moment"]["line"] = {k: trigger.line.get(k) for k in ("task", "worker", "round")}
    final = procs[-1][1]
    record["processes"] = [_process(name, proc) for name, proc in procs]
    record["completed"] = final.rc == 0 and summary_status(run_dir) == "completed"
    record["adapter"] = adapter_difference(run_dir, ctx.reference)
    record["data_lost"] = data_lost(run_dir, ctx.reference_rounds)
    record["faults_logged"] = logged = _faults_logged(run_dir)
    if record["fault"] in ("worker_kill", "aggregator_kill", "node_kill") and trigger.done:
        record["fault_recorded"] = logged["worker_restarts"] + logged["aggregator_restarts"] > 0
        if not record["fault_recorded"]:
            said = "died" in final.output()
            record["notes"].append(
                "no restart in metrics.jsonl" + (" (the console reported one)" if said else "")
            )
    for name, proc in procs:
        if has_traceback(proc.output()):
            record["notes"].append(f"a traceback in the {name} output")
        if proc.timed_out:
            record["notes"].append(f"{name} timed out after {ctx.timeout_s:.0f} s")
        if proc.leftovers:
            record["notes"].append(f"{name} left running: {proc.leftovers}")


def _resume_unless_completed(
    ctx: Context, tdir: Path, run_dir: Path, first: Launched
) -> list[tuple[str, Launched]]:
    procs = [("run", first)]
    if summary_status(run_dir) != "completed" or first.rc != 0:
        procs.append(("resume", _resume(ctx, tdir, run_dir)))
    return procs


# ---------------------------------------------------------------------------------- faults
def worker_kill(ctx: Context, tdir: Path, rng: random.Random, moment: Moment, record: dict):
    victim = rng.randrange(2)
    record["victim"] = f"worker {victim}"

    def act(line: dict, launched: Launched) -> str:
        pid = _worker_pid(tdir / "trace.jsonl", victim)
        _mine(pid).kill()
        return f"SIGKILL worker {victim} (pid {pid})"

    run_dir, proc, trigger = _run(ctx, tdir, moment, act)
    _finish(ctx, record, run_dir, trigger, [("run", proc)])


def aggregator_kill(ctx: Context, tdir: Path, rng: random.Random, moment: Moment, record: dict):
    def act(line: dict, launched: Launched) -> str:
        pid = aggregator_pid(launched)
        if pid is None:
            raise RuntimeError("no single ray::Aggregator process under the run")
        _mine(pid).kill()
        return f"SIGKILL aggregator (pid {pid})"

    run_dir, proc, trigger = _run(ctx, tdir, moment, act)
    _finish(ctx, record, run_dir, trigger, [("run", proc)])


def _signal_group(sig: int) -> Any:
    def act(line: dict, launched: Launched) -> str:
        launched.snapshot()  # every process of the group, for what is left running after
        _mine(launched.pid)
        os.killpg(launched.pid, sig)
        return f"{signal.Signals(sig).name} to the process group {launched.pid}"

    return act


def driver_kill(ctx: Context, tdir: Path, rng: random.Random, moment: Moment, record: dict):
    run_dir, proc, trigger = _run(ctx, tdir, moment, _signal_group(signal.SIGKILL))
    procs = _resume_unless_completed(ctx, tdir, run_dir, proc)
    _finish(ctx, record, run_dir, trigger, procs)


def _stop(sig: int, group: bool) -> Any:
    def scenario(ctx: Context, tdir: Path, rng: random.Random, moment: Moment, record: dict):
        def to_driver(line: dict, launched: Launched) -> str:
            launched.snapshot()
            _mine(launched.pid)
            os.kill(launched.pid, sig)
            return f"{signal.Signals(sig).name} to the driver {launched.pid}"

        act = _signal_group(sig) if group else to_driver
        run_dir, proc, trigger = _run(ctx, tdir, moment, act)
        procs = _resume_unless_completed(ctx, tdir, run_dir, proc)
        _finish(ctx, record, run_dir, trigger, procs)
        output = proc.output()
        lines = [x for x in output.splitlines() if RESUME_LINE in x or "had completed" in x]
        record["error_line"] = lines[0] if lines else None
        record["one_line_ok"] = (
            proc.rc == 130 and len(lines) == 1 and not has_traceback(output)
            if trigger.done
            else None
        )

    return scenario


def corrupt_checkpoint(
    ctx: Context, tdir: Path, rng: random.Random, moment: Moment, record: dict
) -> None:
    run_dir, proc, trigger = _run(ctx, tdir, moment, _signal_group(signal.SIGKILL))
    rounds = sorted(p for p in (run_dir / "checkpoints").glob("round_*") if p.is_dir())
    name, how = rng.choice(["adapter.safetensors", "state.json"]), rng.choice(["truncate", "flip"])
    if rounds and trigger.done:
        target = rounds[-1] / name
        data = bytearray(target.read_bytes())
        at, where = rng.randrange(len(data)), f"{rounds[-1].name}/{name} ({len(data)} B)"
        if how == "truncate":
            data, done = data[:at], f"truncated {where} to {at} B"
        else:
            bit = rng.randrange(8)
            data[at] ^= 1 << bit
            done = f"flipped bit {bit} of byte {at} of {where}"
        target.write_bytes(bytes(data))
        record["corrupted"] = done
    procs = _resume_unless_completed(ctx, tdir, run_dir, proc)
    _finish(ctx, record, run_dir, trigger, procs)
    if "corrupted" in record:
        record["injected"] = f"{record['injected']}; {record['corrupted']}"
        resumed = procs[-1][1].output() if len(procs) > 1 else ""
        lines = [x for x in resumed.splitlines() if f"skipped {rounds[-1].name}" in x]
        record["error_line"] = lines[0] if lines else None
        record["one_line_ok"] = len(lines) == 1 and not has_traceback(resumed)


def _mount(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``path``; None, or why it could not be mounted."""
    if os.geteuid() != 0:
        return "not root (mount -t tmpfs needs CAP_SYS_ADMIN)"
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        return f"mount: {err}"
    return None if done.returncode == 0 else f"mount: {done.stderr.strip() or done.returncode}"


def disk_full(ctx: Context, tdir: Path, rng: random.Random, moment: Moment, record: dict):
    disk = tdir / "disk"
    disk.mkdir()
    refused = _mount(disk, DISK_SIZE)
    if refused:
        record["skipped"] = refused
        return
    filler = disk / "filler"
    try:

        def fill(line: dict, launched: Launched) -> str:
            st = os.statvfs(disk)
            free = st.f_bavail * st.f_frsize
            note = ""
            try:
                with open(filler, "wb") as fh:
                    fh.write(b"\0" * free)
            except OSError as err:  # the run wrote meanwhile: the disk is just as full
                if err.errno != errno.ENOSPC:
                    raise
                note = "; the filler itself hit ENOSPC"
            st = os.statvfs(disk)
            return f"filled the run's {DISK_SIZE} tmpfs ({free} B; {st.f_bavail} blocks left{note})"

        run_dir, proc, trigger = _run(ctx, tdir, moment, fill, out=disk)
        output = proc.output()
        errors = error_lines(output)
        record["error_line"] = errors[0] if errors else None
        record["one_line_ok"] = (
            proc.rc not in (0, None) and len(errors) == 1 and not has_traceback(output)
            if trigger.done
            else None
        )
        record["after_failure"] = {
            "summary_status": summary_status(run_dir),
            "half_written": half_written(run_dir) if run_dir.is_dir() else [],
        }
        filler.unlink(missing_ok=True)
        procs = _resume_unless_completed(ctx, tdir, run_dir, proc)
        _finish(ctx, record, run_dir, trigger, procs)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def node_kill(ctx: Context, tdir: Path, rng: random.Random, moment: Moment, record: dict):
    from fault_nodes import LocalCluster

    victim = rng.randrange(2)
    trace = tdir / "trace.jsonl"
    with LocalCluster(trace) as cluster:

        def act(line: dict, launched: Launched) -> str:
            pid = _worker_pid(trace, victim)
            _mine(pid)
            node = cluster.node_of(pid)
            start = time.monotonic()
            cluster.kill(node)
            return (
                f"removed the node of worker {victim} ({node.node_id[:8]}, every process "
                f"SIGKILLed in {time.monotonic() - start:.1f} s)"
            )

        run_dir, proc, trigger = _run(ctx, tdir, moment, act, **cluster.client_env())
        record["nodes"] = cluster.describe()
        _finish(ctx, record, run_dir, trigger, [("run", proc)])


SCENARIOS = {
    "worker_kill": worker_kill,
    "aggregator_kill": aggregator_kill,
    "driver_kill": driver_kill,
    "sigint": _stop(signal.SIGINT, group=True),
    "sigterm": _stop(signal.SIGTERM, group=False),
    "corrupt_checkpoint": corrupt_checkpoint,
    "disk_full": disk_full,
    "node_kill": node_kill,
}
