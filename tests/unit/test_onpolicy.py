"""On-policy sampling: the trainer differentiates the distribution the completions were drawn
from, whatever the checkpoint's generation_config says; every EOS id ends a completion; long
prompts are truncated before the chat template."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from firm_ray.config import LoraConfig, ModelConfig
from firm_ray.data.world import world_prompts
from firm_ray.models.generation import generation_config, sample_completions
from firm_ray.models.policy import load_policy
from firm_ray.trainer.losses import token_logprobs


@pytest.fixture(scope="module")
def penalized_model_dir(world_model_dir, tmp_path_factory):
    """The world model, re-saved with a generation_config like Qwen2.5-Instruct's (a repetition
    penalty, top-k, top-p and temperature that would change what is sampled)."""
    out = tmp_path_factory.mktemp("penalized")
    shutil.copytree(world_model_dir, out, dirs_exist_ok=True)
    path = out / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config.update(repetition_penalty=1.3, top_k=5, top_p=0.8, temperature=0.3, do_sample=True)
    path.write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def policy(penalized_model_dir):
    policy = load_policy(ModelConfig(name_or_path=str(penalized_model_dir)), LoraConfig(), seed=0)
    with torch.no_grad():  # a trained-looking adapter, so the policy is not the base model
        generator = torch.Generator().manual_seed(0)
        for p in policy.trainable_parameters:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return policy


def prompts(n: int) -> list[str]:
    return [p.text for p in world_prompts(seed=0)[1][:n]]


def test_the_checkpoints_sampling_settings_are_reported_not_applied(policy) -> None:
    overrides = policy.generation_overrides
    assert overrides["repetition_penalty"] == 1.3 and overrides["top_k"] == 5
    inherited = policy.model.get_base_model().generation_config
    assert inherited.repetition_penalty in (None, 1.0) and inherited.top_k in (None, 50, 0)


def test_trainer_logprobs_equal_the_sampling_distribution(policy) -> None:
    samples = sample_completions(policy, prompts(6), 4, 12, temperature=0.7, seed=3)
    mask = samples.completion_mask.bool()
    with torch.no_grad():
        logp = token_logprobs(
            policy.model,
            samples.input_ids,
            samples.attention_mask,
            samples.prompt_length,
            temperature=0.7,
            chunk_tokens=7,
        )
    assert torch.allclose(logp[mask], samples.sample_logp[mask], atol=1e-5)


@pytest.mark.parametrize(
    "settings", [dict(temperature=0.7), dict(temperature=1.3, top_k=5, top_p=0.9, penalty=1.2)]
)
def test_recorded_logprobs_are_what_generate_sampled_from(policy, settings) -> None:
    """The recorder's log-probs equal transformers' own processed scores of the same draw."""
    penalty = settings.pop("penalty", 1.0)
    samples = sample_completions(
        policy, prompts(3), 2, 10, seed=11, repetition_penalty=penalty, **settings
    )
    config = generation_config(policy, 10, repetition_penalty=penalty, **settings)
    prompt_ids = samples.input_ids[:, : samples.prompt_length]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        out = policy.model.generate(
            input_ids=prompt_ids,
            attention_mask=samples.attention_mask[:, : samples.prompt_length],
            generation_config=config,
            output_scores=True,
            return_dict_in_generate=True,
        )
    assert torch.equal(out.sequences, samples.input_ids)
    scores = torch.stack(out.scores, dim=1).log_softmax(dim=-1)  # [S, T, V]
    picked = scores.gather(-1, samples.completion_ids[..., None]).squeeze(-1)
    mask = samples.completion_mask.bool()
    assert torch.allclose(picked[mask], samples.sample_logp[mask], atol=1e-5)


def test_every_eos_id_ends_a_completion(penalized_model_dir, tmp_path) -> None:
    shutil.copytree(penalized_model_dir, tmp_path, dirs_exist_ok=True)
    policy = load_policy(ModelConfig(name_or_path=str(tmp_path)), LoraConfig(), seed=0)
    # a frequent word becomes a second EOS id, as Llama-3's <|eot_id|> next to <|end_of_text|>
    probe = sample_completions(policy, prompts(4), 2, 12, seed=0)
    counts = torch.bincount(probe.completion_ids[probe.completion_mask.bool()].flatten())
    counts[list(policy.eos_token_ids)] = 0
    frequent = int(counts.argmax())
    path = tmp_path / "generation_config.json"
    config = json.loads(path.read_text())
    first = config.get("eos_token_id", policy.eos_token_ids[0])
    config["eos_token_id"] = [*(first if isinstance(first, list) else [first]), frequent]
    path.write_text(json.dumps(config))
    policy = load_policy(ModelConfig(name_or_path=str(tmp_path)), LoraConfig(), seed=0)
    assert frequent in policy.eos_token_ids and len(policy.eos_token_ids) >= 2
    samples = sample_completions(policy, prompts(4), 2, 12, seed=0)
    eos = torch.tensor(policy.eos_token_ids)
    for ids, mask, truncated in zip(
        samples.completion_ids, samples.completion_mask, samples.truncated, strict=True
    ):
        hits = torch.isin(ids, eos).nonzero()
        assert bool(truncated) == (len(hits) == 0)
        assert int(mask.sum()) == (int(hits[0]) + 1 if len(hits) else len(ids))
    assert (samples.completion_ids == frequent).any()  # the second EOS did end completions


def test_long_prompts_are_truncated_before_the_chat_template(policy) -> None:
    long = " ".join(["please tell me how to bake bread"] * 40)
    samples = sample_completions(policy, [long, "hi"], 2, 4, seed=0, max_prompt_tokens=8)
    tokenizer = policy.tokenizer
    header = tokenizer.apply_chat_template(
        [{"role": "user", "content": "X"}], tokenize=False, add_generation_prompt=True
    )
    before, after = header.split("X")
    row = samples.input_ids[0, : samples.prompt_length]
    row = row[samples.attention_mask[0, : samples.prompt_length].bool()].tolist()
    head = tokenizer(before, add_special_tokens=False)["input_ids"]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    assert row[: len(head)] == head and row[-len(tail) :] == tail  # header and BOS survive
    assert len(row) - len(head) - len(tail) <= 8 + 1  # the kept end of the user text
