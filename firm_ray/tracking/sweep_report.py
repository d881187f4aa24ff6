"""A sweep's report: one table row per trial, the Pareto front of the final rewards, plots.

A sweep (``firm-ray sweep``) runs many federated runs that differ in preference, beta,
algorithm or seed. Each trial writes an ordinary run directory, so this module reads nothing but
those files (no Ray, no Tune state) and works on a sweep that is still running, crashed half-way
or was copied elsewhere; calling it again overwrites the report with a fresh one.

Sweep directory layout (see docs/ARTIFACTS.md, "Sweep directories")
------------------------------------------------------------------

``sweeps/<name>/``

- ``sweep.yaml``: the sweep spec as given (top-level key ``sweep:`` with ``name``, ...).
- ``trials/<trial_id>/``: one run directory per trial (``config.yaml``, ``metrics.jsonl``,
  ``summary.json``; any of them may be missing).
- ``tune/``: Ray Tune's experiment state; ignored here.

Written by ``build_sweep_report`` (atomically, replaced on every call):

- ``trials.csv`` / ``trials.json``: one row per trial directory (columns: ``TRIAL_COLUMNS`` plus
  ``final/<name>``, ``initial/<name>``, ``smoothness/<name>``, ``preference/<name>`` per
  objective, and ``on_front``).
- ``pareto.json``: the Pareto analysis over the completed trials (keys: ``PARETO_KEYS``).
- ``pareto.png`` and ``drift.png``.

Only trials with status ``completed``, finite final rewards and the sweep's objectives enter the
front and the hypervolumes; pareto.json lists the others with the reason.

Reference point: the elementwise minimum of those trials' ``initial_rewards``. Every trial of one
world and seed starts from the same initial policy, so its initial eval rewards are the natural
"no progress" corner and a hypervolume measures improvement over it; with several seeds (or
worlds) the initial rewards differ slightly and their minimum is the conservative common
reference, one point against which all trials are compared.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from firm_ray.config import ALGORITHMS, load_config
from firm_ray.core.pareto import hypervolume, pareto_front, pareto_mask
from firm_ray.tracking.jsonl import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    read_metrics,
    read_summary,
    to_jsonable,
    write_json_atomic,
    write_text_atomic,
)
from firm_ray.tracking.report import (
    _fmt,
    _new_figure,
    _number,
    _vector,
    load_summary,
    save_figure,
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

SWEEP_SPEC_FILE = "sweep.yaml"
TRIALS_DIR = "trials"
TRIALS_CSV = "trials.csv"
TRIALS_JSON = "trials.json"
PARETO_JSON = "pareto.json"
PARETO_PNG = "pareto.png"
DRIFT_PNG = "drift.png"

TRIAL_COLUMNS = (
    "trial_id",
    "label",
    "status",
    "algorithm",
    "beta",
    "preference",
    "seed",
    "mu",
    "learning_rate",
    "reward_names",
    "hypervolume",
    "mean_disagreement",
    "mean_param_drift",
    "final_kl",
    "bytes_up_per_client_round",
    "rounds_completed",
    "wall_time_s",
    "run_dir",
    "error",
)
"""The fixed columns of a trial row; the per-objective ones follow the sweep's reward names."""

_PER_OBJECTIVE = ("preference", "final", "initial", "smoothness")

PARETO_KEYS = (
    "sweep_name",
    "sweep_dir",
    "reward_names",
    "reference",
    "reference_rule",
    "n_trials",
    "n_included",
    "n_excluded",
    "excluded",
    "hypervolume",
    "front",
    "by_label",
    "by_algorithm",
    "files",
)
"""The keys of pareto.json."""

_REFERENCE_RULE = (
    "elementwise minimum of the included trials' initial_rewards (the initial policy's eval "
    "rewards; identical for every trial of one world and seed, and the conservative common "
    "corner when seeds differ)"
)
_NO_BETA = ("fedavg_ls", "fmgda", "centralized")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")


# --------------------------------------------------------------------------- trials


def is_sweep_dir(path: str | os.PathLike[str]) -> bool:
    """True for a directory written by ``firm-ray sweep`` (has sweep.yaml or trials/), so the
    CLI can tell ``firm-ray report SWEEP_DIR`` from ``firm-ray report RUN_DIR``."""
    path = Path(path)
    return (path / SWEEP_SPEC_FILE).is_file() or (path / TRIALS_DIR).is_dir()


def trial_label(algorithm: str | None, beta: float | None) -> str:
    """How a trial is grouped in plots and tables: ``"firm β=1"`` (beta only matters for FIRM),
    else the algorithm name."""
    if algorithm == "firm" and beta is not None:
        return f"firm β={beta:g}"
    return str(algorithm or "unknown")


