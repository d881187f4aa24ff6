"""fmgda: federated multi-gradient descent (Yang et al. 2023).

Each client runs one K-step trajectory per objective from theta^t (preference one-hot e_m,
so lambda = e_m and the step needs one combined gradient) and uploads the M deltas
theta_i^m - theta^t; the server averages them per objective (sample-weighted), solves
min-norm MGDA (firm_weights, beta = 0) on the M averaged deltas and moves theta by
server_lr * sum_m lambda_m delta_m. Its paper's local update is plain SGD, so
``trainer.optimizer: null`` resolves to 'sgd'. Uploads M adapters' worth of bytes per client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from firm_ray.algorithms.base import Algorithm, deltas_of, mean_delta_adapter, register
from firm_ray.core import firm_weights
from firm_ray.core.aggregation import apply_delta
from firm_ray.federation import AggregateResult, Strategy
from firm_ray.federation.combine import Average
from firm_ray.types import AdapterState, ClientUpdate


class FmgdaStrategy(Strategy):
    """Server-side min-norm MGDA over per-objective averaged deltas."""

    def aggregate_round(
        self,
        round_index: int,
        global_state: AdapterState,
        updates: Iterable[ClientUpdate],
        failures: list[dict[str, Any]],
    ) -> AggregateResult:
        combine = self.combiner.round(round_index)  # one average per objective's deltas
        averages: list[Average] = []
        accepted: list[int] = []
        rejected: list[dict[str, Any]] = []
        for update, payloads in self._screen(updates, lambda u: u.objective_deltas, rejected):
            deltas = combine.admit(update, payloads, None)  # DP: clipped jointly over the M
            if not averages:
                averages = [combine.average(m, None) for m in range(len(deltas))]
            for average, delta in zip(averages, deltas, strict=True):
                average.add(delta, float(update.num_samples), update.client_id)
            accepted.append(update.client_id)
        self._enough(accepted, rejected, failures)
        mean_deltas = [a.result() for a in averages]
        flat = torch.stack(
            [torch.cat([v.reshape(-1).double() for v in d.values()]) for d in mean_deltas]
        )
        lam = firm_weights(flat @ flat.T, 0.0)  # plain min-norm MGDA on the averaged deltas
        step = {
            k: sum(float(lam[m]) * mean_deltas[m][k].double() for m in range(len(mean_deltas)))
            for k in global_state
        }
        state = apply_delta(global_state, step, scale=self.server_lr)
        return AggregateResult(
            state=state,
            accepted=accepted,
            rejected=rejected,
            metrics={"server_lambda": lam.tolist(), "aggregation": combine.finish(len(accepted))},
        )


@register("fmgda", label="FMGDA")
class Fmgda(Algorithm):
    """M one-hot trajectories per client; server-side MGDA on the averaged deltas."""

    min_objectives = 2
    default_optimizer = "sgd"
    per_objective_gradients = False
    payload = "objective_deltas"

    def trajectories(self, preference: torch.Tensor) -> list[torch.Tensor]:
        eye = torch.eye(self.num_objectives, dtype=torch.float64, device=preference.device)
        return list(eye)

    def upload(self, adapters: Sequence[AdapterState], global_adapter: AdapterState) -> list:
        return deltas_of(adapters, global_adapter)

    def strategy(self, config: Any) -> Strategy:
        return FmgdaStrategy(config, trajectories=self.num_objectives)

    def local_adapter(
        self, payloads: Sequence[AdapterState], previous: AdapterState
    ) -> AdapterState:
        return mean_delta_adapter(payloads, previous)
