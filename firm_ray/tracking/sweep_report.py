"""A sweep's report: trials.csv / trials.json, pareto.json, pareto.png, drift.png, and the
terminal tables of ``firm-ray report SWEEP_DIR``.

The parts by role: :mod:`~firm_ray.tracking.sweep_trials` collects one row per trial,
:mod:`~firm_ray.tracking.sweep_analysis` computes the Pareto front and hypervolumes,
:mod:`~firm_ray.tracking.sweep_plots` draws; this module writes the files and prints. Its public
names (``collect_trials``, ``TRIALS_JSON``, ...) are re-exported for long-standing callers. The
layout of a sweep directory: docs/ARTIFACTS.md, "Sweep directories".
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from firm_ray.tracking.jsonl import to_jsonable, write_json_atomic, write_text_atomic
from firm_ray.tracking.report import fmt
from firm_ray.tracking.sweep_analysis import PARETO_KEYS, analyse_sweep
from firm_ray.tracking.sweep_plots import plot_drift, plot_pareto
from firm_ray.tracking.sweep_trials import (
    DRIFT_PNG,
    PARETO_JSON,
    PARETO_PNG,
    PER_OBJECTIVE,
    SWEEP_SPEC_FILE,
    TRIAL_COLUMNS,
    TRIALS_CSV,
    TRIALS_DIR,
    TRIALS_JSON,
    collect_trials,
    is_sweep_dir,
    trial_label,
)

__all__ = [
    "DRIFT_PNG",
    "PARETO_JSON",
    "PARETO_KEYS",
    "PARETO_PNG",
    "SWEEP_SPEC_FILE",
    "TRIALS_CSV",
    "TRIALS_DIR",
    "TRIALS_JSON",
    "TRIAL_COLUMNS",
    "build_sweep_report",
    "collect_trials",
    "is_sweep_dir",
    "print_sweep_report",
    "trial_label",
]

REPORT_FILES = (TRIALS_CSV, TRIALS_JSON, PARETO_JSON, PARETO_PNG, DRIFT_PNG)


def _write_rows(sweep_dir: Path, rows: list[dict[str, Any]], names: Sequence[str]) -> None:
    extra: list[str] = []  # per-objective columns: the sweep's names first, then any others
    for row_names in [names, *(r["reward_names"] or [] for r in rows)]:
        for prefix in PER_OBJECTIVE:
            for n in row_names:
                if f"{prefix}/{n}" not in extra:
                    extra.append(f"{prefix}/{n}")
    # Grouped by prefix (stable: objectives keep their order), right after "preference".
    extra.sort(key=lambda c: PER_OBJECTIVE.index(c.split("/", 1)[0]))
    pos = TRIAL_COLUMNS.index("preference") + 1
    columns = [*TRIAL_COLUMNS[:pos], *extra, *TRIAL_COLUMNS[pos:], "on_front"]
    full = [{c: row.get(c) for c in columns} for row in rows]
    write_json_atomic(sweep_dir / TRIALS_JSON, full)

    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, (list, dict)):
            return json.dumps(to_jsonable(value))
        return value

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in full:
        writer.writerow([cell(row[c]) for c in columns])
    write_text_atomic(sweep_dir / TRIALS_CSV, buf.getvalue())


def _report(sweep_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = collect_trials(sweep_dir)
    analysis = analyse_sweep(sweep_dir, rows, REPORT_FILES)
    pareto = analysis.pareto
    _write_rows(sweep_dir, rows, pareto["reward_names"])
    plot_pareto(sweep_dir / PARETO_PNG, pareto, analysis.included, analysis.points)
    plot_drift(sweep_dir / DRIFT_PNG, pareto, analysis.included)
    write_json_atomic(sweep_dir / PARETO_JSON, pareto)
    return rows, pareto


def build_sweep_report(sweep_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write trials.csv, trials.json, pareto.json, pareto.png and drift.png into the sweep
    directory (replacing earlier ones) and return pareto.json's content.

    A sweep directory without trials (or none completed yet) gets an empty report: empty
    front, null hypervolumes, plots that say so, so a caller can report at any time. A
    directory that is not a sweep directory raises FileNotFoundError.
    """
    return _report(Path(sweep_dir))[1]


