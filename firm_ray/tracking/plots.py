"""A run's plots (``plots/*.png``), drawn from metrics.jsonl alone.

Matplotlib is imported inside the functions and used without pyplot (no global state: safe in
worker threads, and ``import firm_ray.tracking`` stays light). Every PNG is rendered in memory
and written atomically (``save_figure``), so a full disk never leaves a truncated plot.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from firm_ray.tracking.jsonl import read_metrics, read_summary
from firm_ray.tracking.storage import atomic_write_bytes
from firm_ray.tracking.summary import (
    evaluated_rounds,
    finite_number,
    finite_vector,
    read_config_yaml,
    row_reward_names,
)

__all__ = ["make_plots", "new_figure", "save_figure"]


def new_figure(width: float, height: float) -> Any:
    """An Agg-backed Figure, without pyplot: no global state, safe in worker threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _integer_rounds(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _preference(run_dir: Path, num_objectives: int) -> list[float] | None:
    """The run's preference p from config.yaml (uniform when unset), None when unknown."""
    config = read_config_yaml(run_dir)
    if "algorithm" not in config:
        return None
    pref = (config.get("algorithm") or {}).get("preference")
    if pref is None:
        return [1.0 / num_objectives] * num_objectives
    pref = finite_vector(pref)
    return pref if pref is not None and len(pref) == num_objectives else None


def _plot_rewards(run_dir: Path, metrics: list[dict[str, Any]], names: list[str]) -> Path:
    from matplotlib.lines import Line2D

    fig = new_figure(8.5, 4.5)
    ax = fig.add_subplot()
    evaluated = evaluated_rounds(metrics)
    train = [
        (int(row["round"]), t) for row in metrics if (t := finite_vector(row.get("train_rewards")))
    ]
    initial = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        initial = finite_vector(read_summary(run_dir).get("initial_rewards"))
    for m, name in enumerate(names):
        color = f"C{m % 10}"
        if evaluated:
            x = [r for r, _ in evaluated]
            ax.plot(x, [v[m] for _, v in evaluated], "o-", color=color, label=f"{name} (eval)")
        if train:
            x = [r for r, _ in train]
            y = [v[m] if m < len(v) else np.nan for _, v in train]
            ax.plot(x, y, "--", color=color, alpha=0.7, label=f"{name} (train)")
        if initial is not None and m < len(initial):
            ax.axhline(initial[m], color=color, ls=":", lw=1.2)
    handles, labels = ax.get_legend_handles_labels()
    if initial is not None:
        handles.append(Line2D([], [], color="gray", ls=":", lw=1.2))
        labels.append("initial policy (eval)")
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside right upper",
            fontsize=9,
            title="eval: global policy, held-out\nprompts; train: clients' samples",
            title_fontsize=8,
        )
    ax.set_title("Mean reward per objective")
    ax.set_xlabel("round")
    ax.set_ylabel("mean reward")
    _integer_rounds(ax)
    path = run_dir / "plots" / "rewards.png"
    return save_figure(fig, path, resume=run_dir)


def _client_colors(max_client: int):
    """Distinct colors per client id when there are few clients, a continuous map otherwise."""
    from matplotlib.colors import ListedColormap

    if max_client < 10:
        tab10 = [f"C{k}" for k in range(max_client + 1)]
        return ListedColormap(tab10), -0.5, max_client + 0.5
    return "viridis", 0, max_client


