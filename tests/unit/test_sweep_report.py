"""The sweep report: one row per trial however broken, the right Pareto front and hypervolumes
(checked against an independent exact grid computation), readable files and plots."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from firm_ray.config import FirmConfig, load_config, save_config
from firm_ray.sweep_spec import load_sweep, simplex_grid
from firm_ray.tracking import (
    PARETO_KEYS,
    TRIAL_COLUMNS,
    JsonlTracker,
    build_summary,
    build_sweep_report,
    collect_trials,
    is_sweep_dir,
    print_sweep_report,
)
from firm_ray.tracking.jsonl import write_json_atomic
from firm_ray.tracking.sweep_plots import _seed_groups, _staircase

NAMES2 = ["relevance", "harmlessness"]
NAMES3 = ["relevance", "harmlessness", "sentiment"]


def grid_hypervolume(points: list[list[float]], reference: list[float]) -> float:
    """Exact hypervolume (maximization) by summing the cells of the coordinate grid that some
    point dominates: slow, obviously right, and independent of moocore."""
    ref = np.asarray(reference)
    pts = np.asarray(points)
    axes = [np.unique(np.r_[ref[m], pts[:, m]]) for m in range(len(ref))]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        upper = np.array([axes[m][i + 1] for m, i in enumerate(cell)])
        lower = np.array([axes[m][i] for m, i in enumerate(cell)])
        if (lower >= ref).all() and (pts >= upper).all(axis=1).any():
            total += float(np.prod(upper - lower))
    return total


def make_config(
    algorithm: str, beta: float, preference: list[float], seed: int, names: list[str]
) -> FirmConfig:
    return FirmConfig.model_validate(
        {
            "experiment": {"name": "trial", "seed": seed},
            "rewards": [{"name": n, "type": n} for n in names],
            "algorithm": {"name": algorithm, "beta": beta, "preference": preference, "mu": 0.01},
            "trainer": {"learning_rate": 1e-3},
            "federation": {"num_clients": 1} if algorithm == "centralized" else {},
        }
    )


def write_trial(
    sweep: Path,
    trial_id: str,
    final: list[float] | None,
    *,
    algorithm: str = "firm",
    beta: float = 1.0,
    p1: float = 0.5,
    seed: int = 0,
    initial: list[float] | None = None,
    names: list[str] = NAMES2,
    status: str | None = "completed",
    metrics: bool = True,
    drift: float = 0.05,
    disagreement: float = 0.1,
    cosine: float | None = None,
) -> Path:
    """A real run directory: config.yaml (save_config), metrics.jsonl (JsonlTracker, rewards
    moving from ``initial`` to exactly ``final``), summary.json (build_summary) unless
    ``status`` is None."""
    run_dir = sweep / "trials" / trial_id
    m = len(names)
    preference = [p1, 1 - p1] if m == 2 else [p1, *([(1 - p1) / (m - 1)] * (m - 1))]
    save_config(make_config(algorithm, beta, preference, seed, names), run_dir / "config.yaml")
    initial = initial if initial is not None else [0.2, 0.3, 0.25][:m]
    rows: list[dict[str, Any]] = []
    if metrics and final is not None:
        for rnd in range(3):
            frac = (rnd + 1) / 3
            rewards = [i + frac * (f - i) for i, f in zip(initial, final, strict=True)]
            rows.append(
                {
                    "round": rnd,
                    "rewards": final if rnd == 2 else rewards,
                    "reward_names": names,
                    "disagreement": disagreement if algorithm != "centralized" else None,
                    "param_drift": drift * (0.5 + 0.5 * rnd),  # mean over rounds = drift
                    "bytes_up": {"0": 1000, "1": 1000},
                    "failed": [],
                }
            )
            if cosine is not None:  # issue 15's metrics; runs before it have none
                rows[-1].update(
                    update_cosine=cosine + 0.1 * rnd,
                    update_coherence=0.5 + 0.1 * rnd,
                    pareto_stationarity=None if rnd == 1 else 1.0 / (rnd + 1),
                )
        with JsonlTracker(run_dir) as tracker:
            for row in rows:
                tracker.log_round(row["round"], {k: v for k, v in row.items() if k != "round"})
    if status is not None:
        summary = build_summary(
            run_dir, rows, algorithm, seed, initial, 10.0, status, reward_names=names
        )
        write_json_atomic(run_dir / "summary.json", summary)
    return run_dir


# The FIRM beta=1 trade-off curve over p1 = 0.1 .. 0.9, all non-dominated.
CURVE = {0.1: [0.3, 0.8], 0.3: [0.4, 0.7], 0.5: [0.5, 0.6], 0.7: [0.6, 0.5], 0.9: [0.7, 0.4]}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweeps" / "demo"
    sweep.mkdir(parents=True)
    (sweep / "sweep.yaml").write_text("sweep:\n  name: demo-sweep\n  base: x.yaml\n  space: {}\n")
    (sweep / "tune").mkdir()  # Ray Tune's own state: ignored
    for k, (p1, final) in enumerate(CURVE.items(), start=1):
        write_trial(sweep, f"t{k}", final, p1=p1, drift=0.02 * k, disagreement=0.05 + 0.01 * k)
    # beta=0, another seed with a lower initial harmlessness: dominated by t3.
    write_trial(sweep, "t6", [0.45, 0.55], beta=0.0, seed=1, initial=[0.25, 0.28], disagreement=0.3)
    for tid, final, seed in (("t7", [0.4, 0.5], 0), ("t8", [0.42, 0.52], 1)):  # dominated
        write_trial(sweep, tid, final, algorithm="fedavg_ls", seed=seed, drift=0.08 + 0.02 * seed)
    # Between t3 and t4: on the front.
    write_trial(sweep, "t9", [0.55, 0.58], algorithm="fmgda", disagreement=0.2, drift=0.03)
    write_trial(sweep, "t10", None, status=None, metrics=False)  # crashed before round 0
    write_trial(sweep, "t11", [0.9, 0.9], status=None)  # still running: metrics, no summary
    write_trial(sweep, "t12", [0.95, 0.95], status="failed")  # would dominate all: must not
    bad = write_trial(sweep, "t13", [0.5, 0.5])
    (bad / "summary.json").write_text('{"status": "compl')  # damaged
    nan = write_trial(sweep, "t14", [0.5, 0.5])
    summary = json.loads((nan / "summary.json").read_text())
    summary["final_rewards"] = [None, 0.5]
    write_json_atomic(nan / "summary.json", summary)
    return sweep


FRONT = ["t1", "t2", "t3", "t9", "t4", "t5"]  # sorted by relevance
REFERENCE = [0.2, 0.28]


def test_collect_trials_one_row_per_trial_with_status(sweep: Path) -> None:
    rows = collect_trials(sweep)
    assert [r["trial_id"] for r in rows] == [f"t{k}" for k in range(1, 15)]  # natural order
    by_id = {r["trial_id"]: r for r in rows}
    t1 = by_id["t1"]
    assert t1["status"] == "completed"
    assert t1["label"] == "firm β=1"
    assert t1["preference"] == pytest.approx([0.1, 0.9])
    assert t1["final/relevance"] == pytest.approx(0.3)
    assert t1["final/harmlessness"] == pytest.approx(0.8)
    assert t1["initial/harmlessness"] == pytest.approx(0.3)
    assert t1["mean_param_drift"] == pytest.approx(0.02)
    assert t1["mean_disagreement"] == pytest.approx(0.06)
    assert t1["hypervolume"] == pytest.approx(0.1 * 0.5)  # the run's own: ref = its initial
    assert (t1["mu"], t1["learning_rate"], t1["seed"]) == (0.01, 1e-3, 0)
    assert by_id["t6"]["label"] == "firm β=0"
    assert (by_id["t7"]["label"], by_id["t7"]["beta"]) == ("fedavg_ls", None)
    assert by_id["t9"]["label"] == "fmgda"

    crashed = by_id["t10"]
    assert crashed["status"] == "not started"
    assert crashed["algorithm"] == "firm"
    assert crashed["final/relevance"] is None and crashed["hypervolume"] is None
    running = by_id["t11"]
    assert running["status"] == "incomplete"
    assert running["final/relevance"] == pytest.approx(0.9)  # provisional, from metrics
    assert running["rounds_completed"] == 3
    assert by_id["t12"]["status"] == "failed"
    assert by_id["t13"]["status"] == "unreadable"
    assert "summary.json" in by_id["t13"]["error"]
    assert by_id["t14"]["final/relevance"] is None


def test_front_reference_and_hypervolumes(sweep: Path) -> None:
    pareto = build_sweep_report(sweep)
    assert set(pareto) == set(PARETO_KEYS)
    assert pareto["sweep_name"] == "demo-sweep"
    assert pareto["reward_names"] == NAMES2
    assert pareto["reference"] == pytest.approx(REFERENCE)  # elementwise min of the initials
    assert [f["trial_id"] for f in pareto["front"]] == FRONT
    assert pareto["front"][3]["point"] == pytest.approx([0.55, 0.58])

    assert (pareto["n_trials"], pareto["n_included"], pareto["n_excluded"]) == (14, 9, 5)
    reasons = {e["trial_id"]: e["reason"] for e in pareto["excluded"]}
    assert reasons == {
        "t10": "status not started",
        "t11": "status incomplete",
        "t12": "status failed",
        "t13": "status unreadable",
        "t14": "final_rewards missing or non-finite",
    }

    firm1 = pareto["by_label"]["firm β=1"]
    assert firm1["n_trials"] == 5
    assert firm1["front"] == ["t1", "t2", "t3", "t4", "t5"]
    # Staircase by hand: 0.1 wide steps above harmlessness 0.28 -> 0.1 * (0.52 + ... + 0.12).
    assert firm1["hypervolume"] == pytest.approx(0.16)
    assert firm1["hypervolume"] == pytest.approx(grid_hypervolume(list(CURVE.values()), REFERENCE))
    fedavg = pareto["by_label"]["fedavg_ls"]
    assert (fedavg["n_trials"], fedavg["front"]) == (2, ["t8"])
    assert fedavg["hypervolume"] == pytest.approx((0.42 - 0.2) * (0.52 - 0.28))
    assert pareto["by_label"]["firm β=0"]["front"] == ["t6"]
    assert list(pareto["by_label"]) == ["firm β=0", "firm β=1", "fedavg_ls", "fmgda"]
    everything = [*CURVE.values(), [0.45, 0.55], [0.4, 0.5], [0.42, 0.52], [0.55, 0.58]]
    assert pareto["hypervolume"] == pytest.approx(grid_hypervolume(everything, REFERENCE))
    assert pareto["hypervolume"] == pytest.approx(0.164)

    firm = pareto["by_algorithm"]["firm"]
    assert firm["n_trials"] == 6
    assert firm["front"] == ["t1", "t2", "t3", "t4", "t5"]
    assert set(pareto["by_algorithm"]) == {"firm", "fedavg_ls", "fmgda"}
    assert json.loads((sweep / "pareto.json").read_text()) == pareto


def test_csv_and_json_rows(sweep: Path) -> None:
    build_sweep_report(sweep)
    with open(sweep / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    per_objective = [
        f"{p}/{n}" for p in ("preference", "final", "initial", "smoothness") for n in NAMES2
    ]
    assert set(rows[0]) == {*TRIAL_COLUMNS, *per_objective, "on_front"}
    assert [r["trial_id"] for r in rows] == [f"t{k}" for k in range(1, 15)]
    by_id = {r["trial_id"]: r for r in rows}
    assert by_id["t10"]["status"] == "not started"
    assert by_id["t10"]["final/relevance"] == ""
    assert float(by_id["t5"]["final/relevance"]) == pytest.approx(0.7)
    assert json.loads(by_id["t5"]["preference"]) == pytest.approx([0.9, 0.1])
    assert {i for i, r in by_id.items() if r["on_front"] == "True"} == set(FRONT)

    data = json.loads((sweep / "trials.json").read_text())
    assert [r["trial_id"] for r in data] == [r["trial_id"] for r in rows]
    assert all(list(r) == list(rows[0]) for r in data)
    assert data[9]["status"] == "not started" and data[9]["on_front"] is None
    assert not [p for p in sweep.iterdir() if p.name.endswith(".tmp")]


def assert_real_png(path: Path) -> np.ndarray:
    """A rendered figure, not a blank or a placeholder: many distinct colors (markers, the
    viridis colorbar, lines)."""
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] >= 400 and image.shape[1] >= 800
    colors = np.unique(image.reshape(-1, image.shape[2]).round(3), axis=0)
    assert len(colors) > 150, f"{path.name}: only {len(colors)} colors"
    return image


def test_plots_are_written_and_non_trivial(sweep: Path) -> None:
    build_sweep_report(sweep)
    pareto_png = assert_real_png(sweep / "pareto.png")
    assert_real_png(sweep / "drift.png")
    assert pareto_png.shape[1] == 960  # one panel (8 in at 120 dpi)


def test_print_sweep_report_marks_the_front(sweep: Path) -> None:
    console = Console(record=True, width=220, color_system=None)
    print_sweep_report(sweep, console)
    out = console.export_text()
    trial_lines = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[2].startswith("t") and cells[2][1:].isdigit():
            trial_lines[cells[2]] = cells
    assert set(trial_lines) == {f"t{k}" for k in range(1, 15)}
    starred = {tid for tid, cells in trial_lines.items() if cells[1] == "★"}
    assert starred == set(FRONT)
    assert "not started" in trial_lines["t10"][-2]
    assert "firm β=1" in out and "0.16" in out and "0.164" in out
    assert str(sweep / "pareto.png") in out.replace("\n", "")
    assert "left out of the front: 5" in out


def test_three_objectives(tmp_path: Path) -> None:
    sweep = tmp_path / "s3"
    finals = {
        "a": [0.5, 0.5, 0.5],
        "b": [0.6, 0.4, 0.5],
        "c": [0.4, 0.6, 0.6],
        "d": [0.4, 0.4, 0.4],  # dominated by a
        "e": [0.55, 0.45, 0.3],
    }
    for k, (tid, final) in enumerate(finals.items()):
        write_trial(sweep, tid, final, names=NAMES3, p1=0.2 * k, beta=[0.0, 0.1, 1.0][k % 3])
    write_trial(sweep, "x", [0.9, 0.9], names=NAMES2)  # other objectives: left out
    pareto = build_sweep_report(sweep)
    assert pareto["reward_names"] == NAMES3
    assert {f["trial_id"] for f in pareto["front"]} == {"a", "b", "c", "e"}
    assert pareto["reference"] == pytest.approx([0.2, 0.3, 0.25])
    assert pareto["hypervolume"] == pytest.approx(
        grid_hypervolume(list(finals.values()), [0.2, 0.3, 0.25])
    )
    assert pareto["excluded"][0]["trial_id"] == "x"
    assert "differ" in pareto["excluded"][0]["reason"]
    image = assert_real_png(sweep / "pareto.png")
    assert image.shape[:2] == (1392, 1560)  # 2 x 2: three projections and a 3-D view
    assert_real_png(sweep / "drift.png")


def test_three_objective_preference_sweep_over_the_simplex(tmp_path: Path) -> None:
    """A synthetic M = 3 sweep as sweep_three_objectives.yaml lays it out: firm and fedavg_ls
    at every point of the simplex grid with 4 points per edge (10 preferences). Each trial's
    final point leans towards its preference; the report's front, hypervolumes (exact, 3-D),
    per-objective columns and the update-conflict columns are checked independently."""
    sweep = tmp_path / "s3"
    prefs = simplex_grid(3, 4)
    assert len(prefs) == 10
    finals: dict[str, list[float]] = {}
    for k, pref in enumerate(prefs):
        for algo, scale in (("firm", 0.3), ("fedavg_ls", 0.25)):
            tid = f"{algo}_{k}"
            final = [round(0.3 + scale * p, 6) for p in pref]
            finals[tid] = final
            run_dir = write_trial(
                sweep, tid, final, algorithm=algo, names=NAMES3, cosine=0.1 * k - 0.5
            )
            cfg = make_config(algo, 1.0, pref, 0, NAMES3)  # the exact simplex preference
            save_config(cfg, run_dir / "config.yaml")
    write_trial(sweep, "old", [0.3, 0.3, 0.3], names=NAMES3)  # no conflict metrics (old run)
    pareto = build_sweep_report(sweep)
    reference = [0.2, 0.3, 0.25]
    assert pareto["reward_names"] == NAMES3
    assert pareto["reference"] == pytest.approx(reference)
    by_label = pareto["by_label"]
    assert list(by_label) == ["firm β=1", "fedavg_ls"]
    firm = [f for t, f in finals.items() if t.startswith("firm")]
    fedavg = [f for t, f in finals.items() if t.startswith("fedavg")]
    assert by_label["firm β=1"]["hypervolume"] == pytest.approx(grid_hypervolume(firm, reference))
    assert by_label["fedavg_ls"]["hypervolume"] == pytest.approx(
        grid_hypervolume(fedavg, reference)
    )
    # firm's points dominate fedavg_ls's at the same preference: the front is firm's 10.
    assert {f["trial_id"] for f in pareto["front"]} == {f"firm_{k}" for k in range(10)}
    everything = [*finals.values(), [0.3, 0.3, 0.3]]
    assert pareto["hypervolume"] == pytest.approx(grid_hypervolume(everything, reference))

    rows = {r["trial_id"]: r for r in json.loads((sweep / "trials.json").read_text())}
    r3 = rows["firm_3"]
    assert [r3[f"preference/{n}"] for n in NAMES3] == pytest.approx(prefs[3])
    assert r3["final_update_cosine"] == pytest.approx(0.3 - 0.5 + 0.2)  # round 2's
    assert r3["mean_update_cosine"] == pytest.approx(0.3 - 0.5 + 0.1)
    assert r3["final_update_coherence"] == pytest.approx(0.7)
    assert r3["mean_update_coherence"] == pytest.approx(0.6)
    assert r3["final_pareto_stationarity"] == pytest.approx(1.0 / 3)
    old = rows["old"]
    for key in ("mean_update_cosine", "final_update_coherence", "final_pareto_stationarity"):
        assert old[key] is None
    with open(sweep / "trials.csv", newline="") as fh:
        csv_rows = {r["trial_id"]: r for r in csv.DictReader(fh)}
    assert float(csv_rows["firm_3"]["final_pareto_stationarity"]) == pytest.approx(1.0 / 3)
    assert csv_rows["old"]["final_update_cosine"] == ""
    image = assert_real_png(sweep / "pareto.png")
    assert image.shape[:2] == (1392, 1560)
    console = Console(record=True, width=220, color_system=None)
    print_sweep_report(sweep, console, build=False)
    out = console.export_text()
    assert "update cos" in out
    line = next(x for x in out.splitlines() if "│ firm_3 " in x)
    assert f"{0.3 - 0.5 + 0.1:.4g}" in line.split("│")[-3]  # mean update cosine, before status


def test_empty_and_missing_sweep_dirs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a sweep directory"):
        build_sweep_report(tmp_path)
    assert not is_sweep_dir(tmp_path)
    (tmp_path / "sweep.yaml").write_text("sweep:\n  name: empty\n")
    assert is_sweep_dir(tmp_path)
    pareto = build_sweep_report(tmp_path)  # nothing ran yet: an empty report, not an error
    assert pareto["n_trials"] == 0 and pareto["front"] == [] and pareto["hypervolume"] is None
    assert pareto["reference"] is None and pareto["by_label"] == {}
    assert (tmp_path / "trials.csv").read_text().startswith("trial_id,")
    assert json.loads((tmp_path / "trials.json").read_text()) == []
    assert imread(tmp_path / "pareto.png").ndim == 3
    console = Console(record=True, width=160)
    print_sweep_report(tmp_path, console)
    assert "0 trials" in console.export_text()


def test_config_that_no_longer_validates_is_read_best_effort(tmp_path: Path) -> None:
    run_dir = write_trial(tmp_path, "old", [0.4, 0.5], beta=2.0)
    text = (run_dir / "config.yaml").read_text().replace("algorithm:\n", "algorithm:\n  gone: 1\n")
    (run_dir / "config.yaml").write_text(text)
    (row,) = collect_trials(tmp_path)
    assert (row["status"], row["label"], row["learning_rate"]) == ("completed", "firm β=2", 1e-3)
    assert row["error"] is None


def test_plotted_front_encloses_the_hypervolume() -> None:
    """The staircase drawn in pareto.png (closed at the reference) has the front's hypervolume
    as its area, so the shaded region is exactly what the numbers measure."""
    points = np.array([*CURVE.values(), [0.45, 0.55], [0.55, 0.58]])
    xs, ys = _staircase(points, np.array(REFERENCE))
    x = np.array([*xs, REFERENCE[0]])
    y = np.array([*ys, REFERENCE[1]])
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # shoelace
    assert area == pytest.approx(grid_hypervolume(points.tolist(), REFERENCE))
    assert (xs[0], ys[-1]) == (REFERENCE[0], REFERENCE[1])
    # Every corner is weakly dominated by some point: the line never overstates the front.
    corners = np.c_[xs, ys]
    assert all((points >= c - 1e-12).all(axis=1).any() for c in corners)


def test_drift_points_average_over_seeds_only() -> None:
    def row(beta: float, p1: float, seed: int, value: float | None) -> dict[str, Any]:
        return {"beta": beta, "preference": [p1, 1 - p1], "seed": seed, "d": value}

    rows = [row(1.0, 0.3, 0, 0.1), row(1.0, 0.3, 1, 0.3), row(1.0, 0.7, 0, 0.5)]
    rows += [row(0.0, 0.3, 0, None), row(0.0, 0.3, 1, 0.2)]
    groups = _seed_groups(rows, "d")
    assert groups[(1.0, (0.3, 0.7))] == pytest.approx((0.2, 0.1, 2))
    assert groups[(1.0, (0.7, 0.3))] == pytest.approx((0.5, 0.0, 1))
    assert groups[(0.0, (0.3, 0.7))] == pytest.approx((0.2, 0.0, 1))  # unknown values skipped
    assert len(groups) == 3


def test_shipped_three_objective_configs_load() -> None:
    """tune_configs/three_objectives.yaml validates with three objectives of existing reward
    types, and its sweep expands to the 10 points of the M = 3 simplex grid per variant."""
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "tune_configs" / "three_objectives.yaml")
    assert [r.name for r in cfg.rewards] == NAMES3
    assert [r.type for r in cfg.rewards] == NAMES3
    assert cfg.algorithm.preference_vector(3) == pytest.approx([1 / 3] * 3)
    sweep = load_sweep(repo / "tune_configs" / "sweep_three_objectives.yaml")
    assert sweep.num_trials() == 20
    axis = next(a for a in sweep.axes if a.key == "algorithm.preference")
    assert axis.values == simplex_grid(3, 4)
    assert all(len(p) == 3 and sum(p) == pytest.approx(1.0) for p in axis.values)
