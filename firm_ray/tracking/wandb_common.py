"""Starting a W&B run the project's way: the mode it may use, and ``wandb.init`` with the fixed
choices (never a login prompt, never a training run stopped by W&B). Shared by the run tracker
(:mod:`firm_ray.tracking.wandb_tracker`) and the sweep-summary run
(:mod:`firm_ray.tracking.wandb_sweep`); ``wandb`` is imported inside the functions only.

- ``offline`` and ``disabled`` need no account. ``online`` without credentials
  (``WANDB_API_KEY``, netrc, settings file) falls back to ``offline`` with a warning instead of
  prompting, and so does an ``online`` ``wandb.init`` that fails (no network).
- ``WANDB_MODE=offline|disabled`` in the environment wins over a less restrictive config, so a CI
  job or a test session keeps W&B off the network without editing configs.
- One run handle per caller (``reinit="create_new"``): nobody finishes a run it did not start.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

__all__ = ["MODES", "effective_mode", "init_run", "usable_mode"]

MODES = ("disabled", "offline", "online")
"""W&B modes, most restrictive first."""


def effective_mode(mode: str) -> str:
    """The config's mode, unless ``WANDB_MODE`` in the environment is more restrictive."""
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}")
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "dryrun":
        env = "offline"
    if env in MODES and MODES.index(env) < MODES.index(mode):
        return env
    return mode


def usable_mode(mode: str) -> str:
    """``online`` only when credentials exist (checked without prompting or any network call);
    otherwise ``offline`` with a warning, so wandb.init never shows a login prompt."""
    mode = effective_mode(mode)
    if mode != "online":
        return mode
    import wandb

    try:
        logged_in = bool(wandb.login(prompt=False, verify=False))
    except Exception:  # a malformed key or settings file: same answer, no credentials
        logged_in = False
    if not logged_in:
        warnings.warn(
            "W&B mode 'online' but no W&B credentials (WANDB_API_KEY, ~/.netrc or `wandb "
            "login`): logging offline instead; upload later with `wandb sync`",
            RuntimeWarning,
            stacklevel=3,
        )
        return "offline"
    return mode


def init_run(mode: str, **kwargs: Any) -> Any:
    """``wandb.init`` with this module's fixed choices; an online start that fails (network,
    server) is retried offline rather than stopping the training run."""
    import wandb

    def init(m: str) -> Any:
        return wandb.init(
            mode=m,  # type: ignore[arg-type]
            reinit="create_new",
            settings=wandb.Settings(quiet=True),
            **kwargs,
        )

    if mode != "online":
        return init(mode)
    try:
        return init(mode)
    except Exception as exc:
        warnings.warn(
            f"W&B online start failed ({type(exc).__name__}: {exc}); logging offline instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return init("offline")
