"""The FIRM paper's five claims, checked against the baselines on the built-in world.

    source .venv/bin/activate
    export FIRM_RAY_CACHE=/tmp/fr_cache HF_HUB_OFFLINE=1
    python bench/paper_claims.py                    # 3 seeds: 51 trials (~18 min here)
    python bench/paper_claims.py --quick            # smoke check: 1 seed, 2 rounds, 3 p (~3.5 min)
    python bench/paper_claims.py --reuse            # analysis only, on the finished sweeps
    python bench/paper_claims.py --seeds 0 1 2 3 4  # more seeds (>= 3 for a real verdict)

Writes ``<out>/paper_claims.json`` (the artifact), ``<out>/claims.md`` (the tables, to quote)
and the two sweep directories under ``<out>/sweeps/`` (``<out>`` defaults to
bench/results/paper_claims, or bench/results/paper_claims_quick with --quick; the sweep
YAMLs this bench generates lie next to them).

What runs (the quickstart world, tune_configs/quickstart.yaml: 8 clients with Dirichlet(0.3)
prompt mixes, 4 sampled per round, 4 local steps, 5 rounds; one Ray worker per trial so two
trials run at once on 2 cores), each on every seed:

- ``claims_prefs``: firm (beta = 1, relative), fedavg_ls and centralized at the 5 preference
  vectors p = (p_relevance, p_harmlessness), p_relevance in {0, .25, .5, .75, 1}. Their
  p = (.5, .5) trials are also their uniform-preference runs in the baselines comparison.
- ``claims_agnostic``: firm with beta = 0 and fmgda at p = (.5, .5) only. Neither uses the
  preference: for M = 2 the beta = 0 weights are the closed form (b - c) / (a + b - 2c), p
  enters only when g_1 == g_2 exactly (firm_ray/core/solver.py ``_closed_form_2``); fmgda's
  clients run one trajectory per objective (one-hot weights, firm_ray/trainer/local.py
  ``_run_fmgda``) and the server solves plain min-norm MGDA without p
  (firm_ray/federation/strategies.py ``FmgdaStrategy``). Running them at 5 preferences would
  repeat one run 5 times, so their "front" is one point per seed.

What it measures, mean +- std over seeds (std with ddof = 1), per algorithm at p = (.5, .5):
final eval rewards per objective; hypervolume of the algorithm's final points over the
preference sweep, per seed, with that seed's initial-policy eval rewards as the reference point
(then mean +- std); mean client disagreement ||lambda_i - mean lambda|| over rounds; mean
parameter drift ||theta_i - theta^{t+1}|| over rounds; smoothness (population std of the
round-to-round changes of each eval reward, the run summary's ``smoothness``); bytes uploaded
per client-round; wall time per run (two trials share the 2 cores).

The claims table: one row per claim, each a set of comparisons of firm (beta = 1) against a
baseline on one metric. Rule: a comparison is "held" when FIRM's mean beats the baseline's by
more than the pooled seed noise, sqrt((sd_firm^2 + sd_base^2) / 2); "worse" when the baseline
wins by that much; otherwise "within noise" (not held). The paired count (seeds on which FIRM
is better; same seed = same world split, client sample and eval set) is shown beside it. A
claim is "held" when all its comparisons are held, "not held" when none is, else "mixed".
Comparisons: (1) smoothness per objective vs firm beta=0, fedavg_ls, fmgda; (2) disagreement
vs firm beta=0 (the only baseline whose clients solve for lambda), param drift vs firm beta=0,
fmgda, fedavg_ls; (3) hypervolume over the p sweep, and of the p=(.5,.5) point alone, vs the
same three; (4) bytes up vs fmgda, plus FIRM's upload / fedavg_ls's = 1.
Preference following (claim 5): the mean final relevance must be non-decreasing and the
harmlessness non-increasing as p_relevance goes 0 -> 1 (strict violations of adjacent pairs
are counted, on the means and per seed), and the end points must differ by more than the
pooled noise: "held" with no violation on the means, "mixed" with violations but separated
end points, "not held" when the end points are not separated. centralized is an upper-bound
reference, shown but never a baseline to beat.

Time here (2 cores, shared with other agents' work): --quick 201 s (11 trials of 2 rounds);
the full run 1075 s (51 trials of 5 rounds: the p-agnostic sweep 185 s, the preference sweep
877 s; one 5-round trial takes 25-65 s of wall time with two running at once); --reuse 3 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "tune_configs" / "quickstart.yaml"
DEFAULT_OUT = ROOT / "bench" / "results" / "paper_claims"
RESULT_FILE = "paper_claims.json"
MARKDOWN_FILE = "claims.md"
STATE_FILE = "sweeps.json"

FIRM = "firm"
ALGOS = ("firm", "firm_beta0", "fedavg_ls", "fmgda", "centralized")
BASELINES = ("firm_beta0", "fedavg_ls", "fmgda")  # federated baselines FIRM must beat
USES_PREFERENCE = {
    "firm": True,
    "firm_beta0": False,
    "fedavg_ls": True,
    "fmgda": False,
    "centralized": True,
}
SWEEP_ALGOS = ("firm", "fedavg_ls", "centralized")
VARIANTS = {
    "firm": ["algorithm.name=firm", "algorithm.beta=1.0"],
    "firm_beta0": ["algorithm.name=firm", "algorithm.beta=0.0"],
    "fedavg_ls": ["algorithm.name=fedavg_ls"],
    "fmgda": ["algorithm.name=fmgda"],
    "centralized": [
        "algorithm.name=centralized",
        "federation.num_clients=1",
        "federation.clients_per_round=1.0",
    ],
}
UNIFORM = [0.5, 0.5]


# ----------------------------------------------------------------------------- the sweeps
def sweep_specs(out: Path, seeds: Sequence[int], quick: bool) -> dict[str, dict[str, Any]]:
    """The two sweep files' contents: the preference sweep and the p-agnostic baselines."""
    common = ["runtime.num_workers=1"]
    if quick:
        common.append("federation.rounds=2")
    points = 3 if quick else 5
    seed_axis = {"grid": [int(s) for s in seeds]}

    def spec(name: str, variants: list[str], extra: list[str], space: dict) -> dict:
        return {
            "sweep": {
                "name": name,
                "base": str(BASE_CONFIG),
                "set": [*common, *extra],
                "variants": {v: VARIANTS[v] for v in variants},
                "space": space,
                "num_samples": 1,
                "scheduler": "fifo",
                "output_dir": str(out / "sweeps"),
            }
        }

    return {
        "claims_agnostic": spec(
            "claims_agnostic",
            ["firm_beta0", "fmgda"],
            [
                "experiment.description=paper claims, p-agnostic baselines",
                "algorithm.preference=[0.5,0.5]",
            ],
            {"experiment.seed": seed_axis},
        ),
        "claims_prefs": spec(
            "claims_prefs",
            list(SWEEP_ALGOS),
            ["experiment.description=paper claims, preference sweep"],
            {"algorithm.preference": {"simplex": {"points": points}}, "experiment.seed": seed_axis},
        ),
    }


