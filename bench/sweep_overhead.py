"""What does Ray Tune cost on top of the runs it sweeps?

    .venv/bin/python bench/sweep_overhead.py            # 4 trials of 3 rounds, ~4-5 minutes
    .venv/bin/python bench/sweep_overhead.py --rounds 5

Times the same 4 quickstart runs (preferences 0.2 / 0.4 / 0.6 / 0.8 on relevance, FIRM, the
quickstart's 2 workers, so one trial at a time: the same concurrency both ways) three ways:

- ``sweep``: ``firm-ray sweep`` on a generated sweep file (process start, local Ray, Tune, the 4
  trials, the Pareto report), wall clock;
- ``cli x4``: ``firm-ray run`` launched 4 times one after the other, the sum of their wall
  clocks (each starts Python and its own local Ray): what a user would do without a sweep;
- ``run() x4``: ``firm_ray.run`` called 4 times in one process with Ray started once: the
  strictest baseline (no per-run start-up at all).

Target (issue 7): sweep <= 1.15 x the one-by-one runs. Prints a table, writes
bench/results/sweep_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "tune_configs" / "quickstart.yaml"
PREFERENCES = [[0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]]
TARGET = 1.15


def _overrides(rounds: int, out: Path) -> list[str]:
    return [f"federation.rounds={rounds}", f"experiment.output_dir={out}"]


def time_sweep(rounds: int, out: Path) -> tuple[float, float]:
    """Wall clock of `firm-ray sweep` (whole process) and Tune's own fit() time."""
    spec = {
        "sweep": {
            "name": "overhead",
            "base": str(QUICKSTART),
            "set": _overrides(rounds, out / "unused"),
            "space": {"algorithm.preference": {"grid": PREFERENCES}},
            "max_concurrent_trials": 1,
            "output_dir": str(out / "sweeps"),
        }
    }
    path = out / "overhead.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "firm_ray", "sweep", str(path)], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    trials = json.loads((out / "sweeps" / "overhead" / "tune_trials.json").read_text())
    assert [t["status"] for t in trials] == ["completed"] * len(PREFERENCES), trials
    fit = float(proc.stdout.split("sweep wall time ")[1].split(" s")[0])
    return wall, fit


def time_cli_runs(rounds: int, out: Path) -> list[float]:
    walls = []
    for i, pref in enumerate(PREFERENCES):
        cmd = [sys.executable, "-m", "firm_ray", "run", str(QUICKSTART)]
        for item in [
            *_overrides(rounds, out / "cli"),
            f"experiment.name=run{i}",
            f"algorithm.preference={json.dumps(pref)}",
        ]:
            cmd += ["--set", item]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return walls


def time_inprocess_runs(rounds: int, out: Path) -> list[float]:
    import ray

    from firm_ray.config import load_config
    from firm_ray.runtime.local_ray import start_local_ray
    from firm_ray.runtime.loop import run

    start_local_ray()
    walls = []
    try:
        for i, pref in enumerate(PREFERENCES):
            config = load_config(
                QUICKSTART,
                [
                    *_overrides(rounds, out / "inprocess"),
                    f"experiment.name=run{i}",
                    f"algorithm.preference={json.dumps(pref)}",
                ],
            )
            start = time.perf_counter()
            run(config, console=Console(quiet=True))
            walls.append(time.perf_counter() - start)
    finally:
        ray.shutdown()
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sweep_overhead")
    args = parser.parse_args()
    out = args.out.resolve()
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.environ.setdefault("RAY_ADDRESS", "")
    console = Console()
    console.print(f"4 trials of {args.rounds} rounds each; one at a time in every mode")
    cli = time_cli_runs(args.rounds, out)
    console.print(f"cli x4: {sum(cli):.1f} s ({', '.join(f'{w:.1f}' for w in cli)})")
    inproc = time_inprocess_runs(args.rounds, out)
    console.print(f"run() x4: {sum(inproc):.1f} s ({', '.join(f'{w:.1f}' for w in inproc)})")
    sweep_wall, fit = time_sweep(args.rounds, out)
    console.print(f"sweep: {sweep_wall:.1f} s (Tune fit {fit:.1f} s)")

    table = Table(title=f"Sweep overhead: 4 trials x {args.rounds} rounds, one at a time")
    for col in ("mode", "seconds", "sweep / this", f"target <= {TARGET}x"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    rows = {
        "firm-ray sweep (whole process)": sweep_wall,
        "Tune fit() inside it": fit,
        "firm-ray run x4, one by one": sum(cli),
        "run() x4 in one process": sum(inproc),
    }
    for name, seconds in rows.items():
        ratio = sweep_wall / seconds
        baseline = name.startswith(("firm-ray run", "run()"))
        verdict = ("met" if ratio <= TARGET else "NOT met") if baseline else ""
        table.add_row(name, f"{seconds:.1f}", f"{ratio:.2f}x" if baseline else "", verdict)
    console.print(table)
    result = {
        "rounds": args.rounds,
        "trials": len(PREFERENCES),
        "sweep_wall_s": sweep_wall,
        "sweep_fit_s": fit,
        "cli_runs_s": cli,
        "inprocess_runs_s": inproc,
        "ratio_vs_cli": sweep_wall / sum(cli),
        "ratio_vs_inprocess": sweep_wall / sum(inproc),
        "target": TARGET,
    }
    path = REPO / "bench" / "results" / "sweep_overhead.json"
    path.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
