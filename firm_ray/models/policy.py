"""The policy: a causal LM loaded with ``from_pretrained`` (Hugging Face id or local path) plus a
trainable LoRA adapter from peft. The reference policy is the same model with the adapter
disabled, so there is never a second copy of the weights in memory.

The embedded default (``builtin:tiny-world``) resolves to the warm-start directory built by
firm_ray.models.warmstart and then goes through exactly this code path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from firm_ray.config import LoraConfig, ModelConfig
from firm_ray.core.dtypes import torch_dtype
from firm_ray.models.warmstart import BUILTIN_PREFIX, BUILTIN_WORLD, ensure_world_model


class ModelLoadError(RuntimeError):
    """A model, tokenizer or adapter could not be loaded; the message says which and why."""


def resolve_model_path(name_or_path: str) -> str:
    """Map ``builtin:...`` names to their built directory; other ids and paths pass through."""
    if name_or_path == BUILTIN_WORLD:
        return str(ensure_world_model())
    if name_or_path.startswith(BUILTIN_PREFIX):
        raise ModelLoadError(
            f"model.name_or_path = {name_or_path!r}: unknown built-in model; available: "
            f"{BUILTIN_WORLD}"
        )
    return name_or_path


def resolve_device(device: str) -> torch.device:
    """'auto' is cuda when this process sees a GPU (e.g. a Ray worker given num_gpus), else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device = 'cuda' but no GPU is visible to this process")
    return torch.device(device)


def load_tokenizer(config: ModelConfig) -> Any:
    """Tokenizer with a pad token and left padding (what batched generation needs)."""
    from transformers import AutoTokenizer

    source = resolve_model_path(config.tokenizer or config.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load tokenizer {source!r}: {err}") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer {source!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(config: ModelConfig, device: torch.device | None = None) -> Any:
    """The frozen base causal LM, in eval mode, on ``device``."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_path(config.name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=config.revision,
            dtype=torch_dtype(config.dtype),
            trust_remote_code=config.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load model {source!r}: {err}") from err
    model.to(device or resolve_device(config.device))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    disable_dropout(model)
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero the base model's dropout (as TRL's trainers do): the policy that samples and the
    policy that is trained must be the same function, or PPO ratios are noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def lora_config_for(model: Any, config: LoraConfig) -> Any:
    """peft LoraConfig; ``target_modules=None`` uses peft's per-architecture defaults."""
    from peft import LoraConfig as PeftLoraConfig
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(model.config, "model_type", None)
    targets = config.target_modules
    if targets is None and model_type not in DEFAULTS:
        raise ModelLoadError(
            f"no default LoRA target modules for model type {model_type!r}: set "
            "lora.target_modules (e.g. [q_proj, v_proj])"
        )
    return PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        bias=config.bias,
        task_type="CAUSAL_LM",
        # GPT-2 style Conv1D layers store weights transposed
        fan_in_fan_out=model_type == "gpt2",
    )


@dataclass
class Policy:
    """A base model with one LoRA adapter, its tokenizer and device.

    ``device`` is THE device of a client: every tensor of a local step and of evaluation is
    created on it (rewards may score elsewhere; their scores are moved here). ``eos_token_ids``
    are every id that ends a completion (tokenizer EOS + the model's generation_config list).
    ``generation_overrides`` says what the model's own generation_config would have changed
    about sampling (e.g. Qwen2.5-Instruct's repetition_penalty 1.05); firm_ray samples with its
    config alone, so these are reported, never applied.
    """

    model: Any  # peft.PeftModel
    tokenizer: Any
    device: torch.device
    eos_token_ids: tuple[int, ...] = ()
    generation_overrides: dict[str, Any] = field(default_factory=dict)
    freeze_a: bool = False  # lora.freeze_a: the A matrices stay at their seeded init

    @property
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """pi_ref: the same weights with the adapter switched off (no second model copy)."""
        try:
            with self.model.disable_adapter():
                yield
        finally:
            if self.freeze_a:  # peft re-enabling the adapter marks its weights trainable again
                freeze_lora_a(self.model)

    def format_prompts(self, prompts: Sequence[str]) -> list[str]:
        """Prompts as the model expects them: its chat template when it has one."""
        if getattr(self.tokenizer, "chat_template", None):
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
        return list(prompts)