def _finished(sweep_dir: Path, expected: int) -> bool:
    from firm_ray.tracking.sweep_report import collect_trials

    rows = collect_trials(sweep_dir)
    return len(rows) == expected and all(r["status"] == "completed" for r in rows)


def ensure_sweep(
    name: str, spec: dict[str, Any], out: Path, reuse: bool, console: Console
) -> dict[str, Any]:
    """Run the sweep, or with --reuse take the finished one recorded in sweeps.json (resume
    it when it is unfinished). A recorded sweep whose spec differs is never reused."""
    from firm_ray.runtime.sweep import resume_sweep, run_sweep
    from firm_ray.sweep_spec import load_sweep

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    header = f"# Generated by bench/paper_claims.py; run alone: firm-ray sweep {path}\n"
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    expected = load_sweep(path).num_trials()
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    recorded = state.get(name)
    entry: dict[str, Any] | None = None
    if reuse and recorded and Path(recorded["sweep_dir"]).is_dir():
        sweep_dir = Path(recorded["sweep_dir"])
        if recorded.get("spec") != spec:
            console.print(f"[yellow]{name}: recorded sweep {sweep_dir} has another spec; rerun")
        elif _finished(sweep_dir, expected):
            console.print(f"{name}: reusing {sweep_dir}")
            entry = {**recorded, "mode": "reused"}
        else:
            console.print(f"{name}: resuming unfinished {sweep_dir}")
            result = resume_sweep(sweep_dir, console)
            entry = {**recorded, "mode": "resumed", "resume_wall_s": result["wall_s"]}
    elif reuse:
        console.print(f"[yellow]{name}: no recorded sweep in {state_path}; running it")
    if entry is None:
        console.print(f"[bold]{name}[/]: {expected} trials -> {path}")
        result = run_sweep(path, console)
        entry = {
            "sweep_dir": result["sweep_dir"],
            "spec": spec,
            "n_trials": expected,
            "wall_s": result["wall_s"],
            "failed": result["failed"],
            "mode": "ran",
        }
    state[name] = {k: v for k, v in entry.items() if k != "mode"}
    state_path.write_text(json.dumps(state, indent=1), encoding="utf-8")
    return entry


