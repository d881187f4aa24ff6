"""The robustness and privacy benches (bench/robustness.py, bench/privacy.py, bench/
protection_grid.py): the generated sweep files load and hold the planned trials and settings,
records are read from real run files, the analysis on synthetic per-seed results gives the
hand-computed retained gains, verdicts and tables, and --plan runs nothing. No training, no Ray.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import privacy as pv  # noqa: E402
import protection_grid as pg  # noqa: E402
import robustness as rb  # noqa: E402
from claims_data import load_records  # noqa: E402

from firm_ray.config.loading import dump_config  # noqa: E402
from firm_ray.core.robust import min_clients  # noqa: E402
from firm_ray.federation.attacks import attackers  # noqa: E402
from firm_ray.runtime.privacy_budget import check_budget, epsilon_after  # noqa: E402
from firm_ray.sweep_spec import load_sweep  # noqa: E402

INITIAL = [0.5, 0.7]


def write_spec(grid: pg.Grid, out: Path, bench: str, quick: bool = False) -> Path:
    spec = pg.sweep_spec(grid, out, quick, bench)
    path = out / "specs" / f"{spec['sweep']['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def all_params(sweep) -> list[dict]:
    """Every grid point of a loaded sweep as trial params (variant x each axis)."""
    keys = [a.key for a in sweep.axes]
    out = []
    for variant in sweep.spec.variants:
        for values in itertools.product(*(a.values for a in sweep.axes)):
            out.append({"variant": variant, **dict(zip(keys, values, strict=True))})
    return out


# ------------------------------------------------------------------------------ sweep files
def test_robustness_specs_load_with_planned_trials_and_every_rule_runs_at_30_percent(tmp_path):
    grids = rb.design(rb.SEEDS)
    assert [g.n_trials() for g in grids] == [18, 54, 54]  # 6 rules x 3 seeds (x 3 fractions)
    for grid in grids:
        sweep = load_sweep(write_spec(grid, tmp_path, "robustness"))
        assert sweep.num_trials() == grid.n_trials()
        assert sorted(sweep.spec.variants) == sorted(rb.ROBUST_RULES)
        for params in all_params(sweep):
            cfg = sweep.trial_config(params)
            fed, rob = cfg.federation, cfg.robustness
            assert (fed.num_clients, fed.clients_sampled_per_round) == (10, 10)
            assert (fed.rounds, fed.local_steps, cfg.data.max_eval_prompts) == (6, 2, 64)
            assert cfg.algorithm.name == "firm" and cfg.algorithm.beta == 1.0
            assert rob.aggregator == params["variant"]
            # every rule accepts the round: Krum needs 2f + 3 = 9 <= 10 updates
            assert min_clients(rob.aggregator, rob.byzantine) <= fed.clients_sampled_per_round
            if rob.aggregator in ("krum", "multi_krum"):
                assert rob.byzantine == 3
            if rob.aggregator == "trimmed_mean":
                assert math.floor(rob.trim_fraction * 10 + 1e-9) == 3
            if rob.aggregator == "norm_bound":
                assert rob.norm_bound == pg.MEDIAN_UPDATE_NORM
            if grid.name == "robust_none":
                assert rob.attack.kind is None
                continue
            kind = grid.name.removeprefix("robust_")
            assert (rob.attack.kind, rob.attack.scale) == (kind, rb.ATTACKS[kind])
            n_bad = len(attackers(10, rob.attack.fraction, cfg.experiment.seed))
            assert n_bad == round(10 * params["robustness.attack.fraction"]) in (1, 2, 3)


def test_privacy_specs_load_with_planned_trials_and_pass_the_budget_check(tmp_path):
    nodp, dp = pv.design(pv.SEEDS)
    assert (nodp.n_trials(), dp.n_trials()) == (6, 36)  # 2 algos x 3 seeds (x 6 sigmas)
    nodp_sweep = load_sweep(write_spec(nodp, tmp_path, "privacy"))
    assert nodp_sweep.num_trials() == 6
    for params in all_params(nodp_sweep):
        assert not nodp_sweep.trial_config(params).privacy.enabled
    sweep = load_sweep(write_spec(dp, tmp_path, "privacy"))
    assert sweep.num_trials() == 36
    names = set()
    for params in all_params(sweep):
        cfg = sweep.trial_config(params)
        names.add(cfg.algorithm.name)
        assert cfg.privacy.clip == pg.MEDIAN_UPDATE_NORM and cfg.privacy.noise == "central"
        assert cfg.privacy.noise_multiplier == params["privacy.noise_multiplier"]
        assert cfg.robustness.aggregator == "mean"
        check_budget(cfg)  # the runtime's own pre-start check: no refusal
        planned = pv.planned_epsilons([cfg.privacy.noise_multiplier], cfg.federation.rounds)
        expected = epsilon_after(cfg, cfg.federation.rounds)  # what the run will report
        assert planned[cfg.privacy.noise_multiplier] == pytest.approx(expected)
    assert names == {"firm", "fedavg_ls"}


def test_spec_name_is_a_cache_key(tmp_path):
    grid = rb.design([0])[0]
    a = pg.sweep_spec(grid, tmp_path, False, "robustness")["sweep"]["name"]
    assert a == pg.sweep_spec(grid, tmp_path, False, "robustness")["sweep"]["name"]
    assert a != pg.sweep_spec(grid, tmp_path, True, "robustness")["sweep"]["name"]
    assert a != pg.sweep_spec(rb.design([1])[0], tmp_path, False, "robustness")["sweep"]["name"]


def test_quick_designs_are_small():
    assert sum(g.n_trials() for g in rb.design([0], quick=True)) == 4
    assert sum(g.n_trials() for g in pv.design([0], quick=True)) == 3


# ------------------------------------------------------------------------------ records
def test_records_read_protection_fields_from_real_run_files(tmp_path):
    sweep = load_sweep(write_spec(rb.design([1])[1], tmp_path, "robustness"))
    cfg = sweep.trial_config(
        {"variant": "krum", "experiment.seed": 1, "robustness.attack.fraction": 0.2}
    )
    run = tmp_path / "sweeps" / "s" / "trials" / "t0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    summary = {
        "status": "completed",
        "final_rewards": [0.56, 0.78],
        "initial_rewards": INITIAL,
        "hypervolume": 0.0048,
        "privacy": None,
        "robustness": {"aggregator": "krum", "attack": "sign_flip", "attacker_updates_selected": 1},
    }
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (tmp_path / "sweeps" / "s" / "trials" / "t1").mkdir()  # unfinished: counted, not dropped
    records, skipped = load_records([tmp_path / "sweeps" / "s"])
    assert len(skipped) == 1 and "not completed" in skipped[0]
    (rec,) = [pg.with_protection(r) for r in records]
    assert (rec["aggregator"], rec["attack"], rec["attack_fraction"]) == ("krum", "sign_flip", 0.2)
    assert (rec["attack_scale"], rec["seed"], rec["hypervolume"]) == (4.0, 1, 0.0048)
    assert rec["clip"] is None and rec["noise_multiplier"] is None
    assert rec["server_lr"] == 1.0
    assert pg.reward_gain(rec) == pytest.approx(((0.56 - 0.5) + (0.78 - 0.7)) / 2)


# ------------------------------------------------------------------------------ analysis
def rob_record(attack: str, fraction: float, rule: str, seed: int, gain: float) -> dict:
    """A record whose objectives gain gain + 0.01 and gain - 0.01 (mean: gain)."""
    final = [INITIAL[0] + gain + 0.01, INITIAL[1] + gain - 0.01]
    return {
        "attack": attack,
        "attack_fraction": fraction,
        "aggregator": rule,
        "seed": seed,
        "initial": INITIAL,
        "final": final,
        "hypervolume": max(gain + 0.01, 0) * max(gain - 0.01, 0),
        "robustness_summary": {"attacker_updates_selected": 0 if rule == "krum" else None},
    }


GAINS = {  # (attack, fraction, rule) -> per-seed gains
    ("none", 0.0, "mean"): [0.04, 0.06, 0.05],
    ("none", 0.0, "krum"): [0.06, 0.07, 0.08],
    ("sign_flip", 0.2, "mean"): [-0.01, -0.03, -0.02],
    ("sign_flip", 0.2, "krum"): [0.045, 0.04, 0.05],
    ("scale", 0.2, "mean"): [0.04, 0.04, 0.04],
    ("scale", 0.2, "krum"): [0.02, 0.03, 0.04],
}


def robustness_analysis() -> dict:
    return rb.analyse(
        [rob_record(*k, s, g) for k, gains in GAINS.items() for s, g in enumerate(gains)]
    )


def test_retained_gain_is_relative_to_mean_without_attack():
    out = robustness_analysis()
    assert out["reference_gain"] == pytest.approx(0.05) and out["reference_n_seeds"] == 3
    by = {(c["attack"], c["fraction"], c["aggregator"]): c for c in out["cells"]}
    for key, gains in GAINS.items():
        cell = by[key]
        mean = sum(gains) / 3
        assert cell["gain"] == pytest.approx(mean)
        assert cell["retained"] == pytest.approx(mean / 0.05)
        own = sum(GAINS[("none", 0.0, key[2])]) / 3
        assert cell["retained_own"] == pytest.approx(mean / own)
        sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / 2)
        assert cell["gain_std"] == pytest.approx(sd, abs=1e-12)
        assert cell["final_rewards"] == pytest.approx([0.5 + mean + 0.01, 0.7 + mean - 0.01])
        assert cell["n_seeds"] == 3 and cell["seeds"] == [0, 1, 2]
    assert by[("sign_flip", 0.2, "krum")]["attackers"] == 2
    assert by[("sign_flip", 0.2, "krum")]["attacker_updates_selected"] == 0
    assert by[("sign_flip", 0.2, "mean")]["attacker_updates_selected"] is None
    hv = by[("none", 0.0, "mean")]["hypervolume"]
    assert hv == pytest.approx((0.05 * 0.03 + 0.07 * 0.05 + 0.06 * 0.04) / 3)


def test_headline_verdicts():
    head = robustness_analysis()["headline"]
    assert head["sign_flip"]["verdict"] == "held"  # krum 90 %, mean -40 %
    assert head["sign_flip"]["best_robust"] == "krum"
    assert head["sign_flip"]["retained"]["mean"] == pytest.approx(-0.4)
    assert head["sign_flip"]["retained_own"]["krum"] == pytest.approx(0.045 / 0.07)
    scale = head["scale"]["verdict"]
    assert scale == "not held: best robust rule krum keeps 60% < 90%; mean keeps 80% >= 50%"


def test_tables_and_markdown():
    out = robustness_analysis()
    header, body = rb.table_lines(out, "retained")
    assert header == ["aggregator", "no attack", "scale 20%", "sign_flip 20%"]
    assert body == [["mean", "100%", "80%", "-40%"], ["krum", "140%", "60%", "90%"]]
    header, body = rb.table_lines(out, "retained_own")
    assert body == [["mean", "100%", "80%", "-40%"], ["krum", "100%", "43%", "64%"]]
    header, body = rb.table_lines(out, "gain")
    assert body[0] == ["mean", "0.0500", "0.0400", "-0.0200"]
    meta = {"command": "c", "federation": "f", "seeds": [0, 1, 2], "n_trials": 18, "n_skipped": 0}
    text = rb.markdown(out, meta)
    assert "| mean | 100% | 80% | -40% |" in text
    assert (
        "- sign_flip: held; mean -40%, krum 90% "
        "(vs the rule's own no-attack gain: mean -40%, krum 64%)" in text
    )
    assert "## Reward gain retained, relative to the same rule without attack" in text


def dp_record(algo: str, sigma: float | None, seed: int, gain: float, eps: float | None) -> dict:
    return {
        "algo": algo,
        "seed": seed,
        "initial": INITIAL,
        "final": [INITIAL[0] + gain, INITIAL[1] + gain],
        "hypervolume": gain * gain if gain > 0 else 0.0,
        "clip": None if sigma is None else 0.7,
        "noise_multiplier": sigma,
        "privacy_summary": None if sigma is None else {"epsilon": eps},
    }


def test_privacy_analysis_epsilon_and_retained_per_algorithm():
    recs = []
    for s in range(3):
        recs += [
            dp_record("firm_b1", None, s, 0.05, None),
            dp_record("firm_b1", 0.0, s, 0.045, None),  # clipping only: epsilon null = inf
            dp_record("firm_b1", 1.0, s, 0.01 * s, 34.1),
            dp_record("fedavg_ls", None, s, 0.04, None),
            dp_record("fedavg_ls", 1.0, s, -0.01, 34.1),
        ]
    out = pv.analyse(recs)
    assert out["reference_gain"] == pytest.approx({"firm_b1": 0.05, "fedavg_ls": 0.04})
    cells = {(c["algo"], c["setting"]): c for c in out["cells"]}
    assert [(c["algo"], c["setting"]) for c in out["cells"]] == [
        ("fedavg_ls", pv.NO_DP),
        ("fedavg_ls", 1.0),
        ("firm_b1", pv.NO_DP),
        ("firm_b1", 0.0),
        ("firm_b1", 1.0),
    ]
    assert cells[("firm_b1", pv.NO_DP)]["epsilon"] is None
    assert math.isinf(cells[("firm_b1", 0.0)]["epsilon"])
    assert cells[("firm_b1", 0.0)]["retained"] == pytest.approx(0.9)
    assert cells[("firm_b1", 1.0)]["epsilon"] == 34.1
    assert cells[("firm_b1", 1.0)]["retained"] == pytest.approx(0.01 / 0.05)
    assert cells[("fedavg_ls", 1.0)]["retained"] == pytest.approx(-0.25)
    _, body = pv.table_rows(out)
    row = body[3]
    assert row[:6] == ["firm_b1", "0", "inf", "0.0450", "0.0000", "90%"]
    assert body[0][:3] == ["fedavg_ls", pv.NO_DP, "-"]
    assert json.loads(json.dumps(pg.finite_json(out)))["cells"][3]["epsilon"] == "inf"


# ------------------------------------------------------------------------------ --plan
@pytest.mark.parametrize("module", [rb, pv])
def test_plan_runs_nothing(module, tmp_path, monkeypatch, capsys):
    def tripwire(*args, **kwargs):
        raise AssertionError("--plan ran a sweep")

    monkeypatch.setattr(pg, "ensure_sweep", tripwire)
    out = tmp_path / "out"
    assert module.main(["--plan", "--out", str(out)]) == 0
    assert not out.exists()
    text = capsys.readouterr().out
    assert "126 trials" in text if module is rb else "42 trials" in text


def test_plots_and_console_tables_are_written(tmp_path):
    from rich.console import Console

    rob = rb.plot(robustness_analysis(), tmp_path / "robustness.png")
    recs = [
        dp_record("firm_b1", s, 0, g, e)
        for s, g, e in [
            (None, 0.05, None),
            (0.0, 0.04, None),
            (1.0, 0.01, 34.1),
            (4.0, -0.01, 5.98),
        ]
    ]
    dp = pv.plot(pv.analyse(recs), tmp_path / "privacy.png")
    assert rob.stat().st_size > 0 and dp.stat().st_size > 0
    console = Console(record=True, width=200)
    rb.print_tables(robustness_analysis(), console)
    pv.print_table(pv.analyse(recs), console)
    text = console.export_text()
    assert "20 % sign_flip: held" in text and "34.1" in text
