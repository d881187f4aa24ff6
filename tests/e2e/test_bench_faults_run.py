"""bench/faults.py stays alive in CI: ``--quick`` (the reference run, then one SIGKILLed
ClientWorker and one SIGKILLed aggregator, each at a seeded random moment) prints its table and
writes the JSON every fault row and trial record of the full bench has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {
    "fault",
    "trials",
    "injected",
    "completed",
    "identical_adapter",
    "data_lost",
    "one_line_error",
    "fault_in_metrics",
    "left_running",
    "seconds_per_trial",
    "bench_errors",
}


def test_quick_bench_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    cmd = [sys.executable, "bench/faults.py", "--quick", "--out", str(out)]
    cmd += ["--work-dir", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Faults on the tiny quickstart" in proc.stdout
    for column in ("completed", "identical adapter", "data lost", "one-line error", "s / trial"):
        assert column in proc.stdout, column
    result = json.loads(out.read_text())
    assert result["trials"] == 1 and result["rounds"] == 3
    assert result["reference"]["rounds"] == [0, 1, 2]
    assert result["reference"]["moments"][0] == "evaluate (start)"
    rows = {row["fault"]: row for row in result["rows"]}
    assert set(rows) == {"worker_kill", "aggregator_kill"}
    for row in rows.values():
        assert set(row) == ROW_KEYS and row["trials"] == 1 and row["bench_errors"] == 0
        assert row["one_line_error"] == "n/a"  # no error line is expected from these faults
    records = result["records"]
    assert [r["fault"] for r in records] == ["worker_kill", "aggregator_kill"]
    for record in records:
        assert record["moment"]["reference"] in result["reference"]["moments"]
        assert 0.0 <= record["moment"]["delay_s"] <= 0.3
        assert record["processes"][0]["process"] == "run"
        assert set(record["faults_logged"]) == {"worker_restarts", "aggregator_restarts", "events"}
        if record["injected"]:
            assert isinstance(record["fault_recorded"], bool)
        assert isinstance(record["adapter"]["identical"], bool)
        assert isinstance(record["data_lost"], list)
    # a second bench with the same seed draws the same moments (the timing is reproducible)
    assert [r["moment"]["index"] for r in records] == _draws(result)


def _draws(result: dict) -> list[int]:
    """The moments the bench's seeded draw picks, recomputed from its reference's moments."""
    import random

    sys.path.insert(0, str(ROOT / "bench"))
    import faults

    events = []
    for name in result["reference"]["moments"]:  # "train r2 c3", "evaluate after r1", ...
        task = name.split()[0]
        events.append(
            {"task": task, "round": int(name.split()[1][1:]) - 1 if task == "train" else None}
        )
    found = []
    for record in result["records"]:
        fault = next(f for f in faults.FAULTS if f.key == record["fault"])
        rng = random.Random(f"{result['seed']}:{fault.key}:{record['trial']}")
        found.append(rng.choice(faults.moments(events, fault.after_checkpoints)))
    return found
