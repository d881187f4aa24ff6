"""ClientAccountant against dp_accounting's own RdpAccountant and the Gaussian RDP definition.

One round = k-of-n sampling without replacement + Gaussian noise sigma*C on a sum of C-clipped
updates; under replace-one the sum's sensitivity is 2C, so the library event is
SampledWithoutReplacementDpEvent(n, k, GaussianDpEvent(sigma / 2)) (Wang et al. 2019, Thm 27).
Each WOR RDP vector costs about a second, so settings are few and shared.
"""

from __future__ import annotations

import logging
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant, rdp_privacy_accountant

from firm_ray.privacy import ClientAccountant

REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE
ORDERS = rdp_privacy_accountant.DEFAULT_RDP_ORDERS


def library_epsilon(n: int, k: int, z: float, rounds: int, delta: float) -> float:
    """The library's accountant on the same event, composed ``rounds`` times."""
    accountant = RdpAccountant(neighboring_relation=REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        n, k, dp_accounting.GaussianDpEvent(z / 2)
    )
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return accountant.get_epsilon(delta)


def gaussian_epsilon_by_hand(z: float, rounds: int, delta: float) -> float:
    """Definition: Gaussian RDP alpha * S^2 / (2 s^2) with S = 2C, s = zC, composed additively,
    converted with Canonne, Kamath, Steinke 2020 Prop. 12 (plus the KL bound giving 0)."""
    best = math.inf
    for alpha in ORDERS:
        rdp = rounds * alpha * 4.0 / (2.0 * z * z)
        if delta**2 + math.expm1(-rdp) > 0:
            candidate = 0.0
        elif alpha > 1.01:
            candidate = rdp + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)
        else:
            candidate = math.inf
        best = min(best, candidate)
    return max(0.0, best)


@pytest.fixture(scope="module")
def small() -> ClientAccountant:
    return ClientAccountant(10, 3, 1.0, 1e-5)


@pytest.fixture(scope="module")
def large() -> ClientAccountant:
    return ClientAccountant(100, 10, 2.0, 1e-3)


def test_epsilon_equals_the_library_accountant(
    small: ClientAccountant, large: ClientAccountant
) -> None:
    for accountant, rounds in ((small, 40), (large, 7), (large, 300)):
        n, k = accountant.num_clients, accountant.clients_per_round
        expected = library_epsilon(n, k, accountant.noise_multiplier, rounds, accountant.delta)
        assert accountant.epsilon(rounds) == pytest.approx(expected, rel=1e-12)


def test_all_clients_every_round_is_plain_gaussian_composition() -> None:
    for z, rounds, delta in ((1.0, 1, 1e-5), (3.0, 10, 1e-5), (0.7, 250, 1e-3)):
        accountant = ClientAccountant(6, 6, z, delta)
        by_hand = gaussian_epsilon_by_hand(z, rounds, delta)
        assert accountant.epsilon(rounds) == pytest.approx(by_hand, rel=1e-12)
        composed = RdpAccountant(neighboring_relation=REPLACE_ONE)
        composed.compose(dp_accounting.GaussianDpEvent(z / 2), rounds)
        assert accountant.epsilon(rounds) == pytest.approx(composed.get_epsilon(delta), rel=1e-12)
        # RDP is an upper bound of the exact (analytic) Gaussian epsilon at sensitivity 2C:
        # T rounds of std zC on sensitivity 2C = one Gaussian with multiplier z / (2 sqrt(T)).
        exact = dp_accounting.get_epsilon_gaussian(z / (2 * math.sqrt(rounds)), delta)
        assert exact <= accountant.epsilon(rounds) <= 1.25 * exact


def test_sampling_amplifies_and_composition_grows(small: ClientAccountant) -> None:
    full = ClientAccountant(10, 10, 1.0, 1e-5)
    values = [small.epsilon(t) for t in (1, 2, 5, 20, 100)]
    assert values == sorted(values) and values[0] > 0
    for rounds in (1, 5, 100):
        assert small.epsilon(rounds) < full.epsilon(rounds)


def test_wor_replace_one_is_never_below_poisson_add_remove(
    small: ClientAccountant, large: ClientAccountant
) -> None:
    """Checked, not assumed: on these settings the WOR replace-one bound (z/2) is at least the
    Poisson add/remove bound at the same q and z that papers often quote (2-20x here)."""
    for accountant in (small, large):
        q = accountant.clients_per_round / accountant.num_clients
        per_round = dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(accountant.noise_multiplier)
        )
        for rounds in (1, 10, 100):
            poisson = RdpAccountant()  # ADD_OR_REMOVE_ONE
            poisson.compose(per_round, rounds)
            assert accountant.epsilon(rounds) >= poisson.get_epsilon(accountant.delta)


def test_max_rounds_is_the_boundary(small: ClientAccountant) -> None:
    for target in (15.0, 50.0, 300.0):
        rounds = small.max_rounds(target, 10_000)
        assert 0 < rounds < 10_000
        assert small.epsilon(rounds) <= target < small.epsilon(rounds + 1)
    assert small.max_rounds(1e9, 50) == 50
    assert small.max_rounds(small.epsilon(1) / 2, 50) == 0
    assert small.max_rounds(0.0, 50) == 0
    assert small.max_rounds(5.0, 0) == 0


def test_no_noise_is_infinite_and_zero_rounds_is_free() -> None:
    accountant = ClientAccountant(10, 3, 0.0, 1e-5)
    assert accountant.epsilon(0) == 0.0
    assert accountant.epsilon(1) == math.inf
    assert accountant.max_rounds(1e6, 100) == 0
    assert np.isinf(accountant.round_rdp()).all()


def test_round_rdp_logs_no_absl_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ClientAccountant(37, 5, 0.9, 1e-5).round_rdp()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, 1.0, 1e-5), "num_clients"),
        ((10, 11, 1.0, 1e-5), "clients_per_round must be <= 10"),
        ((10, 0, 1.0, 1e-5), "clients_per_round"),
        ((10, 3, -1.0, 1e-5), "noise_multiplier"),
        ((10, 3, float("nan"), 1e-5), "noise_multiplier"),
        ((10, 3, 1.0, 0.0), "delta"),
        ((10, 3, 1.0, 1.0), "delta"),
    ],
)
def test_bad_settings_are_one_line_errors(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        ClientAccountant(*args)
    assert "\n" not in str(caught.value)


def test_bad_queries_are_errors(small: ClientAccountant) -> None:
    with pytest.raises(ValueError, match="rounds"):
        small.epsilon(-1)
    with pytest.raises(ValueError, match="target_epsilon"):
        small.max_rounds(-0.5, 10)


def test_describe_is_one_line_with_the_settings(small: ClientAccountant) -> None:
    line = small.describe()
    assert "\n" not in line
    for piece in ("3 of 10", "without replacement", "replace-one", "noise_multiplier=1", "1e-05"):
        assert piece in line
