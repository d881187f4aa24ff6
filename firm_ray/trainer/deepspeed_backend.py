"""DeepSpeed optimizer backend: the FIRM step through a DeepSpeed engine (ZeRO stage 0, 1 or 2).

ZeRO owns the gradients (stage 2 partitions them in backward hooks), so a hand-made gradient
cannot be written into ``.grad`` as the torch backend does. Instead ``apply`` backpropagates the
scalar ``sum_m lambda_m L_m (+ proximal term)`` with lambda held constant, whose gradient is the
FIRM direction, through ``engine.backward`` and steps with ``engine.step``.

One engine per trainer process, built once; one rank (``world_size = 1``): clients are
independent processes, never a data-parallel group. Rounds do not rebuild it: ``reset`` clears
the optimizer state (``state.clear()``: AdamW's step counters and moments, SGD's momentum
buffer) and re-reads ZeRO's fp32
master weights from the model parameters (``refresh_fp32_params``), into which the trainer has
just loaded the global adapter; without that re-read, ZeRO-2's first step of a round would
write the stale master copy back over the loaded adapter (measured: 1.2e-2 max abs off the
torch backend's adapter when the engine had been built over another adapter). ``reset`` costs
0.05 ms; a rebuild would need ``engine.destroy()`` (ZeRO-2 hooks every LoRA parameter) and a
new ``deepspeed.initialize`` (0.6 s for the first ZeRO-2 engine of a process on the built-in
model, more for larger adapters).

Cost: the trainer's per-objective gradients come from its own backward, and the engine needs a
second one through the combined loss (``needs_graph``): +15 ms per step on the built-in model
(batch 16 x 12 new tokens), about one extra backward. Tested with DeepSpeed 0.19.8, ZeRO 0/1/2.

Configuration: ``trainer.deepspeed_config`` (a JSON or YAML file) is read, then completed from
the TrainerConfig so both backends optimize the same thing, with the same optimizer (adamw or
sgd, :func:`firm_ray.trainer.backends.resolve_optimizer`; see :func:`resolve_config`).

Environment: on CPU the accelerator is ``cpu`` and the process group ``gloo``; on GPU ``nccl``.
The group is initialized from a file store (no TCP store listening on any interface) and gloo
uses the loopback interface. DeepSpeed's CPU communication backend JIT-builds a shared-memory
all-reduce op (``deepspeed_shm_comm``: 51 s of gcc on 2 cores, then cached under
$TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions) in ``init_distributed``, whatever the
optimizer; it only serves several ranks on one host, so with one rank it is skipped here (no
compiler needed). ``"torch_adam": true`` uses torch.optim.AdamW; without it DeepSpeed picks
its FusedAdam, whose CPU op (``fused_adam``) is JIT-built on first use (1-2 minutes here).

Debugging: ``FIRM_RAY_DEEPSPEED_CHECK=1`` (or ``check_grads=True``) asserts after every
``engine.backward`` that the engine's gradient equals the trainer's ``direction``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from firm_ray.config import TrainerConfig
from firm_ray.trainer.backends import resolve_optimizer

log = logging.getLogger(__name__)

CHECK_ENV = "FIRM_RAY_DEEPSPEED_CHECK"

# torch.optim.AdamW's defaults: what the torch backend uses.
_BETAS = (0.9, 0.999)
_EPS = 1e-8
_TORCH_NAMES = {"adamw": "AdamW", "sgd": "SGD"}
_ADAM_ONLY_KEYS = ("betas", "eps", "adam_w_mode", "amsgrad", "bias_correction")
_ADAM_BUILD_KEYS = ("torch_adam",)  # which Adam implementation: meaningless for SGD, dropped


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config file that is missing, unreadable or unusable (one-line message)."""


