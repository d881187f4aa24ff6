"""Pre-flight: check a run's inputs on the driver before any actor or run directory exists.

Why: data, models, reward modules and the output directory are only touched inside Ray workers,
so a typo there used to surface as a long ``ActorDiedError`` traceback after Ray had started,
with a half-written run directory. `preflight` finds those mistakes first, with the same rules
the workers apply (`firm_ray.data.sources`' own parser, `firm_ray.rewards.custom`'s own import),
and raises `PreflightError`: one line per problem, naming the config key, the value and what
to do, like `ConfigError`.

What is checked (nothing is downloaded, no model is loaded, no reward is called):

- ``data``: local files no larger than `FULL_CHECK_BYTES` are loaded and partitioned exactly as
  a worker will (every row, the eval hold-out, the partition over clients); larger files and
  local Hugging Face datasets have their first `FIRST_ROWS` records parsed. A hub dataset is
  looked up in the local cache when hub access is off, and not checked when it is on (reported
  as skipped: checking it would download it). ``builtin`` is loaded and partitioned (cheap).
- ``model.name_or_path`` / ``model.tokenizer`` and each ``hf_reward_model`` reward's
  ``kwargs.model`` / ``kwargs.tokenizer`` (and a ``relevance`` reward's ``kwargs.model``): a
  local directory (a model needs its config.json), or a hub id. With hub access off
  (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) a hub id must be in the local Hugging Face cache.
  With it on, a hub id is not checked (reported as skipped). ``builtin:tiny-world`` is fine.
- ``python`` rewards: the dotted path is imported and must name a callable (not called).
- ``experiment.output_dir``: a probe file is created and deleted in it (missing parents are
  created as a run would, and removed again), and it must have `MIN_FREE_BYTES` free or four
  times the estimated adapter size (a checkpoint written atomically beside the previous one,
  plus the final adapter), whichever is larger.

This module imports no Ray (it runs before Ray starts, also from ``check-config``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firm_ray.config import FirmConfig, LoraConfig

__all__ = [
    "FIRST_ROWS",
    "FULL_CHECK_BYTES",
    "MIN_FREE_BYTES",
    "PreflightError",
    "PreflightReport",
    "adapter_bytes_estimate",
    "hub_access_off",
    "preflight",
]

FULL_CHECK_BYTES = 8 * 2**20
"""Local data files up to this size are loaded whole on the driver (every row checked): about
1.3-1.7 s for 8 MiB (78,000 short prompts) on 2 busy cores; 82 MiB took 26 s, hence the cap."""
FIRST_ROWS = 1000
"""Records parsed from the start of a larger source, or of a local Hugging Face dataset."""
MIN_FREE_BYTES = 64 * 2**20
"""Free space the output directory needs at the least (the floor of the checkpoint estimate)."""
BUILTIN_PREFIX = "builtin:"
BUILTIN_WORLD = "builtin:tiny-world"  # == firm_ray.models.warmstart.BUILTIN_WORLD (no torch here)
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class PreflightError(ValueError):
    """Inputs a run cannot use; ``str(err)`` is one line per problem (``problems``), each
    naming the config key, the value and what to do."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass
