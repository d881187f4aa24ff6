"""A run's summary, plots and terminal report, computed from its files alone.

``firm-ray run`` ends with ``print_report`` and ``firm-ray report RUN_DIR`` shows it again; both
(and the runtime, through ``build_summary``) share this one implementation, so a summary
rebuilt later from metrics.jsonl equals the one written at the end of the run.

Run directory schema (stable: add keys, never rename or remove; see docs/ARTIFACTS.md)
------------------------------------------------------------------------------------

``runs/<name>/``

- ``config.yaml``: the resolved config (``load_config`` of it gives the run's config back).
- ``metrics.jsonl``: one JSON object per round, in round order, one row per round (a resumed
  run drops the rows it re-runs). Keys:

  ``round`` int, 0-based.
  ``rewards`` list[float] per objective: mean reward of the GLOBAL policy on the held-out eval
  set after this round's aggregation; null when not evaluated this round.
  ``reward_names`` list[str], the objectives in config order.
  ``rewards_by_category`` {category: list[float]} or null.
  ``kl`` float or null: KL of the global policy to the reference on the eval set.
  ``client_lambdas`` {client_id as str: list[float]}: each sampled client's mean lambda over
  its local steps.
  ``disagreement`` float or null: mean_i ||lambda_i - mean_j lambda_j||_2.
  ``param_drift`` float: mean_i ||theta_i - theta^{t+1}||_2.
  ``bytes_up`` / ``bytes_down`` {client_id as str: int}: exact serialized payload per client.
  ``clients`` list[int]: the sampled clients.
  ``failed`` list of {"client": int, "reason": str}.
  ``train_rewards`` list[float]: mean over clients of the rewards seen in local training.
  ``timing`` {"generate", "score", "forward", "backward", "solve", "step": client seconds summed
  over clients; "aggregation", "evaluation", "round_wall", "orchestration_overhead": seconds}.
  ``local_steps`` / ``skipped_steps`` int: local steps the reporting clients attempted / skipped;
  ``skip_fraction`` float or null; ``skip_reasons`` list[str] (distinct, at most 3, no client
  text); ``truncated_fraction``, ``importance_weight`` float or null (means over clients);
  ``skip_rejected_clients`` int: clients left out because every local step was skipped.
  ``faults`` {"worker_restarts", "aggregator_restarts": int, "reruns": list[int], "events":
  list[str]}: actors replaced and clients re-run in this round (runtime/faults.py).

  Non-finite floats are written as null (strict JSON). A killed run may leave a truncated last
  line; readers skip it (``read_metrics``).
- ``summary.json``: ``algorithm``, ``seed``, ``reward_names``, ``initial_rewards`` (eval rewards
  of the initial policy), ``final_rewards`` (the last evaluated round's), ``final_round``,
  ``hypervolume`` (of the final reward vector w.r.t. the initial rewards as reference point; 0
  when it does not dominate them, null when either is unknown), ``smoothness`` (per objective:
  std of round-to-round changes over the evaluated rows), ``bytes_up_per_client_round``,
  ``bytes_down_per_client_round`` (means over client-rounds), ``mean_disagreement``,
  ``final_kl``, ``failed_client_rounds``, ``rounds_completed``, ``wall_time_s``, ``run_dir``,
  ``status`` ("completed" | "failed" | "stopped": ended early by a sweep's scheduler |
  "interrupted": SIGINT/SIGTERM, resumable),
  ``local_steps``, ``skipped_steps``, ``skip_fraction``, ``first_skip_reason``, ``faults``
  ({"worker_restarts", "aggregator_restarts", "client_reruns"}) (run totals).
- ``adapter/`` (PEFT dir), ``plots/*.png`` (``make_plots``), ``checkpoints/``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from firm_ray.core.metrics import smoothness
from firm_ray.core.pareto import hypervolume
from firm_ray.tracking.jsonl import CONFIG_FILE, SUMMARY_FILE, read_metrics, read_summary
from firm_ray.tracking.storage import atomic_write_bytes

__all__ = [
    "METRICS_KEYS",
    "STATUSES",
    "SUMMARY_KEYS",
    "StepTotals",
    "build_summary",
    "load_summary",
    "make_plots",
    "print_report",
    "summary_table",
]

METRICS_KEYS = (
    "round",
    "rewards",
    "reward_names",
    "rewards_by_category",
    "kl",
    "client_lambdas",
    "disagreement",
    "param_drift",
    "bytes_up",
    "bytes_down",
    "clients",
    "failed",
    "train_rewards",
    "timing",
    "local_steps",
    "skipped_steps",
    "skip_fraction",
    "skip_reasons",
    "truncated_fraction",
    "importance_weight",
    "skip_rejected_clients",
    "faults",
)
"""The keys of every metrics.jsonl row."""

SUMMARY_KEYS = (
    "algorithm",
    "seed",
    "reward_names",
    "initial_rewards",
    "final_rewards",
    "final_round",
    "hypervolume",
    "smoothness",
    "bytes_up_per_client_round",
    "bytes_down_per_client_round",
    "mean_disagreement",
    "final_kl",
    "failed_client_rounds",
    "rounds_completed",
    "wall_time_s",
    "run_dir",
    "status",
    "local_steps",
    "skipped_steps",
    "skip_fraction",
    "first_skip_reason",
    "faults",
)
"""The keys of summary.json."""

STATUSES = ("completed", "failed", "stopped", "interrupted")

FAULT_COUNTS = ("worker_restarts", "aggregator_restarts", "node_losses")

_CLIENT_TIMING = ("generate", "score", "forward", "backward", "solve", "step")
_SERVER_TIMING = ("aggregation", "evaluation", "orchestration_overhead")


# --------------------------------------------------------------------------- reading rows


def _vector(value: Any) -> list[float] | None:
    """A list of finite floats, or None when missing / null / partly null."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if any(v is None for v in value):
        return None
    out = [float(v) for v in value]
    return out if all(math.isfinite(v) for v in out) else None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _reward_names(metrics: Sequence[dict[str, Any]]) -> list[str]:
    for row in reversed(metrics):
        names = row.get("reward_names")
        if names:
            return [str(n) for n in names]
    return []


