"""Run tracking: where metrics go (trackers) and what a run directory holds (report).

- :mod:`firm_ray.tracking.jsonl`: the :class:`Tracker` protocol; :class:`JsonlTracker` (the run
  directory's files, crash-safe), :class:`NullTracker`, :class:`MultiTracker`; readers.
- :mod:`firm_ray.tracking.summary`: the run directory's schema, ``build_summary``,
  ``load_summary``; :mod:`firm_ray.tracking.plots`: ``make_plots``;
  :mod:`firm_ray.tracking.report`: ``summary_table`` / ``print_report``.
- A sweep directory: :mod:`~firm_ray.tracking.sweep_trials` (``collect_trials``),
  :mod:`~firm_ray.tracking.sweep_analysis` (Pareto front, hypervolumes),
  :mod:`~firm_ray.tracking.sweep_plots`, :mod:`~firm_ray.tracking.sweep_report`
  (``build_sweep_report``, ``print_sweep_report``).
- :mod:`firm_ray.tracking.wandb_tracker`: ``make_tracker`` (metrics.jsonl, plus W&B when
  enabled), ``WandbTracker``; :mod:`firm_ray.tracking.wandb_sweep`: ``log_sweep_summary``.

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
from firm_ray.tracking.plots import make_plots
from firm_ray.tracking.report import print_report, summary_table
from firm_ray.tracking.summary import METRICS_KEYS, SUMMARY_KEYS, build_summary, load_summary
from firm_ray.tracking.sweep_analysis import PARETO_KEYS
from firm_ray.tracking.sweep_report import build_sweep_report, print_sweep_report
from firm_ray.tracking.sweep_trials import TRIAL_COLUMNS, collect_trials, is_sweep_dir
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
