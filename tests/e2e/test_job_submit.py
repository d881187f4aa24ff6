"""A real Ray head on 127.0.0.1 with token authentication, a real `ray job submit` of the
quickstart, and the head stopped through the handle of the process that started it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """`ray start --head --block` on loopback; yields (dashboard address, env)."""
    temp_dir = tempfile.mkdtemp(prefix="frj", dir="/tmp")  # short: Ray's socket paths are capped
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # Ray's fixed default agent ports (52365, ...) collide with any other Ray on the
            # machine (a developer's, another test's): then the job agent never comes up
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            probe = subprocess.run(
                [RAY, "job", "list", "--address", address], env=env, capture_output=True
            )
            if probe.returncode == 0:
                break
            assert head.poll() is None, head.stdout.read() if head.stdout else "head exited"
            assert time.time() < deadline, "the Ray head did not come up"
            time.sleep(1)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the head tears down what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # only the group this test started
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_quickstart(ray_head, tmp_path) -> None:
    address, env = ray_head
    # a job without the token is refused: the head is really protected
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run(
        [RAY, "job", "list", "--address", address],
        env={**no_token, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")},
        capture_output=True,
    )
    assert refused.returncode != 0

    job_id = f"firm-ray-test-{secrets.token_hex(4)}"
    overrides = [
        f"experiment.output_dir={tmp_path}",
        "experiment.name=job",
        "federation.rounds=1",
        "federation.local_steps=1",
        "runtime.num_cpus_per_worker=0.5",
        "data.max_eval_prompts=16",
    ]
    command = ["python", "-m", "firm_ray", "run", "tune_configs/quickstart.yaml"]
    for item in overrides:
        command += ["--set", item]
    submit_cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--submission-id",
        job_id,
        "--no-wait",
        "--",
        *command,
    ]
    agent_deadline = time.time() + 240  # the head answers before its job agent is up
    while True:
        submit = subprocess.run(submit_cmd, env=env, capture_output=True, text=True, cwd=REPO)
        if "No available agent" not in submit.stdout + submit.stderr:
            break
        assert time.time() < agent_deadline, "the head's job agent never came up"
        time.sleep(2)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    deadline = time.time() + 600
    status = ""
    while time.time() < deadline:
        out = subprocess.run(
            [RAY, "job", "status", "--address", address, job_id],
            env=env,
            capture_output=True,
            text=True,
        )
        status = (out.stdout + out.stderr).upper()
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(2)
    logs = subprocess.run(
        [RAY, "job", "logs", "--address", address, job_id],
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert "SUCCEEDED" in status, status + logs[-3000:]
    run_dir = tmp_path / "job"
    assert f"results: {run_dir}" in logs
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