def _evaluated(metrics: Sequence[dict[str, Any]]) -> list[tuple[int, list[float]]]:
    """(round, rewards) of the rows where the global policy was evaluated."""
    out = []
    for row in metrics:
        rewards = _vector(row.get("rewards"))
        if rewards is not None:
            out.append((int(row["round"]), rewards))
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _per_client_values(metrics: Sequence[dict[str, Any]], key: str) -> list[float]:
    values: list[float] = []
    for row in metrics:
        per_client = row.get(key) or {}
        values.extend(float(v) for v in per_client.values() if _number(v) is not None)
    return values


# --------------------------------------------------------------------------- local steps


@dataclass(frozen=True)
class StepTotals:
    """Local steps attempted and skipped over a run, and the first reason a step was skipped.

    ``known`` is False for rows written before step counts existed (their totals are unknown,
    not zero). The round loop keeps these to enforce ``trainer.max_skip_fraction``.
    """

    local: int = 0
    skipped: int = 0
    first_reason: str | None = None
    known: bool = False

    def plus(self, row: Mapping[str, Any]) -> StepTotals:
        """These totals with one metrics row's (or one failed round's) counts added."""
        if _number(row.get("local_steps")) is None:
            return self
        reasons = row.get("skip_reasons") or []
        first = self.first_reason or (str(reasons[0]) if reasons else None)
        return StepTotals(
            local=self.local + int(row["local_steps"]),
            skipped=self.skipped + int(_number(row.get("skipped_steps")) or 0),
            first_reason=first,
            known=True,
        )

    @classmethod
    def of_rows(cls, metrics: Sequence[Mapping[str, Any]]) -> StepTotals:
        totals = cls()
        for row in metrics:
            totals = totals.plus(row)
        return totals

    @property
    def fraction(self) -> float | None:
        """skipped / attempted, None before any step."""
        return self.skipped / self.local if self.local > 0 else None


