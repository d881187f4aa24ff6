"""The built-in world, measured: warm-start build, generation and scoring speed, and the
conflict between objectives that makes it a miniature of multi-objective RLHF.

    python bench/world.py            # table + bench/results/world.json (builds in a tmp cache)
    python bench/world.py --cached   # reuse the cached warm-start model (no build timing)

Reports (2 CPU cores here): warm-start build seconds (target <= 120 s), completions/s of
sampling, scored completions/s of each reward and the time to score 64 completions with all
default rewards (target <= 0.5 s), peak RSS; per category the mean of each reward over the
warm-start policy's samples, and the correlation between objectives, both pooled and
within-prompt (what group-relative advantages see); and per client of a Dirichlet(0.3) partition,
the category mix and the client's reward trade-off (its within-prompt correlations).
"""

from __future__ import annotations

import argparse
import json
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
from firm_ray.data.world import CATEGORIES, world_prompts
from firm_ray.models.generation import sample_completions
from firm_ray.models.policy import load_policy
from firm_ray.models.warmstart import ensure_world_model
from firm_ray.rewards import build_rewards, score_all

REWARDS = [
    RewardSpec(name="relevance", type="relevance"),
    RewardSpec(name="harmlessness", type="harmlessness"),
    RewardSpec(name="sentiment", type="sentiment"),
]
PAIRS = [("relevance", "harmlessness"), ("relevance", "sentiment"), ("harmlessness", "sentiment")]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() < 1e-12 or y.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def within_prompt(scores: np.ndarray, group: int) -> np.ndarray:
    """Scores minus their prompt's mean: the part group-relative advantages act on."""
    grouped = scores.reshape(-1, group, scores.shape[-1])
    return (grouped - grouped.mean(axis=1, keepdims=True)).reshape(scores.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cached", action="store_true", help="reuse the cached model")
    parser.add_argument("--prompts-per-category", type=int, default=24)
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "world.json"))
    args = parser.parse_args()
    console = Console(width=150)
    result: dict = {"bench": "world", "threads": torch.get_num_threads()}

    # -- warm-start build -------------------------------------------------------------------
    if args.cached:
        model_dir = ensure_world_model()
    else:
        start = time.perf_counter()
        model_dir = ensure_world_model(root=Path(tempfile.mkdtemp(prefix="firm_ray_bench_")))
        result["build_wall_s"] = time.perf_counter() - start
    build = json.loads((model_dir / "build.json").read_text())
    result["build"] = build

    # -- sampling ---------------------------------------------------------------------------
    policy = load_policy(ModelConfig(name_or_path=str(model_dir)), LoraConfig())
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
    per_category = {}
    for category in CATEGORIES:
        rows = categories == category
        entry = {"mean": dict(zip(names, scores[rows].mean(axis=0).round(4).tolist(), strict=True))}
        for a, b in PAIRS:
            ia, ib = names.index(a), names.index(b)
            entry[f"corr {a}~{b}"] = pearson(scores[rows, ia], scores[rows, ib])
            entry[f"within {a}~{b}"] = pearson(residual[rows, ia], residual[rows, ib])
        per_category[category] = entry
    result["per_category"] = per_category

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
    table.add_row("warm-start final loss", f"{build['final_loss']:.3f}")
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
        title="warm-start policy per category: mean rewards and correlations "
        "(pooled / within-prompt)"
    )
    for col in ["category", *names, *[f"{a[:4]}~{b[:4]}" for a, b in PAIRS]]:
        table.add_column(col, justify="right")
    for category, entry in per_category.items():
        corr = [
            f"{entry[f'corr {a}~{b}']:+.2f} / {entry[f'within {a}~{b}']:+.2f}" for a, b in PAIRS
        ]
        table.add_row(category, *[f"{entry['mean'][k]:.3f}" for k in names], *corr)
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
