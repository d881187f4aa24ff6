"""Secure aggregation's cost per client-round, next to plain DP-FedAvg, at two round sizes k.

    source .venv/bin/activate
    export FIRM_RAY_CACHE=~/.cache/firm_ray HF_HUB_OFFLINE=1
    python bench/secagg_overhead.py           # 4 runs: k = 4 and 10, plain and secure (see Time)
    python bench/secagg_overhead.py --quick   # smoke: TINY world settings, k = 2 and 4, 2 rounds
    python bench/secagg_overhead.py --reuse   # the report again from the last runs; runs nothing

Writes ``<out>/secagg_overhead.json`` (every per-round figure of every run, the means, the
sanity checks) and ``<out>/secagg_overhead.md`` (the table and the command); ``<out>`` defaults
to bench/results/secagg (``_quick`` with --quick). Each run's own directory is under
``<out>/runs``.

**The design** (fixed before any run). World and federation of the protection benches
(bench/protection_grid.py's STUDY_SET: tune_configs/quickstart.yaml, FIRM as shipped, M = 2,
10 clients, 2 local steps, one Ray worker), DP-FedAvg as bench/privacy.py runs it: clip C = 0.7
(protection_grid.MEDIAN_UPDATE_NORM), noise multiplier 1.0, central noise. For each k in
{4 (clients_per_round 0.4), 10 (all sampled)}: one plain DP-FedAvg run, then the same run with
``privacy.secure_aggregation=true`` (32-bit ring), same seed (0), run one after the other in
this process through ``firm_ray.runtime.loop.run`` (each starts and stops its own local Ray).
Read from each run's metrics.jsonl (docs/ARTIFACTS.md): ``bytes_up`` (and the secure run's
``privacy.secagg_bytes_up`` breakdown: keys, shares, masked vector, unmasking answers),
``privacy.secagg_seconds`` (clients' protocol seconds summed, divided here by the round's
clients; the server's adding and unmasking), ``timing`` (aggregation, evaluation, round_wall,
orchestration_overhead). The clients' train-task seconds are recovered as round_wall -
aggregation - evaluation - orchestration_overhead (one worker: every client's task, in
sequence), divided by k: under DP the per-phase client timings (generate ... step) are withheld
with the other client metrics (null in the row). The secure protocol's worker tasks (share, mask,
unmask) are outside the train task, so their wall time lands in orchestration_overhead.
Bytes are means over every client-round. Times are shown for round 0 apart (it may pay first-call
costs: imports, first object-store transfers) and as the mean of rounds 1 .. R-1. Overhead % =
secure / plain - 1; the protocol's client seconds are put against the plain run's train-task seconds
per client-round. Sanity rows: clients dropped from the protocol, coordinates the fixed-point
encoding clipped (expected 0), failed clients, and the two runs' adapters after round 0 (same seed,
same theta^0, so they agree to the fixed-point resolution, the tolerance of
tests/e2e/test_secagg_run.py; later rounds drift apart by sampling, as that test explains, so they
are not compared).

**What was cut, and why.** Rewards are not the point: 3 rounds instead of 6 and 16 eval prompts
instead of 64 (evaluation is inside round_wall, the same work in both runs of a pair). One
seed: the cost of the protocol does not depend on what was learned.

**Time.** Measured on the shared 2-core machine while bench/robustness.py (Ray Tune, two
trials at once) and other helpers' tests ran beside it: load average 7.9 at the start, 5.6 at
the end. Every second here is under that load: identical work (the evaluation, the clients'
train tasks) varied by up to +-30 % between the runs of a pair, so round_wall and aggregation
differences of that size are noise, not secure aggregation; the protocol's own seconds and the
orchestration overhead's growth are the figures to read. The bench took 256 s (four runs of
60 - 67 s: ~30 s of Ray and worker start, 3 rounds of 5 - 6 s at k = 4 and 10 - 15 s at
k = 10); ``--quick`` 200 s (start-up dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims_grid import base_config
from protection_grid import MEDIAN_UPDATE_NORM, NUM_CLIENTS, STUDY_SET, finite_json, mean_std

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "secagg"
ROUNDS = 3
SEED = 0
NOISE_MULTIPLIER = 1.0
DP = [
    f"privacy.clip={MEDIAN_UPDATE_NORM:g}",
    f"privacy.noise_multiplier={NOISE_MULTIPLIER:g}",
    "privacy.noise=central",
]
SECURE = "privacy.secure_aggregation=true"
CUT = [f"federation.rounds={ROUNDS}", "data.max_eval_prompts=16"]  # after STUDY_SET: they win
STUDY_KS = {4: 0.4, 10: 1.0}  # k -> federation.clients_per_round (of NUM_CLIENTS)
QUICK_SET = [  # tests/e2e/tiny_world.py's TINY world, 2 rounds, one worker
    "federation.num_clients=4",
    "federation.local_steps=1",
    "federation.rounds=2",
    "trainer.batch_prompts=4",
    "trainer.generations_per_prompt=2",
    "trainer.max_new_tokens=8",
    "data.max_eval_prompts=16",
    "runtime.num_workers=1",
    "runtime.num_cpus_per_worker=0.5",
]
QUICK_KS = {2: 0.5, 4: 1.0}
PARTS = ("keys", "shares", "masked", "unmask")
TIMES = {  # per-round figure -> label
    "task_s_per_client": "client train task s per client-round",
    "protocol_s_per_client": "protocol s per client-round (clients' sum / k)",
    "server_s": "server protocol s per round (add + unmask)",
    "aggregation": "aggregation s per round",
    "evaluation": "evaluation s per round (same work in both)",
    "round_wall": "round wall s",
    "orchestration_overhead": "orchestration overhead s per round",
}
ULPS = 4  # float32 roundings of theta + mean beside the fixed-point error (the e2e test's)


# ------------------------------------------------------------------------------ analysis
def client_task_seconds(timing: dict[str, float]) -> float:
    """The busiest worker's train-task seconds of a round, recovered from the row (under DP the
    per-phase client timings are withheld: null): round_wall - aggregation - evaluation -
    orchestration_overhead. With one worker (this bench) that is every client's train task, in
    sequence; the secure protocol's own tasks are not in it (they land in the overhead)."""
    return max(
        0.0,
        timing["round_wall"]
        - timing["aggregation"]
        - timing.get("evaluation", 0.0)
        - timing["orchestration_overhead"],
    )