# --------------------------------------------------------------------------- summary


def build_summary(
    run_dir: str | os.PathLike[str],
    metrics: Sequence[dict[str, Any]],
    algorithm: str,
    seed: int,
    initial_rewards: Sequence[float] | None,
    wall_time_s: float,
    status: str,
    *,
    reward_names: Sequence[str] | None = None,
    step_totals: StepTotals | None = None,
    pending_faults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json's fields from the metrics rows (see the module docstring).

    ``reward_names`` is only needed when no row carries them (a run that failed before round 0).
    ``step_totals``: the run's own counts when they include steps no row holds (a round that
    failed, e.g. because every client skipped every step); default: summed over the rows.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    names = _reward_names(metrics) or [str(n) for n in (reward_names or [])]
    initial = _vector(initial_rewards)
    evaluated = _evaluated(metrics)
    final_round, final = evaluated[-1] if evaluated else (None, None)

    hv: float | None = None
    if initial is not None and final is not None and len(initial) == len(final):
        hv = hypervolume([final], initial)

    smooth = smoothness([r for _, r in evaluated]) if evaluated else None
    disagreements = [d for row in metrics if (d := _number(row.get("disagreement"))) is not None]
    final_kl = next(
        (kl for row in reversed(metrics) if (kl := _number(row.get("kl"))) is not None), None
    )
    steps = step_totals if step_totals is not None else StepTotals.of_rows(metrics)
    return {
        "algorithm": str(algorithm),
        "seed": int(seed),
        "reward_names": names,
        "initial_rewards": initial,
        "final_rewards": final,
        "final_round": final_round,
        "hypervolume": hv,
        "smoothness": smooth,
        "bytes_up_per_client_round": _mean(_per_client_values(metrics, "bytes_up")),
        "bytes_down_per_client_round": _mean(_per_client_values(metrics, "bytes_down")),
        "mean_disagreement": _mean(disagreements),
        "final_kl": final_kl,
        "failed_client_rounds": sum(len(row.get("failed") or []) for row in metrics),
        "rounds_completed": len(metrics),
        "wall_time_s": float(wall_time_s),
        "run_dir": str(Path(run_dir)),
        "status": status,
        "local_steps": steps.local if steps.known else None,
        "skipped_steps": steps.skipped if steps.known else None,
        "skip_fraction": steps.fraction if steps.known else None,
        "first_skip_reason": steps.first_reason,
        "faults": fault_totals(list(metrics), pending_faults),
    }


