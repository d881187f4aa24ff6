"""Aggregator: the body of the server (driver) actor.

Holds the global adapter, the client-persistent state and the algorithm's strategy (its server
side: client selection, aggregation, server state, all from firm_ray.algorithms); aggregates
a round by pulling client updates from the object store one at a time, in client-id order (two
passes: the average, then the drift against the new global adapter), so its memory is that of
one adapter (M for fmgda) however many clients report; writes atomic checkpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from safetensors.torch import load_file

from firm_ray.algorithms import build_algorithm
from firm_ray.config import config_from_dict
from firm_ray.core.aggregation import state_delta, state_distance
from firm_ray.core.metrics import UpdateConflict, disagreement
from firm_ray.federation import AggregateResult
from firm_ray.models.adapter import Payload, adapter_from_bytes, adapter_to_buffer
from firm_ray.runtime.checkpoint import (  # noqa: F401  (re-exported: loop, sweep, tests)
    CHECKPOINT_ADAPTER,
    CHECKPOINT_STATE,
    latest_checkpoint,
    round_checkpoints,
    write_checkpoint,
)
from firm_ray.runtime.secagg_server import SecureServerMixin, secure_round_spec
from firm_ray.runtime.wire import WireUpdate, decode_update, payload_bytes
from firm_ray.types import AdapterState, ClientUpdate

DRIFT_HOLD_BYTES = 1 << 30  # update payloads kept (as views) between the two passes


class Aggregator(SecureServerMixin):
    """Server state and aggregation; one instance per run (secure aggregation's server side:
    runtime/secagg_server.py)."""

    def __init__(self, config: dict[str, Any], run_dir: str) -> None:
        self.config = config_from_dict(config)
        self.algorithm = build_algorithm(self.config.algorithm, self.config.num_objectives)
        self.strategy = self.algorithm.strategy(self.config)
        self.run_dir = Path(run_dir)
        self.state: AdapterState | None = None
        self.client_states: dict[int, dict] = {}
        self._payload: Payload | None = None  # self.state serialized, built when first asked

    # ------------------------------------------------------------------------- global state
    def set_global(self, payload: Payload) -> int:
        self._set_state(adapter_from_bytes(payload))  # a copy: the state outlives the payload
        return memoryview(payload).nbytes

    def _set_state(self, state: AdapterState) -> None:
        self.state, self._payload = state, None

    def global_payload(self) -> Payload:
        """The global adapter's safetensors bytes as a uint8 array (zero-copy through Ray),
        serialized once per state: the round's result, its checkpoint and the final adapter
        share it."""
        assert self.state is not None, "no global adapter yet"
        if self._payload is None:
            self._payload = adapter_to_buffer(self.state)
        return self._payload

    def states_for(self, client_ids: list[int]) -> dict[int, dict]:
        return {c: self.client_states.get(c, {}) for c in client_ids}

    def instructions(self) -> dict[str, Any] | None:
        """What the round's clients are told beside theta^t (DP: the clip norm and the local
        noise std; secure aggregation: the round's public parameters), or None."""
        told: dict[str, Any] = dict(self.strategy.combiner.instructions())
        if self.config.privacy.secure_aggregation and told:
            told["secagg"] = secure_round_spec(self.config, told)
        return told or None

    # ------------------------------------------------------------------------- a round
    def configure_round(self, round_index: int) -> list[int]:
        """The clients that train in round ``round_index`` (the algorithm's selection), sorted;
        a selection that is empty, repeats a client or names one outside [0, num_clients) is
        a ValueError naming the algorithm."""
        chosen = [int(c) for c in self.strategy.configure_round(round_index)]
        n = self.config.federation.num_clients
        if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= c < n for c in chosen):
            raise ValueError(
                f"algorithm {self.config.algorithm.name!r}: configure_round({round_index}) "
                f"returned {chosen[:20]}; expected distinct client ids in [0, {n})"
            )
        return sorted(chosen)

    def aggregate(
        self,
        round_index: int,
        headers: list[ClientUpdate],
        payload_refs: list[list[Any]],
        failures: list[dict[str, Any]],
    ) -> tuple[dict[str, Any], Payload]:
        """Aggregate the clients' updates: ``headers`` (tensor-free, already fetched by the
        driver) with the references to their payloads (``payload_refs[i] = [ref]``, wrapped
        in a list so Ray hands over the reference, not the value), sorted by client id.

        Returns (the round's server metrics, the new global adapter serialized): called with
        ``num_returns=2``, the payload goes to the workers (evaluation, next round) straight
        from the object store. Raises RoundFailed (global state unchanged) when fewer than
        ``min_clients`` usable updates remain.
        """
        start = time.perf_counter()
        assert self.state is not None
        wires: dict[int, WireUpdate | list[Any]] = {}  # the update or its payloads' ref
        held = 0  # bytes of the payloads kept for the drift pass
        bytes_up: dict[str, int] = {}

        def stream() -> Iterator[ClientUpdate]:
            nonlocal held
            for header, ref in zip(headers, payload_refs, strict=True):
                wire: WireUpdate = (header, ray.get(ref[0]))
                size = payload_bytes(wire)
                bytes_up[str(header.client_id)] = size
                # the payloads are read-only views of the object store (the driver holds the
                # refs until the round ends): keeping them spares the drift pass a second
                # fetch and costs no memory on the driver's node; up to DRIFT_HOLD_BYTES, so
                # copies fetched from other nodes do not pile up in the local store
                keep = held + size <= DRIFT_HOLD_BYTES
                held += size if keep else 0
                wires[header.client_id] = wire if keep else ref
                yield decode_update(wire, copy=False)  # views: read only

        previous = self.state
        result = self.strategy.aggregate_round(round_index, previous, stream(), failures)
        return self._close_round(start, previous, result, headers, wires, bytes_up)

    def _close_round(
        self,
        start: float,
        previous: AdapterState,
        result: AggregateResult,
        headers: list[ClientUpdate],
        wires: dict[int, Any],
        bytes_up: dict[str, int],
    ) -> tuple[dict[str, Any], Payload]:
        """Install the round's result; its server metrics and the new adapter serialized."""
        self._set_state(result.state)
        by_id = {h.client_id: h for h in headers}
        for client in result.accepted:
            if by_id[client].client_state:
                self.client_states[client] = by_id[client].client_state
        if self.config.privacy.enabled:
            # statistics of individual updates are not covered by the DP guarantee: not released
            drift, conflict = None, {"update_cosine": None, "update_coherence": None}
        else:
            accepted = [(by_id[c], wires[c]) for c in result.accepted]
            drift, conflict = self._drift(accepted, previous)
        lambdas = {  # withheld by the clients under DP: no entries at all
            str(c): by_id[c].metrics.get("lambda")
            for c in result.accepted
            if not self.config.privacy.enabled
        }
        lambda_rows = [v for v in lambdas.values() if v is not None]
        payload = self.global_payload()
        metrics = {
            "accepted": result.accepted,
            "rejected": result.rejected,
            "client_lambdas": lambdas,
            "disagreement": disagreement(lambda_rows) if lambda_rows else None,
            "param_drift": drift,
            **conflict,
            "bytes_up": bytes_up,
            "bytes_down_next": int(payload.nbytes),
            "client_metrics": {str(h.client_id): h.metrics for h in headers},
            "server": result.metrics,
            "aggregation_seconds": time.perf_counter() - start,
            "rss_mb": process_rss_mb(),
        }
        return metrics, payload

    def _drift(
        self, updates: list[tuple[ClientUpdate, WireUpdate | list[Any]]], previous: AdapterState
    ) -> tuple[float, dict[str, float | None]]:
        """Mean ||theta_i - theta^{t+1}|| over the accepted clients' updates, in client-id
        order (theta_i as the algorithm's ``local_adapter`` says; fmgda: theta^t + the client's
        mean per-objective delta), and the update conflict of their deltas theta_i - theta^t
        (`UpdateConflict`: mean pairwise cosine and coherence, comparable across algorithms).

        A second pass (theta^{t+1} is known only after the first), over decoded views of the
        payloads the first pass already fetched (fetched again beyond DRIFT_HOLD_BYTES), no
        copy. (Running the distances on two threads while the workers idle was measured: < 6%
        faster at best, slower under load; the pass is bound by memory traffic.)"""
        assert self.state is not None
        distances = []
        conflict = UpdateConflict()
        for header, item in updates:
            wire = item if isinstance(item, tuple) else (header, ray.get(item[0]))
            update = decode_update(wire, copy=False)
            payloads = [update.adapter] if update.adapter is not None else update.objective_deltas
            local = self.algorithm.local_adapter(payloads or [{}], previous)
            distances.append(state_distance(local, self.state))
            conflict.add(state_delta(local, previous))
        drift = float(sum(distances) / len(distances)) if distances else 0.0
        return drift, conflict.result()

    # ------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, round_index: int, extra: dict[str, Any]) -> str:
        """checkpoints/round_NNNN/{adapter.safetensors,state.json,manifest.json}, written
        atomically with a manifest of sizes and sha256 (runtime/checkpoint.py);
        ``checkpoints/latest`` names the newest. Older rounds beyond
        ``experiment.keep_checkpoints`` are deleted once the new one is in place, never the
        only intact one. A disk error raises a one-line StorageError."""
        assert self.state is not None
        state = {
            "round": round_index,
            "adapter_order": list(self.state),
            "client_states": {str(k): v for k, v in self.client_states.items()},
            "strategy_state": self.strategy.state_dict(),
            "combiner_state": self.strategy.combiner.state_dict(),
            **extra,
        }
        # the serialized global adapter is the safetensors file (safetensors.torch.save's bytes)
        final = write_checkpoint(
            self.run_dir,
            round_index,
            memoryview(self.global_payload()),
            state,
            keep=self.config.experiment.keep_checkpoints,
        )
        return str(final)

    def load_checkpoint(self, directory: str) -> dict[str, Any]:
        """Restore the global adapter and client state; returns the checkpoint's state.json."""
        path = Path(directory)
        loaded = load_file(str(path / CHECKPOINT_ADAPTER))
        info = json.loads((path / CHECKPOINT_STATE).read_text())
        order = info.get("adapter_order") or sorted(loaded)
        self._set_state({k: loaded[k] for k in order})
        self.client_states = {int(k): v for k, v in info.get("client_states", {}).items()}
        self.strategy.load_state_dict(info.get("strategy_state") or {})
        self.strategy.combiner.load_state_dict(info.get("combiner_state") or {})
        return info


def process_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20
