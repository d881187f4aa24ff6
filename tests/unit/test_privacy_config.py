"""The privacy: and robustness: sections: their one-line errors, the names shared with the
pure modules, and check-config refusing what `run` would refuse (the privacy budget)."""

from __future__ import annotations

import pytest

from firm_ray.config import ConfigError, load_config
from firm_ray.config.privacy import ATTACK_KINDS, ROBUST_RULES
from firm_ray.core.robust import RULES, min_clients
from firm_ray.federation.attacks import ATTACKS


def test_names_match_the_modules() -> None:
    assert ROBUST_RULES == RULES and ATTACK_KINDS == ATTACKS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.noise_multiplier=1"], "privacy.noise_multiplier = 1.0: needs privacy.clip"),
        (["privacy.clip=1", "privacy.target_epsilon=3"], "unreachable with privacy.noise_multip"),
        (["robustness.aggregator=norm_bound"], "robustness.norm_bound = None: required by"),
        (["robustness.attack.kind=scale", "robustness.attack.fraction=0.2"], "leaves the update"),
        (["robustness.attack.kind=nan"], "robustness.attack.fraction = 0.0: must be > 0"),
        (
            ["robustness.attack.kind=opposite_preference", "robustness.attack.fraction=0.2"],
            "is its own mirror",
        ),
        (  # the default federation samples k = 4 of 8
            ["robustness.aggregator=krum"],
            "robustness.byzantine = 1: krum tolerating f = 1 needs k >= 2f + 3 = 5 updates a "
            "round, but the federation samples k = 4; byzantine <= 0 fits",
        ),
        (
            ["robustness.aggregator=multi_krum", "federation.clients_per_round=0.25"],
            "needs k >= 2f + 3 = 5 updates a round, but the federation samples k = 2\n",
        ),
        (
            [
                "robustness.aggregator=multi_krum",
                "federation.clients_per_round=1",
                "robustness.multi_krum_m=8",
            ],
            "robustness.multi_krum_m = 8: multi_krum averages at most k - f = 7 updates",
        ),
        (
            ["privacy.clip=1", "robustness.aggregator=trimmed_mean"],
            "privacy.clip needs robustness.aggregator 'mean'",
        ),
        (
            ["privacy.clip=1", "privacy.noise_multiplier=1", "privacy.adaptive_clip=true"],
            "needs 2 * count_noise_std > noise_multiplier; count_noise_std is 0.2 (k / 20, k = 4)",
        ),
    ],
)
def test_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value) + "\n" and "\n" not in str(err.value)


def test_check_config_refuses_an_exceeded_budget(capsys) -> None:
    from firm_ray.cli.main import main

    base = ["check-config", "tune_configs/quickstart.yaml", "--no-preflight"]
    dp = ["--set", "privacy.clip=0.05", "--set", "privacy.noise_multiplier=1.0"]
    assert main([*base, *dp, "--set", "privacy.target_epsilon=20"]) == 2
    out = capsys.readouterr().out
    assert "error: privacy.target_epsilon = 20: federation.rounds = 5 would reach epsilon" in out
    assert "2 round(s) fit" in out
    assert main([*base, *dp, "--set", "privacy.target_epsilon=50"]) == 0
    assert (
        "# privacy: DP-FedAvg, clip 0.05, noise multiplier 1 (central)" in capsys.readouterr().out
    )


@pytest.mark.parametrize("rule", ["krum", "multi_krum"])
@pytest.mark.parametrize("f", [0, 1, 3])
def test_krum_client_bound_is_the_rules(rule: str, f: int) -> None:
    """The load-time check and core.robust agree on the smallest round Krum accepts."""
    need = min_clients(rule, f)
    over = [f"robustness.aggregator={rule}", f"robustness.byzantine={f}"]
    load_config(None, [*over, f"federation.num_clients={need}", "federation.clients_per_round=1"])
    with pytest.raises(ConfigError, match="needs k >= 2f"):
        load_config(
            None, [*over, f"federation.num_clients={need - 1}", "federation.clients_per_round=1"]
        )
