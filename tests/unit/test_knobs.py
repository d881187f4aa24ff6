"""The trainer's faithful knobs (issue 15 item 2), each tested on the definition it cites.

trainer.advantage: group / batch (GRPO's standardized forms) and group_mean / batch_mean (Dr.
GRPO; TRL's scale_rewards="none"), by hand and against TRL's GRPOTrainer. trainer.kl_mode:
"reward" subtracts kl_coef * KL from every raw reward before the advantage (DESIGN.md's
J_m = E[r_m] - kappa KL, kappa in reward units); "advantage" is the form before issue 15.
trainer.optimizer: SGD's step is -lr * the clipped gradient (torch's momentum recurrence, L2
weight decay); AdamW is today's optimizer; the defaults resolve by the stated rule.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from firm_ray.config import ConfigError, TrainerConfig, load_config
from firm_ray.trainer.backends import (
    DEFAULT_LEARNING_RATES,
    TorchBackend,
    build_backend,
    resolve_optimizer,
)
from firm_ray.trainer.losses import (
    advantages,
    baseline_centered,
    objective_advantages,
    sequence_kl,
)

# two prompts x G = 2 completions, M = 2 objectives
REWARDS = torch.tensor([[1.0, 0.0], [3.0, 4.0], [2.0, 5.0], [2.0, 1.0]])


# ------------------------------------------------------------------------- advantage modes
def test_advantage_modes_by_hand() -> None:
    want_group_mean = torch.tensor([[-1.0, -2.0], [1.0, 2.0], [0.0, 2.0], [0.0, -2.0]])
    assert torch.equal(advantages(REWARDS, 2, "group_mean"), want_group_mean)
    # batch means 2.0 and 2.5
    want_batch_mean = torch.tensor([[-1.0, -2.5], [1.0, 1.5], [0.0, 2.5], [0.0, -1.5]])
    assert torch.equal(advantages(REWARDS, 2, "batch_mean"), want_batch_mean)
    # group: population std of {1, 3} = 1, of {0, 4} = 2, of {2, 2} = 0, of {5, 1} = 2; eps 1e-6
    std = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    assert torch.equal(advantages(REWARDS, 2, "group"), want_group_mean / (std + 1e-6))
    # batch: population std over the 4 rows: sqrt(0.5) and sqrt(17 / 4)
    std = torch.tensor([0.5**0.5, (17 / 4) ** 0.5])
    torch.testing.assert_close(advantages(REWARDS, 2, "batch"), want_batch_mean / (std + 1e-6))
    with pytest.raises(ValueError, match="group, batch, group_mean, batch_mean"):
        advantages(REWARDS, 2, "rloo")


def test_mean_modes_keep_each_rewards_scale() -> None:
    """Dr. GRPO's point: without the std division a reward scaled by c has c times the
    advantage, where the standardized forms erase the scale."""
    scaled = REWARDS * torch.tensor([1.0, 10.0])
    for mode in ("group_mean", "batch_mean"):
        torch.testing.assert_close(
            advantages(scaled, 2, mode), advantages(REWARDS, 2, mode) * torch.tensor([1.0, 10.0])
        )
    for mode in ("group", "batch"):
        torch.testing.assert_close(advantages(scaled, 2, mode), advantages(REWARDS, 2, mode))


def _trl_sum_then_normalize(rewards: torch.Tensor, num_generations: int, scale: str):
    """TRL's advantage of one reward function, the lines of GRPOTrainer.
    _generate_and_score_completions (sum_then_normalize, reward weight 1) run on ``rewards``
    with TRL's own nanstd; the test below checks those lines are still TRL's."""
    from trl.trainer.utils import nanstd

    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    else:
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return advantages


def test_advantages_against_trl_grpo() -> None:
    from trl import GRPOTrainer

    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for line in (
        "mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)",
        "std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)",
        "std_rewards = nanstd(rewards).expand_as(rewards)",
        "advantages = rewards - mean_grouped_rewards",
        'if self.scale_rewards != "none":',
        "advantages = advantages / (std_rewards + 1e-4)",
    ):
        assert line in source, f"TRL's advantage definition changed: {line!r} is gone"

    gen = torch.Generator().manual_seed(0)
    for group_size in (2, 4, 8):
        rewards = torch.randn(16 * group_size, 3, generator=gen) * torch.tensor([1.0, 5.0, 0.1])
        rewards[:group_size, 0] = 0.7  # a group with equal rewards: zero advantage in both
        columns = range(rewards.shape[1])
        trl_none = torch.stack(
            [_trl_sum_then_normalize(rewards[:, m], group_size, "none") for m in columns], 1
        )
        trl_group = torch.stack(
            [_trl_sum_then_normalize(rewards[:, m], group_size, "group") for m in columns], 1
        )
        # group_mean IS TRL's scale_rewards="none"
        torch.testing.assert_close(
            advantages(rewards, group_size, "group_mean"), trl_none, rtol=0, atol=1e-6
        )
        # group is TRL's scale_rewards="group" up to TRL's estimator (Bessel) and eps (1e-4) ...
        torch.testing.assert_close(
            advantages(rewards, group_size, "group", eps=1e-4, unbiased=True), trl_group
        )
        # ... and with ours (population std, eps 1e-6) every advantage is sqrt(G/(G-1)) x TRL's
        # (shown on the reward of scale 5, where TRL's eps 1e-4 is negligible next to the std)
        ratio = advantages(rewards, group_size, "group")[:, 1] / trl_group[:, 1]
        torch.testing.assert_close(
            ratio, torch.full_like(ratio, (group_size / (group_size - 1)) ** 0.5), rtol=2e-3, atol=0
        )
    # TRL's "batch" centres on the group mean; ours on the batch mean (documented difference)
    trl_batch = _trl_sum_then_normalize(REWARDS[:, 1], 2, "batch")
    assert not torch.allclose(
        advantages(REWARDS, 2, "batch", eps=1e-4, unbiased=True)[:, 1], trl_batch
    )


# ----------------------------------------------------------------------------- KL placement
KL = torch.tensor([0.3, -0.1, 2.0, 0.5])


@pytest.mark.parametrize("mode", ["group_mean", "batch_mean"])
def test_kl_in_reward_units(mode: str) -> None:
    """kl_mode reward: the advantage of r_m - kappa * KL, for every objective."""
    kappa = 0.2
    adv = objective_advantages(REWARDS, KL, 2, mode, kappa, "reward")
    penalized = REWARDS - kappa * KL[:, None]
    if mode == "group_mean":
        grouped = penalized.reshape(2, 2, 2)
        want = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(4, 2)
    else:
        want = penalized - penalized.mean(dim=0, keepdim=True)
    torch.testing.assert_close(adv, want, rtol=0, atol=1e-7)
    # kappa is in reward units: rewards and kappa scaled by c scale the advantage by c
    for c in (0.01, 7.0):
        torch.testing.assert_close(
            objective_advantages(REWARDS * c, KL, 2, mode, kappa * c, "reward"), adv * c
        )


def test_kl_placements_differ_and_advantage_mode_is_the_old_form() -> None:
    kappa = 0.2
    for mode in ("group", "batch", "group_mean", "batch_mean"):
        # "advantage": exactly the code before issue 15 (local.py's _local_step)
        old = advantages(REWARDS, 2, mode) - kappa * baseline_centered(KL, 2, mode)[:, None]
        assert torch.equal(objective_advantages(REWARDS, KL, 2, mode, kappa, "advantage"), old)
        # "loss": the advantages ignore the KL (it is the k3 term of the loss)
        plain = advantages(REWARDS, 2, mode)
        assert torch.equal(objective_advantages(REWARDS, KL, 2, mode, kappa, "loss"), plain)
        for kl_mode in ("reward", "advantage", "loss"):  # no penalty: the plain advantages
            assert torch.equal(objective_advantages(REWARDS, None, 2, mode, kappa, kl_mode), plain)
            assert torch.equal(objective_advantages(REWARDS, KL, 2, mode, 0.0, kl_mode), plain)
    # with a std division the placements differ: in "reward" the KL is standardized along with
    # the reward (an objective flat in a group gets the standardized -KL as its advantage)
    reward = objective_advantages(REWARDS, KL, 2, "group", kappa, "reward")
    advantage = objective_advantages(REWARDS, KL, 2, "group", kappa, "advantage")
    assert not torch.allclose(reward, advantage)
    torch.testing.assert_close(reward[2:, 0], torch.tensor([-1.0, 1.0]), rtol=1e-5, atol=0)
    # without one, the two placements coincide (centring is linear)
    for mode in ("group_mean", "batch_mean"):
        torch.testing.assert_close(
            objective_advantages(REWARDS, KL, 2, mode, kappa, "reward"),
            objective_advantages(REWARDS, KL, 2, mode, kappa, "advantage"),
        )
    with pytest.raises(ValueError, match="kl_mode = 'token'"):
        objective_advantages(REWARDS, KL, 2, "group", kappa, "token")


def test_group_mean_centres_the_kl_per_group() -> None:
    """baseline_centered of a group_* mode uses the group mean (a batch mean before)."""
    torch.testing.assert_close(
        baseline_centered(KL, 2, "group_mean"), torch.tensor([0.2, -0.2, 0.75, -0.75])
    )


def test_sequence_kl_is_the_masked_log_ratio_sum() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(sequence_kl(logp, ref, mask), torch.tensor([-0.5, 1.0]))


# -------------------------------------------------------------------------------- optimizer
def test_optimizer_and_learning_rate_resolve() -> None:
    assert resolve_optimizer(TrainerConfig()) == ("adamw", 5e-4)
    assert resolve_optimizer(TrainerConfig(), "sgd") == ("sgd", DEFAULT_LEARNING_RATES["sgd"])
    assert DEFAULT_LEARNING_RATES == {"adamw": 5e-4, "sgd": 0.5}
    assert resolve_optimizer(TrainerConfig(optimizer="adamw"), "sgd") == ("adamw", 5e-4)
    assert resolve_optimizer(TrainerConfig(learning_rate=0.1), "sgd") == ("sgd", 0.1)
    with pytest.raises(ConfigError, match=r"^trainer\.momentum = 0\.9: only used with .*'sgd'"):
        resolve_optimizer(TrainerConfig(momentum=0.9), "adamw")
    with pytest.raises(ConfigError, match="momentum"):  # caught at load time when explicit
        load_config(None, ["trainer.optimizer=adamw", "trainer.momentum=0.9"])


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64)),
        torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64)),
    ]


def _flat(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def _directions(n: int, steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    # norms above and below max_grad_norm = 1: clipped and unclipped steps
    return [torch.randn(n, generator=gen, dtype=torch.float64) * s for s in (3.0, 0.2, 1.5)[:steps]]


def _clipped(direction: torch.Tensor, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1."""
    return direction * min(1.0, max_norm / (float(direction.norm()) + 1e-6))


