"""`firm-ray sweep` end to end: real local Ray, real Ray Tune, real federated runs per trial."""

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
import yaml
from safetensors.torch import load_file
from tiny_world import TINY
from wandb_offline import read_offline_run

from firm_ray.config import load_config
from firm_ray.runtime.loop import run
from firm_ray.runtime.sweep import run_sweep
from firm_ray.tracking.jsonl import read_metrics, read_summary

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "tune_configs" / "quickstart.yaml"
TINY_TRIAL = [*TINY, "runtime.num_workers=1"]  # one worker per trial: trials run side by side


def write_sweep(tmp_path: Path, name: str, body: dict, *extra_set: str) -> Path:
    spec = {
        "name": name,
        "base": str(QUICKSTART),
        "set": [*TINY_TRIAL, *extra_set],
        "output_dir": str(tmp_path / "sweeps"),
        **body,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"sweep": spec}, sort_keys=False))
    return path


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / latest / "adapter.safetensors"))


def test_sweep_with_variants_asha_and_wandb(tmp_path) -> None:
    """Four trials (2 algorithms x 2 preferences) one at a time under ASHA: every trial is a
    real run in the sweep directory, ASHA stops the trials behind on harmlessness after round
    1, the report files exist, and W&B (offline) holds one run per trial plus the summary."""
    path = write_sweep(
        tmp_path,
        "asha",
        {
            "variants": {
                "firm": ["algorithm.name=firm", "algorithm.beta=1.0"],
                "fedavg_ls": ["algorithm.name=fedavg_ls"],
            },
            "space": {"algorithm.preference": {"grid": [[0.0, 1.0], [1.0, 0.0]]}},
            "max_concurrent_trials": 1,
            "scheduler": "asha",
            "metric": "reward/harmlessness",
            "asha": {"grace_period": 1, "reduction_factor": 2},
        },
        "federation.rounds=2",
        "tracking.wandb.enabled=true",
        "tracking.wandb.mode=offline",
    )
    result = run_sweep(path)
    sweep_dir = Path(result["sweep_dir"])
    assert result["failed"] == []
    for name in ("sweep.yaml", "base_config.yaml", "trials.csv", "trials.json", "pareto.json"):
        assert (sweep_dir / name).is_file(), name
    for name in ("pareto.png", "drift.png"):
        assert (sweep_dir / name).stat().st_size > 10_000, name

    trials = {t["trial_id"]: t for t in json.loads((sweep_dir / "tune_trials.json").read_text())}
    assert len(trials) == 4
    seen = set()
    for trial in trials.values():
        run_dir = Path(trial["run_dir"])
        config = load_config(run_dir / "config.yaml")
        params = trial["params"]
        assert config.algorithm.name == params["variant"]
        assert config.algorithm.preference == params["algorithm.preference"]
        assert config.tracking.wandb.group == "asha"
        seen.add((config.algorithm.name, tuple(config.algorithm.preference)))
        rounds = [row["round"] for row in read_metrics(run_dir)]
        summary = read_summary(run_dir)
        assert summary["status"] == trial["status"]
        if trial["status"] == "completed":
            assert rounds == [0, 1]
            assert (run_dir / "adapter" / "adapter_config.json").is_file()
        else:  # stopped by ASHA at its first rung
            assert trial["status"] == "stopped"
            assert rounds == [0]
        wandb_run = read_offline_run(run_dir)
        assert wandb_run["config"]["algorithm"]["name"] == config.algorithm.name
        assert len([h for h in wandb_run["history"] if "reward/relevance" in h]) == len(rounds)
    assert len(seen) == 4
    statuses = sorted(t["status"] for t in trials.values())
    assert "stopped" in statuses and "completed" in statuses, statuses

    pareto = json.loads((sweep_dir / "pareto.json").read_text())
    completed = {tid for tid, t in trials.items() if t["status"] == "completed"}
    assert {f["trial_id"] for f in pareto["front"]} <= completed  # stopped trials stay out
    assert pareto["n_included"] == len(completed)
    summary_run = read_offline_run(sweep_dir)
    assert summary_run["runs"][0]["job_type"] == "sweep-summary"
    assert summary_run["runs"][0]["group"] == "asha"
    logged = set().union(*summary_run["history"])
    assert {"trials", "pareto_front_table", "images/pareto", "images/drift"} <= logged


def test_sweep_that_cannot_be_placed_fails_fast(tmp_path) -> None:
    path = write_sweep(
        tmp_path,
        "too_big",
        {"space": {"experiment.seed": {"grid": [0, 1]}}},
        "runtime.num_workers=3",
        "runtime.num_cpus_per_worker=1.0",
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "firm_ray", "sweep", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "no trial could ever start" in out.stdout
    assert "runtime.num_workers" in out.stdout
    assert time.perf_counter() - start < 60


def test_sweep_killed_mid_trial_resumes_from_checkpoints(tmp_path) -> None:
    """SIGKILL the sweep (driver and the Ray it started) after the first trial's round 1 of
    3; `firm-ray sweep --resume` finishes both trials, the interrupted one continues from its
    checkpoint (round 0 is not run again) and ends with the adapter of an uninterrupted run."""
    path = write_sweep(
        tmp_path,
        "resumable",
        {
            "space": {"algorithm.preference": {"grid": [[0.3, 0.7], [0.7, 0.3]]}},
            "max_concurrent_trials": 1,
        },
        "federation.rounds=3",
    )
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firm_ray", "sweep", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_ADDRESS": ""},
        )
    trials_dir = tmp_path / "sweeps" / "resumable" / "trials"
    deadline = time.time() + 300
    try:
        while not list(trials_dir.glob("*/checkpoints/round_0000/state.json")):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no trial finished a round"
            time.sleep(0.2)
        time.sleep(0.5)  # let Tune receive that round's report
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the Ray it started, only
        proc.wait()
    killed_at = time.time()
    (interrupted,) = [p.parents[2] for p in trials_dir.glob("*/checkpoints/round_0000/state.json")]
    assert not (interrupted / "summary.json").exists()
    first_checkpoint = (interrupted / "checkpoints" / "round_0000" / "state.json").stat().st_mtime

    out = subprocess.run(
        [sys.executable, "-m", "firm_ray", "sweep", "--resume", str(trials_dir.parent)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = json.loads((trials_dir.parent / "tune_trials.json").read_text())
    assert [t["status"] for t in trials] == ["completed", "completed"]
    assert {Path(t["run_dir"]) for t in trials} >= {interrupted}
    assert [r["round"] for r in read_metrics(interrupted)] == [0, 1, 2]
    assert (
        (interrupted / "checkpoints" / "round_0000" / "state.json").stat().st_mtime
        == (first_checkpoint)
        < killed_at
    )

    config = load_config(interrupted / "config.yaml")
    config.experiment.output_dir = str(tmp_path / "reference")
    reference = run(config)
    a, b = final_adapter(Path(reference["run_dir"])), final_adapter(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
