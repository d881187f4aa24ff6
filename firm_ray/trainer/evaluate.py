"""Evaluation of a policy on held-out prompts: mean reward per objective, KL to the reference
and, given the trainer's settings, the Pareto stationarity of the policy (FIRM's convergence
criterion) on the same samples."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from firm_ray.config import TrainerConfig
from firm_ray.core.gradients import ObjectiveGradients
from firm_ray.core.metrics import pareto_stationarity
from firm_ray.data.prompts import Prompt
from firm_ray.models.generation import Samples, sample_completions
from firm_ray.models.policy import Policy
from firm_ray.rewards import score_all
from firm_ray.trainer.losses import (
    objective_advantages,
    sequence_kl,
    surrogate_loss,
    token_logprobs,
)
from firm_ray.trainer.step_parts import EpochState, bf16_autocast, loss_mask, micro_batches


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
    trainer: TrainerConfig | None = None,
) -> dict[str, Any]:
    """Sample ``samples_per_prompt`` completions per prompt (seeded) and score them.

    Memory is set by ``batch_prompts`` x ``samples_per_prompt`` sequences per pass and by
    ``chunk_tokens`` (log-probs never materialize full-vocabulary logits for the batch).
    Returns ``rewards`` (mean per objective, in reward order), ``rewards_by_category``
    ({category: [mean per objective]}) and ``kl`` (mean sequence log-ratio to the reference at
    the sampling temperature: an unbiased estimate of KL(pi || pi_ref) per prompt). Normalized
    rewards are scored raw (their ``inner`` scorer) so evaluation never moves the normalization
    statistics. Scores stay where rewards put them (CPU); log-probs on the policy's device.

    With ``trainer`` (the run's trainer settings) the result also holds
    ``pareto_stationarity``, ``objective_grad_norms`` and ``stationarity_seconds``, computed
    after everything above from the same samples (see :func:`surrogate_stationarity`), so the
    other results are exactly those of an evaluation without it.
    """
    scorers = [getattr(r, "inner", r) for r in rewards]
    policy.model.eval()
    all_scores, all_kl, categories = [], [], []
    kept: list[tuple[Samples, torch.Tensor]] = []
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
        if trainer is not None:
            kept.append((samples, ref))
        categories += [p.category for p in chunk for _ in range(samples_per_prompt)]
    scores = torch.cat(all_scores)
    by_category: dict[str, list[float]] = {}
    for category in sorted({c for c in categories if c is not None}):
        rows = torch.tensor([c == category for c in categories], device=scores.device)
        by_category[category] = scores[rows].mean(dim=0).tolist()
    result: dict[str, Any] = {
        "rewards": scores.mean(dim=0).tolist(),
        "rewards_by_category": by_category,
        "kl": float(torch.cat(all_kl).mean()),
    }
    if trainer is not None:
        start = time.perf_counter()
        result.update(surrogate_stationarity(policy, kept, scores, trainer))
        result["stationarity_seconds"] = time.perf_counter() - start
    return result


def surrogate_stationarity(
    policy: Policy,
    batches: Sequence[tuple[Samples, torch.Tensor]],
    scores: torch.Tensor,
    cfg: TrainerConfig,
) -> dict[str, Any]:
    """Pareto stationarity of ``policy`` on evaluation samples: the norm of the min-norm convex
    combination of the M per-objective gradients of the policy-gradient surrogate
    (:func:`firm_ray.core.metrics.pareto_stationarity`), 0 at a Pareto-stationary point.

    The gradients are those of a local step's first PPO epoch, built as the trainer builds them
    (``objective_advantages`` with trainer.advantage / kl_coef / kl_mode, truncated importance
    weights, mask_truncated, ``surrogate_loss``, ``ObjectiveGradients``, micro-batched with
    trainer.micro_batch_size, on the policy's device), on ``batches`` = (samples, reference
    log-probs) of the evaluation and their raw ``scores`` [N, M]. Differences from a local step,
    by design: the group size is trainer.eval_samples_per_prompt; rewards are raw (no client's
    normalization statistics); every objective gets its gradient (also for algorithms that train
    on one combined loss), so the number means the same for every algorithm. It is a sample
    estimate: at a stationary point it is the estimator's noise, not 0, so compare runs on the
    same evaluation set. No optimizer step and no RNG draw: the adapter and the random streams
    are left as they were. Returns ``pareto_stationarity`` (None, with
    ``pareto_stationarity_skipped`` saying why, when there is nothing to differentiate or a
    gradient is not finite) and ``objective_grad_norms`` ([M] ||g_m||).
    """
    device = policy.device
    rewards = scores.to(device=device, dtype=torch.float32)
    masks = [loss_mask(samples, cfg.mask_truncated) for samples, _ in batches]
    if not masks or not any(bool(m.any()) for m in masks):
        return _skipped("every evaluation completion is masked out (trainer.mask_truncated)")
    group = batches[0][0].group_size
    if cfg.advantage.startswith("group") and group < 2:
        return _skipped(
            f"trainer.advantage = {cfg.advantage!r} needs trainer.eval_samples_per_prompt >= 2"
        )
    kl = None
    if cfg.kl_coef > 0:
        kl = torch.cat(
            [
                sequence_kl(samples.sample_logp, ref, mask)
                for (samples, ref), mask in zip(batches, masks, strict=True)
            ]
        )
    adv = objective_advantages(rewards, kl, group, cfg.advantage, cfg.kl_coef, cfg.kl_mode)
    num_seqs = rewards.shape[0]
    grad_fn = ObjectiveGradients(policy.model, policy.trainable_parameters)
    grads: torch.Tensor | None = None
    offset = 0
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with rng, torch.enable_grad():
        for (samples, ref), mask in zip(batches, masks, strict=True):
            size = samples.input_ids.shape[0]
            state = EpochState(samples, mask, adv[offset : offset + size], ref, None)
            offset += size
            for rows in micro_batches(size, cfg.micro_batch_size):
                with grad_fn.capture(), bf16_autocast(device, cfg.mixed_precision):
                    logp = token_logprobs(
                        policy.model,
                        samples.input_ids[rows],
                        samples.attention_mask[rows],
                        samples.prompt_length,
                        temperature=cfg.temperature,
                        chunk_tokens=cfg.logprob_chunk_tokens,
                    )
                old = logp.detach()
                loss = surrogate_loss(
                    logp,
                    old,
                    mask[rows],
                    state.adv[rows],
                    cfg.clip_eps,
                    first_epoch=True,
                    ref_logp=ref[rows] if cfg.kl_mode == "loss" and cfg.kl_coef else None,
                    kl_coef=cfg.kl_coef,
                    num_seqs=num_seqs,
                    token_weight=state.importance_weight(rows, old, cfg.importance_cap),
                )
                part = grad_fn.compute(loss.terms, loss.weights)
                grads = part if grads is None else grads + part
    assert grads is not None
    norms = grads.double().norm(dim=1)
    if not bool(torch.isfinite(norms).all()):
        return _skipped("a per-objective gradient is not finite")
    return {
        "pareto_stationarity": pareto_stationarity(grads),
        "objective_grad_norms": norms.tolist(),
    }


def _skipped(reason: str) -> dict[str, Any]:
    return {
        "pareto_stationarity": None,
        "objective_grad_norms": None,
        "pareto_stationarity_skipped": reason,
    }
