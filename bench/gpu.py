"""One client's local steps on a Qwen2.5-0.5B-sized model: generation and training throughput,
peak memory and the time of each phase, on a GPU (or, shrunk, on the CPU).

    python bench/gpu.py --device cuda --dtype float32             # full size on a GPU
    python bench/gpu.py --device cuda --dtype bfloat16            # bf16 weights + bf16 autocast
    python bench/gpu.py --device cpu --layers 2 --new-tokens 16 --steps 1 --warmup 0  # CPU check
    (scripts/gpu_check.sh runs the first two on a GPU machine; --out sets the JSON path)

Nothing is downloaded. The model is Qwen2.5-0.5B's architecture, written out below
(``QWEN25_05B``: hidden 896, 24 layers, 14 query / 2 key-value heads, MLP 4864, vocabulary
151,936, RoPE theta 1e6, tied embeddings; ``--layers`` keeps the first N layers), randomly
initialized (seed 0), saved in bf16 with a tokenizer made here (word-level: the built-in world's
prompt words, then synthetic words, Qwen's special tokens at Qwen's ids, 151,936 ids in all, and
a ChatML chat template), and loaded through ``firm_ray.models.policy.load_policy``, i.e. through
``from_pretrained`` exactly as a hub model. LoRA r=16, alpha 32 on q/k/v/o_proj; FIRM with two
rewards: a ``python`` reward (vowel share of the completion, computed by a torch op on the
policy's device) and the ``length`` reward; 8 prompts x 4 completions x 128 new tokens per step.

A random-init model almost never emits an EOS (about 2 of 151,936 ids end a completion), so
completions run to full length; the truncated fraction (no EOS within the limit) is measured and
reported. ``--warmup`` rounds of one local step (default 1) are not timed; then ``--steps``
rounds of one step.

Reports, per timed step (median over steps): wall seconds (CUDA synchronized before and after);
the trainer's own phase timers (``ClientUpdate.metrics['time_*']``: generate, score, forward,
backward, solve, step; "other" = wall minus their sum). On CUDA the phase timers are host-side:
an unsynchronized phase hands its queued kernels to the next one, so read the split as
approximate and the wall time as exact. Generation tokens/s = completion tokens / generate
seconds; training tokens/s = (prompt + completion) tokens / (forward + backward + solve + step)
seconds; step tokens/s = completion tokens / wall seconds. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` over the warm-up and timed rounds (and the memory the loaded
model holds); on the CPU the process's peak RSS. Prints a table and writes
``bench/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# Qwen2.5-0.5B's config.json, in transformers 5's Qwen2Config field names (rope_parameters
# replaced rope_theta there; the hub file's rope_theta reads into the same field).
QWEN25_05B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
}
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_IDS = {ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645}  # Qwen's own ids
UNK = "<|unk|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PHASES = ["generate", "score", "forward", "backward", "solve", "step"]
TRAIN_PHASES = ["forward", "backward", "solve", "step"]


# ------------------------------------------------------------------- the python reward
def vowel_share(prompts: list[str], completions: list[str], device: str = "cpu") -> torch.Tensor:
    """Share of vowels among a completion's characters, computed on ``device``."""
    width = max([1, *(len(c) for c in completions)])
    codes = torch.zeros(len(completions), width, dtype=torch.int64)
    for i, text in enumerate(completions):
        if text:
            codes[i, : len(text)] = torch.tensor([ord(ch) for ch in text])
    codes = codes.to(device)
    vowels = torch.tensor([ord(ch) for ch in "aeiou"], device=codes.device)
    present = (codes != 0).sum(dim=1).clamp_min(1)
    return torch.isin(codes, vowels).sum(dim=1).float() / present


# ------------------------------------------------------------------- model and tokenizer
def synthetic_words(count: int, taken: set[str]) -> list[str]:
    """``count`` distinct pronounceable words (consonant-vowel syllables) not in ``taken``."""
    syllables = [c + v for c in "bdfghjklmnprstvwz" for v in "aeiou"]
    words: list[str] = []
    frontier = [""]
    while len(words) < count:
        frontier = [w + s for w in frontier for s in syllables]
        words.extend(w for w in frontier if w not in taken)
    return words[:count]


