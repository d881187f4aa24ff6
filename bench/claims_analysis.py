"""The claims study's analysis: per setting, the five claims as paired tests over seeds.

Pure functions of the trial records (bench/claims_data.py), so tests feed them synthetic
records. FIRM is ``firm_b1`` (beta 1, relative: the shipped default, fixed before any run; the
beta grid is reported beside it, never searched for a winner). Each claim is one family of
comparisons, FIRM vs one baseline on one metric, tested as in bench/claims_stats.py (paired t,
Holm within the family) and turned into one verdict per setting by ``claim_verdict``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from claims_stats import (
    claim_verdict,
    family,
    paired_differences,
    paired_test,
    slope,
    summary_stat,
)

FIRM = "firm_b1"
BETA0 = "firm_b0"
REFERENCE = "centralized"  # the non-federated reference: shown, never a baseline
CLAIMS = (
    "1. smoother training",
    "2. less client disagreement drift",
    "3. better reward trade-offs",
    "4. one parameter set uploaded per client",
    "5. trade-offs follow the preference",
)
KNOBS = ("advantage", "optimizer", "m")

Getter = Callable[[dict[str, Any]], float | None]


def _uniform(pref: Sequence[float]) -> bool:
    return all(abs(p - 1.0 / len(pref)) < 1e-6 for p in pref)


def hypervolume_point(point: Sequence[float] | None, reference: Sequence[float]) -> float | None:
    """Hypervolume of one point (rewards maximized): product of improvements over the
    reference, 0 unless every objective improved."""
    if point is None:
        return None
    gains = [float(a) - float(r) for a, r in zip(point, reference, strict=True)]
    return float(np.prod(gains)) if all(g > 0 for g in gains) else 0.0


def hypervolume_points(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Hypervolume of a set of points (moocore, as the sweep report computes it)."""
    from firm_ray.core.pareto import hypervolume

    return float(hypervolume([list(p) for p in points], list(reference)))


class SettingData:
    """The records of one setting, indexed by (algorithm, seed) at the uniform preference."""

    def __init__(self, records: Sequence[dict[str, Any]], seeds: Sequence[int]) -> None:
        self.records = list(records)
        self.seeds = [int(s) for s in seeds]
        self.names = self.records[0]["reward_names"] if self.records else []
        self.uniform: dict[str, dict[int, dict[str, Any]]] = {}
        for r in self.records:
            if _uniform(r["preference"]) and r["seed"] in self.seeds:
                self.uniform.setdefault(r["algo"], {})[r["seed"]] = r
        # the reference point of a seed: its initial policy's eval rewards (elementwise min
        # over the seed's trials, which share the eval set; any spread is reported)
        self.reference: dict[int, list[float]] = {}
        self.reference_spread: dict[int, float] = {}
        for s in self.seeds:
            inits = [r["initial"] for r in self.records if r["seed"] == s and r["initial"]]
            if inits:
                arr = np.asarray(inits, dtype=float)
                self.reference[s] = arr.min(axis=0).tolist()
                self.reference_spread[s] = float((arr.max(axis=0) - arr.min(axis=0)).max())

    def algos(self) -> list[str]:
        return sorted(self.uniform, key=_algo_order)

    def per_seed(self, algo: str, get: Getter) -> dict[int, float | None]:
        return {s: get(r) for s, r in self.uniform.get(algo, {}).items()}

    def hv_uniform(self, algo: str) -> dict[int, float | None]:
        return {
            s: hypervolume_point(r["final"], self.reference[s])
            for s, r in self.uniform.get(algo, {}).items()
            if s in self.reference
        }

    def sweep(self, algo: str) -> dict[int, list[dict[str, Any]]]:
        """Per seed, the algorithm's trials over every preference (uniform included)."""
        out: dict[int, list[dict[str, Any]]] = {}
        for r in self.records:
            if r["algo"] == algo and r["seed"] in self.seeds:
                out.setdefault(r["seed"], []).append(r)
        return out

    def has_sweep(self, algo: str) -> bool:
        return any(len(v) > 1 for v in self.sweep(algo).values())

    def hv_sweep(self, algo: str) -> dict[int, float | None]:
        return {
            s: hypervolume_points([r["final"] for r in rs if r["final"]], self.reference[s])
            for s, rs in self.sweep(algo).items()
            if s in self.reference and len(rs) > 1
        }


def _algo_order(algo: str) -> tuple[int, float, str]:
    if algo.startswith("firm_b"):
        return (0, float(algo.removeprefix("firm_b")), algo)
    order = {"fedavg_ls": 1, "fmgda": 2, REFERENCE: 9}
    return (order.get(algo, 5), 0.0, algo)


