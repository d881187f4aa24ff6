"""The claims study's analysis (bench/paper_claims.py and bench/claims_*.py) on synthetic
per-seed results: statistics, verdict rules, records read from real run files, the cache and
claims.md. No training runs here."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import claims_analysis as ca  # noqa: E402
import claims_data as cd  # noqa: E402
import claims_grid as cg  # noqa: E402
import claims_report as cr  # noqa: E402
import claims_stats as cs  # noqa: E402

SEEDS = [0, 1, 2, 3, 4]
NAMES = ["relevance", "harmlessness"]


# ------------------------------------------------------------------------------ statistics
def test_paired_test_matches_scipy_and_hand_computation():
    firm = np.array([0.30, 0.41, 0.35, 0.52, 0.44])
    base = np.array([0.28, 0.35, 0.36, 0.45, 0.40])
    d = firm - base
    out = cs.paired_test(d.tolist())
    ref = stats.ttest_rel(firm, base)
    assert out["t"] == pytest.approx(ref.statistic)
    assert out["p_t"] == pytest.approx(ref.pvalue)
    assert out["mean_diff"] == pytest.approx(d.mean())
    assert out["d_z"] == pytest.approx(d.mean() / d.std(ddof=1))
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert out["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert (out["wins"], out["losses"]) == (4, 1)


def test_wilcoxon_cannot_reject_with_five_seeds():
    """All five differences favour FIRM: the exact two-sided Wilcoxon p is 2/32 = 0.0625."""
    out = cs.paired_test([0.1, 0.2, 0.3, 0.4, 0.5])
    assert out["p_wilcoxon"] == pytest.approx(0.0625)
    assert cs.min_wilcoxon_p(5) == pytest.approx(0.0625)
    assert out["p_t"] < 0.05  # the paired t does reject: it is the primary test


def test_deterministic_and_degenerate_differences():
    same = cs.paired_test([-2.0] * 5)  # bytes: FIRM uploads less on every seed, exactly
    assert same["p_t"] == 0.0 and same["d_z"] == -math.inf and same["sd_diff"] == 0.0
    zero = cs.paired_test([0.0] * 5)
    assert zero["p_t"] == 1.0 and zero["p_wilcoxon"] is None
    one = cs.paired_test([0.3])
    assert one["p_t"] is None and cs.comparison_verdict(one, None) == cs.NA


def test_holm_step_down():
    # sorted 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04 (monotone), None stays out of the family
    assert cs.holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert cs.holm([0.6, 0.5]) == [1.0, 1.0]


def test_claim_verdict_rules():
    B, W, N = cs.BETTER, cs.WORSE, cs.NS
    assert cs.claim_verdict([B, B]) == "held"
    assert cs.claim_verdict([B, N]) == "partly held"
    assert cs.claim_verdict([N, N, cs.NA]) == "not held"
    assert cs.claim_verdict([W, N]) == "contradicted"
    assert cs.claim_verdict([B, W]) == "conflicting"
    assert cs.claim_verdict([cs.NA]) == "n/a"


def test_family_uses_holm_adjusted_p():
    """p = 0.03 alone rejects; in a family of two with 0.04 beside it, Holm gives 0.06."""
    t1 = {"p_t": 0.03, "mean_diff": 1.0}
    t2 = {"p_t": 0.04, "mean_diff": 1.0}
    assert cs.family([dict(t1)])[0]["verdict"] == cs.BETTER
    out = cs.family([t1, t2])
    assert [t["verdict"] for t in out] == [cs.NS, cs.NS]
    assert out[0]["p_holm"] == pytest.approx(0.06)


# ------------------------------------------------------------------------------ synthetic study
def record(
    algo,
    seed,
    *,
    setting="group/adamw/M2",
    pref=(0.5, 0.5),
    final=(0.5, 0.8),
    smooth=0.02,
    dis=0.05,
    drift=1.0,
    nbytes=60480.0,
    cos=None,
    norms=(),
):
    adv, opt, m = setting.split("/")
    return {
        "run_dir": f"/x/{algo}/{seed}",
        "algo": algo,
        "algorithm": algo.split("_b")[0],
        "setting": setting,
        "advantage": adv,
        "optimizer": opt,
        "learning_rate": 5e-3,
        "m": int(m[1:]),
        "seed": seed,
        "preference": list(pref),
        "reward_names": NAMES,
        "final": list(final),
        "initial": [0.43, 0.74],
        "smoothness": [smooth, smooth],
        "mean_disagreement": dis,
        "simplex_disagreement": dis,
        "mean_param_drift": drift,
        "mean_update_cosine": cos,
        "mean_update_coherence": None,
        "final_stationarity": None,
        "bytes_up_per_client_round": nbytes,
        "wall_time_s": 60.0,
        "final_kl": 0.5,
        "rounds": 12,
        "grad_norm_ratios": list(norms),
        "lambda_deviation": [0.1, 0.2],
        "curves": {},
    }


def synthetic(setting="group/adamw/M2", firm_smooth_gain=0.01, rng_seed=0):
    """FIRM smoother than every baseline by firm_smooth_gain (seed noise 0.001); disagreement
    and drift equal to beta 0's up to noise; fmgda uploads twice the bytes; FIRM's rewards
    follow p (slope 0.2 per unit weight), fedavg_ls's too."""
    rng = np.random.default_rng(rng_seed)
    recs = []
    for s in SEEDS:
        base_smooth = 0.03 + 0.005 * s
        for algo in ("firm_b0", "fedavg_ls", "fmgda", "jd_pcgrad"):
            recs.append(
                record(
                    algo,
                    s,
                    setting=setting,
                    smooth=base_smooth + rng.normal(0, 1e-3),
                    dis=0.0 if algo in ("fedavg_ls", "fmgda") else 0.05 + rng.normal(0, 0.01),
                    drift=1.0 + rng.normal(0, 0.05),
                    nbytes=120960.0 if algo == "fmgda" else 60480.0,
                    final=(0.5 + rng.normal(0, 0.01), 0.8 + rng.normal(0, 0.01)),
                )
            )
        recs.append(
            record(
                "firm_b1",
                s,
                setting=setting,
                smooth=base_smooth - firm_smooth_gain + rng.normal(0, 1e-3),
                dis=0.05 + rng.normal(0, 0.01),
                drift=1.0 + rng.normal(0, 0.05),
                final=(0.5 + rng.normal(0, 0.01), 0.8 + rng.normal(0, 0.01)),
                norms=(1.0, 1.1, 2.0),
            )
        )
        recs.append(record("centralized", s, setting=setting, final=(0.6, 0.9)))
        for algo in ("firm_b1", "fedavg_ls"):
            for p1 in (0.0, 1.0):
                recs.append(
                    record(
                        algo,
                        s,
                        setting=setting,
                        pref=(p1, 1 - p1),
                        final=(
                            0.5 + 0.2 * (p1 - 0.5) + rng.normal(0, 0.005),
                            0.8 - 0.2 * (p1 - 0.5) + rng.normal(0, 0.005),
                        ),
                    )
                )
    return recs


