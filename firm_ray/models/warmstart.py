"""The embedded default's warm-start policy: a tiny Llama (RoPE, RMSNorm, SwiGLU MLP,
grouped-query attention) and a word-level tokenizer with a ChatML chat template, trained here on
dialogues of the built-in world (firm_ray.data.world), so completions are words that respond to
the prompt, in a mixture of styles that RL can shift.

Why this shape: users run Llama/Qwen models, so CPU tests should walk their code paths: q/k/v/o
projections for LoRA, fewer KV heads than query heads, rotary positions under left padding, a
BOS token emitted by the template, an end-of-turn EOS (``<|im_end|>``) distinct from the end of
text and from the pad token, and a generation_config listing several EOS ids (as Llama-3 and
Qwen2.5 do). Llama rather than Qwen2 because transformers 5's AutoTokenizer replaces the saved
tokenizer of any ``qwen2`` model with Qwen2's byte-level one, which would not read our word-level
vocabulary; a ``llama`` model keeps its own tokenizer.json (as Llama-3's does).

Why build instead of ship: nothing may be downloaded from a hub, and a checked-in binary would
hide how it was made. The build takes well under two minutes on 2 CPU cores, runs once, and is
cached under ``$FIRM_RAY_CACHE`` (default ``~/.cache/firm_ray``) in ``world/<recipe hash>/``. The
hash covers the recipe (architecture, sizes, steps, seed), the chat template and special tokens,
and the generated corpus itself, so editing the world's templates rebuilds the model instead of
silently reusing a stale one. The result is an ordinary Hugging Face directory:
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer`` load it, so the embedded default goes
through exactly the code path of a real model.

    firm-ray build-world            # build (or find) it and print where it is
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from firm_ray.data.world import world_dialogues

BUILTIN_PREFIX = "builtin:"
BUILTIN_WORLD = "builtin:tiny-world"

# Special tokens, ChatML-style (Qwen2): the end of a turn is the EOS that stops generation; the
# end of text is a second EOS id; the pad token is neither, so padding is never mistaken for an end.
BOS, IM_START, IM_END = "<|startoftext|>", "<|im_start|>", "<|im_end|>"
END_OF_TEXT, PAD, UNK = "<|endoftext|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, IM_START, IM_END, END_OF_TEXT]
# The same template renders the training corpus and the generation prompts (apply_chat_template).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class WorldModelRecipe:
    """Everything that determines the warm-start model (and therefore its cache key)."""

    seed: int = 0
    dialogues: int = 6000
    architecture: str = "llama"
    num_hidden_layers: int = 2
    hidden_size: int = 128
    intermediate_size: int = 384
    num_attention_heads: int = 4  # head dim = hidden_size / heads = 32
    num_key_value_heads: int = 2  # grouped-query attention: 2 query heads per KV head
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    steps: int = 800
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 30


def cache_root() -> Path:
    """Where built artifacts live: ``$FIRM_RAY_CACHE`` or ``~/.cache/firm_ray``."""
    return Path(os.environ.get("FIRM_RAY_CACHE", Path.home() / ".cache" / "firm_ray"))


def _template_tokenizer(vocab: dict[str, int] | None = None) -> Any:
    """A PreTrainedTokenizerFast with the world's special tokens and chat template.

    Without ``vocab`` it only renders templates (the corpus is rendered before the tokenizer is
    trained); special tokens are added tokens, so they are matched before pre-tokenization and
    stay atomic. Words are split on spaces (Metaspace, so decoding gives normal text), newlines
    and punctuation.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(
        models.WordLevel(vocab=vocab or {t: i for i, t in enumerate(SPECIAL_TOKENS)}, unk_token=UNK)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(),
            pre_tokenizers.Punctuation(),
        ]
    )
    tokenizer.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START, END_OF_TEXT],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _corpus(recipe: WorldModelRecipe) -> list[str]:
    """The training texts: every dialogue rendered by the chat template, as generation sees it."""
    conversations = [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        for _, _, prompt, response in world_dialogues(recipe.dialogues, recipe.seed)
    ]
    return list(_template_tokenizer().apply_chat_template(conversations, tokenize=False))


