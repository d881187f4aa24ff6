"""Round checkpoints on disk: written atomically, verified by a manifest, resumed from the newest
intact one.

Layout (docs/ARTIFACTS.md): ``checkpoints/round_NNNN/`` holds ``adapter.safetensors``,
``state.json`` and ``manifest.json`` (every other file's size and sha256, written last), and
``checkpoints/latest`` names the newest round. A round directory appears only complete (written
beside its final name, then renamed), so the manifest is not about torn writes: it catches what
happens to a checkpoint afterwards (a truncated copy, a flipped byte, a damaged disk), which
would otherwise resume a run from a wrong adapter without a word.

Resume walks the round directories newest first and takes the first that verifies, naming each
newer one it skipped and why; a checkpoint from a firm_ray version that wrote no manifest is
used if it loads, and the resume says it was not verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from firm_ray.tracking.storage import (
    atomic_write_text,
    remove_dir_atomically,
    storage_errors,
    write_dir_atomically,
)

CHECKPOINT_ADAPTER = "adapter.safetensors"
CHECKPOINT_STATE = "state.json"
CHECKPOINT_MANIFEST = "manifest.json"
LATEST = "latest"
MANIFEST_FORMAT = 1

Bytes = bytes | bytearray | memoryview


class CheckpointError(ValueError):
    """A checkpoint directory is damaged; ``str(err)`` says which file and how (one line)."""


def _sha256(data: Bytes) -> str:
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def build_manifest(files: Mapping[str, Bytes]) -> dict[str, Any]:
    """The manifest of a checkpoint's files: name -> size and sha256 of the exact bytes."""
    return {
        "format": MANIFEST_FORMAT,
        "files": {
            name: {"size": memoryview(data).nbytes, "sha256": _sha256(data)}
            for name, data in files.items()
        },
    }


