"""The ``privacy:`` and ``robustness:`` sections: client-level DP, robust aggregation, attacks.

Why a module of its own: these settings cut across the client (clipping, local noise, what is
withheld, the attack a malicious client runs) and the server (the aggregation rule, central
noise, the privacy accountant), and their cross-checks against the federation and the algorithm
are many. docs/PRIVACY.md is the user-facing description; the math is in firm_ray/privacy/
(DP-FedAvg, adaptive clipping, accounting), firm_ray/core/robust.py (aggregation rules) and
firm_ray/federation/attacks.py (attacks).
"""

from typing import Annotated, Literal, get_args

from pydantic import Field, StrictBool, StrictInt, model_validator

from firm_ray.config.errors import Problem, raise_problems
from firm_ray.config.fields import (
    Float,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Section,
    interval,
)

RobustRule = Literal[
    "mean", "trimmed_mean", "coordinate_median", "krum", "multi_krum", "norm_bound"
]
ROBUST_RULES: tuple[str, ...] = get_args(RobustRule)
AttackKind = Literal["sign_flip", "scale", "gaussian", "nan", "opposite_preference", "lambda_lie"]
ATTACK_KINDS: tuple[str, ...] = get_args(AttackKind)


class AttackConfig(Section):
    """Byzantine clients injected for experiments (firm_ray/federation/attacks.py). A fixed,
    seeded set of clients attacks in every round it is sampled."""

    kind: AttackKind | None = None
    """None: no attack. sign_flip: the update delta is negated (times ``scale``); scale: the
    delta times ``scale``; gaussian: the delta replaced by N(0, scale^2) noise; nan: NaN
    everywhere; opposite_preference: the client trains for the mirrored preference (p
    reversed); lambda_lie: an honest update, a false lambda reported."""
    fraction: Annotated[Float, interval("[0, 1)")] = 0.0
    """Fraction of all clients that are malicious: floor(fraction * num_clients) of them."""
    scale: PosFloat = 1.0
    """sign_flip: the factor of the negated delta; scale: the factor; gaussian: the noise std."""
    seed: NonNegInt | None = None
    """Seed of the choice of malicious clients and of the gaussian attack's noise (None:
    experiment.seed)."""


class RobustnessConfig(Section):
    """How the server combines the client updates (firm_ray/core/robust.py), and attacks."""

    aggregator: RobustRule = "mean"
    """mean: FedAvg's sample-weighted mean (streamed: memory of one adapter). The robust rules
    need every accepted update at once (k adapters in memory) and ignore sample counts, except
    norm_bound: trimmed_mean (coordinate-wise, Yin et al. 2018), coordinate_median (Yin et al.
    2018), krum / multi_krum (Blanchard et al. 2017), norm_bound (each delta scaled to norm <=
    ``norm_bound``, then the weighted mean; Sun et al. 2019). They act on the deltas
    theta_i - theta^t (fmgda: on each objective's deltas)."""
    trim_fraction: Annotated[Float, interval("[0, 0.5)")] = 0.1
    """trimmed_mean: the fraction of values dropped at each end of every coordinate."""
    byzantine: NonNegInt = 1
    """krum / multi_krum: f, the number of malicious updates tolerated (needs >= 2f + 3
    updates in a round)."""
    multi_krum_m: PosInt | None = None
    """multi_krum: how many of the best-scored updates are averaged (None: k - f)."""
    norm_bound: PosFloat | None = None
    """norm_bound: the L2 bound of each client delta (required by that rule)."""
    attack: AttackConfig = AttackConfig()
    """Attack injection for experiments (off by default)."""

    @model_validator(mode="after")
    def _check(self) -> "RobustnessConfig":
        problems = []
        if self.aggregator == "norm_bound" and self.norm_bound is None:
            reason = "required by robustness.aggregator 'norm_bound'"
            problems.append(Problem(("norm_bound",), reason, None))
        if self.attack.kind is not None and self.attack.fraction == 0:
            reason = f"must be > 0 with attack.kind {self.attack.kind!r} (no client would attack)"
            problems.append(Problem(("attack", "fraction"), reason, 0.0))
        if self.attack.kind == "scale" and self.attack.scale == 1.0:
            reason = "1 leaves the update unchanged: attack.kind 'scale' needs another factor"
            problems.append(Problem(("attack", "scale"), reason, 1.0))
        raise_problems(problems)
        return self