# ------------------------------------------------------------------------------ the rows
def algo_key(row: dict[str, Any]) -> str:
    if row["algorithm"] == "firm":
        beta = float(row["beta"])
        return "firm" if beta == 1.0 else ("firm_beta0" if beta == 0.0 else f"firm_beta{beta:g}")
    return str(row["algorithm"])


def load_rows(sweep_dirs: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Completed trials of the requested seeds, with their per-round curves."""
    from firm_ray.tracking import read_metrics
    from firm_ray.tracking.sweep_report import collect_trials

    rows = []
    for sweep_dir in sweep_dirs:
        for row in collect_trials(sweep_dir):
            if row["status"] != "completed" or row["seed"] not in seeds:
                continue
            names = list(row["reward_names"])
            metrics = read_metrics(row["run_dir"])
            lambdas = []
            for m in metrics:
                rows_l = [v for v in (m.get("client_lambdas") or {}).values() if v]
                lambdas.append(np.mean(rows_l, axis=0).tolist() if rows_l else None)
            rows.append(
                {
                    "algo": algo_key(row),
                    "sweep_dir": str(sweep_dir),
                    "trial_id": row["trial_id"],
                    "seed": int(row["seed"]),
                    "preference": [round(float(p), 6) for p in row["preference"]],
                    "reward_names": names,
                    "final": [row[f"final/{n}"] for n in names],
                    "initial": [row[f"initial/{n}"] for n in names],
                    "smoothness": [row[f"smoothness/{n}"] for n in names],
                    "mean_disagreement": row["mean_disagreement"],
                    "mean_param_drift": row["mean_param_drift"],
                    "bytes_up_per_client_round": row["bytes_up_per_client_round"],
                    "wall_time_s": row["wall_time_s"],
                    "final_kl": row["final_kl"],
                    "curves": {
                        "rewards": [m.get("rewards") for m in metrics],
                        "disagreement": [m.get("disagreement") for m in metrics],
                        "param_drift": [m.get("param_drift") for m in metrics],
                        "mean_client_lambda": lambdas,
                        "kl": [m.get("kl") for m in metrics],
                    },
                    "run_dir": row["run_dir"],
                }
            )
    return rows


# ------------------------------------------------------------------------------ statistics
def stat(values: Sequence[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(np.mean(vals)), "std": std, "n": len(vals)}


def fmt(s: dict[str, Any] | None, digits: int = 4) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    mean, std = s["mean"], s["std"]
    if abs(mean) >= 1000:
        return f"{mean:,.0f} ± {std:,.0f}"
    return f"{mean:.{digits}g} ± {std:.2g}"


def compare(
    firm: dict[int, float | None], base: dict[int, float | None], higher_better: bool
) -> dict[str, Any]:
    """FIRM vs one baseline on one metric (per-seed values): the held rule of the docstring."""
    sf, sb = stat(list(firm.values())), stat(list(base.values()))
    if sf["mean"] is None or sb["mean"] is None:
        return {"firm": sf, "base": sb, "verdict": "n/a", "advantage": None}
    sign = 1.0 if higher_better else -1.0
    advantage = sign * (sf["mean"] - sb["mean"])  # > 0: FIRM better
    pooled = math.sqrt((sf["std"] ** 2 + sb["std"] ** 2) / 2.0)
    paired = [
        sign * (firm[s] - base[s])
        for s in sorted(set(firm) & set(base))
        if firm[s] is not None and base[s] is not None
    ]
    if advantage > pooled:
        verdict = "held"
    elif -advantage > pooled:
        verdict = "worse"
    else:
        verdict = "within noise"
    return {
        "firm": sf,
        "base": sb,
        "advantage": advantage,
        "pooled_std": pooled,
        "paired_wins": sum(d > 0 for d in paired),
        "paired_n": len(paired),
        "paired_mean": float(np.mean(paired)) if paired else None,
        "verdict": verdict,
    }


def claim_verdict(comparisons: Sequence[dict[str, Any]]) -> str:
    held = [c["verdict"] == "held" for c in comparisons if c["verdict"] != "n/a"]
    if held and all(held):
        return "held"
    return "not held" if not any(held) else "mixed"


# ------------------------------------------------------------------------------ analysis
def analyse(rows: list[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    names = rows[0]["reward_names"]
    m_obj = len(names)
    # the reference point of each seed: its initial policy's eval rewards (the same for every
    # trial of a seed; the elementwise min guards against any difference, which is reported)
    reference, ref_spread = {}, {}
    for seed in seeds:
        inits = np.array([r["initial"] for r in rows if r["seed"] == seed], dtype=float)
        reference[seed] = inits.min(axis=0).tolist()
        ref_spread[seed] = float((inits.max(axis=0) - inits.min(axis=0)).max())

    def at_uniform(algo: str) -> dict[int, dict[str, Any]]:
        return {r["seed"]: r for r in rows if r["algo"] == algo and r["preference"] == UNIFORM}

    uniform = {a: at_uniform(a) for a in ALGOS}
    prefs = sorted({tuple(r["preference"]) for r in rows if r["algo"] in SWEEP_ALGOS})

    from firm_ray.core.pareto import hypervolume

    hv: dict[str, dict[int, float]] = {}
    hv_uniform: dict[str, dict[int, float]] = {}
    front_points: dict[str, dict[int, list]] = {}
    for algo in ALGOS:
        hv[algo], hv_uniform[algo], front_points[algo] = {}, {}, {}
        for seed in seeds:
            pts = [r["final"] for r in rows if r["algo"] == algo and r["seed"] == seed]
            if not pts:
                continue
            front_points[algo][seed] = pts
            hv[algo][seed] = hypervolume(pts, reference[seed])
            if seed in uniform[algo]:
                hv_uniform[algo][seed] = hypervolume(
                    [uniform[algo][seed]["final"]], reference[seed]
                )

    per_algo: dict[str, dict[str, Any]] = {}
    for algo in ALGOS:
        u = uniform[algo]
        entry = {
            "uses_preference": USES_PREFERENCE[algo],
            "n_seeds": len(u),
            "points_per_seed": len(prefs) if USES_PREFERENCE[algo] else 1,
            "hypervolume": stat(list(hv[algo].values())),
            "hypervolume_per_seed": hv[algo],
            "hypervolume_uniform_point": stat(list(hv_uniform[algo].values())),
            "mean_disagreement": stat([r["mean_disagreement"] for r in u.values()]),
            "mean_param_drift": stat([r["mean_param_drift"] for r in u.values()]),
            "bytes_up_per_client_round": stat([r["bytes_up_per_client_round"] for r in u.values()]),
            "wall_time_s": stat([r["wall_time_s"] for r in u.values()]),
            "final_kl": stat([r["final_kl"] for r in u.values()]),
        }
        for m, name in enumerate(names):
            entry[f"final/{name}"] = stat([r["final"][m] for r in u.values()])
            entry[f"smoothness/{name}"] = stat([r["smoothness"][m] for r in u.values()])
        entry["final/mean_objective"] = stat([float(np.mean(r["final"])) for r in u.values()])
        per_algo[algo] = entry
    initial = {f"initial/{n}": stat([reference[s][m] for s in seeds]) for m, n in enumerate(names)}

    # ------------------------------------------------------------------ monotonicity (claim 5)
    monotonic: dict[str, Any] = {}
    for algo in SWEEP_ALGOS:
        table = {
            seed: {
                tuple(r["preference"]): r["final"]
                for r in rows
                if r["algo"] == algo and r["seed"] == seed
            }
            for seed in seeds
        }
        entry = {"p_first": [p[0] for p in prefs], "objectives": {}}
        for m, name in enumerate(names):
            up = m == 0  # objective 0's weight is the swept p_0: it should rise with it
            per_p = [stat([table[s].get(p, [None] * m_obj)[m] for s in seeds]) for p in prefs]
            means = [s["mean"] for s in per_p]
            entry["objectives"][name] = {
                "expected": "non-decreasing" if up else "non-increasing",
                "per_p": per_p,
                "violations_of_means": _violations(means, up),
                # a reversal larger than the pooled std of its two points (seed noise)
                "violations_beyond_noise": sum(
                    (a["mean"] - b["mean"] if up else b["mean"] - a["mean"])
                    > math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2.0)
                    for a, b in itertools.pairwise(per_p)
                    if a["mean"] is not None and b["mean"] is not None
                ),
                "violations_per_seed": {
                    s: _violations([table[s].get(p, [None] * m_obj)[m] for p in prefs], up)
                    for s in seeds
                },
                "end_points": compare(
                    {s: table[s].get(prefs[-1], [None] * m_obj)[m] for s in seeds},
                    {s: table[s].get(prefs[0], [None] * m_obj)[m] for s in seeds},
                    higher_better=up,
                ),
            }
        objs = entry["objectives"].values()
        separated = all(o["end_points"]["verdict"] == "held" for o in objs)
        clean = all(o["violations_of_means"] == 0 for o in objs)
        entry["verdict"] = "held" if separated and clean else ("mixed" if separated else "not held")
        monotonic[algo] = entry

    return {
        "reward_names": names,
        "reference_per_seed": reference,
        "initial_spread_per_seed": ref_spread,
        "initial": initial,
        "preferences": [list(p) for p in prefs],
        "per_algorithm": per_algo,
        "front_points": front_points,
        "monotonicity": monotonic,
        "claims": claims(uniform, hv, hv_uniform, names, monotonic),
    }


def _violations(seq: Sequence[float | None], up: bool) -> int:
    vals = [v for v in seq if v is not None]
    return sum((b < a) if up else (b > a) for a, b in itertools.pairwise(vals))


def claims(uniform, hv, hv_uniform, names, monotonic) -> list[dict[str, Any]]:
    def by_seed(algo: str, get) -> dict[int, float | None]:
        return {s: get(r) for s, r in uniform[algo].items()}

    def comparisons(metric: str, get, baselines: Sequence[str], higher: bool) -> list[dict]:
        out = []
        for base in baselines:
            c = compare(by_seed(FIRM, get), by_seed(base, get), higher)
            out.append({"metric": metric, "baseline": base, **c})
        return out

    rows: list[dict[str, Any]] = []

    smooth = []
    for m, name in enumerate(names):
        smooth += comparisons(
            f"smoothness/{name} (lower better)",
            lambda r, m=m: r["smoothness"][m],
            BASELINES,
            higher=False,
        )
    rows.append({"claim": "1. smoother training", "comparisons": smooth})

    drift = comparisons(
        "mean disagreement (lower better)",
        lambda r: r["mean_disagreement"],
        ["firm_beta0"],
        higher=False,
    )
    drift += comparisons(
        "mean param drift (lower better)",
        lambda r: r["mean_param_drift"],
        ["firm_beta0", "fmgda", "fedavg_ls"],
        higher=False,
    )
    rows.append({"claim": "2. less client disagreement drift", "comparisons": drift})

    trade = [
        {"metric": "HV over p sweep", "baseline": b, **compare(hv[FIRM], hv[b], True)}
        for b in BASELINES
    ]
    trade += [
        {
            "metric": "HV of the p=(.5,.5) point",
            "baseline": b,
            **compare(hv_uniform[FIRM], hv_uniform[b], True),
        }
        for b in BASELINES
    ]
    rows.append({"claim": "3. better reward trade-offs", "comparisons": trade})

    upload = comparisons(
        "bytes up per client-round (lower better)",
        lambda r: r["bytes_up_per_client_round"],
        ["fmgda"],
        higher=False,
    )
    ratio = {}
    for base in ("fedavg_ls", "fmgda"):
        f = stat(list(by_seed(FIRM, lambda r: r["bytes_up_per_client_round"]).values()))
        b = stat(list(by_seed(base, lambda r: r["bytes_up_per_client_round"]).values()))
        ratio[base] = b["mean"] / f["mean"] if f["mean"] and b["mean"] else None
    # one parameter set: FIRM uploads what fedavg_ls (one adapter) uploads, within 1 %
    one_set = ratio["fedavg_ls"] is not None and abs(ratio["fedavg_ls"] - 1.0) < 0.01
    upload.append(
        {
            "metric": "upload / fedavg_ls's (one adapter)",
            "baseline": "fedavg_ls",
            "verdict": "held" if one_set else "worse",
            "ratio": ratio["fedavg_ls"],
            "firm": None,
            "base": None,
        }
    )
    rows.append(
        {
            "claim": "4. one parameter set uploaded per client",
            "comparisons": upload,
            "ratios_to_firm": ratio,
        }
    )

    mono = []
    for algo in ("firm", "fedavg_ls"):
        e = monotonic[algo]
        for name, o in e["objectives"].items():
            mono.append(
                {
                    "metric": f"{name} {o['expected']} in p_{names[0]} "
                    f"({o['violations_of_means']} violations of means)",
                    "baseline": f"{algo}: p=1 vs p=0",
                    **o["end_points"],
                    "verdict": (
                        "held"
                        if o["violations_of_means"] == 0 and o["end_points"]["verdict"] == "held"
                        else ("mixed" if o["end_points"]["verdict"] == "held" else "not held")
                    ),
                }
            )
    rows.append(
        {
            "claim": "5. trade-offs follow the preference (firm)",
            "comparisons": mono,
            "verdict": monotonic["firm"]["verdict"],
            "reference_fedavg_ls": monotonic["fedavg_ls"]["verdict"],
        }
    )
    for row in rows:
        row.setdefault("verdict", claim_verdict(row["comparisons"]))
        counted = [
            c
            for c in row["comparisons"]
            if c["verdict"] != "n/a" and not c["baseline"].startswith("fedavg_ls: ")
        ]
        row["held_comparisons"] = f"{sum(c['verdict'] == 'held' for c in counted)}/{len(counted)}"
    return rows


# ------------------------------------------------------------------------------ rendering
def _comparison_text(c: dict[str, Any]) -> str:
    if c.get("ratio") is not None:
        return f"{c['metric']}: ratio {c['ratio']:.3f} → {c['verdict']}"
    wins = f", paired {c['paired_wins']}/{c['paired_n']}" if c.get("paired_n") else ""
    return (
        f"{c['metric']} vs {c['baseline']}: firm {fmt(c['firm'])} vs {fmt(c['base'])}"
        f"{wins} → {c['verdict']}"
    )


def tables(analysis: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Header and rows of every table, shared by the rich and the markdown rendering."""
    names = analysis["reward_names"]
    out: dict[str, tuple[list[str], list[list[str]]]] = {}

    claim_rows = []
    for claim in analysis["claims"]:
        for i, c in enumerate(claim["comparisons"]):
            # claim 5's rows compare p = 1 with p = 0 inside one algorithm, not with a baseline
            if claim["claim"].startswith("5."):
                text = (
                    f"{c['baseline']}: {c['metric']}, {fmt(c['firm'])} vs {fmt(c['base'])}"
                    f" → {c['verdict']}"
                )
            else:
                text = _comparison_text(c)
            claim_rows.append(
                [
                    claim["claim"] if i == 0 else "",
                    text,
                    f"{claim['verdict']} ({claim['held_comparisons']} held)" if i == 0 else "",
                ]
            )
    out["claims"] = (["claim", "comparison (mean ± std over seeds)", "verdict"], claim_rows)

    algo_header = [
        "algorithm",
        "uses p",
        *[f"final {n}" for n in names],
        "HV (p sweep)",
        "HV p=.5 point",
        "disagreement",
        "param drift",
        *[f"smooth {n}" for n in names],
        "bytes up/client-round",
        "wall s/run",
    ]
    algo_rows = []
    for algo, e in analysis["per_algorithm"].items():
        algo_rows.append(
            [
                algo + (" (ref)" if algo == "centralized" else ""),
                f"yes ({e['points_per_seed']} pts)" if e["uses_preference"] else "no (1 pt)",
                *[fmt(e[f"final/{n}"]) for n in names],
                fmt(e["hypervolume"], 3),
                fmt(e["hypervolume_uniform_point"], 3),
                fmt(e["mean_disagreement"], 3),
                fmt(e["mean_param_drift"], 3),
                *[fmt(e[f"smoothness/{n}"], 3) for n in names],
                fmt(e["bytes_up_per_client_round"]),
                fmt(e["wall_time_s"], 3),
            ]
        )
    ini = analysis["initial"]
    algo_rows.append(
        ["initial policy", "", *[fmt(ini[f"initial/{n}"]) for n in names]]
        + [""] * (len(algo_header) - 2 - len(names))
    )
    out["algorithms"] = (algo_header, algo_rows)

    mono_rows = []
    for algo, e in analysis["monotonicity"].items():
        for name, o in e["objectives"].items():
            seq = " → ".join(f"{s['mean']:.4f}" for s in o["per_p"] if s["mean"] is not None)
            per_seed = ", ".join(f"s{s}:{v}" for s, v in o["violations_per_seed"].items())
            mono_rows.append(
                [
                    algo,
                    f"{name} ({o['expected']})",
                    seq,
                    f"{o['violations_of_means']} ({o['violations_beyond_noise']} beyond noise)",
                    per_seed,
                ]
            )
        mono_rows.append([algo, "verdict", e["verdict"], "", ""])
    p_text = ", ".join(f"{p:g}" for p in next(iter(analysis["monotonicity"].values()))["p_first"])
    out["monotonicity"] = (
        [
            "algorithm",
            "objective",
            f"mean final value, p_{names[0]} = {p_text}",
            "violations of the means",
            "violations per seed",
        ],
        mono_rows,
    )

    hv_rows = []
    for algo, e in analysis["per_algorithm"].items():
        per_seed = ", ".join(f"s{s}: {v:.4g}" for s, v in e["hypervolume_per_seed"].items())
        hv_rows.append([algo, per_seed])
    out["hypervolume_per_seed"] = (
        ["algorithm", "HV per seed (reference: seed's initial)"],
        hv_rows,
    )
    return out


def markdown(analysis: dict[str, Any], meta: dict[str, Any]) -> str:
    titles = {
        "claims": "Claims",
        "algorithms": "Per algorithm (p = (.5, .5); mean ± std over seeds)",
        "monotonicity": "Preference monotonicity",
        "hypervolume_per_seed": "Hypervolume per seed",
    }
    lines = [
        "# FIRM paper claims on the built-in world",
        "",
        f"Command: `{meta['command']}`; seeds {meta['seeds']}; {meta['rounds']} rounds; "
        f"bench wall time {meta['wall_s']:.0f} s (sweeps: "
        + ", ".join(
            f"{k} {v.get('mode')} {v.get('wall_s', 0):.0f} s" for k, v in meta["sweeps"].items()
        )
        + ").",
        "",
        "Rule: a comparison is *held* when FIRM's mean beats the baseline's by more than the "
        "pooled seed std sqrt((sd_f² + sd_b²)/2); *worse* when the baseline wins by that much; "
        "else *within noise*. Paired k/n = seeds on which FIRM is better. A claim is held when "
        "all its comparisons are, not held when none is, else mixed. firm_beta0 and fmgda do not "
        "use the preference (one point per seed). centralized is a reference, not a baseline.",
        "",
        "Notes: disagreement is 0 by construction for fedavg_ls (every client uses lambda = p), "
        "fmgda (clients report the mean of their one-hot trajectories) and centralized (one "
        "client). fmgda's param drift measures theta^t + the client's mean per-objective delta "
        "against the server's min-norm step, so it is not comparable with the others'. "
        "Smoothness is the run summary's: std of the 4 round-to-round changes of the eval "
        "rewards over 5 rounds. Wall time per run: two trials share the 2 cores.",
        "",
    ]
    for key, (header, rows) in tables(analysis).items():
        lines += [f"## {titles[key]}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def print_tables(analysis: dict[str, Any], console: Console) -> None:
    for key, (header, rows) in tables(analysis).items():
        table = Table(title=key, show_lines=key == "claims")
        for col in header:
            table.add_column(col, overflow="fold")
        for row in rows:
            style = {"held": "green", "not held": "red", "mixed": "yellow"}.get(
                row[-1].split(" (")[0]
            )
            table.add_row(*row, style=style if key == "claims" and row[-1] else None)
        console.print(table)


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 2 rounds, 3 preference points"
    )
    parser.add_argument("--out", default=None, help=f"default {DEFAULT_OUT} (_quick with --quick)")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse (or resume) the sweeps recorded in --out"
    )
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = (
        Path(args.out)
        if args.out
        else (DEFAULT_OUT.with_name(DEFAULT_OUT.name + "_quick") if args.quick else DEFAULT_OUT)
    )
    out = out.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(width=200)
    if len(seeds) < 3 and not args.quick:
        console.print("[yellow]fewer than 3 seeds: the held / not held verdicts mean little")

    start = time.perf_counter()
    sweeps = {
        name: ensure_sweep(name, spec, out, args.reuse, console)
        for name, spec in sweep_specs(out, seeds, args.quick).items()
    }
    rows = load_rows([s["sweep_dir"] for s in sweeps.values()], seeds)
    missing = [
        (a, s)
        for a in ALGOS
        for s in seeds
        if not any(r["algo"] == a and r["seed"] == s and r["preference"] == UNIFORM for r in rows)
    ]
    if missing:
        console.print(f"[red]missing completed trials (algorithm, seed) at p=(.5,.5): {missing}")
    analysis = analyse(rows, seeds)
    wall = time.perf_counter() - start
    command = "python bench/paper_claims.py" + (" --quick" if args.quick else "")
    if args.seeds:
        command += " --seeds " + " ".join(map(str, seeds))
    meta = {
        "command": command + (" --reuse" if args.reuse else ""),
        "seeds": seeds,
        "quick": args.quick,
        "rounds": 2 if args.quick else 5,
        "wall_s": wall,
        "sweeps": {k: {kk: vv for kk, vv in v.items() if kk != "spec"} for k, v in sweeps.items()},
        "base_config": str(BASE_CONFIG),
        "missing": missing,
    }
    result = {"bench": "paper_claims", **meta, **analysis, "trials": rows}

    def jsonable(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {str(k): jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [jsonable(v) for v in obj]
        if isinstance(obj, (np.floating, np.integer)):
            return obj.item()
        return obj

    (out / RESULT_FILE).write_text(json.dumps(jsonable(result), indent=1), encoding="utf-8")
    (out / MARKDOWN_FILE).write_text(markdown(analysis, meta), encoding="utf-8")
    print_tables(analysis, console)
    console.print(f"bench wall time {wall:.0f} s -> {out / RESULT_FILE}, {out / MARKDOWN_FILE}")


if __name__ == "__main__":
    main()
