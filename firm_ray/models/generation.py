"""Batched, seeded sampling of G completions per prompt (the "generate" phase of a local step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from firm_ray.models.policy import Policy


@dataclass
class Samples:
    """S = len(prompts) * G sequences; row s belongs to prompt s // G.

    ``input_ids``/``attention_mask`` [S, P + T] hold the left-padded prompt and the completion;
    ``completion_mask`` [S, T] is 1 on completion tokens up to and including the first EOS.
    """

    prompts: list[str]
    completions: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int
    group_size: int

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]


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
) -> Samples:
    """Sample ``group_size`` completions for every prompt with the current policy.

    Seeded through a forked RNG so the same (adapter, prompts, seed) gives the same samples in
    any process, without disturbing the caller's random state.
    """
    tokenizer = policy.tokenizer
    formatted = policy.format_prompts(prompts)
    tokenizer.truncation_side = "left"  # keep the end of a long prompt, next to the answer
    encoded = tokenizer(
        formatted,
        return_tensors="pt",
        padding=True,
        truncation=max_prompt_tokens is not None,
        max_length=max_prompt_tokens,
        add_special_tokens=False,
    ).to(policy.device)
    prompt_ids = encoded["input_ids"].repeat_interleave(group_size, dim=0)
    prompt_mask = encoded["attention_mask"].repeat_interleave(group_size, dim=0)
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        torch.manual_seed(seed)
        output = policy.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    prompt_length = prompt_ids.shape[1]
    completion = output[:, prompt_length:]
    completion_mask = _until_first_eos(completion, tokenizer.eos_token_id)
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
    )


def _until_first_eos(completion: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it."""
    if eos_id is None:
        return torch.ones_like(completion)
    is_eos = (completion == eos_id).long()
    seen_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS strictly before this position
    return (seen_before == 0).long()