def test_sgd_step_is_minus_lr_times_the_clipped_gradient() -> None:
    params = _params()
    cfg = TrainerConfig(optimizer="sgd", learning_rate=0.3, max_grad_norm=1.0)
    backend = TorchBackend(None, params, cfg)
    assert (backend.optimizer_name, backend.learning_rate) == ("sgd", 0.3)
    for direction in _directions(17, 3):
        before = _flat(params)
        norm = backend.apply(direction, lambda: torch.tensor(0.0))
        assert norm == pytest.approx(float(direction.norm()))
        want = before - 0.3 * _clipped(direction, 1.0)
        torch.testing.assert_close(_flat(params), want, rtol=0, atol=1e-14)


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 0.0), (0.5, 0.01)])
def test_sgd_momentum_is_torchs_recurrence_and_reset_clears_it(momentum, weight_decay) -> None:
    """b_t = mu b_(t-1) + g_t (b_1 = g_1), g_t = clipped direction + wd * theta (L2),
    theta -= lr b_t; no dampening, not Nesterov. reset() starts a fresh buffer."""
    params = _params()
    cfg = TrainerConfig(
        optimizer="sgd", learning_rate=0.1, momentum=momentum, weight_decay=weight_decay
    )
    backend = build_backend(None, params, cfg)
    for _ in range(2):  # two trajectories: the buffer does not survive reset()
        backend.reset()
        buffer = None
        for direction in _directions(17, 3):
            theta = _flat(params)
            grad = _clipped(direction, 1.0) + weight_decay * theta
            buffer = grad if buffer is None else momentum * buffer + grad
            backend.apply(direction, lambda: torch.tensor(0.0))
            torch.testing.assert_close(_flat(params), theta - 0.1 * buffer, rtol=0, atol=1e-13)


