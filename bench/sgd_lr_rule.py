"""The measurement behind SGD's default learning rate (firm_ray.trainer.backends).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python bench/sgd_lr_rule.py [--clients 8] [--set K=V]

Rule (stated before measuring, not tuned toward any result): SGD's first step of a local
trajectory has the same L2 norm as AdamW's first step at lr 5e-4, both after clipping the
direction to ``trainer.max_grad_norm``; the rate is rounded to one significant digit. So
lr_sgd = ||AdamW step|| / ||clipped gradient||.

Measured on the built-in world model with the default config (LoRA r 8, 8 prompts x 4
completions, 16 new tokens, max_grad_norm 1), the first step of round 0 (the seeded adapter,
B = 0) for each of ``--clients`` clients, for the firm direction and for fmgda's per-objective
directions (the algorithm whose default optimizer is SGD), with the torch backend's AdamW. Also
shown: the first step from a trained adapter (after one firm round of 2 local steps), where A's
gradients are no longer zero. Prints one line per step and the medians; writes nothing.
The default is the median of lr_sgd over every round-0 first step, firm and fmgda pooled
(the line "THE RULE").
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from firm_ray.config import load_config
from firm_ray.data.sources import load_prompts
from firm_ray.models.adapter import get_adapter_state
from firm_ray.models.policy import load_policy
from firm_ray.rewards import build_rewards
from firm_ray.runtime.worker import client_datasets
from firm_ray.trainer import LocalTrainer
from firm_ray.trainer.backends import TorchBackend


class Recording(TorchBackend):
    """AdamW at 5e-4 (torch backend) recording each step's clipped gradient and update norms."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[dict[str, float]] = []

    def apply(self, direction: torch.Tensor, combined_loss: Any) -> float:
        before = torch.cat([p.detach().reshape(-1).clone() for p in self.params])
        from firm_ray.core.gradients import assign_flat_grad

        assign_flat_grad(self.params, direction)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        grad = torch.cat([p.grad.reshape(-1) for p in self.params])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        after = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.rows.append(
            {
                "raw": float(norm),
                "clipped": float(grad.norm()),
                "adamw": float((after - before).norm()),
                "nonzero": int((grad != 0).sum()),
                "params": grad.numel(),
            }
        )
        return float(norm)


def first_steps(
    algorithm: str, clients: int, start: dict | None = None, extra: tuple[str, ...] = ()
) -> list[dict]:
    cfg = load_config(None, [f"algorithm.name={algorithm}", "federation.local_steps=1", *extra])
    assert cfg.trainer.learning_rate is None and cfg.trainer.max_grad_norm == 1.0
    policy = load_policy(cfg.model, cfg.lora, seed=cfg.experiment.seed)
    theta0 = get_adapter_state(policy.model)
    client_data, _, _ = client_datasets(cfg)  # the partition every worker of a run derives
    trainer = LocalTrainer(
        policy,
        build_rewards(cfg.rewards),
        cfg.trainer.model_copy(update={"optimizer": "adamw"}),
        cfg.algorithm,
        1,
        seed=cfg.experiment.seed,
    )
    trainer.backend = Recording(policy.model, trainer.params, trainer.backend.cfg)
    rows = []
    for client in range(clients):
        before = len(trainer.backend.rows)
        trainer.run_round(start or theta0, client_data[client], client, 0)
        # fmgda: one trajectory per objective, each with its own first step
        rows.extend(trainer.backend.rows[before:])
    return rows


def trained_adapter(extra: tuple[str, ...] = ()) -> dict:
    cfg = load_config(None, ["federation.local_steps=2", *extra])
    policy = load_policy(cfg.model, cfg.lora, seed=cfg.experiment.seed)
    splits = load_prompts(cfg.data, cfg.experiment.seed)
    trainer = LocalTrainer(
        policy, build_rewards(cfg.rewards), cfg.trainer, cfg.algorithm, 2, seed=0
    )
    return trainer.run_round(get_adapter_state(policy.model), splits.train[:64], 0, 0).adapter


def report(name: str, rows: list[dict]) -> None:
    for row in rows:
        print(
            f"  {name}: |g| {row['raw']:.4f} clipped {row['clipped']:.4f} "
            f"|AdamW step| {row['adamw']:.5f} nonzero {row['nonzero']}/{row['params']} "
            f"-> lr_sgd {row['adamw'] / row['clipped']:.4f}"
        )
    ratio = statistics.median(r["adamw"] / r["clipped"] for r in rows)
    adamw = statistics.median(r["adamw"] for r in rows)
    clipped = statistics.median(r["clipped"] for r in rows)
    print(
        f"{name}: median |AdamW step| {adamw:.5f}, median clipped |g| {clipped:.4f}, "
        f"median lr_sgd {ratio:.4f} -> {float(f'{ratio:.1g}'):g} (n = {len(rows)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to every measurement, e.g. trainer.advantage=group_mean "
        "(the same rule under another setting; the shipped default is measured without any)",
    )
    args = parser.parse_args()
    extra = tuple(args.overrides)
    torch.set_num_threads(1)
    firm = first_steps("firm", args.clients, extra=extra)
    fmgda = first_steps("fmgda", args.clients, extra=extra)
    report("firm, round 0", firm)
    report("fmgda, round 0", fmgda)
    report("THE RULE: firm + fmgda, round 0", firm + fmgda)
    trained = trained_adapter(extra)
    report("firm, trained adapter", first_steps("firm", args.clients, trained, extra))


if __name__ == "__main__":
    main()
