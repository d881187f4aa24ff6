"""Run tracking: where metrics go (trackers) and what a run directory holds (report).

- :mod:`firm_ray.tracking.jsonl`: the :class:`Tracker` protocol; :class:`JsonlTracker` (the run
  directory's files, crash-safe), :class:`NullTracker`, :class:`MultiTracker`; readers.
- :mod:`firm_ray.tracking.report`: the artifact schema, ``build_summary``, ``make_plots``,
  ``summary_table`` / ``print_report``.
- :mod:`firm_ray.tracking.sweep_report`: a sweep directory's trial table, Pareto front and
  plots (``collect_trials``, ``build_sweep_report``, ``print_sweep_report``).
- :mod:`firm_ray.tracking.wandb_tracker`: ``make_tracker`` (metrics.jsonl, plus W&B when
  enabled), ``WandbTracker``, ``log_sweep_summary``, ``read_offline_run``.

W&B is imported lazily by its own tracker, never here.
"""

from firm_ray.tracking.jsonl import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    JsonlTracker,
    MultiTracker,
    NullTracker,
    Tracker,
    read_metrics,
    read_summary,
)
from firm_ray.tracking.report import (
    METRICS_KEYS,
    SUMMARY_KEYS,
    build_summary,
    load_summary,
    make_plots,
    print_report,
    summary_table,
)
from firm_ray.tracking.sweep_report import (
    PARETO_KEYS,
    TRIAL_COLUMNS,
    build_sweep_report,
    collect_trials,
    is_sweep_dir,
    print_sweep_report,
)
from firm_ray.tracking.wandb_tracker import make_tracker

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "METRICS_KEYS",
    "PARETO_KEYS",
    "SUMMARY_FILE",
    "SUMMARY_KEYS",
    "TRIAL_COLUMNS",
    "JsonlTracker",
    "MultiTracker",
    "NullTracker",
    "Tracker",
    "build_summary",
    "build_sweep_report",
    "collect_trials",
    "is_sweep_dir",
    "load_summary",
    "make_plots",
    "make_tracker",
    "print_report",
    "print_sweep_report",
    "read_metrics",
    "read_summary",
    "summary_table",
]
