"""Loading a config: YAML files, dotted ``--set key=value`` overrides, and the resolved dump.

Override values are parsed as YAML (``x=[1,2]`` is a list, ``x=foo`` a string, ``x=`` null).
The YAML loader also reads ``5e-4`` as a float (plain YAML 1.1 would read a string).
"""

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from firm_ray.config.errors import (
    ConfigError,
    dotted,
    format_errors,
    kind_of,
    show_value,
    unknown_key,
    unwrap_type,
)
from firm_ray.config.schema import FirmConfig

# --------------------------------------------------------------------------- YAML


def _with_float_resolver(base: type) -> type:
    """A YAML loader/dumper class that also reads 1e-3 / 5E+4 (no dot) as floats."""
    cls = type(f"_Firm{base.__name__}", (base,), {})
    cls.yaml_implicit_resolvers = {k: list(v) for k, v in base.yaml_implicit_resolvers.items()}
    cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return cls


YamlLoader = _with_float_resolver(yaml.SafeLoader)
YamlDumper = _with_float_resolver(yaml.SafeDumper)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    """Lists of scalars inline (``[0.3, 0.7]``), everything else in block style."""
    flow = all(not isinstance(item, (list, dict)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


YamlDumper.add_representer(list, _represent_list)


def _yaml_error(where: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(f"{where}: invalid YAML{at}: {' '.join(str(problem).split())}")


# --------------------------------------------------------------------------- overrides

_OVERRIDE_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\[\d+\])*(?:\.[A-Za-z_][\w-]*(?:\[\d+\])*)*")


def _parse_path(path: str) -> list[str | int]:
    return [
        int(tok[1:-1]) if tok.startswith("[") else tok
        for tok in re.findall(r"\[\d+\]|[^.[]+", path)
    ]


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not _OVERRIDE_PATH.fullmatch(key):
        raise ConfigError(
            f"override {override!r}: must look like a.b.c=VALUE (e.g. algorithm.beta=0.5)"
        )
    try:
        value = yaml.load(text, Loader=YamlLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(f"override {override!r}", exc) from None
    parts = _parse_path(key)
    node: Any = raw
    tp: Any = FirmConfig
    for i, part in enumerate(parts):
        here, last = dotted(parts[: i + 1]), i == len(parts) - 1
        tp = unwrap_type(tp)
        model = tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
        if isinstance(part, int):
            if get_origin(tp) is not list or not isinstance(node, list):
                raise ConfigError(f"{here}: cannot index {dotted(parts[:i])} = {show_value(node)}")
            if part >= len(node):
                raise ConfigError(
                    f"{here}: index out of range ({dotted(parts[:i])} has {len(node)} entries)"
                )
            tp = get_args(tp)[0]
        else:
            if model is not None and part not in model.model_fields and _open(model):
                # a section with plug-in keys (the algorithm's options): its validator checks
                # the key against the selected algorithm once the whole tree is known
                model, tp = None, Any
            elif model is not None:
                if part not in model.model_fields:
                    raise ConfigError(
                        unknown_key(parts[: i + 1], model) + f" (in --set {override})"
                    )
                field = model.model_fields[part]
                tp = field.annotation
            elif get_origin(tp) is dict or tp is Any:
                tp = get_args(tp)[1] if get_origin(tp) is dict else Any
            else:
                raise ConfigError(f"{here}: unknown key ({dotted(parts[:i])} has no sub-keys)")
            if not isinstance(node, dict):
                raise ConfigError(
                    f"{here}: cannot set a key in {dotted(parts[:i])} = {show_value(node)}"
                )
            if not last and node.get(part) is None:  # descend into the default
                default = field.get_default(call_default_factory=True) if model else None
                empty: Any = [] if isinstance(parts[i + 1], int) else {}
                if isinstance(default, BaseModel):  # {} is the section's defaults, and an
                    default = {}  # algorithm block must not inherit firm's options
                node[part] = empty if default is None else to_jsonable_python(default)
        if last:
            node[part] = value
        else:
            node = node[part]


def _open(model: type[BaseModel]) -> bool:
    """Does the section take keys beyond its fields (extra='allow', e.g. AlgorithmConfig)?"""
    return model.model_config.get("extra") == "allow"


# --------------------------------------------------------------------------- public API


def config_from_dict(data: dict[str, Any] | None, overrides: Sequence[str] = ()) -> FirmConfig:
    """Validate a plain dict (as read from YAML) after applying dotted ``key=value`` overrides.

    A section given as null (e.g. a YAML section whose lines are all commented out) means
    "all defaults". The input is not modified.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config = {show_value(data)}: the top level must be a mapping of sections"
        )
    sections = set(FirmConfig.model_fields) - {"rewards"}
    raw = {k: v for k, v in copy.deepcopy(data).items() if not (v is None and k in sections)}
    for override in overrides:
        _apply_override(raw, override)
    try:
        return FirmConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, FirmConfig)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> FirmConfig:
    """Read a YAML config (None = all defaults), apply overrides and validate."""
    data = None
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
        try:
            data = yaml.load(text, Loader=YamlLoader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise _yaml_error(str(path), exc) from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections, not {kind_of(data)}"
            )
    return config_from_dict(data, overrides)


def dump_config(config: FirmConfig) -> str:
    """The full config as YAML, keys in model order; `load_config` of it gives an equal config."""
    return yaml.dump(
        config.model_dump(mode="json"),
        Dumper=YamlDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )


def save_config(config: FirmConfig, path: str | Path) -> Path:
    """Write `dump_config(config)` to path (creating parent directories); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(config), encoding="utf-8")
    return path
