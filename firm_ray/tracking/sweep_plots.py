"""A sweep's plots: pareto.png (final rewards, the front, the reference point) and drift.png
(client disagreement and parameter drift vs FIRM beta), from the analysis alone.

M = 2: one panel with the front as a staircase closed down to the reference point (its area is
the hypervolume). M = 3: the three pairwise projections plus a 3-D view, colored by the
preference vector itself (RGB = (p_1, p_2, p_3)), since one weight does not identify a point of
the 2-simplex. M > 3: up to six pairwise projections colored by p_1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from firm_ray.config import ALGORITHMS
from firm_ray.core.pareto import pareto_front
from firm_ray.tracking.plots import new_figure, save_figure
from firm_ray.tracking.report import fmt

__all__ = ["plot_drift", "plot_pareto"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")


def _preference_colors():
    from matplotlib.colors import Normalize

    return "viridis", Normalize(vmin=0.0, vmax=1.0)


def _point_colors(
    included: list[dict[str, Any]], num_objectives: int, cmap: str, norm: Any
) -> np.ndarray:
    """RGBA per trial: for M = 3 the preference itself as RGB (a point of the 2-simplex: red =
    all weight on objective 1, ...), else the colormap at p_1; gray when unknown."""
    from matplotlib.colors import to_rgba

    out = []
    for row in included:
        pref = row.get("preference")
        if num_objectives == 3 and pref and len(pref) == 3:
            out.append((*(min(1.0, max(0.0, float(p))) for p in pref), 1.0))
        else:
            out.append(to_rgba(_cmap_color(cmap, norm, float(pref[0]) if pref else None)))
    return np.array(out, dtype=float).reshape(len(included), 4)


def _plot_3d(
    fig: Any,
    slot: Any,
    pareto: dict[str, Any],
    included: list[dict[str, Any]],
    points: np.ndarray,
    colors: np.ndarray,
    markers: dict[str, str],
    on_front: np.ndarray,
) -> None:
    """The M = 3 final points in a 3-D view, in the grid cell of ``slot`` (replaced), the
    trials on the 3-objective front ringed, the reference point marked."""
    spec = slot.get_subplotspec()
    slot.remove()
    ax = fig.add_subplot(spec, projection="3d")
    for label, marker in markers.items():
        sel = np.array([r["label"] == label for r in included])
        ax.scatter(*points[sel].T, c=colors[sel], marker=marker, s=50, edgecolors="black")
    if on_front.any():
        ax.scatter(*points[on_front].T, s=160, facecolors="none", edgecolors="crimson")
    if pareto["reference"] is not None:
        ax.scatter(*np.asarray(pareto["reference"])[:, None], marker="X", s=90, color="dimgray")
    names = pareto["reward_names"]
    ax.set_xlabel(names[0], fontsize=9)
    ax.set_ylabel(names[1], fontsize=9)
    ax.set_zlabel(names[2], fontsize=9)
    ax.set_title("3-D view (ringed: on the 3-objective front)", fontsize=10)


def _label_markers(pareto: dict[str, Any]) -> dict[str, str]:
    return {label: _MARKERS[k % len(_MARKERS)] for k, label in enumerate(pareto["by_label"] or {})}


def _empty_figure(path: Path, title: str, message: str) -> Path:
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_axis_off()
    fig.suptitle(title)
    save_figure(fig, path)
    return path


def _staircase(points: np.ndarray, reference: np.ndarray | None) -> tuple[list[float], list[float]]:
    """Corners of the 2-D Pareto front of ``points`` (maximized) as a staircase, closed down to
    the reference point when there is one: with the reference as the last corner, the polygon's
    area is the front's hypervolume (what the shaded region shows)."""
    front = pareto_front(points)  # ascending in x, hence descending in y
    xs: list[float] = []
    ys: list[float] = []
    for k, (x, y) in enumerate(front.tolist()):
        if k:  # down from the previous point's height to this one's, then across to it
            xs.append(xs[-1])
            ys.append(y)
        xs.append(x)
        ys.append(y)
    if reference is not None:
        xs, ys = [float(reference[0]), *xs, xs[-1]], [ys[0], *ys, float(reference[1])]
    return xs, ys


def _step_front(ax, pts: np.ndarray, ref: np.ndarray | None, label: str) -> None:
    xs, ys = _staircase(pts, ref)
    ax.plot(xs, ys, color="crimson", lw=1.5, alpha=0.8, label=label, zorder=1)
    if ref is not None:
        corner = ([*xs, float(ref[0])], [*ys, float(ref[1])])
        ax.fill(*corner, color="crimson", alpha=0.06, lw=0, zorder=0)