def _mean_of(values: Sequence[Any] | None) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def compare(
    metric: str,
    baseline: str,
    firm: dict[int, float | None],
    base: dict[int, float | None],
    higher_better: bool,
) -> dict[str, Any]:
    """One comparison: FIRM vs a baseline, paired over seeds (verdict set by ``family``)."""
    diffs = paired_differences(firm, base, higher_better)
    return {
        "metric": metric,
        "baseline": baseline,
        "higher_better": higher_better,
        "firm": summary_stat(list(firm.values())),
        "base": summary_stat(list(base.values())),
        **paired_test(list(diffs.values())),
    }


def _against(
    data: SettingData, metric: str, get: Getter, baselines: Sequence[str], higher: bool
) -> list[dict[str, Any]]:
    firm = data.per_seed(FIRM, get)
    return [
        compare(metric, b, firm, data.per_seed(b, get), higher)
        for b in baselines
        if b in data.uniform and firm
    ]


def _present(data: SettingData, key: str) -> bool:
    return any(r.get(key) is not None for r in data.uniform.get(FIRM, {}).values())


def claim_comparisons(data: SettingData) -> dict[str, list[dict[str, Any]]]:
    """The families of the five claims in one setting (empty where a claim cannot be tested)."""
    algos = data.algos()
    federated = [a for a in algos if a not in (FIRM, REFERENCE) and not _is_beta_grid(a)]
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in CLAIMS}
    # 1. smoothness: mean over objectives of the std of round-to-round eval-reward changes
    out[CLAIMS[0]] = _against(
        data,
        "smoothness, mean over objectives (lower)",
        lambda r: _mean_of(r["smoothness"]),
        federated,
        higher=False,
    )
    # 2. disagreement among algorithms whose clients solve for lambda; drift; update conflict
    solving = [a for a in federated if a == BETA0 or a.startswith("jd_")]
    fam = _against(
        data,
        "disagreement of lambda / sum(lambda) (lower)",
        lambda r: r.get("simplex_disagreement"),
        solving,
        False,
    )
    no_fmgda = [a for a in federated if a != "fmgda"]  # fmgda's drift is another quantity
    fam += _against(data, "param drift (lower)", lambda r: r["mean_param_drift"], no_fmgda, False)
    if _present(data, "mean_update_cosine"):
        fam += _against(
            data, "update cosine (higher)", lambda r: r["mean_update_cosine"], federated, True
        )
    out[CLAIMS[1]] = fam
    # 3. hypervolume of the uniform point; over the preference sweep where both swept
    firm_hv = data.hv_uniform(FIRM)
    fam = [
        compare("HV of the p = uniform point", b, firm_hv, data.hv_uniform(b), True)
        for b in federated
    ]
    if data.has_sweep(FIRM):
        for b in federated:
            if data.has_sweep(b):
                fam.append(
                    compare("HV over the p sweep", b, data.hv_sweep(FIRM), data.hv_sweep(b), True)
                )
    out[CLAIMS[2]] = fam
    # 4. bytes uploaded per client-round: fewer than fmgda's, as many as fedavg_ls's
    get_bytes: Getter = lambda r: r["bytes_up_per_client_round"]  # noqa: E731
    out[CLAIMS[3]] = _against(
        data, "bytes up per client-round (lower)", get_bytes, ["fmgda"], False
    )
    firm_b, ls_b = data.per_seed(FIRM, get_bytes), data.per_seed("fedavg_ls", get_bytes)
    ratios = [firm_b[s] / ls_b[s] for s in firm_b if s in ls_b and firm_b[s] and ls_b[s]]
    if ratios:
        same = all(abs(x - 1.0) < 0.01 for x in ratios)
        out[CLAIMS[3]].append(
            {
                "metric": "upload / fedavg_ls's (= 1: one adapter)",
                "baseline": "fedavg_ls",
                "ratio": float(np.mean(ratios)),
                "n": len(ratios),
                "verdict": "better" if same else "worse",
                "exact": True,
            }
        )
    # 5. each objective's final reward rises with its preference weight (FIRM's own sweep)
    out[CLAIMS[4]] = preference_slopes(data, FIRM) if data.has_sweep(FIRM) else []
    return out


def _is_beta_grid(algo: str) -> bool:
    return algo.startswith("firm_b") and algo not in (FIRM, BETA0)


def preference_slopes(data: SettingData, algo: str) -> list[dict[str, Any]]:
    """Per objective m: the per-seed least-squares slope of final r_m on p_m over the sweep,
    tested against 0 (one-sample t = paired with a flat response)."""
    out = []
    sweep = data.sweep(algo)
    for m, name in enumerate(data.names):
        slopes = {
            s: slope(
                [r["preference"][m] for r in rs],
                [r["final"][m] if r["final"] else None for r in rs],
            )
            for s, rs in sweep.items()
        }
        vals = [v for v in slopes.values() if v is not None]
        out.append(
            {
                "metric": f"d final {name} / d p_{name}",
                "baseline": "flat (slope 0)",
                "higher_better": True,
                "per_seed": slopes,
                "firm": summary_stat(vals),
                "base": None,
                **paired_test(vals),
            }
        )
    return out


