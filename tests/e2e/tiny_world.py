"""The smallest federated run the e2e tests use: seconds per round on 2 cores.

A plain module next to the tests (pytest's default import mode puts this directory on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

TINY = [
    "federation.num_clients=4",
    "federation.clients_per_round=0.5",
    "federation.local_steps=1",
    "trainer.batch_prompts=4",
    "trainer.generations_per_prompt=2",
    "trainer.max_new_tokens=8",
    "data.max_eval_prompts=16",
    "runtime.num_cpus_per_worker=0.5",
]


def firm_ray_cli(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``python -m firm_ray ARGV`` from the repository root, stdout and stderr together, with
    this directory on PYTHONPATH so the driver and every Ray worker can import the modules the
    tests name (python rewards, dotted-path algorithms)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "firm_ray", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