def plot_pareto(
    path: Path, pareto: dict[str, Any], included: list[dict[str, Any]], points: np.ndarray
) -> Path:
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    names = pareto["reward_names"]
    title = f"Sweep {pareto['sweep_name']}: final eval rewards"
    if not included or len(names) < 2:
        why = "no completed trials yet" if not included else "fewer than 2 objectives"
        return _empty_figure(path, title, f"{why}: nothing to plot")
    pairs = list(itertools.combinations(range(len(names)), 2))[:6]
    three = len(names) == 3  # 3 projections + a 3-D view on a 2 x 2 grid
    ncols = 2 if three else min(3, len(pairs))
    nrows = 2 if three else math.ceil(len(pairs) / ncols)
    fig = new_figure(3.0 + 5.0 * ncols, 2.4 + 4.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(pairs) :]:
        ax.set_axis_off()
    cmap, norm = _preference_colors()
    markers = _label_markers(pareto)
    ref = None if pareto["reference"] is None else np.asarray(pareto["reference"])
    front_ids = {f["trial_id"] for f in pareto["front"]}
    colors = _point_colors(included, len(names), cmap, norm)
    on_front = np.array([r["trial_id"] in front_ids for r in included])
    two_d = len(names) == 2
    for ax, (a, b) in zip(axes, pairs, strict=False):
        pts = points[:, [a, b]]
        _step_front(
            ax,
            pts,
            None if ref is None else ref[[a, b]],
            "Pareto front" if two_d else "front of this projection",
        )
        for label, marker in markers.items():
            sel = np.array([r["label"] == label for r in included])
            ax.scatter(
                pts[sel, 0],
                pts[sel, 1],
                c=colors[sel],
                marker=marker,
                s=70,
                edgecolors="black",
                linewidths=0.6,
                zorder=3,
            )
        if not two_d and on_front.any():
            ax.scatter(
                pts[on_front, 0],
                pts[on_front, 1],
                s=220,
                facecolors="none",
                edgecolors="crimson",
                linewidths=1.4,
                zorder=2,
            )
        if ref is not None:
            ax.scatter([ref[a]], [ref[b]], marker="X", s=110, color="dimgray", zorder=4)
        ax.set_xlabel(f"final eval reward: {names[a]}")
        ax.set_ylabel(f"final eval reward: {names[b]}")
        ax.grid(True, alpha=0.3)

    handles = [
        Line2D(
            [],
            [],
            ls="",
            marker=markers[label],
            color="lightgray",
            markeredgecolor="black",
            ms=8,
        )
        for label in markers
    ]
    texts = [
        f"{label} (n={g['n_trials']}, HV={fmt(g['hypervolume'])})"
        for label, g in pareto["by_label"].items()
    ]
    handles.append(Line2D([], [], color="crimson", lw=1.5))
    texts.append("Pareto front (all trials)" if two_d else "2-D front of each projection")
    if not two_d:
        handles.append(Line2D([], [], ls="", marker="o", ms=13, mfc="none", mec="crimson", mew=1.4))
        texts.append(f"on the {len(names)}-objective Pareto front")
    if ref is not None:
        handles.append(Line2D([], [], ls="", marker="X", ms=9, color="dimgray"))
        texts.append("reference point\n(min initial rewards)")
    if three:
        _plot_3d(fig, axes[3], pareto, included, points, colors, markers, on_front)
        for m, rgb in enumerate(("red", "green", "blue")):
            handles.append(Line2D([], [], ls="", marker="o", ms=8, color=rgb, mec="black"))
            texts.append(f"colour: preference as RGB,\n{rgb} = p_{names[m]}")
    fig.legend(
        handles,
        texts,
        loc="outside lower center",
        ncols=2 if two_d else 3,
        fontsize=9,
        title=f"trials (HV w.r.t. the reference point); all trials: HV = "
        f"{fmt(pareto['hypervolume'])}",
        title_fontsize=9,
    )
    if not three:  # M = 3 is coloured by the whole preference vector (legend)
        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap),
            ax=list(axes[: len(pairs)]),
            label=f"preference p_{names[0]}",
            shrink=0.9,
        )
    n_out = pareto["n_excluded"]
    note = f"; {n_out} other trial(s) left out (see pareto.json: excluded)" if n_out else ""
    fig.suptitle(f"{title}\n{len(included)} completed trials, rewards maximized{note}", fontsize=11)
    save_figure(fig, path)
    return path


