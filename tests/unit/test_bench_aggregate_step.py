"""bench/aggregate_step.py: the aggregate statistics on hand-built deltas (the mechanism it
measures: a median of sign-like updates keeps their length, a mean cancels it), the check's
and the matched-step attack's sweeps, and their analyses on synthetic per-seed results. No
training, no Ray."""

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


def record(rule: str, server_lr: float, seed: int, gain: float) -> dict:
    """A no-attack record as protection_grid.with_protection gives it."""
    return {
        "seed": seed,
        "attack": "none",
        "aggregator": rule,
        "server_lr": server_lr,
        "initial": INITIAL,
        "final": [INITIAL[0] + gain, INITIAL[1] + gain],
    }


def test_gap_closed_is_relative_to_mean_and_median_at_server_lr_1():
    gains = {
        ("mean", 1.0): [0.05, 0.06, 0.07],  # 0.06
        ("coordinate_median", 1.0): [0.09, 0.10, 0.11],  # 0.10
        ("mean", 2.0): [0.08, 0.09, 0.10],  # 0.09: 75 % of the gap
        ("coordinate_median", 0.5): [0.06, 0.06, 0.06],  # 0.06: back to mean, 0 %
    }
    records = [
        record(rule, lr, seed, g)
        for (rule, lr), vals in gains.items()
        for seed, g in enumerate(vals)
    ]
    records.append({**record("krum", 1.0, 9, 0.5), "seed": 9})  # not a cell
    cells = {(c["rule"], c["server_lr"]): c for c in ag.analyse(records, [0, 1, 2])["cells"]}
    assert set(cells) == set(gains)
    assert cells[("mean", 2.0)]["gap_closed"] == pytest.approx(0.75)
    assert cells[("coordinate_median", 0.5)]["gap_closed"] == pytest.approx(0.0, abs=1e-9)
    assert cells[("mean", 1.0)]["gap_closed"] == pytest.approx(0.0)
    assert cells[("coordinate_median", 1.0)]["gap_closed"] == pytest.approx(1.0)
    assert cells[("mean", 2.0)]["gain"] == pytest.approx(0.09)
    assert cells[("mean", 2.0)]["n_seeds"] == 3


def measurement(ratios: dict[str, list[float]], server_lr: float) -> dict:
    per_seed = {
        str(i): {"rules": {rule: {"ratio": vals[i]} for rule, vals in ratios.items()}}
        for i in range(3)
    }
    return {"per_seed": per_seed, "server_lr": server_lr}


def test_matched_lrs_and_the_attack_grid_skip_what_robustness_py_ran():
    m = measurement(
        {
            "trimmed_mean": [1.7, 1.75, 1.8],  # 2.1 / 1.75 = 1.2
            "coordinate_median": [2.0, 2.05, 2.1],  # 2.1 / 2.05 = 1.02 -> 1.0: cached
            "krum": [2.6, 2.65, 2.7],  # 0.79 -> 0.8
            "multi_krum": [1.1, 1.15, 1.2],  # 1.83 -> 1.8
        },
        2.1,
    )
    lrs = ag.matched_lrs(m)
    assert lrs == {"trimmed_mean": 1.2, "coordinate_median": 1.0, "krum": 0.8, "multi_krum": 1.8}
    grid = ag.attack_grid(ag.SEEDS, lrs)
    assert sorted(grid.variants) == ["krum_lr0.8", "multi_krum_lr1.8", "trimmed_mean_lr1.2"]
    assert grid.variants["krum_lr0.8"] == [
        "robustness.aggregator=krum",
        "robustness.byzantine=3",
        "algorithm.server_lr=0.8",
    ]
    assert "robustness.attack.fraction=0.2" in grid.extra
    assert "robustness.attack.kind=sign_flip" in grid.extra
    assert ag.attack_grid(ag.SEEDS, {"coordinate_median": 1.0}) is None


def attacked(rule: str, lr: float, seed: int, gain: float, fraction: float) -> dict:
    rec = record(rule, lr, seed, gain)
    return {**rec, "attack": "sign_flip", "attack_fraction": fraction}


def test_attack_retained_is_relative_to_mean_at_the_matched_step_without_attack():
    records = [record("mean", 2.1, s, 0.08) for s in range(3)]  # the reference
    records += [record("mean", 1.0, s, 0.5) for s in range(3)]  # other step: ignored
    records += [attacked("krum", 0.8, s, 0.076, 0.2) for s in range(3)]  # 95 %
    records += [attacked("krum", 0.8, s, 0.0, 0.3) for s in range(3)]  # 30 %: ignored
    records += [attacked("coordinate_median", 1.0, s, 0.04, 0.2) for s in range(3)]
    out = ag.analyse_attack(records, [0, 1, 2], {"krum": 0.8, "coordinate_median": 1.0}, 2.1)
    assert out["reference"]["gain"] == pytest.approx(0.08)
    cells = {c["rule"]: c for c in out["cells"]}
    assert cells["krum"]["retained"] == pytest.approx(0.95)
    assert cells["coordinate_median"]["retained"] == pytest.approx(0.5)
    assert out["verdict"] == "held: best krum keeps 95% (bar 90%)"
    records = [r for r in records if r["aggregator"] != "krum"]
    out = ag.analyse_attack(records, [0, 1, 2], {"krum": 0.8, "coordinate_median": 1.0}, 2.1)
    assert out["verdict"] == "not held: best coordinate_median keeps 50% (bar 90%)"
    assert {c["rule"]: c["retained"] for c in out["cells"]}["krum"] is None
