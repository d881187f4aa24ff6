"""Pareto stationarity at evaluation, on the real built-in world: the number is the min-norm
combination of the per-objective surrogate gradients (checked against a plain autograd
computation written out here), and computing it changes nothing else (adapter, RNG, the other
evaluation results)."""

from __future__ import annotations

import pytest
import torch

from firm_ray.config import load_config
from firm_ray.core.metrics import pareto_stationarity
from firm_ray.data.sources import load_prompts
from firm_ray.models.adapter import get_adapter_state
from firm_ray.models.policy import load_policy
from firm_ray.rewards import build_rewards
from firm_ray.trainer.evaluate import evaluate_policy
from firm_ray.trainer.losses import sequence_kl, token_logprobs

EVAL = {"samples_per_prompt": 2, "max_new_tokens": 8, "batch_prompts": 4, "seed": 5}


@pytest.fixture(scope="module")
def world(world_model_dir):
    cfg = load_config(None, [f"model.name_or_path={world_model_dir}"])
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    with torch.no_grad():  # a moved adapter, so the KL to the reference is not 0
        gen = torch.Generator().manual_seed(0)
        for p in policy.trainable_parameters:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    prompts = load_prompts(cfg.data, 0).eval[:6]  # chunks of 4 and 2 prompts
    return cfg, policy, build_rewards(cfg.rewards), prompts


def _trainer(world, *overrides: str):
    cfg = world[0]
    return load_config(None, [f"model.name_or_path={cfg.model.name_or_path}", *overrides]).trainer


def _evaluate(world, trainer=None):
    _, policy, rewards, prompts = world
    return evaluate_policy(policy, rewards, prompts, trainer=trainer, **EVAL)


def test_stationarity_leaves_adapter_rng_and_other_results_unchanged(world) -> None:
    policy = world[1]
    before = get_adapter_state(policy.model)
    torch.manual_seed(123)
    plain = _evaluate(world)
    after_plain = torch.get_rng_state()
    torch.manual_seed(123)
    full = _evaluate(world, _trainer(world))
    assert torch.equal(torch.get_rng_state(), after_plain)  # no draw from the global stream
    for key in ("rewards", "rewards_by_category", "kl"):
        assert full[key] == plain[key], key  # bitwise: same floats
    state = get_adapter_state(policy.model)
    assert all(torch.equal(state[k], before[k]) for k in before)
    assert all(p.grad is None for p in policy.trainable_parameters)
    assert full["pareto_stationarity"] > 0 and full["stationarity_seconds"] > 0
    assert len(full["objective_grad_norms"]) == 2
    assert full["pareto_stationarity"] <= min(full["objective_grad_norms"]) + 1e-9
    assert "pareto_stationarity" not in plain


def _by_hand(world, trainer) -> tuple[float, list[float]]:
    """The first-epoch surrogate gradients of every objective, written out with plain
    autograd on the whole batch: g_m = -(1/N) sum_s A_m(s) sum_t w_st / T_s grad log pi_st."""
    from firm_ray.models.generation import sample_completions
    from firm_ray.rewards import score_all

    _, policy, rewards, prompts = world
    scorers = [getattr(r, "inner", r) for r in rewards]
    params = policy.trainable_parameters
    parts, all_rewards, all_kl = [], [], []
    for start in range(0, len(prompts), EVAL["batch_prompts"]):
        chunk = prompts[start : start + EVAL["batch_prompts"]]
        samples = sample_completions(
            policy,
            [p.text for p in chunk],
            EVAL["samples_per_prompt"],
            EVAL["max_new_tokens"],
            seed=EVAL["seed"] + start,
        )
        all_rewards.append(score_all(scorers, samples.prompts, samples.completions))
        mask = samples.completion_mask.float()
        with torch.no_grad(), policy.reference():
            ref = token_logprobs(
                policy.model, samples.input_ids, samples.attention_mask, samples.prompt_length
            )
        all_kl.append(sequence_kl(samples.sample_logp, ref, mask))
        parts.append((samples, mask))
    raw = torch.cat(all_rewards)
    shaped = raw - trainer.kl_coef * torch.cat(all_kl)[:, None]  # kl_mode reward: reward units
    grouped = shaped.reshape(-1, EVAL["samples_per_prompt"], raw.shape[1])
    adv = (grouped - grouped.mean(dim=1, keepdim=True)) / (
        grouped.std(dim=1, keepdim=True, unbiased=False) + 1e-6
    )
    adv = adv.reshape(raw.shape)
    num = raw.shape[0]
    grads = torch.zeros(raw.shape[1], sum(p.numel() for p in params), dtype=torch.float64)
    offset = 0
    for samples, mask in parts:
        size = mask.shape[0]
        logp = token_logprobs(
            policy.model, samples.input_ids, samples.attention_mask, samples.prompt_length
        )
        weight = torch.exp(logp.detach() - samples.sample_logp).clamp(max=trainer.importance_cap)
        per_token = weight * mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
        for m in range(raw.shape[1]):
            loss = -(adv[offset : offset + size, m, None] * logp * per_token).sum() / num
            g = torch.autograd.grad(loss, params, retain_graph=True)
            grads[m] += torch.cat([x.reshape(-1) for x in g]).double()
        offset += size
    return pareto_stationarity(grads), grads.norm(dim=1).tolist()


@pytest.mark.parametrize("micro", [3, 32])
def test_stationarity_matches_plain_autograd(world, micro: int) -> None:
    """Exact over micro-batches (3 sequences) and evaluation chunks (4 + 2 prompts)."""
    trainer = _trainer(world, f"trainer.micro_batch_size={micro}")
    got = _evaluate(world, trainer)
    expected, norms = _by_hand(world, trainer)
    assert got["pareto_stationarity"] == pytest.approx(expected, rel=1e-4)
    assert got["objective_grad_norms"] == pytest.approx(norms, rel=1e-4)


def test_stationarity_follows_the_trainer_settings(world) -> None:
    base = _evaluate(world, _trainer(world))["objective_grad_norms"]
    centred = _evaluate(world, _trainer(world, "trainer.advantage=group_mean"))
    assert centred["objective_grad_norms"] != pytest.approx(base, rel=1e-3)
    # every completion truncated at 1 token, all masked: nothing to differentiate, said so
    _, policy, rewards, prompts = world
    masked = evaluate_policy(
        policy,
        rewards,
        prompts[:2],
        samples_per_prompt=2,
        max_new_tokens=1,
        trainer=_trainer(world, "trainer.mask_truncated=true"),
    )
    assert masked["pareto_stationarity"] is None and masked["objective_grad_norms"] is None
    assert "mask_truncated" in masked["pareto_stationarity_skipped"]


def test_stationarity_of_one_objective_is_its_gradient_norm(world) -> None:
    _, policy, rewards, prompts = world
    got = evaluate_policy(policy, rewards[:1], prompts, trainer=_trainer(world), **EVAL)
    assert got["pareto_stationarity"] == pytest.approx(got["objective_grad_norms"][0], rel=1e-9)