def _plot_lambdas(run_dir: Path, metrics: list[dict[str, Any]], names: list[str]) -> Path | None:
    from matplotlib.lines import Line2D

    points: list[tuple[float, int, list[float]]] = []  # (x with jitter, client, lambdas)
    means: list[tuple[int, list[float]]] = []
    for row in metrics:
        lambdas = {
            int(c): v
            for c, lam in (row.get("client_lambdas") or {}).items()
            if (v := finite_vector(lam))
        }
        if not lambdas:
            continue
        rnd = int(row["round"])
        n = len(lambdas)
        for k, client in enumerate(sorted(lambdas)):
            # Spread a round's clients sideways so overlapping dots stay visible.
            offset = 0.0 if n == 1 else (k / (n - 1) - 0.5) * 0.4
            points.append((rnd + offset, client, lambdas[client]))
        means.append((rnd, np.mean(list(lambdas.values()), axis=0).tolist()))
    if not points:
        return None
    num_obj = len(names) or len(points[0][2])
    names = names or [f"objective {m + 1}" for m in range(num_obj)]
    shown = [0] if num_obj == 2 else list(range(num_obj))
    pref = _preference(run_dir, num_obj)
    clients = [c for _, c, _ in points]
    cmap, vmin, vmax = _client_colors(max(clients))

    fig = new_figure(7.5, 4.0 if len(shown) == 1 else 1.0 + 2.2 * len(shown))
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    scatter = None
    for ax, m in zip(axes, shown, strict=True):
        scatter = ax.scatter(
            [x for x, _, _ in points],
            [lam[m] for _, _, lam in points],
            c=clients,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            s=22,
            alpha=0.8,
        )
        ax.plot([r for r, _ in means], [v[m] for _, v in means], "k-", lw=1.5, label="mean")
        if pref is not None:
            ax.axhline(pref[m], color="gray", ls="--", lw=1, label=f"preference $p_{m + 1}$")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(f"$\\lambda_{m + 1}$ ({names[m]})")
        _integer_rounds(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    dot = Line2D([], [], ls="", marker="o", color="gray", alpha=0.8)
    axes[0].legend([dot, *handles], ["sampled client", *labels], loc="best", fontsize=8)
    axes[-1].set_xlabel("round")
    if len(shown) == 1:
        axes[0].set_title(
            f"Client weight $\\lambda_1$ on objective 1 ({names[0]}); "
            f"$\\lambda_2$ = 1 - $\\lambda_1$ ({names[1]})",
            fontsize=10,
        )
    else:
        fig.suptitle("Client weights $\\lambda_m$ per objective (mean over local steps)")
    if scatter is not None:
        from matplotlib.ticker import MaxNLocator

        bar = fig.colorbar(scatter, ax=list(axes), label="client id", shrink=0.9)
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    path = run_dir / "plots" / "lambdas.png"
    return save_figure(fig, path, resume=run_dir)


def _plot_drift(run_dir: Path, metrics: list[dict[str, Any]]) -> Path:
    rounds = [int(row["round"]) for row in metrics]
    disagreement = [finite_number(row.get("disagreement")) for row in metrics]
    drift = [finite_number(row.get("param_drift")) for row in metrics]
    failed = [int(row["round"]) for row in metrics if row.get("failed")]

    fig = new_figure(7.0, 5.0)
    ax_d, ax_p = fig.subplots(2, 1, sharex=True)
    series = (
        (ax_d, disagreement, "C0", "disagreement\n$\\|\\lambda_i - \\bar\\lambda\\|_2$"),
        (ax_p, drift, "C1", "parameter drift\n$\\|\\theta_i - \\theta^{t+1}\\|_2$"),
    )
    for ax, values, color, ylabel in series:
        y = [np.nan if v is None else v for v in values]
        ax.plot(rounds, y, "o-", color=color, ms=4)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)  # both are norms: show how far from zero they are
        _integer_rounds(ax)
        for k, rnd in enumerate(failed):
            ax.axvline(
                rnd,
                color="red",
                alpha=0.25,
                lw=3,
                label="round with failed clients" if k == 0 else None,
            )
    if failed:
        ax_d.legend(loc="best", fontsize=8)
    ax_p.set_xlabel("round")
    fig.suptitle("Client drift per round (mean over sampled clients)")
    path = run_dir / "plots" / "disagreement.png"
    return save_figure(fig, path, resume=run_dir)


def _plot_conflict(run_dir: Path, metrics: list[dict[str, Any]]) -> Path | None:
    """plots/conflict.png: the update-conflict metrics per round and the Pareto stationarity at
    every evaluation; None (no file) for runs without them (written before issue 15). These
    compare across algorithms, unlike disagreement (0 by construction for fedavg_ls, fmgda)."""
    panels = (
        ("update_cosine", "update cosine\nmean pairwise cos(Δ_i, Δ_j)", (-1.05, 1.05)),
        (
            "update_coherence",
            "update coherence\n$\\|\\bar\\Delta\\| / \\overline{\\|\\Delta_i\\|}$",
            (0, 1.05),
        ),
        (
            "pareto_stationarity",
            "Pareto stationarity\n$\\|\\sum_m \\lambda^*_m g_m\\|$ (eval)",
            None,
        ),
    )
    series = {
        key: [
            (int(row["round"]), v)
            for row in metrics
            if (v := finite_number(row.get(key))) is not None
        ]
        for key, _, _ in panels
    }
    if not any(series.values()):
        return None
    fig = new_figure(7.0, 7.0)
    axes = fig.subplots(3, 1, sharex=True)
    for ax, (key, ylabel, ylim) in zip(axes, panels, strict=True):
        points = series[key]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", ms=4, color="C2")
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        if ylim is not None:
            ax.set_ylim(*ylim)
        else:
            ax.set_ylim(bottom=0)  # a norm: how far from stationary
        if key == "update_cosine":
            ax.axhline(0.0, color="gray", lw=0.8, ls=":")
        ax.set_ylabel(ylabel, fontsize=9)
        _integer_rounds(ax)
    axes[-1].set_xlabel("round")
    fig.suptitle(
        "Client-update conflict (accepted clients' $\\Delta_i = \\theta_i - \\theta^t$) and\n"
        "Pareto stationarity of the global model (lower = closer to Pareto-stationary)",
        fontsize=10,
    )
    path = run_dir / "plots" / "conflict.png"
    return save_figure(fig, path, resume=run_dir)


def save_figure(fig: Any, path: Path, *, resume: str | os.PathLike[str] | None = None) -> Path:
    """Render ``fig`` as PNG in memory, then write it atomically: a full disk leaves the old
    plot (or none), never a 0-byte or truncated PNG, and raises a one-line StorageError."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getbuffer(), what=f"plot {path.name}", resume=resume)


def make_plots(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write plots/rewards.png, plots/lambdas.png, plots/disagreement.png, plots/conflict.png,
    each atomically; returns the paths written (none when metrics.jsonl has no rows; no lambdas
    plot when no client reported any; no conflict plot for rows without its metrics). A disk
    error raises StorageError."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if not metrics:
        return []
    names = row_reward_names(metrics)
    if not names:
        width = max((len(v) for _, v in evaluated_rounds(metrics)), default=0)
        names = [f"objective {m + 1}" for m in range(width)]
    paths = [_plot_rewards(run_dir, metrics, names)]
    lambdas = _plot_lambdas(run_dir, metrics, names)
    if lambdas is not None:
        paths.append(lambdas)
    paths.append(_plot_drift(run_dir, metrics))
    conflict = _plot_conflict(run_dir, metrics)
    if conflict is not None:
        paths.append(conflict)
    return paths
