"""Batched, seeded sampling of G completions per prompt (the "generate" phase of a local step).

On-policy by construction: the sampling settings come from our config alone (an explicit
``GenerationConfig``; the model's own generation_config was neutralized at load time, see
firm_ray.models.policy), every EOS id of the model ends a completion, and the log-probability
of each sampled token under the distribution it was actually drawn from (after temperature,
repetition penalty, top-k, top-p) is recorded while sampling. The trainer's log-probs at the
sampling temperature equal these exactly when no penalty or truncation is set; otherwise the
trainer corrects with a truncated importance weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from firm_ray.models.policy import Policy


@dataclass
class Samples:
    """S = len(prompts) * G sequences; row s belongs to prompt s // G.

    ``input_ids``/``attention_mask`` [S, P + T] hold the left-padded prompt and the completion;
    ``completion_mask`` [S, T] is 1 on completion tokens up to and including the first EOS;
    ``sample_logp`` [S, T] float32: log-prob of each sampled token under the sampling
    distribution; ``truncated`` [S] bool: no EOS within max_new_tokens.
    """

    prompts: list[str]
    completions: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int
    group_size: int
    sample_logp: torch.Tensor
    truncated: torch.Tensor

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]


def _sampling_warpers(temperature: float, top_k: int, top_p: float) -> list:
    """The warpers ``generate`` applies after every other processor, in its order."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return warpers


class _SampledTokenLogprobs:
    """A logits processor that records log p_sample(y_t) of every sampled token.

    ``generate`` runs custom processors after the penalties but before the sampling warpers
    (transformers' ``_get_logits_processor``), so this applies the same warper classes to a
    copy; the token drawn at step t is known at step t + 1 (or from the output, for the last).
    Only one [S, V] row of log-probs is alive at a time.
    """

    def __init__(self, warpers: list) -> None:
        self.warpers = warpers
        self.pending: torch.Tensor | None = None
        self.columns: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self.columns.append(self.pending.gather(1, input_ids[:, -1:]))
        final = scores
        for warper in self.warpers:
            final = warper(input_ids, final)
        self.pending = torch.log_softmax(final.float(), dim=-1)
        return scores

    def result(self, output: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self.columns.append(self.pending.gather(1, output[:, -1:]))
            self.pending = None
        return torch.cat(self.columns, dim=1)


def truncate_prompts(tokenizer, prompts: Sequence[str], max_tokens: int | None) -> list[str]:
    """Keep the last ``max_tokens`` tokens of each raw prompt, BEFORE the chat template is
    applied, so the template's header and BOS survive (truncating the formatted text would
    cut them off first)."""
    if max_tokens is None:
        return list(prompts)
    out = []
    for text in prompts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(text if len(ids) <= max_tokens else tokenizer.decode(ids[-max_tokens:]))
    return out


def generation_config(
    policy: Policy,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
):
    """The explicit sampling config: ours, every EOS id of the model, nothing inherited."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        eos_token_id=list(policy.eos_token_ids),
        pad_token_id=policy.tokenizer.pad_token_id,
    )


@torch.no_grad()
def sample_completions(
    policy: Policy,
    prompts: Sequence[str],
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
) -> Samples:
    """Sample ``group_size`` completions for every prompt with the current policy.

    Seeded through a forked RNG so the same (adapter, prompts, seed) gives the same samples in
    any process, without disturbing the caller's random state.
    """
    tokenizer = policy.tokenizer
    formatted = policy.format_prompts(truncate_prompts(tokenizer, prompts, max_prompt_tokens))
    encoded = tokenizer(formatted, padding=True, add_special_tokens=False)  # lists, no device
    prompt_ids, prompt_mask = (
        torch.tensor(encoded[key], dtype=torch.long, device=policy.device).repeat_interleave(
            group_size, dim=0
        )
        for key in ("input_ids", "attention_mask")
    )
    recorder = _SampledTokenLogprobs(_sampling_warpers(temperature, top_k, top_p))
    config = generation_config(
        policy, max_new_tokens, temperature, top_p, top_k, repetition_penalty
    )
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        torch.manual_seed(seed)
        output = policy.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=config,
            logits_processor=[recorder],
        )
    prompt_length = prompt_ids.shape[1]
    completion = output[:, prompt_length:]
    sample_logp = recorder.result(output)
    eos = torch.as_tensor(policy.eos_token_ids, device=completion.device)
    completion_mask = until_first_eos(completion, eos)
    truncated = ~torch.isin(completion, eos).any(dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    texts = tokenizer.batch_decode(
        completion.masked_fill(completion_mask == 0, tokenizer.pad_token_id),
        skip_special_tokens=True,
    )
    return Samples(
        prompts=[p for p in prompts for _ in range(group_size)],
        completions=[t.strip() for t in texts],
        input_ids=output,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        prompt_length=prompt_length,
        group_size=group_size,
        sample_logp=sample_logp.masked_fill(completion_mask == 0, 0.0),
        truncated=truncated,
    )


def until_first_eos(completion: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    """1 up to and including the first EOS (any of ``eos_ids``) of each row, 0 after it."""
    is_eos = torch.isin(completion, eos_ids).long()
    seen_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS strictly before this position
    return (seen_before == 0).long()
