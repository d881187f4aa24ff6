"""Client-level DP's price: final rewards vs epsilon for firm and fedavg_ls on the built-in world.

    source .venv/bin/activate
    export FIRM_RAY_CACHE=~/.cache/firm_ray HF_HUB_OFFLINE=1
    python bench/privacy.py --plan       # sweeps, each sigma's epsilon, the time; runs nothing
    python bench/privacy.py              # the study: 3 seeds, 42 trials (see Time)
    python bench/privacy.py --quick      # smoke: firm, 1 seed, 2 rounds, sigma 0 and 1, 3 trials
    python bench/privacy.py --reuse      # the report from the cached sweeps; runs nothing
    python bench/privacy.py --measure    # re-measure the clip C (honest update norms, no Ray)

Writes ``<out>/privacy.json`` (every number, every trial record), ``<out>/privacy.md``,
``<out>/privacy.png`` and ``<out>/specs/*.yaml``; ``<out>`` defaults to bench/results/privacy
(``_quick`` with --quick). Interrupted sweeps resume; finished ones are reused.

**The design** (fixed before any run). World and federation as bench/robustness.py
(bench/protection_grid.py): quickstart.yaml, M = 2, 10 clients all sampled every round, 6
rounds of 2 local steps, 64 eval prompts. Algorithms: firm (beta 1, relative, as shipped) and
fedavg_ls. DP-FedAvg (docs/PRIVACY.md): central noise, fixed clip C = 0.7 = the median L2
norm of the honest clients' round-0 updates (protection_grid.MEDIAN_UPDATE_NORM, measured with
``--measure``: 0.65 - 0.72 over 20 client updates, so about half the clients are clipped, a
little); noise multiplier sigma in {0 (clipping only: epsilon infinite), 0.03, 0.1, 0.3, 1, 4};
the reference is the same run without DP at all. epsilon at delta 1e-5 is each run's own
(summary.json ``privacy.epsilon``, dp_accounting's RDP for 10-of-10 sampling over 6 rounds);
``--plan`` prints it beforehand from the same accountant. With every client sampled there is no
amplification by sampling, and with k = 10 the noise on the average is sigma C / 10 per
coordinate: client-level DP is known to need thousands of clients per round for a useful
epsilon, so this grid shows where the reward gain disappears rather than a free lunch.

**The numbers.** Per algorithm and sigma, over seeds: epsilon, the reward gain (mean over
objectives of final - initial), the final rewards, the hypervolume (reference: the initial
policy) and the gain retained relative to the same algorithm without DP.

**What was cut, and why**: as bench/robustness.py (6 rounds of 2 local steps instead of 12 of
4; 3 seeds). **Time**: ``--plan``: 42 trials of ~122 s, two at once: 43 min on the shared
machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims_grid import FIRM, algo_overrides
from protection_grid import (
    MEDIAN_UPDATE_NORM,
    NUM_CLIENTS,
    QUICK_COST,
    STUDY_COST,
    Grid,
    finite_json,
    fmt,
    mean_std,
    median_norm,
    print_plan,
    reward_gain,
    run_grids,
    update_norms,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "privacy"
SEEDS = [0, 1, 2]
ALGOS = (FIRM, "fedavg_ls")
SIGMAS = (0.0, 0.03, 0.1, 0.3, 1.0, 4.0)
DELTA = 1e-5
CLIP = MEDIAN_UPDATE_NORM
NO_DP = "no DP"


def design(seeds: Sequence[int], quick: bool = False) -> list[Grid]:
    """The no-DP reference sweep and the DP sweep over sigma; every algorithm a variant.
    --quick: firm only, sigma 0 and 1, one seed (3 trials)."""
    algos = (FIRM,) if quick else ALGOS
    sigmas = [0.0, 1.0] if quick else list(SIGMAS)
    variants = {a: algo_overrides(a) for a in algos}
    seeds = [int(s) for s in seeds]
    return [
        Grid("privacy_nodp", variants, {"experiment.seed": seeds}),
        Grid(
            "privacy_dp",
            variants,
            {"experiment.seed": seeds, "privacy.noise_multiplier": sigmas},
            extra=[f"privacy.clip={CLIP:g}", "privacy.noise=central", f"privacy.delta={DELTA:g}"],
        ),
    ]


def planned_epsilons(sigmas: Sequence[float], rounds: int) -> dict[float, float]:
    """epsilon at DELTA after ``rounds`` rounds of 10-of-10 sampling (the runs' accountant)."""
    from firm_ray.privacy import ClientAccountant

    return {
        s: ClientAccountant(NUM_CLIENTS, NUM_CLIENTS, s, DELTA).epsilon(rounds) if s else math.inf
        for s in sigmas
    }


# ------------------------------------------------------------------------------ analysis
def setting_of(record: dict[str, Any]) -> str | float:
    """NO_DP, or the run's noise multiplier (0.0 = clipping only)."""
    return NO_DP if record.get("clip") is None else float(record["noise_multiplier"] or 0.0)


def run_epsilon(record: dict[str, Any]) -> float | None:
    """The run's own epsilon at delta (inf: clipping only; None: no DP)."""
    if record.get("clip") is None:
        return None
    eps = (record.get("privacy_summary") or {}).get("epsilon")
    return math.inf if eps is None else float(eps)


def analyse(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per (algorithm, setting): epsilon, gain, hypervolume, final rewards over seeds, and the
    gain retained relative to the same algorithm without DP."""
    cells: dict[tuple[str, str | float], list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault((r["algo"], setting_of(r)), []).append(r)
    ref = {
        algo: mean_std([reward_gain(r) for r in recs])[0]
        for (algo, s), recs in cells.items()
        if s == NO_DP
    }
    rows = []
    order = {NO_DP: -1.0}
    for (algo, s), recs in sorted(
        cells.items(), key=lambda c: (c[0][0], order.get(c[0][1], c[0][1]))
    ):
        gain, gain_sd, n = mean_std([reward_gain(r) for r in recs])
        hv, _, _ = mean_std([r.get("hypervolume") for r in recs])
        finals = [r["final"] for r in recs if r.get("final")]
        epsilons = {run_epsilon(r) for r in recs}
        base = ref.get(algo)
        rows.append(
            {
                "algo": algo,
                "setting": s,
                "noise_multiplier": None if s == NO_DP else s,
                "epsilon": epsilons.pop() if len(epsilons) == 1 else sorted(epsilons, key=str),
                "n_seeds": n,
                "gain": gain,
                "gain_std": gain_sd,
                "retained": gain / base if gain is not None and base else None,
                "hypervolume": hv,
                "final_rewards": [mean_std(c)[0] for c in zip(*finals, strict=True)]
                if finals
                else None,
                "server_clipped": sum(
                    (r.get("privacy_summary") or {}).get("server_clipped_client_rounds") or 0
                    for r in recs
                ),
            }
        )
    return {"reference_gain": ref, "cells": rows}


# ------------------------------------------------------------------------------ reporting
def eps_text(eps: Any) -> str:
    if eps is None:
        return "-"
    if isinstance(eps, list):
        return "/".join(map(eps_text, eps))
    return "inf" if math.isinf(eps) else f"{eps:.3g}"


def table_rows(analysis: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "algorithm",
        "sigma",
        "epsilon",
        "gain",
        "gain std",
        "retained",
        "hypervolume",
        "final rewards",
        "seeds",
    ]
    body = []
    for c in analysis["cells"]:
        final = c["final_rewards"]
        body.append(
            [
                c["algo"],
                NO_DP if c["setting"] == NO_DP else f"{c['setting']:g}",
                eps_text(c["epsilon"]),
                fmt(c["gain"], 4),
                fmt(c["gain_std"], 4),
                "n/a" if c["retained"] is None else f"{c['retained']:.0%}",
                fmt(c["hypervolume"], 4),
                "n/a" if not final else ", ".join(fmt(v) for v in final),
                str(c["n_seeds"]),
            ]
        )
    return header, body


def print_table(analysis: dict[str, Any], console: Console) -> None:
    header, body = table_rows(analysis)
    table = Table(title=f"reward vs epsilon (delta {DELTA:g}, clip {CLIP:g}), mean over seeds")
    for h in header:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console.print(table)


def markdown(analysis: dict[str, Any], meta: dict[str, Any]) -> str:
    header, body = table_rows(analysis)
    lines = [
        "# Reward vs epsilon under client-level DP (bench/privacy.py)",
        "",
        f"`{meta['command']}`; {meta['federation']}; clip C = {CLIP:g} (median honest update "
        f"norm), central noise, delta {DELTA:g}; seeds {meta['seeds']}; {meta['n_trials']} "
        f"trials ({meta['n_skipped']} left out). Retained: gain relative to the same "
        "algorithm without DP.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in body),
    ]
    return "\n".join(lines) + "\n"


def plot(analysis: dict[str, Any], path: Path) -> Path | None:
    """Reward gain vs epsilon (log axis), one line per algorithm with its seed std; the no-DP
    and clipping-only gains as horizontal lines (their epsilon is not finite)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = analysis["cells"]
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, algo in enumerate(sorted({c["algo"] for c in cells})):
        color = f"C{i}"
        pts = sorted(
            (c["epsilon"], c["gain"], c["gain_std"] or 0.0)
            for c in cells
            if c["algo"] == algo
            and isinstance(c["epsilon"], float)
            and math.isfinite(c["epsilon"])
            and c["gain"] is not None
        )
        if pts:
            x, y, e = zip(*pts, strict=True)
            ax.errorbar(x, y, yerr=e, marker="o", color=color, capsize=3, label=f"{algo}, DP")
        for c in cells:
            if c["algo"] != algo or c["gain"] is None:
                continue
            if c["setting"] == NO_DP:
                ax.axhline(c["gain"], color=color, ls="--", lw=1, label=f"{algo}, no DP")
            elif c["setting"] == 0.0:
                ax.axhline(c["gain"], color=color, ls=":", lw=1, label=f"{algo}, clip only")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"epsilon at delta {DELTA:g} (after the run)")
    ax.set_ylabel("reward gain (mean over objectives)")
    ax.set_title(f"client-level DP, clip {CLIP:g}, {NUM_CLIENTS} of {NUM_CLIENTS} clients")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def measure(console: Console) -> int:
    """Re-measure MEDIAN_UPDATE_NORM (the clip C): honest round-0 update norms, no Ray."""
    import torch

    torch.set_num_threads(1)
    norms = update_norms()
    for algo, vals in norms.items():
        console.print(f"{algo}: " + ", ".join(f"{v:.3f}" for v in vals))
    every = [v for vals in norms.values() for v in vals]
    console.print(
        f"median {median_norm(norms):g} (range {min(every):.3f} - {max(every):.3f}, "
        f"n = {len(every)}); protection_grid.MEDIAN_UPDATE_NORM is {MEDIAN_UPDATE_NORM:g}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--quick", action="store_true", help="firm, 1 seed, 2 rounds, 3 trials")
    parser.add_argument("--reuse", action="store_true", help="report from cached sweeps only")
    parser.add_argument("--plan", action="store_true", help="print the sweeps and estimate only")
    parser.add_argument("--measure", action="store_true", help="re-measure the clip C only")
    parser.add_argument("--out", default=None, help=f"default {DEFAULT_OUT} (_quick with --quick)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(width=200)
    if args.measure:
        return measure(console)
    seeds = args.seeds or ([0] if args.quick else SEEDS)
    out = Path(args.out) if args.out else DEFAULT_OUT
    if args.quick and not args.out:
        out = out.with_name(out.name + "_quick")
    out = out.resolve()
    grids = design(seeds, quick=args.quick)
    cost = QUICK_COST if args.quick else STUDY_COST
    estimate = print_plan(grids, cost, "privacy bench: sweeps", console)
    sigmas = grids[1].space["privacy.noise_multiplier"]
    eps = planned_epsilons(sigmas, cost.rounds)
    console.print(
        f"epsilon at delta {DELTA:g} after {cost.rounds} rounds (clip {CLIP:g}): "
        + ", ".join(f"sigma {s:g} -> {eps_text(e)}" for s, e in eps.items())
    )
    if args.plan:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records, sweeps, skipped = run_grids(grids, out, args.quick, args.reuse, "privacy", console)
    records = [r for r in records if r["seed"] in seeds]
    for line in skipped:
        console.print(f"[yellow]left out: {line}")
    if not records:
        console.print("[red]no completed trials: nothing to analyse")
        return 1
    analysis = analyse(records)
    command = "python bench/privacy.py" + (" --quick" if args.quick else "")
    if args.seeds:
        command += " --seeds " + " ".join(map(str, seeds))
    meta = {
        "command": command + (" --reuse" if args.reuse else ""),
        "seeds": seeds,
        "quick": args.quick,
        "federation": f"{NUM_CLIENTS} clients, all sampled, "
        + ("2 rounds x 1 local step" if args.quick else "6 rounds x 2 local steps"),
        "clip": CLIP,
        "delta": DELTA,
        "planned_epsilon": {str(s): e for s, e in eps.items()},
        "wall_s": time.perf_counter() - start,
        "estimate_s": estimate,
        "n_trials": len(records),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "sweeps": sweeps,
    }
    png = plot(analysis, out / "privacy.png")
    result = {"bench": "privacy", **meta, **analysis, "plot": str(png), "trials": records}
    (out / "privacy.json").write_text(json.dumps(finite_json(result), indent=1), encoding="utf-8")
    (out / "privacy.md").write_text(markdown(analysis, meta), encoding="utf-8")
    print_table(analysis, console)
    console.print(f"bench wall time {meta['wall_s']:.0f} s -> {out / 'privacy.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
