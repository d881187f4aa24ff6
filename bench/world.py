"""The built-in world, measured: warm-start build, generation and scoring speed, and the
conflict between objectives that makes it a miniature of multi-objective RLHF.

    python bench/world.py            # table + bench/results/world.json (builds in a tmp cache)
    python bench/world.py --cached   # reuse the cached warm-start model (no build timing)
    python bench/world.py --model-dir DIR   # measure an existing build (e.g. an older recipe)

Reports (2 CPU cores here): warm-start build seconds (target <= 120 s), completions/s of
sampling, scored completions/s of each reward and the time to score 64 completions with all
default rewards (target <= 0.5 s), peak RSS; the response NLL (nats per assistant
answer up to its end-of-turn token, given the chat-template prompt, on fresh dialogues: a
quality measure that, unlike the training loss, does not depend on how many trivially
predictable template tokens a format adds); per category the mean of each reward over the
warm-start policy's samples, and the correlation between objectives, both pooled and
within-prompt (what group-relative advantages see), next to the same statistics of the world's
own responses to the same prompts (what a perfect warm-start model would give); and per client
of a Dirichlet(0.3) partition, the category mix and the client's reward trade-off (its
within-prompt correlations).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from firm_ray.config import LoraConfig, ModelConfig, PartitionConfig, RewardSpec
from firm_ray.data.partition import partition_prompts
from firm_ray.data.world import (
    CATEGORIES,
    all_world_prompts,
    world_dialogues,
    world_prompts,
    world_response,
)
from firm_ray.models.generation import sample_completions
from firm_ray.models.policy import load_policy
from firm_ray.models.warmstart import ensure_world_model
from firm_ray.rewards import build_rewards, score_all

REWARDS = [
    RewardSpec(name="relevance", type="relevance"),
    RewardSpec(name="harmlessness", type="harmlessness"),
    RewardSpec(name="sentiment", type="sentiment"),
]
NLL_SEED = 12345  # fresh dialogues, not the warm-start corpus's seed-0 draw
PAIRS = [("relevance", "harmlessness"), ("relevance", "sentiment"), ("harmlessness", "sentiment")]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() < 1e-12 or y.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def within_prompt(scores: np.ndarray, group: int) -> np.ndarray:
    """Scores minus their prompt's mean: the part group-relative advantages act on."""
    grouped = scores.reshape(-1, group, scores.shape[-1])
    return (grouped - grouped.mean(axis=1, keepdims=True)).reshape(scores.shape)


def conflict(scores: np.ndarray, categories: np.ndarray, names: list[str], group: int) -> dict:
    """Per category: mean rewards and the pooled / within-prompt correlation of each pair."""
    residual = within_prompt(scores, group)
    out = {}
    for category in CATEGORIES:
        rows = categories == category
        entry = {"mean": dict(zip(names, scores[rows].mean(axis=0).round(4).tolist(), strict=True))}
        for a, b in PAIRS:
            ia, ib = names.index(a), names.index(b)
            entry[f"corr {a}~{b}"] = pearson(scores[rows, ia], scores[rows, ib])
            entry[f"within {a}~{b}"] = pearson(residual[rows, ia], residual[rows, ib])
        out[category] = entry
    return out


