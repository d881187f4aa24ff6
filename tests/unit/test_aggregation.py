"""Federated averaging of adapter state dicts: correctness against direct torch arithmetic,
constant memory, validation, and the server step."""

from __future__ import annotations

import math
import random

import pytest
import torch

from firm_ray.core.aggregation import (
    StreamingAverage,
    apply_delta,
    flatten_state,
    server_update,
    state_delta,
    state_distance,
    state_norm,
    weighted_average,
)

SHAPES = {
    "layers.0.q_proj.lora_A.weight": (4, 16),
    "layers.0.q_proj.lora_B.weight": (16, 4),
    "layers.1.v_proj.lora_A.weight": (4, 16),
    "layers.1.v_proj.lora_B.weight": (16, 4),
    "scale": (),
}


def make_state(gen: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {
        k: torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for k, s in SHAPES.items()
    }


def direct_mean(states, weights) -> dict[str, torch.Tensor]:
    total = sum(weights)
    return {
        k: sum(w * s[k].double() for s, w in zip(states, weights, strict=True)) / total
        for k in states[0]
    }


def assert_states_close(a, b, atol=1e-6, rtol=1e-5):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("num_clients", [1, 2, 7, 300])
def test_streaming_average_matches_direct_weighted_mean(num_clients):
    gen = torch.Generator().manual_seed(num_clients)
    states = [make_state(gen) for _ in range(num_clients)]
    weights = [float(w) for w in torch.rand(num_clients, generator=gen) * 10 + 0.01]
    avg = StreamingAverage()
    for s, w in zip(states, weights, strict=True):
        avg.add(s, w)
    result = avg.result()
    assert avg.count == num_clients
    assert avg.total_weight == pytest.approx(sum(weights))
    assert all(result[k].dtype == torch.float32 for k in result)
    assert all(result[k].shape == SHAPES[k] for k in result)
    assert_states_close(result, direct_mean(states, weights))


def test_single_client_and_identical_clients_are_exact():
    gen = torch.Generator().manual_seed(0)
    state = make_state(gen)
    only = weighted_average([(state, 3.0)])
    same = weighted_average([(state, w) for w in (0.3, 1.7, 5.0, 2.2)])
    for k in state:
        assert torch.equal(only[k], state[k])
        assert torch.equal(same[k], state[k])


def test_order_of_adds_does_not_matter():
    gen = torch.Generator().manual_seed(1)
    pairs = [(make_state(gen), float(w)) for w in (1, 5, 0.5, 2, 9, 3)]
    forward = weighted_average(pairs)
    shuffled = pairs[:]
    random.Random(0).shuffle(shuffled)
    backward = weighted_average(reversed(pairs))
    assert_states_close(forward, weighted_average(shuffled))
    assert_states_close(forward, backward)


def test_holds_one_accumulator_per_key_regardless_of_client_count():
    gen = torch.Generator().manual_seed(2)
    avg = StreamingAverage()
    first = make_state(gen)
    avg.add(first, 1.0)
    accs = dict(avg._acc)
    ids = {k: id(v) for k, v in accs.items()}
    numel = sum(v.numel() for v in accs.values())
    for _ in range(50):
        avg.add(make_state(gen), 2.0)
    assert set(avg._acc) == set(SHAPES)
    # Same tensor objects updated in place: no growth with the number of clients.
    assert {k: id(v) for k, v in avg._acc.items()} == ids
    assert (
        sum(v.numel() for v in avg._acc.values()) == numel == sum(t.numel() for t in first.values())
    )
    # The accumulator is a copy, never an alias of the caller's tensors.
    assert all(avg._acc[k].data_ptr() != first[k].data_ptr() for k in first)


def test_does_not_mutate_inputs_and_result_is_independent():
    gen = torch.Generator().manual_seed(3)
    a, b = make_state(gen), make_state(gen)
    a_copy = {k: v.clone() for k, v in a.items()}
    avg = StreamingAverage()
    avg.add(a, 1.0)
    avg.add(b, 1.0)
    r1 = avg.result()
    for k in r1:
        r1[k].add_(100.0)
    r2 = avg.result()
    assert_states_close(r2, direct_mean([a, b], [1.0, 1.0]))
    for k in a:
        assert torch.equal(a[k], a_copy[k])


def test_low_precision_inputs_come_back_in_their_dtype():
    gen = torch.Generator().manual_seed(4)
    states = [make_state(gen, torch.bfloat16) for _ in range(10)]
    weights = [1.0 + i for i in range(10)]
    result = weighted_average(zip(states, weights, strict=True))
    assert all(v.dtype == torch.bfloat16 for v in result.values())
    # fp32 accumulation: only the final cast to bf16 rounds (relative 2**-8).
    assert_states_close(result, direct_mean(states, weights), atol=1e-2, rtol=2**-7)


def test_float64_inputs_use_float64_accumulators():
    gen = torch.Generator().manual_seed(5)
    states = [make_state(gen, torch.float64) for _ in range(20)]
    weights = [0.1 * (i + 1) for i in range(20)]
    avg = StreamingAverage()
    for s, w in zip(states, weights, strict=True):
        avg.add(s, w)
    assert all(v.dtype == torch.float64 for v in avg._acc.values())
    result = avg.result()
    assert all(v.dtype == torch.float64 for v in result.values())
    assert_states_close(result, direct_mean(states, weights), atol=1e-12, rtol=1e-12)


def test_weighted_average_consumes_an_iterator_lazily():
    gen = torch.Generator().manual_seed(6)
    states = [make_state(gen) for _ in range(5)]
    produced = []

    def downloads():
        for i, s in enumerate(states):
            produced.append(i)
            yield s, float(i + 1)

    it = downloads()
    result = weighted_average(it)
    assert produced == [0, 1, 2, 3, 4]
    assert next(it, None) is None
    assert_states_close(result, direct_mean(states, [1.0, 2.0, 3.0, 4.0, 5.0]))


def test_empty_average_raises():
    with pytest.raises(ValueError, match="before any state"):
        StreamingAverage().result()
    with pytest.raises(ValueError, match="before any state"):
        weighted_average(iter([]))
    with pytest.raises(ValueError, match="empty"):
        StreamingAverage().add({}, 1.0)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf"), "abc"])
def test_bad_weights_raise(weight):
    gen = torch.Generator().manual_seed(7)
    with pytest.raises(ValueError, match="weight"):
        StreamingAverage().add(make_state(gen), weight)


def test_mismatched_names_raise_naming_them():
    gen = torch.Generator().manual_seed(8)
    avg = StreamingAverage()
    avg.add(make_state(gen), 1.0)
    other = make_state(gen)
    other.pop("scale")
    other["extra"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"missing \['scale'\].*unexpected \['extra'\]"):
        avg.add(other, 1.0)


def test_mismatched_shape_raises_naming_key_and_shapes():
    gen = torch.Generator().manual_seed(9)
    avg = StreamingAverage()
    avg.add(make_state(gen), 1.0)
    other = make_state(gen)
    other["layers.0.q_proj.lora_A.weight"] = torch.zeros(8, 16)
    with pytest.raises(ValueError, match=r"lora_A.*\(8, 16\).*\(4, 16\)"):
        avg.add(other, 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tensors_raise_and_leave_average_untouched(bad):
    gen = torch.Generator().manual_seed(10)
    good = make_state(gen)
    avg = StreamingAverage()
    avg.add(good, 1.0)
    poisoned = make_state(gen)
    poisoned["layers.1.v_proj.lora_B.weight"][3, 2] = bad
    with pytest.raises(ValueError, match=r"lora_B.*NaN or Inf"):
        avg.add(poisoned, 1.0)
    assert avg.count == 1
    assert avg.total_weight == 1.0
    result = avg.result()
    for k in good:
        assert torch.equal(result[k], good[k])
    # Also rejected as the very first state.
    with pytest.raises(ValueError, match="NaN or Inf"):
        StreamingAverage().add(poisoned, 1.0)


def test_non_float_tensor_raises():
    with pytest.raises(ValueError, match="non-floating"):
        StreamingAverage().add({"a": torch.ones(3, dtype=torch.int64)}, 1.0)


def test_server_update_lr_one_returns_average_exactly():
    gen = torch.Generator().manual_seed(11)
    theta, avg = make_state(gen), make_state(gen)
    # Values where theta + (avg - theta) would not round-trip in float32.
    theta["scale"] = torch.tensor(1e8)
    avg["scale"] = torch.tensor(1.0 + 2**-20)
    out = server_update(theta, avg, server_lr=1.0)
    for k in avg:
        assert torch.equal(out[k], avg[k])
        assert out[k].data_ptr() != avg[k].data_ptr()
    assert list(out) == list(theta)


def test_server_update_half_step_is_midpoint():
    gen = torch.Generator().manual_seed(12)
    theta, avg = make_state(gen), make_state(gen)
    out = server_update(theta, avg, server_lr=0.5)
    expected = {k: (theta[k].double() + avg[k].double()) / 2 for k in theta}
    assert_states_close(out, expected)
    out2 = server_update(theta, avg, server_lr=2.0)
    expected2 = {k: 2 * avg[k].double() - theta[k].double() for k in theta}
    assert_states_close(out2, expected2, atol=1e-5)


def test_server_update_keeps_global_dtype():
    gen = torch.Generator().manual_seed(13)
    theta = make_state(gen, torch.bfloat16)
    avg = make_state(gen, torch.float32)
    out = server_update(theta, avg, server_lr=0.3)
    assert all(v.dtype == torch.bfloat16 for v in out.values())


@pytest.mark.parametrize("lr", [0.0, -0.5, float("nan"), float("inf")])
def test_server_update_rejects_bad_lr(lr):
    gen = torch.Generator().manual_seed(14)
    s = make_state(gen)
    with pytest.raises(ValueError, match="server_lr"):
        server_update(s, s, server_lr=lr)


def test_server_update_rejects_mismatched_states():
    gen = torch.Generator().manual_seed(15)
    theta, avg = make_state(gen), make_state(gen)
    avg["scale"] = torch.zeros(2)
    with pytest.raises(ValueError, match="'scale'"):
        server_update(theta, avg)


def test_delta_roundtrip_and_scaling():
    gen = torch.Generator().manual_seed(16)
    old, new = make_state(gen), make_state(gen)
    delta = state_delta(new, old)
    assert_states_close(delta, {k: new[k].double() - old[k].double() for k in new})
    assert_states_close(apply_delta(old, delta), new)
    half = apply_delta(old, delta, scale=0.5)
    assert_states_close(half, server_update(old, new, server_lr=0.5))


def test_delta_roundtrip_is_exact_for_bf16():
    gen = torch.Generator().manual_seed(17)
    old, new = make_state(gen, torch.bfloat16), make_state(gen, torch.bfloat16)
    delta = state_delta(new, old)
    assert all(v.dtype == torch.float32 for v in delta.values())
    back = apply_delta(old, delta)
    for k in new:
        assert back[k].dtype == torch.bfloat16
        assert torch.equal(back[k], new[k])


def test_delta_rejects_mismatch():
    gen = torch.Generator().manual_seed(18)
    a, b = make_state(gen), make_state(gen)
    b.pop("scale")
    with pytest.raises(ValueError, match="missing"):
        state_delta(a, b)
    with pytest.raises(ValueError, match="missing"):
        apply_delta(a, b)


def test_flatten_norm_and_distance():
    state = {"b": torch.tensor([[3.0, 0.0]]), "a": torch.tensor([4.0], dtype=torch.float64)}
    flat = flatten_state(state)
    assert flat.dtype == torch.float32
    assert flat.tolist() == [3.0, 0.0, 4.0]  # key order, not sorted order
    assert state_norm(state) == pytest.approx(5.0)
    other = {"b": torch.tensor([[0.0, 0.0]]), "a": torch.tensor([0.0], dtype=torch.float64)}
    assert state_distance(state, other) == pytest.approx(5.0)
    assert state_distance(state, state) == 0.0
    assert flatten_state({}).shape == (0,)
    assert state_norm({}) == 0.0


def test_norm_and_distance_match_flattened_computation():
    gen = torch.Generator().manual_seed(19)
    a, b = make_state(gen), make_state(gen)
    assert state_norm(a) == pytest.approx(float(flatten_state(a).double().norm()), rel=1e-9)
    expected = float((flatten_state(a).double() - flatten_state(b).double()).norm())
    # float32 inputs are differenced in float32 (a metric; 2x cheaper than float64 copies)
    assert state_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert state_distance(a, b) == pytest.approx(state_norm(state_delta(a, b)), rel=1e-6)


def test_norm_does_not_overflow_in_half_precision():
    state = {"w": torch.full((1000,), 60000.0, dtype=torch.float16)}
    assert state_norm(state) == pytest.approx(60000.0 * math.sqrt(1000))
