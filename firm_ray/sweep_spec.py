"""Sweep files: a base experiment plus search spaces over any of its fields.

Why a file of its own: a sweep is how users study FIRM (beta, preference, the algorithm itself),
so a typo in a field name or a preference of the wrong length must fail before any trial
starts, with the same one-line errors as an experiment config. This module only reads,
validates and expands the file; ``firm_ray.runtime.sweep`` turns it into Ray Tune objects.

A sweep file (every file in tune_configs/ opens with the command that runs it)::

    # firm-ray sweep tune_configs/sweep_beta.yaml
    sweep:
      name: sweep_beta
      base: quickstart.yaml          # experiment config, relative to this file
      set: [federation.rounds=4]     # fixed overrides, --set syntax
      variants:                      # optional: named override sets, one grid axis
        firm: [algorithm.name=firm]
        fedavg_ls: [algorithm.name=fedavg_ls]
      space:                         # dotted config field -> one search-space form
        algorithm.beta: {log_grid: {low: 0.01, high: 10, num: 4, zero: true}}
        algorithm.preference: {simplex: {points: 5}}
        experiment.seed: {grid: [0, 1, 2]}

Search-space forms (exactly one key each):

- ``grid: [v, ...]``: every value (Tune ``grid_search``).
- ``choice: [v, ...]``: one value drawn per sample (``tune.choice``).
- ``uniform: [low, high]`` / ``loguniform: [low, high]``: drawn per sample.
- ``log_grid: {low, high, num, zero}``: ``num`` log-spaced values, plus 0 first if ``zero``
  (the beta axis: 0 is plain MGDA, large beta is linear scalarization).
- ``simplex: {points}``: every preference vector with entries in {0, 1/(points-1), ..., 1}
  summing to 1; M is the number of rewards in the base config (M = 2: ``points`` vectors).
- ``dirichlet: {alpha, samples, seed}``: ``samples`` preference vectors drawn once from a
  seeded Dirichlet(alpha) and swept as a grid, so a re-run or a resumed sweep gets the same.

Grid axes multiply; ``num_samples`` repeats the grid, drawing the random forms anew each time.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import Field, StrictStr, ValidationError, model_validator

from firm_ray.config import ConfigError, FirmConfig, config_from_dict, load_config
from firm_ray.config.errors import format_errors
from firm_ray.config.fields import NonNegInt, PosFloat, PosInt, SafeName, Section
from firm_ray.config.loading import YamlLoader

__all__ = [
    "SPACE_FORMS",
    "AshaSpec",
    "Sweep",
    "SweepSpec",
    "load_sweep",
    "simplex_grid",
]

SPACE_FORMS = ("grid", "choice", "uniform", "loguniform", "log_grid", "simplex", "dirichlet")
GRID_FORMS = ("grid", "log_grid", "simplex", "dirichlet")
FORBIDDEN_PREFIXES = ("runtime.", "experiment.name", "experiment.output_dir")
"""Fields a trial may not change: the trial's placement and run directory come from the sweep."""


class AshaSpec(Section):
    grace_period: PosInt = 2
    """Rounds every trial runs before ASHA may stop it."""
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    """Keep 1/reduction_factor of the trials at each rung."""


class SweepSpec(Section):
    name: SafeName
    """Sweep directory: <output_dir>/<name> (suffixed -2, -3, ... rather than overwrite)."""
    base: StrictStr
    """The experiment config every trial starts from, relative to the sweep file."""
    set: list[StrictStr] = Field(default_factory=list)
    """Overrides applied to the base before the swept values (``key=value``)."""
    variants: dict[SafeName, list[StrictStr]] | None = None
    """Named override sets swept as one grid axis (e.g. the baselines side by side)."""
    space: dict[StrictStr, dict[StrictStr, Any]] = Field(default_factory=dict)
    """Dotted config field -> search-space form (see the module docstring)."""
    num_samples: PosInt = 1
    """Repeats of the grid; random forms are drawn anew for each."""
    seed: NonNegInt = 0
    """Seed of the random forms (uniform, loguniform, choice)."""
    max_concurrent_trials: PosInt | None = None
    """At most this many trials at once; null = as many as the cluster's resources allow."""
    scheduler: Literal["fifo", "asha"] = "fifo"
    """fifo runs every trial to the end; asha stops trials that fall behind on ``metric``."""
    metric: StrictStr = "scalarized_reward"
    """Per-round metric ASHA compares (maximized): scalarized_reward (p . eval rewards) or
    reward/<name>."""
    asha: AshaSpec = AshaSpec()
    """ASHA settings (used when scheduler is asha)."""
    output_dir: StrictStr = "sweeps"
    """Where sweep directories go (relative to the working directory)."""
    max_failures: NonNegInt = 0
    """Restarts of a failed trial (from its last round checkpoint) before it counts as failed."""
    time_budget_s: PosFloat | None = None
    """Wall-clock limit of the whole sweep in seconds (Tune's time_budget_s); null = none."""

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not self.space and not self.variants:
            raise ValueError("a sweep needs a space or variants (otherwise it is one run)")
        return self


