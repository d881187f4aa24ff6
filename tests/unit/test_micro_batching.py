"""Memory set by config: chunked completion log-probs equal the full-logits ones, and the
per-objective gradients accumulated over micro-batches (with or without activation
checkpointing, and under bf16 autocast in float32) equal the full batch's."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from firm_ray.config import load_config
from firm_ray.data.sources import load_prompts
from firm_ray.models.adapter import get_adapter_state, set_adapter_state
from firm_ray.models.generation import sample_completions
from firm_ray.models.policy import load_policy
from firm_ray.rewards import build_rewards, score_all
from firm_ray.trainer import LocalTrainer
from firm_ray.trainer.losses import advantages, causal_lm, token_logprobs
from firm_ray.trainer.step_parts import EpochState, Timer, set_activation_checkpointing

SMALL = ["trainer.batch_prompts=3", "trainer.generations_per_prompt=4", "trainer.max_new_tokens=10"]


@pytest.fixture(scope="module")
def world(world_model_dir):
    cfg = load_config(None, [f"model.name_or_path={world_model_dir}", *SMALL])
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    with torch.no_grad():  # a non-zero LoRA B, so gradients reach both A and B
        generator = torch.Generator().manual_seed(0)
        for p in policy.trainable_parameters:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    rewards = build_rewards(cfg.rewards)
    texts = [p.text for p in load_prompts(cfg.data, 0).train[:3]]
    samples = sample_completions(policy, texts, 4, 10, seed=5)
    scores = score_all(rewards, samples.prompts, samples.completions)
    return world_model_dir, policy, rewards, samples, scores


def full_logits_logprobs(model, samples, temperature: float) -> torch.Tensor:
    """The straightforward (memory-hungry) definition: every position's full logits."""
    position_ids = (samples.attention_mask.cumsum(dim=1) - 1).clamp_min(0)
    logits = model(
        input_ids=samples.input_ids,
        attention_mask=samples.attention_mask,
        position_ids=position_ids,
    ).logits[:, samples.prompt_length - 1 : -1]
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, samples.completion_ids[..., None]).squeeze(-1)


def test_chunked_logprobs_and_their_gradients_equal_the_full_logits_ones(world) -> None:
    """In float64, so only a wrong formula (not summation order) can tell them apart."""
    model_dir, _, _, samples, _ = world
    cfg = load_config(None, [f"model.name_or_path={model_dir}"])
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    policy.model.double()
    params = policy.trainable_parameters
    with torch.no_grad():
        for p in params:
            p.add_(0.05)
    mask = samples.completion_mask.float()
    want = full_logits_logprobs(policy.model, samples, 0.8)
    want_grads = torch.autograd.grad((want * mask).sum(), params)
    got = token_logprobs(
        policy.model,
        samples.input_ids,
        samples.attention_mask,
        samples.prompt_length,
        temperature=0.8,
        chunk_tokens=5,  # several chunks, the last one partial
    )
    got_grads = torch.autograd.grad((got * mask).sum(), params)
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-10)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(g, w, atol=1e-10, rtol=1e-8)


def epoch_gradients(world, *overrides: str, mode: str = "firm") -> tuple[torch.Tensor, ...]:
    model_dir, policy, rewards, samples, scores = world
    if mode == "fixed":  # one combined gradient: linear scalarization's cheaper step
        overrides = (*overrides, "algorithm.name=fedavg_ls")
    cfg = load_config(None, [f"model.name_or_path={model_dir}", *SMALL, *overrides])
    start = get_adapter_state(policy.model)
    trainer = LocalTrainer(policy, rewards, cfg.trainer, cfg.algorithm, 1, seed=0)
    try:
        policy.model.train()
        mask = samples.completion_mask.float()
        adv = advantages(scores, samples.group_size)
        state = EpochState(samples, mask, adv, None, None)
        log: dict = defaultdict(list)
        grads, losses, _ = trainer._epoch_gradients(state, True, trainer.preference, Timer(log))
        return grads, losses, state.weights
    finally:
        policy.model.eval()
        set_adapter_state(policy.model, start)
        set_activation_checkpointing(causal_lm(policy.model), False)


def test_micro_batched_gradients_equal_the_full_batch(world) -> None:
    full, full_losses, weights = epoch_gradients(world, "trainer.micro_batch_size=12")
    assert full.shape[0] == 2 and full.abs().sum() > 0
    assert torch.allclose(weights[weights > 0], torch.ones(()), atol=1e-4)  # on-policy: w = 1
    for size in (1, 5):
        part, part_losses, _ = epoch_gradients(world, f"trainer.micro_batch_size={size}")
        assert torch.allclose(part, full, atol=1e-6, rtol=1e-5), size
        assert torch.allclose(part_losses, full_losses, atol=1e-7)
    fixed, _, _ = epoch_gradients(world, "trainer.micro_batch_size=5", mode="fixed")
    assert fixed.shape[0] == 1
    assert torch.allclose(fixed[0], 0.5 * (full[0] + full[1]), atol=1e-6, rtol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients(world) -> None:
    full, _, _ = epoch_gradients(world, "trainer.micro_batch_size=12")
    checkpointed, _, _ = epoch_gradients(
        world, "trainer.micro_batch_size=5", "trainer.gradient_checkpointing=true"
    )
    assert torch.allclose(checkpointed, full, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_keeps_float32_gradients(world) -> None:
    full, _, _ = epoch_gradients(world, "trainer.micro_batch_size=12")
    bf16, _, _ = epoch_gradients(world, "trainer.mixed_precision=bf16")
    assert bf16.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(bf16, full, dim=1)
    assert bool((cosine > 0.9).all()), cosine
