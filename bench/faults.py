"""What a fault costs a run (issue 14): real faults injected into `python -m firm_ray run`.

    python bench/faults.py                   # 3 trials of each fault (~30 min on 2 cores)
    python bench/faults.py --trials 2        # ~20 min
    python bench/faults.py --quick           # 1 trial of worker + aggregator kill (~2.5 min)
    python bench/faults.py --faults sigint,disk_full --trials 5 --seed 7

Every run is the tiny quickstart (tune_configs/quickstart.yaml with the e2e tests' TINY
overrides from tests/e2e/tiny_world.py: 4 clients, 2 per round, 2 workers, 3 rounds), started
as its own process (its own session, so its process group is the driver and the Ray it starts),
and compared with one uninterrupted reference run of the same config. Faults:

- worker_kill: SIGKILL of a random ClientWorker (the process its last task line names);
- aggregator_kill: SIGKILL of the ``ray::Aggregator`` process;
- driver_kill: SIGKILL of the run's whole process group (the driver and the local Ray it
  started: what a killed job or a lost login leaves), then ``firm-ray run --resume``;
- sigint: SIGINT to the process group (Ctrl-C in a terminal), then ``--resume``;
- sigterm: SIGTERM to the driver (``kill PID``), then ``--resume``;
- corrupt_checkpoint: driver_kill, then one bit flipped in, or a truncation of, a random file
  (adapter.safetensors or state.json) of the newest round checkpoint, then ``--resume``;
- disk_full: the run's output directory on its own tmpfs (``mount -t tmpfs -o size=96m``: the
  pre-flight asks for 64 MiB free); a filler file takes every free byte mid-run; once the run
  has failed the filler is deleted and ``--resume`` runs. Skipped (said in the table) where
  mounting is not permitted;
- node_kill: a 3-node Ray on this machine (``ray.cluster_utils.Cluster``, all on 127.0.0.1: a
  head with 0 CPUs, where the driver and the aggregator run, and two 1-CPU nodes); the run
  connects to it through RAY_ADDRESS, its workers land on a worker node, and that node is
  removed (every process SIGKILLed) mid-round; the other node has room for them.

Timing is random (``--seed``): the workers' task trace ($FIRM_RAY_TASK_TRACE: one line per
train / evaluate / adapter_files task start) orders the moments of a run; a trial draws one of
the reference run's moments (for the faults that resume, only moments after the first round
checkpoint exists: before it there is nothing to resume and the run is restarted; for
corrupt_checkpoint after the second, so an older intact one exists) and a delay of 0-0.3 s
after it, then acts when its own run reaches that moment.

Columns: completed (final status completed and exit code 0), identical adapter (torch.equal on
every tensor of adapter/adapter_model.safetensors; a run without one is compared on its newest
checkpoint), data lost (metrics.jsonl rows missing, duplicated or unparsable against the
reference's rounds; summary missing or not completed; a 0-byte file or a leftover temporary
under the run directory), one-line error where one is expected (disk_full: exactly one
``error:`` line and no traceback; sigint / sigterm: exit 130 and the resume line;
corrupt_checkpoint: the resume says which checkpoint it skipped), fault in metrics (worker,
aggregator and node kills: a restart counted in metrics.jsonl's ``faults``), left running
(processes of a stopped run alive 20 s after it exited; killed by the bench) and seconds per
trial. Per-trial records and the reference go to bench/results/faults.json. The bench exits
non-zero only when it crashed itself; a fault that was not recovered is a finding, shown in the
table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fault_kit import (
    REPO,
    Launched,
    events,
    label,
    launch,
    metrics_rounds,
    run_command,
    supervise,
    tiny_overrides,
    trace_lines,
)
from fault_scenarios import SCENARIOS, TRACE_ENV, Context, Moment
from rich.console import Console
from rich.table import Table

DEFAULT_OUT = REPO / "bench" / "results" / "faults.json"
MAX_DELAY_S = 0.3
QUICK_FAULTS = ["worker_kill", "aggregator_kill"]


@dataclass(frozen=True)
class Fault:
    key: str
    after_checkpoints: int
    """Moments are drawn only where this many round checkpoints exist already."""
    expect: str | None
    """The one line a user should see, or None where none is expected."""


FAULTS = [
    Fault("worker_kill", 0, None),
    Fault("aggregator_kill", 0, None),
    Fault("driver_kill", 1, None),
    Fault("sigint", 1, "exit 130 + resume line"),
    Fault("sigterm", 1, "exit 130 + resume line"),
    Fault("corrupt_checkpoint", 2, "resume names the skipped checkpoint"),
    Fault("disk_full", 1, "one error: line"),
    Fault("node_kill", 0, None),
]


def moments(reference_events: list[dict[str, Any]], after_checkpoints: int) -> list[int]:
    """Indices of the reference's moments at which ``after_checkpoints`` checkpoints exist:
    round r's checkpoint is written before any task of round r + 1 starts."""
    found, trained = [], -1
    for i, event in enumerate(reference_events):
        if event["task"] == "train":
            trained = max(trained, event["round"])
        if trained >= after_checkpoints:
            found.append(i)
    return found