def fault_totals(
    metrics: Sequence[dict[str, Any]], pending: dict[str, Any] | None = None
) -> dict[str, int]:
    """Workers replaced, aggregators recreated, nodes lost and clients re-run over the run's rows
    (each row's ``faults``, written by runtime/faults.py; rows of older runs have none and count
    0), plus ``pending``: faults no row holds (the last round replayed while checkpointing)."""
    totals = dict.fromkeys((*FAULT_COUNTS, "client_reruns"), 0)
    for faults in [*(row.get("faults") or {} for row in metrics), pending or {}]:
        for key in FAULT_COUNTS:
            totals[key] += int(_number(faults.get(key)) or 0)
        totals["client_reruns"] += len(faults.get("reruns") or [])
    return totals


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def load_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """summary.json, or, for a run still going or killed before writing it, a provisional
    summary rebuilt from metrics.jsonl and config.yaml with status "incomplete"."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY_FILE).is_file():
        return read_summary(run_dir)
    metrics = read_metrics(run_dir)  # FileNotFoundError: not a run dir
    config = _read_config(run_dir)
    algorithm = (config.get("algorithm") or {}).get("name", "unknown")
    seed = (config.get("experiment") or {}).get("seed", 0)
    names = [r.get("name", f"r{i}") for i, r in enumerate(config.get("rewards") or [])]
    wall = sum(_number((row.get("timing") or {}).get("round_wall")) or 0.0 for row in metrics)
    summary = build_summary(
        run_dir, metrics, algorithm, seed, None, wall, "failed", reward_names=names
    )
    summary["status"] = "incomplete"
    return summary


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float):
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
    config = _read_config(run_dir)
    if "algorithm" not in config:
        return None
    pref = (config.get("algorithm") or {}).get("preference")
    if pref is None:
        return [1.0 / num_objectives] * num_objectives
    pref = _vector(pref)
    return pref if pref is not None and len(pref) == num_objectives else None


def _plot_rewards(run_dir: Path, metrics: list[dict[str, Any]], names: list[str]) -> Path:
    from matplotlib.lines import Line2D

    fig = _new_figure(8.5, 4.5)
    ax = fig.add_subplot()
    evaluated = _evaluated(metrics)
    train = [(int(row["round"]), t) for row in metrics if (t := _vector(row.get("train_rewards")))]
    initial = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        initial = _vector(read_summary(run_dir).get("initial_rewards"))
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
            int(c): v for c, lam in (row.get("client_lambdas") or {}).items() if (v := _vector(lam))
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

    fig = _new_figure(7.5, 4.0 if len(shown) == 1 else 1.0 + 2.2 * len(shown))
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
    disagreement = [_number(row.get("disagreement")) for row in metrics]
    drift = [_number(row.get("param_drift")) for row in metrics]
    failed = [int(row["round"]) for row in metrics if row.get("failed")]

    fig = _new_figure(7.0, 5.0)
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


def save_figure(fig: Any, path: Path, *, resume: str | os.PathLike[str] | None = None) -> Path:
    """Render ``fig`` as PNG in memory, then write it atomically: a full disk leaves the old
    plot (or none), never a 0-byte or truncated PNG, and raises a one-line StorageError."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getbuffer(), what=f"plot {path.name}", resume=resume)


def make_plots(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write plots/rewards.png, plots/lambdas.png, plots/disagreement.png, each atomically;
    returns the paths written (none when metrics.jsonl has no rows; no lambdas plot when no
    client reported any). A disk error raises StorageError."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if not metrics:
        return []
    names = _reward_names(metrics)
    if not names:
        width = max((len(v) for _, v in _evaluated(metrics)), default=0)
        names = [f"objective {m + 1}" for m in range(width)]
    paths = [_plot_rewards(run_dir, metrics, names)]
    lambdas = _plot_lambdas(run_dir, metrics, names)
    if lambdas is not None:
        paths.append(lambdas)
    paths.append(_plot_drift(run_dir, metrics))
    return paths


# --------------------------------------------------------------------------- terminal report


def _fmt(value: Any, digits: int = 4) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}g}"


def _percent(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.0%}"


