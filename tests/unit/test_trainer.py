"""The local trainer on the real built-in world: modes, determinism, guards, and learning."""

from __future__ import annotations

import textwrap

import pytest
import torch

from firm_ray.config import RewardSpec, load_config
from firm_ray.core.aggregation import state_distance
from firm_ray.data.sources import load_prompts
from firm_ray.models.adapter import get_adapter_state, set_adapter_state
from firm_ray.models.policy import load_policy
from firm_ray.rewards import build_rewards
from firm_ray.trainer import LocalTrainer
from firm_ray.trainer.evaluate import evaluate_policy
from firm_ray.trainer.losses import advantages, surrogate_loss

SMALL = [
    "trainer.batch_prompts=4",
    "trainer.generations_per_prompt=4",
    "trainer.max_new_tokens=12",
    "federation.local_steps=2",
]


@pytest.fixture(scope="module")
def world(world_model_dir):
    cfg = load_config(None, [f"model.name_or_path={world_model_dir}", *SMALL])
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    rewards = build_rewards(cfg.rewards)
    splits = load_prompts(cfg.data, 0)
    return cfg, policy, rewards, splits, get_adapter_state(policy.model)


def make_trainer(world, *overrides: str, rewards=None) -> LocalTrainer:
    cfg, policy, default_rewards, _, start = world
    set_adapter_state(policy.model, start)
    cfg = load_config(None, [f"model.name_or_path={cfg.model.name_or_path}", *SMALL, *overrides])
    return LocalTrainer(
        policy,
        rewards or default_rewards,
        cfg.trainer,
        cfg.algorithm,
        cfg.federation.local_steps,
        seed=cfg.experiment.seed,
    )


# ----------------------------------------------------------------------------- loss pieces
def test_group_advantages() -> None:
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 5.0], [2.0, 1.0]])
    adv = advantages(rewards, group_size=2)
    assert torch.allclose(adv[:2, 0], torch.tensor([-1.0, 1.0]), atol=1e-4)
    assert torch.equal(adv[:2, 1], torch.zeros(2))  # equal rewards: nothing to learn, no NaN
    assert torch.allclose(adv[2:, 0], torch.zeros(2))
    batch = advantages(rewards, group_size=2, mode="batch")
    assert torch.allclose(batch.mean(dim=0), torch.zeros(2), atol=1e-6)
    with pytest.raises(ValueError, match="advantage"):
        advantages(rewards, 2, mode="rloo")


def test_first_epoch_loss_equals_general_clipped_form() -> None:
    """At ratio == 1 the one-term loss has the same value and gradient as PPO's clipped form."""
    torch.manual_seed(0)
    logp = (-torch.rand(6, 5)).requires_grad_(True)
    mask = (torch.rand(6, 5) > 0.2).float()
    adv = torch.randn(6, 3)
    ref = -torch.rand(6, 5)
    one = surrogate_loss(logp, logp.detach(), mask, adv, 0.2, True, ref, 0.1)
    two = surrogate_loss(logp, logp.detach(), mask, adv, 0.2, False, ref, 0.1)
    assert one.terms.shape[0] == 2 and two.terms.shape[0] == 3  # (+ KL term)
    for m in range(3):
        l1 = (one.weights[m][:, :, None] * one.terms).sum()
        l2 = (two.weights[m][:, :, None] * two.terms).sum()
        g1 = torch.autograd.grad(l1, logp, retain_graph=True)[0]
        g2 = torch.autograd.grad(l2, logp, retain_graph=True)[0]
        assert torch.allclose(l1, l2) and torch.allclose(g1, g2)
    # away from 1 the clip removes the gradient of tokens pushed past the trust region
    moved = surrogate_loss(logp, logp.detach() - 1.0, mask, adv, 0.2, False)
    assert moved.clip_fraction == pytest.approx(1.0)


