"""Peak memory of ONE local step at a 151,936-token vocabulary: today's path (commit 3ca7dd7:
full-vocabulary logits of the whole batch) next to the new one (micro-batches; log-probs from
hidden states sliced to the completion, LM head + log-softmax in checkpointed chunks).

    python bench/memory.py --threads 1   # 6.5-11.5 min on 2 shared cores; results/memory.json
    python bench/memory.py --quick       # 4 small steps, ~30 s (tests/unit/test_bench_memory.py)
    python bench/memory.py --new-commit HEAD   # the new path from a commit, not the working tree

Nothing is downloaded. A child writes a random-init Llama (hidden 64, 2 layers, 4 query / 2
key-value heads, vocabulary 151,936 as Qwen2's, untied head, seed 0) and a word-level tokenizer
of exactly 151,936 ids (random lower-case words, Qwen's special tokens at Qwen's ids, ChatML
template) with ``save_pretrained`` into a temp dir; ``load_policy`` loads both like a hub model
(Llama, not Qwen2: transformers 5's AutoTokenizer swaps the saved tokenizer of a ``qwen2``
model for Qwen2's byte-level one, which reads a prompt of our words as 3 special tokens; the
child checks that every prompt is its 12 words + 5 template tokens). LoRA r=8
on q/k/v/o_proj; FIRM, kl_coef 0.05 in the reward (one no-grad reference pass); rewards
``python`` (``memory:vowel_share``) and ``length``. A step: 8 prompts x 4 completions x 128 new
tokens. A random-init model almost never samples the EOS (1 id of 151,936), so completions run
to full length: the truncated fraction (no EOS within the limit) is counted on ``generate``'s
output and reported.

Rows, each in a fresh child process, one after another: today's path (``git archive 3ca7dd7
firm_ray`` into a temp dir, imported through PYTHONPATH; the child checks where firm_ray came
from); the new path at trainer.micro_batch_size 2, 4, 8, 16, 32 (the default), 32 sequences;
micro_batch_size 8 with 16 and 64 sequences; micro_batch_size 32 with logprob_chunk_tokens
1024 (the code's default elsewhere: 512 since commit 3cc90c0, 1024 before).

Method, per child: load policy and rewards; one warm-up round of the same code at 1 prompt x 2
completions x 2 tokens (its own LocalTrainer: imports, thread pools and lazy set-up happen
there); build the measured LocalTrainer (local_steps = 1); ``gc.collect()`` and glibc
``malloc_trim(0)`` (freed heap goes back to the OS: the baseline is live memory); read VmRSS
("before"); reset the kernel's RSS high-water mark (``5 > /proc/self/clear_refs``: ru_maxrss
restarts from the current RSS); ``run_round``; read ru_maxrss. The wrapper that counts EOS reads
ru_maxrss when ``generate`` returns and resets the mark again, splitting the peak into
generation and the rest (scoring, forwards, backward, optimizer).
**Step peak = max(those two ru_maxrss readings) - VmRSS before**: the most resident memory the
step added over what was live when it began. Without the reset the mark would still hold model
loading (and, after vfork + exec, the parent's own peak: the parent never imports torch). Where
the reset is not permitted the step peak is ru_maxrss after - VmRSS before only if the step set
a new maximum (ru_maxrss after > before), else null ("step_peak_kind" says which).
The children run with a static glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``, default 1 MiB;
``--mmap-threshold 0`` keeps glibc's sliding one): with the sliding default, each freed
mmapped buffer raises the threshold (up to 32 MiB), so the 19 MB [32, 151,936] logits of every
generated token then come from the brk heap, which fragments: the same generation peaked 0.45
to 1.8 GB above its start in four runs of one process, and kept up to 1.7 GB. With a static
threshold every buffer over it is mmapped and unmapped when freed: the RSS follows the tensors.
Step seconds = ``run_round`` wall time. Target (issue 13): new path <= 1/4 of today's peak at
32 x 128.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "3ca7dd7"
VOCAB = 151936
SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
UNK = "<|unk|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPT_WORDS = 12
NUM_PROMPTS = 16
PHASES = ["generate", "score", "forward", "backward", "solve", "step"]
SPLIT = ["generate_peak_mb", "after_generate_peak_mb"]


def vowel_share(prompts: list[str], completions: list[str]) -> list[float]:
    """The bench's ``python`` reward: share of vowels among a completion's letters."""
    out = []
    for text in completions:
        letters = [c for c in text if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / max(1, len(letters)))
    return out


def plan(quick: bool) -> list[dict[str, Any]]:
    """The rows, in run order: (path, prompts, generations, new tokens, micro-batch, chunk)."""
    if quick:
        gens, tokens = 2, 8
        rows = [("today", 2, None, None), ("new", 2, 2, None), ("new", 2, 4, None)]
        rows += [("new", 4, 2, None)]
    else:
        gens, tokens = 4, 128
        rows = [("today", 8, None, None)] + [("new", 8, mbs, None) for mbs in (2, 4, 8, 16, 32)]
        rows += [("new", 4, 8, None), ("new", 16, 8, None), ("new", 8, 32, 1024)]
    return [  # chunk None: the default of the code measured
        {"path": p, "prompts": n, "generations": gens, "new_tokens": tokens, "micro_batch": m}
        | {"chunk_tokens": c}
        for p, n, m, c in rows
    ]


# ------------------------------------------------------------------ child: model directory
def build_model_dir(target: Path, hidden: int, layers: int) -> dict[str, Any]:
    """Random-init Llama + word-level tokenizer of VOCAB ids, saved hub-style; the prompts."""
    import random

    import torch
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    rng = random.Random(0)
    specials = SPECIAL_IDS
    words: set[str] = {"user", "assistant", "system"}
    while len(words) < min(specials.values()):
        words.add("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8))))
    vocab_map = {w: i for i, w in enumerate(sorted(words))} | specials
    reserved = [UNK] + [f"<|reserved_{i}|>" for i in range(VOCAB - len(vocab_map) - 1)]
    vocab_map |= {t: len(vocab_map) + i for i, t in enumerate(reserved)}
    assert sorted(vocab_map.values()) == list(range(VOCAB))
    backend = Tokenizer(models.WordLevel(vocab_map, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True) for t in [*specials, *reserved]])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=UNK
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(target)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=specials["<|endoftext|>"],
        eos_token_id=specials["<|im_end|>"],
        pad_token_id=specials["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(target)
    pool = sorted(words - {"user", "assistant", "system"})
    prompts = [" ".join(rng.choices(pool, k=PROMPT_WORDS)) for _ in range(NUM_PROMPTS)]
    (target / "prompts.json").write_text(json.dumps(prompts))
    params = sum(p.numel() for p in model.parameters())
    return {"hidden": hidden, "layers": layers, "vocab": VOCAB, "parameters": params}


# ------------------------------------------------------------------ child: one measurement
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(spec: dict[str, Any], model_dir: str) -> dict[str, Any]:
    """One row: the step peak, its split and its seconds (method: the module docstring)."""
    import ctypes
    import gc

    import torch

    import firm_ray
    from firm_ray.config import AlgorithmConfig, LoraConfig, ModelConfig, RewardSpec
    from firm_ray.config import TrainerConfig as Trainer
    from firm_ray.data.prompts import Prompt
    from firm_ray.models.adapter import get_adapter_state
    from firm_ray.models.policy import load_policy
    from firm_ray.rewards import build_rewards
    from firm_ray.trainer import LocalTrainer

    where = str(Path(firm_ray.__file__).resolve().parent.parent)
    assert where == spec["firm_ray_root"], f"firm_ray imported from {where}"
    policy = load_policy(
        ModelConfig(name_or_path=model_dir, device="cpu"), LoraConfig(target_modules=LORA_TARGETS)
    )
    rewards = build_rewards(
        [
            RewardSpec(name="vowels", type="python", kwargs={"function": "memory:vowel_share"}),
            RewardSpec(name="length", type="length", kwargs={"target_words": 64}),
        ]
    )
    texts = json.loads((Path(model_dir) / "prompts.json").read_text())
    for text in policy.format_prompts(texts):  # the words, not a byte-level reading of them
        ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == PROMPT_WORDS + 5 and policy.tokenizer.unk_token_id not in ids, ids
    prompts = [Prompt(text=t, category="synthetic", source="bench") for t in texts]
    eos = {policy.tokenizer.eos_token_id, policy.model.get_base_model().config.eos_token_id}
    generated: list[dict[str, Any]] = []
    splitting = False  # True while the measured step runs with a resettable high-water mark
    original_generate = policy.model.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:  # the trainer is not changed
        out = original_generate(*args, **kwargs)
        completion = out[:, kwargs["input_ids"].shape[1] :]
        no_eos = ~torch.isin(completion, torch.tensor(sorted(eos))).any(dim=1)
        entry = {"rows": len(out), "new": completion.shape[1], "trunc": int(no_eos.sum())}
        entry["prompt"] = kwargs["input_ids"].shape[1]
        if splitting:  # the generation's own peak, then the high-water mark starts again
            entry["maxrss"] = _maxrss_mb()
            _reset_high_water()
        generated.append(entry)
        return out

    policy.model.generate = counting_generate

    def trainer(prompts_per_step: int, gens: int, tokens: int) -> Any:
        new = {"micro_batch_size": spec["micro_batch"]}  # today's config has neither key
        if spec["chunk_tokens"]:
            new["logprob_chunk_tokens"] = spec["chunk_tokens"]
        cfg = Trainer(
            batch_prompts=prompts_per_step,
            generations_per_prompt=gens,
            max_new_tokens=tokens,
            **(new if spec["path"] == "new" else {}),
        )
        return LocalTrainer(policy, rewards, cfg, AlgorithmConfig(), local_steps=1, seed=0)

    adapter = get_adapter_state(policy.model)
    trainer(1, 2, 2).run_round(adapter, prompts, client_id=0, round_index=0)  # warm-up
    measured = trainer(spec["prompts"], spec["generations"], spec["new_tokens"])
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss_before, maxrss_before = _status_mb("VmRSS"), _maxrss_mb()
    splitting = _reset_high_water()
    start = time.perf_counter()
    update = measured.run_round(adapter, prompts, client_id=0, round_index=1)
    step_s = time.perf_counter() - start
    maxrss_after = _maxrss_mb()
    last = generated[-1]
    generate_peak = train_peak = None
    if splitting:
        generate_peak, train_peak = last["maxrss"] - rss_before, maxrss_after - rss_before
        peak, kind = max(generate_peak, train_peak), "high-water reset before the step"
    elif maxrss_after > maxrss_before:
        peak, kind = maxrss_after - rss_before, "step set a new ru_maxrss"
    else:
        peak, kind = None, f"unresolved: <= {maxrss_before - rss_before:.0f} MB"
    return {
        **spec,
        "valid": update.valid,
        "skipped_steps": update.metrics.get("skipped_steps"),
        "sequences": last["rows"],
        "new_tokens_generated": last["new"],
        "prompt_tokens": last["prompt"],
        "chunk_tokens": getattr(measured.cfg, "logprob_chunk_tokens", None),
        "truncated_fraction": last["trunc"] / last["rows"],
        "rss_before_mb": rss_before,
        "maxrss_before_mb": maxrss_before,
        "maxrss_after_mb": maxrss_after,
        "step_peak_mb": peak,
        "step_peak_kind": kind,
        "generate_peak_mb": generate_peak,
        "after_generate_peak_mb": train_peak,
        "step_s": step_s,
        "phases_s": {p: update.metrics.get(f"time_{p}", 0.0) for p in PHASES},
        "threads": torch.get_num_threads(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "torch": torch.__version__,
    }


# ------------------------------------------------------------------------------ parent
def run_child(args: list[str], pythonpath: str, opts: argparse.Namespace) -> dict[str, Any]:
    """``python bench/memory.py <args>`` in a fresh interpreter; the dict it prints last."""
    env = dict(os.environ, PYTHONPATH=pythonpath, TOKENIZERS_PARALLELISM="false")
    if opts.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(opts.threads)
    if opts.mmap_threshold:  # a static threshold: glibc's sliding one is off (see the docstring)
        env["MALLOC_MMAP_THRESHOLD_"] = str(opts.mmap_threshold)
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"child {args[:2]} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("@@RESULT@@") :])


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def export_commit(commit: str, target: Path) -> str:
    """``firm_ray/`` of ``commit`` under ``target`` (git archive: no worktree to clean up)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "firm_ray"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return _git("rev-parse", commit)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    model = result["model"]
    table = Table(
        title=(
            f"Peak memory of one local step, vocab {model['vocab']:,}, Llama hidden "
            f"{model['hidden']} x {model['layers']} layers, CPU float32, "
            f"{result['rows'][0]['threads']} threads, malloc mmap threshold "
            f"{result['malloc_mmap_threshold']}"
        )
    )
    heads = ["path", "sequences", "new tok", "micro-batch", "chunk", "step peak MB"]
    heads += ["in generate", "after it", "vs today", "RSS before MB", "step s", "train s"]
    heads += ["truncated"]
    for i, head in enumerate(heads):
        table.add_column(head, justify="left" if i == 0 else "right")
    today = next((r["step_peak_mb"] for r in result["rows"] if r["path"] == "today"), None)
    for r in result["rows"]:
        peak = r["step_peak_mb"]
        train = sum(r["phases_s"][p] for p in ("forward", "backward", "solve", "step"))
        table.add_row(
            f"today ({OLD_COMMIT})" if r["path"] == "today" else "new",
            str(r["sequences"]),
            str(r["new_tokens_generated"]),
            str(r["micro_batch"] or "-"),
            str(r["chunk_tokens"] or "-"),
            "?" if peak is None else f"{peak:,.0f}",
            *["-" if r[k] is None else f"{r[k]:,.0f}" for k in SPLIT],
            "-" if None in (peak, today) else f"{peak / today:.2f}",
            f"{r['rss_before_mb']:,.0f}",
            f"{r['step_s']:.1f}",
            f"{train:.1f}",
            f"{r['truncated_fraction']:.2f}",
        )
    console = Console(width=170)
    console.print(table)
    if result["quick"]:
        console.print("--quick: sizes too small for the issue's target; no check")
        return
    for check in result["target"]["checks"]:
        console.print(
            f"target new/today <= 0.25 at {check['sequences']} x {check['new_tokens']}, "
            f"micro-batch {check['micro_batch']}, chunk {check['chunk_tokens']}: "
            f"{check['ratio']:.3f} -> " + ("held" if check["held"] else "NOT held")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 small rows (CI)")
    parser.add_argument("--old-commit", default=OLD_COMMIT, help="today's path")
    parser.add_argument("--new-commit", default=None, help="new path from a commit (default: tree)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=1 << 20,
        help="glibc MALLOC_MMAP_THRESHOLD_ of the children in bytes (0: glibc's sliding default)",
    )
    parser.add_argument(
        "--only", default=None, help="rows whose path/micro-batch match, e.g. new:8"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build is not None:
        print("@@RESULT@@" + json.dumps(build_model_dir(Path(args.build), args.hidden, 2)))
        return
    if args.child is not None:
        spec = json.loads(args.child)
        print("@@RESULT@@" + json.dumps(measure(spec, spec["model_dir"])))
        return

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="firm_ray_memory_") as tmp:
        model_dir, old_root, new_root = Path(tmp, "model"), Path(tmp, "old"), Path(tmp, "new")
        for d in (model_dir, old_root, new_root):
            d.mkdir()
        old_sha = export_commit(args.old_commit, old_root)
        if args.new_commit:
            new_sha = export_commit(args.new_commit, new_root)
        else:
            new_root, new_sha = ROOT, "working tree at " + _git("rev-parse", "HEAD")
            if _git("status", "--porcelain", "firm_ray"):
                new_sha += " + uncommitted changes in firm_ray/"
        bench_dir = str(ROOT / "bench")
        build = ["--build", str(model_dir), "--hidden", str(args.hidden)]
        model = run_child(build, f"{ROOT}:{bench_dir}", args)
        rows = []
        for spec in plan(args.quick):
            if args.only and args.only not in (
                spec["path"],
                f"{spec['path']}:{spec['micro_batch']}",
            ):
                continue
            root = old_root if spec["path"] == "today" else new_root
            spec |= {"firm_ray_root": str(root.resolve()), "model_dir": str(model_dir)}
            row = run_child(["--child", json.dumps(spec)], f"{root}:{bench_dir}", args)
            peak = row["step_peak_mb"]
            print(
                f"{spec['path']:>5} seq={row['sequences']:<3} mb={spec['micro_batch']} "
                f"chunk={spec['chunk_tokens']}: peak {peak} MB, {row['step_s']:.1f} s",
                file=sys.stderr,
            )
            rows.append(row)
    today = next((r for r in rows if r["path"] == "today"), None)
    checks = [
        {
            "sequences": r["sequences"],
            "new_tokens": r["new_tokens_generated"],
            "micro_batch": r["micro_batch"],
            "chunk_tokens": r["chunk_tokens"],
            "ratio": r["step_peak_mb"] / today["step_peak_mb"],
            "held": r["step_peak_mb"] <= 0.25 * today["step_peak_mb"],
        }
        for r in rows
        if today is not None
        and today["step_peak_mb"]
        and r["path"] == "new"
        and r["sequences"] == today["sequences"]
        and r["step_peak_mb"] is not None
    ]
    result = {
        "bench": "memory",
        "quick": args.quick,
        "old_commit": old_sha,
        "new_code": new_sha,
        "model": model,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "malloc_mmap_threshold": args.mmap_threshold or "glibc default (sliding)",
        "wall_s": time.perf_counter() - started,
        "rows": rows,
        "target": {"ratio_at_most": 0.25, "checks": checks},
    }
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
