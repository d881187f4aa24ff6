"""The sweep-summary W&B run: one run (job type ``sweep-summary``) with the trials table, a
Pareto-front scatter of the first two objectives and the sweep report's images."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from firm_ray.tracking.jsonl import to_jsonable
from firm_ray.tracking.wandb_common import init_run, usable_mode

__all__ = ["log_sweep_summary"]

_TRIAL_COLUMNS = (  # shown first when present; then final/<name>; then the rest
    "trial_id",
    "algorithm",
    "beta",
    "preference",
    "seed",
    "status",
)
_TRIAL_COLUMNS_AFTER = ("pareto", "on_front", "hypervolume", "mean_disagreement")


def _trial_table(
    trials: Sequence[Mapping[str, Any]], reward_names: Sequence[str]
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the trials table: the known columns first (those present), then
    the others in first-seen order. Lists and dicts become JSON strings, non-finite numbers
    None, and a column whose values mix types (W&B rejects that) is written as strings."""
    seen: dict[str, None] = {}
    for trial in trials:
        seen.update(dict.fromkeys(str(k) for k in trial))
    finals = [f"final/{n}" for n in reward_names]
    columns = [c for c in (*_TRIAL_COLUMNS, *finals, *_TRIAL_COLUMNS_AFTER) if c in seen]
    columns += [c for c in seen if c not in columns]

    def cell(value: Any) -> Any:
        value = to_jsonable(value)
        if isinstance(value, (list, dict)):
            return json.dumps(value)
        return value

    rows = [[cell(trial.get(c)) for c in columns] for trial in trials]
    for j in range(len(columns)):
        kinds = {
            "bool" if isinstance(r[j], bool) else "num" if isinstance(r[j], (int, float)) else "str"
            for r in rows
            if r[j] is not None
        }
        if len(kinds) > 1:
            for r in rows:
                if r[j] is not None:
                    r[j] = str(r[j])
    return columns, rows


def log_sweep_summary(
    settings: Mapping[str, Any],
    sweep_dir: str | os.PathLike[str],
    name: str,
    group: str,
    trials: list[dict[str, Any]],
    reward_names: list[str],
    images: list[Path],
) -> None:
    """One W&B run (job_type ``sweep-summary``, in ``group``) with the table of ``trials``, a
    "Pareto front" scatter of the first two objectives' ``final/<name>`` and ``images`` (those
    that exist). Does nothing when W&B is off (``enabled`` false or mode ``disabled``)."""
    if not settings.get("enabled", True):
        return
    mode = usable_mode(str(settings.get("mode", "offline")))
    if mode == "disabled":
        return
    import wandb

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    run = init_run(
        mode,
        project=settings.get("project") or "firm-ray",
        entity=settings.get("entity"),
        group=group,
        tags=list(settings.get("tags") or []),
        dir=str(sweep_dir),
        name=name,
        job_type="sweep-summary",
        config={"reward_names": list(reward_names), "trials": len(trials)},
    )
    try:
        columns, rows = _trial_table(trials, reward_names)
        data: dict[str, Any] = {}
        if columns:
            table = wandb.Table(columns=columns, data=rows)
            data["trials"] = table
            x, y = (f"final/{n}" for n in [*reward_names[:2], "", ""][:2])
            if x in columns and y in columns:
                data["pareto_front"] = wandb.plot.scatter(table, x, y, title="Pareto front")
        for path in images:
            path = Path(path)
            if path.is_file():
                data[f"images/{path.stem}"] = wandb.Image(str(path))
        if data:
            run.log(data)
        run.summary.update({"trials": len(trials)})
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish(exit_code=0)