def build_tokenizer(prompt_texts: list[str], vocab_size: int) -> Any:
    """A word-level fast tokenizer with exactly ``vocab_size`` ids: the prompts' words (so
    prompts tokenize without unknowns), synthetic words, and special tokens at Qwen's ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    first_special = min(SPECIAL_IDS.values())
    known = sorted({w for text in prompt_texts for w in text.split()} | {"user", "assistant"})
    words = known + synthetic_words(first_special - len(known), set(known))
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update(SPECIAL_IDS)
    reserved = [UNK] + [f"<|reserved_{i}|>" for i in range(vocab_size - len(vocab) - 1)]
    for token in reserved:
        vocab[token] = len(vocab)
    assert len(vocab) == vocab_size and sorted(vocab.values()) == list(range(vocab_size))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True) for t in [*SPECIAL_IDS, *reserved]])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=UNK,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model_dir(target: Path, layers: int, prompt_texts: list[str]) -> dict[str, Any]:
    """Write a random-init Qwen2.5-0.5B-shaped model (first ``layers`` layers) to ``target``
    and its tokenizer to ``target / "tokenizer"``; returns the config written.

    The tokenizer has its own directory (``model.tokenizer``): next to a ``qwen2`` config.json,
    transformers 5's AutoTokenizer replaces a saved word-level tokenizer with Qwen2's byte-level
    class, which reads our vocabulary as nothing (a prompt became the single id 0)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config_dict = dict(QWEN25_05B, num_hidden_layers=layers, max_window_layers=layers)
    config = Qwen2Config(**config_dict)
    tokenizer = build_tokenizer(prompt_texts, config.vocab_size)
    for token, token_id in SPECIAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target / "tokenizer")
    return config_dict


# ------------------------------------------------------------------- counting tokens
class GenerateCounter:
    """Wraps ``policy.model.generate`` (an instance attribute shadows the method; the trainer
    is unchanged) to count, per call, completion tokens up to and including the first EOS,
    prompt tokens (non-pad) and completions with no EOS within the limit."""

    def __init__(self, policy: Any) -> None:
        self.calls: list[dict[str, int]] = []
        eos = list(getattr(policy, "eos_token_ids", ()) or [policy.tokenizer.eos_token_id])
        self.eos = torch.tensor(eos)
        self.original = policy.model.generate
        policy.model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self.original(*args, **kwargs)
        prompt = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        completion = output[:, prompt.shape[1] :].cpu()
        is_eos = torch.isin(completion, self.eos)
        before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
        self.calls.append(
            {
                "sequences": int(completion.shape[0]),
                "completion_tokens": int((before == 0).sum()),
                "prompt_tokens": int(mask.sum()) if mask is not None else prompt.numel(),
                "truncated": int((~is_eos.any(dim=1)).sum()),
                "max_new_tokens": int(completion.shape[1]),
            }
        )
        return output


