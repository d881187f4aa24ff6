"""Byzantine robustness of the federation: every aggregation rule x attack x attacker fraction.

    source .venv/bin/activate
    export FIRM_RAY_CACHE=~/.cache/firm_ray HF_HUB_OFFLINE=1
    python bench/robustness.py --plan     # the sweeps and their estimated time; runs nothing
    python bench/robustness.py            # the study: 3 seeds, 126 trials (see Time)
    python bench/robustness.py --quick    # smoke: 1 seed, 2 rounds, 1 local step, 4 trials
    python bench/robustness.py --reuse    # the report from the cached sweeps; runs nothing

Run again after an interruption: finished sweeps are reused and the interrupted one resumes.
Writes ``<out>/robustness.json`` (every number, every trial record), ``<out>/robustness.md``
(the tables, to quote), ``<out>/robustness.png`` and ``<out>/specs/*.yaml`` (the generated sweep
files, each runnable alone with ``firm-ray sweep``); ``<out>`` defaults to
bench/results/robustness (``_quick`` with --quick).

**The design** (fixed before any run). World: tune_configs/quickstart.yaml, FIRM as shipped
(beta 1, relative), M = 2. Federation (bench/protection_grid.py): 10 clients, all 10 sampled
every round, so f = 3 attackers (30 %) still leaves Krum its k >= 2f + 3 = 9 updates.
Aggregators (robustness.aggregator), each tuned to tolerate 30 % as a server would that does not
know the attackers: mean (FedAvg, the reference), trimmed_mean (trim_fraction 0.3: 3 of 10
dropped at each end), coordinate_median, krum and multi_krum (f = 3 at every attacker fraction,
0 included: the server's tolerance, not an oracle count; multi_krum averages k - f = 7),
norm_bound (bound = the median honest client update norm, protection_grid.MEDIAN_UPDATE_NORM,
measured). Attacks (robustness.attack, a seeded set of floor(fraction x 10) clients attacking
every round): sign_flip x 4 (delta -> -4 delta: the smallest integer factor at which 20 %
attackers cancel the honest mean, 0.8 - 0.2 x 4 = 0) and scale x 10 (delta -> 10 delta), at 10,
20, 30 % attackers; plus the no-attack runs (0 %), shared by both attacks. Seeds 0, 1, 2 (the
seed also draws the attackers).

**The numbers.** Reward gain of a trial = mean over objectives of final - initial eval reward
(the initial policy is the reference; every trial of a seed starts from it). Retained gain of a
cell = its mean gain over seeds / mean's no-attack mean gain over seeds (1 = as good as FedAvg
unattacked; negative = worse than the initial policy). The robust rules beat mean without any
attack here (bench/aggregate_step.py: their step is longer), so a second, stricter table divides
by the same rule's own no-attack gain. Hypervolume: summary.json's (the final point w.r.t. the
initial rewards; 0 unless both objectives improved). The headline: at 20 % sign-flip and scale,
the retained gain of every rule; the issue's bar is that one robust rule keeps >= 90 % while
mean loses most (< 50 %), read against mean's gain (the stricter reading is printed beside it).

**What was cut, and why.** A trial here trains 10 clients a round (the claims study trains 2),
so at the claims study's 12 rounds x 4 local steps one trial takes ~5.9 min (claims_grid.Cost:
30 s start, 0.65 s a local step, 2.3 s an evaluation, measured on the shared 2-core machine):
126 trials would take 6.2 h. Cut: 6 rounds of 2 local steps (12 local steps per client, a
quarter of the claims study's 48); the 64 eval prompts are kept (the retained gain is a ratio of
small reward gains and needs the evaluation's precision). 3 seeds, not 5.

**Time.** ``--plan`` prints the cost model's estimate: 126 trials of ~122 s, two at once:
2.1 h (claims_grid.Cost: 0.65 s a local step, measured at load ~4). ``--quick`` (4 trials of
2 rounds x 10 clients x 1 step, 16 eval prompts) took 167 s here while the claims study ran
beside it (load ~5-6): ~33 s of start and ~12.5 s a round, i.e. ~1.1 s a local step; at that
rate the study would take ~3.1 h. An idle machine gives each trial a whole core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protection_grid import (
    MEDIAN_UPDATE_NORM,
    NUM_CLIENTS,
    QUICK_COST,
    STUDY_COST,
    Grid,
    finite_json,
    fmt,
    mean_std,
    print_plan,
    reward_gain,
    run_grids,
)

from firm_ray.config.privacy import ROBUST_RULES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "robustness"
SEEDS = [0, 1, 2]
BYZANTINE = 3  # f: Krum's tolerance, 30 % of 10 clients
TRIM_FRACTION = 0.3
ATTACKS = {"sign_flip": 4.0, "scale": 10.0}  # kind -> robustness.attack.scale
FRACTIONS = (0.1, 0.2, 0.3)
HEADLINE_FRACTION = 0.2
KEEP_BAR, LOSE_BAR = 0.9, 0.5


def aggregator_overrides(rule: str) -> list[str]:
    """The --set lines of one aggregation rule, tuned to tolerate 30 % attackers."""
    out = [f"robustness.aggregator={rule}"]
    if rule == "trimmed_mean":
        out.append(f"robustness.trim_fraction={TRIM_FRACTION}")
    if rule in ("krum", "multi_krum"):
        out.append(f"robustness.byzantine={BYZANTINE}")
    if rule == "norm_bound":
        out.append(f"robustness.norm_bound={MEDIAN_UPDATE_NORM}")
    return out


def design(seeds: Sequence[int], quick: bool = False) -> list[Grid]:
    """The no-attack sweep and one sweep per attack (fractions x seeds), every rule a variant.
    --quick: mean and krum, no attack and 20 % sign-flip, one seed (4 trials)."""
    rules = ("mean", "krum") if quick else ROBUST_RULES
    attacks = {"sign_flip": ATTACKS["sign_flip"]} if quick else ATTACKS
    fractions = (HEADLINE_FRACTION,) if quick else FRACTIONS
    variants = {r: aggregator_overrides(r) for r in rules}
    seeds = [int(s) for s in seeds]
    grids = [Grid("robust_none", variants, {"experiment.seed": seeds})]
    for kind, scale in attacks.items():
        grids.append(
            Grid(
                f"robust_{kind}",
                variants,
                {"experiment.seed": seeds, "robustness.attack.fraction": list(fractions)},
                extra=[
                    f"robustness.attack.kind={kind}",
                    f"robustness.attack.scale={scale:g}",
                    # the base must be valid on its own (kind needs fraction > 0); swept below
                    f"robustness.attack.fraction={fractions[0]:g}",
                ],
            )
        )
    return grids


# ------------------------------------------------------------------------------ analysis
def analyse(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per (attack, fraction, rule): gain, hypervolume and final rewards over seeds, the
    retained gain relative to mean's no-attack gain and relative to the rule's own no-attack
    gain (`retained_own`); the headline at 20 %."""
    cells: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault((r["attack"], round(r["attack_fraction"], 6), r["aggregator"]), []).append(
            r
        )
    ref_gain, _, ref_n = mean_std([reward_gain(r) for r in cells.get(("none", 0.0, "mean"), [])])
    own = {  # each rule's own no-attack gain: the stricter reference (robust > mean unattacked)
        rule: mean_std([reward_gain(r) for r in recs])[0]
        for (attack, _, rule), recs in cells.items()
        if attack == "none"
    }
    rows = []
    for (attack, fraction, rule), recs in sorted(cells.items()):
        gain, gain_sd, n = mean_std([reward_gain(r) for r in recs])
        hv, hv_sd, _ = mean_std([r.get("hypervolume") for r in recs])
        finals = [r["final"] for r in recs if r.get("final")]
        final = [mean_std(col)[0] for col in zip(*finals, strict=True)] if finals else None
        selected = [
            (r.get("robustness_summary") or {}).get("attacker_updates_selected") for r in recs
        ]
        rows.append(
            {
                "attack": attack,
                "fraction": fraction,
                "attackers": int(fraction * NUM_CLIENTS + 1e-9),
                "aggregator": rule,
                "n_seeds": n,
                "seeds": sorted(r["seed"] for r in recs),
                "gain": gain,
                "gain_std": gain_sd,
                "retained": gain / ref_gain if gain is not None and ref_gain else None,
                "retained_own": gain / own[rule] if gain is not None and own.get(rule) else None,
                "hypervolume": hv,
                "hypervolume_std": hv_sd,
                "final_rewards": final,
                "attacker_updates_selected": sum(s for s in selected if s is not None)
                if any(s is not None for s in selected)
                else None,
            }
        )
    return {
        "reference_gain": ref_gain,
        "reference_n_seeds": ref_n,
        "cells": rows,
        "headline": headline(rows),
    }