def round_checkpoints(root: Path) -> list[Path]:
    """The round checkpoint directories under ``root`` (checkpoints/) that have a state.json,
    oldest first, in numeric order (``round_10000`` after ``round_9999``). Temporary and
    half-deleted directories are hidden (``.round_...``) and never listed. Not verified."""
    found = []
    for path in root.glob("round_*"):
        number = path.name.removeprefix("round_")
        if number.isdigit() and (path / CHECKPOINT_STATE).exists():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def write_checkpoint(
    run_dir: Path,
    round_index: int,
    adapter: Bytes,
    state: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write ``checkpoints/round_NNNN/`` (the adapter's safetensors bytes, ``state`` as JSON,
    the manifest last) atomically, point ``checkpoints/latest`` at it (atomically), then delete
    rounds beyond the newest ``keep`` (never the only intact one). Returns the directory; a disk
    error raises a one-line StorageError and leaves the previous checkpoints as they were."""
    root = run_dir / "checkpoints"
    final = root / f"round_{round_index:04d}"
    files: dict[str, Bytes] = {
        CHECKPOINT_ADAPTER: adapter,
        CHECKPOINT_STATE: json.dumps(state, indent=2).encode("utf-8"),
    }
    files[CHECKPOINT_MANIFEST] = json.dumps(build_manifest(files), indent=2).encode("utf-8")
    what = f"checkpoint {final.name}"
    _remove_stale_temporaries(root, run_dir)
    write_dir_atomically(final, files, what=what, resume=run_dir)
    atomic_write_text(root / LATEST, final.name, what=f"{what} (latest)", resume=run_dir)
    if keep is not None:
        prune_checkpoints(root, keep)
    return final


def _remove_stale_temporaries(root: Path, run_dir: Path) -> None:
    """Delete what a killed writer left (``.round_*`` temporaries): one writer per run
    directory (the Aggregator), so none of them is in use."""
    if not root.is_dir():
        return
    with storage_errors(root, "stale checkpoint temporaries", resume=run_dir):
        for path in [*root.glob(".round_*"), *root.glob(f".{LATEST}.*")]:
            if path.is_dir():
                remove_dir_atomically(path)
            else:
                path.unlink(missing_ok=True)


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` round checkpoints, except that the newest intact one
    is always kept (when the kept ones are all damaged, it survives among the older ones).
    Each is renamed away before it is deleted, so none is ever seen half-deleted. Returns the
    directories deleted."""
    rounds = round_checkpoints(root)
    older, kept = rounds[:-keep], rounds[-keep:]
    if not any(_intact(path) for path in kept):
        spare = next((p for p in reversed(older) if _intact(p)), None)
        older = [p for p in older if p != spare]
    for path in older:
        with storage_errors(path, f"deleting old checkpoint {path.name}"):
            remove_dir_atomically(path)
    return older


def _intact(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointError:
        return False
    return True


def verify_checkpoint(directory: str | os.PathLike[str]) -> str:
    """Check a round checkpoint: every file in its manifest present with the recorded size and
    sha256, and state.json a JSON object with a round. Raises CheckpointError (one line: which
    file, what is wrong). Returns ``""`` when verified, or a note when the checkpoint has no
    manifest (written by a firm_ray before manifests) and was accepted because it loads."""
    directory = Path(directory)
    manifest_path = directory / CHECKPOINT_MANIFEST
    if not manifest_path.exists():
        _check_loads(directory)
        return "no manifest (written by an older firm_ray): it loads, so it is used unverified"
    try:
        manifest = json.loads(manifest_path.read_bytes())
        entries = manifest["files"]
        if not isinstance(entries, dict) or not entries:
            raise ValueError("no files listed")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{CHECKPOINT_MANIFEST} unreadable ({_reason(exc)})") from None
    for name in (CHECKPOINT_ADAPTER, CHECKPOINT_STATE):
        if name not in entries:
            raise CheckpointError(f"{CHECKPOINT_MANIFEST} does not list {name}")
    for name, entry in entries.items():
        _check_file(directory / name, entry)
    _check_state(directory)
    return ""


def _check_file(path: Path, entry: Any) -> None:
    """One manifest entry against the file: size, then sha256 (streamed, not read whole)."""
    name = path.name
    size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (0, 0)
    if not isinstance(size, int) or not isinstance(digest, str):
        raise CheckpointError(f"{CHECKPOINT_MANIFEST} entry of {name} unreadable")
    try:
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"{name} is {actual:,} bytes, the manifest says {size:,}")
        with path.open("rb") as fh:
            if hashlib.file_digest(fh, "sha256").hexdigest() != digest:
                raise CheckpointError(f"{name} sha256 mismatch")
    except FileNotFoundError:
        raise CheckpointError(f"{name} missing") from None
    except OSError as exc:
        raise CheckpointError(f"{name} unreadable ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _check_state(directory: Path) -> dict[str, Any]:
    try:
        state = json.loads((directory / CHECKPOINT_STATE).read_bytes())
        if not isinstance(state, dict) or not isinstance(state.get("round"), int):
            raise ValueError("not an object with an integer 'round'")
    except FileNotFoundError:
        raise CheckpointError(f"{CHECKPOINT_STATE} missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{CHECKPOINT_STATE} does not load ({_reason(exc)})") from None
    return state


def _check_loads(directory: Path) -> None:
    """A checkpoint without a manifest: its state.json parses and its adapter loads."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_state(directory)
    path = directory / CHECKPOINT_ADAPTER
    if not path.exists():
        raise CheckpointError(f"{CHECKPOINT_ADAPTER} missing")
    try:
        load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{CHECKPOINT_ADAPTER} does not load ({_reason(exc)})") from None


def find_resume_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[Path | None, list[str]]:
    """The newest intact round checkpoint of a run (None if there is none) and one line per
    checkpoint skipped on the way (``"skipped round_0003: adapter.safetensors sha256
    mismatch"``), plus a note when the one taken has no manifest. All round directories are
    considered, not only the one ``latest`` names: a run killed between writing a round and
    its pointer, or a pointer naming a damaged round, still resumes from the newest good one."""
    root = Path(run_dir) / "checkpoints"
    messages: list[str] = []
    for path in reversed(round_checkpoints(root)):
        try:
            note = verify_checkpoint(path)
        except CheckpointError as exc:
            messages.append(f"skipped {path.name}: {exc}")
            continue
        if note:
            messages.append(f"{path.name}: {note}")
        return path, messages
    return None, messages


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of a run, or None (see ``find_resume_checkpoint``)."""
    return find_resume_checkpoint(run_dir)[0]
