"""`firm-ray` entry point.

Subcommands: run, sweep, report, check-config, build-world. The
parser is plain argparse so `--help` stays fast (no torch or ray import before a subcommand runs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from firm_ray import __version__


def _add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"dotted override, e.g. --set {example} (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="firm-ray",
        description=(
            "Federated, multi-objective RLHF alignment of LLMs with FIRM, orchestrated by Ray."
        ),
    )
    parser.add_argument("--version", action="version", version=f"firm-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check-config", help="validate a config YAML (with --set overrides) and print it resolved"
    )
    check.add_argument("config", help="path to an experiment YAML")
    _add_overrides(check, "algorithm.beta=0.1")
    check.set_defaults(func=_check_config)
    run = sub.add_parser(
        "run",
        help="run one federated experiment (local Ray, or the cluster at RAY_ADDRESS)",
        description=(
            "Run one federated experiment. Connects to an existing Ray cluster when RAY_ADDRESS "
            "(or runtime.address) is set, otherwise starts a local Ray bound to 127.0.0.1. "
            "Results go to <experiment.output_dir>/<experiment.name> (suffixed -2, -3, ... "
            "rather than overwrite an earlier run)."
        ),
    )
    run.add_argument("config", nargs="?", help="experiment YAML (omit with --resume)")
    _add_overrides(run, "federation.rounds=2")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    run.set_defaults(func=_run)
    sweep = sub.add_parser(
        "sweep",
        help="run a Ray Tune sweep (one federated run per trial) and write its Pareto report",
        description=(
            "Run a sweep file with Ray Tune: one whole federated run per trial, each in its own "
            "placement group, as many at once as the cluster's resources hold. Results go to "
            "<sweep.output_dir>/<sweep.name>: trials/, trials.csv, pareto.json, pareto.png, "
            "drift.png. Connects to RAY_ADDRESS when set, else starts a local Ray on 127.0.0.1."
        ),
    )
    sweep.add_argument("sweep_file", nargs="?", help="sweep YAML (omit with --resume)")
    sweep.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
    sweep.add_argument(
        "--output-dir",
        metavar="DIR",
        help="write the sweep under DIR instead of sweep.output_dir (shared storage on a cluster)",
    )
    sweep.add_argument(
        "--no-resource-check",
        action="store_true",
        help="start even if no trial fits the cluster now (an autoscaler will add nodes)",
    )
    sweep.set_defaults(func=_sweep)
    report = sub.add_parser(
        "report", help="re-print a run's (or a sweep's) summary and redraw its plots"
    )
    report.add_argument("run_dir", help="a run directory (runs/<name>) or a sweep directory")
    report.set_defaults(func=_report)
    build = sub.add_parser(
        "build-world",
        help="build (or find in the cache) the embedded default's warm-start model and print it",
    )
    build.set_defaults(func=_build_world)
    return parser


def _run(args: argparse.Namespace) -> int:
    from firm_ray.config import ConfigError, load_config

    if args.resume and (args.config or args.overrides):
        print("error: --resume continues a run with its saved config; drop CONFIG and --set")
        return 2
    if not args.resume and not args.config:
        print("error: give an experiment CONFIG (or --resume RUN_DIR)")
        return 2
    try:
        config = None if args.resume else load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}")
        return 2
    _prebuild_world(args.resume, config)
    from firm_ray.runtime.loop import RunError, run

    try:
        summary = run(config, resume=args.resume)
    except RunError as err:
        print(f"error: {err}")
        return 1
    print(f"results: {summary['run_dir']}")
    return 0 if summary.get("status") == "completed" else 1


def _sweep(args: argparse.Namespace) -> int:
    from firm_ray.config import ConfigError

    if bool(args.resume) == bool(args.sweep_file):
        print("error: give a SWEEP_FILE, or --resume SWEEP_DIR (not both)")
        return 2
    if args.resume and args.output_dir:
        print("error: --resume continues a sweep in its own directory; drop --output-dir")
        return 2
    _prebuild_world(args.resume, None, args.sweep_file)
    from firm_ray.runtime.loop import RunError
    from firm_ray.runtime.sweep import SweepError, resume_sweep, run_sweep

    check = not args.no_resource_check
    try:
        if args.resume:
            result = resume_sweep(args.resume, check_resources=check)
        else:
            result = run_sweep(args.sweep_file, check_resources=check, output_dir=args.output_dir)
    except (ConfigError, SweepError, RunError) as err:
        print(f"error: {err}")
        return 2 if isinstance(err, ConfigError) else 1
    print(f"results: {result['sweep_dir']}")
    if result["failed"]:
        print(f"{len(result['failed'])} trial(s) failed: {', '.join(result['failed'])}")
        return 1
    return 0


def _uses_builtin_world(
    resume: str | None, config: Any = None, sweep_file: str | None = None
) -> bool:
    """Whether the run (its config, or its run directory's) or some trial of the sweep (its
    base config, variants or search space) uses ``builtin:tiny-world``; False when the sweep
    file cannot be read (run_sweep reports that)."""
    import json
    from pathlib import Path

    from firm_ray.config import ConfigError, load_config
    from firm_ray.models.warmstart import BUILTIN_WORLD
    from firm_ray.sweep_spec import load_sweep

    def builtin(cfg: Any) -> bool:
        return BUILTIN_WORLD in (cfg.model.name_or_path, cfg.model.tokenizer)

    try:
        if config is not None:
            return builtin(config)
        if resume is not None and (Path(resume) / "config.yaml").exists():
            return builtin(load_config(Path(resume) / "config.yaml"))
        sweep = load_sweep(sweep_file or Path(str(resume)) / "sweep.yaml")
    except (ConfigError, OSError):
        return False
    return builtin(sweep.base_config) or BUILTIN_WORLD in json.dumps(
        sweep.spec.model_dump(mode="json")
    )


def _prebuild_world(resume: str | None, config: Any = None, sweep_file: str | None = None) -> None:
    """Build the built-in world model here, with a progress line, before Ray starts.

    Otherwise the first Ray worker builds it (a minute or two on 2 cores) while the driver
    waits in silence. Only when it is used and not cached.
    """
    from firm_ray.models.warmstart import BUILTIN_WORLD, ensure_world_model, world_model_cached

    if _uses_builtin_world(resume, config, sweep_file) and not world_model_cached():
        print(f"building {BUILTIN_WORLD} once (cached for later runs), before starting Ray")
        ensure_world_model(verbose=True)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from firm_ray.tracking.report import make_plots, print_report
    from firm_ray.tracking.sweep_report import is_sweep_dir, print_sweep_report

    run_dir = Path(args.run_dir)
    if is_sweep_dir(run_dir):
        print_sweep_report(run_dir, Console())
        return 0
    if not (run_dir / "metrics.jsonl").exists():
        print(f"error: {run_dir} has no metrics.jsonl (not a firm-ray run directory)")
        return 2
    plots = make_plots(run_dir)
    print_report(run_dir, Console())
    print("plots: " + ", ".join(str(p) for p in plots))
    return 0


def _build_world(args: argparse.Namespace) -> int:
    import json

    from firm_ray.models.warmstart import ensure_world_model

    path = ensure_world_model(verbose=True)
    print(json.dumps(json.loads((path / "build.json").read_text()), indent=2))
    print(f"warm-start model: {path}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from firm_ray.config import ConfigError, dump_config, load_config

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}")
        return 2
    print(dump_config(config), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args))
