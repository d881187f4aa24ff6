"""What bench/robustness.py and bench/privacy.py share: the federation, the sweeps, the records.

Both benches run on the built-in world (tune_configs/quickstart.yaml, M = 2, firm's shipped
beta 1 relative) with one federation, chosen so every robust rule runs at 30 % attackers:
10 clients (Dirichlet(0.3)), ALL sampled every round (k = 10 >= 2f + 3 = 9 for Krum at
f = 3), 6 rounds of 2 local steps, 64 eval prompts, one Ray worker per trial (two trials at
once on 2 cores). The sweep files, their spec-hash cache, resume and --reuse are the claims
study's (bench/claims_grid.py: base_config, ensure_sweep, Cost; bench/claims_data.py:
load_records); this module adds the protection fields of a trial (hypervolume, the summary's
``privacy`` and ``robustness`` blocks, the config's aggregator / attack / clip / noise) and the
measured client update norm that fixes the DP clip C and norm_bound's bound.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims_data import load_records
from claims_grid import (
    BASE_CONFIG,
    Cost,
    algo_overrides,
    base_config,
    ensure_sweep,
    named_spec,
)
from paper_claims import jsonable

NUM_CLIENTS = 10
STUDY_SET = [
    f"federation.num_clients={NUM_CLIENTS}",
    "federation.clients_per_round=1.0",  # all 10 sampled: Krum's k >= 2f + 3 holds at f = 3
    "federation.rounds=6",
    "federation.local_steps=2",
    "data.max_eval_prompts=64",
    "runtime.num_workers=1",
]
QUICK_SET = [
    f"federation.num_clients={NUM_CLIENTS}",
    "federation.clients_per_round=1.0",
    "federation.rounds=2",
    "federation.local_steps=1",
    "data.max_eval_prompts=16",
    "runtime.num_workers=1",
]
STUDY_COST = Cost(rounds=6, clients=NUM_CLIENTS, local_steps=2)
QUICK_COST = Cost(rounds=2, clients=NUM_CLIENTS, local_steps=1, eval_s=0.6)

MEDIAN_UPDATE_NORM = 0.7
"""Median L2 norm of an honest client's round-0 delta theta_i - theta^0 (firm and fedavg_ls
pooled, 10 clients each, the study's federation, seed 0), measured with
``python bench/privacy.py --measure``: 0.70 (range 0.65 - 0.72, n = 20; 32 s). AdamW's first
steps have a per-coordinate size of about the learning rate whatever the gradient, and every
trajectory starts a fresh optimizer, so the norm should barely depend on the round (measured at
round 0 only). It is privacy.py's clip C and robustness.py's norm_bound bound (fixed before
any run)."""


def round0_deltas(algo: str = "firm_b1", overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Each client's round-0 delta theta_i - theta^0 (an adapter state) of the study's
    federation, in this process (no Ray): the partition every worker derives, the trainer a
    worker runs."""
    from firm_ray.config import load_config
    from firm_ray.core.aggregation import state_delta
    from firm_ray.models.adapter import get_adapter_state
    from firm_ray.models.policy import load_policy
    from firm_ray.rewards import build_rewards
    from firm_ray.runtime.worker import client_datasets
    from firm_ray.trainer import LocalTrainer

    cfg = load_config(BASE_CONFIG, [*STUDY_SET, *algo_overrides(algo), *overrides])
    policy = load_policy(cfg.model, cfg.lora, seed=cfg.experiment.seed)
    theta0 = get_adapter_state(policy.model)
    client_data, _, _ = client_datasets(cfg)
    trainer = LocalTrainer(
        policy,
        build_rewards(cfg.rewards),
        cfg.trainer,
        cfg.algorithm,
        cfg.federation.local_steps,
        max_prompt_tokens=cfg.model.max_prompt_tokens,
        seed=cfg.experiment.seed,
    )
    return [
        state_delta(trainer.run_round(theta0, data, c, 0).adapter, theta0)
        for c, data in enumerate(client_data)
    ]


def update_norms(
    overrides: Sequence[str] = (), algos: Sequence[str] = ("firm_b1", "fedavg_ls")
) -> dict[str, list[float]]:
    """||theta_i - theta^0|| of each client's round-0 local trajectory, per algorithm."""
    from firm_ray.core.aggregation import state_norm

    return {algo: [state_norm(d) for d in round0_deltas(algo, overrides)] for algo in algos}


def median_norm(norms: dict[str, list[float]]) -> float:
    """The pooled median, rounded to two significant digits (the constant quoted)."""
    return float(f"{statistics.median(v for vals in norms.values() for v in vals):.2g}")


