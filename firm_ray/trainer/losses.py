"""Policy-gradient pieces of a local step: token log-probs, per-objective advantages, and the
clipped-surrogate (+ KL) loss written in the factored form that
:class:`firm_ray.core.gradients.ObjectiveGradients` differentiates in one backward.

Loss of objective m (GRPO-style: mean over a sequence's tokens, then over sequences):

    L_m = -(1/S) sum_s A_m(s) * (1/T_s) sum_t clipped_ratio_t(sign A_m(s))   [+ KL term]

where clipped_ratio is min(ratio, 1 + eps) for a positive advantage and max(ratio, 1 - eps) for
a negative one (PPO's pessimistic clip). Both shapes are shared by all objectives, so the loss
is sum_k sum_s w[m, k, s] sum_t terms[k, s, t] with K = 2 terms (K = 1 on the first PPO epoch,
where ratio == 1 and both shapes coincide), plus GRPO's per-token k3 KL term when
``kl_mode == "loss"``. With ``kl_mode`` ``"reward"`` (default: subtracted from the raw rewards)
or ``"advantage"`` (subtracted from the advantages) the KL enters A_m through
:func:`objective_advantages`, the one place the penalty is placed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

_EPS = 1e-6


def causal_lm(model: Any) -> Any:
    """The Hugging Face ``*ForCausalLM`` inside peft / DeepSpeed wrappers (LoRA layers are
    injected into its modules, so calling its parts runs the adapter)."""
    while True:
        if hasattr(model, "get_base_model"):
            return model.get_base_model()
        inner = getattr(model, "module", None)
        if inner is None or inner is model:
            return model
        model = inner


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
    chunk_tokens: int = 512,
) -> torch.Tensor:
    """[S, T] float32 log pi_T(y_t | prefix) of the completion tokens at sampling temperature T.

    Memory is bounded by ``chunk_tokens``, not by S x T x vocabulary: the decoder's hidden
    states are sliced to the completion positions BEFORE the LM head, and the head + log-softmax
    run on at most ``chunk_tokens`` rows at a time; with grad enabled each chunk is
    checkpointed, so its full-vocabulary logits are recomputed in the backward instead of kept.
    Positions come from the attention mask, so left padding does not shift them.
    ``model`` is the policy (peft), or a backend's forward wrapper with an optional
    ``forward_context()`` (DeepSpeed's engine set-up).
    """
    lm = causal_lm(model)
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)
    context = getattr(model, "forward_context", contextlib.nullcontext)
    with context():
        hidden = lm.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state[:, prompt_length - 1 : -1]
    num_seqs, length, width = hidden.shape
    head = partial(_chunk_logprobs, lm.get_output_embeddings(), _logit_transform(lm, temperature))
    rows = hidden.reshape(-1, width)
    targets = input_ids[:, prompt_length:].reshape(-1)
    pieces = []
    for start in range(0, rows.shape[0], chunk_tokens):
        chunk = (rows[start : start + chunk_tokens], targets[start : start + chunk_tokens])
        if torch.is_grad_enabled() and rows.requires_grad:
            pieces.append(checkpoint(head, *chunk, use_reentrant=False))
        else:
            pieces.append(head(*chunk))
    return torch.cat(pieces).reshape(num_seqs, length)


def _logit_transform(lm: Any, temperature: float) -> Any:
    """What the model's own forward does to the LM head output (Cohere's logit_scale, Gemma-2's
    final soft-capping), then the sampling temperature."""
    scale = getattr(lm, "logit_scale", None)
    softcap = getattr(lm.config, "final_logit_softcapping", None)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if isinstance(scale, (int, float)):
            logits = logits * scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits / temperature if temperature != 1.0 else logits

    return transform


def _chunk_logprobs(
    head: Any, transform: Any, rows: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = head(rows)
    logits = transform(logits.to(torch.promote_types(logits.dtype, torch.float32)))
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


ADVANTAGE_MODES = ("group", "batch", "group_mean", "batch_mean")
KL_MODES = ("reward", "advantage", "loss")


def advantages(
    rewards: torch.Tensor,
    group_size: int,
    mode: str = "group",
    eps: float = _EPS,
    unbiased: bool = False,
) -> torch.Tensor:
    """[S, M] per-objective advantages from [S, M] rewards (rows: G completions per prompt).

    ``group``: (r - mean of the prompt's G completions) / (their std + eps), per objective
    (GRPO, Shao et al. 2024). ``batch``: (r - batch mean) / (batch std + eps). ``group_mean`` /
    ``batch_mean``: r - group / batch mean, not divided by a std (Dr. GRPO, Liu et al. 2025), so
    each objective's reward scale reaches its gradient; ``group_mean`` is exactly TRL's
    ``scale_rewards="none"`` (trl 1.16 GRPOTrainer._generate_and_score_completions:
    ``advantages = rewards - mean_grouped_rewards``).

    Against TRL 1.16's standardized forms: ``group`` equals TRL's ``scale_rewards="group"`` with
    ``eps=1e-4, unbiased=True`` (TRL divides by the Bessel-corrected std + 1e-4); the defaults
    here (population std, eps 1e-6) are the ones firm_ray always used, kept so earlier runs
    reproduce. They make every advantage sqrt(G/(G-1)) times TRL's (x 1.15 at G = 4), for
    every objective alike. TRL's ``"batch"`` centres on the GROUP mean and divides by the
    batch std; ``batch`` here is whitened over the batch (batch mean), as before.
    A group whose rewards are all equal gives zero advantage (nothing to learn from it), never NaN.
    """
    if mode in ("group", "group_mean"):
        grouped = rewards.reshape(-1, group_size, rewards.shape[-1])
        centred = grouped - grouped.mean(dim=1, keepdim=True)
        if mode == "group":
            centred = centred / (grouped.std(dim=1, keepdim=True, unbiased=unbiased) + eps)
        return centred.reshape(rewards.shape)
    if mode in ("batch", "batch_mean"):
        centred = rewards - rewards.mean(dim=0, keepdim=True)
        if mode == "batch":
            centred = centred / (rewards.std(dim=0, keepdim=True, unbiased=unbiased) + eps)
        return centred
    raise ValueError(f"advantage = {mode!r}: must be one of {', '.join(ADVANTAGE_MODES)}")


def baseline_centered(values: torch.Tensor, group_size: int, mode: str = "group") -> torch.Tensor:
    """[S] values minus their group (``group*`` modes) or batch mean: the KL penalty's advantage
    with ``kl_mode == "advantage"``."""
    if mode.startswith("group"):
        grouped = values.reshape(-1, group_size)
        return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(values.shape)
    return values - values.mean()


def objective_advantages(
    rewards: torch.Tensor,
    kl: torch.Tensor | None,
    group_size: int,
    advantage_mode: str,
    kl_coef: float,
    kl_mode: str,
) -> torch.Tensor:
    """[S, M] advantages of a local step, with the KL penalty placed by ``kl_mode``.

    Args:
        rewards: [S, M] raw rewards, S = prompts x group_size.
        kl: [S] sequence log-ratio to the reference (:func:`sequence_kl`), or None (no penalty).
        kl_mode: ``"reward"``: DESIGN.md's J_m = E[r_m] - kl_coef * KL, i.e. the advantage of
            r_m - kl_coef * kl for every objective m, so kl_coef is in reward units (with the
            ``*_mean`` modes exactly: scaling rewards and kl_coef by c scales the advantage by c;
            with the standardized modes the std then includes the KL's spread, and an objective
            whose rewards are flat in a group gets the standardized -KL as its advantage).
            ``"advantage"``: the form before issue 15: advantage(r_m) - kl_coef * (kl minus its
            group / batch mean), kl_coef in advantage units. ``"loss"``: the advantage of r_m
            alone; the KL is GRPO's k3 term in :func:`surrogate_loss`.
    """
    if kl_mode not in KL_MODES:
        raise ValueError(f"kl_mode = {kl_mode!r}: must be one of {', '.join(KL_MODES)}")
    penalize = kl is not None and kl_coef > 0
    if penalize and kl_mode == "reward":
        return advantages(
            rewards - kl_coef * kl[:, None].to(rewards.dtype), group_size, advantage_mode
        )
    adv = advantages(rewards, group_size, advantage_mode)
    if penalize and kl_mode == "advantage":
        penalty = baseline_centered(kl, group_size, advantage_mode)
        adv = adv - kl_coef * penalty[:, None]
    return adv


@dataclass
class SurrogateLoss:
    """The factored loss of one pass: L_m = sum_{k,s} weights[m,k,s] * terms[k,s,:].sum().

    ``clipped_tokens`` / ``tokens``: completion tokens whose ratio lies outside
    [1-eps, 1+eps], and all completion tokens (summed over micro-batches for the clip fraction).
    """

    terms: torch.Tensor  # [K, S, T], differentiable
    weights: torch.Tensor  # [M, K, S], constants
    clipped_tokens: torch.Tensor  # 0-dim (no device sync per micro-batch)
    tokens: torch.Tensor  # 0-dim

    @property
    def clip_fraction(self) -> float:
        return float(self.clipped_tokens / self.tokens.clamp_min(1.0))


def surrogate_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    clip_eps: float,
    first_epoch: bool,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    num_seqs: int | None = None,
    token_weight: torch.Tensor | None = None,
) -> SurrogateLoss:
    """Build the factored clipped-surrogate loss (see module docstring).

    Args:
        logp, old_logp, mask: [S, T] current / sampling-time log-probs and completion mask.
        adv: [S, M] advantages (already including a reward-mode KL penalty).
        first_epoch: True when the policy has not moved since sampling (ratio == 1 exactly).
        ref_logp: [S, T] reference log-probs, for GRPO's k3 KL term (``kl_coef`` > 0).
        num_seqs: sequences of the whole batch when these S rows are one micro-batch of it
            (the loss is a sum over sequences, so micro-batch losses add up exactly).
        token_weight: [S, T] constant per-token weights (truncated importance weights).
    """
    num_seqs = num_seqs or logp.shape[0]
    mask = mask.to(logp.dtype)
    per_token = mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)  # 1/T_s on real tokens
    if token_weight is not None:
        per_token = per_token * token_weight.detach().to(logp.dtype)
    ratio = torch.exp(logp - old_logp.detach())
    adv = adv.detach().to(logp.dtype)
    coeff = -adv.T / num_seqs  # [M, S]
    if first_epoch:
        terms = [ratio * per_token]
        weights = [coeff]
    else:
        terms = [
            torch.minimum(ratio, torch.full_like(ratio, 1 + clip_eps)) * per_token,
            torch.maximum(ratio, torch.full_like(ratio, 1 - clip_eps)) * per_token,
        ]
        weights = [coeff * (adv.T > 0), coeff * (adv.T < 0)]
    if ref_logp is not None and kl_coef > 0:
        log_r = ref_logp.detach() - logp
        terms.append((torch.exp(log_r) - log_r - 1) * per_token)
        weights.append(torch.full_like(coeff, kl_coef / num_seqs))
    with torch.no_grad():
        outside = ((ratio - 1).abs() > clip_eps).to(logp.dtype) * mask
        clipped, tokens = outside.sum(), mask.sum()
    return SurrogateLoss(torch.stack(terms), torch.stack(weights, dim=1), clipped, tokens)


def sequence_kl(old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[S] log pi(y|x) - log pi_ref(y|x) of sampled sequences: an unbiased estimate of
    KL(pi || pi_ref) per prompt, and the penalty of ``kl_mode == "reward"``."""
    return ((old_logp - ref_logp) * mask.to(old_logp.dtype)).sum(dim=1)
