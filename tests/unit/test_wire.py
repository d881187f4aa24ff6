"""The wire format: adapters as safetensors bytes built in place (byte-identical to
safetensors.torch.save), decoded as copies or as read-only views, and the strategies' single
NaN/inf scan per update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load

from firm_ray.algorithms import build_strategy
from firm_ray.config import load_config
from firm_ray.core import aggregation
from firm_ray.models.adapter import (
    adapter_from_bytes,
    adapter_to_buffer,
    adapter_to_bytes,
    adapter_to_bytes_safetensors,
)
from firm_ray.runtime.wire import decode_update, encode_update, payload_bytes
from firm_ray.types import ClientUpdate

DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def states() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    lora = "base_model.model.layers.{}.self_attn.{}_proj.lora_{}.weight"
    return [
        {"lora": torch.randn(1000, generator=gen)},
        {
            lora.format(i, p, ab): torch.randn(4, 8, generator=gen)
            for i in (1, 0, 10)
            for p in "qv"
            for ab in "BA"
        },
        {f"t{i}": torch.ones(3, dtype=d) for i, d in enumerate(DTYPES)},
        {
            "b": torch.randn(3, generator=gen).bfloat16(),
            "a": torch.randn(2, 2, generator=gen),
            "scalar": torch.tensor(1.5),
            "empty": torch.zeros(0, 3, dtype=torch.float64),
            "strided": torch.randn(4, 3, generator=gen).t(),
        },
        # names safetensors' JSON writer escapes differently: the safetensors fallback
        {"x\u00e9": torch.randn(2, generator=gen), 'q"uote': torch.randn(1, generator=gen)},
        {"a\nb": torch.randn(2, generator=gen)},
        {},
    ]


@pytest.mark.parametrize("index", range(len(states())))
def test_buffer_is_byte_identical_to_safetensors_and_round_trips(index) -> None:
    state = states()[index]
    buffer = adapter_to_buffer(state)
    reference = adapter_to_bytes_safetensors(state)
    assert isinstance(buffer, np.ndarray) and buffer.dtype == np.uint8 and buffer.ndim == 1
    assert bytes(buffer) == reference and adapter_to_bytes(state) == reference
    assert len(buffer) == len(reference) == memoryview(buffer).nbytes  # payload sizes unchanged
    loaded = load(bytes(buffer))  # still plain safetensors
    assert loaded.keys() == state.keys()
    for payload in (buffer, reference, memoryview(reference), bytearray(reference)):
        for copy in (True, False):
            restored = adapter_from_bytes(payload, copy=copy)
            assert list(restored) == list(state)  # the writer's order, from the metadata
            for k, v in state.items():
                assert restored[k].dtype == v.dtype and torch.equal(restored[k], v)


def test_views_share_the_buffer_and_copies_do_not() -> None:
    buffer = adapter_to_buffer({"w": torch.arange(6, dtype=torch.float32)})
    view = adapter_from_bytes(buffer, copy=False)["w"]
    owned = adapter_from_bytes(buffer)["w"]
    buffer[-4:] = np.frombuffer(np.float32(-1).tobytes(), dtype=np.uint8)
    assert view[-1] == -1 and owned[-1] == 5


def test_read_only_payloads_are_never_written() -> None:
    """As the aggregator gets them from Ray's object store: read-only arrays, decoded as views,
    averaged (fedavg and fmgda) and measured for drift; the bytes must stay the same."""
    gen = torch.Generator().manual_seed(1)
    updates = []
    for c in range(3):
        state = {"a": torch.randn(5, 3, generator=gen), "b": torch.randn(7, generator=gen)}
        update = ClientUpdate(client_id=c, round=0, num_samples=c + 1, adapter=state, metrics={})
        header, payloads = encode_update(update)
        for p in payloads:
            p.flags.writeable = False
        updates.append((header, payloads, [bytes(p) for p in payloads]))
    config = load_config("tune_configs/quickstart.yaml", ["federation.min_clients=1"])
    strategy = build_strategy(config)
    global_state = {"a": torch.zeros(5, 3), "b": torch.zeros(7)}
    decoded = (decode_update((h, p), copy=False) for h, p, _ in updates)
    result = strategy.aggregate_round(0, global_state, decoded, [])
    for h, p, _ in updates:
        update = decode_update((h, p), copy=False)
        assert update.adapter is not None
        aggregation.state_distance(update.adapter, result.state)
    assert all(
        bytes(p) == before
        for _, payloads, kept in updates
        for p, before in zip(payloads, kept, strict=True)
    )
    assert result.accepted == [0, 1, 2]
    assert payload_bytes((updates[0][0], updates[0][1])) == len(updates[0][2][0])


def _fmgda_update(client: int, deltas: list[dict[str, torch.Tensor]]) -> ClientUpdate:
    return ClientUpdate(
        client_id=client, round=0, num_samples=2, objective_deltas=deltas, metrics={}
    )


def test_each_update_is_scanned_for_nan_once(monkeypatch) -> None:
    calls: list[int] = []
    real = aggregation.all_finite

    def counting(tensor: torch.Tensor) -> bool:
        calls.append(tensor.numel())
        return real(tensor)

    monkeypatch.setattr(aggregation, "all_finite", counting)
    gen = torch.Generator().manual_seed(2)
    config = load_config("tune_configs/quickstart.yaml", ["federation.min_clients=1"])
    state = {"a": torch.randn(4, generator=gen), "b": torch.randn(3, generator=gen)}
    updates = [
        ClientUpdate(client_id=c, round=0, num_samples=1, adapter=state, metrics={})
        for c in range(3)
    ]
    build_strategy(config).aggregate_round(0, state, iter(updates), [])
    assert len(calls) == 3 * 2  # one scan of each tensor of each update
    calls.clear()
    fmgda = build_strategy(
        load_config(
            "tune_configs/quickstart.yaml", ["federation.min_clients=1", "algorithm.name=fmgda"]
        )
    )
    fmgda.aggregate_round(0, state, iter([_fmgda_update(0, [state, state])]), [])
    assert len(calls) == 2 * 2


def test_fmgda_rejects_a_bad_second_delta_before_averaging_any() -> None:
    gen = torch.Generator().manual_seed(3)
    config = load_config(
        "tune_configs/quickstart.yaml", ["federation.min_clients=1", "algorithm.name=fmgda"]
    )
    global_state = {"a": torch.zeros(4)}
    good = [{"a": torch.randn(4, generator=gen)}, {"a": torch.randn(4, generator=gen)}]
    bad = [{"a": torch.randn(4, generator=gen)}, {"a": torch.tensor([1.0, float("nan"), 0, 0])}]
    first = build_strategy(config).aggregate_round(
        0, global_state, iter([_fmgda_update(0, good), _fmgda_update(1, bad)]), []
    )
    alone = build_strategy(config).aggregate_round(
        0, global_state, iter([_fmgda_update(0, good)]), []
    )
    assert first.accepted == [0]
    assert first.rejected == [{"client": 1, "reason": "non-finite delta tensor 'a'"}]
    assert torch.equal(first.state["a"], alone.state["a"])  # client 1 left no trace
    nan_first = [{"a": torch.tensor([float("inf"), 0, 0, 0])}, good[1]]
    out = build_strategy(config).aggregate_round(
        0, global_state, iter([_fmgda_update(0, good), _fmgda_update(1, nan_first)]), []
    )
    assert out.rejected == [{"client": 1, "reason": "non-finite tensor 'a'"}]