# ------------------------------------------------------------------------------ sweeps
@dataclass
class Grid:
    """One sweep: algorithm or aggregator variants x a space (seeds and the swept knob)."""

    name: str  # the sweep's name prefix, e.g. robust_sign_flip
    variants: dict[str, list[str]]
    space: dict[str, list[Any]]  # dotted key -> grid values (experiment.seed among them)
    extra: list[str] = field(default_factory=list)
    algo: str = "firm_b1"  # for the cost model (every variant trains like it)

    def n_trials(self) -> int:
        return len(self.variants) * math.prod(len(v) for v in self.space.values())


def sweep_spec(grid: Grid, out: Path, quick: bool, bench: str) -> dict[str, Any]:
    """The sweep file's content (its name carries a hash of everything else, the base file's
    text included, so a changed spec is a new sweep and an unchanged one is found again)."""
    body = {
        "base": str(base_config(out, 2)),
        "set": [
            *(QUICK_SET if quick else STUDY_SET),
            *grid.extra,
            f"experiment.description={bench} bench {grid.name}",
        ],
        "variants": grid.variants,
        "space": {k: {"grid": list(v)} for k, v in grid.space.items()},
        "num_samples": 1,
        "scheduler": "fifo",
        "output_dir": str(out / "sweeps"),
    }
    return named_spec(grid.name, body)


def print_plan(grids: Sequence[Grid], cost: Cost, title: str, console: Console) -> float:
    """The sweeps, their trial counts and the cost model's minutes; returns the seconds."""
    table = Table(title=title)
    for col in ("sweep", "variants", "swept", "trials", "est. min"):
        table.add_column(col)
    total = 0.0
    for g in grids:
        s = cost.trial_s(g.algo, 2) * g.n_trials() / cost.parallel
        total += s
        swept = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in g.space.items())
        table.add_row(g.name, ", ".join(g.variants), swept, str(g.n_trials()), f"{s / 60:.0f}")
    console.print(table)
    console.print(
        f"{sum(g.n_trials() for g in grids)} trials; estimated {total / 3600:.1f} h "
        f"({total / 60:.0f} min; {cost.trial_s('firm_b1', 2):.0f} s a trial, {cost.parallel} "
        "at once; claims_grid.Cost's shared-machine step costs)"
    )
    return total


def run_grids(
    grids: Sequence[Grid], out: Path, quick: bool, reuse: bool, bench: str, console: Console
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Run (or reuse) every sweep; (records with protection fields, sweep entries, skipped)."""
    sweeps = [
        ensure_sweep(
            sweep_spec(g, out, quick, bench),
            out,
            g.n_trials(),
            "reuse" if reuse else "run",
            console,
            generator=f"bench/{bench}.py",
        )
        for g in grids
    ]
    records, skipped = load_records([s["sweep_dir"] for s in sweeps if s.get("sweep_dir")])
    return [with_protection(r) for r in records], sweeps, skipped


# ------------------------------------------------------------------------------ records
def with_protection(record: dict[str, Any]) -> dict[str, Any]:
    """A claims record plus the trial's hypervolume, privacy / robustness summary blocks and
    the protection settings of its config, server_lr included (read from its own files,
    docs/ARTIFACTS.md)."""
    run_dir = Path(record["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    rob = cfg.get("robustness") or {}
    attack = rob.get("attack") or {}
    priv = cfg.get("privacy") or {}
    return {
        **record,
        "hypervolume": summary.get("hypervolume"),
        "privacy_summary": summary.get("privacy"),
        "robustness_summary": summary.get("robustness"),
        "aggregator": rob.get("aggregator", "mean"),
        "attack": attack.get("kind") or "none",
        "attack_fraction": float(attack.get("fraction") or 0.0) if attack.get("kind") else 0.0,
        "attack_scale": attack.get("scale"),
        "clip": priv.get("clip"),
        "noise_multiplier": priv.get("noise_multiplier") if priv.get("clip") else None,
        "server_lr": float((cfg.get("algorithm") or {}).get("server_lr", 1.0)),
    }


def reward_gain(record: dict[str, Any]) -> float | None:
    """Mean over objectives of final - initial eval reward (None when either is missing)."""
    final, initial = record.get("final"), record.get("initial")
    if not final or not initial or len(final) != len(initial):
        return None
    return float(sum(f - i for f, i in zip(final, initial, strict=True)) / len(final))


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None, n) of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def finite_json(obj: Any) -> Any:
    """paper_claims.jsonable, and infinities (clipping-only epsilon) as the string "inf"
    (json.dumps would write the non-standard Infinity)."""
    obj = jsonable(obj)
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
