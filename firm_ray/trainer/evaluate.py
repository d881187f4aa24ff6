"""Evaluation of a policy on held-out prompts: mean reward per objective and KL to the reference."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from firm_ray.data.prompts import Prompt
from firm_ray.models.generation import sample_completions
from firm_ray.models.policy import Policy
from firm_ray.rewards import score_all
from firm_ray.trainer.losses import sequence_kl, token_logprobs


@torch.no_grad()
def evaluate_policy(
    policy: Policy,
    rewards: Sequence[Any],
    prompts: Sequence[Prompt],
    samples_per_prompt: int = 2,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_prompts: int = 16,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    max_prompt_tokens: int | None = None,
    chunk_tokens: int = 512,
) -> dict[str, Any]:
    """Sample ``samples_per_prompt`` completions per prompt (seeded) and score them.

    Memory is set by ``batch_prompts`` x ``samples_per_prompt`` sequences per pass and by
    ``chunk_tokens`` (log-probs never materialize full-vocabulary logits for the batch).
    Returns ``rewards`` (mean per objective, in reward order), ``rewards_by_category``
    ({category: [mean per objective]}) and ``kl`` (mean sequence log-ratio to the reference at
    the sampling temperature: an unbiased estimate of KL(pi || pi_ref) per prompt). Normalized
    rewards are scored raw (their ``inner`` scorer) so evaluation never moves the normalization
    statistics. Scores stay where rewards put them (CPU); log-probs on the policy's device.
    """
    scorers = [getattr(r, "inner", r) for r in rewards]
    policy.model.eval()
    all_scores, all_kl, categories = [], [], []
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start : start + batch_prompts]
        samples = sample_completions(
            policy,
            [p.text for p in chunk],
            samples_per_prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed=seed + start,
            max_prompt_tokens=max_prompt_tokens,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
        )
        all_scores.append(score_all(scorers, samples.prompts, samples.completions))
        logprobs = partial(
            token_logprobs,
            policy.model,
            samples.input_ids,
            samples.attention_mask,
            samples.prompt_length,
            temperature=temperature,
            chunk_tokens=chunk_tokens,
        )
        logp = logprobs()
        with policy.reference():
            ref = logprobs()
        all_kl.append(sequence_kl(logp, ref, samples.completion_mask).cpu())
        categories += [p.category for p in chunk for _ in range(samples_per_prompt)]
    scores = torch.cat(all_scores)
    by_category: dict[str, list[float]] = {}
    for category in sorted({c for c in categories if c is not None}):
        rows = torch.tensor([c == category for c in categories], device=scores.device)
        by_category[category] = scores[rows].mean(dim=0).tolist()
    return {
        "rewards": scores.mean(dim=0).tolist(),
        "rewards_by_category": by_category,
        "kl": float(torch.cat(all_kl).mean()),
    }
