"""User rewards as plain Python callables named by a dotted path in the config.

A path keeps the config a plain, serializable YAML tree and lets each Ray worker import the
function itself (nothing is pickled from the driver). The module must be importable on every
worker (installed, or on ``PYTHONPATH`` / the Ray runtime_env working_dir).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from firm_ray.rewards.base import Reward, RewardError

__all__ = ["PythonReward", "resolve_callable"]


def resolve_callable(path: str) -> Callable[..., Any]:
    """The callable at ``"package.module.func"`` or ``"package.module:func"`` (``:`` allows
    nested attributes such as ``"pkg.mod:Class.method"``); RewardError naming the path."""
    if not isinstance(path, str) or not path.strip():
        raise RewardError(f"python reward function {path!r}: must be a dotted path string")
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
    else:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise RewardError(
            f"python reward function {path!r}: must look like 'package.module.func' or "
            "'package.module:func'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise RewardError(
            f"python reward function {path!r}: cannot import module {module_name!r} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise RewardError(
                f"python reward function {path!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise RewardError(
            f"python reward function {path!r}: is a {type(obj).__name__}, not a callable"
        )
    return obj


class PythonReward(Reward):
    """``function(prompts, completions, **kwargs) -> list[float]`` (or an array / tensor)."""

    def __init__(self, name: str, function: str, /, **kwargs: Any) -> None:
        super().__init__(name)
        self.path = function
        self.fn = resolve_callable(function)
        self.kwargs = kwargs

    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> Any:
        # whatever the function raises is withheld by Reward.score (it may quote client text)
        return self.fn(list(prompts), list(completions), **self.kwargs)

    def _source(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"PythonReward(name={self.name!r}, function={self.path!r})"
