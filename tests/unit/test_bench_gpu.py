"""bench/gpu.py stays alive in CI: its hub-style tokenizer, and a CPU run at a shrunk size."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "gpu.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_tokenizer_loads_like_a_hub_tokenizer(tmp_path) -> None:
    from transformers import AutoTokenizer

    bench = load_bench()
    prompts = ["how do I fix a flat tire?", "you are useless, answer me"]
    bench.build_tokenizer(prompts, bench.QWEN25_05B["vocab_size"]).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == 151936  # every id of the model's vocabulary decodes
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643,
        151644,
        151645,
    ]
    assert tokenizer.eos_token_id == 151645 and tokenizer.pad_token_id == 151643
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts[0]}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhow do I fix a flat tire?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == 12  # 3 specials, 2 roles, 7 words
    words = tokenizer(prompts[1], add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([*words, 151645, 151935], skip_special_tokens=True) == prompts[1]


@pytest.mark.e2e
def test_bench_runs_on_cpu_at_a_shrunk_size(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--layers", "2", "--new-tokens", "16"]
    cmd += ["--steps", "1", "--warmup", "0", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    model = result["model"]
    assert model["hidden_size"] == 896 and model["vocab_size"] == 151936
    assert model["num_hidden_layers"] == 2
    # LoRA r=16 on q, k, v, o_proj of 2 layers: 16 * ((896+896) + 2 * (896+128) + (896+896)) * 2
    assert result["trainable_parameters"] == 180_224
    step = result["steps"][0]
    assert step["sequences"] == 32 and 0 < step["completion_tokens"] <= 32 * 16
    assert step["prompt_tokens"] > 0 and step["skipped_steps"] == 0.0
    median = result["median"]
    for key in ("generate_tok_s", "train_tok_s", "step_tok_s", "wall_s", "generate_s"):
        assert median[key] > 0, key
    assert 0.0 <= result["truncated_fraction"] <= 1.0
    assert result["peak_rss_mib"] > 0 and result["peak_gpu_mib"] is None
    assert "generation" in proc.stdout and "truncated completions" in proc.stdout
