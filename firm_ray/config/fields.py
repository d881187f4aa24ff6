"""Field types and the Section base shared by every config model (and by sweep files).

Why a module of its own: the sections (schema.py), the algorithm block (algorithm.py) and
sweep_spec.py all need the same strict, finite, range-checked types and the same
unknown-key-rejecting base, with the same one-line error messages.
"""

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StrictStr,
    ValidationError,
)

from firm_ray.config.errors import ConfigError, format_errors

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _safe_name(value: str) -> str:
    if not _SAFE_NAME.fullmatch(value) or value in {".", ".."}:
        raise ValueError("must be a safe directory name: letters, digits, '.', '_', '-'")
    return value


def interval(text: str) -> AfterValidator:
    """Range check such as ``"[0, 1)"``; the interval itself is the error message."""
    lo, hi = (float(x) for x in text[1:-1].split(","))
    lo_ok = (lambda v: v >= lo) if text[0] == "[" else (lambda v: v > lo)
    hi_ok = (lambda v: v <= hi) if text[-1] == "]" else (lambda v: v < hi)

    def check(value: float) -> float:
        if not (lo_ok(value) and hi_ok(value)):
            raise ValueError(f"must be in {text}")
        return value

    return AfterValidator(check)


# Floats accept ints (1 -> 1.0) but not strings or bools, and must be finite.
Float = Annotated[float, Strict(), AllowInfNan(False)]
PosFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
PosInt = Annotated[StrictInt, Field(ge=1)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
SafeName = Annotated[StrictStr, AfterValidator(_safe_name)]


class Section(BaseModel):
    """Base of every config model: unknown keys are rejected; bad assignments raise ConfigError.

    (No ``__init__`` override: pydantic would route nested validation through it. Build trees with
    `config_from_dict` / `load_config` to get ConfigError; direct construction raises pydantic's
    ValidationError, which is also a ValueError.)
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )

    def __setattr__(self, name: str, value: Any) -> None:
        missing = object()
        old = self.__dict__.get(name, missing)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            # pydantic has already stored the value when a model validator rejects it: undo that.
            if old is not missing:
                self.__dict__[name] = old
            raise ConfigError(format_errors(exc, type(self))) from None