def response_nll(policy, dialogues: list[tuple[str, str]], batch: int = 64) -> float:
    """Mean NLL (nats) of each assistant answer, up to and including the tokenizer's EOS, given
    the prompt as the chat template renders it for generation; the template must render the
    prompt as a prefix of the whole dialogue (what the warm-start model is trained on)."""
    tokenizer, model = policy.tokenizer, policy.model
    rows = []
    for prompt, response in dialogues:
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": response}], tokenize=False
        )
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        if full_ids[: len(head_ids)] != head_ids:
            raise ValueError("the chat template's generation prompt is not a prefix of a dialogue")
        answer = full_ids[len(head_ids) :]
        answer = answer[: answer.index(tokenizer.eos_token_id) + 1]
        rows.append((head_ids, answer))
    total = 0.0
    with torch.no_grad(), policy.reference():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            width = max(len(h) + len(a) for h, a in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (head, answer) in enumerate(chunk):
                seq = head + answer
                ids[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
                labels[i, len(head) : len(seq)] = torch.tensor(answer)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total -= float((picked * (target != -100)).sum())
    return total / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cached", action="store_true", help="reuse the cached model")
    parser.add_argument("--model-dir", help="measure this built model directory instead")
    parser.add_argument("--nll-dialogues", type=int, default=512)
    parser.add_argument("--prompts-per-category", type=int, default=24)
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "world.json"))
    args = parser.parse_args()
    console = Console(width=150)
    result: dict = {"bench": "world", "threads": torch.get_num_threads()}

    # -- warm-start build -------------------------------------------------------------------
    if args.model_dir:
        model_dir = Path(args.model_dir)
    elif args.cached:
        model_dir = ensure_world_model()
    else:
        start = time.perf_counter()
        model_dir = ensure_world_model(root=Path(tempfile.mkdtemp(prefix="firm_ray_bench_")))
        result["build_wall_s"] = time.perf_counter() - start
    build = json.loads((model_dir / "build.json").read_text())
    result["build"] = build

    policy = load_policy(ModelConfig(name_or_path=str(model_dir)), LoraConfig())
    result["model"] = {"dir": str(model_dir), "type": policy.model.config.model_type}

    # -- quality: response NLL on fresh dialogues ---------------------------------------------
    fresh = [(p, r) for _, _, p, r in world_dialogues(args.nll_dialogues, seed=NLL_SEED)]
    result["response_nll"] = response_nll(policy, fresh)

    # -- sampling ---------------------------------------------------------------------------
    train, held = world_prompts(seed=0)
    prompts = []
    for category in CATEGORIES:
        prompts += [p for p in held + train if p.category == category][: args.prompts_per_category]
    texts = [p.text for p in prompts]
    sample_completions(policy, texts[:8], 2, 8, seed=99)  # warm-up
    start = time.perf_counter()
    samples = sample_completions(policy, texts, args.group, args.max_new_tokens, seed=0)
    gen_s = time.perf_counter() - start
    n = len(samples.completions)
    new_tokens = int(samples.completion_mask.sum())
    result["generation"] = {
        "completions": n,
        "seconds": gen_s,
        "completions_per_s": n / gen_s,
        "tokens_per_s": new_tokens / gen_s,
    }

    # -- scoring speed ----------------------------------------------------------------------
    rewards = build_rewards(REWARDS)
    score_all(rewards, samples.prompts[:8], samples.completions[:8])  # load models, warm up
    speed = {}
    for reward in rewards:
        start = time.perf_counter()
        score_all([reward], samples.prompts, samples.completions)
        speed[reward.name] = n / (time.perf_counter() - start)
    default = build_rewards(
        [
            RewardSpec(name="relevance", type="relevance"),
            RewardSpec(name="harmlessness", type="harmlessness"),
        ]
    )
    block = slice(0, 64)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        score_all(default, samples.prompts[block], samples.completions[block])
        timings.append(time.perf_counter() - start)
    result["scoring"] = {
        "completions_per_s": speed,
        "default_rewards_64_s": float(np.median(timings)),
    }

    # -- the world's conflict -----------------------------------------------------------------
    scores = score_all(rewards, samples.prompts, samples.completions).double().numpy()
    names = [r.name for r in rewards]
    residual = within_prompt(scores, args.group)
    categories = np.array([prompts[i // args.group].category for i in range(n)])
    per_category = conflict(scores, categories, names, args.group)
    result["per_category"] = per_category
    # The same statistics for the world's own responses to the same prompts (what a perfect
    # warm-start model would sample): the reference the policy's numbers are read against.
    slots = {p.text: p for p in all_world_prompts()}
    rng = random.Random(0)
    world = [world_response(slots[p], rng)[1] for p in samples.prompts]
    world_scores = score_all(rewards, samples.prompts, world).double().numpy()
    result["per_category_world"] = conflict(world_scores, categories, names, args.group)

    # -- heterogeneous clients -------------------------------------------------------------------
    part = partition_prompts(
        prompts, args.clients, PartitionConfig(scheme="dirichlet", alpha=0.3), seed=0
    )
    clients = []
    for i, members in enumerate(part.clients):
        rows = np.concatenate([np.arange(j * args.group, (j + 1) * args.group) for j in members])
        mix = {c: int(sum(prompts[j].category == c for j in members)) for c in CATEGORIES}
        ia, ib = names.index("relevance"), names.index("harmlessness")
        clients.append(
            {
                "client": i,
                "prompts": len(members),
                "categories": mix,
                "mean": dict(zip(names, scores[rows].mean(axis=0).round(4).tolist(), strict=True)),
                "within relevance~harmlessness": pearson(residual[rows, ia], residual[rows, ib]),
            }
        )
    result["clients"] = clients
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # -- print --------------------------------------------------------------------------------
    table = Table(title="speed (2 cores)")
    table.add_column("what")
    table.add_column("value", justify="right")
    if "build_wall_s" in result:
        table.add_row("warm-start build, s (target <= 120)", f"{result['build_wall_s']:.1f}")
    table.add_row(f"warm-start model ({result['model']['type']})", f"{build['parameters']:,}")
    table.add_row("warm-start final training loss (per token)", f"{build['final_loss']:.3f}")
    table.add_row(
        f"response NLL on fresh dialogues, nats per answer ({args.nll_dialogues} dialogues)",
        f"{result['response_nll']:.3f}",
    )
    table.add_row(
        f"sampling, completions/s ({n} x <= {args.max_new_tokens} tokens)",
        f"{result['generation']['completions_per_s']:.0f}",
    )
    table.add_row("sampling, new tokens/s", f"{result['generation']['tokens_per_s']:.0f}")
    for name, value in speed.items():
        table.add_row(f"scoring {name}, completions/s", f"{value:.0f}")
    table.add_row(
        "relevance+harmlessness on 64 completions, s (target <= 0.5)",
        f"{result['scoring']['default_rewards_64_s']:.3f}",
    )
    table.add_row("peak RSS, MB", f"{result['peak_rss_mb']:.0f}")
    console.print(table)

    table = Table(
        title="per category: mean rewards and correlations (pooled / within-prompt) of the "
        "warm-start policy's samples and, as reference, of the world's own responses"
    )
    for col in ["category", "source", *names, *[f"{a[:4]}~{b[:4]}" for a, b in PAIRS]]:
        table.add_column(col, justify="right")
    for category in CATEGORIES:
        for source, stats in (("policy", per_category), ("world", result["per_category_world"])):
            entry = stats[category]
            corr = [
                f"{entry[f'corr {a}~{b}']:+.2f} / {entry[f'within {a}~{b}']:+.2f}" for a, b in PAIRS
            ]
            cells = [f"{entry['mean'][k]:.3f}" for k in names]
            table.add_row(category if source == "policy" else "", source, *cells, *corr)
    console.print(table)

    table = Table(
        title=f"Dirichlet(0.3) clients: category mix and trade-off "
        f"(mean tv distance {part.stats.mean_tv:.2f})"
    )
    for col in ["client", "prompts", *CATEGORIES, *names, "within rel~harm"]:
        table.add_column(col, justify="right")
    for c in clients:
        table.add_row(
            str(c["client"]),
            str(c["prompts"]),
            *[str(c["categories"][k]) for k in CATEGORIES],
            *[f"{c['mean'][k]:.3f}" for k in names],
            f"{c['within relevance~harmlessness']:+.2f}",
        )
    console.print(table)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
