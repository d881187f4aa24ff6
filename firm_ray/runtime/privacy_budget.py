"""The run's privacy budget: epsilon after each round, and the refusal to start beyond
``privacy.target_epsilon``.

Why in the runtime: the accountant (firm_ray/privacy/accounting.py, dp_accounting's RDP
accountant for fixed-size client sampling without replacement) needs the run's schedule
(clients, clients per round, rounds) and the algorithm's client selection, and the refusal must
happen before any worker starts, for `firm-ray run`, `ray job submit` and every Tune trial alike.
"""

from __future__ import annotations

import functools

from firm_ray.algorithms import build_algorithm
from firm_ray.config import ConfigError, FirmConfig
from firm_ray.federation import Strategy
from firm_ray.privacy import ClientAccountant


@functools.lru_cache(maxsize=32)
def _accountant(n: int, k: int, sigma: float, delta: float) -> ClientAccountant:
    return ClientAccountant(n, k, sigma, delta)


def accountant_for(config: FirmConfig) -> ClientAccountant | None:
    """The run's accountant (None without DP). Adaptive clipping's count release is included:
    its update noise is raised so the pair is as private as one Gaussian with sigma."""
    p = config.privacy
    if not p.enabled:
        return None
    fed = config.federation
    return _accountant(fed.num_clients, fed.clients_sampled_per_round, p.noise_multiplier, p.delta)


def epsilon_after(config: FirmConfig, rounds: int) -> float | None:
    """epsilon at privacy.delta after ``rounds`` rounds (inf without noise; None without DP)."""
    accountant = accountant_for(config)
    return None if accountant is None else accountant.epsilon(rounds)


def check_budget(config: FirmConfig) -> None:
    """ConfigError (one line) when the run cannot keep its privacy promise: federation.rounds
    beyond target_epsilon, or a client selection the accountant does not describe."""
    accountant = accountant_for(config)
    if accountant is None:
        return
    strategy = build_algorithm(config.algorithm, config.num_objectives).strategy(config)
    if type(strategy).configure_round is not Strategy.configure_round:
        raise ConfigError(
            f"privacy.clip: algorithm {config.algorithm.name!r} selects its own clients; the "
            "privacy accounting assumes the default uniform sampling of "
            f"{config.federation.clients_sampled_per_round} of {config.federation.num_clients}"
        )
    target = config.privacy.target_epsilon
    rounds = config.federation.rounds
    if target is None:
        return
    epsilon = accountant.epsilon(rounds)
    if epsilon > target:
        fit = accountant.max_rounds(target, rounds)
        raise ConfigError(
            f"privacy.target_epsilon = {target:g}: federation.rounds = {rounds} would reach "
            f"epsilon {epsilon:.3g} at delta {config.privacy.delta:g} ({accountant.describe()}); "
            f"{fit} round(s) fit"
        )


def protection_lines(config: FirmConfig) -> list[str]:
    """The console's start-up lines on privacy, robust aggregation and attacks (none when all
    are off), so a run never looks protected, or attacked, without saying how."""
    lines = []
    p, r = config.privacy, config.robustness
    if p.enabled:
        clip = (
            f"adaptive from {p.clip:g} (target quantile {p.target_quantile:g})"
            if (p.adaptive_clip)
            else f"{p.clip:g}"
        )
        epsilon = epsilon_after(config, config.federation.rounds)
        lines.append(
            f"privacy: DP-FedAvg, clip {clip}, noise multiplier {p.noise_multiplier:g} "
            f"({p.noise}); epsilon after {config.federation.rounds} rounds = {epsilon:.3g} at "
            f"delta {p.delta:g}; lambda, rewards, losses and client state are withheld"
        )
    if r.aggregator != "mean":
        lines.append(f"robust aggregation: {r.aggregator} (all accepted updates held at once)")
    if r.attack.kind is not None:
        from firm_ray.federation.attacks import attackers

        seed = r.attack.seed if r.attack.seed is not None else config.experiment.seed
        bad = sorted(attackers(config.federation.num_clients, r.attack.fraction, seed))
        lines.append(f"ATTACK (experiment): {r.attack.kind} by client(s) {bad}")
    return lines