def test_adamw_is_the_optimizer_of_before() -> None:
    """adamw (the default for every algorithm but fmgda): torch.optim.AdamW at 5e-4 with
    trainer.weight_decay, the optimizer the torch backend always built; bit-identical steps."""
    ours, old = _params(), _params()
    cfg = TrainerConfig(weight_decay=0.01)
    backend = build_backend(None, ours, cfg)
    assert (backend.optimizer_name, backend.learning_rate) == ("adamw", 5e-4)
    reference = torch.optim.AdamW(old, lr=5e-4, weight_decay=0.01)
    for direction in _directions(17, 3):
        backend.apply(direction, lambda: torch.tensor(0.0))
        from firm_ray.core.gradients import assign_flat_grad

        assign_flat_grad(old, direction)
        torch.nn.utils.clip_grad_norm_(old, 1.0)
        reference.step()
        reference.zero_grad(set_to_none=True)
        assert torch.equal(_flat(ours), _flat(old))


# ------------------------------------------------------------ on the built-in world model
@pytest.fixture(scope="module")
def world(world_model_dir):
    from firm_ray.data.sources import load_prompts
    from firm_ray.models.adapter import get_adapter_state
    from firm_ray.models.policy import load_policy
    from firm_ray.rewards import build_rewards

    cfg = load_config(None, [f"model.name_or_path={world_model_dir}"])
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    prompts = load_prompts(cfg.data, 0).train[:32]
    return policy, build_rewards(cfg.rewards), prompts, get_adapter_state(policy.model)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_first_local_step_on_the_world_model(world, optimizer) -> None:
    """One real local step from the seeded adapter (B = 0, so only B has a gradient): SGD moves
    the adapter by lr x the gradient norm; AdamW by about 5e-4 x sqrt(#B entries), whatever the
    gradient's norm (the rule behind DEFAULT_LEARNING_RATES['sgd'])."""
    from firm_ray.trainer import LocalTrainer

    policy, rewards, prompts, theta0 = world
    cfg = load_config(
        None,
        [
            f"model.name_or_path={policy.model.name_or_path}",
            f"trainer.optimizer={optimizer}",
            "trainer.batch_prompts=4",
            "trainer.max_new_tokens=12",
        ],
    )
    trainer = LocalTrainer(policy, rewards, cfg.trainer, cfg.algorithm, 1, seed=0)
    update = trainer.run_round(theta0, prompts, client_id=0, round_index=0)
    assert update.valid and update.metrics["skipped_steps"] == 0
    delta = torch.cat([(update.adapter[k] - v).reshape(-1) for k, v in theta0.items()])
    grad_norm = update.metrics["grad_norm"]
    assert 0 < grad_norm < 1.0  # max_grad_norm 1: not clipped
    moved = int((delta != 0).sum())
    assert 0 < moved < delta.numel() // 2 + 1  # only the B matrices move at B = 0
    if optimizer == "sgd":
        want = DEFAULT_LEARNING_RATES["sgd"] * grad_norm
        assert float(delta.norm()) == pytest.approx(want, rel=1e-5)
    else:
        assert float(delta.norm()) == pytest.approx(5e-4 * moved**0.5, rel=1e-2)