def _mean_std(values: Iterable[float | None]) -> tuple[float, float, int] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def _seed_groups(
    rows: Iterable[dict[str, Any]], key: str
) -> dict[tuple[float, tuple[float, ...]], tuple[float, float, int]]:
    """(beta, preference) -> (mean, std, n) of ``key`` over the trials sharing them, i.e. over
    seeds: a drift plot point must not mix preferences, which change how far clients drift."""
    groups: dict[tuple[float, tuple[float, ...]], list[float | None]] = {}
    for r in rows:
        pref = tuple(round(float(p), 9) for p in r["preference"] or ())
        groups.setdefault((float(r["beta"]), pref), []).append(r[key])
    out = {}
    for group, values in sorted(groups.items()):
        stats = _mean_std(values)
        if stats is not None:
            out[group] = stats
    return out


def plot_drift(path: Path, pareto: dict[str, Any], included: list[dict[str, Any]]) -> Path:
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    title = f"Sweep {pareto['sweep_name']}: client drift vs FIRM β"
    if not included:
        return _empty_figure(path, title, "no completed trials yet: nothing to plot")
    names = pareto["reward_names"]
    cmap, norm = _preference_colors()
    firm = [r for r in included if r["algorithm"] == "firm" and r["beta"] is not None]
    betas = sorted({float(r["beta"]) for r in firm})
    positive = [b for b in betas if b > 0]
    fig = new_figure(12.0, 5.4)
    axes = fig.subplots(1, 2)
    panels = (
        ("mean_disagreement", "mean client disagreement\n$\\|\\lambda_i - \\bar\\lambda\\|_2$"),
        ("mean_param_drift", "mean parameter drift\n$\\|\\theta_i - \\theta^{t+1}\\|_2$"),
    )
    handles: dict[str, Any] = {}
    for ax, (key, ylabel) in zip(axes, panels, strict=True):
        for (beta, pref), (mean, std, n) in _seed_groups(firm, key).items():
            color = _cmap_color(cmap, norm, pref[0] if pref else None)
            ax.errorbar(
                [beta],
                [mean],
                yerr=[std] if n > 1 else None,
                fmt="o",
                color=color,
                mec="black",
                mew=0.5,
                ms=7,
                capsize=3,
                zorder=3,
            )
        line = [
            (b, s[0]) for b in betas if (s := _mean_std(r[key] for r in firm if r["beta"] == b))
        ]
        if line:
            (h,) = ax.plot(*zip(*line, strict=True), "k-", lw=1.5, alpha=0.7, zorder=2)
            handles["firm (mean over preferences and seeds)"] = h
        baselines = sorted(
            {str(r["algorithm"]) for r in included if r["algorithm"] != "firm"}, key=_algo_order
        )
        for k, algo in enumerate(baselines):  # every algorithm without beta: a level
            stats = _mean_std(r[key] for r in included if r["algorithm"] == algo)
            if stats is None:
                continue
            mean, std, n = stats
            color = f"C{k + 1}"
            h = ax.axhline(mean, color=color, ls="--", lw=1.5, zorder=1)
            if n > 1:
                ax.axhspan(mean - std, mean + std, color=color, alpha=0.1, zorder=0)
            handles[f"{algo} (no β; mean of {n}" + (" ± std)" if n > 1 else ")")] = h
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
        if betas:
            ax.set_xticks(betas, [f"{b:g}" for b in betas])
            lo, hi = betas[0], betas[-1]
            ax.set_xlim(lo - 0.3 * (min(positive) if positive else 1.0), hi * 1.6 if hi else 1.0)
        else:
            ax.set_xlim(0, 1)
        # Both are norms: start at zero, a little below it so a baseline at 0 stays visible.
        ax.set_ylim(-0.03 * max(ax.get_ylim()[1], 1e-12), None)
        ax.set_xlabel("FIRM β (symlog scale: β = 0 shown)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    dot = Line2D([], [], ls="", marker="o", color="lightgray", mec="black", mew=0.5, ms=7)
    fig.legend(
        [dot, *handles.values()],
        ["firm trials at one (β, p): mean ± std over seeds", *handles],
        loc="outside lower center",
        ncols=2,
        fontsize=9,
    )
    if firm:
        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap),
            ax=list(axes),
            label=f"preference p_{names[0]}" if names else "preference p_1",
            shrink=0.9,
        )
    fig.suptitle(f"{title}\ncompleted trials; each value a mean over rounds and sampled clients")
    save_figure(fig, path)
    return path


def _algo_order(algorithm: str) -> tuple[int, str]:
    """The registry's order (fedavg_ls, fmgda, centralized, jd), then any plug-in by name."""
    return (ALGORITHMS.index(algorithm) if algorithm in ALGORITHMS else len(ALGORITHMS), algorithm)


def _cmap_color(cmap: str, norm: Any, value: float | None) -> Any:
    """The colormap's color for a preference weight; gray when unknown."""
    from matplotlib import colormaps

    if value is None or not math.isfinite(value):
        return "gray"
    return colormaps[cmap](norm(value))