def run_reference(ctx: Context) -> dict[str, Any]:
    """The uninterrupted run every trial is compared with (its trace orders the moments)."""
    tdir = ctx.work / "reference"
    trace = tdir / "trace.jsonl"
    proc = launch(run_command(tdir, "run", ctx.rounds), tdir / "run.log", {TRACE_ENV: str(trace)})
    supervise(proc, ctx.timeout_s)
    run_dir = tdir / "run"
    if proc.rc != 0 or not (run_dir / "adapter" / "adapter_model.safetensors").is_file():
        raise SystemExit(f"the reference run failed (rc {proc.rc}):\n{proc.output()[-3000:]}")
    ctx.reference = run_dir
    ctx.reference_events = events(trace_lines(trace))
    ctx.reference_rounds = metrics_rounds(run_dir)[0]
    return {
        "run_dir": str(run_dir),
        "seconds": proc.seconds,
        "moments": [label(e, ctx.reference_events[:i]) for i, e in enumerate(ctx.reference_events)],
        "rounds": ctx.reference_rounds,
        "leftovers": proc.leftovers,
    }


def run_trial(ctx: Context, fault: Fault, index: int) -> dict[str, Any]:
    rng = random.Random(f"{ctx.seed}:{fault.key}:{index}")
    window = moments(ctx.reference_events, fault.after_checkpoints)
    pick = rng.choice(window)
    moment = Moment(pick, round(rng.uniform(0.0, MAX_DELAY_S), 3))
    reference_label = label(ctx.reference_events[pick], ctx.reference_events[:pick])
    record: dict[str, Any] = {
        "fault": fault.key,
        "trial": index,
        "moment": {"index": pick, "reference": reference_label, "delay_s": moment.delay_s},
        "expect": fault.expect,
        "notes": [],
    }
    tdir = ctx.work / fault.key / f"trial{index}"
    tdir.mkdir(parents=True)
    start = time.monotonic()
    try:
        SCENARIOS[fault.key](ctx, tdir, rng, moment, record)
    except Exception:  # the bench's own crash: recorded, the other trials go on
        record["bench_error"] = traceback.format_exc()[-3000:]
    record["seconds"] = round(time.monotonic() - start, 1)
    return record


# ---------------------------------------------------------------------------------- table
def _ratio(records: list[dict], test: Callable[[dict], bool | None]) -> str:
    values = [test(r) for r in records]
    if all(v is None for v in values):
        return "n/a"
    return f"{sum(v is True for v in values)}/{len(values)}"


def summarize(fault: Fault, records: list[dict]) -> dict[str, Any]:
    skipped = [r["skipped"] for r in records if r.get("skipped")]
    if skipped and len(skipped) == len(records):
        return {"fault": fault.key, "trials": len(records), "skipped": skipped[0]}
    done = [r for r in records if not r.get("skipped")]
    lost = [r for r in done if r.get("data_lost")]
    left = [r for r in done if any(p.get("leftovers") for p in r.get("processes", []))]
    return {
        "fault": fault.key,
        "trials": len(done),
        "injected": sum(bool(r.get("injected")) for r in done),
        "completed": _ratio(done, lambda r: bool(r.get("completed"))),
        "identical_adapter": _ratio(done, lambda r: (r.get("adapter") or {}).get("identical")),
        "data_lost": (
            "none" if not lost else f"{len(lost)}/{len(done)}: {lost[0]['data_lost'][0]}"
        ),
        "one_line_error": _ratio(done, lambda r: r.get("one_line_ok")),
        "fault_in_metrics": _ratio(done, lambda r: r.get("fault_recorded")),
        "left_running": f"{len(left)}/{len(done)}" if left else "none",
        "seconds_per_trial": round(sum(r["seconds"] for r in done) / max(1, len(done)), 1),
        "bench_errors": sum("bench_error" in r for r in done),
    }


