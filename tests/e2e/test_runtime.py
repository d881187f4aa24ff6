"""The Ray runtime end to end: real local Ray, real workers, real trainers, real artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny_world import TINY
from transformers import AutoModelForCausalLM

from firm_ray.config import load_config
from firm_ray.runtime.aggregator import latest_checkpoint, round_checkpoints
from firm_ray.runtime.loop import RunError, run

pytestmark = pytest.mark.e2e


def config(tmp_path: Path, name: str, *extra: str):
    return load_config(
        "tune_configs/quickstart.yaml",
        [f"experiment.output_dir={tmp_path}", f"experiment.name={name}", *TINY, *extra],
    )


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / latest / "adapter.safetensors"))


def test_quickstart_artifacts(tmp_path, world_model_dir) -> None:
    summary = run(config(tmp_path, "qs", "federation.rounds=2"))
    run_dir = Path(summary["run_dir"])
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    for row in rows:
        assert len(row["rewards"]) == 2 and row["kl"] is not None
        assert len(row["clients"]) == 2 and not row["failed"]
        assert set(row["client_lambdas"]) == {str(c) for c in row["clients"]}
        assert row["disagreement"] is not None and row["param_drift"] > 0
        # issue 15's cross-algorithm metrics: update conflict of the 2 clients' deltas, the
        # per-objective gradient norms of each client, the global model's Pareto stationarity
        assert -1.0 <= row["update_cosine"] <= 1.0 and 0.0 < row["update_coherence"] <= 1.0
        assert set(row["client_grad_norms"]) == {str(c) for c in row["clients"]}
        assert all(len(n) == 2 and min(n) > 0 for n in row["client_grad_norms"].values())
        assert row["pareto_stationarity"] > 0
        up = set(row["bytes_up"].values())
        assert len(up) == 1 and up == set(row["bytes_down"].values())  # one adapter each way
        for key in ("generate", "score", "backward", "solve", "aggregation", "round_wall"):
            assert key in row["timing"]
    assert load_config(run_dir / "config.yaml").federation.rounds == 2
    assert (run_dir / "partition.json").exists()
    for plot in ("rewards.png", "lambdas.png", "disagreement.png", "conflict.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 1000
    base = AutoModelForCausalLM.from_pretrained(world_model_dir)
    peft = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    loaded = {k: v for k, v in peft.state_dict().items() if "lora_" in k}
    assert loaded and any(v.abs().sum() > 0 for k, v in loaded.items() if "lora_B" in k)
    # a second run with the same name never overwrites the first
    again = run(config(tmp_path, "qs", "federation.rounds=1"))
    assert Path(again["run_dir"]).name == "qs-2"


def test_same_adapter_with_one_or_two_workers(tmp_path) -> None:
    one = run(config(tmp_path, "w1", "federation.rounds=2", "runtime.num_workers=1"))
    two = run(config(tmp_path, "w2", "federation.rounds=2", "runtime.num_workers=2"))
    a, b = final_adapter(Path(one["run_dir"])), final_adapter(Path(two["run_dir"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fmgda_uploads_one_delta_per_objective(tmp_path) -> None:
    firm = run(config(tmp_path, "firm", "federation.rounds=1"))
    fmgda = run(config(tmp_path, "fmgda", "federation.rounds=1", "algorithm.name=fmgda"))
    assert fmgda["bytes_up_per_client_round"] == 2 * firm["bytes_up_per_client_round"]
    row = json.loads((Path(fmgda["run_dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    assert len(row["server"]["server_lambda"]) == 2


def test_all_clients_late_fails_the_run_clearly(tmp_path) -> None:
    with pytest.raises(RunError, match="round 0 failed"):
        run(config(tmp_path, "late", "federation.rounds=1", "federation.round_timeout_s=0.001"))


def test_kill_after_round_two_and_resume(tmp_path) -> None:
    """A run killed (SIGKILL) after round 2 of 4 and resumed ends with the adapter of an
    uninterrupted run; keeping only the newest checkpoint is enough to resume."""
    full = run(config(tmp_path, "full", "federation.rounds=4"))
    overrides = [
        f"experiment.output_dir={tmp_path}",
        "experiment.name=killed",
        *TINY,
        "federation.rounds=4",
        "experiment.keep_checkpoints=1",
    ]
    cmd = [sys.executable, "-m", "firm_ray", "run", "tune_configs/quickstart.yaml"]
    for item in overrides:
        cmd += ["--set", item]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    run_dir = tmp_path / "killed"
    deadline = time.time() + 300
    try:
        while (latest_checkpoint(run_dir) or Path("round_-1")).name < "round_0001":
            assert proc.poll() is None, "the run ended before round 2"
            assert time.time() < deadline, "round 2 never finished"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and the Ray it started, nothing else
        proc.wait()
    assert not (run_dir / "adapter").exists()
    out = subprocess.run(
        [sys.executable, "-m", "firm_ray", "run", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    a, b = final_adapter(Path(full["run_dir"])), final_adapter(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in round_checkpoints(run_dir / "checkpoints")] == ["round_0003"]
    assert len(round_checkpoints(Path(full["run_dir"]) / "checkpoints")) == 4  # default: all