def _natural_key(name: str) -> list[Any]:
    """Sort trial_2 before trial_10 (str and int parts alternate, so keys always compare)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _empty_row(trial_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS)
    row.update(trial_id=trial_dir.name, run_dir=str(trial_dir), status="not started")
    return row


def _config_fields(trial_dir: Path) -> dict[str, Any]:
    """The trial's settings from config.yaml; a config that no longer validates (written by an
    older version, edited by hand) is read as plain YAML, best effort."""
    path = trial_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        cfg = load_config(path)
    except ValueError:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a mapping") from None
        algo = data.get("algorithm") or {}
        rewards = data.get("rewards") or []
        names = [str(r.get("name", f"r{i}")) for i, r in enumerate(rewards) if isinstance(r, dict)]
        pref = _vector(algo.get("preference"))
        if pref is None and names and algo.get("preference") is None:
            pref = [1.0 / len(names)] * len(names)
        return {
            "algorithm": algo.get("name"),
            "beta": _number(algo.get("beta")),
            "preference": pref,
            "mu": _number(algo.get("mu")),
            "seed": (data.get("experiment") or {}).get("seed"),
            "learning_rate": _number((data.get("trainer") or {}).get("learning_rate")),
            "reward_names": names or None,
        }
    return {
        "algorithm": cfg.algorithm.name,
        "beta": cfg.algorithm.beta,
        "preference": cfg.algorithm.preference_vector(cfg.num_objectives),
        "mu": cfg.algorithm.mu,
        "seed": cfg.experiment.seed,
        "learning_rate": cfg.trainer.learning_rate,
        "reward_names": [r.name for r in cfg.rewards],
    }


def _quiet_metrics(trial_dir: Path) -> list[dict[str, Any]] | None:
    """metrics.jsonl rows, None without the file. A running trial's half-written last line is
    normal here, so read_metrics' warning about it is silenced."""
    if not (trial_dir / METRICS_FILE).is_file():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return read_metrics(trial_dir)


def _trial_row(trial_dir: Path) -> dict[str, Any]:
    row = _empty_row(trial_dir)
    errors: list[str] = []
    try:
        fields = _config_fields(trial_dir)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        fields = {}
        errors.append(f"config.yaml: {exc}")

    metrics: list[dict[str, Any]] | None = None
    try:
        metrics = _quiet_metrics(trial_dir)
    except (OSError, ValueError) as exc:
        errors.append(str(exc))

    summary: dict[str, Any] = {}
    if (trial_dir / SUMMARY_FILE).is_file():
        try:
            summary = read_summary(trial_dir)
            row["status"] = str(summary.get("status") or "unknown")
        except (OSError, ValueError) as exc:
            row["status"] = "unreadable"
            errors.append(str(exc))
    elif metrics:
        row["status"] = "incomplete"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            summary = load_summary(trial_dir)  # provisional, from metrics.jsonl
        summary.pop("status", None)

    names = summary.get("reward_names") or fields.get("reward_names") or []
    names = [str(n) for n in names]
    algorithm = fields.get("algorithm") or summary.get("algorithm")
    beta = fields.get("beta") if algorithm == "firm" else None
    seed = fields.get("seed", summary.get("seed"))
    row.update(
        algorithm=algorithm,
        beta=beta,
        label=trial_label(algorithm, beta),
        preference=fields.get("preference"),
        seed=None if seed is None else int(seed),
        mu=fields.get("mu"),
        learning_rate=fields.get("learning_rate"),
        reward_names=names or None,
        hypervolume=_number(summary.get("hypervolume")),
        mean_disagreement=_number(summary.get("mean_disagreement")),
        final_kl=_number(summary.get("final_kl")),
        bytes_up_per_client_round=_number(summary.get("bytes_up_per_client_round")),
        rounds_completed=summary.get("rounds_completed", len(metrics) if metrics else 0),
        wall_time_s=_number(summary.get("wall_time_s")),
    )
    drifts = [d for r in metrics or [] if (d := _number(r.get("param_drift"))) is not None]
    row["mean_param_drift"] = float(np.mean(drifts)) if drifts else None
    for prefix, values in (
        ("preference", fields.get("preference")),
        ("final", summary.get("final_rewards")),
        ("initial", summary.get("initial_rewards")),
        ("smoothness", summary.get("smoothness")),
    ):
        values = list(values) if isinstance(values, (list, tuple)) else []
        for m, name in enumerate(names):
            row[f"{prefix}/{name}"] = _number(values[m]) if m < len(values) else None
    row["error"] = "; ".join(errors) or None
    return row