# ----------------------------------------------------------------------------- modes
def test_firm_round_is_valid_deterministic_and_client_specific(world) -> None:
    _, _, _, splits, start = world
    prompts = splits.train[:64]
    first = make_trainer(world).run_round(start, prompts, client_id=1, round_index=0)
    again = make_trainer(world).run_round(start, prompts, client_id=1, round_index=0)
    other = make_trainer(world).run_round(start, prompts, client_id=2, round_index=0)
    assert first.valid and first.num_samples == 64 and first.objective_deltas is None
    assert state_distance(first.adapter, start) > 0
    assert all(torch.equal(first.adapter[k], again.adapter[k]) for k in start)
    assert state_distance(first.adapter, other.adapter) > 0
    lam = first.metrics["lambda"]
    assert len(lam) == 2 and abs(sum(lam) - 1) < 1e-6 and min(lam) >= 0
    for key in ("rewards", "kl", "losses", "time_generate", "time_score", "time_backward"):
        assert key in first.metrics
    assert first.metrics["skipped_steps"] == 0.0


def test_huge_beta_firm_equals_fedavg_ls(world) -> None:
    """beta -> infinity is linear scalarization with weights p: the same adapter."""
    _, _, _, splits, start = world
    prompts = splits.train[:64]
    pref = "algorithm.preference=[0.7,0.3]"
    firm = make_trainer(world, pref, "algorithm.beta=1e12").run_round(start, prompts, 0, 0)
    ls = make_trainer(world, pref, "algorithm.name=fedavg_ls").run_round(start, prompts, 0, 0)
    assert ls.metrics["lambda"] == pytest.approx([0.7, 0.3])
    assert firm.metrics["lambda"] == pytest.approx([0.7, 0.3], abs=1e-6)
    for k in start:
        assert torch.allclose(firm.adapter[k], ls.adapter[k], atol=1e-6), k


def test_fmgda_returns_one_delta_per_objective(world) -> None:
    _, _, _, splits, start = world
    prompts = splits.train[:64]
    update = make_trainer(world, "algorithm.name=fmgda").run_round(start, prompts, 0, 0)
    assert update.adapter is None and len(update.objective_deltas) == 2
    # trajectory m is fedavg_ls with p = e_m from the same start (its own seeds), with fmgda's
    # default optimizer (local SGD, as in Yang et al. 2023)
    first_only = make_trainer(
        world, "algorithm.name=fedavg_ls", "algorithm.preference=[1,0]", "trainer.optimizer=sgd"
    )
    expected = first_only.run_round(start, prompts, 0, 0).adapter
    for k in start:
        got = start[k] + update.objective_deltas[0][k]
        assert torch.allclose(got, expected[k], atol=1e-6), k
    assert state_distance(update.objective_deltas[0], update.objective_deltas[1]) > 0


def test_fedprox_keeps_the_adapter_closer(world) -> None:
    _, _, _, splits, start = world
    prompts = splits.train[:64]
    steps = "federation.local_steps=4"
    free = make_trainer(world, steps).run_round(start, prompts, 0, 0)
    prox = make_trainer(world, steps, "algorithm.mu=1000").run_round(start, prompts, 0, 0)
    assert state_distance(prox.adapter, start) < state_distance(free.adapter, start)


@pytest.mark.parametrize(
    "extra",
    [
        ["trainer.kl_mode=loss"],
        ["trainer.ppo_epochs=2"],
        ["algorithm.grad_norm=l2"],
        ["trainer.advantage=batch", "algorithm.beta=0"],
        ["trainer.micro_batch_size=3", "trainer.gradient_checkpointing=true"],
        ["trainer.mixed_precision=bf16", "trainer.top_k=20", "trainer.top_p=0.9"],
        ["trainer.mask_truncated=true", "trainer.repetition_penalty=1.2"],
    ],
)
def test_variants_run(world, extra) -> None:
    _, _, _, splits, start = world
    update = make_trainer(world, *extra).run_round(start, splits.train[:32], 0, 0)
    assert update.valid and update.metrics["skipped_steps"] == 0.0