def algorithm_table(data: SettingData) -> dict[str, dict[str, Any]]:
    """Per algorithm at the uniform preference: mean ± std over seeds of every metric."""
    table = {}
    for algo in data.algos():
        rs = list(data.uniform[algo].values())
        row: dict[str, Any] = {"n_seeds": len(rs)}
        for m, name in enumerate(data.names):
            row[f"final/{name}"] = summary_stat([r["final"][m] if r["final"] else None for r in rs])
            row[f"smoothness/{name}"] = summary_stat(
                [r["smoothness"][m] if r["smoothness"] else None for r in rs]
            )
        row["hv_uniform"] = summary_stat(list(data.hv_uniform(algo).values()))
        for key in (
            "mean_disagreement",
            "simplex_disagreement",
            "mean_param_drift",
            "mean_update_cosine",
            "mean_update_coherence",
            "final_stationarity",
            "bytes_up_per_client_round",
            "final_kl",
            "wall_time_s",
        ):
            row[key] = summary_stat([r.get(key) for r in rs])
        row["lambda_deviation"] = distribution([x for r in rs for x in r["lambda_deviation"]])
        table[algo] = row
    return table


def distribution(values: Sequence[float]) -> dict[str, Any] | None:
    """n, median, 10th / 90th percentiles and the share above 1.5 (for ratios)."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if vals.size == 0:
        return None
    return {
        "n": int(vals.size),
        "median": float(np.median(vals)),
        "p10": float(np.percentile(vals, 10)),
        "p90": float(np.percentile(vals, 90)),
        "share_above_1_5": float((vals > 1.5).mean()),
    }


def analyse_setting(records: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    data = SettingData(records, seeds)
    claims = []
    for name, comps in claim_comparisons(data).items():
        tested = [c for c in comps if not c.get("exact")]
        family(tested)
        claims.append(
            {
                "claim": name,
                "comparisons": comps,
                "verdict": claim_verdict([c["verdict"] for c in comps]),
            }
        )
    gradient_algos = [a for a in data.algos() if a.startswith("firm_b") or a.startswith("jd_")]
    ratios = [
        x for a in gradient_algos for r in data.uniform[a].values() for x in r["grad_norm_ratios"]
    ]
    deviations = [x for r in data.uniform.get(BETA0, {}).values() for x in r["lambda_deviation"]]
    beta_curve = {}
    for algo in data.algos():
        if algo.startswith("firm_b"):
            beta_curve[float(algo.removeprefix("firm_b"))] = {
                "disagreement": summary_stat(
                    [r["simplex_disagreement"] for r in data.uniform[algo].values()]
                ),
                "param_drift": summary_stat(
                    [r["mean_param_drift"] for r in data.uniform[algo].values()]
                ),
            }
    return {
        "reward_names": data.names,
        "seeds_found": sorted({r["seed"] for r in data.records}),
        "reference_per_seed": data.reference,
        "reference_spread_per_seed": data.reference_spread,
        "algorithms": algorithm_table(data),
        "claims": claims,
        "grad_norm_ratio": distribution(ratios),
        "grad_norm_ratio_values": ratios,
        "lambda_deviation_beta0": distribution(deviations),
        "lambda_deviation_values": deviations,
        "beta_curve": dict(sorted(beta_curve.items())),
        "fedavg_ls_slopes": preference_slopes(data, "fedavg_ls")
        if data.has_sweep("fedavg_ls")
        else [],
    }


def parse_setting(key: str) -> dict[str, Any]:
    advantage, optimizer, m = key.split("/")
    return {"advantage": advantage, "optimizer": optimizer, "m": int(m.removeprefix("M"))}


def knob_effects(verdicts: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """For each knob, the pairs of settings that differ in it alone, and the claims whose
    verdict changes between them."""
    out = []
    keys = sorted(verdicts)
    for a, b in itertools.combinations(keys, 2):
        pa, pb = parse_setting(a), parse_setting(b)
        diff = [k for k in KNOBS if pa[k] != pb[k]]
        if len(diff) != 1:
            continue
        for claim in CLAIMS:
            va, vb = verdicts[a].get(claim, "n/a"), verdicts[b].get(claim, "n/a")
            if va != vb and "n/a" not in (va, vb):
                out.append(
                    {
                        "knob": diff[0],
                        "claim": claim,
                        "from": a,
                        "to": b,
                        "from_verdict": va,
                        "to_verdict": vb,
                    }
                )
    return out


def analyse(records: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """The whole study: per setting, the verdict table, the knob effects."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_setting.setdefault(r["setting"], []).append(r)
    settings = {k: analyse_setting(v, seeds) for k, v in sorted(by_setting.items())}
    verdicts = {k: {c["claim"]: c["verdict"] for c in s["claims"]} for k, s in settings.items()}
    return {"settings": settings, "verdicts": verdicts, "knob_effects": knob_effects(verdicts)}
