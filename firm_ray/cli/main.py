"""`firm-ray` entry point.

Subcommands: run, sweep, report, check-config, build-world. The
parser is plain argparse so `--help` stays fast (no torch or ray import before a subcommand runs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
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


def _add_no_preflight(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-preflight",
        action="store_true",
        help=(
            "skip the pre-flight check of data, model paths, reward modules and the output "
            "directory (e.g. when only the workers' nodes can see those files)"
        ),
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
    _add_no_preflight(check)
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
    _add_no_preflight(run)
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
    sweep.add_argument(
        "--resume",
        metavar="SWEEP_DIR",
        help=(
            "continue an interrupted sweep. Loads Ray Tune's pickled state "
            "(SWEEP_DIR/tune/tuner.pkl), which can run any code: a directory holding anything not "
            "owned by you or writable by group/others is refused (docs/SECURITY.md)"
        ),
    )
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
    _add_no_preflight(sweep)
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
    if not args.no_preflight and not _preflight_run(config, args.resume):
        return 2
    from firm_ray.runtime.loop import run

    existing = _run_dirs(config)
    try:
        _prebuild_world(args.resume, config)
        summary = run(config, resume=args.resume)
    except KeyboardInterrupt as err:  # the run's own RunInterrupted, or a Ctrl-C while starting
        run_dir = getattr(err, "run_dir", None)
        print("interrupted" + (f": {run_dir}" if run_dir else ""))
        return 130
    except Exception as err:
        run_dir = getattr(err, "run_dir", None) or args.resume or _new_run_dir(config, existing)
        return _fail(err, Path(run_dir) if run_dir else None)
    print(f"results: {summary['run_dir']}")
    return _STATUS_CODES.get(summary.get("status"), 1)


_STATUS_CODES = {"completed": 0, "interrupted": 130}
"""Exit code of a run that returned a summary, by its status; any other status is 1."""


def _preflight_run(config: Any, resume: str | None) -> bool:
    """Pre-flight the run's config (a resumed run's own, writing into its directory); prints
    the report line, or one ``error:`` line per problem and returns False."""
    from firm_ray.config import ConfigError, load_config
    from firm_ray.runtime.preflight import PreflightError, preflight

    output: dict[str, Any] = {}
    if resume is not None:
        try:  # a run directory without its config: run() says so
            config = load_config(Path(resume) / "config.yaml")
        except ConfigError:
            return True
        output = {"output_dir": resume, "output_key": "--resume"}
    try:
        print(preflight(config, **output).line())
    except PreflightError as err:
        for problem in err.problems:
            print(f"error: {problem}")
        return False
    return True


def _run_dirs(config: Any) -> set[Path]:
    """The directories a new run of ``config`` could be given (``<name>``, ``<name>-N``)."""
    if config is None:
        return set()
    root, name = Path(config.experiment.output_dir), config.experiment.name
    try:
        return {p for p in root.glob(f"{name}*") if p.is_dir()}
    except OSError:
        return set()


def _new_run_dir(config: Any, existing: set[Path]) -> Path | None:
    """The run directory a failed run created, when the error does not say (``run_dir``)."""
    new = [p for p in _run_dirs(config) - existing if (p / "config.yaml").exists()]
    return new[0] if len(new) == 1 else None


def _fail(err: BaseException, run_dir: Path | None) -> int:
    """Print ``err`` as one ``error:`` line, its traceback in ``<run_dir>/error.log`` (or a
    file in the temp directory when there is no run directory); returns the exit code."""
    import os
    import tempfile

    from firm_ray.cli.errors import report

    if run_dir is not None:
        log = run_dir / "error.log"
    else:
        log = Path(tempfile.gettempdir()) / f"firm-ray-error-{os.getpid()}.log"
    line, code = report(err, log)
    print(line)
    return code


def _sweep(args: argparse.Namespace) -> int:
    from firm_ray.config import ConfigError

    if bool(args.resume) == bool(args.sweep_file):
        print("error: give a SWEEP_FILE, or --resume SWEEP_DIR (not both)")
        return 2
    if args.resume and args.output_dir:
        print("error: --resume continues a sweep in its own directory; drop --output-dir")
        return 2
    from firm_ray.runtime.loop import RunError
    from firm_ray.runtime.sweep import SweepError, check_resume_dir, resume_sweep, run_sweep

    if args.resume:  # before anything reads the directory: its configs may name modules to import
        try:
            check_resume_dir(args.resume)
        except SweepError as err:
            print(f"error: {err}")
            return 2
    if not args.no_preflight and not _preflight_sweep(args):
        return 2

    check = not args.no_resource_check
    try:
        _prebuild_world(args.resume, None, args.sweep_file)
        if args.resume:
            result = resume_sweep(args.resume, check_resources=check)
        else:
            result = run_sweep(args.sweep_file, check_resources=check, output_dir=args.output_dir)
    except (ConfigError, SweepError, RunError) as err:
        print(f"error: {err}")
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    except Exception as err:
        return _fail(err, Path(args.resume) if args.resume else None)
    print(f"results: {result['sweep_dir']}")
    if result["failed"]:
        print(f"{len(result['failed'])} trial(s) failed: {', '.join(result['failed'])}")
        return 1
    return 0


def _preflight_sweep(args: argparse.Namespace) -> bool:
    """Pre-flight the sweep's base config and each variant's (trials only change swept values
    on top of them), once per distinct data / model / rewards; the output check runs once, on
    the sweep's output directory. An unreadable sweep file is left to run_sweep to report."""
    import json

    from firm_ray.config import ConfigError, config_from_dict
    from firm_ray.runtime.preflight import PreflightError, preflight
    from firm_ray.sweep_spec import load_sweep

    try:
        sweep = load_sweep(args.sweep_file or Path(args.resume) / "sweep.yaml")
        variants = list((sweep.spec.variants or {}).values()) or [[]]
        configs = [config_from_dict(sweep.base, overrides) for overrides in variants]
    except (ConfigError, OSError):
        return True
    if args.resume:
        out, key = args.resume, "--resume"
    else:
        out = args.output_dir or sweep.spec.output_dir
        key = "--output-dir" if args.output_dir else "sweep.output_dir"
    seen: set[str] = set()
    problems: list[str] = []
    for i, config in enumerate(configs):
        parts = ("model", "data", "rewards", "lora")
        fingerprint = json.dumps([config.model_dump(mode="json")[k] for k in parts])
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        try:
            report = preflight(config, output_dir=out, output_key=key, check_output=i == 0)
        except PreflightError as err:
            problems += [p for p in err.problems if p not in problems]
    for problem in problems:
        print(f"error: {problem}")
    if not problems:
        print(f"{report.line()} ({len(seen)} distinct trial input(s) of {len(configs)})")
    return not problems


def _uses_builtin_world(
    resume: str | None, config: Any = None, sweep_file: str | None = None
) -> bool:
    """Whether the run (its config, or its run directory's) or some trial of the sweep (its
    base config, variants or search space) uses ``builtin:tiny-world``; False when the sweep
    file cannot be read (run_sweep reports that)."""
    import json

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
    from firm_ray.runtime.privacy_budget import check_budget, protection_lines

    try:  # what `run` would refuse: a privacy budget the rounds exceed
        check_budget(config)
    except ConfigError as err:
        print(f"error: {err}")
        return 2
    line = "# pre-flight skipped (--no-preflight)"
    if not args.no_preflight:
        from firm_ray.runtime.preflight import PreflightError, preflight

        try:
            line = f"# {preflight(config).line()}"
        except PreflightError as err:
            for problem in err.problems:
                print(f"error: {problem}")
            return 2
    print(dump_config(config), end="")
    for protection in protection_lines(config):
        print(f"# {protection}")
    print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args))