def load_policy(model_config: ModelConfig, lora_config: LoraConfig, seed: int = 0) -> Policy:
    """Base model + a freshly initialized LoRA adapter (seeded: same seed, same adapter)."""
    from peft import get_peft_model

    device = resolve_device(model_config.device)
    tokenizer = load_tokenizer(model_config)
    base = load_base_model(model_config, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, lora_config_for(base, lora_config))
    if lora_config.freeze_a:
        freeze_lora_a(model)
    model.eval()
    policy = _policy(model, tokenizer, device)
    policy.freeze_a = lora_config.freeze_a
    return policy


# LoRA's A matrices in peft's layers: Linear / Conv (lora_A) and Embedding (lora_embedding_A).
_LORA_A_NAMES = ("lora_A", "lora_embedding_A")


def freeze_lora_a(model: Any) -> int:
    """FFA-LoRA (Sun et al. 2024): every LoRA A matrix keeps its seeded value (requires_grad
    False), so only B (and LoRA biases, per lora.bias) train; returns the number of tensors
    frozen. peft 0.21 has no such option (its "mica" init freezes B, not A).

    Every client starts a round from the global adapter, so A is the same on every client and
    the server's average of the B matrices is exactly the average of the updates B A. Where
    peft supports it (``frozen_peft_weight_names``), A is also registered as frozen so peft's own
    ``set_adapter`` (e.g. when ``disable_adapter()`` ends) leaves it frozen;
    :meth:`Policy.reference` re-freezes for older peft versions.
    """
    from peft.tuners.lora import LoraLayer

    frozen = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for layer_name in _LORA_A_NAMES:
            for adapter in getattr(module, layer_name, {}):
                for param in _adapter_params(getattr(module, layer_name)[adapter]):
                    param.requires_grad_(False)
                    frozen += 1
                registry = getattr(module, "frozen_peft_weight_names", None)
                if isinstance(registry, dict):
                    names = registry.get(adapter, ())
                    if layer_name not in names:  # a new dict: the class attribute is shared
                        module.frozen_peft_weight_names = {
                            **registry,
                            adapter: (*names, layer_name),
                        }
    return frozen


def _adapter_params(item: Any) -> list[torch.nn.Parameter]:
    """The parameters of one adapter's entry: a module (lora_A) or a Parameter (embeddings)."""
    if isinstance(item, torch.nn.Parameter):
        return [item]
    return list(item.parameters())


def load_trained_policy(
    model_config: ModelConfig, adapter_dir: str | Path, trainable: bool = False
) -> Policy:
    """Base model + a saved PEFT adapter directory (``PeftModel.from_pretrained``)."""
    from peft import PeftModel

    device = resolve_device(model_config.device)
    tokenizer = load_tokenizer(model_config)
    base = load_base_model(model_config, device)
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load adapter {str(adapter_dir)!r}: {err}") from err
    model.eval()
    return _policy(model, tokenizer, device)


# Sampling settings a checkpoint's generation_config may carry that would change what is sampled.
_SAMPLING_FIELDS = (
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "min_new_tokens",
    "min_length",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "epsilon_cutoff",
    "eta_cutoff",
    "encoder_repetition_penalty",
)


def _policy(model: Any, tokenizer: Any, device: torch.device) -> Policy:
    """Wrap the model; collect its EOS ids and replace its generation_config by a neutral one.

    transformers fills every field a ``generate(generation_config=...)`` call leaves unset from
    the model's own generation_config, so a checkpoint's repetition penalty or top-k would
    silently change the sampling distribution. The base model keeps only ids (pad, bos, eos).
    """
    from transformers import GenerationConfig

    base = model.get_base_model()
    original = base.generation_config
    eos: list[int] = []
    for source in (tokenizer.eos_token_id, original.eos_token_id, base.config.eos_token_id):
        for token in source if isinstance(source, (list, tuple)) else [source]:
            if token is not None and int(token) not in eos:
                eos.append(int(token))
    if not eos:
        raise ModelLoadError("neither the tokenizer nor the model names an EOS token")
    default = GenerationConfig()
    overrides = {
        name: getattr(original, name)
        for name in _SAMPLING_FIELDS
        if getattr(original, name, None) != getattr(default, name, None)
    }
    base.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=original.bos_token_id,
        eos_token_id=eos,
    )
    return Policy(model, tokenizer, device, tuple(eos), overrides)