@dataclass
class Axis:
    """One swept field: ``form`` is a key of SPACE_FORMS; ``values`` the grid (grid forms)."""

    key: str
    form: str
    values: list[Any] = field(default_factory=list)
    low: float | None = None
    high: float | None = None


@dataclass
class Sweep:
    """A validated sweep: the spec, the base config (with ``set``) and the expanded axes."""

    spec: SweepSpec
    base: dict[str, Any]
    """The base experiment as a plain dict (after ``set``); trials apply their overrides to it."""
    axes: list[Axis]
    source: Path | None = None

    @property
    def base_config(self) -> FirmConfig:
        return config_from_dict(self.base)

    def num_trials(self) -> int:
        """Trials the sweep will run: product of the grid axes (and variants) x num_samples."""
        sizes = [len(a.values) for a in self.axes if a.form in GRID_FORMS]
        if self.spec.variants:
            sizes.append(len(self.spec.variants))
        return math.prod(sizes) * self.spec.num_samples

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """The ``key=value`` overrides of one trial: its variant's, then each swept field."""
        out: list[str] = []
        if self.spec.variants:
            out += self.spec.variants[params["variant"]]
        out += [f"{a.key}={json.dumps(params[a.key])}" for a in self.axes]
        return out

    def trial_config(self, params: dict[str, Any], extra: list[str] = ()) -> FirmConfig:
        """The full config of one trial; ``extra`` overrides come last (run dir, W&B group)."""
        return config_from_dict(self.base, [*self.trial_overrides(params), *extra])


def simplex_grid(num_objectives: int, points: int) -> list[list[float]]:
    """Every probability vector with entries on the grid {0, 1/(points-1), ..., 1}.

    Ordered by the first entry ascending, so a preference sweep reads left to right.
    """
    if points < 2:
        raise ValueError("simplex points must be >= 2")
    steps = points - 1
    out = [
        [round(c / steps, 10) for c in combo]
        for combo in itertools.product(range(steps + 1), repeat=num_objectives)
        if sum(combo) == steps
    ]
    return sorted(out)


def _dirichlet(num_objectives: int, alpha: float, samples: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    draws = rng.dirichlet([alpha] * num_objectives, size=samples)
    out = []
    for row in draws:
        # Round to 4 places; the largest entry takes the rounding remainder so the vector sums
        # to 1 and no entry goes negative (the last one could, for M >= 3 and small alpha).
        rounded = [round(float(v), 4) for v in row]
        top = int(np.argmax(row))
        rounded[top] = round(1.0 - sum(v for i, v in enumerate(rounded) if i != top), 4)
        out.append(rounded)
    return out


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} = {value!r}: must be a finite number")
    return float(value)


def _axis(key: str, entry: dict[str, Any], num_objectives: int) -> Axis:
    where = f"sweep.space.{key}"
    if len(entry) != 1 or next(iter(entry)) not in SPACE_FORMS:
        raise ConfigError(
            f"{where} = {entry!r}: must be a mapping with exactly one of " + ", ".join(SPACE_FORMS)
        )
    form, arg = next(iter(entry.items()))
    where = f"{where}.{form}"
    if form in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where} = {arg!r}: must be a non-empty list of values")
        return Axis(key, form, values=list(arg))
    if form in ("uniform", "loguniform"):
        if not isinstance(arg, list) or len(arg) != 2:
            raise ConfigError(f"{where} = {arg!r}: must be [low, high]")
        low, high = (_number(v, where) for v in arg)
        if not low < high or (form == "loguniform" and low <= 0):
            rule = "0 < low < high" if form == "loguniform" else "low < high"
            raise ConfigError(f"{where} = {arg!r}: must satisfy {rule}")
        return Axis(key, form, low=low, high=high)
    if not isinstance(arg, dict):
        raise ConfigError(f"{where} = {arg!r}: must be a mapping")
    allowed = {
        "log_grid": {"low", "high", "num", "zero"},
        "simplex": {"points"},
        "dirichlet": {"alpha", "samples", "seed"},
    }[form]
    unknown = set(arg) - allowed
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    if form == "log_grid":
        low, high = (
            _number(arg.get("low"), f"{where}.low"),
            _number(arg.get("high"), f"{where}.high"),
        )
        num = arg.get("num", 4)
        if not 0 < low <= high or not isinstance(num, int) or num < 1:
            raise ConfigError(f"{where} = {arg!r}: needs 0 < low <= high and an integer num >= 1")
        values = [float(f"{v:.6g}") for v in np.geomspace(low, high, num)]
        return Axis(key, form, values=([0.0] if arg.get("zero", False) else []) + values)
    if form == "simplex":
        points = arg.get("points")
        if not isinstance(points, int) or points < 2:
            raise ConfigError(f"{where}.points = {points!r}: must be an integer >= 2")
        return Axis(key, form, values=simplex_grid(num_objectives, points))
    alpha = _number(arg.get("alpha", 1.0), f"{where}.alpha")
    samples, seed = arg.get("samples"), arg.get("seed", 0)
    if alpha <= 0 or not isinstance(samples, int) or samples < 1 or not isinstance(seed, int):
        raise ConfigError(f"{where} = {arg!r}: needs alpha > 0, integer samples >= 1, integer seed")
    return Axis(key, form, values=_dirichlet(num_objectives, alpha, samples, seed))


