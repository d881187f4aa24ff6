"""A disk that fills up mid-run, for real: the run's output directory is a tmpfs (root only; the
test is skipped where mounting is refused). Once round 0's checkpoint exists, a filler file takes
all but a few KiB, so a later write (a metrics row, a checkpoint, a plot) fails with the kernel's
ENOSPC. `firm-ray run` must end with one `error:` line naming the path, exit code 2, nothing
half-written (no empty file, no temporary file left); with the space freed, `--resume` completes
with the adapter of an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_world import TINY

from firm_ray.config import load_config
from firm_ray.runtime.checkpoint import latest_checkpoint
from firm_ray.runtime.loop import run

pytestmark = pytest.mark.e2e

DISK = 96 << 20  # above the pre-flight's 64 MiB floor


@pytest.fixture
def disk(tmp_path: Path):
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "firm_ray", "run", *args]


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_full_disk_fails_in_one_line_and_resume_completes(tmp_path: Path, disk: Path) -> None:
    settings = [*TINY, "federation.rounds=4"]
    reference = run(
        load_config(
            "tune_configs/quickstart.yaml",
            [f"experiment.output_dir={tmp_path}", "experiment.name=ref", *settings],
        )
    )
    cmd = _cli("tune_configs/quickstart.yaml")
    for item in [f"experiment.output_dir={disk}", "experiment.name=full", *settings]:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = disk / "full"
    deadline = time.time() + 600
    while latest_checkpoint(run_dir) is None:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "round 0 never finished"
        time.sleep(0.05)
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as fh:  # all but 8 KiB: the next checkpoint cannot fit
        fh.write(b"\0" * (free - (8 << 10)))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, out[-3000:] + err[-3000:]
    errors = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-3000:] + err[-3000:]
    assert "no space left" in errors[0] and str(run_dir) in errors[0], errors[0]
    assert "Traceback" not in out + err
    leftovers = [
        p
        for p in run_dir.rglob("*")
        if p.is_file() and (p.stat().st_size == 0 or p.name.startswith(".") or ".tmp" in p.name)
    ]
    assert not leftovers, leftovers
    assert not (run_dir / "adapter").exists()

    (disk / "filler").unlink()
    resumed = subprocess.run(_cli("--resume", str(run_dir)), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    a, b = _adapter(Path(reference["run_dir"])), _adapter(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
