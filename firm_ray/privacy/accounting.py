"""Client-level privacy accounting of DP-FedAvg with fixed-size client sampling (RDP).

Each round the server samples ``k`` of the ``n`` clients uniformly WITHOUT replacement
(``federation.clients_per_round``), sums their clipped deltas (norm <= C) and adds Gaussian noise
of std ``sigma * C`` to the sum (McMahan et al. 2018, "Learning differentially private recurrent
language models", ICLR; dividing by the public ``k`` afterwards is post-processing). With ``n``
public, the neighbouring relation that matches this sampling is REPLACE_ONE (one client's data
swapped for another's), and the Renyi-DP of the subsampled Gaussian under it is Wang, Balle,
Kasiviswanathan 2019 ("Subsampled Renyi differential privacy and analytical moments accountant",
AISTATS, Theorem 27), which dp_accounting implements for
``SampledWithoutReplacementDpEvent(n, k, GaussianDpEvent(.))`` under
``NeighboringRelation.REPLACE_ONE`` (``rdp_privacy_accountant._compute_rdp_sample_wor_gaussian``).

Noise multiplier passed to the library: ``sigma / 2``. dp_accounting defines the Gaussian's
noise multiplier as "the ratio of the standard deviation of the Gaussian noise to the
l2-sensitivity of the function to which it is added" (docstring of
``_compute_rdp_sample_wor_gaussian``; ``GaussianDpEvent`` says ``s / C`` for values of norm <= C,
the add/remove sensitivity of a sum). Its RDP for a Gaussian is ``alpha / (2 z^2)`` whatever the
relation, i.e. it does not double the sensitivity for REPLACE_ONE itself. Replacing one client's
update ``v`` by ``v'`` moves the sum by ``||v - v'|| <= 2C``, so the sensitivity is ``2C`` and
the multiplier is ``sigma * C / (2C) = sigma / 2``. With ``k == n`` the library returns the plain
Gaussian RDP ``T * alpha / (2 (sigma/2)^2)``.

RDP composes additively over rounds, so the per-round RDP vector (the library's default orders)
is computed once and ``epsilon(T)`` converts ``T * rdp`` with the library's public
``rdp.compute_epsilon`` (Canonne, Kamath, Steinke 2020, Prop. 12): the same numbers as an
``RdpAccountant`` composing ``SelfComposedDpEvent(event, T)``, for the price of one conversion.
absl warnings: the without-replacement path logs none (the ``_compute_log_a_frac`` convergence
warning belongs to Poisson sampling, and its RDP is a sum starting at log 1, so the
"negative Renyi divergence" warning cannot fire); any non-finite or negative order is refused.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

__all__ = ["ClientAccountant"]


def _check_int(name: str, value: int, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


class ClientAccountant:
    """Epsilon at ``delta`` after T rounds of client-level DP-FedAvg with k-of-n sampling."""

    def __init__(
        self, num_clients: int, clients_per_round: int, noise_multiplier: float, delta: float
    ) -> None:
        self.num_clients = _check_int("num_clients", num_clients, 1)
        self.clients_per_round = _check_int(
            "clients_per_round", clients_per_round, 1, self.num_clients
        )
        noise_multiplier = float(noise_multiplier)
        if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
            raise ValueError(
                f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}"
            )
        self.noise_multiplier = noise_multiplier
        delta = float(delta)
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        self.delta = delta
        self.orders = np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
        self._round_rdp: np.ndarray | None = None
        self._epsilons: dict[int, float] = {}

    def event(self) -> dp_accounting.DpEvent:
        """One round as a dp_accounting event (to be composed under REPLACE_ONE)."""
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.num_clients,
            self.clients_per_round,
            dp_accounting.GaussianDpEvent(self.noise_multiplier / 2.0),
        )

    def round_rdp(self) -> np.ndarray:
        """RDP of one round at each of ``self.orders`` (computed once: about a second)."""
        if self._round_rdp is None and self.noise_multiplier == 0:
            self._round_rdp = np.full_like(self.orders, np.inf)
        if self._round_rdp is None:
            accountant = dp_accounting.rdp.RdpAccountant(
                orders=self.orders,
                neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
            )
            accountant.compose(self.event())
            rdp = accountant.rdp
            if np.isnan(rdp).any() or (rdp < 0).any():
                raise ValueError(f"RDP of one round is invalid ({self.describe()}): {rdp}")
            self._round_rdp = rdp
        return self._round_rdp.copy()

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds; inf without noise, 0 after 0 rounds."""
        rounds = _check_int("rounds", rounds, 0)
        if rounds == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        if rounds not in self._epsilons:
            rdp = rounds * self.round_rdp()
            epsilon, _ = rdp_privacy_accountant.compute_epsilon(self.orders, rdp, self.delta)
            self._epsilons[rounds] = float(epsilon)
        return self._epsilons[rounds]

    def max_rounds(self, target_epsilon: float, limit: int) -> int:
        """Largest ``T <= limit`` with ``epsilon(T) <= target_epsilon`` (binary search).

        epsilon(T) is non-decreasing in T: each order's bound grows with the composed RDP.
        """
        target_epsilon = float(target_epsilon)
        if math.isnan(target_epsilon) or target_epsilon < 0:
            raise ValueError(f"target_epsilon must be >= 0, got {target_epsilon!r}")
        limit = _check_int("limit", limit, 0)
        if self.epsilon(limit) <= target_epsilon:
            return limit
        low, high = 0, limit  # epsilon(low) <= target < epsilon(high)
        while high - low > 1:
            middle = (low + high) // 2
            if self.epsilon(middle) <= target_epsilon:
                low = middle
            else:
                high = middle
        return low

    def describe(self) -> str:
        """One line for logs and docs: mechanism, sampling, relation, sigma, delta."""
        n, k, z = self.num_clients, self.clients_per_round, self.noise_multiplier
        return (
            f"client-level Gaussian (DP-FedAvg), {k} of {n} clients per round sampled without "
            f"replacement (q={k / n:.4g}), replace-one neighbours (sensitivity 2C), "
            f"noise_multiplier={z:g} (library z={z / 2:g}), "
            f"delta={self.delta:g}, RDP accountant (dp_accounting)"
        )
