"""Per-round metrics: lambda disagreement, client parameter drift, reward smoothness."""

from __future__ import annotations

import math

import pytest
import torch

from firm_ray.core.metrics import disagreement, param_drift, smoothness


def test_disagreement_of_identical_lambdas_is_zero():
    assert disagreement([[0.2, 0.3, 0.5]] * 4) == 0.0
    assert disagreement(torch.tensor([[0.5, 0.5]])) == 0.0


def test_disagreement_of_single_client_is_zero():
    assert disagreement([[1.0, 0.0, 0.0]]) == 0.0


@pytest.mark.parametrize("lambdas", [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
def test_disagreement_of_opposite_vertices(lambdas):
    assert disagreement(lambdas) == pytest.approx(math.sqrt(2) / 2)


def test_disagreement_three_clients_by_hand():
    lambdas = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    # mean = (0.5, 0.5); distances: sqrt(0.5), sqrt(0.5), 0 -> mean sqrt(0.5) * 2 / 3
    assert disagreement(lambdas) == pytest.approx(2 * math.sqrt(0.5) / 3)
    lambdas2 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    # mean = 1/3 each; each distance sqrt((2/3)^2 + 2 (1/3)^2) = sqrt(6)/3
    assert disagreement(torch.tensor(lambdas2)) == pytest.approx(math.sqrt(6) / 3)


def test_disagreement_is_permutation_invariant_and_float32_ok():
    gen = torch.Generator().manual_seed(0)
    lam = torch.softmax(torch.randn(10, 3, generator=gen), dim=1)
    perm = torch.randperm(10, generator=gen)
    assert disagreement(lam) == pytest.approx(disagreement(lam[perm]))
    assert disagreement(lam.float()) == pytest.approx(disagreement(lam.double()), rel=1e-6)


@pytest.mark.parametrize(
    "bad", [[], [[]], [0.5, 0.5], [[[0.5, 0.5]]], [[0.5, float("nan")]], [[1.0], [1.0, 2.0]]]
)
def test_disagreement_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        disagreement(bad)


def test_param_drift_by_hand():
    new_global = {"a": torch.zeros(2), "b": torch.zeros(1, 1)}
    clients = [
        {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])},  # distance 5
        {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([[0.0]])},  # distance 1
        {"a": torch.zeros(2), "b": torch.zeros(1, 1)},  # distance 0
    ]
    assert param_drift(clients, new_global) == pytest.approx(2.0)


def test_param_drift_iterates_once_over_a_generator():
    new_global = {"w": torch.ones(4)}
    seen = []

    def clients():
        for i in range(3):
            seen.append(i)
            yield {"w": torch.ones(4) + i}  # distance = i * 2

    assert param_drift(clients(), new_global) == pytest.approx((0 + 2 + 4) / 3)
    assert seen == [0, 1, 2]


def test_param_drift_rejects_empty_and_mismatched():
    with pytest.raises(ValueError, match="at least one"):
        param_drift([], {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="'w'"):
        param_drift([{"w": torch.ones(2)}], {"w": torch.ones(3)})


def test_smoothness_of_linear_ramp_is_zero():
    hist = [[0.1 * r, 1.0 - 0.2 * r] for r in range(10)]
    assert smoothness(hist) == pytest.approx([0.0, 0.0], abs=1e-12)


def test_smoothness_of_alternating_series():
    # changes of 0,1,0,1: +1,-1,+1 -> mean 1/3, population std sqrt(8/9)
    hist = torch.tensor([[0.0, 5.0], [1.0, 5.0], [0.0, 5.0], [1.0, 5.0]])
    result = smoothness(hist)
    assert result == pytest.approx([math.sqrt(8) / 3, 0.0])
    # long alternation: changes +-a with ~zero mean -> std close to a
    long = [[2.0 * (r % 2)] for r in range(1001)]
    assert smoothness(long)[0] == pytest.approx(2.0, rel=1e-5)


def test_smoothness_matches_numpy_population_std():
    import numpy as np

    gen = np.random.default_rng(0)
    hist = gen.normal(size=(20, 3))
    expected = np.diff(hist, axis=0).std(axis=0, ddof=0)
    assert smoothness(hist.tolist()) == pytest.approx(expected.tolist())


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_smoothness_needs_two_changes(rounds):
    hist = torch.arange(rounds * 2, dtype=torch.float32).reshape(rounds, 2) ** 2
    assert smoothness(hist) == [0.0, 0.0]


@pytest.mark.parametrize("bad", [[1.0, 2.0, 3.0], [[1.0], [float("inf")], [2.0]]])
def test_smoothness_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        smoothness(bad)
