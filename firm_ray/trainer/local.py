"""One client's local training: FIRM's in-client update (DESIGN.md section 2, step 2), no Ray.

    trainer = LocalTrainer(policy, rewards, cfg)                  # once per process / worker
    update = trainer.run_round(global_adapter, client_prompts, client_id=3, round_index=0)

A local step, top to bottom:
  1. sample B prompts of the client, G completions each, with the current policy (no grad);
  2. score every completion with every reward: R [B*G, M];
  3. per-objective advantages (group-relative by default); with ``kl_mode: reward`` the
     sequence log-ratio to the reference (adapter disabled) is a baselined penalty in each;
  4-5. for each PPO epoch: one forward, the factored clipped-surrogate loss, and the M
     per-objective gradients from that one forward (firm_ray.core.gradients);
  6. optional gradient normalization (none | l2 | loss | loss+l2);
  7. lambda* = firm_weights(G^T G, beta, p) (``fedavg_ls``: lambda = p, no solve);
  8. direction = sum_m lambda_m g_m (+ mu (theta - theta^t), FedProx) -> clip -> AdamW.
Steps whose rewards, losses or gradients are not finite are skipped and counted; an adapter
that ends non-finite is returned flagged invalid for the server to reject.

Where this departs from the paper: advantages are GRPO's group-normalized rewards per objective
(the paper's policy gradient is generic), the KL penalty defaults to the reward (score-function
gradient of the sequence KL, one backward for all objectives), and the optimizer state is fresh
every round (standard in FL; nothing but the adapter survives a round).
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch

from firm_ray.config import AlgorithmConfig, TrainerConfig
from firm_ray.core import effective_beta, firm_weights
from firm_ray.core.aggregation import first_non_finite, state_delta
from firm_ray.core.gradients import ObjectiveGradients, gradient_scales, losses_from_terms
from firm_ray.data.prompts import Prompt
from firm_ray.models.adapter import get_adapter_state, set_adapter_state
from firm_ray.models.generation import sample_completions
from firm_ray.models.policy import Policy
from firm_ray.rewards import RewardError, score_all
from firm_ray.trainer.backends import Backend, build_backend
from firm_ray.trainer.losses import (
    advantages,
    baseline_centered,
    sequence_kl,
    surrogate_loss,
    token_logprobs,
)
from firm_ray.types import AdapterState, ClientUpdate


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
        self.preference = torch.tensor(
            algorithm.preference_vector(self.num_objectives), dtype=torch.float64
        )
        self.params = policy.trainable_parameters
        self.backend: Backend = build_backend(policy.model, self.params, trainer)
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
    ) -> ClientUpdate:
        """Start from ``global_adapter``, train locally, return the update (adapter or deltas)."""
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
        if self.algorithm.name == "fmgda":
            return self._run_fmgda(global_adapter, prompts, client_id, round_index)
        mode = "fixed" if self.algorithm.name == "fedavg_ls" else "firm"
        metrics = self._trajectory(
            global_adapter, prompts, client_id, round_index, mode, self.preference
        )
        adapter = get_adapter_state(self.policy.model)
        return self._finish(client_id, round_index, len(prompts), metrics, adapter=adapter)

    def _run_fmgda(
        self,
        global_adapter: AdapterState,
        prompts: Sequence[Prompt],
        client_id: int,
        round_index: int,
    ) -> ClientUpdate:
        """fmgda client: one K-step trajectory per objective from theta^t; M deltas back."""
        deltas: list[AdapterState] = []
        merged: dict[str, Any] = defaultdict(list)
        for m in range(self.num_objectives):
            onehot = torch.zeros(self.num_objectives, dtype=torch.float64)
            onehot[m] = 1.0
            metrics = self._trajectory(
                global_adapter, prompts, client_id, round_index, "fixed", onehot, trajectory=m
            )
            deltas.append(state_delta(get_adapter_state(self.policy.model), global_adapter))
            for key, value in metrics.items():
                merged[key].append(value)
        metrics = {k: _mean_metric(v) for k, v in merged.items()}
        return self._finish(client_id, round_index, len(prompts), metrics, deltas=deltas)

    def _finish(
        self,
        client_id: int,
        round_index: int,
        num_samples: int,
        metrics: dict[str, Any],
        adapter: AdapterState | None = None,
        deltas: list[AdapterState] | None = None,
    ) -> ClientUpdate:
        tensors = [adapter] if adapter is not None else deltas or []
        bad = [k for k in map(first_non_finite, tensors) if k]
        return ClientUpdate(
            client_id=client_id,
            round=round_index,
            num_samples=num_samples,
            adapter=adapter,
            objective_deltas=deltas,
            metrics=metrics,
            valid=not bad,
            reason=f"non-finite adapter tensor {bad[0]!r}" if bad else "",
        )

    # ------------------------------------------------------------------- K local steps
    def _trajectory(
        self,
        global_adapter: AdapterState,
        prompts: Sequence[Prompt],
        client_id: int,
        round_index: int,
        mode: str,
        preference: torch.Tensor,
        trajectory: int = 0,
    ) -> dict[str, Any]:
        set_adapter_state(self.policy.model, global_adapter)
        self.backend.reset()
        anchor = [p.detach().clone() for p in self.params] if self.algorithm.mu > 0 else None
        log: dict[str, list] = defaultdict(list)
        with torch.random.fork_rng(devices=[]):
            for step in range(self.local_steps):
                seed = derive_seed(self.seed, client_id, round_index, trajectory, step)
                torch.manual_seed(seed)  # LoRA dropout and anything else drawing from torch
                self._local_step(prompts, seed, mode, preference, anchor, log)
        return _summarize(log, self.num_objectives)

    def _local_step(
        self,
        prompts: Sequence[Prompt],
        seed: int,
        mode: str,
        preference: torch.Tensor,
        anchor: list[torch.Tensor] | None,
        log: dict[str, list],
    ) -> None:
        cfg = self.cfg
        policy = self.policy
        timer = _Timer(log)

        # 1. sample prompts and completions (no grad)
        rng = random.Random(seed)
        batch = [prompts[rng.randrange(len(prompts))].text for _ in range(cfg.batch_prompts)]
        with timer("generate"):
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
            )
        # 2. score with every reward
        with timer("score"):
            try:
                rewards = score_all(self.rewards, samples.prompts, samples.completions)
            except RewardError as err:
                log["skipped_steps"].append(1.0)
                log["skip_reasons"].append(str(err))
                return
        log["rewards"].append(rewards.mean(dim=0).tolist())

        # 3. reference and sampling-time log-probs (no grad). The sampling-time pass is only
        # needed when the policy moves before it is used (several PPO epochs) or the training
        # forward is stochastic; otherwise epoch 0's own forward, detached, is exactly it.
        ids, attn = samples.input_ids, samples.attention_mask
        mask = samples.completion_mask.to(torch.float32)
        old_logp = ref_logp = adv = None
        with timer("forward"), torch.no_grad():
            if cfg.ppo_epochs > 1 or self.stochastic_forward:
                old_logp = token_logprobs(policy.model, ids, attn, samples.prompt_length)
            if cfg.kl_coef > 0:
                with policy.reference():
                    ref_logp = token_logprobs(policy.model, ids, attn, samples.prompt_length)

        # 4-8. PPO epochs over the same batch
        policy.model.train()
        for epoch in range(cfg.ppo_epochs):
            with timer("forward"), self.grads.capture():
                logp = token_logprobs(self.backend.forward_model, ids, attn, samples.prompt_length)
            if old_logp is None:
                old_logp = logp.detach()
            if adv is None:  # per-objective advantages, with the KL penalty in reward mode
                adv = advantages(rewards.to(torch.float32), samples.group_size, cfg.advantage)
                if ref_logp is not None:
                    kl = sequence_kl(old_logp, ref_logp, mask)
                    log["kl"].append(float(kl.mean()))
                    if cfg.kl_mode == "reward":
                        penalty = baseline_centered(kl, samples.group_size, cfg.advantage)
                        adv = adv - cfg.kl_coef * penalty[:, None]
            loss = surrogate_loss(
                logp,
                old_logp,
                mask,
                adv,
                cfg.clip_eps,
                first_epoch=epoch == 0 and not self.stochastic_forward,
                ref_logp=ref_logp if cfg.kl_mode == "loss" else None,
                kl_coef=cfg.kl_coef,
            )
            losses = losses_from_terms(loss.terms, loss.weights).detach()
            log["clip_fraction"].append(loss.clip_fraction)
            weights = loss.weights
            if mode == "fixed":  # one combined objective: sum_m p_m L_m
                weights = torch.einsum("m,mks->ks", preference.to(weights.dtype), weights)[None]
            with timer("backward"):
                grads = self.grads.compute(
                    loss.terms, weights, retain_graph=self.backend.needs_graph
                )
            if not (torch.isfinite(grads).all() and torch.isfinite(losses).all()):
                log["skipped_steps"].append(1.0)
                log["skip_reasons"].append("non-finite loss or gradient")
                return
            with timer("solve"):
                lam, direction, scales = self._direction(grads, losses, mode, preference, anchor)
            log["lambda"].append(lam.tolist())
            log["losses"].append(losses.tolist())

            coef = lam * scales if mode == "firm" else preference
            combined = partial(self._combined_loss, loss.terms, loss.weights, coef, anchor)
            with timer("step"):
                log["grad_norm"].append(self.backend.apply(direction, combined))
        log["skipped_steps"].append(0.0)

    def _direction(
        self,
        grads: torch.Tensor,
        losses: torch.Tensor,
        mode: str,
        preference: torch.Tensor,
        anchor: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lambda, flat direction, normalization scales) for this step."""
        prox = self._proximal_grad(anchor)
        if mode == "fixed":
            direction = grads[0] + (prox if prox is not None else 0.0)
            return preference, direction, torch.ones_like(preference)
        scales = gradient_scales(grads, losses, self.algorithm.grad_norm)
        scaled = grads.double() * scales[:, None]
        if prox is not None:
            scaled = scaled + prox.double()[None]  # the proximal term is in every L_m
        gram = scaled @ scaled.T
        beta = effective_beta(gram, self.algorithm.beta, self.algorithm.beta_scale)
        lam = firm_weights(gram, beta, preference)
        direction = (lam @ scaled).to(grads.dtype)
        return lam, direction, scales

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


