"""GPU smoke test: one client round of the built-in world on the test device, in float32 and
bf16, with one reward scored on the CPU and one on the device.

Runs in CI on the CPU and on a GPU machine on cuda: the device comes from
``FIRM_RAY_TEST_DEVICE`` (cuda | cpu; default cuda when one is visible, else cpu). It needs only
torch, transformers, peft and firm_ray's own imports (no Ray, TRL, DeepSpeed or vLLM), so it runs
on a bare GPU image:

    FIRM_RAY_TEST_DEVICE=cuda PYTHONPATH=. python -m pytest tests/gpu -m gpu -q
    PYTHONPATH=. python tests/gpu/test_gpu_smoke.py        # the same, without typing pytest's flags
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the python rewards' module, importable under any import mode
    sys.path.insert(0, str(HERE))

import smoke_rewards  # noqa: E402

from firm_ray.config import load_config  # noqa: E402
from firm_ray.core.aggregation import state_distance  # noqa: E402
from firm_ray.data.sources import load_prompts  # noqa: E402
from firm_ray.models.adapter import get_adapter_state  # noqa: E402
from firm_ray.models.policy import load_policy  # noqa: E402
from firm_ray.rewards import build_rewards  # noqa: E402
from firm_ray.trainer import LocalTrainer  # noqa: E402

pytestmark = pytest.mark.gpu


def chosen_device() -> str:
    """cuda | cpu from FIRM_RAY_TEST_DEVICE; default: cuda when visible, else cpu."""
    wanted = os.environ.get("FIRM_RAY_TEST_DEVICE", "").strip().lower()
    if not wanted:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted not in ("cuda", "cpu"):
        raise ValueError(f"FIRM_RAY_TEST_DEVICE = {wanted!r}: must be 'cuda' or 'cpu'")
    return wanted


DEVICE = chosen_device()

# Small but complete: 4 prompts x 4 completions x 12 tokens, 2 local steps, two micro-batches of
# 8 sequences and log-prob chunks of 32 tokens, so the batching paths run; KL on (reference pass).
SMALL = [
    "trainer.batch_prompts=4",
    "trainer.generations_per_prompt=4",
    "trainer.max_new_tokens=12",
    "trainer.micro_batch_size=8",
    "trainer.logprob_chunk_tokens=32",
    "trainer.kl_coef=0.05",
    "federation.local_steps=2",
]
PRECISIONS = {
    "float32": ["model.dtype=float32"],
    "bf16-autocast": ["model.dtype=float32", "trainer.mixed_precision=bf16"],
    "bf16-weights": ["model.dtype=bfloat16", "trainer.mixed_precision=bf16"],
    "float32-checkpointing": [
        "model.dtype=float32",
        "trainer.gradient_checkpointing=true",
    ],
}
PHASES = ("generate", "score", "forward", "backward", "solve", "step")


def rewards_override(device: str) -> str:
    cpu = "{name: words, type: python, kwargs: {function: smoke_rewards.distinct_word_share}}"
    dev = (
        "{name: vowels, type: python, "
        f"kwargs: {{function: smoke_rewards.vowel_share, device: {device}}}}}"
    )
    return f"rewards=[{cpu}, {dev}]"


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_one_client_round_on_device(world_model_dir, precision: str) -> None:
    cfg = load_config(
        None,
        [
            f"model.name_or_path={world_model_dir}",
            f"model.device={DEVICE}",
            rewards_override(DEVICE),
            *SMALL,
            *PRECISIONS[precision],
        ],
    )
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    base_param = next(policy.model.get_base_model().parameters())
    assert base_param.device.type == DEVICE
    assert base_param.dtype == getattr(torch, cfg.model.dtype)
    assert all(p.device.type == DEVICE for p in policy.trainable_parameters)
    rewards = build_rewards(cfg.rewards, device=DEVICE)
    trainer = LocalTrainer(
        policy,
        rewards,
        cfg.trainer,
        cfg.algorithm,
        cfg.federation.local_steps,
        max_prompt_tokens=cfg.model.max_prompt_tokens,
        seed=cfg.experiment.seed,
    )
    start = get_adapter_state(policy.model)
    prompts = load_prompts(cfg.data, cfg.experiment.seed).train[:32]
    smoke_rewards.DEVICES_SEEN.clear()

    update = trainer.run_round(start, prompts, client_id=0, round_index=0)

    # a valid update: one finite adapter with the global adapter's names and shapes, moved
    assert update.valid, update.reason
    assert update.objective_deltas is None and update.num_samples == len(prompts)
    assert list(update.adapter) == list(start)
    for name, tensor in update.adapter.items():
        assert tensor.shape == start[name].shape and tensor.device.type == "cpu", name
        assert torch.isfinite(tensor.float()).all(), name
    assert state_distance(update.adapter, start) > 0
    # the device reward computed on the device, once per local step
    seen = smoke_rewards.DEVICES_SEEN
    assert seen == [DEVICE] * cfg.federation.local_steps, seen
    # metrics: no skipped step, a lambda on the simplex, finite rewards and losses, timings
    metrics = update.metrics
    assert metrics["skipped_steps"] == 0.0, metrics.get("skip_reasons")
    lam = metrics["lambda"]
    assert len(lam) == 2 and abs(sum(lam) - 1) < 1e-6 and min(lam) >= 0
    for key in ("rewards", "losses"):
        assert len(metrics[key]) == 2 and all(math.isfinite(v) for v in metrics[key]), key
    for phase in PHASES:
        seconds = metrics[f"time_{phase}"]
        assert math.isfinite(seconds) and seconds >= 0, phase


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "gpu", "-q", *sys.argv[1:]]))
