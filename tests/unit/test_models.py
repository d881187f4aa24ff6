"""Policy loading, the warm-start build, the reference policy, adapter I/O and sampling, on
models the tests build and save themselves (no hub)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from firm_ray.config import LoraConfig, ModelConfig
from firm_ray.data.world import all_world_prompts, world_dialogues, world_prompts
from firm_ray.models.adapter import (
    adapter_from_bytes,
    adapter_to_bytes,
    get_adapter_state,
    save_adapter,
    set_adapter_state,
)
from firm_ray.models.generation import sample_completions
from firm_ray.models.policy import ModelLoadError, load_policy, load_trained_policy
from firm_ray.models.warmstart import WorldModelRecipe, ensure_world_model, recipe_hash

TINY = WorldModelRecipe(dialogues=300, steps=4, batch_size=8, n_embd=32, n_head=2, n_layer=1)


def test_world_has_enough_distinct_prompts() -> None:
    every = all_world_prompts()
    assert len({p.text for p in every}) == len(every) >= 1100
    train, held = world_prompts(seed=0)
    assert len(train) >= 1000 and len(held) >= 100
    assert not {p.text for p in train} & {p.text for p in held}
    assert {p.category for p in held} == {"howto", "sad", "provocative", "risky"}
    assert world_prompts(seed=0) == (train, held)
    assert world_prompts(seed=1)[1] != held


def test_warm_start_build_is_cached_deterministic_and_loadable(tmp_path) -> None:
    first = ensure_world_model(TINY, root=tmp_path / "a")
    again = ensure_world_model(TINY, root=tmp_path / "a")
    assert again == first and first.name == recipe_hash(TINY)
    second = ensure_world_model(TINY, root=tmp_path / "b")
    one = AutoModelForCausalLM.from_pretrained(first)
    two = AutoModelForCausalLM.from_pretrained(second)
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    build = json.loads((first / "build.json").read_text())
    assert build["dialogues"] == 300 and build["parameters"] > 0
    assert recipe_hash(WorldModelRecipe(seed=1)) != recipe_hash(WorldModelRecipe(seed=0))
    tokenizer = AutoTokenizer.from_pretrained(first)
    _, _, prompt, response = next(iter(world_dialogues(TINY.dialogues, TINY.seed)))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    assert text == f"<user> {prompt} <assistant>"
    ids = tokenizer(text + " " + response, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids  # every word of the corpus is a token
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert " ".join(decoded.split()) == f"{prompt} {response}"


def test_warm_start_completions_are_words_on_topic(world_model_dir) -> None:
    """The real default model answers in the world's words and mostly on the prompt's topic."""
    config = ModelConfig(name_or_path=str(world_model_dir))
    policy = load_policy(config, LoraConfig())
    _, held = world_prompts(seed=0)
    prompts = [p for p in held if p.category in ("howto", "sad", "risky")][:24]
    samples = sample_completions(policy, [p.text for p in prompts], 4, 32, seed=0)
    vocab = set(policy.tokenizer.get_vocab())
    stop = {"i", "my", "the", "to", "a", "how", "do", "can", "you", "me", "and", "what", "is"}

    def shares_content_word(prompt: str, words: list[str]) -> bool:
        return bool((set(re.findall(r"[a-z]+", prompt)) - stop) & set(words))

    on_topic = control = sentences = 0
    others = samples.prompts[4:] + samples.prompts[:4]  # each completion vs another prompt
    for prompt, other, completion in zip(samples.prompts, others, samples.completions, strict=True):
        words = re.findall(r"[a-z]+", completion)
        assert all(("▁" + w) in vocab or w in vocab for w in words), completion
        sentences += len(words) >= 3  # sampling at temperature 1 may end at once, rarely
        on_topic += shares_content_word(prompt, words)
        control += shares_content_word(other, words)
    n = len(samples.completions)
    assert sentences / n > 0.9
    # The warm start mixes on-topic styles with off-topic ones (what RL shifts), so measure
    # topicality against a control: the same completions matched with another prompt.
    assert on_topic / n > control / n + 0.25, (on_topic, control, n)


def _save_tiny_llama(path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(ensure_world_model(TINY, root=path / "tok"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path / "llama")
    tokenizer.save_pretrained(path / "llama")


def test_load_policy_local_llama_reference_and_adapter_io(tmp_path) -> None:
    _save_tiny_llama(tmp_path)
    config = ModelConfig(name_or_path=str(tmp_path / "llama"), device="cpu")
    policy = load_policy(config, LoraConfig(r=4), seed=3)
    names = [n for n, _ in policy.model.named_parameters() if "lora_" in n]
    assert any("q_proj" in n for n in names) and any("v_proj" in n for n in names)  # peft default
    assert all(p.requires_grad == ("lora_" in n) for n, p in policy.model.named_parameters())
    assert policy.tokenizer.padding_side == "left"

    ids = policy.tokenizer(["how do i clean my car?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = policy.model(input_ids=ids).logits
        for p in policy.trainable_parameters:
            p.add_(0.5)
        with policy.reference():
            ref_logits = policy.model(input_ids=ids).logits
        tuned_logits = policy.model(input_ids=ids).logits
    assert torch.allclose(ref_logits, base_logits)  # adapter off == base model
    assert not torch.allclose(tuned_logits, base_logits)

    state = get_adapter_state(policy.model)
    assert len(state) == len(names)
    restored = adapter_from_bytes(adapter_to_bytes(state))
    assert list(restored) == list(state)
    assert all(torch.equal(restored[k], state[k]) for k in state)

    fresh = load_policy(config, LoraConfig(r=4), seed=3)
    set_adapter_state(fresh.model, state)
    with torch.no_grad():
        assert torch.allclose(fresh.model(input_ids=ids).logits, tuned_logits)
    with pytest.raises(ValueError, match="shape"):
        set_adapter_state(fresh.model, {k: v[..., :1] for k, v in state.items()})
    with pytest.raises(ValueError, match="missing"):
        set_adapter_state(fresh.model, dict(list(state.items())[1:]))

    saved = save_adapter(policy.model, tmp_path / "adapter")
    reloaded = load_trained_policy(config, saved)
    assert isinstance(reloaded.model, PeftModel)
    with torch.no_grad():
        assert torch.allclose(reloaded.model(input_ids=ids).logits, tuned_logits, atol=1e-6)


def test_same_seed_same_adapter_init(tmp_path) -> None:
    _save_tiny_llama(tmp_path)
    config = ModelConfig(name_or_path=str(tmp_path / "llama"))
    a = get_adapter_state(load_policy(config, LoraConfig(r=2), seed=1).model)
    b = get_adapter_state(load_policy(config, LoraConfig(r=2), seed=1).model)
    c = get_adapter_state(load_policy(config, LoraConfig(r=2), seed=2).model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_sampling_is_seeded_and_masks_after_eos(world_model_dir) -> None:
    policy = load_policy(ModelConfig(name_or_path=str(world_model_dir)), LoraConfig())
    prompts = ["you are a useless robot.", "how do i clean my kitchen?"]
    one = sample_completions(policy, prompts, 3, 20, seed=7)
    two = sample_completions(policy, prompts, 3, 20, seed=7)
    other = sample_completions(policy, prompts, 3, 20, seed=8)
    assert one.completions == two.completions and one.completions != other.completions
    assert one.prompts == [prompts[0]] * 3 + [prompts[1]] * 3
    eos = policy.tokenizer.eos_token_id
    ids, mask = one.completion_ids, one.completion_mask
    for row in range(ids.shape[0]):
        hits = (ids[row] == eos).nonzero()
        if len(hits):
            first = int(hits[0])
            assert mask[row, : first + 1].all() and not mask[row, first + 1 :].any()
        else:
            assert mask[row].all()
    assert one.attention_mask.shape == one.input_ids.shape


def test_clear_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="could not load"):
        load_policy(ModelConfig(name_or_path=str(tmp_path / "missing")), LoraConfig())
    with pytest.raises(ModelLoadError, match="unknown built-in"):
        load_policy(ModelConfig(name_or_path="builtin:nope"), LoraConfig())