def retained_of(
    rows: Sequence[dict[str, Any]], attack: str, fraction: float, key: str = "retained"
) -> dict[str, float | None]:
    """{rule: retained gain (``key``: retained | retained_own)} of one (attack, fraction)."""
    kept = {
        r["aggregator"]: r[key]
        for r in rows
        if r["attack"] == attack and abs(r["fraction"] - fraction) < 1e-9
    }
    return {rule: kept[rule] for rule in ROBUST_RULES if rule in kept}


def headline(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """At 20 % attackers, per attack: each rule's retained gain, the best robust rule, and
    whether the issue's bar held (a robust rule >= 90 %, mean < 50 %)."""
    out = {}
    for attack in sorted({r["attack"] for r in rows} - {"none"}):
        kept = retained_of(rows, attack, HEADLINE_FRACTION)
        robust = {k: v for k, v in kept.items() if k != "mean" and v is not None}
        best = max(robust, key=robust.get) if robust else None
        mean = kept.get("mean")
        if best is None or mean is None:
            verdict = "not measured"
        elif robust[best] >= KEEP_BAR and mean < LOSE_BAR:
            verdict = "held"
        else:
            parts = []
            if robust[best] < KEEP_BAR:
                parts.append(f"best robust rule {best} keeps {robust[best]:.0%} < {KEEP_BAR:.0%}")
            if mean >= LOSE_BAR:
                parts.append(f"mean keeps {mean:.0%} >= {LOSE_BAR:.0%}")
            verdict = "not held: " + "; ".join(parts)
        own = retained_of(rows, attack, HEADLINE_FRACTION, "retained_own")
        out[attack] = {
            "retained": kept,
            "retained_own": own,
            "best_robust": best,
            "verdict": verdict,
        }
    return out


# ------------------------------------------------------------------------------ reporting
def columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    return sorted({(r["attack"], r["fraction"]) for r in rows}, key=lambda c: (c[0] != "none", c))


def table_lines(
    analysis: dict[str, Any], key: str = "retained"
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one table: rule x (attack, fraction), cell = ``key`` (mean over
    seeds; retained as a percentage, gain and hypervolume as numbers)."""
    rows = analysis["cells"]
    cols = columns(rows)
    header = ["aggregator", *(f"{a} {f:.0%}" if a != "none" else "no attack" for a, f in cols)]
    by = {(r["aggregator"], r["attack"], r["fraction"]): r for r in rows}
    rules = [g for g in ROBUST_RULES if any(r["aggregator"] == g for r in rows)]
    body = []
    for rule in rules:
        cells = []
        for a, f in cols:
            v = (by.get((rule, a, f)) or {}).get(key)
            pct = key.startswith("retained")
            cells.append("n/a" if v is None else (f"{v:.0%}" if pct else fmt(v, 4)))
        body.append([rule, *cells])
    return header, body


def print_tables(analysis: dict[str, Any], console: Console) -> None:
    ref = fmt(analysis["reference_gain"], 4)
    for key, title in (
        ("retained", f"reward gain retained (vs mean, no attack: gain {ref})"),
        ("retained_own", "reward gain retained (vs the same rule, no attack)"),
        ("gain", "reward gain (mean over objectives of final - initial), mean over seeds"),
        ("hypervolume", "hypervolume (reference: the initial policy), mean over seeds"),
    ):
        header, body = table_lines(analysis, key)
        table = Table(title=title)
        for h in header:
            table.add_column(h)
        for row in body:
            table.add_row(*row)
        console.print(table)
    for attack, h in analysis["headline"].items():
        color = "green" if h["verdict"] == "held" else "yellow"
        console.print(
            f"[{color}]20 % {attack}: {h['verdict']}[/] (best robust: {h['best_robust']})"
        )


def markdown(analysis: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Robust aggregation under attack (bench/robustness.py)",
        "",
        f"`{meta['command']}`; {meta['federation']}; seeds {meta['seeds']}; "
        f"{meta['n_trials']} trials ({meta['n_skipped']} left out); attacks: "
        + ", ".join(f"{k} x {v:g}" for k, v in ATTACKS.items()),
        "",
    ]
    for key, title in (
        ("retained", "Reward gain retained, relative to mean without attack"),
        ("retained_own", "Reward gain retained, relative to the same rule without attack"),
        ("gain", "Reward gain (mean over objectives of final - initial)"),
        ("hypervolume", "Hypervolume (reference: the initial policy)"),
    ):
        header, body = table_lines(analysis, key)
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |"]
        lines += ["|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body] + [""]
    lines += ["## Headline (20 % attackers)", ""]
    for attack, h in analysis["headline"].items():
        kept = ", ".join(f"{k} {fmt_pct(v)}" for k, v in h["retained"].items())
        own = ", ".join(f"{k} {fmt_pct(v)}" for k, v in h["retained_own"].items())
        lines.append(
            f"- {attack}: {h['verdict']}; {kept} (vs the rule's own no-attack gain: {own})"
        )
    return "\n".join(lines) + "\n"


def fmt_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def plot(analysis: dict[str, Any], path: Path) -> Path | None:
    """Retained gain vs attacker fraction, one line per rule, one panel per attack (the
    no-attack point at 0 % is shared)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = analysis["cells"]
    attacks = sorted({r["attack"] for r in rows} - {"none"})
    if not attacks:
        return None
    fig, axes = plt.subplots(1, len(attacks), figsize=(5.5 * len(attacks), 4), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        for rule in ROBUST_RULES:
            pts = sorted(
                (r["fraction"], r["retained"])
                for r in rows
                if r["aggregator"] == rule
                and r["attack"] in ("none", attack)
                and r["retained"] is not None
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=rule)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_title(f"{attack} x {ATTACKS.get(attack, float('nan')):g}")
        ax.set_xlabel("attacker fraction")
        ax.set_ylabel("reward gain retained (vs mean, no attack)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 rounds, 4 trials")
    parser.add_argument("--reuse", action="store_true", help="report from cached sweeps only")
    parser.add_argument("--plan", action="store_true", help="print the sweeps and estimate only")
    parser.add_argument("--out", default=None, help=f"default {DEFAULT_OUT} (_quick with --quick)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else SEEDS)
    out = Path(args.out) if args.out else DEFAULT_OUT
    if args.quick and not args.out:
        out = out.with_name(out.name + "_quick")
    out = out.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(width=200)
    grids = design(seeds, quick=args.quick)
    cost = QUICK_COST if args.quick else STUDY_COST
    estimate = print_plan(grids, cost, "robustness bench: sweeps", console)
    if args.plan:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records, sweeps, skipped = run_grids(grids, out, args.quick, args.reuse, "robustness", console)
    records = [r for r in records if r["seed"] in seeds]
    for line in skipped:
        console.print(f"[yellow]left out: {line}")
    if not records:
        console.print("[red]no completed trials: nothing to analyse")
        return 1
    analysis = analyse(records)
    command = "python bench/robustness.py" + (" --quick" if args.quick else "")
    if args.seeds:
        command += " --seeds " + " ".join(map(str, seeds))
    meta = {
        "command": command + (" --reuse" if args.reuse else ""),
        "seeds": seeds,
        "quick": args.quick,
        "federation": f"{NUM_CLIENTS} clients, all sampled, "
        + ("2 rounds x 1 local step" if args.quick else "6 rounds x 2 local steps"),
        "wall_s": time.perf_counter() - start,
        "estimate_s": estimate,
        "n_trials": len(records),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "sweeps": sweeps,
        "attacks": ATTACKS,
        "byzantine": BYZANTINE,
        "trim_fraction": TRIM_FRACTION,
        "norm_bound": MEDIAN_UPDATE_NORM,
    }
    png = plot(analysis, out / "robustness.png")
    result = {"bench": "robustness", **meta, **analysis, "plot": str(png), "trials": records}
    (out / "robustness.json").write_text(
        json.dumps(finite_json(result), indent=1), encoding="utf-8"
    )
    (out / "robustness.md").write_text(markdown(analysis, meta), encoding="utf-8")
    print_tables(analysis, console)
    console.print(f"bench wall time {meta['wall_s']:.0f} s -> {out / 'robustness.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
