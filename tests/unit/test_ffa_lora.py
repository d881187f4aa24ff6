"""lora.freeze_a (FFA-LoRA, Sun et al. 2024) on the real built-in world: A never moves, so the
server's average of the clients' B matrices is exactly the average of their updates B A."""

from __future__ import annotations

import pytest
import torch

from firm_ray.config import load_config
from firm_ray.core.aggregation import weighted_average
from firm_ray.data.sources import load_prompts
from firm_ray.models.adapter import get_adapter_state, set_adapter_state
from firm_ray.models.policy import load_policy
from firm_ray.rewards import build_rewards
from firm_ray.trainer import LocalTrainer

SMALL = [
    "trainer.batch_prompts=2",
    "trainer.generations_per_prompt=4",
    "trainer.max_new_tokens=8",
    "federation.local_steps=3",
]


def _world(model_dir, freeze_a: bool):
    cfg = load_config(
        None, [f"model.name_or_path={model_dir}", f"lora.freeze_a={freeze_a}", *SMALL]
    )
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    return cfg, policy, get_adapter_state(policy.model)


@pytest.fixture(scope="module")
def frozen(world_model_dir):
    return _world(world_model_dir, True)


@pytest.fixture(scope="module")
def trained_a(world_model_dir):
    return _world(world_model_dir, False)


@pytest.fixture(scope="module")
def setting(world_model_dir):
    cfg = load_config(None, [f"model.name_or_path={world_model_dir}"])
    return build_rewards(cfg.rewards), load_prompts(cfg.data, 0).train[:32]


def _round(world, setting, client_id: int):
    """One client's local round from the seeded global adapter (as a worker runs it)."""
    cfg, policy, start = world
    rewards, prompts = setting
    set_adapter_state(policy.model, start)
    trainer = LocalTrainer(
        policy,
        rewards,
        cfg.trainer,
        cfg.algorithm,
        cfg.federation.local_steps,
        seed=cfg.experiment.seed,
    )
    update = trainer.run_round(start, prompts, client_id=client_id, round_index=0)
    assert update.valid, update.reason
    return update.adapter


def _pairs(state: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    pairs = [(k, k.replace("lora_A", "lora_B")) for k in state if "lora_A" in k]
    assert pairs and all(b in state for _, b in pairs)
    return pairs


def test_freeze_a_trains_only_b(frozen, trained_a) -> None:
    _, policy, start = frozen
    names = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert names and all("lora_B" in n for n in names)
    # half the LoRA parameters of the default (A and B of the same rank and width here)
    full = sum(p.numel() for p in trained_a[1].trainable_parameters)
    assert sum(p.numel() for p in policy.trainable_parameters) < full
    # the upload is still a whole PEFT adapter: A is in it
    assert any("lora_A" in k for k in start)
    with policy.reference():  # peft re-marks the adapter trainable when it is re-enabled
        pass
    assert {n for n, p in policy.model.named_parameters() if p.requires_grad} == names


def test_a_is_bitwise_unchanged_by_local_training(frozen, setting) -> None:
    start = frozen[2]
    adapter = _round(frozen, setting, client_id=0)
    for a, b in _pairs(start):
        assert torch.equal(adapter[a], start[a]), a
        assert not torch.equal(adapter[b], start[b]), b  # B did learn


@pytest.mark.parametrize("freeze", [True, False])
def test_averaging_b_is_averaging_ba_only_with_frozen_a(
    freeze: bool, frozen, trained_a, setting
) -> None:
    """mean_i(B_i A_i) == mean(B) mean(A) when every A_i is the seeded A (FFA-LoRA); with A
    trained the product of the averages is not the average of the products."""
    world = frozen if freeze else trained_a
    clients = [_round(world, setting, client_id=c) for c in (0, 1)]
    average = weighted_average((state, 1.0) for state in clients)  # the server's FedAvg
    worst = 0.0
    for a, b in _pairs(world[2]):
        products = [c[b].double() @ c[a].double() for c in clients]
        exact = sum(products) / len(products)
        served = average[b].double() @ average[a].double()
        if freeze:
            assert torch.equal(average[a], world[2][a])  # identical A's average bit-exactly
        worst = max(worst, float((served - exact).abs().max() / exact.abs().max()))
    if freeze:
        assert worst < 1e-6  # float32 rounding of the average only
    else:
        assert worst > 1e-3  # measured 1.3e-2 (frozen: 4.6e-8)