# ----------------------------------------------------------------------------- guards
def test_non_finite_rewards_skip_the_step(world, tmp_path, monkeypatch) -> None:
    (tmp_path / "badreward.py").write_text(
        textwrap.dedent(
            """
            def nan_on_insults(prompts, completions):
                return [float("nan") if "you" in c else 1.0 for c in completions]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _, _, default_rewards, splits, start = world
    bad = build_rewards(
        [RewardSpec(name="bad", type="python", kwargs={"function": "badreward.nan_on_insults"})]
    )
    trainer = make_trainer(world, rewards=[default_rewards[0], bad[0]])
    update = trainer.run_round(start, splits.train[:64], 0, 0)
    assert update.metrics["skipped_steps"] == update.metrics["steps"] == 2.0
    assert "bad" in update.metrics["skip_reasons"][0]
    # every step skipped: theta^t back would dilute the average, so nothing is sent
    assert not update.valid and update.adapter is None
    assert update.reason.startswith("all 2 local steps skipped: ") and "'bad'" in update.reason


def test_non_finite_global_adapter_is_refused(world) -> None:
    _, _, _, splits, start = world
    poisoned = {k: v.clone() for k, v in start.items()}
    first = next(iter(poisoned))
    poisoned[first].fill_(float("nan"))
    update = make_trainer(world).run_round(poisoned, splits.train[:32], 0, 0)
    assert not update.valid and first in update.reason and update.adapter is None


# ----------------------------------------------------------------------------- learning
def test_preference_steers_what_is_learned(world) -> None:
    """From one start, fedavg_ls with p = (1, 0) raises relevance and p = (0, 1) raises
    harmlessness on held-out prompts. Measured on the Llama world model (30 steps, lr 0.003, 96
    eval prompts x 4): relevance 0.44 -> 0.55 and harmlessness 0.78 -> 0.88 (experiment seed 1:
    0.53 and 0.85); the thresholds are about half the smaller effects. lr 0.01 (right for the
    earlier GPT-2 model) overshoots this model: KL ~14 and relevance falls to 0.36."""
    _, policy, rewards, splits, start = world
    held = splits.eval[:96]
    set_adapter_state(policy.model, start)
    before = evaluate_policy(policy, rewards, held, 4, 16, seed=0)["rewards"]
    after = {}
    for pref in ("[1,0]", "[0,1]"):
        trainer = make_trainer(
            world,
            "algorithm.name=fedavg_ls",
            f"algorithm.preference={pref}",
            "federation.local_steps=30",
            "trainer.learning_rate=0.003",
            "trainer.batch_prompts=8",
            "trainer.max_new_tokens=16",
        )
        update = trainer.run_round(start, splits.train, 0, 0)
        set_adapter_state(policy.model, update.adapter)
        after[pref] = evaluate_policy(policy, rewards, held, 4, 16, seed=0)["rewards"]
    set_adapter_state(policy.model, start)
    assert after["[1,0]"][0] > before[0] + 0.045, (before, after)
    assert after["[0,1]"][1] > before[1] + 0.045, (before, after)
    assert after["[1,0]"][0] > after["[0,1]"][0] and after["[0,1]"][1] > after["[1,0]"][1]


def test_same_update_in_another_process(world, tmp_path) -> None:
    """Same (global adapter, client data, seed) -> the same update, whichever process runs it."""
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    cfg, _, _, splits, start = world
    save_file(start, str(tmp_path / "start.safetensors"))
    script = textwrap.dedent(
        f"""
        import torch
        from safetensors.torch import load_file, save_file
        from firm_ray.config import load_config
        from firm_ray.data.sources import load_prompts
        from firm_ray.models.policy import load_policy
        from firm_ray.rewards import build_rewards
        from firm_ray.trainer import LocalTrainer
        torch.set_num_threads({torch.get_num_threads()})
        cfg = load_config(None, {[f"model.name_or_path={cfg.model.name_or_path}", *SMALL]!r})
        policy = load_policy(cfg.model, cfg.lora, seed=0)
        trainer = LocalTrainer(policy, build_rewards(cfg.rewards), cfg.trainer, cfg.algorithm,
                               cfg.federation.local_steps, seed=cfg.experiment.seed)
        prompts = load_prompts(cfg.data, 0).train[:64]
        start = load_file({str(tmp_path / "start.safetensors")!r})
        update = trainer.run_round(start, prompts, 5, 3)
        save_file(update.adapter, {str(tmp_path / "out.safetensors")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    here = make_trainer(world).run_round(start, splits.train[:64], 5, 3).adapter
    there = load_file(str(tmp_path / "out.safetensors"))
    assert all(torch.equal(here[k], there[k]) for k in here)
