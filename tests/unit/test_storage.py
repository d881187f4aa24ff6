"""Storage faults with real files: a full disk (tmpfs, or os.write cut short where mounting is
refused), a read-only directory, a file size limit in a child process, eight processes racing
for one run name. Nothing half-written is ever left under an artifact's name, and every disk
error is one line naming the path and what to do."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import disk_faults
import pytest
from disk_faults import Disk
from test_tracking import PNG_SIGNATURE, write_run

from firm_ray.tracking import JsonlTracker, make_plots, read_metrics
from firm_ray.tracking.storage import (
    StorageError,
    atomic_write_bytes,
    atomic_write_text,
    fresh_dir,
    storage_errors,
    storage_message,
    write_dir_atomically,
)

BIG = 2 << 20  # twice the small disk
small_disk, read_only_dir = disk_faults.small_disk, disk_faults.read_only_dir  # fixtures


def _one_line(err: pytest.ExceptionInfo[StorageError], path: Path, *words: str) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------- atomic files
def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path) -> None:
    target = tmp_path / "a" / "summary.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, memoryview(b"new content"))
    assert target.read_text() == "new content"
    assert _entries(target.parent) == ["summary.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0o600


def test_a_full_disk_keeps_the_old_file(small_disk: Disk) -> None:
    target = small_disk.path / "summary.json"
    atomic_write_text(target, "old")
    with pytest.raises(StorageError) as err:
        atomic_write_bytes(target, b"x" * BIG, resume=small_disk.path)
    _one_line(
        err, target, "no space left", "free space", f"firm-ray run --resume {small_disk.path}"
    )
    assert err.value.errno == errno.ENOSPC
    assert target.read_text() == "old"
    assert _entries(small_disk.path) == ["summary.json"]  # the temporary file is gone


def test_a_full_disk_leaves_no_new_file(small_disk: Disk) -> None:
    with pytest.raises(StorageError):
        atomic_write_bytes(small_disk.path / "plot.png", b"x" * BIG)
    assert _entries(small_disk.path) == []


def test_write_dir_replaces_a_directory_only_when_the_new_one_is_complete(small_disk) -> None:
    adapter = small_disk.path / "adapter"
    write_dir_atomically(adapter, {"adapter_config.json": b"{}", "adapter_model.bin": b"old"})
    with pytest.raises(StorageError) as err:
        write_dir_atomically(
            adapter,
            {"adapter_config.json": b'{"r": 8}', "adapter_model.bin": b"x" * BIG},
            what="the final adapter",
        )
    _one_line(err, adapter, "no space left", "the final adapter")
    assert (adapter / "adapter_config.json").read_bytes() == b"{}"
    assert (adapter / "adapter_model.bin").read_bytes() == b"old"
    assert _entries(small_disk.path) == ["adapter"]  # no temporary sibling left
    small_disk.free()
    write_dir_atomically(adapter, {"adapter_config.json": b'{"r": 8}', "sub/w.bin": b"new"})
    assert _entries(adapter) == ["adapter_config.json", "sub"]
    assert (adapter / "sub" / "w.bin").read_bytes() == b"new"
    assert _entries(small_disk.path) == ["adapter"]  # the old directory is deleted


@pytest.mark.parametrize("name", ["/etc/x", "../x", "a/../../x", ""])
def test_write_dir_refuses_names_outside_the_directory(tmp_path, name) -> None:
    with pytest.raises(ValueError, match="relative"):
        write_dir_atomically(tmp_path / "d", {name: b""})
    assert not (tmp_path / "d").exists()


def test_a_read_only_directory_is_one_line(read_only_dir: Path) -> None:
    target = read_only_dir / "runs" / "config.yaml"
    with pytest.raises(StorageError) as err:
        atomic_write_text(target, "x", what="config.yaml")
    code = err.value.errno
    assert code in (errno.EROFS, errno.EACCES)
    words = ("read-only file system",) if code == errno.EROFS else ("permission denied",)
    _one_line(err, target, *words, "experiment.output_dir")
    with pytest.raises(StorageError, match="the run directory"):
        fresh_dir(read_only_dir / "quickstart")
    with pytest.raises(StorageError):
        write_dir_atomically(read_only_dir / "adapter", {"a": b"1"})
    assert _entries(read_only_dir) == []


def test_a_file_size_limit_in_a_child_process(tmp_path) -> None:
    """RLIMIT_FSIZE: the kernel refuses to grow a file past it (EFBIG; Python ignores SIGXFSZ)."""
    target = tmp_path / "metrics.json"
    target.write_text("old")
    code = textwrap.dedent(
        f"""
        import resource
        from firm_ray.tracking.storage import StorageError, atomic_write_bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            atomic_write_bytes({str(target)!r}, b"x" * 10000)
        except StorageError as err:
            print(err)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    message = done.stdout.strip()
    assert "\n" not in message and str(target) in message and "file size limit" in message
    assert "ulimit -f" in message
    assert target.read_text() == "old" and _entries(tmp_path) == ["metrics.json"]


