"""The DeepSpeed backend takes the same local FIRM steps as the torch backend.

Both backends start from the same global adapter with the same client, round and seed on the
embedded world model; the deepspeed backend backpropagates sum_m lambda_m L_m through a
DeepSpeed engine (ZeRO stage 0 and 2, the shipped configs) instead of writing the direction into
``.grad``. The adapters agree to ~2e-6 (first-step Adam normalizes tiny gradient entries, which
amplifies the float32 difference between the factored per-objective gradients and autograd's).
Two consecutive rounds check ``reset`` (fresh AdamW state, ZeRO's fp32 master weights re-read
from the adapter the trainer loads).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

from firm_ray.config import LoraConfig, ModelConfig, TrainerConfig, load_config
from firm_ray.models.adapter import get_adapter_state, set_adapter_state
from firm_ray.trainer.backends import DEFAULT_LEARNING_RATES, build_backend
from firm_ray.trainer.deepspeed_backend import CHECK_ENV, DeepSpeedConfigError, resolve_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"
)

CONFIGS = Path(__file__).resolve().parents[2] / "tune_configs" / "deepspeed"
OVERRIDES = [
    "trainer.batch_prompts=4",
    "trainer.generations_per_prompt=4",
    "trainer.max_new_tokens=12",
]
LOCAL_STEPS = 2
CLIENT = 3
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread is fastest, and several spin-wait on a busy 2-core box
    (40 s instead of 7 s for this file)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _policy(world_model_dir):
    from firm_ray.models.policy import load_policy

    return load_policy(ModelConfig(name_or_path=str(world_model_dir)), LoraConfig(), seed=0)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def reference(world_model_dir):
    """Two torch-backend rounds: from theta^0, then from a different global adapter theta^1."""
    from firm_ray.data.sources import load_prompts
    from firm_ray.rewards import build_rewards
    from firm_ray.trainer import LocalTrainer

    cfg = load_config(None, OVERRIDES)
    rewards = build_rewards(cfg.rewards)
    prompts = load_prompts(cfg.data, 0).train[:64]
    policy = _policy(world_model_dir)
    theta0 = get_adapter_state(policy.model)
    trainer = LocalTrainer(policy, rewards, cfg.trainer, cfg.algorithm, LOCAL_STEPS, seed=0)
    first = trainer.run_round(theta0, prompts, client_id=CLIENT, round_index=0)
    # a global adapter no trajectory has produced: the mean with theta^0, shifted
    theta1 = {k: 0.5 * (v + theta0[k]) + 0.01 for k, v in first.adapter.items()}
    second = trainer.run_round(theta1, prompts, client_id=CLIENT, round_index=1)
    return {
        "cfg": cfg,
        "rewards": rewards,
        "prompts": prompts,
        "theta": (theta0, theta1),
        "updates": (first, second),
    }


# --------------------------------------------------------------- the same steps as torch
@pytest.mark.parametrize(("config_file", "stage"), [("zero0.json", 0), ("zero2.json", 2)])
def test_matches_torch_backend_over_two_rounds(
    reference, world_model_dir, monkeypatch, config_file, stage
):
    from firm_ray.trainer import LocalTrainer

    monkeypatch.setenv(CHECK_ENV, "1")  # also assert engine gradient == FIRM direction per step
    cfg = reference["cfg"]
    trainer_cfg = cfg.trainer.model_copy(
        update={"backend": "deepspeed", "deepspeed_config": str(CONFIGS / config_file)}
    )
    theta1 = reference["theta"][1]
    inputs = [{k: v.clone() for k, v in theta.items()} for theta in reference["theta"]]
    policy = _policy(world_model_dir)
    # the engine is built while the model holds another adapter: round 1 must not train from
    # ZeRO's stale fp32 master copy of it
    set_adapter_state(policy.model, theta1)
    trainer = LocalTrainer(
        policy, reference["rewards"], trainer_cfg, cfg.algorithm, LOCAL_STEPS, seed=0
    )
    backend = trainer.backend
    assert backend.needs_graph
    assert backend.stage == stage
    assert backend.check_grads

    rounds = zip(reference["theta"], reference["updates"], strict=True)
    for round_index, (theta, want) in enumerate(rounds):
        got = trainer.run_round(theta, reference["prompts"], CLIENT, round_index)
        assert got.valid and got.metrics["skipped_steps"] == 0
        moved = _max_diff(want.adapter, theta)
        assert moved > 1e-4, "the torch reference did not move: nothing is compared"
        diff = _max_diff(got.adapter, want.adapter)
        assert diff <= ATOL, f"round {round_index}: max |deepspeed - torch| = {diff:.3e}"
        assert got.metrics["grad_norm"] == pytest.approx(want.metrics["grad_norm"], rel=1e-4)
        assert got.metrics["lambda"] == pytest.approx(want.metrics["lambda"], abs=1e-4)
    for theta, before in zip(reference["theta"], inputs, strict=True):
        assert _max_diff(theta, before) == 0.0  # global adapters are not modified in place

    # forward passes run through the engine's module: the per-objective gradient hooks on the
    # LoRA Linears fire (the factored path raises without recorded activations)
    ids = torch.tensor([[1, 2, 3, 4]])
    with trainer.grads.capture():
        backend.forward_model(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert trainer.grads._records


def test_reset_resyncs_master_weights_and_clears_state(reference, world_model_dir):
    """ZeRO-2 keeps an fp32 master copy: after loading an adapter, reset() re-reads it."""
    cfg = TrainerConfig(backend="deepspeed", deepspeed_config=str(CONFIGS / "zero2.json"))
    policy = _policy(world_model_dir)
    params = policy.trainable_parameters
    backend = build_backend(policy.model, params, cfg)
    optimizer = backend.engine.optimizer

    def masters() -> torch.Tensor:
        flat = torch.cat([m.detach() for m in optimizer.single_partition_of_fp32_groups])
        return flat[: sum(p.numel() for p in params)]

    set_adapter_state(policy.model, reference["theta"][1])
    loaded = torch.cat([p.detach().reshape(-1) for p in params])
    assert not torch.equal(masters(), loaded)  # stale: built from the initial adapter
    backend.reset()
    assert torch.equal(masters(), loaded)
    assert not optimizer.optimizer.state
    backend.close()


# -------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("name", ["zero0.json", "zero2.json"])
def test_shipped_configs_are_json_and_resolve_without_conflict(name):
    raw = json.loads((CONFIGS / name).read_text())
    cfg = TrainerConfig(learning_rate=3e-4, weight_decay=0.01, max_grad_norm=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = resolve_config(raw, cfg, on_gpu=False)
    assert not [k for k in out if k.startswith("_")]
    params = out["optimizer"]["params"]
    assert out["optimizer"]["type"] == "AdamW"
    assert params == {
        "lr": 3e-4,
        "weight_decay": 0.01,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "torch_adam": True,
    }
    assert out["gradient_clipping"] == 0.0
    assert out["train_micro_batch_size_per_gpu"] == 1
    assert out["gradient_accumulation_steps"] == 1
    assert out["train_batch_size"] == 1
    assert out["bf16"]["enabled"] is False
    assert out["zero_optimization"]["stage"] == {"zero0.json": 0, "zero2.json": 2}[name]


def test_resolve_config_fills_missing_and_warns_on_contradiction():
    cfg = TrainerConfig(learning_rate=5e-4, max_grad_norm=1.0)
    out = resolve_config({}, cfg, on_gpu=False)
    assert out["optimizer"]["params"]["lr"] == 5e-4
    assert out["gradient_clipping"] == 1.0
    assert out["zero_optimization"] == {"stage": 0}

    raw = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "gradient_clipping": 1.0}
    with pytest.warns(UserWarning, match=r"optimizer\.params\.lr = 0\.001 differs .* 0\.0005"):
        out = resolve_config(raw, cfg, on_gpu=False)
    assert out["optimizer"]["params"]["lr"] == 1e-3  # the file's explicit value wins
    with pytest.warns(UserWarning, match=r"bf16\.enabled ignored on CPU"):
        out = resolve_config({"bf16": {"enabled": True}}, cfg, on_gpu=False)
    assert out["bf16"]["enabled"] is False


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps = 4: must be 1"),
        ({"train_batch_size": 8}, "train_batch_size = 8 must equal"),
        ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage = 3: must be 0, 1 or 2"),
    ],
)
def test_resolve_config_rejects_what_the_trainer_cannot_run(raw, message):
    with pytest.raises(DeepSpeedConfigError, match=message):
        resolve_config(raw, TrainerConfig(), on_gpu=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"trainer\.deepspeed_config = '.*missing\.json': no such file \(resolved to "),
        ('{\n  // stage 2\n  "zero_optimization": {}\n}', r"not valid JSON \(line 2, column 3"),
        ("[1, 2]", "must hold a JSON object"),
    ],
)
def test_missing_or_invalid_config_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_text(content)
    cfg = TrainerConfig(backend="deepspeed", deepspeed_config=str(path))
    model = torch.nn.Linear(2, 2)
    with pytest.raises(DeepSpeedConfigError, match=message):
        build_backend(model, list(model.parameters()), cfg)


# ------------------------------------------------------------------------------ SGD clients
def test_resolve_config_builds_the_clients_sgd():
    cfg = TrainerConfig(optimizer="sgd", momentum=0.9, weight_decay=0.01)
    out = resolve_config({"zero_optimization": {"stage": 2}}, cfg, on_gpu=False)
    assert out["optimizer"] == {
        "type": "SGD",  # DeepSpeed builds torch.optim.SGD by name
        "params": {"lr": DEFAULT_LEARNING_RATES["sgd"], "momentum": 0.9, "weight_decay": 0.01},
    }
    assert out["zero_allow_untested_optimizer"] is True  # required for torch's SGD under ZeRO
    # the algorithm's default when trainer.optimizer is None; Adam-only "auto" keys are dropped
    raw = json.loads((CONFIGS / "zero0.json").read_text())
    raw["optimizer"]["type"] = "auto"
    out = resolve_config(raw, TrainerConfig(), on_gpu=False, algorithm_default="sgd")
    assert out["optimizer"]["params"] == {"lr": 0.5, "momentum": 0.0, "weight_decay": 0.0}
    assert "zero_allow_untested_optimizer" not in out  # stage 0: no ZeRO optimizer wrapper


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (  # a user's file pinning AdamW (the shipped ones say 'auto')
            {**json.loads((CONFIGS / "zero2.json").read_text()), "optimizer": {"type": "AdamW"}},
            r"optimizer\.type = 'AdamW' but the client optimizer is 'sgd' \(trainer\.optimizer "
            r"= None, None = the algorithm's default\); set optimizer\.type to 'auto' or 'SGD'",
        ),
        (
            {"optimizer": {"type": "SGD", "params": {"betas": [0.9, 0.99]}}},
            r"optimizer\.params\.betas = \[0\.9, 0\.99\] is an Adam setting",
        ),
    ],
)
def test_an_adam_file_for_an_sgd_client_is_a_one_line_error(raw, message):
    with pytest.raises(DeepSpeedConfigError, match=message) as err:
        resolve_config(raw, TrainerConfig(), on_gpu=False, algorithm_default="sgd")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("stage", [0, 2])
def test_sgd_engine_steps_like_the_torch_backend(tmp_path, stage):
    """The engine's SGD (momentum, L2 weight decay, clipping) takes the torch backend's steps,
    and reset() clears the momentum buffer, at ZeRO stage 0 and 2."""
    path = tmp_path / "sgd.json"
    path.write_text(
        json.dumps({"optimizer": {"type": "auto"}, "zero_optimization": {"stage": stage}})
    )
    common = {"optimizer": "sgd", "learning_rate": 0.2, "momentum": 0.9, "weight_decay": 0.01}
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    theirs.load_state_dict(ours.state_dict())
    start = ours.weight.detach().clone()
    engine = build_backend(
        ours,
        list(ours.parameters()),
        TrainerConfig(backend="deepspeed", deepspeed_config=str(path), **common),
    )
    engine.check_grads = True  # the engine's gradient is the direction, every step
    reference = build_backend(theirs, list(theirs.parameters()), TrainerConfig(**common))
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):  # two trajectories
        engine.reset()
        reference.reset()
        for scale in (3.0, 0.2, 1.5):  # clipped and unclipped steps (max_grad_norm 1)
            direction = torch.randn(21, generator=gen) * scale

            def combined(direction: torch.Tensor = direction) -> torch.Tensor:
                """A loss whose gradient is ``direction``."""
                parts = direction.split([18, 3])
                return sum(
                    (p * d.view_as(p)).sum() for p, d in zip(engine.params, parts, strict=True)
                )

            norm = engine.apply(direction, combined)
            assert norm == pytest.approx(reference.apply(direction, None), rel=1e-5)
            for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
                torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
    moved = float((ours.weight.detach() - start).abs().max())
    assert moved > 0.01
    engine.close()