def print_table(console: Console, rows: list[dict], args: argparse.Namespace, ref_s: float):
    table = Table(
        title=f"Faults on the tiny quickstart ({args.rounds} rounds; seed {args.seed}; "
        f"reference run {ref_s:.0f} s)"
    )
    columns = ["fault", "trials", "completed", "identical adapter", "data lost"]
    columns += ["one-line error", "fault in metrics", "left running", "s / trial"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("fault", "data lost") else "right")
    for row in rows:
        if "skipped" in row:
            table.add_row(row["fault"], str(row["trials"]), f"skipped: {row['skipped']}")
            continue
        table.add_row(
            row["fault"],
            str(row["trials"]),
            row["completed"],
            row["identical_adapter"],
            row["data_lost"],
            row["one_line_error"],
            row["fault_in_metrics"],
            row["left_running"],
            f"{row['seconds_per_trial']:.0f}",
        )
    console.print(table)


def print_trials(console: Console, records: list[dict]) -> None:
    for r in records:
        head = f"{r['fault']} #{r['trial']}"
        if r.get("skipped"):
            console.print(f"{head}: skipped: {r['skipped']}", markup=False)
            continue
        what = r.get("injected") or f"NOT injected ({r.get('inject_error') or 'run ended first'})"
        adapter = r.get("adapter") or {}
        parts = [
            f"at {r['moment']['reference']} +{r['moment']['delay_s']} s: {what}",
            f"completed {bool(r.get('completed'))}",
            f"adapter identical {adapter.get('identical')} ({adapter.get('compared')})",
        ]
        if r.get("error_line"):
            parts.append(f"line: {r['error_line']}")
        parts += r.get("data_lost") or []
        parts += r.get("notes") or []
        if r.get("bench_error"):
            parts.append("BENCH ERROR: " + r["bench_error"].strip().splitlines()[-1])
        console.print(f"{head}: " + "; ".join(parts), markup=False, soft_wrap=True)


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 trial of worker/aggregator kill")
    parser.add_argument("--faults", help=f"comma-separated subset of {[f.key for f in FAULTS]}")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per firm_ray process")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args(argv)
    keys = args.faults.split(",") if args.faults else [f.key for f in FAULTS]
    if args.quick:
        args.trials, keys = 1, (keys if args.faults else QUICK_FAULTS)
    unknown = sorted(set(keys) - {f.key for f in FAULTS})
    if unknown:
        parser.error(f"unknown fault(s) {unknown}; choose from {[f.key for f in FAULTS]}")
    selected = [f for f in FAULTS if f.key in keys]
    from firm_ray.runtime import worker

    assert worker.TRACE_ENV == TRACE_ENV, "the workers' trace variable was renamed"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="firm_ray_faults_"))
    work.mkdir(parents=True, exist_ok=True)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows in a log file as it happens
    console = Console(width=None if sys.stdout.isatty() else 170)  # a log keeps the columns
    os.environ.pop("RAY_ADDRESS", None)  # every run starts its own Ray (node_kill: a cluster)
    ctx = Context(work=work.resolve(), rounds=args.rounds, seed=args.seed, timeout_s=args.timeout_s)
    console.print(f"runs under {ctx.work}; the world model first (built once, then cached)")
    _build_world(console, ctx.timeout_s)
    reference = run_reference(ctx)
    console.print(f"reference run: {reference['seconds']:.1f} s, moments {reference['moments']}")
    records: list[dict[str, Any]] = []
    rows = []
    for fault in selected:
        mine = []
        for index in range(args.trials):
            record = run_trial(ctx, fault, index)
            print_trials(console, [record])
            mine.append(record)
        records += mine
        rows.append(summarize(fault, mine))
    print_table(console, rows, args, reference["seconds"])
    result = {
        "command": " ".join(["python", "bench/faults.py", *(argv or sys.argv[1:])]),
        "seed": args.seed,
        "trials": args.trials,
        "rounds": args.rounds,
        "overrides": tiny_overrides(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "reference": reference,
        "rows": rows,
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {args.out}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    crashed = [f"{r['fault']} #{r['trial']}" for r in records if "bench_error" in r]
    if crashed:
        console.print(f"the bench itself failed in {crashed} (tracebacks in {args.out})")
        return 1
    return 0


def _build_world(console: Console, timeout_s: float) -> None:
    """Build (or find) the world model before any timed run, so no run pays for it."""
    proc: Launched = launch(
        [sys.executable, "-m", "firm_ray", "build-world"], Path(tempfile.mkdtemp()) / "world.log"
    )
    supervise(proc, timeout_s)
    if proc.rc != 0:
        raise SystemExit(f"firm-ray build-world failed:\n{proc.output()[-3000:]}")


if __name__ == "__main__":
    sys.exit(main())
