"""The instruments of bench/faults.py, on real files: what counts as data lost or half-written,
the adapter comparison, the moments a fault may be drawn at, and the trace trigger."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import fault_kit  # noqa: E402
import faults  # noqa: E402


def _run_dir(root: Path, rounds: list[int], status: str | None = "completed") -> Path:
    run_dir = root / "run"
    (run_dir / "adapter").mkdir(parents=True)
    rows = [json.dumps({"round": r, "rewards": [0.5]}) for r in rounds]
    (run_dir / "metrics.jsonl").write_text("".join(row + "\n" for row in rows))
    if status is not None:
        (run_dir / "summary.json").write_text(json.dumps({"status": status}))
    return run_dir


def _adapter(run_dir: Path, tensors: dict[str, torch.Tensor], where: str = "adapter") -> None:
    path = run_dir / where
    path.mkdir(parents=True, exist_ok=True)
    name = "adapter_model.safetensors" if where == "adapter" else "adapter.safetensors"
    save_file(tensors, str(path / name))


def test_an_intact_run_lost_nothing(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, [0, 1, 2])
    _adapter(run_dir, {"a": torch.ones(3)})
    assert fault_kit.data_lost(run_dir, [0, 1, 2]) == []


def test_missing_duplicated_and_torn_rows(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, [0, 1, 1])
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 2, "rew')  # a row cut off by a kill
    lost = fault_kit.data_lost(run_dir, [0, 1, 2])
    assert lost == [
        "metrics rows missing for round(s) [3]",
        "metrics rows duplicated for round(s) [2]",
        "1 unparsable metrics line(s)",
    ]


@pytest.mark.parametrize("status", [None, "interrupted"])
def test_summary_missing_or_not_completed(tmp_path: Path, status: str | None) -> None:
    run_dir = _run_dir(tmp_path, [0], status=status)
    expected = "summary.json missing or unreadable" if status is None else "summary status"
    assert fault_kit.data_lost(run_dir, [0])[0].startswith(expected)


def test_half_written_files_and_temporaries(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, [0])
    (run_dir / "adapter" / "adapter_config.json").write_bytes(b"")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / ".rewards.png.1a2b3c4d.tmp").write_bytes(b"png")
    temp_round = run_dir / "checkpoints" / ".round_0001.5e6f7a8b.tmp"
    temp_round.mkdir(parents=True)
    (temp_round / "state.json").write_bytes(b"")  # inside a temporary: counted with it
    assert fault_kit.half_written(run_dir) == [
        "adapter/adapter_config.json (0 bytes)",
        "checkpoints/.round_0001.5e6f7a8b.tmp/ (temporary)",
        "plots/.rewards.png.1a2b3c4d.tmp (temporary)",
    ]
    assert fault_kit.half_written(run_dir)[0] in fault_kit.data_lost(run_dir, [0])


def test_adapter_comparison_tensor_by_tensor(tmp_path: Path) -> None:
    reference = _run_dir(tmp_path / "ref", [0])
    same = _run_dir(tmp_path / "same", [0])
    other = _run_dir(tmp_path / "other", [0])
    tensors = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    _adapter(reference, tensors)
    _adapter(same, {k: v.clone() for k, v in tensors.items()})
    flipped = tensors["a"].clone()
    flipped[3] = torch.nextafter(flipped[3], torch.tensor(10.0))  # one ulp
    _adapter(other, {"a": flipped, "b": tensors["b"]})
    assert fault_kit.adapter_difference(same, reference) == {
        "identical": True,
        "compared": "final",
        "tensors": 2,
        "differ": 0,
    }
    assert fault_kit.adapter_difference(other, reference)["differ"] == 1


def test_a_run_without_final_adapter_is_compared_on_its_newest_checkpoint(tmp_path: Path) -> None:
    reference = _run_dir(tmp_path / "ref", [0, 1])
    stopped = _run_dir(tmp_path / "stopped", [0], status="interrupted")
    for r in (0, 1):
        _adapter(reference, {"a": torch.full((2,), float(r))}, f"checkpoints/round_000{r}")
    _adapter(stopped, {"a": torch.zeros(2)}, "checkpoints/round_0000")
    (stopped / "adapter").rmdir()
    found = fault_kit.adapter_difference(stopped, reference)
    assert found["identical"] is True and found["compared"] == "checkpoint round_0000"


REFERENCE_EVENTS = [
    {"task": "evaluate", "round": None},
    *[{"task": "train", "round": 0, "client": c} for c in (0, 3)],
    {"task": "evaluate", "round": None},
    *[{"task": "train", "round": 1, "client": c} for c in (0, 3)],
    {"task": "evaluate", "round": None},
    *[{"task": "train", "round": 2, "client": c} for c in (3, 2)],
    {"task": "evaluate", "round": None},
    {"task": "adapter_files", "round": None},
]


def test_moments_after_checkpoints() -> None:
    assert faults.moments(REFERENCE_EVENTS, 0) == list(range(1, 11))
    # round 1's checkpoint is written before round 2's tasks start
    assert faults.moments(REFERENCE_EVENTS, 1) == list(range(4, 11))
    assert faults.moments(REFERENCE_EVENTS, 2) == list(range(7, 11))
    labels = [fault_kit.label(e, REFERENCE_EVENTS[:i]) for i, e in enumerate(REFERENCE_EVENTS)]
    assert labels[:4] == ["evaluate (start)", "train r1 c0", "train r1 c3", "evaluate after r1"]
    assert labels[-1] == "adapter_files after r3"


def test_trigger_acts_once_after_its_event_and_delay(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    acted: list[float] = []

    def act(line: dict, launched: object) -> str:
        acted.append(time.monotonic())
        return f"acted on {line['task']}"

    trigger = fault_kit.Trigger(trace, index=1, delay_s=0.2, act=act)
    trigger(None)  # no trace yet
    line = {"pid": 1, "worker": 0, "client": 0, "round": 0, "time": 0.0}
    with open(trace, "a") as fh:
        fh.write(json.dumps({**line, "task": "ready"}) + "\n")  # not a moment
        fh.write(json.dumps({**line, "task": "train"}) + "\n")
        fh.write(json.dumps({**line, "task": "evaluate"}) + "\n")
        fh.write('{"pid": 1, "task": "tra')  # being written
    trigger(None)
    seen = time.monotonic()
    assert trigger.line["task"] == "evaluate" and not acted
    while trigger.done is None:
        trigger(None)
        time.sleep(0.01)
    trigger(None)
    assert len(acted) == 1 and acted[0] - seen >= 0.19 and trigger.done == "acted on evaluate"