def _forbidden(key: str) -> bool:
    """Whether setting ``key`` changes a FORBIDDEN_PREFIXES field: the field itself, a key below
    it, or a whole section that holds it (``runtime={...}``, ``experiment={...}``)."""
    fields = [p.rstrip(".") for p in FORBIDDEN_PREFIXES]
    return any(key == f or key.startswith(f + ".") or f.startswith(key + ".") for f in fields)


def _check_values(sweep: Sweep) -> None:
    """Validate every grid value and random bound against the base, one axis at a time, so a
    bad value is reported before Tune starts (and names the field)."""
    variants = sweep.spec.variants or {"": []}
    for name, overrides in variants.items():
        try:
            config_from_dict(sweep.base, overrides)
        except ConfigError as err:
            raise ConfigError(f"sweep.variants.{name}: {err}") from None
    for axis in sweep.axes:
        if _forbidden(axis.key) or axis.key in ("variant",):
            raise ConfigError(
                f"sweep.space.{axis.key}: cannot be swept (a trial's resources and run directory "
                "come from the sweep; set runtime.* in the base config or sweep.set)"
            )
        probes = axis.values if axis.form in (*GRID_FORMS, "choice") else [axis.low, axis.high]
        for value in probes:
            override = f"{axis.key}={json.dumps(value)}"
            for name, overrides in variants.items():
                try:
                    config_from_dict(sweep.base, [*overrides, override])
                except ConfigError as err:
                    at = f" (variant {name})" if name else ""
                    raise ConfigError(f"sweep.space.{axis.key} = {value!r}{at}: {err}") from None
    for name, overrides in variants.items():
        if any(_forbidden(o.split("=", 1)[0].strip()) for o in overrides):
            raise ConfigError(
                f"sweep.variants.{name}: cannot override runtime.* or the run directory per trial"
            )


def sweep_from_dict(data: Any, source: Path | None = None) -> Sweep:
    """Validate a parsed sweep file (``{"sweep": {...}}``); ``source`` anchors ``base``."""
    where = str(source) if source else "sweep file"
    if not isinstance(data, dict) or set(data) != {"sweep"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{where}: must have exactly one top-level key 'sweep', got {keys}")
    try:
        spec = SweepSpec.model_validate(data["sweep"])
    except ValidationError as exc:
        lines = format_errors(exc, SweepSpec)
        # a line about the whole section starts with " = value" (its path is empty)
        raise ConfigError(
            "; ".join(f"sweep{line}" if line.startswith(" ") else f"sweep.{line}" for line in lines)
        ) from None
    base_path = Path(spec.base)
    if source is not None and not base_path.is_absolute():
        base_path = source.parent / base_path
    try:
        base_config = load_config(base_path, spec.set)
    except ConfigError as err:
        raise ConfigError(f"sweep.base {spec.base}: {err}") from None
    base = base_config.model_dump(mode="json")
    axes = [_axis(key, entry, base_config.num_objectives) for key, entry in spec.space.items()]
    sweep = Sweep(spec=spec, base=base, axes=axes, source=source)
    _check_values(sweep)
    return sweep


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep YAML (see the module docstring for its format)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep file not found") from None
    try:
        data = yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    return sweep_from_dict(data, source=path)