def verdicts_of(setting_analysis):
    return {c["claim"]: c["verdict"] for c in setting_analysis["claims"]}


def test_a_real_effect_is_held_and_no_effect_is_not():
    out = ca.analyse_setting(synthetic(), SEEDS)
    v = verdicts_of(out)
    assert v[ca.CLAIMS[0]] == "held"  # FIRM smoother than each of the 4 baselines
    assert v[ca.CLAIMS[1]] == "not held"  # disagreement / drift: noise only
    assert v[ca.CLAIMS[3]] == "held"  # half fmgda's bytes, exactly fedavg_ls's
    assert v[ca.CLAIMS[4]] == "held"  # both objectives follow their weight
    claim1 = next(c for c in out["claims"] if c["claim"] == ca.CLAIMS[0])
    assert {c["baseline"] for c in claim1["comparisons"]} == {
        "firm_b0",
        "fedavg_ls",
        "fmgda",
        "jd_pcgrad",
    }
    assert all(c["p_holm"] >= c["p_t"] for c in claim1["comparisons"])
    # disagreement is compared only with algorithms whose clients solve for lambda
    claim2 = next(c for c in out["claims"] if c["claim"] == ca.CLAIMS[1])
    dis = [c["baseline"] for c in claim2["comparisons"] if c["metric"].startswith("disagreement")]
    assert dis == ["firm_b0", "jd_pcgrad"]
    drift = [c["baseline"] for c in claim2["comparisons"] if c["metric"].startswith("param drift")]
    assert "fmgda" not in drift
    # the reference is never a baseline
    assert all(c["baseline"] != "centralized" for cl in out["claims"] for c in cl["comparisons"])
    # the preference sweep entered claim 3 against fedavg_ls only (the only other sweeper)
    claim3 = next(c for c in out["claims"] if c["claim"] == ca.CLAIMS[2])
    assert [c["baseline"] for c in claim3["comparisons"] if "sweep" in c["metric"]] == ["fedavg_ls"]
    assert out["grad_norm_ratio"]["median"] == pytest.approx(1.1)