# ------------------------------------------------------------------------- messages
@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, ["no space left on the device holding", "free space, then"]),
        (errno.EDQUOT, ["disk quota exceeded", "quota"]),
        (errno.EFBIG, ["file size limit", "ulimit -f"]),
        (errno.EROFS, ["read-only file system", "experiment.output_dir"]),
        (errno.EACCES, ["permission denied", "writable by this user"]),
        (errno.EPERM, ["not permitted", "writable by this user"]),
        (errno.EIO, ["I/O error", "check the device"]),
    ],
)
def test_every_disk_error_is_one_line(code, words) -> None:
    path = Path("/data/runs/qs/checkpoints/round_0003")
    context = storage_errors(path, "checkpoint round_0003", resume="/data/runs/qs")
    with pytest.raises(StorageError) as err, context:
        raise OSError(code, os.strerror(code), str(path) + ".tmp")
    message = str(err.value)
    assert message == storage_message(code, path, "checkpoint round_0003", "/data/runs/qs")
    assert "\n" not in message and str(path) in message and "checkpoint round_0003" in message
    assert ".tmp" not in message  # the final name, not the temporary one
    for word in words:
        assert word in message
    again = pickle.loads(pickle.dumps(err.value))  # crosses the Ray actor boundary intact
    assert (str(again), again.errno, again.path) == (message, code, str(path))


def test_other_errors_pass_through() -> None:
    with pytest.raises(FileNotFoundError), storage_errors("/x", "x"):
        raise FileNotFoundError(errno.ENOENT, "gone")
    with pytest.raises(ValueError), storage_errors("/x", "x"):
        raise ValueError("not a disk error")


# ------------------------------------------------------------------------- metrics and plots
def test_a_failed_metrics_append_leaves_no_torn_line(small_disk: Disk) -> None:
    tracker = JsonlTracker(small_disk.path)
    tracker.log_round(0, {"param_drift": 0.5})
    before = (small_disk.path / "metrics.jsonl").read_bytes()
    small_disk.fill(leave=4096)
    with pytest.raises(StorageError) as err:
        tracker.log_round(1, {"note": "x" * 20_000})
    _one_line(err, small_disk.path / "metrics.jsonl", "no space left", "round 1")
    assert (small_disk.path / "metrics.jsonl").read_bytes() == before
    small_disk.free()
    tracker.log_round(1, {"param_drift": 0.25})  # usable again once space is freed
    tracker.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn last line to skip
        rows = read_metrics(small_disk.path)
    assert rows == [{"round": 0, "param_drift": 0.5}, {"round": 1, "param_drift": 0.25}]


def test_plots_on_a_full_disk_leave_no_partial_png(small_disk: Disk) -> None:
    """The user's report: a 0-byte plot after a full disk. Now no PNG at all, then, once space
    is freed, complete ones; a later full disk keeps them as they were."""
    write_run(small_disk.path, 2)
    small_disk.fill(leave=0)
    with pytest.raises(StorageError) as err:
        make_plots(small_disk.path)
    _one_line(err, small_disk.path / "plots", "no space left", "plot")
    assert not list(small_disk.path.glob("plots/*"))
    small_disk.free()
    paths = make_plots(small_disk.path)
    before = {p.name: p.read_bytes() for p in paths}
    assert all(data[:8] == PNG_SIGNATURE for data in before.values())
    small_disk.fill(leave=8192)
    with pytest.raises(StorageError):
        make_plots(small_disk.path)
    assert {p.name: p.read_bytes() for p in paths} == before
    assert _entries(small_disk.path / "plots") == sorted(before)


# ------------------------------------------------------------------------- fresh_dir
def test_fresh_dir_never_reuses_a_directory(tmp_path) -> None:
    first = fresh_dir(tmp_path / "runs" / "qs")
    (tmp_path / "runs" / "qs-2").write_text("a file takes the name too")
    assert (first.name, fresh_dir(tmp_path / "runs" / "qs").name) == ("qs", "qs-3")


def test_eight_processes_racing_for_one_name_get_eight_directories(tmp_path) -> None:
    go, ready = tmp_path / "go", tmp_path / "ready"
    ready.mkdir()
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from firm_ray.tracking.storage import fresh_dir
        open(os.path.join({str(ready)!r}, sys.argv[1]), "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.0002)
        print(fresh_dir({str(tmp_path / "runs" / "qs")!r}))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    deadline = time.monotonic() + 300  # generous: 2 shared cores
    while len(list(ready.iterdir())) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # all eight start at once
    outputs = [proc.communicate(timeout=300)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 8
    names = sorted(Path(line).name for line in outputs)
    assert names == sorted(["qs", *(f"qs-{n}" for n in range(2, 9))])
