"""The ``algorithm:`` block: common keys plus the chosen algorithm's own, validated options.

Why a module of its own: the block's keys depend on the algorithm named in it (each algorithm
file in firm_ray/algorithms/ declares an ``Options`` model), so validating it needs the
registry, imported on demand, and its own merging of option errors into the one-line format.
"""

import difflib
import importlib
import warnings
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError, model_validator

from firm_ray.config.errors import (
    ConfigError,
    Problem,
    dotted,
    format_errors,
    raise_problems,
    show_value,
)
from firm_ray.config.fields import Float, NonNegFloat, PosFloat, Section

# The built-in algorithms (firm_ray/algorithms/, registered by name; tested to match).
ALGORITHMS: tuple[str, ...] = ("firm", "fedavg_ls", "fmgda", "centralized", "jd")
MULTI_OBJECTIVE_ALGORITHMS = ("firm", "fmgda", "jd")  # min_objectives 2 (tested to match)


def _option_problems(exc: ValidationError, options: type[BaseModel]) -> list[Problem]:
    """An algorithm options model's errors as Problems (same phrasing as every other key)."""
    lines = format_errors(exc, options)
    problems = []
    for err in exc.errors(include_url=False):
        prefix = f"{dotted(err['loc'])} = {show_value(err['input'])}: "
        line = next((x for x in lines if x.startswith(prefix)), prefix + err["msg"])
        problems.append(Problem(tuple(err["loc"]), line[len(prefix) :], err["input"]))
    return problems


class AlgorithmConfig(Section):
    """The ``algorithm:`` block: the common keys below plus the algorithm's own options.

    The algorithm's own keys (e.g. firm's beta / beta_scale / grad_norm) are validated by its
    ``Options`` model (firm_ray/algorithms/) and stored with their defaults filled in, so
    ``cfg.algorithm.beta`` reads them and `dump_config` round-trips. A key that belongs to
    another registered algorithm (``beta`` with ``name: fedavg_ls``) is dropped with a warning
    naming it, so one YAML serves every algorithm of a sweep; any other key is an error. The
    algorithm's module is imported on demand (importlib: this package stays statically below
    every other layer)."""

    model_config = ConfigDict(
        extra="allow", validate_assignment=True, use_attribute_docstrings=True
    )

    name: StrictStr = "firm"
    """A registered algorithm: firm (in-client regularized min-norm), fedavg_ls (fixed linear
    scalarization), fmgda (one local trajectory per objective, server-side min-norm over the M
    averaged deltas), centralized (FIRM's in-client update on one client holding all data), jd
    (a torchjd weighting in-client); or a dotted path 'package.module:ClassName' to an
    Algorithm subclass (importable by every Ray worker)."""
    preference: list[Float] | None = None
    """Preference over rewards (one entry each, >= 0, sum 1); None = uniform."""
    mu: NonNegFloat = 0.0
    """FedProx proximal strength pulling local weights to the round's global adapter (0 = off)."""
    server_lr: PosFloat = 1.0
    """Server step size on the averaged adapter update (1.0 = plain averaging)."""

    @model_validator(mode="after")
    def _options(self) -> "AlgorithmConfig":
        registry = importlib.import_module("firm_ray.algorithms")
        try:
            cls = registry.resolve(self.name)
        except registry.UnknownAlgorithm as exc:
            raise_problems([Problem(("name",), str(exc), self.name)])
        own = cls.Options.model_fields
        given = dict(self.__pydantic_extra__ or {})
        foreign = {
            key
            for other in registry.REGISTRY.values()
            for key in other.Options.model_fields
            if key not in own
        }
        problems = []
        ignored = sorted(k for k in given if k not in own and k in foreign)
        for key in sorted(k for k in given if k not in own and k not in foreign):
            allowed = [*type(self).model_fields, *own]
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            reason = f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
            problems.append(Problem((key,), reason))
        if ignored:
            warnings.warn(
                f"algorithm.{', algorithm.'.join(ignored)}: not an option of algorithm "
                f"{self.name!r}; ignored",
                UserWarning,
                stacklevel=1,
            )
        try:
            options = cls.Options.model_validate({k: v for k, v in given.items() if k in own})
        except ValidationError as exc:
            problems += _option_problems(exc, cls.Options)
        raise_problems(problems)
        self.__pydantic_extra__ = options.model_dump(mode="json")
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        extra = dict(self.__pydantic_extra__ or {})
        try:
            super().__setattr__(name, value)
        except ConfigError:  # a rejected option must not stay behind
            object.__setattr__(self, "__pydantic_extra__", extra)
            raise

    def options(self) -> dict[str, Any]:
        """The algorithm's own keys (validated, defaults filled in)."""
        return dict(self.__pydantic_extra__ or {})

    def option(self, key: str, default: Any = None) -> Any:
        """One option of the algorithm, or ``default`` when the algorithm has no such key."""
        return (self.__pydantic_extra__ or {}).get(key, default)

    def algorithm_class(self) -> Any:
        """The Algorithm subclass of ``name`` (firm_ray.algorithms, imported on demand)."""
        return importlib.import_module("firm_ray.algorithms").resolve(self.name)

    def num_trajectories(self, num_objectives: int) -> int:
        """Local trajectories per client and round (fmgda: M)."""
        return len(self.algorithm_class()(self, num_objectives)._unit_trajectories())

    def preference_vector(self, num_objectives: int) -> list[float]:
        """The explicit preference: a copy of `preference`, or uniform when it is None."""
        if self.preference is None:
            return [1.0 / num_objectives] * num_objectives
        if len(self.preference) != num_objectives:
            raise ConfigError(
                f"algorithm.preference = {show_value(self.preference)}: has {len(self.preference)} "
                f"entries, expected {num_objectives}"
            )
        return list(self.preference)
