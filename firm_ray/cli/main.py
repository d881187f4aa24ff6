"""`firm-ray` entry point.

Subcommands (`run`, `sweep`, `report`, `build-world`) are registered here as they land; the
parser is plain argparse so `--help` stays fast (no torch or ray import before a subcommand runs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from firm_ray import __version__


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
    check.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set algorithm.beta=0.1 (repeatable)",
    )
    check.set_defaults(func=_check_config)
    build = sub.add_parser(
        "build-world",
        help="build (or find in the cache) the embedded default's warm-start model and print it",
    )
    build.set_defaults(func=_build_world)
    return parser


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