class PreflightReport:
    """What was checked (``checked``) and what could not be checked here (``skipped``)."""

    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the console: what passed, and what was skipped (and why)."""
        text = "pre-flight ok: " + "; ".join(self.checked)
        if self.skipped:
            text += f" | {len(self.skipped)} not checked: " + "; ".join(self.skipped)
        return text


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_access_off() -> str | None:
    """The environment variable that switches Hugging Face hub access off, if one does."""
    return next((name for name in _OFFLINE_VARS if _truthy(os.environ.get(name))), None)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


# --------------------------------------------------------------------------- models


def _hub_cached(repo_id: str, filenames: tuple[str, ...], revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(found, str):
            return True
    return False


def _check_model_path(
    key: str, value: str, needed: tuple[str, ...], revision: str | None, report: PreflightReport
) -> tuple[str | None, Path | None]:
    """(problem or None, local config.json if one was found) for a model or tokenizer path.

    ``needed``: files of which a local directory must hold at least one (empty: any directory).
    """
    if value == BUILTIN_WORLD:
        return None, None
    if value.startswith(BUILTIN_PREFIX):
        return f"{key} {value!r}: unknown built-in model; available: {BUILTIN_WORLD}", None
    path = Path(value).expanduser()
    if path.is_dir():
        if needed and not any((path / name).is_file() for name in needed):
            return (
                f"{key} {value!r}: the directory has no {' or '.join(needed)} (not a Hugging "
                "Face model directory); point it at the directory holding the saved model",
                None,
            )
        config = path / "config.json"
        return None, config if config.is_file() else None
    if path.exists():
        return f"{key} {value!r}: is a file; give the model's directory", None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return (
            f"{key} {value!r}: not found (no such directory, and not a Hugging Face hub id); "
            "give an existing local directory or a hub id",
            None,
        )
    offline = hub_access_off()
    if offline is None:
        report.skipped.append(f"{key} {value!r} (hub id: not downloaded to check)")
        return None, None
    if not _hub_cached(value, needed or ("tokenizer_config.json", "config.json"), revision):
        return (
            f"{key} {value!r}: not found (no such directory; hub access is off: {offline} is "
            "set, and it is not in the local Hugging Face cache); give a local directory, or "
            f"unset {offline} to download it",
            None,
        )
    return None, _cached_config(value, revision)


def _cached_config(repo_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found) if isinstance(found, str) else None


def _check_models(config: FirmConfig, report: PreflightReport) -> tuple[list[str], Path | None]:
    """Problems with every model and tokenizer path of the config, and the policy's config.json
    when it is on this machine (for the adapter size estimate)."""
    model = config.model
    problems: list[str] = []
    problem, model_config = _check_model_path(
        "model.name_or_path", model.name_or_path, ("config.json",), model.revision, report
    )
    problems += [problem] if problem else []
    if model.tokenizer is not None and model.tokenizer != model.name_or_path:
        problem, _ = _check_model_path("model.tokenizer", model.tokenizer, (), None, report)
        problems += [problem] if problem else []
    for i, spec in enumerate(config.rewards):
        kwargs = spec.kwargs
        paths: list[tuple[str, tuple[str, ...]]] = []
        if spec.type == "hf_reward_model":
            paths = [("model", ("config.json",)), ("tokenizer", ())]
        elif spec.type == "relevance":
            paths = [("model", ())]
        for name, needed in paths:
            value = kwargs.get(name)
            if isinstance(value, str) and value:
                key = f"rewards[{i}].kwargs.{name} (reward {spec.name!r})"
                revision = kwargs.get("revision") if name == "model" else None
                problem, _ = _check_model_path(key, value, needed, revision, report)
                problems += [problem] if problem else []
    report.checked.append("model paths")
    return problems, model_config


# --------------------------------------------------------------------------- rewards


def _check_rewards(config: FirmConfig, report: PreflightReport) -> list[str]:
    problems: list[str] = []
    python = [(i, spec) for i, spec in enumerate(config.rewards) if spec.type == "python"]
    if not python:
        return problems
    from firm_ray.rewards.base import RewardError  # imports torch: only when needed
    from firm_ray.rewards.custom import resolve_callable

    for i, spec in python:
        key = f"rewards[{i}].kwargs.function (reward {spec.name!r})"
        function = spec.kwargs.get("function")
        if function is None:
            problems.append(f"{key}: required for a python reward ('package.module.func')")
            continue
        try:
            resolve_callable(function)
        except RewardError as err:
            problems.append(
                f"{key}: {err}; it must be importable on the driver and on every worker "
                "(installed, or on PYTHONPATH / the runtime_env working_dir)"
            )
    report.checked.append(f"{len(python)} python reward(s) importable")
    return problems


# --------------------------------------------------------------------------- data


def _data_files(config: FirmConfig) -> list[Path] | None:
    """The local files a file source reads, or None when it is not (only) local files."""
    data = config.data
    if data.source not in ("jsonl", "csv", "parquet"):
        return None
    paths = [p for p in (data.path, data.eval_split) if p is not None]
    return [Path(p) for p in paths]


def _check_data(config: FirmConfig, report: PreflightReport) -> list[str]:
    from firm_ray.data.partition import partition_prompts
    from firm_ray.data.sources import DataError, check_first_rows, load_prompts

    data = config.data
    files = _data_files(config)
    hub_id = data.source == "hf" and data.path is not None and not Path(data.path).exists()
    if hub_id and hub_access_off() is None:
        report.skipped.append(f"data.path {data.path!r} (hub dataset: not downloaded to check)")
        return []
    whole = data.source == "builtin" or (
        files is not None
        and all(not p.is_file() or p.stat().st_size <= FULL_CHECK_BYTES for p in files)
    )
    try:
        if not whole:
            rows = check_first_rows(data, FIRST_ROWS)
            report.checked.append(f"data: first {rows:,} record(s) parsed")
            return []
        splits = load_prompts(data, config.experiment.seed)
    except DataError as err:
        message = str(err)
        if hub_id:
            message = (
                f"data.path {data.path!r}: not found locally and hub access is off "
                f"({hub_access_off()} is set); give a local dataset, or unset it to download "
                f"({message})"
            )
        return [message]
    try:
        partition_prompts(
            splits.train,
            config.federation.num_clients,
            data.partition,
            config.experiment.seed,
            category_field_name=data.category_field,
        )
    except DataError as err:
        return [f"data.partition ({config.federation.num_clients} clients): {err}"]
    report.checked.append(
        f"data: {len(splits.train):,} train / {len(splits.eval):,} eval prompts, partitioned"
    )
    return []


# --------------------------------------------------------------------------- output


_MODULE_SHAPES: dict[str, Callable[[dict[str, int]], int]] = {
    # in + out features of one adapted linear layer, from the model's config.json
    "q_proj": lambda c: c["h"] + c["heads"] * c["head_dim"],
    "k_proj": lambda c: c["h"] + c["kv_heads"] * c["head_dim"],
    "v_proj": lambda c: c["h"] + c["kv_heads"] * c["head_dim"],
    "o_proj": lambda c: c["heads"] * c["head_dim"] + c["h"],
    "gate_proj": lambda c: c["h"] + c["inter"],
    "up_proj": lambda c: c["h"] + c["inter"],
    "down_proj": lambda c: c["inter"] + c["h"],
    "c_attn": lambda c: c["h"] + 3 * c["h"],
    "c_fc": lambda c: c["h"] + c["inter"],
    "c_proj": lambda c: c["inter"] + c["h"],  # the larger of GPT-2's two c_proj layers
}


def adapter_bytes_estimate(model_config: dict[str, Any], lora: LoraConfig) -> int:
    """float32 bytes of the LoRA adapter: r x (in + out) per adapted layer per block, from the
    model's config.json (an estimate: unknown module names count as two of the widest layers;
    ``target_modules: null`` counts as two attention projections, peft's usual default)."""
    h = int(model_config.get("hidden_size") or model_config.get("n_embd") or 0)
    layers = int(model_config.get("num_hidden_layers") or model_config.get("n_layer") or 0)
    heads = int(model_config.get("num_attention_heads") or model_config.get("n_head") or 1)
    inter = int(model_config.get("intermediate_size") or model_config.get("n_inner") or 4 * h)
    head_dim = int(model_config.get("head_dim") or (h // heads if heads else h))
    kv = int(model_config.get("num_key_value_heads") or heads)
    dims = {"h": h, "heads": heads, "head_dim": head_dim, "kv_heads": kv, "inter": inter}
    targets = lora.target_modules or ["q_proj", "v_proj"]
    widest = 2 * max(h, inter)
    per_block = sum(_MODULE_SHAPES.get(t, lambda _: widest)(dims) for t in targets)
    return 4 * lora.r * per_block * layers


def _created_parents(path: Path) -> list[Path]:
    """The directories of ``path`` that do not exist yet, outermost first."""
    missing = []
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing.append(p)
    return missing[::-1]


def _os_reason(err: OSError) -> str:
    name = errno.errorcode.get(err.errno or 0, type(err).__name__)
    return f"{err.strerror or err} ({name})"


def _check_output(out: Path, key: str, need: int, report: PreflightReport) -> list[str]:
    """Create-and-delete a probe file in ``out`` (creating, then removing, missing parents)
    and check its free space against ``need`` bytes."""
    created = _created_parents(out)
    fix = "choose a writable directory or fix its permissions"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return [f"{key} {str(out)!r}: cannot be created: {_os_reason(err)}; {fix}"]
    try:
        try:
            fd, probe = tempfile.mkstemp(prefix=".firm-ray-preflight-", dir=out)
            try:
                os.write(fd, b"firm-ray pre-flight probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                fix = "free some space or choose another directory"
            return [f"{key} {str(out)!r}: not writable: {_os_reason(err)}; {fix}"]
        free = shutil.disk_usage(out).free
        if free < need:
            return [
                f"{key} {str(out)!r}: {_mib(free)} free, a run needs at least {_mib(need)} "
                "(a checkpoint beside the previous one and the final adapter); free some space "
                "or choose another directory"
            ]
        report.checked.append(f"output dir writable ({_mib(free)} free, {_mib(need)} needed)")
        return []
    finally:
        for p in reversed(created):  # leave no trace: the run creates them again
            with contextlib.suppress(OSError):
                p.rmdir()


def _free_space_needed(config: FirmConfig, model_config: Path | None) -> int:
    if model_config is None:
        return MIN_FREE_BYTES
    try:
        shape = json.loads(model_config.read_text())
        return max(MIN_FREE_BYTES, 4 * adapter_bytes_estimate(shape, config.lora))
    except (OSError, ValueError, TypeError):
        return MIN_FREE_BYTES


# --------------------------------------------------------------------------- entry point


def preflight(
    config: FirmConfig,
    *,
    output_dir: str | Path | None = None,
    output_key: str = "experiment.output_dir",
    check_output: bool = True,
) -> PreflightReport:
    """Check ``config``'s data, models, reward modules and output directory (see the module
    docstring); returns what was checked and skipped, or raises PreflightError listing every
    problem found. ``output_dir`` (named ``output_key`` in messages) replaces
    experiment.output_dir: a resumed run's directory, a sweep's output directory."""
    report = PreflightReport()
    problems: list[str] = []
    model_problems, model_config = _check_models(config, report)
    problems += model_problems
    problems += _check_rewards(config, report)
    problems += _check_data(config, report)
    if check_output:
        out = Path(output_dir if output_dir is not None else config.experiment.output_dir)
        need = _free_space_needed(config, model_config)  # the floor for builtin:tiny-world
        problems += _check_output(out.expanduser(), output_key, need, report)
    if problems:
        raise PreflightError(problems)
    return report
