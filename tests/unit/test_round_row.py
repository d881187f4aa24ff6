"""The round row's client timing: summed over accepted clients, null when withheld."""

from __future__ import annotations

from firm_ray.runtime.round_row import CLIENT_PHASES, client_phase_seconds


def test_phases_are_summed_over_the_accepted_clients_only() -> None:
    metrics = {
        "0": {f"time_{k}": 1.0 for k in CLIENT_PHASES},
        "1": {f"time_{k}": 2.5 for k in CLIENT_PHASES},
        "2": {f"time_{k}": 100.0 for k in CLIENT_PHASES},  # rejected: not counted
    }
    assert client_phase_seconds(metrics, ["0", "1"]) == {k: 3.5 for k in CLIENT_PHASES}


def test_withheld_phases_are_null_not_zero() -> None:
    """Under DP a client upload carries only counts (trainer/client_upload.DP_KEPT_METRICS):
    its phases were reported as 0.0 seconds, which reads as a measurement."""
    metrics = {"0": {"steps": 2.0}, "1": {"steps": 2.0, "dp_unclipped": 1.0}}
    assert client_phase_seconds(metrics, ["0", "1"]) == {k: None for k in CLIENT_PHASES}