def recipe_hash(recipe: WorldModelRecipe, corpus: list[str] | None = None) -> str:
    """Short hash of the recipe, the chat template, the special tokens and the corpus."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    digest.update(CHAT_TEMPLATE.encode())
    digest.update(json.dumps(SPECIAL_TOKENS).encode())
    for line in corpus if corpus is not None else _corpus(recipe):
        digest.update(line.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def world_model_dir(recipe: WorldModelRecipe | None = None, root: Path | None = None) -> Path:
    """The cache directory of the model built from ``recipe`` (built or not)."""
    recipe = recipe or WorldModelRecipe()
    return (root or cache_root()) / "world" / recipe_hash(recipe)


def world_model_cached(recipe: WorldModelRecipe | None = None, root: Path | None = None) -> bool:
    """Whether ``ensure_world_model`` would return at once (the model is already built)."""
    return (world_model_dir(recipe, root) / "build.json").exists()


def ensure_world_model(
    recipe: WorldModelRecipe | None = None, root: Path | None = None, verbose: bool = False
) -> Path:
    """Return the directory of the warm-start model, building it first if it is not cached.

    ``verbose`` shows a progress line while it builds. Safe when several processes (Ray workers)
    ask at once: a file lock serializes the build and the directory appears atomically (built in
    a temporary sibling, then renamed).
    """
    recipe = recipe or WorldModelRecipe()
    corpus = _corpus(recipe)
    target = (root or cache_root()) / "world" / recipe_hash(recipe, corpus)
    if (target / "build.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "build.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
        try:
            _build(recipe, corpus, tmp, _Progress(recipe.steps) if verbose else None)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class _Progress:
    """One progress line, rewritten in place on a terminal (a line per 10% in a log file)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.start, self.first, self.shown = steps, time.perf_counter(), 0.0, -1.0
        self.tty = sys.stdout.isatty()

    def __call__(self, step: int, loss: float) -> None:
        elapsed = time.perf_counter() - self.start
        if step == 0:
            self.first = elapsed  # tokenizer, corpus encoding, model init and the first step
        done = step + 1 == self.steps
        if self.tty:
            if not done and elapsed - self.shown < 0.25:
                return
        elif not done and step * 10 // self.steps == (step - 1) * 10 // self.steps:
            return
        self.shown = elapsed
        line = (
            f"[build-world] training the built-in model: step {step + 1}/{self.steps}, "
            f"loss {loss:.3f}, {elapsed:.0f} s"
        )
        if step >= 10 and not done:
            left = (elapsed - self.first) / step * (self.steps - step - 1)
            line += f", ~{left:.0f} s left"
        end = "\n" if done or not self.tty else ""
        print(("\r\033[K" if self.tty else "") + line, end=end, flush=True)


def _train_tokenizer(corpus: list[str]) -> Any:
    """Word-level tokenizer: every word of the world is one token, punctuation split off.

    The vocabulary is learned from the corpus with its special tokens cut out (they are not
    words), so the special tokens keep ids 0..5 and the words follow without gaps.
    """
    from tokenizers import trainers

    specials = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    words = _template_tokenizer().backend_tokenizer
    words.train_from_iterator(
        (specials.sub("\n", text) for text in corpus),
        trainer=trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False),
    )
    vocab = words.get_vocab(with_added_tokens=False)
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise RuntimeError("world tokenizer: vocabulary ids are not contiguous")
    return _template_tokenizer(vocab)


def _model_config(recipe: WorldModelRecipe, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    if recipe.architecture != "llama":
        raise ValueError(f"unknown warm-start architecture {recipe.architecture!r} (llama)")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        head_dim=recipe.hidden_size // recipe.num_attention_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": recipe.rope_theta},
        tie_word_embeddings=recipe.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _build(recipe: WorldModelRecipe, corpus: list[str], out: Path, progress: Any) -> None:
    from transformers import AutoModelForCausalLM

    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(recipe.seed)
    tokenizer = _train_tokenizer(corpus)
    tokenizer.padding_side = "right"  # training batches; saved as left for generation below
    encoded = tokenizer(corpus, padding=True, add_special_tokens=False, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if ids.shape[1] > recipe.max_position_embeddings:
        raise ValueError(
            f"world dialogues need {ids.shape[1]} positions > {recipe.max_position_embeddings}"
        )
    model = AutoModelForCausalLM.from_config(_model_config(recipe, tokenizer))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / recipe.warmup_steps)
            * 0.5
            * (1 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps))
        ),
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    losses = []
    for step in range(recipe.steps):
        rows = torch.randint(0, ids.shape[0], (recipe.batch_size,), generator=generator)
        batch_mask = mask[rows]
        width = int(batch_mask.sum(dim=1).max())
        batch_ids, batch_mask = ids[rows, :width], batch_mask[:, :width]
        labels = batch_ids.masked_fill(batch_mask == 0, -100)
        loss = model(input_ids=batch_ids, attention_mask=batch_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    # Every id that ends a completion: the end of turn first, then the end of text.
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in (IM_END, END_OF_TEXT)]
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)
    seconds = time.perf_counter() - start
    tail = losses[-20:]
    (out / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2))
    (out / "build.json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": time.process_time() - cpu_start,
                "final_loss": sum(tail) / len(tail),
                "architecture": type(model).__name__,
                "vocab_size": len(tokenizer),
                "parameters": sum(p.numel() for p in model.parameters()),
                "dialogues": len(corpus),
                "max_tokens": int(mask.sum(dim=1).max()),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )
