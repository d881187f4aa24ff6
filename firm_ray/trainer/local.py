"""One client's local training: FIRM's in-client update (DESIGN.md section 2, step 2), no Ray.

    trainer = LocalTrainer(policy, rewards, cfg.trainer, cfg.algorithm, local_steps)
    update = trainer.run_round(global_adapter, client_prompts, client_id=3, round_index=0)

A local step, top to bottom, every tensor on ``policy.device``:
  1. sample B prompts of the client, G completions each, with the current policy (no grad),
     recording each sampled token's log-prob under the sampling distribution;
  2. score every completion with every reward: R [B*G, M], moved to the device;
  3. per-objective advantages (trainer.advantage: group | batch | group_mean | batch_mean) with
     the KL to the reference (adapter disabled) placed by trainer.kl_mode (losses.py
     objective_advantages; default: kl_coef * KL off every raw reward, DESIGN.md);
  4-5. for each PPO epoch and each micro-batch: one forward, the factored clipped-surrogate
     loss (truncated importance weights when sampling != policy), and its share of the M
     per-objective gradients (firm_ray.core.gradients), accumulated exactly;
  6-7. the algorithm's direction (firm_ray.algorithms): firm normalizes (none | l2) and solves
     lambda* = firm_weights(G^T G, beta, p); fedavg_ls / fmgda take lambda = p (one combined
     gradient, no solve); jd asks a torchjd weighting;
  8. direction = sum_m lambda_m g_m (+ mu (theta - theta^t), FedProx) -> clip -> optimizer.
The algorithm also says how many trajectories a round runs (fmgda: one per objective, one-hot
preference each), may transform the rewards before the advantages (fedavg_ls
sum_then_normalize) and what the client uploads.
Steps whose rewards, losses or gradients are not finite are skipped and counted with their
reason; a client whose steps all skipped sends nothing; an adapter that ends non-finite is
returned flagged invalid for the server to reject.

Where this departs from the paper: advantages are GRPO's group-normalized rewards per objective
by default (the paper's policy gradient is generic; trainer.advantage group_mean keeps reward
scales), the KL penalty is a score-function term in the rewards (one backward for all
objectives), and the optimizer (trainer.optimizer, the algorithm's default when null) is fresh
every trajectory (standard in FL; nothing but the adapter survives a round).

(~450 lines: the round, the trajectory and the step read top to bottom in one place; the step's
bookkeeping lives in step_parts.py, its losses in losses.py.)
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from firm_ray.algorithms import build_algorithm
from firm_ray.config import AlgorithmConfig, TrainerConfig
from firm_ray.core.aggregation import first_non_finite
from firm_ray.core.gradients import ObjectiveGradients, losses_from_terms
from firm_ray.data.prompts import Prompt
from firm_ray.models.adapter import get_adapter_state, set_adapter_state
from firm_ray.models.generation import Samples, sample_completions
from firm_ray.models.policy import Policy
from firm_ray.rewards import RewardError, score_all
from firm_ray.trainer.backends import Backend, build_backend
from firm_ray.trainer.losses import (
    SurrogateLoss,
    causal_lm,
    objective_advantages,
    sequence_kl,
    surrogate_loss,
    token_logprobs,
)
from firm_ray.trainer.step_parts import (
    EpochState,
    Timer,
    bf16_autocast,
    loss_mask,
    merge_metric,
    micro_batches,
    set_activation_checkpointing,
    skip_step,
    summarize,
)
from firm_ray.types import AdapterState, ClientUpdate

logger = logging.getLogger(__name__)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (experiment seed, client, round, step): same everywhere."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> 1)


class LocalTrainer:
    """Runs one client's K local steps; holds the policy, rewards and optimizer of a worker."""

    def __init__(
        self,
        policy: Policy,
        rewards: Sequence[Any],
        trainer: TrainerConfig,
        algorithm: AlgorithmConfig,
        local_steps: int,
        max_prompt_tokens: int | None = None,
        seed: int = 0,
    ) -> None:
        self.policy = policy
        self.rewards = list(rewards)
        self.cfg = trainer
        self.algorithm = algorithm
        self.local_steps = local_steps
        self.max_prompt_tokens = max_prompt_tokens
        self.seed = seed
        self.num_objectives = len(self.rewards)
        self.algo = build_algorithm(algorithm, self.num_objectives)
        # THE device of every tensor of a local step: the policy's (decided once, at load time).
        self.device = policy.device
        self.preference = torch.tensor(
            algorithm.preference_vector(self.num_objectives),
            dtype=torch.float64,
            device=self.device,
        )
        self.params = policy.trainable_parameters
        set_activation_checkpointing(causal_lm(policy.model), trainer.gradient_checkpointing)
        if policy.generation_overrides:
            logger.warning(
                "the model's generation_config sets %s; firm_ray samples with trainer.* only "
                "(temperature=%g, top_p=%g, top_k=%d, repetition_penalty=%g) and ignores them",
                ", ".join(f"{k}={v!r}" for k, v in policy.generation_overrides.items()),
                trainer.temperature,
                trainer.top_p,
                trainer.top_k,
                trainer.repetition_penalty,
            )
        self.backend: Backend = build_backend(
            policy.model, self.params, trainer, algorithm_default=self.algo.default_optimizer
        )
        self.grads = ObjectiveGradients(policy.model, self.params)
        # LoRA dropout makes the training forward differ from the sampling one: then the first
        # PPO epoch's ratio is not exactly 1 and the general (clipped, K = 2) loss form is used.
        self.stochastic_forward = any(
            isinstance(m, torch.nn.Dropout) and m.p > 0 for m in policy.model.modules()
        )

    # ------------------------------------------------------------------------------ a round
    def run_round(
        self,
        global_adapter: AdapterState,
        prompts: Sequence[Prompt],
        client_id: int,
        round_index: int,
        preference: Sequence[float] | None = None,
    ) -> ClientUpdate:
        """Start from ``global_adapter``, train locally, return the update (adapter or deltas).
        ``preference``: train for this preference instead of algorithm.preference (an
        opposite_preference attacker's mirrored one)."""
        if not prompts:
            raise ValueError(f"client {client_id} has no prompts")
        bad = first_non_finite(global_adapter)
        if bad:  # nothing sensible can be sampled from it; refuse rather than crash mid-step
            return ClientUpdate(
                client_id=client_id,
                round=round_index,
                num_samples=len(prompts),
                valid=False,
                reason=f"received a non-finite global adapter ({bad!r}); not trained",
            )
        adapters: list[AdapterState] = []
        merged: dict[str, Any] = defaultdict(list)
        empty = 0
        p = self.preference
        if preference is not None:
            p = torch.tensor(list(preference), dtype=torch.float64, device=self.device)
        trajectories = self.algo.trajectories(p)
        for index, preference in enumerate(trajectories):
            metrics = self._trajectory(
                global_adapter, prompts, client_id, round_index, preference, trajectory=index
            )
            adapters.append(get_adapter_state(self.policy.model))
            if metrics["skipped_steps"] >= metrics["steps"]:
                empty = empty or int(metrics["steps"])
            for key, value in metrics.items():
                merged[key].append(value)
        if len(trajectories) > 1:
            metrics = {k: merge_metric(k, v) for k, v in merged.items()}
        payloads = self.algo.upload(adapters, global_adapter)
        return self._finish(client_id, round_index, len(prompts), metrics, payloads, empty)

    def _finish(
        self,
        client_id: int,
        round_index: int,
        num_samples: int,
        metrics: dict[str, Any],
        payloads: list[AdapterState],
        all_skipped: int = 0,
    ) -> ClientUpdate:
        """The update (payloads as the algorithm's ``payload`` says); ``all_skipped`` > 0: every
        one of that many steps of a trajectory was skipped, so there is nothing to send
        (reported, left out of the average)."""
        adapter = payloads[0] if self.algo.payload == "adapter" else None
        deltas = payloads if self.algo.payload == "objective_deltas" else None
        bad = [k for k in map(first_non_finite, payloads) if k]
        reason = f"non-finite adapter tensor {bad[0]!r}" if bad else ""
        if all_skipped:  # theta^t back would dilute the average: the update is left out
            reasons = metrics.get("skip_reasons") or ["unknown"]
            reason = f"all {all_skipped} local steps skipped: {reasons[0]}"
            adapter, deltas = None, None
        return ClientUpdate(
            client_id=client_id,
            round=round_index,
            num_samples=num_samples,
            adapter=adapter,
            objective_deltas=deltas,
            metrics=metrics,
            valid=not reason,
            reason=reason,
        )

    # ------------------------------------------------------------------- K local steps
    def _trajectory(
        self,
        global_adapter: AdapterState,
        prompts: Sequence[Prompt],
        client_id: int,
        round_index: int,
        preference: torch.Tensor,
        trajectory: int = 0,
    ) -> dict[str, Any]:
        set_adapter_state(self.policy.model, global_adapter)
        self.backend.reset()
        anchor = [p.detach().clone() for p in self.params] if self.algorithm.mu > 0 else None
        log: dict[str, list] = defaultdict(list)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for step in range(self.local_steps):
                seed = derive_seed(self.seed, client_id, round_index, trajectory, step)
                torch.manual_seed(seed)  # LoRA dropout and anything else drawing from torch
                self._local_step(prompts, seed, preference, anchor, log)
        return summarize(log, self.num_objectives)

    def _local_step(
        self,
        prompts: Sequence[Prompt],
        seed: int,
        preference: torch.Tensor,
        anchor: list[torch.Tensor] | None,
        log: dict[str, list],
    ) -> None:
        cfg = self.cfg
        policy = self.policy
        timer = Timer(log)
        log["steps"].append(1.0)

        # 1. sample prompts and completions (no grad), recording the sampling log-probs
        rng = random.Random(seed)
        batch = [prompts[rng.randrange(len(prompts))].text for _ in range(cfg.batch_prompts)]
        with timer("generate"), self._autocast():
            policy.model.eval()
            samples = sample_completions(
                policy,
                batch,
                cfg.generations_per_prompt,
                cfg.max_new_tokens,
                cfg.temperature,
                cfg.top_p,
                seed=seed,
                max_prompt_tokens=self.max_prompt_tokens,
                top_k=cfg.top_k,
                repetition_penalty=cfg.repetition_penalty,
            )
        log["truncated_fraction"].append(float(samples.truncated.float().mean()))
        # 2. score with every reward (rewards score where they like; scores come to the device)
        with timer("score"):
            try:
                rewards = score_all(self.rewards, samples.prompts, samples.completions)
            except RewardError as err:
                return skip_step(log, str(err))
        rewards = rewards.to(device=self.device, dtype=torch.float32)
        log["rewards"].append(rewards.mean(dim=0).tolist())
        rewards, preference = self.algo.transform_rewards(rewards, preference)
        mask = loss_mask(samples, cfg.mask_truncated)
        if cfg.mask_truncated and not bool(mask.any()):
            return skip_step(log, "every completion was truncated (trainer.mask_truncated)")

        # 3. reference log-probs (no grad) for the KL penalty; per-objective advantages
        ref_logp = old_logp = kl = None
        with timer("forward"), torch.no_grad():
            if cfg.kl_coef > 0:
                with policy.reference():
                    ref_logp = self._logprobs(samples)
            if self.stochastic_forward:  # LoRA dropout: the training forward is not pi_old
                old_logp = self._logprobs(samples)
        if ref_logp is not None:
            kl = sequence_kl(samples.sample_logp, ref_logp, mask)
            log["kl"].append(float(kl.mean()))
        adv = objective_advantages(
            rewards, kl, samples.group_size, cfg.advantage, cfg.kl_coef, cfg.kl_mode
        )

        # 4-8. PPO epochs over the same batch, micro-batched
        policy.model.train()
        state = EpochState(samples, mask, adv, ref_logp, old_logp)
        for epoch in range(cfg.ppo_epochs):
            first = epoch == 0 and not self.stochastic_forward
            grads, losses, last = self._epoch_gradients(state, first, preference, timer)
            log["clip_fraction"].append(float(state.clipped / state.tokens.clamp_min(1.0)))
            if not (bool(torch.isfinite(grads).all()) and bool(torch.isfinite(losses).all())):
                return skip_step(log, "non-finite loss or gradient")
            if epoch == 0:
                log["importance_weight"].append(float(state.mean_importance_weight()))
                if grads.shape[0] > 1:  # what lets beta matter: unequal per-objective norms
                    log["objective_grad_norms"].append(grads.double().norm(dim=1).tolist())
            with timer("solve"):
                prox = self._proximal_grad(anchor)
                lam, direction, coef = self.algo.direction(grads, losses, preference, prox)
            log["lambda"].append(lam.tolist())
            log["losses"].append(losses.tolist())

            combined = partial(self._combined_loss, last.terms, last.weights, coef, anchor)
            with timer("step"):
                log["grad_norm"].append(self.backend.apply(direction, combined))
        log["skipped_steps"].append(0.0)

    def _epoch_gradients(
        self,
        state: EpochState,
        first_epoch: bool,
        preference: torch.Tensor,
        timer: Timer,
    ) -> tuple[torch.Tensor, torch.Tensor, SurrogateLoss]:
        """[M, P] per-objective gradients (an algorithm without ``per_objective_gradients``:
        [1, P] of sum_m p_m L_m) and [M] losses
        of one PPO epoch, accumulated exactly over micro-batches: the loss is a sum over
        sequences, so each micro-batch adds its share and nothing else is kept between them."""
        cfg = self.cfg
        samples, num_seqs = state.samples, state.samples.input_ids.shape[0]
        grads = losses = last = None
        state.clipped = state.tokens = torch.zeros((), device=self.device)
        for rows in micro_batches(num_seqs, cfg.micro_batch_size):
            with timer("forward"), self.grads.capture(), self._autocast():
                logp = self._logprobs(samples, rows, model=self.backend.forward_model)
            old = state.old_logp[rows] if state.old_logp is not None else logp.detach()
            weight = state.importance_weight(rows, old, cfg.importance_cap)
            last = surrogate_loss(
                logp,
                old,
                state.mask[rows],
                state.adv[rows],
                cfg.clip_eps,
                first_epoch=first_epoch,
                ref_logp=state.ref_logp[rows] if cfg.kl_mode == "loss" and cfg.kl_coef else None,
                kl_coef=cfg.kl_coef,
                num_seqs=num_seqs,
                token_weight=weight,
            )
            state.clipped += last.clipped_tokens
            state.tokens += last.tokens
            weights = last.weights
            if not self.algo.per_objective_gradients:  # one combined objective sum_m p_m L_m
                weights = torch.einsum("m,mks->ks", preference.to(weights.dtype), weights)[None]
            with timer("backward"):
                part = self.grads.compute(
                    last.terms, weights, retain_graph=self.backend.needs_graph
                )
            part_losses = losses_from_terms(last.terms.detach(), last.weights)
            grads = part if grads is None else grads + part
            losses = part_losses if losses is None else losses + part_losses
        state.keep_old_logp_from_first_epoch()
        return grads, losses, last

    def _logprobs(
        self, samples: Samples, rows: slice | None = None, model: Any = None
    ) -> torch.Tensor:
        """Completion log-probs at the sampling temperature; without ``rows``, micro-batched
        over the whole batch (no-grad passes: reference, stochastic-forward pi_old)."""
        cfg = self.cfg
        if rows is None:
            with self._autocast():
                return torch.cat(
                    [
                        self._logprobs(samples, part, model)
                        for part in micro_batches(samples.input_ids.shape[0], cfg.micro_batch_size)
                    ]
                )
        return token_logprobs(
            model if model is not None else self.policy.model,
            samples.input_ids[rows],
            samples.attention_mask[rows],
            samples.prompt_length,
            temperature=cfg.temperature,
            chunk_tokens=cfg.logprob_chunk_tokens,
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the policy's device when trainer.mixed_precision is bf16."""
        return bf16_autocast(self.device, self.cfg.mixed_precision)

    def _combined_loss(
        self,
        terms: torch.Tensor,
        weights: torch.Tensor,
        coef: torch.Tensor,
        anchor: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """sum_m coef_m L_m + mu/2 ||theta - theta^t||^2, whose gradient is the step direction
        (what a backend that must run its own backward, like DeepSpeed, backpropagates)."""
        total = losses_from_terms(terms, weights) @ coef.to(terms.dtype)
        return total + self._proximal(anchor)

    def _proximal_grad(self, anchor: list[torch.Tensor] | None) -> torch.Tensor | None:
        if anchor is None:
            return None
        return self.algorithm.mu * torch.cat(
            [(p.detach() - a).reshape(-1) for p, a in zip(self.params, anchor, strict=True)]
        )

    def _proximal(self, anchor: list[torch.Tensor] | None) -> torch.Tensor | float:
        if anchor is None:
            return 0.0
        return (
            0.5
            * self.algorithm.mu
            * sum(((p - a) ** 2).sum() for p, a in zip(self.params, anchor, strict=True))
        )
