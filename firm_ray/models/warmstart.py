"""The embedded default's warm-start policy: a tiny GPT-2 and word-level tokenizer trained here
on dialogues of the built-in world (firm_ray.data.world), so completions are words that respond
to the prompt, in a mixture of styles that RL can shift.

Why build instead of ship: nothing may be downloaded from a hub, and a checked-in binary would
hide how it was made. The build takes well under two minutes on 2 CPU cores, runs once, and is
cached under ``$FIRM_RAY_CACHE`` (default ``~/.cache/firm_ray``) in ``world/<recipe hash>/``. The
hash covers the recipe (sizes, steps, seed) and the generated corpus itself, so editing the world's
templates rebuilds the model instead of silently reusing a stale one. The result is an ordinary
Hugging Face directory: ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer`` load it, so
the embedded default goes through exactly the code path of a real model.

    firm-ray build-world            # build (or find) it and print where it is
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from firm_ray.data.world import world_dialogues

BUILTIN_PREFIX = "builtin:"
BUILTIN_WORLD = "builtin:tiny-world"

USER, ASSISTANT, EOS, PAD, UNK = "<user>", "<assistant>", "<eos>", "<pad>", "<unk>"
# The same template serves training text and generation prompts (apply_chat_template).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + " {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}"
    + ASSISTANT
    + " {{ message['content'] }}"
    + EOS
    + " "
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


@dataclass(frozen=True)
class WorldModelRecipe:
    """Everything that determines the warm-start model (and therefore its cache key)."""

    seed: int = 0
    dialogues: int = 6000
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 96
    steps: int = 800
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 30


def cache_root() -> Path:
    """Where built artifacts live: ``$FIRM_RAY_CACHE`` or ``~/.cache/firm_ray``."""
    return Path(os.environ.get("FIRM_RAY_CACHE", Path.home() / ".cache" / "firm_ray"))


def _corpus(recipe: WorldModelRecipe) -> list[str]:
    return [
        f"{USER} {prompt} {ASSISTANT} {response}{EOS}"
        for _, _, prompt, response in world_dialogues(recipe.dialogues, recipe.seed)
    ]


def recipe_hash(recipe: WorldModelRecipe, corpus: list[str] | None = None) -> str:
    """Short hash of the recipe, the generated corpus and the chat template."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    digest.update(CHAT_TEMPLATE.encode())
    for line in corpus if corpus is not None else _corpus(recipe):
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def world_model_dir(recipe: WorldModelRecipe | None = None, root: Path | None = None) -> Path:
    """The cache directory of the model built from ``recipe`` (built or not)."""
    recipe = recipe or WorldModelRecipe()
    return (root or cache_root()) / "world" / recipe_hash(recipe)


def ensure_world_model(
    recipe: WorldModelRecipe | None = None, root: Path | None = None, verbose: bool = False
) -> Path:
    """Return the directory of the warm-start model, building it first if it is not cached.

    Safe when several processes (Ray workers) ask at once: a file lock serializes the build and
    the directory appears atomically (built in a temporary sibling, then renamed).
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
            _build(recipe, corpus, tmp, verbose)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _train_tokenizer(corpus: list[str]):  # -> PreTrainedTokenizerFast
    """Word-level tokenizer: every word of the world is one token, punctuation split off."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()]
    )
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, EOS, USER, ASSISTANT])
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        bos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build(recipe: WorldModelRecipe, corpus: list[str], out: Path, verbose: bool) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    tokenizer = _train_tokenizer(corpus)
    tokenizer.padding_side = "right"  # training batches; saved as left for generation below
    encoded = tokenizer(corpus, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if ids.shape[1] > recipe.n_positions:
        raise ValueError(f"world dialogues need {ids.shape[1]} positions > {recipe.n_positions}")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
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
        if verbose and (step % 50 == 0 or step == recipe.steps - 1):
            print(f"[build-world] step {step:4d}/{recipe.steps} loss {loss:.3f}", flush=True)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
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
                "final_loss": sum(tail) / len(tail),
                "vocab_size": len(tokenizer),
                "parameters": sum(p.numel() for p in model.parameters()),
                "dialogues": len(corpus),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )
