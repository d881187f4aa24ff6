"""Config errors: one line per problem naming the dotted path, the bad value and what is allowed.

Shared by the schema (its cross-field validators raise `Problem`s) and the loader (which turns
pydantic's ValidationError into `ConfigError` lines). Imports nothing from firm_ray.
"""

import difflib
import re
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """An invalid config; ``str(err)`` has one line per problem, ``err.problems`` the lines."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class Problem(NamedTuple):
    """One cross-field problem, ``path`` relative to the model whose validator found it."""

    path: tuple[str | int, ...]
    reason: str
    value: Any = ...  # Ellipsis: no value to show


def raise_problems(problems: list[Problem]) -> None:
    """Raise the problems found by a model validator (see `format_errors`), if any."""
    if problems:
        summary = "; ".join(p.reason for p in problems)
        raise PydanticCustomError(
            "firm_config", "{summary}", {"summary": summary, "problems": problems}
        )


def dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid mapping key
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def show_value(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind_of(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    kinds |= {list: "a list", dict: "a mapping", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping (a YAML section)",
    "model_attributes_type": "a mapping (a YAML section)",
}
_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}
_BOUND_KEYS = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}


def unwrap_type(tp: Any) -> Any:
    """Strip Annotated and Optional from a type annotation."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or type(tp).__name__ == "UnionType":
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The config model class at a location below root, if it is one."""
    tp: Any = root
    for part in loc:
        tp = unwrap_type(tp)
        if isinstance(part, int) and get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return None
    tp = unwrap_type(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def unknown_key(loc: Sequence[str | int], model: type[BaseModel] | None) -> str:
    if model is None:
        return f"{dotted(loc)}: unknown key"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{dotted(loc)}: unknown key{hint}; allowed keys: {', '.join(allowed)}"


def _phrase(err: dict[str, Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in _EXPECTED:
        quote = kind == "string_type" and isinstance(value, (int, float))
        hint = " (quote it in YAML)" if quote else ""
        return f"must be {_EXPECTED[kind]}, not {kind_of(value)}{hint}"
    if kind in _BOUNDS:
        op = _BOUNDS[kind]
        bound = ctx[_BOUND_KEYS[op]]
        return f"must be {op} {bound:g}" if isinstance(bound, float) else f"must be {op} {bound}"
    if kind == "literal_error":
        return "must be one of " + ", ".join(re.findall(r"'([^']*)'", ctx["expected"]))
    if kind == "too_short":
        n = ctx["min_length"]
        return f"must have at least {n} {'entry' if n == 1 else 'entries'}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "value_error":
        return str(ctx["error"])
    msg = str(err["msg"])
    return "must be" + msg[len("Input should be") :] if msg.startswith("Input should be") else msg


def format_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem: ``path = value: what is allowed``; unknown keys first.

    Paths are relative to the model class ``root`` that was validated.
    """
    first: list[str] = []
    rest: list[str] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if err["type"] == "firm_config":
            for p in err["ctx"]["problems"]:
                path = dotted((*loc, *p.path))
                shown = "" if p.value is ... else f" = {show_value(p.value)}"
                rest.append(f"{path}{shown}: {p.reason}")
        elif err["type"] == "extra_forbidden":
            first.append(unknown_key(loc, model_at(root, loc[:-1])))
        elif err["type"] == "missing":
            rest.append(f"{dotted(loc)}: required field is missing")
        else:
            rest.append(f"{dotted(loc)} = {show_value(err['input'])}: {_phrase(err)}")
    return list(dict.fromkeys(first + rest))
