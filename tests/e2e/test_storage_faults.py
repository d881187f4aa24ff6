"""Storage faults in a real run (local Ray, real workers): a damaged latest checkpoint is skipped
on resume, which continues from the newest intact one and ends with the adapter of the
uninterrupted run (rounds are seeded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_world import TINY

from firm_ray.config import load_config
from firm_ray.runtime.checkpoint import (
    CHECKPOINT_ADAPTER,
    find_resume_checkpoint,
    latest_checkpoint,
    round_checkpoints,
)
from firm_ray.runtime.loop import run

pytestmark = pytest.mark.e2e


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _peft_config(data: bytes) -> dict:
    config = json.loads(data)
    config["target_modules"] = sorted(config["target_modules"])
    return config


def test_resume_falls_back_from_a_truncated_latest_checkpoint(tmp_path) -> None:
    overrides = [f"experiment.output_dir={tmp_path}", "experiment.name=trunc", *TINY]
    config = load_config("tune_configs/quickstart.yaml", [*overrides, "federation.rounds=3"])
    run_dir = Path(run(config)["run_dir"])
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in round_checkpoints(checkpoints)] == [f"round_000{r}" for r in range(3)]
    uninterrupted = _files(run_dir / "adapter")
    last = checkpoints / "round_0002"
    last_files = _files(last)
    assert "manifest.json" in last_files

    adapter = last / CHECKPOINT_ADAPTER
    adapter.write_bytes(last_files[CHECKPOINT_ADAPTER][: len(last_files[CHECKPOINT_ADAPTER]) // 2])
    path, messages = find_resume_checkpoint(run_dir)
    assert path == checkpoints / "round_0001" == latest_checkpoint(run_dir)
    assert len(messages) == 1 and messages[0].startswith(
        "skipped round_0002: adapter.safetensors is "
    )

    summary = run(None, resume=run_dir)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]  # round 2 re-run, its old row dropped
    resumed = _files(run_dir / "adapter")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:  # the weights bit-identical
        if name == "adapter_config.json":  # PEFT writes target_modules in set (hash) order
            assert _peft_config(resumed[name]) == _peft_config(uninterrupted[name])
        else:
            assert resumed[name] == uninterrupted[name], name
    again = _files(last)  # the re-run round 2 wrote the same checkpoint again
    assert again[CHECKPOINT_ADAPTER] == last_files[CHECKPOINT_ADAPTER]
    state, old_state = (json.loads(f["state.json"]) for f in (again, last_files))
    state.pop("elapsed_s"), old_state.pop("elapsed_s")  # wall time: the only difference
    assert state == old_state
    assert find_resume_checkpoint(run_dir) == (last, [])
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # no temporaries
