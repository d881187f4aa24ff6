"""Benchmark of FIRM's core math: the in-client solver and per-objective gradients.

    python bench/core.py                 # prints a table, writes bench/results/core.json
    python bench/core.py --reps 30 --out /tmp/core.json

(1) ``firm_weights`` for M = 2, 4, 8, 16 on random Gram matrices (median microseconds).
(2) Per-objective gradients on a tiny GPT-2 (2 layers, width 128, vocab 2048) + LoRA r=8 on
    c_attn/c_proj, batch 32, sequence 24 (8 prompt + 16 completion tokens), CPU: one combined
    forward+backward (the reference) vs forward + M x ``autograd.grad``, one batched
    ``is_grads_batched`` call, and the factored one-backward-per-shared-term method. ``K`` is the
    number of shared per-token terms: K = 1 is a REINFORCE/GRPO loss with the KL in the reward
    (as in the issue's reference numbers), K = 2 adds the per-token KL term of GRPO's loss.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.table import Table
from transformers import GPT2Config, GPT2LMHeadModel

from firm_ray.core import firm_weights, kkt_residual
from firm_ray.core.gradients import ObjectiveGradients


def timed(fn: Callable[[], object], reps: int, warmup: int = 3) -> tuple[float, float]:
    """(median, min) wall seconds over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def bench_solver(reps: int) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for m in (2, 4, 8, 16):
        grads = torch.randn(256, m, generator=gen, dtype=torch.float64)
        grams = [grads.T @ grads, torch.ones(m, m, dtype=torch.float64)]  # generic, degenerate
        pref = torch.full((m,), 1.0 / m, dtype=torch.float64)
        for beta in (0.0, 1.0):
            gram = grams[0] * (1 + beta)
            med, best = timed(lambda gram=gram, beta=beta: firm_weights(gram, beta), reps * 50)
            lam = firm_weights(gram, beta)
            rows.append(
                {
                    "M": m,
                    "beta": beta,
                    "median_us": med * 1e6,
                    "min_us": best * 1e6,
                    "kkt_residual": kkt_residual(gram, beta, lam, pref),
                }
            )
    return rows


def tiny_policy(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=2048, n_positions=64)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(GPT2LMHeadModel(config), lora)
    model.eval()  # dropout off: every method differentiates the same function
    return model


def bench_gradients(reps: int, batch: int, prompt_len: int, new_tokens: int) -> list[dict]:
    model = tiny_policy()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2048, (batch, prompt_len + new_tokens), generator=gen)
    ref_logp = -torch.rand(batch, new_tokens, generator=gen) * 5

    def terms(num_terms: int) -> torch.Tensor:
        logits = model(input_ids=ids).logits[:, prompt_len - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, prompt_len:, None])
        logp = logp.squeeze(-1)  # [S, T]
        ratio = torch.exp(logp - logp.detach()) / new_tokens
        if num_terms == 1:
            return ratio[None]
        log_r = ref_logp - logp
        return torch.stack([ratio, (torch.exp(log_r) - log_r - 1) / new_tokens])

    rows = []
    for num_terms in (1, 2):

        def reference(num_terms: int = num_terms) -> None:
            model.zero_grad(set_to_none=True)
            t = terms(num_terms)
            (t.sum(dim=(1, 2)) * torch.tensor([-0.3, 0.05])[:num_terms]).sum().backward()

        ref_med, ref_min = timed(reference, reps)
        rows.append(_grad_row("1 combined backward [ref]", 1, num_terms, ref_med, ref_min, ref_med))
        for m in (2, 3, 4):
            weights = torch.randn(m, num_terms, batch, generator=gen)
            results = {}
            for method in ("autograd", "batched", "factored", "auto"):
                og = ObjectiveGradients(model, params, method=method)

                def step(
                    results: dict = results,
                    og: ObjectiveGradients = og,
                    method: str = method,
                    weights: torch.Tensor = weights,
                    num_terms: int = num_terms,
                ) -> None:
                    with og.capture():
                        t = terms(num_terms)
                    results[method] = og.compute(t, weights).detach()

                med, best = timed(step, reps)
                rows.append(
                    _grad_row(
                        f"{method}" if method != "auto" else f"auto -> {og.resolve(num_terms, m)}",
                        m,
                        num_terms,
                        med,
                        best,
                        ref_med,
                    )
                )
            scale = float(results["autograd"].abs().max())
            err = float((results["factored"] - results["autograd"]).abs().max()) / scale
            rows[-2]["max_rel_diff_vs_autograd"] = err
    return rows


def _grad_row(name: str, m: int, k: int, med: float, best: float, ref: float) -> dict:
    return {
        "op": name,
        "M": m,
        "K": k,
        "median_ms": med * 1e3,
        "min_ms": best * 1e3,
        "x_reference": med / ref,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "core.json"))
    args = parser.parse_args()
    console = Console(width=150)

    solver_rows = bench_solver(args.reps)
    table = Table(title="firm_weights (float64 Gram, p uniform)")
    for col in ("M", "beta", "median us", "min us", "KKT residual"):
        table.add_column(col, justify="right")
    for r in solver_rows:
        table.add_row(
            str(r["M"]),
            f"{r['beta']:g}",
            f"{r['median_us']:.1f}",
            f"{r['min_us']:.1f}",
            f"{r['kkt_residual']:.1e}",
        )
    console.print(table)

    grad_rows = bench_gradients(args.reps, args.batch, args.prompt_len, args.new_tokens)
    seq = args.prompt_len + args.new_tokens
    table = Table(
        title=f"forward + per-objective gradients, tiny GPT-2 + LoRA r=8, batch {args.batch} x "
        f"seq {seq}, {torch.get_num_threads()} threads"
    )
    for col in ("op", "M", "K", "median ms", "min ms", "x reference", "max rel diff"):
        table.add_column(col, justify="right" if col != "op" else "left")
    for r in grad_rows:
        diff = r.get("max_rel_diff_vs_autograd")
        table.add_row(
            r["op"],
            str(r["M"]),
            str(r["K"]),
            f"{r['median_ms']:.1f}",
            f"{r['min_ms']:.1f}",
            f"{r['x_reference']:.2f}",
            "" if diff is None else f"{diff:.1e}",
        )
    console.print(table)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"peak RSS {peak_mb:.0f} MB")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "bench": "core",
                "args": vars(args),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "solver": solver_rows,
                "gradients": grad_rows,
                "peak_rss_mb": peak_mb,
            },
            indent=2,
        )
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
