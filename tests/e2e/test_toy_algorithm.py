"""A toy algorithm defined in this file runs end to end through the real Ray runtime.

It touches no other module: ``algorithm.name: test_toy_algorithm:ToyAlgorithm`` is imported on
demand by the driver, the aggregator actor and every worker (this directory is on their
PYTHONPATH). Client: fixed uniform weights whatever the preference (one combined gradient).
Server: a rotation instead of the seeded sample (round r trains clients r and r+1 mod N) and a
decaying server step with state kept across rounds (theta += (avg - theta) / (1 + rounds seen)).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from tiny_world import TINY, firm_ray_cli

from firm_ray.algorithms import Algorithm
from firm_ray.core.aggregation import server_update
from firm_ray.federation import AggregateResult, FedAvgStrategy

pytestmark = pytest.mark.e2e


class ToyStrategy(FedAvgStrategy):
    """Rotating client selection; FedAvg with a server step 1 / (1 + rounds aggregated)."""

    def __init__(self, config: Any, trajectories: int = 1) -> None:
        super().__init__(config, trajectories)
        self.rounds_seen = 0

    def configure_round(self, round_index: int) -> list[int]:
        n = self.config.federation.num_clients
        return sorted({round_index % n, (round_index + 1) % n})

    def aggregate_round(self, round_index, global_state, updates, failures) -> AggregateResult:
        average = super().aggregate_round(round_index, global_state, updates, failures)
        step = 1.0 / (1 + self.rounds_seen)
        self.rounds_seen += 1
        average.state = server_update(global_state, average.state, step)
        average.metrics = {"toy_rounds_seen": self.rounds_seen, "toy_step": step}
        return average

    def state_dict(self) -> dict[str, Any]:
        return {"rounds_seen": self.rounds_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds_seen = int(state.get("rounds_seen", 0))


class ToyAlgorithm(Algorithm):
    """Uniform fixed weights on the client; the toy strategy on the server."""

    per_objective_gradients = False

    def trajectories(self, preference: torch.Tensor) -> list[torch.Tensor]:
        return [torch.full_like(preference, 1.0 / len(preference))]

    def strategy(self, config: Any) -> ToyStrategy:
        return ToyStrategy(config)


def test_toy_algorithm_runs_end_to_end(tmp_path) -> None:
    sets = [
        f"experiment.output_dir={tmp_path}",
        "experiment.name=toy",
        *TINY,
        "federation.rounds=3",
        "algorithm.name=test_toy_algorithm:ToyAlgorithm",
        "algorithm.preference=[0.9,0.1]",
    ]
    argv = ["run", "tune_configs/quickstart.yaml"]
    for item in sets:
        argv += ["--set", item]
    out = firm_ray_cli(*argv)
    assert out.returncode == 0, out.stdout[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "toy" / "metrics.jsonl").open()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    # the custom aggregation ran, with its server state carried across rounds
    assert [r["server"]["toy_rounds_seen"] for r in rows] == [1, 2, 3]
    assert [r["server"]["toy_step"] for r in rows] == [1.0, 0.5, 1.0 / 3]
    # the client side: uniform lambda whatever the preference
    for row in rows:
        for lam in row["client_lambdas"].values():
            assert lam == pytest.approx([0.5, 0.5])
    # the custom selection: the round's clients come from the strategy's configure_round
    assert [r["clients"] for r in rows] == [[0, 1], [1, 2], [2, 3]]