def _fmt_bytes(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "n/a"
    size, unit = number, "B"
    for next_unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, next_unit
    exact = f"{number:,.0f} B"
    return exact if unit == "B" else f"{size:.1f} {unit} ({exact})"


def _fmt_duration(value: Any) -> str:
    seconds = _number(value)
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def _reward_cell(initial: float | None, final: float | None) -> Text:
    if final is None:
        return Text(f"{_fmt(initial)} -> n/a")
    if initial is None:
        return Text(f"n/a -> {_fmt(final)}")
    delta = final - initial
    style = "green" if delta > 0 else "red" if delta < 0 else ""
    return Text.assemble(f"{_fmt(initial)} -> {_fmt(final)}  ", (f"({delta:+.4g})", style))


def _timing_totals(metrics: list[dict[str, Any]], keys: Sequence[str]) -> str:
    totals = {
        k: sum(_number((row.get("timing") or {}).get(k)) or 0.0 for row in metrics) for k in keys
    }
    if not any(totals.values()):
        return ""
    return ", ".join(f"{k} {v:.3g} s" for k, v in totals.items())


def summary_table(run_dir: str | os.PathLike[str]) -> Table:
    """The run's summary as a two-column rich table (summary.json, or a provisional one)."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    try:
        metrics = read_metrics(run_dir)
    except FileNotFoundError:
        metrics = []
    names = summary.get("reward_names") or []
    initial = summary.get("initial_rewards") or [None] * len(names)
    final = summary.get("final_rewards") or [None] * len(names)
    status = str(summary.get("status", "unknown"))

    table = Table(title=f"firm_ray run: {run_dir.name}", show_header=False, title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("algorithm", str(summary.get("algorithm", "n/a")))
    table.add_row("seed", str(summary.get("seed", "n/a")))
    table.add_row("status", Text(status, style="green" if status == "completed" else "bold red"))
    table.add_row("rounds completed", str(summary.get("rounds_completed", "n/a")))
    final_round = summary.get("final_round")
    after = "" if final_round is None else f", final = eval after round {final_round}"
    table.add_row("rewards", Text(f"initial -> final (change){after}", style="dim"))
    for m, name in enumerate(names):
        table.add_row(
            f"  {name}",
            _reward_cell(
                _number(initial[m]) if m < len(initial) else None,
                _number(final[m]) if m < len(final) else None,
            ),
        )
    table.add_row("hypervolume (ref = initial)", _fmt(summary.get("hypervolume")))
    smooth = summary.get("smoothness")
    if smooth:
        table.add_row(
            "smoothness (std of changes)",
            ", ".join(f"{n} {_fmt(s, 3)}" for n, s in zip(names, smooth, strict=False)),
        )
    table.add_row("mean disagreement", _fmt(summary.get("mean_disagreement")))
    if summary.get("final_kl") is not None:
        table.add_row("final KL to reference", _fmt(summary.get("final_kl")))
    table.add_row("bytes up / client-round", _fmt_bytes(summary.get("bytes_up_per_client_round")))
    table.add_row(
        "bytes down / client-round", _fmt_bytes(summary.get("bytes_down_per_client_round"))
    )
    if summary.get("failed_client_rounds"):
        table.add_row(
            "failed client-rounds", Text(str(summary["failed_client_rounds"]), style="red")
        )
    if summary.get("skipped_steps"):
        table.add_row(
            "skipped local steps",
            Text(
                f"{summary['skipped_steps']}/{summary.get('local_steps')} "
                f"({_percent(summary.get('skip_fraction'))}); first reason: "
                f"{summary.get('first_skip_reason')}",
                style="red",
            ),
        )
    faults = summary.get("faults") or {}
    if any(faults.values()):
        table.add_row(
            "faults recovered",
            Text(
                f"{faults.get('worker_restarts', 0)} worker restart(s), "
                f"{faults.get('aggregator_restarts', 0)} aggregator restart(s), "
                f"{faults.get('node_losses', 0)} node(s) lost, "
                f"{faults.get('client_reruns', 0)} client re-run(s)",
                style="yellow",
            ),
        )
    table.add_row("wall time", _fmt_duration(summary.get("wall_time_s")))
    client_time = _timing_totals(metrics, _CLIENT_TIMING)
    if client_time:
        table.add_row("client time (summed)", client_time)
    server_time = _timing_totals(metrics, _SERVER_TIMING)
    if server_time:
        table.add_row("server time", server_time)
    table.add_row("run dir", Text(str(run_dir)))
    return table


def print_report(run_dir: str | os.PathLike[str], console: Console | None = None) -> None:
    """Print the summary table and where the plots are (what ``firm-ray report`` shows)."""
    console = console or Console()
    run_dir = Path(run_dir)
    console.print(summary_table(run_dir))
    plots = sorted((run_dir / "plots").glob("*.png"))
    if plots:
        console.print(Text("plots: " + ", ".join(str(p) for p in plots)), soft_wrap=True)