# --------------------------------------------------------------------------- terminal report


def _fmt_pref(pref: Sequence[float] | None) -> str:
    return "n/a" if not pref else "/".join(f"{p:.2g}" for p in pref)


def print_sweep_report(
    sweep_dir: str | os.PathLike[str],
    console: Console | None = None,
    *,
    build: bool = True,
) -> None:
    """Build the report (unless ``build=False``: read the files already written) and print the
    trial table (★ = on the Pareto front), the hypervolume per label and the written files."""
    console = console or Console()
    if not console.is_terminal and console.width < 140:  # a log file or pipe: don't crop columns
        console = Console(file=console.file, width=140, quiet=console.quiet)
    sweep_dir = Path(sweep_dir)
    if build:
        rows, pareto = _report(sweep_dir)
    else:
        rows = json.loads((sweep_dir / TRIALS_JSON).read_text(encoding="utf-8"))
        pareto = json.loads((sweep_dir / PARETO_JSON).read_text(encoding="utf-8"))
    names = pareto["reward_names"]

    table = Table(
        title=f"firm_ray sweep: {pareto['sweep_name']} ({len(rows)} trials)", title_justify="left"
    )
    table.add_column("★", justify="center")
    table.add_column("trial", overflow="fold")
    table.add_column("label", no_wrap=True)
    table.add_column("p", no_wrap=True)
    table.add_column("seed", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("HV (run)", justify="right")
    table.add_column("disagreement", justify="right")
    # The update conflict compares across algorithms (disagreement is 0 for fedavg_ls, fmgda);
    # shown when some trial has it (runs before issue 15 do not).
    cosine = any(row.get("mean_update_cosine") is not None for row in rows)
    if cosine:
        table.add_column("update cos", justify="right")
    table.add_column("status")
    for row in rows:
        status = str(row["status"])
        style = "green" if status == "completed" else "yellow" if status == "incomplete" else "red"
        table.add_row(
            Text("★", style="bold yellow") if row.get("on_front") else "",
            str(row["trial_id"]),
            str(row["label"]),
            _fmt_pref(row["preference"]),
            "n/a" if row["seed"] is None else str(row["seed"]),
            *(fmt(row.get(f"final/{n}")) for n in names),
            fmt(row["hypervolume"]),
            fmt(row["mean_disagreement"]),
            *([fmt(row.get("mean_update_cosine"))] if cosine else []),
            Text(status, style=style),
        )
    console.print(table)

    ref = pareto["reference"]
    groups = Table(
        title=f"hypervolume per label (reference = min initial rewards "
        f"{'n/a' if ref is None else _fmt_pref(ref)})",
        title_justify="left",
    )
    groups.add_column("label", no_wrap=True)
    groups.add_column("trials", justify="right")
    groups.add_column("hypervolume", justify="right")
    groups.add_column("front", overflow="fold")
    for label, group in pareto["by_label"].items():
        groups.add_row(
            label, str(group["n_trials"]), fmt(group["hypervolume"]), ", ".join(group["front"])
        )
    groups.add_row(
        Text("all", style="bold"),
        str(pareto["n_included"]),
        fmt(pareto["hypervolume"]),
        ", ".join(f["trial_id"] for f in pareto["front"]),
    )
    console.print(groups)
    if pareto["excluded"]:
        reasons = Counter(e["reason"] for e in pareto["excluded"])
        console.print(
            Text(
                f"left out of the front: {pareto['n_excluded']} trial(s) ("
                + ", ".join(f"{n} {reason}" for reason, n in reasons.items())
                + ")",
                style="dim",
            ),
            soft_wrap=True,
        )
    files = [sweep_dir / f for f in pareto["files"] if (sweep_dir / f).exists()]
    console.print(Text("files: " + ", ".join(str(f) for f in files)), soft_wrap=True)