def per_round(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-client-round and per-round figures of each metrics.jsonl row."""
    out = []
    for row in rows:
        ups = [float(v) for v in row["bytes_up"].values()]
        n = len(ups)
        timing = row["timing"]
        block = row.get("privacy") or {}
        secure = bool(block.get("secure_aggregation"))
        fig: dict[str, Any] = {
            "round": row["round"],
            "clients": n,
            "bytes_up": statistics.fmean(ups) if ups else None,
            "task_s_per_client": client_task_seconds(timing) / n if n else None,
            "evaluation": timing.get("evaluation", 0.0),
            "aggregation": timing["aggregation"],
            "round_wall": timing["round_wall"],
            "orchestration_overhead": timing["orchestration_overhead"],
            "failed": len(row.get("failed") or []),
            "secure": secure,
        }
        if secure:
            parts = block["secagg_bytes_up"]
            seconds = block["secagg_seconds"]
            fig.update(
                {p: statistics.fmean(float(c[p]) for c in parts.values()) for p in PARTS},
                protocol_s_per_client=seconds["clients"] / len(parts) if parts else None,
                server_s=seconds["server"],
                dropped=list(block.get("secagg_dropped") or []),
                clipped=int(block.get("secagg_clipped") or 0),
            )
        out.append(fig)
    return out


def summarize(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Bytes: mean over every client-round (client-weighted); times: round 0 and the mean of
    rounds 1 .. R-1 (the steady state; None with one round)."""
    total = sum(r["clients"] for r in rounds)
    later = [r for r in rounds if r["round"] > 0]
    first = [r for r in rounds if r["round"] == 0]
    out: dict[str, Any] = {
        "rounds": len(rounds),
        "client_rounds": total,
        "bytes_up": sum(r["bytes_up"] * r["clients"] for r in rounds) / total if total else None,
        "failed": sum(r["failed"] for r in rounds),
    }
    if rounds and rounds[0]["secure"]:
        for p in PARTS:
            out[p] = sum(r[p] * r["clients"] for r in rounds) / total
        out["dropped"] = sum(len(r["dropped"]) for r in rounds)
        out["clipped"] = sum(r["clipped"] for r in rounds)
    for key in TIMES:
        out[f"{key}_r0"] = mean_std([r.get(key) for r in first])[0]
        out[f"{key}_later"] = mean_std([r.get(key) for r in later])[0]
    return out


def overhead(secure: float | None, plain: float | None) -> float | None:
    """secure / plain - 1 (None when either is missing or plain is 0)."""
    if secure is None or not plain:
        return None
    return secure / plain - 1.0


def line(label: str, plain: Any, secure: Any, ratio: float | None = None, unit: str = "n") -> dict:
    return {"label": label, "plain": plain, "secure": secure, "overhead": ratio, "unit": unit}


def compare(plain: dict[str, Any], secure: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows for one k: label, plain, secure, overhead (a fraction or None), unit.
    The protocol row's overhead is its seconds / plain's train-task seconds per client-round."""
    bytes_ratio = overhead(secure["bytes_up"], plain["bytes_up"])
    rows = [
        line("bytes up per client-round", plain["bytes_up"], secure["bytes_up"], bytes_ratio, "B")
    ]
    rows += [line(f"  secure: {p}", None, secure[p], unit="B") for p in PARTS]
    for suffix, when in (("r0", "round 0"), ("later", "rounds 1+, mean")):
        for key, label in TIMES.items():
            p, s = plain[f"{key}_{suffix}"], secure[f"{key}_{suffix}"]
            ratio = overhead(s, p)
            if key == "protocol_s_per_client":
                share = overhead(s, plain[f"task_s_per_client_{suffix}"])
                ratio = None if share is None else share + 1.0
            rows.append(line(f"{label}, {when}", p, s, ratio, "s"))
    return [
        *rows,
        line("clients dropped from the protocol", None, secure["dropped"]),
        line("coordinates clipped by the encoding", None, secure["clipped"]),
        line("failed clients", plain["failed"], secure["failed"]),
    ]


# ------------------------------------------------------------------------------ sanity
def adapter_agreement(plain_dir: Path, secure_dir: Path, k: int, clip: float) -> dict[str, Any]:
    """Max |secure - plain| over the round-0 adapters, and the e2e test's tolerance: the decoded
    sum's error bound k / s (fixed-point scale s of the round) + ULPS float32 roundings."""
    import torch
    from safetensors.torch import load_file

    from firm_ray.privacy.secagg import fixed_point_scale
    from firm_ray.privacy.secagg_vector import round_params

    def round0(run_dir: Path) -> dict[str, torch.Tensor]:
        first = sorted((run_dir / "checkpoints").glob("round_*"))[0]
        return load_file(str(first / "adapter.safetensors"))

    want, got = round0(plain_dir), round0(secure_dir)
    if list(got) != list(want):
        return {"agree": False, "reason": "different tensor names"}
    diff = max((got[n].double() - want[n].double()).abs().max().item() for n in want)
    resolution = k / fixed_point_scale(round_params(clip, 0.0, k, 32), k)
    largest = max(t.abs().max().item() for t in want.values())
    tolerance = resolution + ULPS * torch.finfo(torch.float32).eps * largest
    return {
        "agree": diff <= tolerance,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "resolution": resolution,
    }


# ------------------------------------------------------------------------------ runs
def run_one(base: Path, sets: Sequence[str], out: Path, name: str, console: Console) -> dict:
    """One run through the public API: its directory, status, k and bench-side wall seconds."""
    from firm_ray.config import load_config
    from firm_ray.runtime.loop import run

    overrides = [*sets, f"experiment.output_dir={out / 'runs'}", f"experiment.name={name}"]
    cfg = load_config(base, overrides)
    start = time.perf_counter()
    summary = run(cfg, console=console)
    return {
        "name": name,
        "status": summary["status"],
        "run_dir": str(summary["run_dir"]),
        "wall_s": time.perf_counter() - start,
        "k": cfg.federation.clients_sampled_per_round,
        "overrides": overrides,
    }


def analyse_pair(k: int, plain: dict[str, Any], secure: dict[str, Any]) -> dict[str, Any]:
    """The figures of one k from its two runs' files (run_one's records)."""
    from firm_ray.tracking.jsonl import read_metrics

    p_rounds = per_round(read_metrics(plain["run_dir"]))
    s_rounds = per_round(read_metrics(secure["run_dir"]))
    p_sum, s_sum = summarize(p_rounds), summarize(s_rounds)
    return {
        "k": k,
        "plain": {**plain, "rounds": p_rounds, "summary": p_sum},
        "secure": {**secure, "rounds": s_rounds, "summary": s_sum},
        "table": compare(p_sum, s_sum),
        "adapters_round0": adapter_agreement(
            Path(plain["run_dir"]), Path(secure["run_dir"]), k, MEDIAN_UPDATE_NORM
        ),
    }


def bench(out: Path, quick: bool, console: Console) -> list[tuple[int, dict, dict]]:
    """Run the pairs, k by k, plain first; [(k, plain record, secure record)]."""
    base = base_config(out, 2)
    common = [*(QUICK_SET if quick else [*STUDY_SET, *CUT]), f"experiment.seed={SEED}", *DP]
    runs = []
    for k, fraction in (QUICK_KS if quick else STUDY_KS).items():
        sets = [*common, f"federation.clients_per_round={fraction:g}"]
        plain = run_one(base, sets, out, f"k{k}_plain", console)
        secure = run_one(base, [*sets, SECURE], out, f"k{k}_secure", console)
        if not plain["k"] == secure["k"] == k:
            raise RuntimeError(f"k = {k} planned, the runs sampled {plain['k']} / {secure['k']}")
        runs.append((k, plain, secure))
    return runs


def reused_runs(out: Path) -> list[tuple[int, dict, dict]]:
    """The run records of the last bench written to ``out`` (--reuse: nothing runs)."""
    previous = json.loads((out / "secagg_overhead.json").read_text(encoding="utf-8"))
    keep = ("name", "status", "run_dir", "wall_s", "k", "overrides")
    return [
        (p["k"], {x: p["plain"][x] for x in keep}, {x: p["secure"][x] for x in keep})
        for p in previous["pairs"]
    ]


# ------------------------------------------------------------------------------ reporting
def cell(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.3f}"
    return str(value)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def table_rows(pairs: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per figure; per k: plain, secure, overhead (protocol row: % of training)."""
    header = ["per client-round / per round"]
    for p in pairs:
        header += [f"k={p['k']} plain", f"k={p['k']} secure", f"k={p['k']} overhead"]
    body = []
    for i, first in enumerate(pairs[0]["table"]):
        cells = [first["label"]]
        for p in pairs:
            r = p["table"][i]
            cells += [cell(r["plain"], r["unit"]), cell(r["secure"], r["unit"]), pct(r["overhead"])]
        body.append(cells)
    cells = ["adapters after round 0 agree (max diff / tolerance)"]
    for p in pairs:
        a = p["adapters_round0"]
        text = f"{'yes' if a['agree'] else 'NO'}"
        if "max_abs_diff" in a:
            text += f" ({a['max_abs_diff']:.1e} / {a['tolerance']:.1e})"
        cells += ["", text, ""]
    body.append(cells)
    return header, body


def print_table(result: dict[str, Any], console: Console) -> None:
    header, body = table_rows(result["pairs"])
    table = Table(title="secure aggregation vs plain DP-FedAvg, per client-round")
    for h in header:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console.print(table)


def markdown(result: dict[str, Any]) -> str:
    header, body = table_rows(result["pairs"])
    return (
        "# Secure aggregation's overhead (bench/secagg_overhead.py)\n\n"
        f"`{result['command']}`; {result['federation']}; DP-FedAvg clip "
        f"{MEDIAN_UPDATE_NORM:g}, noise multiplier {NOISE_MULTIPLIER:g}, central noise; secure = "
        "+ privacy.secure_aggregation (32 bits); seed "
        f"{SEED}. {result.get('cores')} cores, load average {result['load_start']:.1f} at the "
        f"start, {result['load_end']:.1f} at the end: times are under that load. Overhead: "
        "secure / plain - 1; on the protocol row: its seconds / plain's "
        f"train-task seconds per client-round. Bench wall time {result['wall_s']:.0f} s.\n\n"
        + "| "
        + " | ".join(header)
        + " |\n|"
        + "---|" * len(header)
        + "\n"
        + "".join("| " + " | ".join(r) + " |\n" for r in body)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="TINY world, k = 2 and 4, 2 rounds")
    parser.add_argument("--reuse", action="store_true", help="re-analyse the last runs in --out")
    parser.add_argument("--out", default=None, help=f"default {DEFAULT_OUT} (_quick with --quick)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out) if args.out else DEFAULT_OUT
    if args.quick and not args.out:
        out = out.with_name(out.name + "_quick")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=200)
    if args.reuse:
        previous = json.loads((out / "secagg_overhead.json").read_text(encoding="utf-8"))
        runs = reused_runs(out)
        timing = {x: previous.get(x) for x in ("wall_s", "load_start", "load_end", "cores")}
    else:
        load_start, start = os.getloadavg()[0], time.perf_counter()
        runs = bench(out, args.quick, console)
        timing = {
            "wall_s": time.perf_counter() - start,
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
            "cores": os.cpu_count(),
        }
    fed = (
        "TINY world (4 clients, 2 rounds x 1 local step), 1 worker"
        if args.quick
        else f"{NUM_CLIENTS} clients, {ROUNDS} rounds x 2 local steps, 1 worker"
    )
    result = {
        "bench": "secagg_overhead",
        "command": "python bench/secagg_overhead.py" + (" --quick" if args.quick else ""),
        "federation": fed,
        "quick": args.quick,
        **timing,
        "pairs": [analyse_pair(k, plain, secure) for k, plain, secure in runs],
    }
    (out / "secagg_overhead.json").write_text(
        json.dumps(finite_json(result), indent=1), encoding="utf-8"
    )
    (out / "secagg_overhead.md").write_text(markdown(result), encoding="utf-8")
    print_table(result, console)
    problems = [
        f"k={p['k']} {mode}: run status {p[mode]['status']}"
        for p in result["pairs"]
        for mode in ("plain", "secure")
        if p[mode]["status"] != "completed"
    ] + [
        f"k={p['k']}: the round-0 adapters do not agree"
        for p in result["pairs"]
        if not p["adapters_round0"]["agree"]
    ]
    for problem in problems:
        console.print(f"[red]{problem}")
    console.print(f"bench wall time {result['wall_s']:.0f} s -> {out / 'secagg_overhead.md'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