def test_no_effect_gives_not_held_and_reversed_effect_is_contradicted():
    assert (
        verdicts_of(ca.analyse_setting(synthetic(firm_smooth_gain=0.0), SEEDS))[ca.CLAIMS[0]]
        == "not held"
    )
    assert (
        verdicts_of(ca.analyse_setting(synthetic(firm_smooth_gain=-0.01), SEEDS))[ca.CLAIMS[0]]
        == "contradicted"
    )


def test_knob_effects_name_the_knob_and_the_change():
    recs = synthetic("group/adamw/M2", 0.0) + synthetic("group_mean/adamw/M2", 0.01, rng_seed=1)
    out = ca.analyse(recs, SEEDS)
    effects = [e for e in out["knob_effects"] if e["claim"] == ca.CLAIMS[0]]
    assert effects == [
        {
            "knob": "advantage",
            "claim": ca.CLAIMS[0],
            "from": "group/adamw/M2",
            "to": "group_mean/adamw/M2",
            "from_verdict": "not held",
            "to_verdict": "held",
        }
    ]


def test_hypervolume_of_one_point():
    assert ca.hypervolume_point([0.5, 0.9], [0.4, 0.7]) == pytest.approx(0.1 * 0.2)
    assert ca.hypervolume_point([0.3, 0.9], [0.4, 0.7]) == 0.0
    assert ca.hypervolume_points([[0.5, 0.9]], [0.4, 0.7]) == pytest.approx(0.02)


def test_claims_md_and_plots(tmp_path):
    analysis = ca.analyse(synthetic() + synthetic("group_mean/sgd/M2", 0.0, 1), SEEDS)
    meta = {
        "command": "python bench/paper_claims.py",
        "seeds": SEEDS,
        "rounds": 12,
        "federation": "16 clients",
        "wall_s": 1.0,
        "n_trials": 10,
        "n_skipped": 0,
    }
    text = cr.markdown(analysis, meta)
    assert "## Verdict per setting" in text
    assert "| group/adamw/M2 | held | not held |" in text
    assert "| group_mean/sgd/M2 | not held |" in text
    assert "0.0625 (so it cannot reject at 0.05" in text
    assert "Holm" in text and "d_z" in text
    # the two settings differ in two knobs: no single-knob change can be claimed
    assert "No verdict changes with a single knob." in text
    # gradient-norm ratios: present in the synthetic FIRM records, so no 'must log' note
    assert "1.10 [" in text and "client_grad_norms" not in text
    paths = cr.plot_claims(analysis, tmp_path)
    assert [p.name for p in paths[:5]] == [f"claim_{k}.png" for k in range(1, 6)]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_missing_grad_norms_are_reported_as_the_metric_to_add():
    recs = [dict(r, grad_norm_ratios=[]) for r in synthetic()]
    analysis = ca.analyse(recs, SEEDS)
    text = cr.markdown(
        analysis,
        {
            "command": "c",
            "seeds": SEEDS,
            "rounds": 12,
            "federation": "f",
            "wall_s": 0.0,
            "n_trials": 1,
            "n_skipped": 0,
        },
    )
    assert "not logged" in text and "`client_grad_norms`" in text


