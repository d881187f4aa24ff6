"""Crash- and disk-safe writes for every run artifact.

A run may be killed, or its disk may fill up, at any byte. Two rules keep its directory usable:

- **Atomic artifacts.** A file (or a directory of files) is written under a temporary name
  beside its final one, fsynced, then renamed into place, so a reader (``firm-ray report``, a
  resume, PEFT) sees the old artifact or the new one, never a 0-byte or half-written one. A
  failed write removes its temporary file: nothing half-written is left under any name.
- **One line per disk error.** ENOSPC, EDQUOT, EFBIG, EROFS, EACCES, EPERM and EIO become a
  :class:`StorageError` naming the path, what was being written and what to do, instead of a
  chain of tracebacks.

``fresh_dir`` claims a new run directory race-free, so concurrent runs with the same name get
distinct directories. No Ray, no torch: every layer above ``tracking`` may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = [
    "StorageError",
    "atomic_write_bytes",
    "atomic_write_text",
    "fresh_dir",
    "fsync_dir",
    "remove_dir_atomically",
    "storage_errors",
    "write_dir_atomically",
]

Bytes = bytes | bytearray | memoryview

# errno -> the problem, in words; the advice is added by storage_message
_DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device holding {path}",
    errno.EDQUOT: "disk quota exceeded on the device holding {path}",
    errno.EFBIG: "file size limit reached writing {path}",
    errno.EROFS: "{path} is on a read-only file system",
    errno.EACCES: "permission denied writing {path}",
    errno.EPERM: "operation not permitted writing {path}",
    errno.EIO: "I/O error writing {path}",
}


class StorageError(RuntimeError):
    """A write to the run's storage failed for a reason the user must fix (disk full, read-only,
    no permission). ``str(err)`` is one line: the path, what was written, what to do.
    ``errno`` and ``path`` are kept for callers that branch on them."""

    def __init__(self, message: str, *, path: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.path, self.errno = path, errno

    def __reduce__(self):  # keep path/errno across pickling (Ray actor -> driver)
        return (_rebuild_storage_error, (str(self), self.path, self.errno))


def _rebuild_storage_error(message: str, path: str, code: int | None) -> StorageError:
    return StorageError(message, path=path, errno=code)


def storage_message(
    code: int, path: str | os.PathLike[str], what: str, resume: str | os.PathLike[str] | None
) -> str:
    """The one-line message for a disk error ``code`` writing ``what`` to ``path``."""
    path = os.fspath(path)
    again = f"`firm-ray run --resume {os.fspath(resume)}`" if resume is not None else "run again"
    problem = _DISK_ERRORS[code].format(path=path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        todo = f"free space, then {again}"
    elif code == errno.EFBIG:
        todo = f"raise the file size limit (ulimit -f), then {again}"
    elif code == errno.EROFS:
        todo = "set experiment.output_dir to a writable directory"
        todo += f" (or remount it read-write, then {again})" if resume is not None else ""
    elif code in (errno.EACCES, errno.EPERM):
        owner = Path(path).parent
        todo = f"make {owner} writable by this user or set experiment.output_dir elsewhere"
    else:
        todo = f"check the device, then {again}"
    return f"{problem} ({what}): {todo}"


@contextlib.contextmanager
def storage_errors(
    path: str | os.PathLike[str], what: str, *, resume: str | os.PathLike[str] | None = None
) -> Iterator[None]:
    """Turn a disk error (full, quota, size limit, read-only, permission, I/O) raised inside the
    block into a one-line :class:`StorageError` about ``path``; ``resume`` (a run directory)
    adds the resume command to the advice. Other OSErrors pass through unchanged."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        message = storage_message(exc.errno, path, what, resume)
        raise StorageError(message, path=os.fspath(path), errno=exc.errno) from exc


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Persist the entries of a directory (a rename inside it); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: Bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_file(path: Path, data: Bytes) -> None:
    """Create ``path`` (must not exist; mode 0o666 less the umask), write ``data``, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_sibling(path: Path, suffix: str) -> Path:
    """A hidden, unused name beside ``path`` (``.NAME.RANDOM.SUFFIX``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{suffix}")


def _make_temp_dir(path: Path, suffix: str) -> Path:
    while True:
        tmp = _temp_sibling(path, suffix)
        try:
            tmp.mkdir()  # 0o777 less the umask, like any directory the user creates
        except FileExistsError:
            continue
        return tmp


def atomic_write_bytes(
    path: str | os.PathLike[str],
    data: Bytes,
    *,
    what: str | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it onto ``path`` and
    fsync the directory: a reader sees the old file or the new one. On any failure the temporary
    file is removed and the old file (if any) is untouched; disk errors raise StorageError."""
    path = Path(path)
    with storage_errors(path, what or path.name, resume=resume):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(path, "tmp")
        try:
            _write_file(tmp, data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    return path


def atomic_write_text(
    path: str | os.PathLike[str],
    text: str,
    *,
    what: str | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> Path:
    """``atomic_write_bytes`` of ``text`` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), what=what, resume=resume)


def _check_name(name: str) -> None:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"file name {name!r} must be relative and stay inside the directory")


def write_dir_atomically(
    directory: str | os.PathLike[str],
    files: Mapping[str, Bytes],
    *,
    what: str | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``files`` (relative name -> content, written in the mapping's order) as the whole
    content of ``directory``: into a temporary sibling, every file and the directory fsynced,
    then renamed into place. An existing ``directory`` is replaced only once the new one is
    complete: swapped in one step where Linux allows (renameat2 RENAME_EXCHANGE), else moved
    aside just before the new one is moved in; then deleted. On failure the temporary sibling is
    removed and the old directory is untouched; disk errors raise StorageError."""
    directory = Path(directory)
    for name in files:
        _check_name(name)
    with storage_errors(directory, what or f"{directory.name}/", resume=resume):
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = _make_temp_dir(directory, "tmp")
        try:
            for name, content in files.items():
                target = tmp / name
                if target.parent != tmp:
                    target.parent.mkdir(parents=True, exist_ok=True)
                _write_file(target, content)
            for sub in sorted({(tmp / n).parent for n in files}, key=lambda p: -len(p.parts)):
                fsync_dir(sub)
            if directory.exists() and _exchange(tmp, directory):
                old = tmp  # the swap left the old directory under the temporary name
            elif directory.exists():  # no atomic exchange here: move aside, then move in
                old = _make_temp_dir(directory, "old")
                os.replace(directory, old / directory.name)
                try:
                    os.replace(tmp, directory)
                except BaseException:  # put the old one back: never leave no directory
                    os.replace(old / directory.name, directory)
                    old.rmdir()
                    raise
            else:
                old = None
                os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported, so
    the caller falls back to two renames."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def remove_dir_atomically(directory: str | os.PathLike[str]) -> None:
    """Delete ``directory`` so that no half-deleted copy is ever visible under its name: rename
    it to a hidden sibling first, then delete that."""
    directory = Path(directory)
    trash = _make_temp_dir(directory, "del")
    os.replace(directory, trash / directory.name)
    shutil.rmtree(trash)


def fresh_dir(path: str | os.PathLike[str]) -> Path:
    """Create and return a new, empty directory ``path``, or ``path-2``, ``path-3``, ... when it
    exists: never an existing run's directory. Race-free (``mkdir`` fails if another process
    created the name first, and the next name is tried), so N concurrent processes asking for
    the same name get N distinct directories. Disk errors raise StorageError."""
    path = Path(path)
    with storage_errors(path, "the run directory"):
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                n += 1
                continue
            return candidate
