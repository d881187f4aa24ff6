"""bench/aggregate_step.py: the aggregate statistics on hand-built deltas (the mechanism it
measures: a median of sign-like updates keeps their length, a mean cancels it), the check's
sweep file, and the gap-closed analysis on synthetic per-seed results. No training, no Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import aggregate_step as ag  # noqa: E402
import protection_grid as pg  # noqa: E402

from firm_ray.sweep_spec import load_sweep  # noqa: E402

INITIAL = [0.5, 0.7]


def test_median_of_sign_like_deltas_keeps_their_length_and_the_mean_does_not():
    # 10 clients, 200 coordinates, every entry +-a; on each coordinate 6 clients say +, 4 say -
    a, k, p = 0.01, 10, 200
    x = torch.full((k, p), a, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for j in range(p):
        x[torch.randperm(k, generator=gen)[:4], j] = -a
    stats = ag.aggregate_stats(x)
    mean = stats["rules"]["mean"]
    median = stats["rules"]["coordinate_median"]
    assert mean["norm"] == pytest.approx(0.2 * a * p**0.5)  # (6 - 4) / 10 of a per coordinate
    assert median["norm"] == pytest.approx(a * p**0.5)  # the majority's sign, at full size
    assert median["ratio"] == pytest.approx(5.0) and median["cosine"] == pytest.approx(1.0)
    assert stats["sign_agreement"] == pytest.approx(0.2)
    assert stats["client_norm_median"] == pytest.approx(a * p**0.5)
    trimmed = stats["rules"]["trimmed_mean"]  # 3 of 10 trimmed each end: -a, +a, +a, +a kept
    assert trimmed["ratio"] == pytest.approx(2.5)
    assert set(stats["rules"]) == set(ag.ROBUST_RULES)


def test_check_sweep_holds_the_planned_trials_and_server_lrs(tmp_path):
    grid = ag.check_grid(ag.SEEDS, 2.1)
    spec = pg.sweep_spec(grid, tmp_path, False, "aggregate_step")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    sweep = load_sweep(path)
    assert sweep.num_trials() == grid.n_trials() == 6
    assert spec["sweep"]["variants"] == {
        "mean_lr2.1": ["robustness.aggregator=mean", "algorithm.server_lr=2.1"],
        "coordinate_median_lr1_over_2.1": [
            "robustness.aggregator=coordinate_median",
            "algorithm.server_lr=0.47619",
        ],
    }
    assert set(pg.STUDY_SET) <= set(spec["sweep"]["set"])  # robustness.py's federation


def record(tmp_path: Path, rule: str, server_lr: float, seed: int, gain: float) -> dict:
    run_dir = tmp_path / f"{rule}_{server_lr}_{seed}"
    run_dir.mkdir()
    cfg = {"algorithm": {"name": "firm", "server_lr": server_lr}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return {
        "run_dir": str(run_dir),
        "seed": seed,
        "attack": "none",
        "aggregator": rule,
        "initial": INITIAL,
        "final": [INITIAL[0] + gain, INITIAL[1] + gain],
    }


def test_gap_closed_is_relative_to_mean_and_median_at_server_lr_1(tmp_path):
    gains = {
        ("mean", 1.0): [0.05, 0.06, 0.07],  # 0.06
        ("coordinate_median", 1.0): [0.09, 0.10, 0.11],  # 0.10
        ("mean", 2.0): [0.08, 0.09, 0.10],  # 0.09: 75 % of the gap
        ("coordinate_median", 0.5): [0.06, 0.06, 0.06],  # 0.06: back to mean, 0 %
    }
    records = [
        record(tmp_path, rule, lr, seed, g)
        for (rule, lr), vals in gains.items()
        for seed, g in enumerate(vals)
    ]
    records.append({**record(tmp_path, "krum", 1.0, 9, 0.5), "seed": 9})  # not a cell
    cells = {(c["rule"], c["server_lr"]): c for c in ag.analyse(records, [0, 1, 2])["cells"]}
    assert set(cells) == set(gains)
    assert cells[("mean", 2.0)]["gap_closed"] == pytest.approx(0.75)
    assert cells[("coordinate_median", 0.5)]["gap_closed"] == pytest.approx(0.0, abs=1e-9)
    assert cells[("mean", 1.0)]["gap_closed"] == pytest.approx(0.0)
    assert cells[("coordinate_median", 1.0)]["gap_closed"] == pytest.approx(1.0)
    assert cells[("mean", 2.0)]["gain"] == pytest.approx(0.09)
    assert cells[("mean", 2.0)]["n_seeds"] == 3