# ------------------------------------------------------------------------------ files
def write_run(
    run_dir: Path, *, algo="firm", beta=1.0, seed=0, status="completed", m=2, aggregator=None
):
    run_dir.mkdir(parents=True)
    rewards = [{"name": n} for n in [*NAMES, "sentiment"][:m]]
    cfg = {
        "experiment": {"seed": seed},
        "rewards": rewards,
        "algorithm": {"name": algo, "beta": beta, "preference": None}
        | ({"aggregator": aggregator} if aggregator else {}),
        "trainer": {"advantage": "group_mean", "optimizer": "sgd", "learning_rate": 5.0},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = {
        "status": status,
        "final_rewards": [0.5] * m,
        "initial_rewards": [0.4] * m,
        "smoothness": [0.01] * m,
        "mean_disagreement": 0.05,
        "bytes_up_per_client_round": 60480.0,
        "wall_time_s": 70.0,
        "final_kl": 0.3,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rows = [
        {
            "round": 0,
            "rewards": [0.45] * m,
            "param_drift": 1.0,
            "update_cosine": 0.1,
            "client_lambdas": {
                "0": [0.7, 0.3][:m] if m == 2 else [0.5, 0.3, 0.2],
                "1": [0.5, 0.5][:m] if m == 2 else [1 / 3] * 3,
            },
            "client_grad_norms": {
                "0": [2.0, 1.0] if m == 2 else [1.0, 1.0, 3.0],
                "1": [1.0, 1.0][:m] if m == 2 else [1.0, 1.0, 1.0],
            },
        },
        {
            "round": 1,
            "rewards": None,
            "param_drift": 3.0,
            "update_cosine": None,
            "pareto_stationarity": 0.25,
            "client_lambdas": {},
        },
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")


def test_records_read_from_real_run_files(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "trials" / "t0", beta=0.0, seed=3)
    write_run(sweep / "trials" / "t1", algo="jd", seed=3, aggregator="pcgrad")
    write_run(sweep / "trials" / "t2", status="failed")
    (sweep / "trials" / "t3").mkdir()
    records, skipped = cd.load_records([sweep])
    assert [r["algo"] for r in records] == ["firm_b0", "jd_pcgrad"]
    r = records[0]
    assert r["setting"] == "group_mean/sgd/M2" and r["seed"] == 3 and r["preference"] == [0.5, 0.5]
    assert r["mean_param_drift"] == pytest.approx(2.0) and r["mean_update_cosine"] == pytest.approx(
        0.1
    )
    assert r["final_stationarity"] == pytest.approx(0.25)
    assert r["simplex_disagreement"] == pytest.approx(math.hypot(0.1, 0.1))
    assert r["grad_norm_ratios"] == pytest.approx([2.0, 1.0])
    assert r["lambda_deviation"] == pytest.approx([math.hypot(0.2, 0.2), 0.0])
    assert len(skipped) == 2 and all("not completed" in s for s in skipped)  # nothing silent


def test_completed_sweep_is_reused_without_running(tmp_path, monkeypatch):
    """The cache: a sweep whose spec (hence name) is unchanged and whose trials all completed
    is taken as it is; --reuse reports a missing one instead of running it."""
    part = cg.Part(cg.Setting("group", "adamw", 2), "uniform", ["firm_b1"], None, [0, 1])
    spec = cg.sweep_spec(part, tmp_path, quick=False)
    name = spec["sweep"]["name"]
    assert name == cg.sweep_spec(part, tmp_path, quick=False)["sweep"]["name"]  # stable hash
    other = cg.Part(part.setting, "uniform", ["firm_b1"], None, [0, 1, 2])
    assert cg.sweep_spec(other, tmp_path, quick=False)["sweep"]["name"] != name
    base = tmp_path / "base_m2.yaml"  # an edited base experiment is a new sweep too
    edited = base.read_text().replace("local_steps: 4", "local_steps: 3")
    assert edited != base.read_text()
    src = tmp_path / "src" / cg.BASE_CONFIG.name  # same name: only the content differs
    src.parent.mkdir()
    src.write_text(edited)
    monkeypatch.setattr(cg, "BASE_CONFIG", src)
    assert cg.sweep_spec(part, tmp_path, quick=False)["sweep"]["name"] != name
    monkeypatch.undo()
    assert cg.sweep_spec(part, tmp_path, quick=False)["sweep"]["name"] == name
    from rich.console import Console

    console = Console(file=open(tmp_path / "log.txt", "w"))  # noqa: SIM115
    missing = cg.ensure_sweep(spec, tmp_path, 2, "reuse", console)
    assert missing["mode"] == "missing" and missing["sweep_dir"] is None
    for i in range(2):
        write_run(tmp_path / "sweeps" / name / "trials" / f"t{i}", seed=i)
    cached = cg.ensure_sweep(spec, tmp_path, 2, "run", console)
    assert cached["mode"] == "cached" and cached["completed"] == 2
    assert Path(cached["sweep_dir"]).name == name


def test_generated_sweeps_validate_against_the_config_schema(tmp_path):
    """Every generated sweep file of the algorithms the package registers loads with
    firm_ray's own sweep validation, and expands to the part's trial count."""
    from firm_ray.config import ConfigError
    from firm_ray.sweep_spec import load_sweep

    checked = 0
    for part in cg.design(SEEDS):
        spec = cg.sweep_spec(part, tmp_path, quick=False)
        path = tmp_path / f"{spec['sweep']['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        try:
            sweep = load_sweep(path)
        except ConfigError as err:
            if "jd" in str(err):  # algorithm.name=jd lands with the plug-in algorithms
                continue
            raise
        assert sweep.num_trials() == part.n_trials()
        checked += 1
    assert checked >= len(cg.SETTINGS) // 2
    # 10x the trainer's rule, as AdamW; the rule's group rate is the trainer's SGD default
    from firm_ray.trainer.backends import DEFAULT_LEARNING_RATES

    assert cg.SGD_RULE["group"] == DEFAULT_LEARNING_RATES["sgd"]
    assert cg.sgd_learning_rate("group") == pytest.approx(5.0)
    assert cg.sgd_learning_rate("group_mean") == pytest.approx(20.0)
    assert "trainer.learning_rate=20" in cg.Setting("group_mean", "sgd", 2).overrides()


def test_plan_runs_nothing(tmp_path, capsys):
    import paper_claims

    assert paper_claims.main(["--plan", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "260 trials" in out and not (tmp_path / "sweeps").exists()


def test_plan_of_a_subset_and_an_unknown_setting(tmp_path, capsys):
    import paper_claims

    out = str(tmp_path)
    assert paper_claims.main(["--plan", "--out", out, "--settings", "group/adamw/M2"]) == 0
    assert "60 trials" in capsys.readouterr().out
    assert paper_claims.main(["--plan", "--out", out, "--settings", "group/adam/M2"]) == 2
    assert paper_claims.main(["--plan", "--out", out, "--jd-aggregator", "nope"]) == 2


def test_disagreement_compares_the_mix_of_objectives():
    """jd's weights are not on the simplex: [1, 1] and [2, 2] take the same mix (0)."""
    rows = [
        {"client_lambdas": {"0": [1.0, 1.0], "1": [2.0, 2.0]}},
        {"client_lambdas": {"0": [1.0, 0.0], "1": [0.0, 1.0], "2": None}},
        {"client_lambdas": {"0": [0.5, 0.5]}},
    ]  # one client: no disagreement, not counted
    assert cd.simplex_disagreement(rows) == pytest.approx((0.0 + math.sqrt(0.5)) / 2)
    assert cd.simplex_disagreement([]) is None


def test_update_cosine_enters_claim_2_for_every_federated_baseline_when_logged():
    recs = [dict(r, mean_update_cosine=0.1 if r["algo"] == "firm_b1" else 0.0) for r in synthetic()]
    claim2 = next(
        c for c in ca.analyse_setting(recs, SEEDS)["claims"] if c["claim"] == ca.CLAIMS[1]
    )
    cos = [c for c in claim2["comparisons"] if c["metric"].startswith("update cosine")]
    assert [c["baseline"] for c in cos] == ["firm_b0", "fedavg_ls", "fmgda", "jd_pcgrad"]
    assert all(c["higher_better"] and c["verdict"] == "better" for c in cos)


def test_base_file_leaves_out_sections_added_later_at_their_defaults(tmp_path):
    """quickstart.yaml's privacy: / robustness: sections (issue 16) at their defaults do not
    enter the study's base file, so the cache keys of the sweeps run before them hold; a
    non-default value does enter it."""
    import claims_grid as cg

    text = cg.base_config(tmp_path, 2).read_text()
    assert "privacy:" not in text and "robustness:" not in text
    assert "federation:" in text
    raw = yaml.safe_load(cg.BASE_CONFIG.read_text())
    assert {k: raw[k] for k in cg.LATER_SECTIONS} == cg.LATER_DEFAULTS  # really the defaults
