"""Real disk faults for the storage tests: a small disk that fills up, a read-only directory.

A plain module next to the tests (pytest's default import mode puts this directory on sys.path);
its fixtures are imported by the test modules that use them.

- ``small_disk``: a 1 MiB tmpfs mounted under the test's tmp dir, so a write past it fails with
  a real ENOSPC from the kernel. Mounting needs root (CAP_SYS_ADMIN); where it is refused (an
  unprivileged CI), the same capacity is enforced by wrapping ``os.write``, the lowest write call
  every firm_ray writer uses: writes to files under the disk's path are cut short at the
  capacity and the next one raises OSError(ENOSPC), as the kernel does. ``Disk.mode`` says which.
- ``read_only_dir``: a directory where writes fail for real: a tmpfs remounted read-only (EROFS)
  when running as root (root ignores chmod), ``chmod 0o500`` (EACCES) otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CAPACITY = 1 << 20


def _mount_tmpfs(path: Path, size: int, *options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    opts = ",".join([f"size={size}", *options])
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _used(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@dataclass
class Disk:
    """A directory on a small disk. ``fill(leave)`` takes all but ``leave`` bytes of free space
    with a filler file; ``free()`` deletes it."""

    path: Path
    mode: str  # "tmpfs" (real ENOSPC from the kernel) or "injected" (os.write wrapped)

    def free_bytes(self) -> int:
        if self.mode == "tmpfs":
            st = os.statvfs(self.path)
            return st.f_bavail * st.f_frsize
        return CAPACITY - _used(self.path)

    def fill(self, leave: int = 0) -> None:
        filler = self.path / "filler"
        size = max(self.free_bytes() - leave, 0)
        with open(filler, "ab") as fh:
            fh.write(b"\0" * size)

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    path = tmp_path / "disk"
    path.mkdir()
    if _mount_tmpfs(path, CAPACITY):
        try:
            yield Disk(path, "tmpfs")
        finally:
            _unmount(path)
        return
    real_write = os.write
    root = str(path)

    def write(fd: int, data) -> int:  # the kernel's ENOSPC: a short write, then the error
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return real_write(fd, data)
        if not target.startswith(root + os.sep):
            return real_write(fd, data)
        free = CAPACITY - _used(path)
        if free <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, memoryview(data).cast("B")[:free])

    monkeypatch.setattr(os, "write", write)
    yield Disk(path, "injected")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An existing, empty directory that refuses writes (EROFS as root, EACCES otherwise)."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() == 0:
        if not _mount_tmpfs(path, CAPACITY, "ro"):
            pytest.skip("running as root (chmod does not stop root) and cannot mount a tmpfs")
        try:
            yield path
        finally:
            _unmount(path)
        return
    path.chmod(0o500)
    try:
        yield path
    finally:
        path.chmod(0o700)
