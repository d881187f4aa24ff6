"""claims.md and the plots of the claims study, from bench/claims_analysis.py's result.

The markdown is written to be quoted: the verdict table per setting first, then what changes
which verdict (computed from that table), then per setting and claim every comparison with its
mean difference, 95 % CI, d_z, paired-t p (raw and Holm-adjusted) and the Wilcoxon check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claims_analysis import CLAIMS, FIRM
from claims_stats import ALPHA, min_wilcoxon_p

GRAD_NORM_METRIC = (
    "`client_grad_norms` in each metrics.jsonl round row: {client id: [M floats]}, the mean "
    "over the client's local steps of ||g_m||_2, the per-objective gradient before "
    "algorithm.grad_norm scaling (the square roots of the Gram matrix's diagonal that "
    "LocalTrainer._direction already computes)"
)


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if isinstance(x, float) and x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _stat(s: dict[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "–"
    if s.get("n", 0) < 2:  # one seed: no spread to show
        return _num(s["mean"], digits)
    return f"{_num(s['mean'], digits)} ± {_num(s['std'], 2)}"


def _p(p: float | None) -> str:
    return "–" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*lines, ""]


def comparison_row(c: dict[str, Any]) -> list[str]:
    """One comparison as a table row (mean difference > 0 = FIRM better)."""
    if c.get("exact"):
        return [
            c["metric"],
            c["baseline"],
            f"ratio {c['ratio']:.3f} (every seed)",
            "",
            "",
            "",
            "",
            "",
            c["verdict"],
        ]
    ci = "–" if c.get("ci_low") is None else f"[{_num(c['ci_low'])}, {_num(c['ci_high'])}]"
    base = _stat(c.get("base")) if c.get("base") else "0"
    return [
        c["metric"],
        c["baseline"],
        f"{_stat(c.get('firm'))} vs {base}",
        _num(c.get("mean_diff")),
        ci,
        _num(c.get("d_z"), 2),
        f"{_p(c.get('p_t'))} / {_p(c.get('p_holm'))}",
        f"{_p(c.get('p_wilcoxon'))} ({c.get('wins', 0)}/{c.get('n', 0)})",
        c.get("verdict", "n/a"),
    ]


COMPARISON_HEADER = [
    "metric",
    "baseline",
    "FIRM vs baseline (mean ± sd)",
    "mean diff (>0: FIRM better)",
    "95% CI",
    "d_z",
    "p paired t / Holm",
    "p Wilcoxon (FIRM wins)",
    "verdict",
]


def rules_text(seeds: Sequence[int]) -> list[str]:
    n = len(seeds)
    return [
        f"**Rules, fixed before the runs.** FIRM = `{FIRM}` (beta 1, relative: the shipped "
        "default; the beta grid is shown beside it, never searched for a winner). Each claim in "
        "each setting is one family of comparisons, FIRM vs one baseline on one metric, paired "
        f"over the {n} seeds (a seed fixes the data split, the sampled clients and the eval "
        f"set). Primary test: two-sided paired t on the per-seed differences, alpha = {ALPHA}, "
        "Holm-corrected within the family; a comparison is *better* / *worse* when the adjusted "
        "p < alpha, else *n.s.*. Check: the exact two-sided Wilcoxon signed-rank test, whose "
        f"smallest possible p with {n} seeds is {min_wilcoxon_p(n):.4f}"
        + (
            " (so it cannot reject at 0.05 and is never the decision)"
            if min_wilcoxon_p(n) >= ALPHA
            else ""
        )
        + ". Effect sizes: the mean difference with its 95 % t CI and Cohen's d_z = mean / sd "
        "of the differences. A claim is *held* when every comparison is better, *partly held* "
        "when some are and none is worse, *not held* when none is significant, *contradicted* "
        "when some are worse and none better, *conflicting* when both. Families of different "
        "claims and settings are not corrected against each other. `centralized` (one client "
        "with all data, FIRM's update) is a reference, never a baseline.",
        "",
    ]


def markdown(analysis: dict[str, Any], meta: dict[str, Any]) -> str:
    settings, verdicts = analysis["settings"], analysis["verdicts"]
    lines = [
        "# FIRM's claims on the built-in world: a paired study over seeds",
        "",
        f"Command: `{meta['command']}`. Seeds {meta['seeds']}; {meta['rounds']} rounds; "
        f"{meta['federation']}. Bench wall time {meta['wall_s']:.0f} s; trials: "
        f"{meta['n_trials']} completed, {meta['n_skipped']} left out (listed in the JSON).",
        "",
        *rules_text(meta["seeds"]),
        "## Verdict per setting",
        "",
        "Setting = trainer.advantage / trainer.optimizer / number of objectives M.",
        "",
    ]
    lines += _table(
        ["setting", *[c.split(". ", 1)[1] for c in CLAIMS]],
        [[k, *[verdicts[k].get(c, "n/a") for c in CLAIMS]] for k in settings],
    )
    lines += ["## Which knob changes which verdict", ""]
    effects = analysis["knob_effects"]
    if effects:
        lines += _table(
            ["knob", "claim", "from", "to"],
            [
                [
                    e["knob"],
                    e["claim"],
                    f"{e['from']}: {e['from_verdict']}",
                    f"{e['to']}: {e['to_verdict']}",
                ]
                for e in effects
            ],
        )
    else:
        lines += ["No verdict changes with a single knob.", ""]
    lines += why_lines(analysis)
    for key, s in settings.items():
        lines += [f"## Setting {key}", ""]
        lines += setting_lines(s)
    return "\n".join(lines)


def why_lines(analysis: dict[str, Any]) -> list[str]:
    """The evidence for why regularization can matter in a setting: how far the beta = 0
    weights sit from p, and the per-objective gradient-norm ratios when the trainer logs them."""
    rows, any_norms = [], False
    for key, s in analysis["settings"].items():
        dev, ratio = s["lambda_deviation_beta0"], s["grad_norm_ratio"]
        any_norms = any_norms or ratio is not None
        beta = s["beta_curve"]
        rows.append(
            [
                key,
                "–" if dev is None else f"{dev['median']:.3f} [{dev['p10']:.3f}, {dev['p90']:.3f}]",
                "not logged"
                if ratio is None
                else f"{ratio['median']:.2f} [{ratio['p10']:.2f}, {ratio['p90']:.2f}], "
                f">1.5: {ratio['share_above_1_5']:.0%}",
                ", ".join(f"β={b:g}: {_stat(v['disagreement'])}" for b, v in beta.items()),
            ]
        )
    lines = [
        "## Why: how much room regularization has",
        "",
        "With equal per-objective gradient norms (and near-orthogonal gradients) the min-norm "
        "weights are uniform, i.e. at p = uniform whatever beta is, so FIRM's regularization "
        "has nothing to correct. "
        "Columns: ||lambda_i - p|| per client-round of firm beta = 0 (median [10th, 90th "
        "percentile]; 0 = the weights already sit at p); max/min per-objective gradient-norm "
        "ratio per client-round of the gradient-based algorithms; disagreement per beta.",
        "",
        *_table(["setting", "β=0: ||λ - p||", "grad-norm ratio", "disagreement vs β"], rows),
    ]
    if not any_norms:
        lines += [
            f"Gradient-norm ratios: not in these runs. The trainer must log {GRAD_NORM_METRIC}; "
            "the bench reads it when present.",
            "",
        ]
    return lines


def setting_lines(s: dict[str, Any]) -> list[str]:
    names = s["reward_names"]
    lines = []
    header = [
        "algorithm",
        "seeds",
        *[f"final {n}" for n in names],
        "HV (p uniform)",
        "smoothness (mean)",
        "disagreement (λ/Σλ)",
        "param drift",
        "update cos",
        "stationarity",
        "bytes up",
        "wall s",
    ]
    rows = []
    for algo, a in s["algorithms"].items():
        smooth = [a[f"smoothness/{n}"]["mean"] for n in names]
        rows.append(
            [
                algo + (" (ref)" if algo == "centralized" else ""),
                str(a["n_seeds"]),
                *[_stat(a[f"final/{n}"]) for n in names],
                _stat(a["hv_uniform"]),
                _num(sum(smooth) / len(smooth)) if None not in smooth else "–",
                _stat(a["simplex_disagreement"]),
                _stat(a["mean_param_drift"]),
                _stat(a["mean_update_cosine"]),
                _stat(a["final_stationarity"]),
                "–"
                if a["bytes_up_per_client_round"]["mean"] is None
                else f"{a['bytes_up_per_client_round']['mean']:,.0f}",
                _num(a["wall_time_s"]["mean"]),
            ]
        )
    lines += _table(header, rows)
    for claim in s["claims"]:
        lines += [f"**{claim['claim']}: {claim['verdict']}**", ""]
        if claim["comparisons"]:
            lines += _table(COMPARISON_HEADER, [comparison_row(c) for c in claim["comparisons"]])
        else:
            lines += ["Not tested in this setting (no runs for it: see the design).", ""]
    if s["fedavg_ls_slopes"]:
        lines += [
            "fedavg_ls's slopes, for reference: "
            + "; ".join(
                f"{c['metric']} {_stat(c['firm'])} (p {_p(c['p_t'])})"
                for c in s["fedavg_ls_slopes"]
            ),
            "",
        ]
    return lines


# ------------------------------------------------------------------------------ plots
def plot_claims(analysis: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per claim: per setting and comparison, FIRM's mean difference over the baseline
    with its 95 % CI (right of 0 = FIRM better), filled where the Holm-adjusted test rejects."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, claim in enumerate(CLAIMS):
        rows = []
        for key, s in analysis["settings"].items():
            for c in next(x for x in s["claims"] if x["claim"] == claim)["comparisons"]:
                if c.get("exact") or c.get("mean_diff") is None:
                    continue
                scale = abs(c["firm"]["mean"]) if c.get("firm") and c["firm"]["mean"] else 1.0
                rows.append((f"{key} | {c['metric']} vs {c['baseline']}", c, scale))
        fig, ax = plt.subplots(figsize=(9, 0.32 * max(len(rows), 3) + 1.2))
        for y, (_, c, scale) in enumerate(rows):
            lo = c["ci_low"] if c["ci_low"] is not None else c["mean_diff"]
            hi = c["ci_high"] if c["ci_high"] is not None else c["mean_diff"]
            color = {"better": "tab:green", "worse": "tab:red"}.get(c["verdict"], "tab:gray")
            ax.plot([lo / scale, hi / scale], [y, y], color=color, lw=2)
            ax.plot(
                c["mean_diff"] / scale,
                y,
                "o",
                color=color,
                mfc=color if c["verdict"] in ("better", "worse") else "white",
            )
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("mean difference / |FIRM's mean| (95% CI); > 0: FIRM better")
        ax.set_title(f"claim {claim}", fontsize=10)
        if not rows:
            ax.text(0.5, 0.5, "no comparison tested", transform=ax.transAxes, ha="center")
        fig.tight_layout()
        path = out / f"claim_{i + 1}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    paths.append(_plot_room(analysis, out, plt))
    return paths


def _plot_room(analysis: dict[str, Any], out: Path, plt: Any) -> Path:
    """Box plots per setting: the gradient-norm ratios when logged, else firm beta = 0's
    ||lambda - p|| (both from the records' per client-round values)."""
    settings = analysis["settings"]
    ratios = {k: s.get("grad_norm_ratio_values") or [] for k, s in settings.items()}
    use_ratio = any(ratios.values())
    data = (
        ratios
        if use_ratio
        else {k: s.get("lambda_deviation_values") or [] for k, s in settings.items()}
    )
    fig, ax = plt.subplots(figsize=(9, 4))
    keys = [k for k, v in data.items() if v]
    if keys:
        ax.boxplot([data[k] for k in keys], tick_labels=keys, showfliers=False)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    else:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center")
    ax.set_ylabel("max/min per-objective gradient norm" if use_ratio else "firm β=0: ||λ_i - p||")
    ax.set_title("room for regularization per setting (per client-round)", fontsize=10)
    fig.tight_layout()
    path = out / ("grad_norm_ratios.png" if use_ratio else "lambda_deviation_beta0.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
