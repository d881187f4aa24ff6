"""FaultLog (the round's `faults` row and the per-run restart bounds) and the one-line
description of a dead actor: no Ray needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.exceptions import ActorDiedError

from firm_ray.runtime.errors import RunError, RunInterrupted, attach_run_dir
from firm_ray.runtime.faults import FaultLog, describe_actor_error


def test_round_rows_and_carry() -> None:
    log = FaultLog(max_worker_restarts=5, max_aggregator_restarts=5)
    log.worker_fault("worker 1 died")
    log.reruns += [3]
    log.worker_fault("worker 0 replaced at the round timeout", bounded=False)
    row = log.take_round()
    assert row == {
        "worker_restarts": 2,
        "aggregator_restarts": 0,
        "node_losses": 0,
        "bundles_replaced": 0,
        "reruns": [3],
        "events": ["worker 1 died", "worker 0 replaced at the round timeout"],
    }
    assert log.worker_restarts_total == 1  # late replacements are not faults
    assert log.take_round()["worker_restarts"] == 0
    log.carry(row)  # a replayed round's faults show up in the next row
    assert log.take_round() == row


def test_bounds_fail_with_one_line() -> None:
    log = FaultLog(max_worker_restarts=1, max_aggregator_restarts=0)
    log.worker_fault("first")
    with pytest.raises(RunError, match=r"more than runtime\.max_worker_restarts = 1; last: second"):
        log.worker_fault("second")
    with pytest.raises(RunError, match=r"runtime\.max_aggregator_restarts = 0") as err:
        log.aggregator_fault("aggregator died aggregating in round 2")
    assert "\n" not in str(err.value)


def test_describe_a_dead_actor_in_one_line() -> None:
    err = ActorDiedError()
    err.error_msg = (
        "The actor died unexpectedly before finishing this task.\n\tclass_name: ClientWorker\n"
        "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR "
        "Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of "
        "file. Some common causes include: (1) the process was killed by the OOM killer"
    )
    assert describe_actor_error(err) == (
        "ActorDiedError (SYSTEM_ERROR: Worker unexpectedly exits with a connection error code 2)"
    )


def test_run_interrupted_is_a_keyboard_interrupt_with_the_run() -> None:
    err = RunInterrupted(15, None, None)
    assert isinstance(err, KeyboardInterrupt) and str(err) == "SIGTERM: run stopped"
    assert RunInterrupted(2, Path("runs/x"), None).run_dir == "runs/x"
    other = ValueError("x")
    attach_run_dir(other, "runs/x")
    assert other.run_dir == "runs/x"
