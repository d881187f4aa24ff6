"""Policy loading, the warm-start build, the reference policy, adapter I/O and sampling, on
models the tests build and save themselves (no hub)."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

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
from firm_ray.models.warmstart import (
    END_OF_TEXT,
    IM_END,
    WorldModelRecipe,
    ensure_world_model,
    recipe_hash,
    world_model_cached,
)

TINY = WorldModelRecipe(
    dialogues=300,
    steps=4,
    batch_size=8,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=2,
    num_key_value_heads=1,
    num_hidden_layers=1,
)
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


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
    assert not world_model_cached(TINY, root=tmp_path / "a")
    first = ensure_world_model(TINY, root=tmp_path / "a")
    again = ensure_world_model(TINY, root=tmp_path / "a")
    assert again == first and first.name == recipe_hash(TINY)
    assert world_model_cached(TINY, root=tmp_path / "a")
    second = ensure_world_model(TINY, root=tmp_path / "b")
    one = AutoModelForCausalLM.from_pretrained(first)
    two = AutoModelForCausalLM.from_pretrained(second)
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    build = json.loads((first / "build.json").read_text())
    assert build["dialogues"] == 300 and build["parameters"] > 0
    # the hash covers the recipe, architecture fields included
    for change in ({"seed": 1}, {"num_key_value_heads": 2}, {"rope_theta": 5e5}):
        assert recipe_hash(dataclasses.replace(TINY, **change)) != recipe_hash(TINY), change


def test_warm_start_tokenizer_chat_template_and_eos(tmp_path) -> None:
    """ChatML-like template with a BOS, an end-of-turn EOS that is neither the end of text nor
    the pad token, special tokens kept whole, and training text == generation prompt + answer."""
    path = ensure_world_model(TINY, root=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    _, _, prompt, response = next(iter(world_dialogues(TINY.dialogues, TINY.seed)))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    assert text == (f"<|startoftext|><|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.eos_token == IM_END
    eos_ids = {tokenizer.convert_tokens_to_ids(t) for t in (IM_END, END_OF_TEXT)}
    assert len(eos_ids) == 2 and tokenizer.pad_token_id not in eos_ids
    assert tokenizer.unk_token_id not in eos_ids | {tokenizer.pad_token_id}
    generation = GenerationConfig.from_pretrained(path)
    assert generation.eos_token_id == [
        tokenizer.convert_tokens_to_ids(IM_END),
        tokenizer.convert_tokens_to_ids(END_OF_TEXT),
    ]
    assert generation.pad_token_id == tokenizer.pad_token_id

    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id and prompt_ids.count(tokenizer.bos_token_id) == 1
    for token in ("<|im_start|>", IM_END, END_OF_TEXT, "<|pad|>"):  # atomic, even glued to words
        ids = tokenizer(f"hi{token}there", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) in ids and len(ids) == 3, (token, ids)
    # the training text of this dialogue is the generation prompt followed by the answer
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=False,
    )
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    answer = full_ids[len(prompt_ids) :]
    assert answer[-2:] == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("▁\n")]
    assert tokenizer.unk_token_id not in full_ids  # every word of the corpus is a token
    decoded = tokenizer.decode(answer, skip_special_tokens=True)
    assert " ".join(decoded.split()) == response


def test_default_world_model_is_llama_style(world_model_dir) -> None:
    """The default build: RoPE, RMSNorm, SwiGLU, grouped-query attention, head dim >= 32, and
    LoRA on the attention projections like the real-model configs."""
    config = AutoConfig.from_pretrained(world_model_dir)
    assert config.model_type == "llama" and config.hidden_act == "silu"
    head_dim = config.hidden_size // config.num_attention_heads
    assert config.num_key_value_heads < config.num_attention_heads and head_dim >= 32
    policy = load_policy(
        ModelConfig(name_or_path=str(world_model_dir)), LoraConfig(target_modules=ATTENTION)
    )
    modules = dict(policy.model.named_modules())
    layer = next(m for n, m in modules.items() if n.endswith("layers.0"))
    assert type(layer.input_layernorm).__name__.endswith("RMSNorm")
    assert {"gate_proj", "up_proj", "down_proj"} <= {n for n, _ in layer.mlp.named_children()}
    lora = {
        n.split(".lora_A")[0].split(".")[-1]
        for n, _ in policy.model.named_parameters()
        if ".lora_A" in n
    }
    assert lora == set(ATTENTION)
    k_proj = layer.self_attn.k_proj.base_layer
    assert k_proj.out_features == config.num_key_value_heads * head_dim
    assert GenerationConfig.from_pretrained(world_model_dir).eos_token_id == [
        policy.tokenizer.convert_tokens_to_ids(t) for t in (IM_END, END_OF_TEXT)
    ]


def test_left_padding_does_not_change_greedy_completions(world_model_dir) -> None:
    """Rotary positions under left padding: a short prompt batched with a long one decodes as
    it does alone."""
    policy = load_policy(ModelConfig(name_or_path=str(world_model_dir)), LoraConfig())
    short, long = policy.format_prompts(
        ["my cat died.", "you are a stupid useless robot and i hate talking to you every day."]
    )

    def greedy(texts: list[str]) -> torch.Tensor:
        enc = policy.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = policy.model.generate(**enc, do_sample=False, max_new_tokens=12)
        return out[:, enc["input_ids"].shape[1] :]

    alone, batched = greedy([short])[0], greedy([short, long])[0]
    assert torch.equal(batched[: len(alone)], alone)
    assert (batched[len(alone) :] == policy.tokenizer.pad_token_id).all()  # ended at its EOS


def test_build_world_progress_line(tmp_path, capsys) -> None:
    ensure_world_model(TINY, root=tmp_path, verbose=True)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[build-world]")]
    assert lines and f"step {TINY.steps}/{TINY.steps}" in lines[-1] and "loss" in lines[-1]
    ensure_world_model(TINY, root=tmp_path, verbose=True)  # cached: silent
    assert "[build-world]" not in capsys.readouterr().out


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


def test_cli_builds_the_world_model_before_ray_only_when_used(tmp_path, monkeypatch, capsys):
    """firm-ray run / sweep build the built-in model in the driver when a run uses it; a run on
    another model builds nothing."""
    from firm_ray.cli.main import _prebuild_world, _uses_builtin_world
    from firm_ray.config import load_config, save_config

    quickstart = load_config("tune_configs/quickstart.yaml")
    other = load_config("tune_configs/quickstart.yaml", [f"model.name_or_path={tmp_path}"])
    assert _uses_builtin_world(None, quickstart) and not _uses_builtin_world(None, other)
    assert _uses_builtin_world(None, None, "tune_configs/sweep_beta.yaml")  # base: quickstart
    assert not _uses_builtin_world(None, None, str(tmp_path / "missing.yaml"))
    save_config(other, tmp_path / "run" / "config.yaml")
    assert not _uses_builtin_world(str(tmp_path / "run"))
    monkeypatch.setenv("FIRM_RAY_CACHE", str(tmp_path / "cache"))  # nothing cached here
    _prebuild_world(None, other)
    assert not (tmp_path / "cache").exists() and capsys.readouterr().out == ""


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
        bos_token_id=tokenizer.bos_token_id,
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
    eos = torch.tensor(GenerationConfig.from_pretrained(world_model_dir).eos_token_id)
    ids, mask = one.completion_ids, one.completion_mask
    for row in range(ids.shape[0]):
        hits = torch.isin(ids[row], eos).nonzero()
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


def test_saved_adapter_config_is_the_same_bytes_in_every_process(tmp_path) -> None:
    """peft writes target_modules in set (hash) order; save_adapter sorts it, so the final
    adapter directory is byte-identical whichever process (hash seed) saves it."""
    import subprocess
    import sys

    _save_tiny_llama(tmp_path)
    script = (
        "import sys; from firm_ray.config import LoraConfig, ModelConfig; "
        "from firm_ray.models.policy import load_policy; "
        "from firm_ray.models.adapter import save_adapter; "
        "p = load_policy(ModelConfig(name_or_path=sys.argv[1]), LoraConfig(r=2, "
        "target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj']), seed=0); "
        "save_adapter(p.model, sys.argv[2])"
    )
    configs = set()
    for seed in ("1", "2", "3", "4"):
        out = tmp_path / f"adapter{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "llama"), str(out)], check=True, env=env
        )
        configs.add((out / "adapter_config.json").read_bytes())
    assert len(configs) == 1
    assert json.loads(configs.pop())["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]
    )


def test_one_dtype_map_for_policies_and_reward_models(tmp_path) -> None:
    """model.dtype and an hf_reward_model's kwargs.dtype accept the same names (one map)."""
    import typing

    from firm_ray.core.dtypes import DTYPE_NAMES, TORCH_DTYPES, torch_dtype
    from firm_ray.rewards.base import RewardError
    from firm_ray.rewards.hf import HFRewardModel

    schema = typing.get_args(ModelConfig.model_fields["dtype"].annotation)
    assert set(schema) == set(DTYPE_NAMES)
    assert torch_dtype("auto") == "auto" and torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="must be one of auto, float32, bfloat16, float16"):
        torch_dtype("float8")
    with pytest.raises(
        RewardError, match=r"kwargs\.dtype = 'float8': must be one of auto, float32"
    ):
        HFRewardModel("rm", model=str(tmp_path), dtype="float8")
    _save_tiny_llama(tmp_path)
    for name, dtype in TORCH_DTYPES.items():
        config = ModelConfig(name_or_path=str(tmp_path / "llama"), dtype=name, device="cpu")
        policy = load_policy(config, LoraConfig(r=2), seed=0)
        base = policy.model.get_base_model()
        assert base.model.embed_tokens.weight.dtype is dtype
