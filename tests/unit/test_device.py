"""Device discipline of a local step and of evaluation, checked on a CPU-only machine.

On CUDA a tensor created without ``device=`` lands on the CPU and the first op that mixes it
with the policy's tensors raises. Here the policy is on the CPU, so such a tensor would go
unnoticed; making ``meta`` the default device exposes it: every tensor created without an
explicit device is then a meta tensor, and mixing it with the policy's CPU tensors (or reading
its value) raises. Only the rewards score outside that mode, as they may on their own device.
The pure-math helpers are also run on meta inputs: their outputs must stay on the inputs'
device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytest
import torch

from firm_ray.config import load_config
from firm_ray.core import effective_beta
from firm_ray.core.gradients import gradient_scales, losses_from_terms
from firm_ray.data.sources import load_prompts
from firm_ray.models.adapter import get_adapter_state
from firm_ray.models.policy import load_policy
from firm_ray.rewards import build_rewards
from firm_ray.trainer import LocalTrainer
from firm_ray.trainer.evaluate import evaluate_policy
from firm_ray.trainer.losses import advantages, baseline_centered, sequence_kl, surrogate_loss


@contextlib.contextmanager
def implicit_tensors_on_meta() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


class OwnDeviceReward:
    """A real reward scoring in its own (CPU) device context, as a reward model on its own GPU."""

    def __init__(self, inner) -> None:
        self._reward = inner
        self.name = inner.name

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        with torch.device("cpu"):
            return self._reward.score(prompts, completions)

    def state_dict(self) -> dict:
        return self._reward.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._reward.load_state_dict(state)


BASE = [
    "trainer.batch_prompts=2",
    "trainer.generations_per_prompt=3",
    "trainer.max_new_tokens=6",
    "trainer.micro_batch_size=4",
    "trainer.kl_coef=0.05",
    "federation.local_steps=1",
]


@pytest.fixture(scope="module")
def world(world_model_dir):
    cfg = load_config(None, [f"model.name_or_path={world_model_dir}", *BASE])
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    rewards = [OwnDeviceReward(r) for r in build_rewards(cfg.rewards)]
    splits = load_prompts(cfg.data, 0)
    return cfg, policy, rewards, splits


@pytest.mark.parametrize(
    "overrides",
    [
        ["algorithm.name=firm", "algorithm.mu=0.1", "algorithm.grad_norm=l2"],
        ["algorithm.name=fedavg_ls", "trainer.kl_mode=loss", "trainer.ppo_epochs=2"],
        ["algorithm.name=fmgda", "lora.dropout=0.1"],
    ],
)
def test_a_local_step_creates_no_tensor_off_the_policy_device(world, overrides) -> None:
    base, policy, rewards, splits = world
    cfg = load_config(None, [f"model.name_or_path={base.model.name_or_path}", *BASE, *overrides])
    start = get_adapter_state(policy.model)
    with implicit_tensors_on_meta():
        trainer = LocalTrainer(policy, rewards, cfg.trainer, cfg.algorithm, 1, seed=0)
        update = trainer.run_round(start, splits.train[:8], client_id=0, round_index=0)
    assert update.valid, update.reason
    assert update.metrics["skipped_steps"] == 0.0, update.metrics["skip_reasons"]
    tensors = [update.adapter] if update.adapter is not None else update.objective_deltas
    assert all(t.device.type == "cpu" for state in tensors for t in state.values())


def test_evaluation_creates_no_tensor_off_the_policy_device(world) -> None:
    _, policy, rewards, splits = world
    with implicit_tensors_on_meta():
        result = evaluate_policy(
            policy, rewards, splits.eval[:5], 2, 6, batch_prompts=2, chunk_tokens=4
        )
    assert len(result["rewards"]) == len(rewards) and result["kl"] == result["kl"]


def test_step_math_keeps_its_inputs_device() -> None:
    """Advantages, KL penalty, losses, loss weights, gradient scales and Gram on meta inputs."""
    meta = torch.device("meta")
    rewards = torch.empty(6, 2, device=meta)
    adv = advantages(rewards, group_size=3)
    logp = torch.empty(6, 5, device=meta, requires_grad=True)
    mask = torch.empty(6, 5, device=meta)
    kl = sequence_kl(logp.detach(), torch.empty(6, 5, device=meta), mask)
    penalty = baseline_centered(kl, 3)
    loss = surrogate_loss(
        logp, logp.detach(), mask, adv, 0.2, False, torch.empty(6, 5, device=meta), 0.1, 12
    )
    grads = torch.empty(2, 7, device=meta)
    gram = grads.double() @ grads.double().T
    outputs = [
        adv,
        kl,
        penalty,
        loss.terms,
        loss.weights,
        losses_from_terms(loss.terms, loss.weights),
    ]
    outputs += [gradient_scales(grads, "l2"), gradient_scales(grads, "none"), gram]
    assert all(t.device == meta for t in outputs)
    with pytest.raises((NotImplementedError, RuntimeError)):
        effective_beta(gram, 1.0)  # reads values: would sync, but never silently mixes


@pytest.mark.parametrize("algorithm", ["firm", "fmgda"])
def test_server_aggregation_creates_no_tensor_off_the_updates_device(algorithm) -> None:
    """The aggregator's math (strategies, drift, disagreement) on CPU client updates."""
    from firm_ray.algorithms import build_strategy
    from firm_ray.core.aggregation import state_distance
    from firm_ray.core.metrics import disagreement
    from firm_ray.types import ClientUpdate

    cfg = load_config(None, [f"algorithm.name={algorithm}"])
    gen = torch.Generator().manual_seed(0)
    shapes = {"a.lora_A.weight": (4, 8), "a.lora_B.weight": (8, 4)}

    def state() -> dict[str, torch.Tensor]:
        return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}

    start = state()
    updates = [
        ClientUpdate(
            client_id=i,
            round=0,
            num_samples=3 + i,
            adapter=state() if algorithm == "firm" else None,
            objective_deltas=[state(), state()] if algorithm == "fmgda" else None,
            metrics={"lambda": [0.3 + 0.1 * i, 0.7 - 0.1 * i], "steps": 2.0, "skipped_steps": 0.0},
        )
        for i in range(3)
    ]
    with implicit_tensors_on_meta():
        result = build_strategy(cfg).aggregate_round(0, start, iter(updates), [])
        drift = [state_distance(u.adapter, result.state) for u in updates if u.adapter]
        spread = disagreement([u.metrics["lambda"] for u in updates])
    assert all(t.device.type == "cpu" for t in result.state.values())
    assert result.accepted == [0, 1, 2] and spread > 0 and all(d > 0 for d in drift)
