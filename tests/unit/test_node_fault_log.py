"""Node losses in FaultLog (counted once per node, bounded by runtime.max_node_losses, in the
round's row) and a worker that died with its node, in one line: no Ray needed."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError

from firm_ray.runtime.errors import RunError
from firm_ray.runtime.faults import FaultLog, dead_node, describe_actor_error

NODE = "b4a9709ffca5d30481e54af7d126dde9e42302e4e446b9eb06896e71"


def died_with_node() -> ActorDiedError:
    """Ray 2.60's message for an actor whose node was removed (copied from a real one)."""
    err = ActorDiedError()
    err.error_msg = (
        "The actor died unexpectedly before finishing this task.\n\tclass_name: ClientWorker\n"
        "\tactor_id: 80373b84028fde50b97076d201000000\n\tpid: 7651\n\tip: 127.0.0.1\n"
        f"The actor died because its node has died. Node Id: {NODE}\n"
        "\tthe actor's node was terminated expectedly: received SIGTERM"
    )
    return err


def test_a_worker_that_died_with_its_node() -> None:
    assert dead_node(died_with_node()) == NODE
    assert describe_actor_error(died_with_node()) == f"ActorDiedError (its node {NODE[:12]} died)"
    assert dead_node(ActorDiedError()) is None


def test_node_losses_counted_once_and_in_the_row() -> None:
    log = FaultLog(max_worker_restarts=0, max_aggregator_restarts=0, max_node_losses=1)
    log.node_lost(NODE)
    log.node_lost(NODE)  # its second worker reports the same node
    log.worker_fault("worker 0 died (node died)", bounded=False)  # not a worker-restart fault
    log.worker_fault("worker 1 died (node died)", bounded=False)
    log.replaced(2, "worker(s) [0, 1] re-placed on node(s) ['x'] after 1.0 s")
    row = log.take_round()
    assert row["node_losses"] == 1 and row["bundles_replaced"] == 2
    assert row["worker_restarts"] == 2 and row["events"][0] == f"node {NODE[:12]} lost"
    assert log.take_round()["node_losses"] == 0
    log.carry(row)
    assert log.take_round() == row
    with pytest.raises(RunError, match=r"2 nodes lost, more than runtime\.max_node_losses = 1"):
        log.node_lost("another")
