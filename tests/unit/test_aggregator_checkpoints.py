"""The Aggregator's checkpoints, in process (no Ray): atomic round directories, the adapter file
written from the one serialized payload, exact restore, and experiment.keep_checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from firm_ray.config import load_config
from firm_ray.models.adapter import adapter_to_bytes
from firm_ray.runtime.aggregator import (
    CHECKPOINT_STATE,
    Aggregator,
    latest_checkpoint,
    round_checkpoints,
)

EXTRA = {"initial_rewards": [0.1, 0.2], "elapsed_s": 1.5}


def _aggregator(run_dir: Path, *overrides: str) -> Aggregator:
    config = load_config("tune_configs/quickstart.yaml", list(overrides))
    return Aggregator(config.model_dump(mode="json"), str(run_dir))


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "layer.lora_A.weight": torch.randn(4, 6, generator=gen),
        "layer.lora_B.weight": torch.randn(6, 4, generator=gen),
    }


def _rounds(run_dir: Path) -> list[str]:
    return [p.name for p in round_checkpoints(run_dir / "checkpoints")]


def test_a_checkpoint_restores_the_adapter_and_client_states_exactly(tmp_path) -> None:
    writer = _aggregator(tmp_path)
    state = _state(0)
    writer.set_global(adapter_to_bytes(state))
    writer.client_states = {3: {"relevance": {"mean": 0.25}}}
    path = Path(writer.save_checkpoint(0, EXTRA))

    assert latest_checkpoint(tmp_path) == path
    on_disk = load_file(str(path / "adapter.safetensors"))  # a plain safetensors file
    assert all(torch.equal(on_disk[k], v) for k, v in state.items())
    reader = _aggregator(tmp_path)
    info = reader.load_checkpoint(str(path))
    assert info["round"] == 0 and info["initial_rewards"] == EXTRA["initial_rewards"]
    assert reader.state is not None and list(reader.state) == list(state)  # order kept
    assert all(torch.equal(reader.state[k], v) for k, v in state.items())
    assert reader.client_states == {3: {"relevance": {"mean": 0.25}}}
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # nothing half-written left


def test_the_checkpoint_follows_the_state_not_a_stale_payload(tmp_path) -> None:
    aggregator = _aggregator(tmp_path)
    aggregator.set_global(adapter_to_bytes(_state(0)))
    aggregator.global_payload()  # serialized and cached for state 0
    aggregator.set_global(adapter_to_bytes(_state(1)))
    path = Path(aggregator.save_checkpoint(0, EXTRA))
    on_disk = load_file(str(path / "adapter.safetensors"))
    assert all(torch.equal(on_disk[k], v) for k, v in _state(1).items())


def test_every_round_is_kept_by_default(tmp_path) -> None:
    aggregator = _aggregator(tmp_path)
    for r in range(4):
        aggregator.set_global(adapter_to_bytes(_state(r)))
        aggregator.save_checkpoint(r, EXTRA)
    assert _rounds(tmp_path) == [f"round_{r:04d}" for r in range(4)]


def test_keep_checkpoints_keeps_the_newest_rounds(tmp_path) -> None:
    aggregator = _aggregator(tmp_path, "experiment.keep_checkpoints=2")
    for r in range(5):
        aggregator.set_global(adapter_to_bytes(_state(r)))
        aggregator.save_checkpoint(r, EXTRA)
        assert _rounds(tmp_path)[-1] == f"round_{r:04d}"
        assert len(_rounds(tmp_path)) == min(r + 1, 2)
    assert _rounds(tmp_path) == ["round_0003", "round_0004"]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "round_0004"
    reader = _aggregator(tmp_path)
    reader.load_checkpoint(str(latest))
    assert reader.state is not None
    assert all(torch.equal(reader.state[k], v) for k, v in _state(4).items())


def test_round_checkpoints_sorts_numerically_and_skips_incomplete(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    for name in ("round_10000", "round_9999", "round_0002"):
        (root / name).mkdir(parents=True)
        (root / name / CHECKPOINT_STATE).write_text("{}")
    (root / "round_0003").mkdir()  # no state.json: incomplete
    (root / ".round_0004.tmp").mkdir()  # a write in progress
    (root / "round_x").mkdir()
    assert [p.name for p in round_checkpoints(root)] == ["round_0002", "round_9999", "round_10000"]


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "'2'"])
def test_keep_checkpoints_must_be_a_positive_integer(tmp_path, value) -> None:
    with pytest.raises(ValueError, match="keep_checkpoints"):
        _aggregator(tmp_path, f"experiment.keep_checkpoints={value}")