# ------------------------------------------------------------------- the run
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Build the model into ``model_dir`` (kept for the whole run, as a hub cache would be),
    load it, run the warm-up and timed rounds; the result dict that goes to the JSON."""
    from firm_ray.config import load_config
    from firm_ray.data.sources import load_prompts
    from firm_ray.models.adapter import get_adapter_state
    from firm_ray.models.policy import load_policy
    from firm_ray.rewards import build_rewards
    from firm_ray.trainer import LocalTrainer

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    mixed = args.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if args.dtype == "bfloat16" else "none"
    prompts = load_prompts(load_config(None).data, 0).train
    reward = f"{__name__}:vowel_share"
    overrides = [
        f"model.device={device}",
        f"model.dtype={args.dtype}",
        "model.max_prompt_tokens=64",
        "lora.r=16",
        "lora.alpha=32",
        f"lora.target_modules=[{', '.join(LORA_TARGETS)}]",
        f"rewards=[{{name: vowels, type: python, kwargs: {{function: '{reward}', "
        f"device: {device}}}}}, {{name: length, type: length, "
        f"kwargs: {{target_words: {args.new_tokens}}}}}]",
        f"trainer.batch_prompts={args.prompts}",
        f"trainer.generations_per_prompt={args.generations}",
        f"trainer.max_new_tokens={args.new_tokens}",
        f"trainer.micro_batch_size={args.micro_batch_size}",
        f"trainer.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        "federation.local_steps=1",
    ]
    if mixed == "bf16":  # 'no' is YAML for false: leave the default instead of writing it
        overrides.append("trainer.mixed_precision=bf16")

    start = time.perf_counter()
    config_dict = build_model_dir(model_dir, args.layers, [p.text for p in prompts])
    build_s = time.perf_counter() - start
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"model.tokenizer={model_dir / 'tokenizer'}",
            *overrides,
        ],
    )
    start = time.perf_counter()
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    sync(policy.device)
    load_s = time.perf_counter() - start
    dev = policy.device
    model_mib = None
    if dev.type == "cuda":
        model_mib = torch.cuda.memory_allocated(dev) / 2**20
        torch.cuda.reset_peak_memory_stats(dev)
    counter = GenerateCounter(policy)
    trainer = LocalTrainer(
        policy,
        build_rewards(cfg.rewards, device=str(dev)),
        cfg.trainer,
        cfg.algorithm,
        cfg.federation.local_steps,
        max_prompt_tokens=cfg.model.max_prompt_tokens,
        seed=0,
    )
    adapter = get_adapter_state(policy.model)

    steps: list[dict[str, Any]] = []
    for index in range(args.warmup + args.steps):  # warm-up: CUDA kernels, allocator, caches
        first_call = len(counter.calls)
        sync(dev)
        start = time.perf_counter()
        update = trainer.run_round(adapter, prompts, client_id=0, round_index=index)
        sync(dev)
        wall = time.perf_counter() - start
        if not update.valid:
            raise RuntimeError(f"round {index}: invalid update ({update.reason})")
        adapter = update.adapter
        calls = counter.calls[first_call:]
        if not calls:
            raise RuntimeError("the trainer did not call policy.model.generate: cannot count")
        entry: dict[str, Any] = {"round": index, "warmup": index < args.warmup, "wall_s": wall}
        for phase in PHASES:
            entry[f"{phase}_s"] = float(update.metrics.get(f"time_{phase}", float("nan")))
        entry["other_s"] = wall - sum(entry[f"{p}_s"] for p in PHASES)
        for key in ("sequences", "completion_tokens", "prompt_tokens", "truncated"):
            entry[key] = sum(c[key] for c in calls)
        entry["skipped_steps"] = float(update.metrics.get("skipped_steps", 0.0))
        entry["lambda"] = update.metrics.get("lambda")
        train_s = sum(entry[f"{p}_s"] for p in TRAIN_PHASES)
        seq_tokens = entry["completion_tokens"] + entry["prompt_tokens"]
        entry["generate_tok_s"] = entry["completion_tokens"] / entry["generate_s"]
        entry["train_tok_s"] = seq_tokens / train_s
        entry["step_tok_s"] = entry["completion_tokens"] / wall
        steps.append(entry)
        print(
            f"round {index}{' (warm-up)' if entry['warmup'] else ''}: {wall:.2f} s, "
            f"generate {entry['generate_tok_s']:.0f} tok/s, train {entry['train_tok_s']:.0f} "
            f"tok/s",
            flush=True,
        )

    timed = [s for s in steps if not s["warmup"]]
    median = {
        key: statistics.median(s[key] for s in timed)
        for key, value in timed[0].items()
        if key not in ("round", "warmup") and isinstance(value, (int, float))
    }
    sequences = sum(s["sequences"] for s in timed)
    peak_gpu = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": str(dev),
        "device_name": device_name(dev),
        "versions": _versions(),
        "args": vars(args),
        "mixed_precision": mixed,
        "model": config_dict,
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in policy.trainable_parameters),
        "build_s": build_s,
        "load_s": load_s,
        "model_gpu_mib": model_mib,
        "peak_gpu_mib": peak_gpu,
        "peak_rss_mib": peak_rss_mib(),
        "truncated_fraction": sum(s["truncated"] for s in timed) / sequences,
        "median": median,
        "steps": steps,
    }


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def print_table(result: dict[str, Any]) -> None:
    """The medians as a table (rich when installed, plain text otherwise)."""
    m, a = result["median"], result["args"]
    memory = (
        f"{result['peak_gpu_mib']:.0f} MiB GPU peak (model {result['model_gpu_mib']:.0f})"
        if result["peak_gpu_mib"] is not None
        else f"{result['peak_rss_mib']:.0f} MiB peak RSS"
    )
    rows = [
        ("step wall", f"{m['wall_s']:.3f} s", f"{m['step_tok_s']:.0f} completion tok/s"),
        *(
            (f"  {p}", f"{m[f'{p}_s']:.3f} s", f"{100 * m[f'{p}_s'] / m['wall_s']:.0f}%")
            for p in [*PHASES, "other"]
        ),
        ("generation", f"{m['completion_tokens']:.0f} tok", f"{m['generate_tok_s']:.0f} tok/s"),
        (
            "training (fwd+bwd+solve+step)",
            f"{m['completion_tokens'] + m['prompt_tokens']:.0f} tok",
            f"{m['train_tok_s']:.0f} tok/s",
        ),
        ("truncated completions", f"{100 * result['truncated_fraction']:.1f}%", "no EOS"),
        ("memory", memory, ""),
    ]
    title = (
        f"{result['device_name']} | {result['model']['num_hidden_layers']} layers, "
        f"{result['parameters'] / 1e6:.0f}M params, "
        f"LoRA {result['trainable_parameters'] / 1e6:.2f}M"
        f" | {a['dtype']}, autocast {result['mixed_precision']} | "
        f"{a['prompts']}x{a['generations']}x{a['new_tokens']} | median of {a['steps']} steps"
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for row in rows:
            print(f"{row[0]:<32} {row[1]:>28} {row[2]:>28}")
        return
    table = Table(title=title)
    for column in ("", "value", "rate / share"):
        table.add_column(column, justify="left" if not column else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--mixed-precision",
        choices=["auto", "none", "bf16"],
        default="auto",
        help="trainer.mixed_precision; auto = bf16 with --dtype bfloat16, else none",
    )
    parser.add_argument("--layers", type=int, default=QWEN25_05B["num_hidden_layers"])
    parser.add_argument("--steps", type=int, default=3, help="timed local steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed local steps first")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=32)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = parser.parse_args()
    if args.layers < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--layers and --steps must be >= 1, --warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="firm_ray_gpu_bench_") as model_dir:
        result = run(args, Path(model_dir))
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
