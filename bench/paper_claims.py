"""The FIRM paper's five claims on the built-in world: a paired study over seeds and knobs.

    source .venv/bin/activate
    export FIRM_RAY_CACHE=~/.cache/firm_ray HF_HUB_OFFLINE=1
    python bench/paper_claims.py --plan     # the sweeps and their estimated time; runs nothing
    python bench/paper_claims.py            # the study: 5 seeds, 260 trials (see Time)
    python bench/paper_claims.py --settings group/adamw/M2 group_mean/sgd/M2  # a subset
    python bench/paper_claims.py --quick    # smoke: 1 seed, 2 rounds, 1 local step, 16 trials
    python bench/paper_claims.py --reuse    # the report from the cached sweeps; runs nothing

Run again after an interruption: finished sweeps are reused and the interrupted one resumes
(its finished trials are kept). Writes ``<out>/paper_claims.json`` (every number, every trial
record), ``<out>/claims.md`` (to quote), ``<out>/plots/claim_<k>.png`` and
``<out>/specs/*.yaml`` (the generated sweep files, each runnable alone with ``firm-ray sweep``);
``<out>`` defaults to bench/results/paper_claims (``_quick`` with --quick).

**The claims** (DESIGN.md and the paper's abstract), FIRM = firm beta 1 relative, the shipped
default, fixed before any run:
1. smoother training: the mean over objectives of the std of round-to-round eval-reward changes
   (the summary's ``smoothness``), vs firm beta 0, fedavg_ls, fmgda, jd (UPGrad by default);
2. less client disagreement drift: disagreement of the clients' lambda / sum(lambda) (the mix
   of objectives; jd's weights are not on the simplex) vs the algorithms whose clients solve
   for lambda (beta 0, jd: it is 0 by construction for fedavg_ls and fmgda), ``param_drift`` vs
   all but fmgda (whose drift is another quantity), and ``update_cosine`` (mean pairwise cosine
   of the client deltas) vs all, when the runs log it;
3. better reward trade-offs: the hypervolume of the p = uniform point (reference: the seed's
   initial policy), and over the preference sweep vs fedavg_ls where both swept;
4. one parameter set uploaded per client: bytes vs fmgda, and exactly fedavg_ls's bytes;
5. the trade-off follows the preference: per objective, the slope of its final reward in its
   preference weight over the sweep (uniform + the simplex's vertices), tested against 0.
Statistics (bench/claims_stats.py): paired t over seeds (primary, two-sided, alpha 0.05, Holm
within each claim's family per setting), exact Wilcoxon as a check (its smallest p with 5 seeds
is 0.0625, so it never decides), mean difference with a 95 % CI and Cohen's d_z.

**The design.** Knobs: trainer.advantage {group, group_mean} x trainer.optimizer {adamw, sgd} x
M {2, 3} (M = 3 adds the sentiment reward to the quickstart's relevance and harmlessness).
World: tune_configs/quickstart.yaml unchanged except 16 clients (Dirichlet(0.3)), 2 sampled per
round, 12 rounds, 64 eval prompts, one Ray worker per trial (two trials at once on 2 cores).
AdamW runs at the quickstart's 5e-3; SGD (no momentum, as FMGDA's paper) at the trainer's stated
rule (its first step has AdamW's first-step norm) measured per advantage mode and scaled the same
way: group 10 x 0.5 = 5, group_mean 10 x 2 = 20 (claims_grid.SGD_RULE: without the std division
the gradients are ~4x smaller). Nothing was tuned on a result; the first group_mean/sgd runs used
5 (the group rule), kept apart under their own spec hash. Every setting runs firm beta 0 and 1,
fedavg_ls and fmgda on 5 seeds.

**What was cut, and why.** One trial of the full federation (4 of 16 clients per round, 123
eval prompts, 12 rounds) took 279 s here: 15 s per round (10.5 s for 16 local steps, 4.5 s of
evaluation) and 30 s of start, with the 2 cores shared with three other agents' work (load ~4).
- 2 clients per round instead of 4 and 64 eval prompts instead of 123 halve a trial; the
  disagreement and conflict metrics need >= 2 clients, which they keep;
- jd and centralized run at M = 2 only (claims 1-3 lose the jd comparison at M = 3;
  centralized is a reference, never a baseline). jd's aggregator is UPGrad (torchjd, through
  firm_ray's BVLS projector; no GPL dependency);
- the beta grid {0.1, 10} and the preference sweeps (FIRM and fedavg_ls at p = (1, 0), (0, 1))
  run in two anchor settings only: group/adamw/M2 (today's default) and group_mean/sgd/M2 (the
  faithful knobs of issue 15), so claims 3 (over the sweep) and 5 are tested there alone, and
  not at M = 3 (a 3-vertex sweep would add 30 trials, ~30 min).

**Time.** ``--plan`` prints the cost model's estimate per sweep (claims_grid.Cost: 30 s start,
0.65 s per local step, 2.3 s per evaluation, two trials at once, all measured on the shared
machine): 260 trials, 4.8 h (M = 2: 180 trials, 3.1 h; M = 3: 80 trials, 1.7 h). On an idle
machine each trial has a whole core, which should about halve that (not measured: the machine
was never idle); the ~2 h target holds only there. ``--settings`` runs a subset, and a second
call continues where the first stopped. ``--quick``: 16 trials of 2 rounds, 11 min here at
load ~12 (a trial's start took 40-50 s of its ~55 s); ``--reuse`` 9 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims_analysis import CLAIMS, analyse
from claims_data import load_records
from claims_grid import JD_AGGREGATOR, PART_ROLES, Cost, design, ensure_sweep, sweep_spec
from claims_report import markdown, plot_claims

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "paper_claims"
RESULT_FILE = "paper_claims.json"
MARKDOWN_FILE = "claims.md"
SEEDS = [0, 1, 2, 3, 4]


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def jd_missing_extra(aggregator: str) -> str:
    """'' when the jd aggregator runs with what is installed, else the pip command it needs."""
    from firm_ray.algorithms.jd import AGGREGATORS, missing_extra

    if aggregator not in AGGREGATORS:
        return f"one of {', '.join(AGGREGATORS)}"
    return missing_extra(aggregator)


def print_plan(parts: list, cost: Cost, console: Console) -> float:
    table = Table(title="claims study: sweeps")
    for col in ("setting", "part", "algorithms", "preferences", "trials", "est. min"):
        table.add_column(col)
    total = 0.0
    for p in parts:
        s = cost.part_s(p)
        total += s
        prefs = "uniform" if not p.preferences else f"{len(p.preferences)} points"
        table.add_row(
            p.setting.key, p.role, ", ".join(p.algos), prefs, str(p.n_trials()), f"{s / 60:.0f}"
        )
    console.print(table)
    console.print(
        f"{sum(p.n_trials() for p in parts)} trials; estimated {total / 3600:.1f} h "
        f"({total / 60:.0f} min) "
        f"({cost.parallel} at once; shared-machine step costs, see the module docstring)"
    )
    return total


def print_verdicts(analysis: dict[str, Any], console: Console) -> None:
    table = Table(title="verdict per setting (paired t over seeds, Holm within each claim)")
    table.add_column("setting")
    for c in CLAIMS:
        table.add_column(c, overflow="fold")
    colors = {"held": "green", "partly held": "yellow", "contradicted": "red", "conflicting": "red"}
    for key, v in analysis["verdicts"].items():
        cells = [v.get(c, "n/a") for c in CLAIMS]
        table.add_row(key, *[f"[{colors.get(x, 'white')}]{x}[/]" for x in cells])
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 3 4")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 rounds, 16 trials")
    parser.add_argument("--reuse", action="store_true", help="report from cached sweeps only")
    parser.add_argument("--plan", action="store_true", help="print the sweeps and estimate only")
    parser.add_argument("--out", default=None, help=f"default {DEFAULT_OUT} (_quick with --quick)")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=None,
        help="run / report only these settings, e.g. group/adamw/M2 group_mean/sgd/M2",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=None,
        choices=PART_ROLES,
        help="run / report only these parts of each setting (default all)",
    )
    parser.add_argument(
        "--jd-aggregator",
        default=JD_AGGREGATOR,
        help=f"the torchjd baseline (default {JD_AGGREGATOR})",
    )
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else SEEDS)
    out = (
        Path(args.out)
        if args.out
        else (DEFAULT_OUT.with_name(DEFAULT_OUT.name + "_quick") if args.quick else DEFAULT_OUT)
    )
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(width=200)
    missing = jd_missing_extra(args.jd_aggregator)
    if missing:
        console.print(f"[red]--jd-aggregator {args.jd_aggregator}: needs {missing}")
        return 2
    parts = design(seeds, quick=args.quick, jd=args.jd_aggregator)
    if args.settings:
        unknown = sorted(set(args.settings) - {p.setting.key for p in parts})
        if unknown:
            console.print(
                f"[red]--settings: unknown {unknown}; the design has "
                f"{sorted({p.setting.key for p in parts})}"
            )
            return 2
        parts = [p for p in parts if p.setting.key in args.settings]
    if args.parts:
        parts = [p for p in parts if p.role in args.parts]
    cost = Cost(rounds=2, local_steps=1, eval_s=0.6) if args.quick else Cost()
    estimate = print_plan(parts, cost, console)
    if args.plan:
        return 0
    if len(seeds) < 5 and not args.quick:
        console.print("[yellow]fewer than 5 seeds: the paired tests have little power")

    start = time.perf_counter()
    sweeps = []
    for part in parts:
        spec = sweep_spec(part, out, args.quick)
        sweeps.append(
            ensure_sweep(spec, out, part.n_trials(), "reuse" if args.reuse else "run", console)
        )
    dirs = [s["sweep_dir"] for s in sweeps if s.get("sweep_dir")]
    records, skipped = load_records(dirs)
    records = [r for r in records if r["seed"] in seeds]
    for line in skipped:
        console.print(f"[yellow]left out: {line}")
    short = [
        f"{s['name']}: {s['completed']}/{s['expected']}"
        for s in sweeps
        if s["completed"] < s["expected"]
    ]
    if short:
        console.print(f"[red]sweeps with missing trials: {'; '.join(short)}")
    if not records:
        console.print("[red]no completed trials: nothing to analyse")
        return 1
    analysis = analyse(records, seeds)
    wall = time.perf_counter() - start
    command = "python bench/paper_claims.py" + (" --quick" if args.quick else "")
    if args.seeds:
        command += " --seeds " + " ".join(map(str, seeds))
    if args.settings:
        command += " --settings " + " ".join(args.settings)
    if args.parts:
        command += " --parts " + " ".join(args.parts)
    if args.jd_aggregator != JD_AGGREGATOR:
        command += f" --jd-aggregator {args.jd_aggregator}"
    meta = {
        "command": command + (" --reuse" if args.reuse else ""),
        "seeds": seeds,
        "quick": args.quick,
        "rounds": 2 if args.quick else 12,
        "federation": "16 clients, 2 sampled per round"
        + (", 1 local step" if args.quick else ", 4 local steps"),
        "wall_s": wall,
        "estimate_s": estimate,
        "n_trials": len(records),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "sweeps": sweeps,
    }
    plots = plot_claims(analysis, out / "plots")
    result = {
        "bench": "paper_claims",
        **meta,
        **analysis,
        "plots": [str(p) for p in plots],
        "trials": records,
    }
    (out / RESULT_FILE).write_text(json.dumps(jsonable(result), indent=1), encoding="utf-8")
    (out / MARKDOWN_FILE).write_text(markdown(analysis, meta), encoding="utf-8")
    print_verdicts(analysis, console)
    console.print(f"bench wall time {wall:.0f} s -> {out / MARKDOWN_FILE}, {out / RESULT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
