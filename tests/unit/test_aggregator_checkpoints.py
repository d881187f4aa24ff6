"""The Aggregator's checkpoints, in process (no Ray): atomic round directories, the adapter file
written from the one serialized payload, exact restore, experiment.keep_checkpoints, the sha256
manifest and resume from the newest intact checkpoint (truncated, flipped byte, missing file,
old checkpoints without a manifest, a stale or damaged `latest`), and a full disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import disk_faults
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
from firm_ray.runtime.checkpoint import (
    CHECKPOINT_ADAPTER,
    CHECKPOINT_MANIFEST,
    CheckpointError,
    find_resume_checkpoint,
    prune_checkpoints,
    verify_checkpoint,
)
from firm_ray.tracking.storage import StorageError

EXTRA = {"initial_rewards": [0.1, 0.2], "elapsed_s": 1.5}
small_disk = disk_faults.small_disk  # fixture: a 1 MiB disk that fills up for real


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


# ------------------------------------------------------------------------- verified checkpoints
def _saved(run_dir: Path, rounds: int, *overrides: str) -> Aggregator:
    aggregator = _aggregator(run_dir, *overrides)
    for r in range(rounds):
        aggregator.set_global(adapter_to_bytes(_state(r)))
        aggregator.save_checkpoint(r, EXTRA)
    return aggregator


def _round(run_dir: Path, r: int) -> Path:
    return run_dir / "checkpoints" / f"round_{r:04d}"


def _restored_round(run_dir: Path) -> int:
    path = latest_checkpoint(run_dir)
    assert path is not None
    reader = _aggregator(run_dir)
    info = reader.load_checkpoint(str(path))
    assert reader.state is not None
    assert all(torch.equal(reader.state[k], v) for k, v in _state(info["round"]).items())
    return info["round"]


def test_a_checkpoint_has_a_manifest_of_sizes_and_checksums(tmp_path) -> None:
    _saved(tmp_path, 1)
    path = _round(tmp_path, 0)
    manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
    assert set(manifest["files"]) == {CHECKPOINT_ADAPTER, CHECKPOINT_STATE}
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify_checkpoint(path) == ""
    assert find_resume_checkpoint(tmp_path) == (path, [])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", path.name]


def test_resume_skips_a_truncated_latest_checkpoint(tmp_path) -> None:
    _saved(tmp_path, 3)
    adapter = _round(tmp_path, 2) / CHECKPOINT_ADAPTER
    adapter.write_bytes(adapter.read_bytes()[:100])
    path, messages = find_resume_checkpoint(tmp_path)
    assert path == _round(tmp_path, 1)
    assert messages == [
        "skipped round_0002: adapter.safetensors is 100 bytes, the manifest says "
        f"{len(adapter_to_bytes(_state(2))):,}"
    ]
    assert _restored_round(tmp_path) == 1


def test_resume_skips_a_flipped_byte(tmp_path) -> None:
    """A flipped byte that still loads as finite floats: only the checksum can notice it."""
    _saved(tmp_path, 3)
    adapter = _round(tmp_path, 2) / CHECKPOINT_ADAPTER
    data = bytearray(adapter.read_bytes())
    data[-3] ^= 0x01  # a low mantissa bit of the last float32
    adapter.write_bytes(bytes(data))
    assert all(torch.isfinite(t).all() for t in load_file(str(adapter)).values())
    with pytest.raises(CheckpointError, match=r"adapter\.safetensors sha256 mismatch"):
        verify_checkpoint(_round(tmp_path, 2))
    path, messages = find_resume_checkpoint(tmp_path)
    assert path == _round(tmp_path, 1)
    assert messages == ["skipped round_0002: adapter.safetensors sha256 mismatch"]


def test_resume_skips_every_damaged_round_newest_first(tmp_path) -> None:
    _saved(tmp_path, 4)
    (_round(tmp_path, 3) / CHECKPOINT_STATE).write_text('{"round": 3}')
    (_round(tmp_path, 2) / CHECKPOINT_ADAPTER).unlink()
    (_round(tmp_path, 1) / CHECKPOINT_MANIFEST).write_text("{not json")
    path, messages = find_resume_checkpoint(tmp_path)
    assert path == _round(tmp_path, 0)
    assert [m.split(":")[0] for m in messages] == [
        "skipped round_0003",
        "skipped round_0002",
        "skipped round_0001",
    ]
    assert "state.json is" in messages[0] and "adapter.safetensors missing" in messages[1]
    assert "manifest.json unreadable" in messages[2]
    for r in range(4):  # nothing was deleted: a damaged checkpoint is evidence
        assert _round(tmp_path, r).is_dir()


def test_no_intact_checkpoint_means_no_resume(tmp_path) -> None:
    _saved(tmp_path, 1)
    (_round(tmp_path, 0) / CHECKPOINT_ADAPTER).write_bytes(b"")
    path, messages = find_resume_checkpoint(tmp_path)
    assert path is None and latest_checkpoint(tmp_path) is None
    assert messages == [
        "skipped round_0000: adapter.safetensors is 0 bytes, the manifest says "
        f"{len(adapter_to_bytes(_state(0))):,}"
    ]
    assert find_resume_checkpoint(tmp_path / "no-such-run") == (None, [])


def test_a_checkpoint_from_an_older_version_still_loads(tmp_path) -> None:
    """Written before manifests existed: used if it loads, and the resume says so."""
    _saved(tmp_path, 2)
    for r in range(2):
        (_round(tmp_path, r) / CHECKPOINT_MANIFEST).unlink()
    path, messages = find_resume_checkpoint(tmp_path)
    assert path == _round(tmp_path, 1)
    assert messages == [
        "round_0001: no manifest (written by an older firm_ray): it loads, so it is used unverified"
    ]
    assert _restored_round(tmp_path) == 1
    adapter = _round(tmp_path, 1) / CHECKPOINT_ADAPTER  # an old one that does not load
    adapter.write_bytes(adapter.read_bytes()[:-10])
    path, messages = find_resume_checkpoint(tmp_path)
    assert path == _round(tmp_path, 0)
    assert messages[0].startswith("skipped round_0001: adapter.safetensors does not load (")
    assert "unverified" in messages[1]


def test_a_latest_pointer_naming_a_damaged_round_is_not_followed(tmp_path) -> None:
    _saved(tmp_path, 3)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "round_0002"
    (_round(tmp_path, 2) / CHECKPOINT_ADAPTER).write_bytes(b"\0" * 8)
    assert latest_checkpoint(tmp_path) == _round(tmp_path, 1)
    # killed between the round's rename and the pointer: the pointer lags, the round is good
    (tmp_path / "checkpoints" / "latest").write_text("round_0000")
    assert latest_checkpoint(tmp_path) == _round(tmp_path, 1)


def test_keep_checkpoints_never_deletes_the_only_intact_one(tmp_path) -> None:
    """Pruning keeps the newest intact round when every round it would keep is damaged (a disk
    that corrupts what it stores), and deletes damaged ones once a newer intact one exists."""
    _saved(tmp_path, 4)
    root = tmp_path / "checkpoints"
    for r in (2, 3):
        (_round(tmp_path, r) / CHECKPOINT_ADAPTER).write_bytes(b"bad")
    deleted = prune_checkpoints(root, keep=1)
    assert [p.name for p in deleted] == ["round_0000", "round_0002"]
    assert _rounds(tmp_path) == ["round_0001", "round_0003"]
    assert _restored_round(tmp_path) == 1
    aggregator = _aggregator(tmp_path, "experiment.keep_checkpoints=1")
    aggregator.set_global(adapter_to_bytes(_state(4)))
    aggregator.save_checkpoint(4, EXTRA)  # intact: now the damaged and older ones go
    assert _rounds(tmp_path) == ["round_0004"] and _restored_round(tmp_path) == 4
    assert sorted(p.name for p in root.iterdir()) == ["latest", "round_0004"]  # nothing hidden


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(small_disk) -> None:
    run_dir = small_disk.path
    aggregator = _saved(run_dir, 2, "experiment.keep_checkpoints=1")
    small_disk.fill(leave=0)
    aggregator.set_global(adapter_to_bytes(_state(2)))
    with pytest.raises(StorageError) as err:
        aggregator.save_checkpoint(2, EXTRA)
    message = str(err.value)
    assert "\n" not in message and "no space left" in message and "round_0002" in message
    assert f"firm-ray run --resume {run_dir}" in message
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "round_0001"]
    assert (run_dir / "checkpoints" / "latest").read_text() == "round_0001"
    assert find_resume_checkpoint(run_dir) == (_round(run_dir, 1), [])
    small_disk.free()
    aggregator.save_checkpoint(2, EXTRA)
    assert _rounds(run_dir) == ["round_0002"] and _restored_round(run_dir) == 2


def test_the_algorithms_selection_and_server_state_go_through_the_aggregator(tmp_path) -> None:
    """Aggregator.configure_round asks the algorithm (a dotted-path one defined in
    test_algorithms.py); its strategy state is saved in every checkpoint and restored."""
    name = "algorithm.name=test_algorithms:Counting"
    writer = _aggregator(tmp_path, name)
    assert writer.configure_round(0) == [0, 2, 4, 6] and writer.configure_round(1) == [1, 3, 5, 7]
    with pytest.raises(ValueError, match=r"configure_round\(-1\) returned \[8\]"):
        writer.configure_round(-1)  # a client id outside [0, 8)
    writer.set_global(adapter_to_bytes(_state(0)))
    writer.strategy.rounds = 5
    path = Path(writer.save_checkpoint(0, EXTRA))
    assert json.loads((path / "state.json").read_text())["strategy_state"] == {"rounds": 5}
    reader = _aggregator(tmp_path, name)
    reader.load_checkpoint(str(path))
    assert reader.strategy.rounds == 5