# ------------------------------------------------------------------------------ configuration
def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The DeepSpeed config at ``path`` (JSON, or YAML for .yaml/.yml) as a dict."""
    where = f"trainer.deepspeed_config = {str(path)!r}"
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "no such file"
        raise DeepSpeedConfigError(f"{where}: {what} (resolved to {file.resolve()})")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DeepSpeedConfigError(f"{where}: cannot read it: {err}") from None
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            message = str(err).replace("\n", " ")
            raise DeepSpeedConfigError(f"{where}: not valid YAML: {message}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DeepSpeedConfigError(
                f"{where}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                "DeepSpeed configs cannot hold comments, use a '_comment' key"
            ) from None
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(
            f"{where}: must hold a JSON object (a mapping), got {type(data).__name__}"
        )
    return data


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=False))
    try:
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return a != b


def _sgd_optimizer(
    opt_type: Any, params: dict[str, Any], cfg: TrainerConfig, lr: float, source: str
) -> tuple[str, dict[str, Any]]:
    """The DeepSpeed optimizer type and params of an SGD client: DeepSpeed builds any type it
    does not know from torch.optim by name, so "SGD" is torch.optim.SGD. A file that names
    another optimizer, or sets an Adam-only key, contradicts the client's optimizer: an error,
    since its "auto" values (the learning rate) would belong to the other optimizer."""
    if not _is_auto(opt_type) and str(opt_type).lower() != "sgd":
        raise DeepSpeedConfigError(
            f"{source}: optimizer.type = {opt_type!r} but the client optimizer is 'sgd' "
            f"(trainer.optimizer = {cfg.optimizer!r}, None = the algorithm's default); set "
            "optimizer.type to 'auto' or 'SGD', or set trainer.optimizer"
        )
    out = {}
    for key, value in params.items():
        if key in _ADAM_BUILD_KEYS:
            continue
        if key in _ADAM_ONLY_KEYS:
            if not _is_auto(value):
                raise DeepSpeedConfigError(
                    f"{source}: optimizer.params.{key} = {value!r} is an Adam setting but the "
                    "client optimizer is 'sgd'; remove it or set it to 'auto'"
                )
            continue  # "auto" Adam-only keys of a shared file: nothing to fill for SGD
        out[key] = value
    return "SGD", out


def resolve_config(
    raw: Mapping[str, Any],
    cfg: TrainerConfig,
    on_gpu: bool,
    source: str = "the DeepSpeed config",
    algorithm_default: str = "adamw",
) -> dict[str, Any]:
    """Complete a DeepSpeed config from ``cfg`` so both backends optimize the same thing.

    The optimizer is the torch backend's (:func:`firm_ray.trainer.backends.resolve_optimizer`:
    ``trainer.optimizer``, or ``algorithm_default`` when None). Filled where missing or
    ``"auto"`` (like Hugging Face's integration): for adamw, AdamW with ``lr``, ``weight_decay =
    trainer.weight_decay``, torch's betas (0.9, 0.999) and eps 1e-8, ``torch_adam: true``; for
    sgd, torch.optim.SGD with ``lr``, ``momentum = trainer.momentum`` and ``weight_decay`` (the
    Adam-only keys set to "auto" are dropped; under ZeRO 1/2 ``zero_allow_untested_optimizer``
    is set, which DeepSpeed requires for torch's SGD); ``gradient_clipping =
    trainer.max_grad_norm`` (0 = off); micro batch 1, no gradient accumulation; fp32 unless a GPU
    is present and the file enables bf16/fp16. Other explicit values win, with a warning when
    they contradict the trainer config. Structural requirements (one optimizer step per
    backward, ZeRO stage <= 2) and an optimizer type or Adam-only key contradicting an SGD
    client raise :class:`DeepSpeedConfigError`. Keys starting with ``_`` (comments) are dropped.
    """
    name, lr = resolve_optimizer(cfg, algorithm_default)
    out: dict[str, Any] = {k: v for k, v in raw.items() if not str(k).startswith("_")}

    def contradict(key: str, value: Any, ours: Any) -> None:
        warnings.warn(
            f"{source}: {key} = {value!r} differs from the torch backend's {ours!r} (from the "
            f"trainer config or torch's {_TORCH_NAMES[name]} defaults); the file's value is used, "
            "so the deepspeed and torch backends no longer optimize the same thing",
            stacklevel=3,
        )

    optimizer = out.get("optimizer") or {}
    if not isinstance(optimizer, Mapping):
        raise DeepSpeedConfigError(f"{source}: optimizer must be an object, got {optimizer!r}")
    optimizer = dict(optimizer)
    params = dict(optimizer.get("params") or {})
    if name == "sgd":
        opt_type, params = _sgd_optimizer(optimizer.get("type", "auto"), params, cfg, lr, source)
        ours: dict[str, Any] = {
            "lr": lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
        }
    else:
        opt_type = optimizer.get("type", "auto")
        if _is_auto(opt_type):
            opt_type = "AdamW"
        # DeepSpeed's "Adam" is AdamW (decoupled weight decay) unless adam_w_mode is false
        is_adamw = str(opt_type).lower() == "adamw" or (
            str(opt_type).lower() == "adam" and params.get("adam_w_mode", True) is not False
        )
        if not is_adamw:
            contradict("optimizer.type", opt_type, "AdamW")
        ours = {"lr": lr, "weight_decay": cfg.weight_decay, "betas": list(_BETAS), "eps": _EPS}
    for key, value in ours.items():
        if key not in params or _is_auto(params[key]):
            params[key] = value
        elif _differs(params[key], value):
            contradict(f"optimizer.params.{key}", params[key], value)
    if name == "adamw":
        if "torch_adam" not in params or _is_auto(params["torch_adam"]):
            params["torch_adam"] = True
        elif not params["torch_adam"]:
            log.info(
                "%s: torch_adam is false: DeepSpeed JIT-builds its Adam op on first use", source
            )
    out["optimizer"] = {**optimizer, "type": opt_type, "params": params}
    if "scheduler" in out:
        scheduler = out["scheduler"]
        kind = scheduler.get("type") if isinstance(scheduler, Mapping) else scheduler
        contradict("scheduler", kind, "a constant learning rate")

    # clipping: the same global-norm clip as torch.nn.utils.clip_grad_norm_
    clip = 0.0 if cfg.max_grad_norm is None else float(cfg.max_grad_norm)
    if "gradient_clipping" not in out or _is_auto(out["gradient_clipping"]):
        out["gradient_clipping"] = clip
    elif _differs(out["gradient_clipping"], clip):
        contradict("gradient_clipping", out["gradient_clipping"], clip)

    # batch bookkeeping: the trainer calls backward once per optimizer step, on one rank
    gas = out.get("gradient_accumulation_steps", "auto")
    if _is_auto(gas):
        gas = 1
    if gas != 1:
        raise DeepSpeedConfigError(
            f"{source}: gradient_accumulation_steps = {gas!r}: must be 1 or 'auto' (the trainer "
            "takes one optimizer step per backward)"
        )
    out["gradient_accumulation_steps"] = 1
    micro = out.get("train_micro_batch_size_per_gpu", "auto")
    micro = 1 if _is_auto(micro) else micro
    out["train_micro_batch_size_per_gpu"] = micro
    batch = out.get("train_batch_size", "auto")
    if _is_auto(batch):
        out["train_batch_size"] = micro
    elif batch != micro:
        raise DeepSpeedConfigError(
            f"{source}: train_batch_size = {batch!r} must equal train_micro_batch_size_per_gpu "
            f"({micro!r}) on one rank with no accumulation, or be 'auto'"
        )

    # precision: fp32 on CPU; bf16/fp16 only on a GPU and only when the file asks
    for key in ("bf16", "fp16"):
        section = out.get(key)
        if section is None:
            continue
        section = dict(section)
        enabled = section.get("enabled", False)
        if _is_auto(enabled):
            enabled = False
        if enabled and not on_gpu:
            warnings.warn(f"{source}: {key}.enabled ignored on CPU (fp32)", stacklevel=2)
            enabled = False
        section["enabled"] = bool(enabled)
        out[key] = section

    # ZeRO: stages 0-2 (stage 3 partitions the parameters themselves: the adapter could no
    # longer be read and loaded through the model)
    zero = dict(out.get("zero_optimization") or {})
    stage = zero.get("stage", 0)
    stage = 0 if _is_auto(stage) else stage
    if stage not in (0, 1, 2):
        raise DeepSpeedConfigError(
            f"{source}: zero_optimization.stage = {stage!r}: must be 0, 1 or 2 (stage 3 "
            "partitions the LoRA parameters, which the trainer loads and reads every round)"
        )
    zero["stage"] = stage
    for key, value in list(zero.items()):
        if _is_auto(value):
            del zero[key]  # DeepSpeed's default
    out["zero_optimization"] = zero
    if name == "sgd" and stage > 0:
        # torch.optim.SGD is not on ZeRO's list of tested optimizers; one rank steps it on the
        # fp32 master partition like any elementwise optimizer (tested: test_knobs.py)
        out.setdefault("zero_allow_untested_optimizer", True)
    out.setdefault("steps_per_print", 2**62)  # DeepSpeed's progress lines: effectively off
    out.setdefault("wall_clock_breakdown", False)
    return out


# ------------------------------------------------------------------------------- environment
def _loopback_interface() -> str | None:
    with contextlib.suppress(OSError, AttributeError):
        for _, name in socket.if_nameindex():
            if name in ("lo", "lo0"):
                return name
    return None


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _without_shm_op(deepspeed: Any) -> Iterator[None]:
    """Skip the JIT build of DeepSpeed's CPU shared-memory all-reduce op (one rank: unused)."""
    try:  # the module, not deepspeed.comm's attribute "torch" (the torch package)
        comm_torch = importlib.import_module("deepspeed.comm.torch")
    except ImportError:
        comm_torch = None
    original = getattr(comm_torch, "build_shm_op", None)
    if original is None:
        yield
        return
    comm_torch.build_shm_op = lambda: None
    try:
        yield
    finally:
        comm_torch.build_shm_op = original


def init_single_rank(deepspeed: Any, device: torch.device) -> None:
    """One-rank process group for DeepSpeed, if none exists: gloo on CPU, nccl on GPU.

    Sets RANK=0, LOCAL_RANK=<device index>, WORLD_SIZE=1, MASTER_ADDR=127.0.0.1 and a free
    MASTER_PORT where unset (DeepSpeed reads them), but rendezvouses through a file store, so
    nothing listens on a network port; gloo is pinned to the loopback interface.
    """
    if deepspeed.comm.is_initialized():
        return
    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1":
        raise RuntimeError(
            f"the deepspeed backend runs one rank per trainer process, but WORLD_SIZE={world} "
            "is set in this process"
        )
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", str(device.index or 0))
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_local_port()))
    loopback = _loopback_interface()
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        if device.type == "cuda":
            os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    fd, store = tempfile.mkstemp(prefix="firm_ray_ds_store_")
    os.close(fd)
    os.unlink(store)  # the file store creates it; a stale file would hold old rendezvous data
    backend = "nccl" if device.type == "cuda" else "gloo"
    with _without_shm_op(deepspeed):
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            init_method=f"file://{store}",
            rank=0,
            world_size=1,
            verbose=False,
        )