def collect_trials(sweep_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One flat row per directory under ``trials/``, sorted by trial id (naturally: t2 < t10).

    Every trial appears, however broken: status is the summary's (``completed``/``failed``),
    ``incomplete`` (metrics rows but no summary yet: running or killed), ``not started``
    (neither) or ``unreadable`` (a damaged file; ``error`` says which); unknown values are None.
    ``beta`` is set only for FIRM, the one algorithm it affects. Raises FileNotFoundError when
    ``sweep_dir`` is not a sweep directory.
    """
    sweep_dir = Path(sweep_dir)
    if not is_sweep_dir(sweep_dir):
        raise FileNotFoundError(
            f"{sweep_dir}: not a sweep directory (no {SWEEP_SPEC_FILE} and no {TRIALS_DIR}/)"
        )
    trials_dir = sweep_dir / TRIALS_DIR
    if not trials_dir.is_dir():
        return []
    dirs = [p for p in trials_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    rows = []
    for trial_dir in sorted(dirs, key=lambda p: _natural_key(p.name)):
        try:
            rows.append(_trial_row(trial_dir))
        except Exception as exc:  # one bad trial never takes the report down
            row = _empty_row(trial_dir)
            row.update(status="unreadable", label="unknown", error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- Pareto analysis


def _sweep_name(sweep_dir: Path) -> str:
    try:
        spec = yaml.safe_load((sweep_dir / SWEEP_SPEC_FILE).read_text(encoding="utf-8"))
        name = (spec.get("sweep") or {}).get("name")
    except (OSError, AttributeError, yaml.YAMLError):
        name = None
    return str(name) if name else sweep_dir.resolve().name


def _sweep_reward_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The objectives most completed trials share (a sweep normally has one set)."""
    counts = Counter(
        tuple(r["reward_names"]) for r in rows if r["reward_names"] and r["status"] == "completed"
    )
    if not counts:
        counts = Counter(tuple(r["reward_names"]) for r in rows if r["reward_names"])
    return list(counts.most_common(1)[0][0]) if counts else []


def _objective_vector(row: dict[str, Any], prefix: str, names: Sequence[str]) -> list[float] | None:
    values = [row.get(f"{prefix}/{n}") for n in names]
    return _vector(values) if names else None


def _exclusion(row: dict[str, Any], names: Sequence[str]) -> str | None:
    """Why a trial stays out of the front, or None when it enters it."""
    if row["status"] != "completed":
        return f"status {row['status']}"
    if row["reward_names"] and list(row["reward_names"]) != list(names):
        return f"objectives {row['reward_names']} differ from the sweep's {list(names)}"
    if _objective_vector(row, "final", names) is None:
        return "final_rewards missing or non-finite"
    return None


def _group_key(row: dict[str, Any]) -> tuple[int, float, str]:
    algo = row["algorithm"]
    order = ALGORITHMS.index(algo) if algo in ALGORITHMS else len(ALGORITHMS)
    return (order, -1.0 if row["beta"] is None else float(row["beta"]), row["label"])


def _analyse(
    included: Sequence[dict[str, Any]],
    points: np.ndarray,
    reference: np.ndarray | None,
    key: Callable[[dict[str, Any]], str],
) -> dict[str, dict[str, Any]]:
    """Per group: trials, hypervolume of their final points (common reference), their front."""
    groups: dict[str, list[int]] = {}
    for i, row in sorted(enumerate(included), key=lambda ir: _group_key(ir[1])):
        groups.setdefault(key(row), []).append(i)
    out = {}
    for name, idx in groups.items():
        pts = points[idx]
        mask = pareto_mask(pts)
        out[name] = {
            "n_trials": len(idx),
            "hypervolume": None if reference is None else hypervolume(pts, reference),
            "front": [included[i]["trial_id"] for i, on in zip(idx, mask, strict=True) if on],
            "trial_ids": [included[i]["trial_id"] for i in idx],
        }
    return out


def _write_rows(sweep_dir: Path, rows: list[dict[str, Any]], names: Sequence[str]) -> None:
    extra: list[str] = []  # per-objective columns: the sweep's names first, then any others
    for row_names in [names, *(r["reward_names"] or [] for r in rows)]:
        for prefix in _PER_OBJECTIVE:
            for n in row_names:
                if f"{prefix}/{n}" not in extra:
                    extra.append(f"{prefix}/{n}")
    # Grouped by prefix (stable: objectives keep their order), right after "preference".
    extra.sort(key=lambda c: _PER_OBJECTIVE.index(c.split("/", 1)[0]))
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
    names = _sweep_reward_names(rows)
    included, excluded = [], []
    for row in rows:
        reason = _exclusion(row, names)
        if reason is None:
            included.append(row)
        else:
            excluded.append(
                {"trial_id": row["trial_id"], "status": row["status"], "reason": reason}
            )
    points = np.array([_objective_vector(r, "final", names) for r in included], dtype=np.float64)
    points = points.reshape(len(included), len(names))
    initials = [v for r in included if (v := _objective_vector(r, "initial", names)) is not None]
    reference = np.min(initials, axis=0) if initials else None

    mask = pareto_mask(points) if len(included) else np.zeros(0, dtype=bool)
    on_front = {r["trial_id"] for r, on in zip(included, mask, strict=True) if on}
    included_ids = {id(r) for r in included}
    for row in rows:
        row["on_front"] = row["trial_id"] in on_front if id(row) in included_ids else None
    front = sorted(
        (
            {
                "trial_id": r["trial_id"],
                "label": r["label"],
                "algorithm": r["algorithm"],
                "seed": r["seed"],
                "preference": r["preference"],
                "point": points[i].tolist(),
            }
            for i, r in enumerate(included)
            if r["trial_id"] in on_front
        ),
        key=lambda f: tuple(f["point"]),
    )
    overall = None
    if reference is not None and len(included):
        overall = hypervolume(points, reference)
    pareto = {
        "sweep_name": _sweep_name(sweep_dir),
        "sweep_dir": str(sweep_dir),
        "reward_names": names,
        "reference": None if reference is None else reference.tolist(),
        "reference_rule": _REFERENCE_RULE
        + ("" if initials else "; null: no included trial reported initial_rewards"),
        "n_trials": len(rows),
        "n_included": len(included),
        "n_excluded": len(excluded),
        "excluded": excluded,
        "hypervolume": overall,
        "front": front,
        "by_label": _analyse(included, points, reference, lambda r: r["label"]),
        "by_algorithm": _analyse(included, points, reference, lambda r: str(r["algorithm"])),
        "files": [TRIALS_CSV, TRIALS_JSON, PARETO_JSON, PARETO_PNG, DRIFT_PNG],
    }
    _write_rows(sweep_dir, rows, names)
    _plot_pareto(sweep_dir / PARETO_PNG, pareto, included, points)
    _plot_drift(sweep_dir / DRIFT_PNG, pareto, included)
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


# --------------------------------------------------------------------------- plots


def _preference_colors():
    from matplotlib.colors import Normalize

    return "viridis", Normalize(vmin=0.0, vmax=1.0)


def _p1(row: dict[str, Any]) -> float:
    pref = row.get("preference")
    return float(pref[0]) if pref else float("nan")


def _label_markers(pareto: dict[str, Any]) -> dict[str, str]:
    return {label: _MARKERS[k % len(_MARKERS)] for k, label in enumerate(pareto["by_label"] or {})}


def _empty_figure(path: Path, title: str, message: str) -> Path:
    fig = _new_figure(7.0, 4.0)
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


def _plot_pareto(
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
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig = _new_figure(3.0 + 5.0 * ncols, 2.4 + 4.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(pairs) :]:
        ax.set_axis_off()
    cmap, norm = _preference_colors()
    markers = _label_markers(pareto)
    ref = None if pareto["reference"] is None else np.asarray(pareto["reference"])
    front_ids = {f["trial_id"] for f in pareto["front"]}
    p1 = np.array([_p1(r) for r in included])
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
                c=p1[sel],
                cmap=cmap,
                norm=norm,
                marker=marker,
                s=70,
                edgecolors="black",
                linewidths=0.6,
                zorder=3,
                plotnonfinite=True,
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
        f"{label} (n={g['n_trials']}, HV={_fmt(g['hypervolume'])})"
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
    fig.legend(
        handles,
        texts,
        loc="outside lower center",
        ncols=2 if two_d else 3,
        fontsize=9,
        title=f"trials (HV w.r.t. the reference point); all trials: HV = "
        f"{_fmt(pareto['hypervolume'])}",
        title_fontsize=9,
    )
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


def _plot_drift(path: Path, pareto: dict[str, Any], included: list[dict[str, Any]]) -> Path:
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
    fig = _new_figure(12.0, 5.4)
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
        for k, algo in enumerate(_NO_BETA):
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


def _cmap_color(cmap: str, norm: Any, value: float | None) -> Any:
    """The colormap's color for a preference weight; gray when unknown."""
    from matplotlib import colormaps

    if value is None or not math.isfinite(value):
        return "gray"
    return colormaps[cmap](norm(value))


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
            *(_fmt(row.get(f"final/{n}")) for n in names),
            _fmt(row["hypervolume"]),
            _fmt(row["mean_disagreement"]),
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
            label, str(group["n_trials"]), _fmt(group["hypervolume"]), ", ".join(group["front"])
        )
    groups.add_row(
        Text("all", style="bold"),
        str(pareto["n_included"]),
        _fmt(pareto["hypervolume"]),
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