class PrivacyConfig(Section):
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018; adaptive clipping,
    Andrew et al. 2021). Off while ``clip`` is None. See docs/PRIVACY.md."""

    clip: PosFloat | None = None
    """C: every client clips its whole update (the delta theta_i - theta^t; fmgda: its M deltas
    jointly) to L2 norm C before it leaves the client. With clipping on, the server averages
    with uniform weights over the fixed number of sampled clients (sum / k) and the update
    metrics derived from client data (lambda, rewards, losses, timings, reward-normalization
    state) are withheld. The initial C when ``adaptive_clip`` is on."""
    noise_multiplier: NonNegFloat = 0.0
    """sigma: Gaussian noise of std sigma * C on the sum of the clipped deltas (the average
    gets sigma * C / k). 0: clipping only (no privacy guarantee, epsilon is infinite)."""
    noise: Literal["central", "distributed"] = "central"
    """central: the server adds the noise (trusted server). distributed: each client adds
    N(0, (sigma C)^2 / k) to its clipped delta, so the sum carries sigma * C (for use with
    secure aggregation, which hides the individual noisy updates)."""
    delta: Annotated[Float, interval("(0, 1)")] = 1e-5
    """The delta of (epsilon, delta)-DP; epsilon is reported at this delta after each round."""
    target_epsilon: PosFloat | None = None
    """Refuse to start a run whose federation.rounds would exceed this epsilon (at delta),
    naming the number of rounds that fit."""
    adaptive_clip: StrictBool = False
    """Adapt C each round toward the ``target_quantile`` of the clients' update norms (Andrew
    et al. 2021, geometric update); the noisy count of unclipped clients is released too, which
    the accounting includes (the update noise is raised to keep the total at sigma)."""
    target_quantile: Annotated[Float, interval("(0, 1)")] = 0.5
    """adaptive_clip: gamma, the fraction of client updates that should be unclipped."""
    clip_learning_rate: PosFloat = 0.2
    """adaptive_clip: eta_C of C <- C * exp(-eta_C * (unclipped fraction - gamma))."""
    count_noise_std: NonNegFloat | None = None
    """adaptive_clip: sigma_b, the std of the noise on the count of unclipped clients (None:
    k / 20, the paper's choice)."""
    secure_noise: StrictBool = False
    """False: the noise is drawn from a generator seeded by experiment.seed and the round
    (reproducible simulations, bit-identical resume). True: from the operating system's
    entropy, as a real deployment must (the run is then not reproducible)."""
    secure_aggregation: StrictBool = False
    """Secure aggregation (Bonawitz et al. 2017, firm_ray/privacy/secagg.py): the clients send
    their clipped (distributed noise: also noised) deltas masked, so the server learns only
    their sum. Threshold t = k // 2 + 1 of the k clients sampled per round must survive the
    round. Needs ``clip`` (the fixed-point range is C + 6 x the local noise std per coordinate)
    and robustness.aggregator 'mean'; ``noise: distributed`` is the sensible pairing (central
    noise trusts the server with the noise, which secure aggregation does not need to)."""
    secagg_bits: Annotated[StrictInt, Field(ge=16, le=62)] = 32
    """Secure aggregation: the ring Z_{2^bits} of the masked fixed-point vectors; ceil(bits/8)
    bytes per coordinate on the wire; resolution per coordinate about
    k (C + 6 sigma C / sqrt(k)) / 2^(bits-1)."""

    @property
    def enabled(self) -> bool:
        return self.clip is not None

    @model_validator(mode="after")
    def _check(self) -> "PrivacyConfig":
        problems = []
        if self.clip is None:
            for key in ("noise_multiplier", "target_epsilon"):
                value = getattr(self, key)
                if value:
                    reason = "needs privacy.clip (the noise is calibrated to the clipping norm)"
                    problems.append(Problem((key,), reason, value))
            if self.adaptive_clip:
                reason = "needs privacy.clip (its initial value)"
                problems.append(Problem(("adaptive_clip",), reason, True))
            if self.secure_aggregation:
                reason = (
                    "needs privacy.clip (the fixed-point range of the masked sum comes from it)"
                )
                problems.append(Problem(("secure_aggregation",), reason, True))
        if self.target_epsilon is not None and self.noise_multiplier == 0:
            reason = "unreachable with privacy.noise_multiplier 0 (epsilon is infinite)"
            problems.append(Problem(("target_epsilon",), reason, self.target_epsilon))
        raise_problems(problems)
        return self


def count_noise_std(privacy: PrivacyConfig, clients_per_round: int) -> float:
    """sigma_b of adaptive clipping: privacy.count_noise_std, or k / 20 (Andrew et al. 2021)."""
    if privacy.count_noise_std is not None:
        return privacy.count_noise_std
    return clients_per_round / 20


def privacy_problems(
    privacy: PrivacyConfig,
    robustness: RobustnessConfig,
    preference_symmetric: bool,
    clients_per_round: int,
) -> list[Problem]:
    """Cross-section checks of FirmConfig: what privacy and robust aggregation exclude."""
    problems = []
    sigma_b = count_noise_std(privacy, clients_per_round)
    if (
        privacy.adaptive_clip
        and privacy.noise_multiplier > 0
        and 2 * sigma_b <= (privacy.noise_multiplier)
    ):
        reason = (
            f"adaptive clipping spends part of noise_multiplier {privacy.noise_multiplier:g} on "
            f"the count of unclipped clients and needs 2 * count_noise_std > noise_multiplier; "
            f"count_noise_std is {sigma_b:g}"
            + ("" if privacy.count_noise_std is not None else f" (k / 20, k = {clients_per_round})")
            + ": set privacy.count_noise_std higher"
        )
        problems.append(Problem(("privacy", "count_noise_std"), reason, privacy.count_noise_std))
    if privacy.secure_aggregation and robustness.aggregator != "mean":
        reason = (
            f"privacy.secure_aggregation needs robustness.aggregator 'mean': robust aggregation "
            f"({robustness.aggregator!r}) needs the individual updates, which it hides"
        )
        problems.append(Problem(("robustness", "aggregator"), reason, robustness.aggregator))
    elif privacy.enabled and robustness.aggregator != "mean":
        reason = (
            f"privacy.clip needs robustness.aggregator 'mean': the noise is calibrated to the "
            f"mean's sensitivity C / k, not to {robustness.aggregator!r}'s"
        )
        problems.append(Problem(("robustness", "aggregator"), reason, robustness.aggregator))
    if privacy.secure_aggregation and clients_per_round < 2:
        reason = (
            f"privacy.secure_aggregation needs at least 2 clients sampled per round "
            f"(t = k // 2 + 1), got k = {clients_per_round}"
        )
        problems.append(Problem(("federation", "clients_per_round"), reason))
    if robustness.aggregator in ("krum", "multi_krum"):
        f, k = robustness.byzantine, clients_per_round
        need = 2 * f + 3  # core.robust.min_clients (Blanchard et al. 2017), tested equal
        if k < need:
            fits = f"; byzantine <= {(k - 3) // 2} fits" if k >= 3 else ""
            reason = (
                f"{robustness.aggregator} tolerating f = {f} needs k >= 2f + 3 = {need} updates "
                f"a round, but the federation samples k = {k}{fits}"
            )
            problems.append(Problem(("robustness", "byzantine"), reason, f))
        elif robustness.multi_krum_m is not None and robustness.multi_krum_m > k - f:
            reason = f"multi_krum averages at most k - f = {k - f} updates (k = {k}, f = {f})"
            problems.append(
                Problem(("robustness", "multi_krum_m"), reason, robustness.multi_krum_m)
            )
    if robustness.attack.kind == "opposite_preference" and preference_symmetric:
        reason = (
            "algorithm.preference is its own mirror (e.g. uniform): opposite_preference "
            "would be no attack; set a preference such as [0.8, 0.2]"
        )
        problems.append(Problem(("robustness", "attack", "kind"), reason, "opposite_preference"))
    return problems


__all__ = [
    "ATTACK_KINDS",
    "ROBUST_RULES",
    "AttackConfig",
    "PrivacyConfig",
    "RobustnessConfig",
    "count_noise_std",
    "privacy_problems",
]
