"""The terminal report of a run: ``summary_table`` / ``print_report``.

``firm-ray run`` ends with ``print_report`` and ``firm-ray report RUN_DIR`` shows it again, from
summary.json (or a provisional summary rebuilt from metrics.jsonl). The run directory's schema
and the summary live in :mod:`firm_ray.tracking.summary`, the plots in
:mod:`firm_ray.tracking.plots`; this module re-exports their public names for its long-standing
callers (``from firm_ray.tracking.report import build_summary, make_plots, ...``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from firm_ray.tracking.jsonl import read_metrics
from firm_ray.tracking.plots import make_plots, new_figure, save_figure
from firm_ray.tracking.summary import (
    METRICS_KEYS,
    STATUSES,
    SUMMARY_KEYS,
    StepTotals,
    build_summary,
    fault_totals,
    finite_number,
    load_summary,
)

__all__ = [
    "METRICS_KEYS",
    "STATUSES",
    "SUMMARY_KEYS",
    "StepTotals",
    "build_summary",
    "fault_totals",
    "fmt",
    "load_summary",
    "make_plots",
    "new_figure",
    "print_report",
    "save_figure",
    "summary_table",
]

_CLIENT_TIMING = ("generate", "score", "forward", "backward", "solve", "step")
_SERVER_TIMING = ("aggregation", "evaluation", "orchestration_overhead")


def fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, "n/a" when unknown or non-finite."""
    number = finite_number(value)
    return "n/a" if number is None else f"{number:.{digits}g}"


def _percent(value: Any) -> str:
    number = finite_number(value)
    return "n/a" if number is None else f"{number:.0%}"


def _fmt_bytes(value: Any) -> str:
    number = finite_number(value)
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
    seconds = finite_number(value)
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def _reward_cell(initial: float | None, final: float | None) -> Text:
    if final is None:
        return Text(f"{fmt(initial)} -> n/a")
    if initial is None:
        return Text(f"n/a -> {fmt(final)}")
    delta = final - initial
    style = "green" if delta > 0 else "red" if delta < 0 else ""
    return Text.assemble(f"{fmt(initial)} -> {fmt(final)}  ", (f"({delta:+.4g})", style))


def _timing_totals(metrics: list[dict[str, Any]], keys: Sequence[str]) -> str:
    totals = {
        k: sum(finite_number((row.get("timing") or {}).get(k)) or 0.0 for row in metrics)
        for k in keys
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
                finite_number(initial[m]) if m < len(initial) else None,
                finite_number(final[m]) if m < len(final) else None,
            ),
        )
    table.add_row("hypervolume (ref = initial)", fmt(summary.get("hypervolume")))
    smooth = summary.get("smoothness")
    if smooth:
        table.add_row(
            "smoothness (std of changes)",
            ", ".join(f"{n} {fmt(s, 3)}" for n, s in zip(names, smooth, strict=False)),
        )
    table.add_row("mean disagreement", fmt(summary.get("mean_disagreement")))
    conflict = [
        (label, summary.get(key))
        for label, key in (
            ("mean update cosine", "mean_update_cosine"),
            ("mean update coherence", "mean_update_coherence"),
            ("final Pareto stationarity", "final_pareto_stationarity"),
        )
        if finite_number(summary.get(key)) is not None
    ]
    for label, value in conflict:  # absent in runs written before issue 15
        table.add_row(label, fmt(value))
    privacy = summary.get("privacy")  # issue 16; absent or null without DP
    if isinstance(privacy, dict):
        eps = privacy.get("epsilon")
        table.add_row(
            "privacy (DP-FedAvg)",
            f"epsilon {'inf' if eps is None else fmt(eps)} at delta {privacy.get('delta')}, "
            f"final clip {fmt(privacy.get('final_clip'))}, server clipped "
            f"{privacy.get('server_clipped_client_rounds', 0)} client-round(s)",
        )
    robust = summary.get("robustness")
    if isinstance(robust, dict):
        text = f"{robust.get('aggregator')}"
        if robust.get("attack"):
            text += (
                f"; attack {robust['attack']}: {robust.get('attacker_client_rounds')} malicious "
                f"client-round(s), {robust.get('attacker_updates_rejected')} rejected"
            )
            if robust.get("attacker_updates_selected") is not None:
                text += f", {robust['attacker_updates_selected']} selected"
        table.add_row("aggregation", text)
    if summary.get("final_kl") is not None:
        table.add_row("final KL to reference", fmt(summary.get("final_kl")))
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
