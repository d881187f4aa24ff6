"""Paired statistics over seeds for the claims study (bench/paper_claims.py): pure functions.

Why paired: every algorithm runs on the same seeds, and a seed fixes the world split, the
clients sampled each round and the eval prompts, so the per-seed difference removes the
seed-to-seed variation that a two-sample comparison would count as noise.

The tests, per comparison (FIRM vs one baseline on one metric, n seeds):

- primary: the paired t-test (two-sided) on the differences d_s = sign * (firm_s - base_s),
  sign = +1 when higher is better, so d > 0 means FIRM is better;
- check: the Wilcoxon signed-rank test (two-sided, exact). With n = 5 its smallest two-sided
  p-value is 2 / 2^5 = 0.0625, so it can never reject at alpha = 0.05: it is reported as a
  check on the t-test's normality assumption, never as the decision;
- effect sizes: the mean difference with its 95 % t confidence interval, and Cohen's d_z =
  mean(d) / sd(d) (ddof 1), the standardized paired effect.

A difference with zero spread over seeds (a deterministic metric such as bytes uploaded) has no
t statistic: p = 0 when it is non-zero (every seed agrees exactly), 1 when it is zero.

Multiple comparisons: Holm's step-down correction within one family, the comparisons that make
up one claim in one setting (the verdict is a statement about the family). Families of
different claims and settings are not corrected against each other: each verdict is its own
statement, and the per-setting table is read as a pattern, not as one test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95

BETTER, WORSE, NS, NA = "better", "worse", "n.s.", "n/a"


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def paired_differences(
    firm: Mapping[int, float | None], base: Mapping[int, float | None], higher_better: bool
) -> dict[int, float]:
    """Per seed present (and finite) in both: sign * (firm - base), > 0 = FIRM better."""
    sign = 1.0 if higher_better else -1.0
    return {
        s: sign * (float(firm[s]) - float(base[s]))
        for s in sorted(set(firm) & set(base))
        if _finite(firm[s]) and _finite(base[s])
    }


def paired_test(diffs: Sequence[float]) -> dict[str, Any]:
    """Paired t (primary) and Wilcoxon (check) on differences, with effect sizes; see module."""
    d = np.asarray([float(x) for x in diffs], dtype=float)
    n = int(d.size)
    out: dict[str, Any] = {
        "n": n,
        "mean_diff": float(d.mean()) if n else None,
        "sd_diff": None,
        "ci_low": None,
        "ci_high": None,
        "d_z": None,
        "t": None,
        "p_t": None,
        "p_wilcoxon": None,
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
    }
    if n < 2:
        return out
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    out["sd_diff"] = sd
    if sd == 0.0 or not math.isfinite(sd):
        # deterministic difference: every seed agrees exactly
        out.update(ci_low=mean, ci_high=mean, p_t=0.0 if mean != 0.0 else 1.0)
        out["d_z"] = math.copysign(math.inf, mean) if mean != 0.0 else 0.0
        out["p_wilcoxon"] = _wilcoxon(d)
        return out
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2.0, n - 1)) * se
    t = mean / se
    out.update(
        ci_low=mean - half,
        ci_high=mean + half,
        d_z=mean / sd,
        t=t,
        p_t=float(2.0 * stats.t.sf(abs(t), n - 1)),
        p_wilcoxon=_wilcoxon(d),
    )
    return out


def _wilcoxon(d: np.ndarray) -> float | None:
    """Two-sided exact Wilcoxon signed-rank p (zero differences dropped); None if all zero."""
    nz = d[d != 0.0]
    if nz.size == 0:
        return None
    method = "exact" if nz.size <= 50 and len(set(np.abs(nz).tolist())) == nz.size else "auto"
    return float(stats.wilcoxon(nz, alternative="two-sided", method=method).pvalue)


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon p-value with n non-zero differences: 2 / 2^n."""
    return min(1.0, 2.0 / 2.0**n)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (None stays None and is not counted in the family)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def comparison_verdict(test: Mapping[str, Any], p_adjusted: float | None) -> str:
    """better / worse when the Holm-adjusted paired-t p < ALPHA (direction from the mean
    difference), n.s. otherwise, n/a with fewer than 2 paired seeds."""
    if p_adjusted is None or test.get("mean_diff") is None:
        return NA
    if p_adjusted < ALPHA and test["mean_diff"] != 0.0:
        return BETTER if test["mean_diff"] > 0 else WORSE
    return NS


def family(tests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm-correct one family of comparisons in place: adds p_holm and verdict."""
    adjusted = holm([t.get("p_t") for t in tests])
    for t, p in zip(tests, adjusted, strict=True):
        t["p_holm"] = p
        t["verdict"] = comparison_verdict(t, p)
    return list(tests)


CLAIM_VERDICTS = ("held", "partly held", "not held", "contradicted", "conflicting", "n/a")


def claim_verdict(verdicts: Sequence[str]) -> str:
    """One claim in one setting from its comparisons' verdicts.

    held: every comparison significantly favours FIRM; partly held: some do, none goes
    against it; not held: none is significant; contradicted: some go against FIRM, none for
    it; conflicting: significant both ways; n/a: nothing could be tested."""
    vs = [v for v in verdicts if v != NA]
    if not vs:
        return "n/a"
    better, worse = vs.count(BETTER), vs.count(WORSE)
    if better and worse:
        return "conflicting"
    if worse:
        return "contradicted"
    if better == len(vs):
        return "held"
    return "partly held" if better else "not held"


def summary_stat(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, std (ddof 1) and n of the finite values."""
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(np.mean(vals)), "std": std, "n": len(vals)}


def slope(x: Sequence[float], y: Sequence[float | None]) -> float | None:
    """Least-squares slope of y on x over the finite pairs (None with < 2 distinct x)."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True) if _finite(b)]
    if len({a for a, _ in pairs}) < 2:
        return None
    xs, ys = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    return float(np.polyfit(xs, ys, 1)[0])
