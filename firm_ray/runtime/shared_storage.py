"""Is a directory on storage every node of the Ray cluster shares?

A sweep's trials run on whichever node Tune places them and write their run directories there
(the trial actor is the run's driver, and its Aggregator is pinned next to it), while the sweep
report reads every trial's directory on the sweep driver's node. On a cluster without shared
storage the report would find nothing (or the files of some other machine), after the whole
sweep ran. :func:`unshared_nodes` checks it up front, for real: a zero-CPU task pinned to each
other live node writes a probe file with a random token into the directory, and the driver
reads it back (then removes it). A node where that fails, or where the file is not the one
written, does not share the directory.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

PROBE_TIMEOUT_S = 120.0  # for a task to start on every node (a fresh Ray starts its workers)

__all__ = ["PROBE_TIMEOUT_S", "unshared_nodes"]


def _write_probe(path: str, token: str) -> str:
    """Runs on the probed node: write the token; '' or the OSError, in one line."""
    try:
        with open(path, "x", encoding="utf-8") as out:
            out.write(token)
        return ""
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"


def _remove_probe(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def unshared_nodes(directory: Path, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, str]:
    """{node id: why} for every live node other than this one that does not see
    ``directory`` as this process does; empty on a one-node Ray."""
    here = ray.get_runtime_context().get_node_id()
    others = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    if not others:
        return {}
    token = secrets.token_hex(16)
    probe = ray.remote(num_cpus=0, max_retries=0)(_write_probe)
    paths = {node: directory / f".storage-probe-{token[:8]}-{node[:12]}" for node in others}
    refs = {
        node: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote(str(paths[node]), token)
        for node in others
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    problems: dict[str, str] = {}
    for node, ref in refs.items():
        if ref not in ready:
            ray.cancel(ref, force=True)
            problems[node] = f"no task started there within {timeout_s:g} s"
            continue
        try:
            failed = ray.get(ref)
        except ray.exceptions.RayError as err:
            failed = type(err).__name__
        try:
            seen = paths[node].read_text(encoding="utf-8")
        except OSError:
            seen = None
        finally:
            paths[node].unlink(missing_ok=True)
        if failed:
            problems[node] = f"writing there failed ({failed})"
        elif seen != token:
            problems[node] = "a file written there is not visible here"
    # a probe written on a node's own disk is removed there
    stray = [n for n, why in problems.items() if why.startswith("a file written")]
    remove = ray.remote(num_cpus=0, max_retries=0)(_remove_probe)
    cleanups = [
        remove.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
            str(paths[n])
        )
        for n in stray
    ]
    ray.wait(cleanups, num_returns=len(cleanups), timeout=timeout_s)
    return problems