def _import_deepspeed(device: torch.device) -> Any:
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as err:
        raise ImportError(
            f"trainer.backend = 'deepspeed' needs the deepspeed package ({err}); "
            "install it or use trainer.backend = 'torch'"
        ) from err
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator().device_name()
    if accel != device.type:
        raise RuntimeError(
            f"DeepSpeed's accelerator is {accel!r} but the model is on {device}; set "
            f"DS_ACCELERATOR={device.type} before deepspeed is first imported"
        )
    return deepspeed


# ----------------------------------------------------------------------------------- backend
class EngineForward:
    """Forward passes through a DeepSpeed engine's model, without engine.forward's output hooks.

    ``engine.forward`` (DeepSpeed 0.19) registers a hook on the model outputs that runs the
    engine's backward prologue on the first backward reaching them. The trainer's first backward
    is its own per-objective ``torch.autograd.grad`` (firm_ray.core.gradients), not
    ``engine.backward``: at ZeRO stage 0 the hook then raises ("Direct calls to
    tensor.backward() are not supported ... using ZeRO stage 0"), at stage 2 it runs ZeRO's
    gradient-reduction epilogue outside ``engine.backward`` (IndexError in reduce_ipg_grads).
    So forward passes call ``engine.module`` with the rest of engine.forward's set-up (ZeRO's
    per-step hook counters, DeepSpeed autocast), and :meth:`DeepSpeedBackend.apply` registers
    the same prologue hook on the combined loss, where it fires inside ``engine.backward``.
    The trainer's forward hooks on the LoRA Linears are on modules inside ``engine.module``.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        try:
            from deepspeed.runtime.torch_autocast import autocast_if_enabled
        except ImportError:
            autocast_if_enabled = None
        self._autocast = autocast_if_enabled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        clear = getattr(self.engine.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()
        ctx = (
            self._autocast(self.engine) if self._autocast is not None else contextlib.nullcontext()
        )
        with ctx:
            return self.engine.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


class DeepSpeedBackend:
    """A DeepSpeed engine over the LoRA parameters; one optimizer step per ``apply``."""

    needs_graph = True

    def __init__(
        self,
        model: Any,
        params: Sequence[torch.nn.Parameter],
        cfg: TrainerConfig,
        check_grads: bool | None = None,
        algorithm_default: str = "adamw",
    ) -> None:
        if cfg.deepspeed_config is None:
            raise DeepSpeedConfigError(
                "trainer.deepspeed_config = None: required when trainer.backend is 'deepspeed'"
            )
        self.cfg = cfg
        self.params = list(params)
        if not self.params:
            raise ValueError("the deepspeed backend got no trainable parameters")
        self.check_grads = (
            os.environ.get(CHECK_ENV, "") not in ("", "0") if check_grads is None else check_grads
        )
        device = self.params[0].device
        raw = load_config_file(cfg.deepspeed_config)
        self.ds_config = resolve_config(
            raw,
            cfg,
            on_gpu=device.type == "cuda",
            source=f"{cfg.deepspeed_config}",
            algorithm_default=algorithm_default,
        )
        self.optimizer_name, self.learning_rate = resolve_optimizer(cfg, algorithm_default)
        deepspeed = _import_deepspeed(device)
        init_single_rank(deepspeed, device)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=self.params, config=self.ds_config
        )
        self.stage = int(self.engine.zero_optimization_stage())
        self._safe_get_full_grad = deepspeed.utils.safe_get_full_grad
        self._forward = EngineForward(self.engine)
        try:  # DeepSpeed 0.19: engine.forward arms the backward prologue on its outputs
            from deepspeed.runtime.utils import register_output_backward_hooks
        except ImportError:
            register_output_backward_hooks = None
        self._arm_prologue = (
            register_output_backward_hooks if hasattr(self.engine, "_backward_prologue") else None
        )

    @property
    def forward_model(self) -> Any:
        return self._forward

    def reset(self) -> None:
        """Fresh optimizer state (AdamW moments and step counters, or SGD's momentum buffer),
        and the fp32 master weights re-read from the model parameters."""
        optimizer = self.engine.optimizer
        base = getattr(optimizer, "optimizer", optimizer)  # ZeRO / mixed-precision wrappers
        base.state.clear()
        if hasattr(optimizer, "refresh_fp32_params"):
            optimizer.refresh_fp32_params()
        self.engine.zero_grad()

    def apply(self, direction: torch.Tensor, combined_loss: Callable[[], torch.Tensor]) -> float:
        loss = combined_loss()
        if self._arm_prologue is not None:
            # what engine.forward would have registered on the model outputs (see EngineForward)
            self._arm_prologue(
                loss,
                preprocess_once_fn=self.engine._backward_prologue,
                preprocess_per_tensor_fn=self.engine._backward_prologue_per_tensor,
            )
        self.engine.backward(loss)
        norm = None
        if self.check_grads or self.stage == 0:
            flat = self._engine_grad()
            if self.check_grads:
                self._check(flat, direction)
            norm = float(flat.double().norm())
        self.engine.step()
        if norm is None:
            norm = self.engine.get_global_grad_norm()
            norm = float(norm) if norm is not None else float(direction.norm())
        return norm

    def close(self) -> None:
        """Remove the engine's hooks from the model (before building another engine on it)."""
        destroy = getattr(self.engine, "destroy", None)
        if destroy is not None:
            destroy()

    # -------------------------------------------------------------------------- internals
    def _engine_grad(self) -> torch.Tensor:
        """The engine's flat gradient (after backward, before step), in ``params`` order."""
        chunks = []
        for p in self.params:
            grad = self._safe_get_full_grad(p)
            chunks.append(
                torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
                if grad is None
                else grad.detach().reshape(-1).float()
            )
        return torch.cat(chunks)

    def _check(self, flat: torch.Tensor, direction: torch.Tensor) -> None:
        want = direction.detach().to(flat.device, torch.float64)
        err = float((flat.double() - want).norm())
        scale = float(want.norm()) + 1e-12
        if not err <= 1e-4 * scale + 1e-7:
            raise AssertionError(
                f"deepspeed backend: engine gradient differs from the FIRM direction: "
                f"||g_engine - d|| = {err:.3e}, ||d|| = {scale:.3e}"
            )
