"""Reward models: any ``AutoModelForSequenceClassification`` (hub id or local directory).

Public helpful/harmless reward models differ in how they expect a (prompt, response) pair:
chat-templated conversations (most recent RMs), a tokenizer text pair (DeBERTa-style
cross-encoders) or plain concatenation. ``format`` picks one explicitly, because a wrong guess
yields finite but meaningless scores. Loaded models are cached per process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from firm_ray.core.dtypes import DTYPE_NAMES, torch_dtype
from firm_ray.rewards.base import Reward, RewardError

__all__ = ["FORMATS", "HFRewardModel", "load_reward_model"]

FORMATS = ("chat_template", "concat", "pair")


@functools.cache
def load_reward_model(
    model: str,
    tokenizer: str | None,
    device: str,
    dtype: str,
    revision: str | None,
    trust_remote_code: bool,
) -> tuple[Any, Any]:
    """(model, tokenizer) loaded once per process; eval mode, pad token set, right padding.

    Local directories load with ``local_files_only`` (never a hub call). A tokenizer without a
    pad token pads with its eos token; right padding keeps absolute positions batch-independent.
    """
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    tok_path = tokenizer or model
    try:
        tok = AutoTokenizer.from_pretrained(
            tok_path, local_files_only=Path(tok_path).is_dir(), **common
        )
    except Exception as exc:
        raise RewardError(f"cannot load tokenizer {tok_path!r}: {exc}") from exc
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        net = AutoModelForSequenceClassification.from_pretrained(
            model, local_files_only=Path(model).is_dir(), **{dtype_kw: torch_dtype(dtype)}, **common
        )
    except Exception as exc:
        raise RewardError(f"cannot load reward model {model!r}: {exc}") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise RewardError(
                f"tokenizer {tok_path!r} has neither a pad nor an eos token; cannot batch"
            )
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if getattr(net.config, "pad_token_id", None) is None:
        net.config.pad_token_id = tok.pad_token_id
    return net.to(device).eval(), tok


class HFRewardModel(Reward):
    """Scalar score of a sequence classifier on the (prompt, completion) pair.

    ``format``: "chat_template" renders [user: prompt, assistant: completion] with the
    tokenizer's chat template; "concat" scores ``prompt + separator + completion``; "pair"
    passes (prompt, completion) as a tokenizer text pair. The score is logit ``label_index``
    (default 0 for single-label models; multi-label models must name the label).
    """

    def __init__(
        self,
        name: str,
        model: str,
        tokenizer: str | None = None,
        format: str = "chat_template",
        separator: str = "\n",
        batch_size: int = 16,
        device: str = "cpu",
        max_length: int = 512,
        label_index: int | None = None,
        dtype: str = "float32",
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(name)
        if format not in FORMATS:
            raise RewardError(
                f"reward {name!r}: kwargs.format = {format!r}: must be one of {', '.join(FORMATS)}"
            )
        if dtype not in DTYPE_NAMES:
            raise RewardError(
                f"reward {name!r}: kwargs.dtype = {dtype!r}: must be one of "
                + ", ".join(DTYPE_NAMES)
            )
        self.model_path, self.format, self.separator = model, format, separator
        self.batch_size, self.device, self.max_length = batch_size, device, max_length
        self._model, self._tok = load_reward_model(
            model, tokenizer, device, dtype, revision, trust_remote_code
        )
        if format == "chat_template" and not getattr(self._tok, "chat_template", None):
            raise RewardError(
                f"reward {name!r}: the tokenizer of {tokenizer or model!r} has no chat template; "
                "set kwargs.format to 'concat' or 'pair' (or use a tokenizer with a template)"
            )
        num_labels = int(self._model.config.num_labels)
        if label_index is None:
            if num_labels != 1:
                raise RewardError(
                    f"reward {name!r}: model {model!r} has {num_labels} labels "
                    f"({self._model.config.id2label}); set kwargs.label_index to the logit to use"
                )
            label_index = 0
        if not 0 <= label_index < num_labels:
            raise RewardError(
                f"reward {name!r}: kwargs.label_index = {label_index}: must be in "
                f"[0, {num_labels - 1}] (the model has {num_labels} labels)"
            )
        self.label_index = label_index

    def _texts(self, prompt: str, completion: str) -> str | tuple[str, str]:
        if self.format == "chat_template":
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": completion},
            ]
            return self._tok.apply_chat_template(messages, tokenize=False)
        if self.format == "concat":
            return prompt + self.separator + completion
        return prompt, completion

    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        items = [self._texts(p, c) for p, c in zip(prompts, completions, strict=True)]
        # Length-sorted batches waste less compute on padding; results are unsorted below.
        order = sorted(range(len(items)), key=lambda i: len("".join(items[i])))
        out = torch.empty(len(items), dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = [items[i] for i in idx]
                if self.format == "pair":
                    args: tuple[Any, ...] = ([b[0] for b in batch], [b[1] for b in batch])
                else:
                    args = (batch,)
                enc = self._tok(
                    *args,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    # a chat template already writes its own special tokens
                    add_special_tokens=self.format != "chat_template",
                    return_tensors="pt",
                ).to(self.device)
                logits = self._model(**enc).logits
                out[torch.tensor(idx)] = logits[:, self.label_index].float().cpu()
        return out