# ---------------------------------------------------------------------------------- helpers
class _Timer:
    """``with timer("generate"):`` appends the span's seconds to ``log["time_generate"]``."""

    def __init__(self, log: dict[str, list]) -> None:
        self.log = log

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.log[f"time_{name}"].append(time.perf_counter() - start)


def _summarize(log: dict[str, list], num_objectives: int) -> dict[str, Any]:
    """Per-round metrics of one trajectory (means over steps; timings summed)."""
    out: dict[str, Any] = {}
    for key, values in log.items():
        if key == "skip_reasons":
            out[key] = values[:3]
        elif key.startswith("time_"):
            out[key] = float(sum(values))
        elif values and isinstance(values[0], list):
            out[key] = np.mean(np.asarray(values, dtype=float), axis=0).tolist()
        else:
            out[key] = float(np.mean(values)) if values else float("nan")
    out["skipped_steps"] = float(sum(log.get("skipped_steps", [])))
    out.setdefault("lambda", [math.nan] * num_objectives)
    return out


def _mean_metric(values: list[Any]) -> Any:
    """Merge one metric over fmgda's M trajectories."""
    if (
        values
        and isinstance(values[0], list)
        and all(isinstance(x, str) for v in values for x in v)
    ):
        return [x for v in values for x in v][:3]
    if values and isinstance(values[0], list):
        return np.mean(np.asarray(values, dtype=float), axis=0).tolist()
    return float(np.mean(values))
