"""bench/memory.py stays alive in CI: ``--quick`` measures every row of its plan, today's path
from the old commit and the new one from this tree (the issue's target lives in the bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "memory.py"
OLD_COMMIT = "3ca7dd7"


def _has_commit(commit: str) -> bool:
    probe = ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.e2e
@pytest.mark.skipif(not _has_commit(OLD_COMMIT), reason="shallow clone: no commit 3ca7dd7")
def test_quick_bench_measures_every_row(tmp_path) -> None:
    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(BENCH), "--quick", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"]["vocab"] == 151936 and result["model"]["layers"] == 2
    assert result["old_commit"].startswith(OLD_COMMIT)
    rows = result["rows"]
    shape = [(r["path"], r["sequences"], r["micro_batch"]) for r in rows]
    assert shape == [("today", 4, None), ("new", 4, 2), ("new", 4, 4), ("new", 8, 2)]
    assert rows[0]["firm_ray_root"] != str(ROOT)  # the old code, exported from git
    assert all(r["firm_ray_root"] == str(ROOT) for r in rows[1:])
    assert rows[0]["chunk_tokens"] is None and all(r["chunk_tokens"] > 0 for r in rows[1:])
    for r in rows:
        assert r["valid"] and r["skipped_steps"] == 0.0
        assert r["new_tokens_generated"] == 8 and 0.0 <= r["truncated_fraction"] <= 1.0
        assert r["prompt_tokens"] == 17  # ChatML around 12 words: the tokenizer read them
        assert r["step_peak_mb"] > 0 and r["step_s"] > 0
        assert r["step_peak_mb"] == max(r["generate_peak_mb"], r["after_generate_peak_mb"])
    assert "Peak memory of one local step" in proc.stdout
