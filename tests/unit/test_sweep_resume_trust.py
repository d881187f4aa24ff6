"""`sweep --resume` loads Ray Tune's pickles: it refuses a directory another user could write.

Each sweep directory is frozen the way `run_sweep` freezes one (sweep.yaml + base_config.yaml),
with a crafted `tune/tuner.pkl` that creates a marker file when unpickled: a refused resume
must raise a one-line SweepError before anything is read, so the marker never appears and no
Ray starts.
"""

from __future__ import annotations

import grp
import os
import pickle
import pwd
from pathlib import Path

import pytest
import ray

from firm_ray.runtime.sweep import SweepError, _write_spec, check_resume_dir, resume_sweep
from firm_ray.sweep_spec import load_sweep

REPO = Path(__file__).resolve().parents[2]
OTHER_UID = 65534  # nobody


class _Payload:
    """Unpickling this runs code: what a crafted tuner.pkl does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A frozen sweep directory, private to this user, with a code-running tuner.pkl."""
    path = tmp_path / "sweeps" / "crafted"
    (path / "tune").mkdir(parents=True)
    source = REPO / "tune_configs" / "sweep_beta.yaml"
    _write_spec(load_sweep(source), path, source)
    (path / "tune" / "tuner.pkl").write_bytes(pickle.dumps(_Payload(tmp_path / "marker")))
    (path / "trials" / "t0").mkdir(parents=True)
    (path / "trials" / "t0" / "config.yaml").write_text("{}\n")
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chmod(name, os.stat(name).st_mode & ~0o022)
    return path


def refused(path: Path, marker: Path) -> str:
    with pytest.raises(SweepError) as err:
        resume_sweep(path)
    message = str(err.value)
    assert "\n" not in message and "tuner.pkl" in message and "can run any code" in message
    assert not marker.exists(), "the crafted pickle ran"
    assert not ray.is_initialized()
    return message


def test_private_sweep_dir_is_accepted(sweep_dir: Path) -> None:
    assert check_resume_dir(sweep_dir) == sweep_dir.resolve()


def shared_group(path: Path) -> None:
    """Give ``path`` a group other users can be in (root: nogroup; else the primary group,
    unless that is the user's private group, which other users cannot join)."""
    if os.getuid() == 0:
        os.chown(path, -1, OTHER_UID)
    elif _own_private_group(path.stat().st_gid):
        pytest.skip("the primary group is user-private and only root can chgrp to another")


def _own_private_group(gid: int) -> bool:
    user = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(gid)
    others = [p for p in pwd.getpwall() if p.pw_gid == gid and p.pw_uid != user.pw_uid]
    return group.gr_name == user.pw_name and not set(group.gr_mem) - {user.pw_name} and not others


def test_group_writable_tuner_pkl_is_refused(sweep_dir: Path, tmp_path: Path) -> None:
    pkl = sweep_dir / "tune" / "tuner.pkl"
    shared_group(pkl)
    pkl.chmod(0o664)
    message = refused(sweep_dir, tmp_path / "marker")
    assert f"{pkl.resolve()} is writable by its group" in message and "0664" in message


def test_world_writable_sweep_dir_is_refused(sweep_dir: Path, tmp_path: Path) -> None:
    sweep_dir.chmod(0o777)
    message = refused(sweep_dir, tmp_path / "marker")
    assert f"{sweep_dir.resolve()} is writable by others (mode 0777)" in message


def test_group_writable_tune_dir_is_refused(sweep_dir: Path, tmp_path: Path) -> None:
    shared_group(sweep_dir / "tune")
    (sweep_dir / "tune").chmod(0o775)
    assert "tune is writable by its group" in refused(sweep_dir, tmp_path / "marker")


def test_group_writable_in_a_user_private_group_is_accepted(sweep_dir: Path) -> None:
    """umask 002 with user-private groups (Debian, Ubuntu): nobody else is in the group."""
    pkl = sweep_dir / "tune" / "tuner.pkl"
    if not _own_private_group(pkl.stat().st_gid):
        pytest.skip("this user's primary group has other members")
    pkl.chmod(0o664)
    assert check_resume_dir(sweep_dir) == sweep_dir.resolve()


def test_anything_writable_in_the_tree_is_refused(sweep_dir: Path, tmp_path: Path) -> None:
    """A trial's config names modules to import: the whole directory counts, not only tune/."""
    (sweep_dir / "trials" / "t0" / "config.yaml").chmod(0o666)
    (sweep_dir / "base_config.yaml").chmod(0o666)
    message = refused(sweep_dir, tmp_path / "marker")
    assert "is writable by others (mode 0666) (and 1 more)" in message


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_tuner_pkl_owned_by_another_user_is_refused(sweep_dir: Path, tmp_path: Path) -> None:
    pkl = sweep_dir / "tune" / "tuner.pkl"
    os.chown(pkl, OTHER_UID, -1)
    message = refused(sweep_dir, tmp_path / "marker")
    assert f"{pkl.resolve()} is owned by uid {OTHER_UID}, not by you (uid 0)" in message


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_sweep_dir_owned_by_another_user_is_refused(sweep_dir: Path, tmp_path: Path) -> None:
    os.chown(sweep_dir, OTHER_UID, -1)
    assert f"owned by uid {OTHER_UID}" in refused(sweep_dir, tmp_path / "marker")


def test_a_link_counts_as_its_target(sweep_dir: Path, tmp_path: Path) -> None:
    """tuner.pkl as a link to a file others can write is refused (the target is what's read)."""
    outside = tmp_path / "elsewhere.pkl"
    pkl = sweep_dir / "tune" / "tuner.pkl"
    outside.write_bytes(pkl.read_bytes())
    outside.chmod(0o666)
    pkl.unlink()
    pkl.symlink_to(outside)
    assert "tuner.pkl is writable by others" in refused(sweep_dir, tmp_path / "marker")


def test_cli_refuses_before_reading_anything(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    """`firm-ray sweep --resume` checks the directory before its pre-flight reads the sweep's
    configs (which may name modules to import): one `error:` line, exit 2, nothing ran."""
    from firm_ray.cli.main import main

    os.chmod(sweep_dir / "tune" / "tuner.pkl", 0o666)
    assert main(["sweep", "--resume", str(sweep_dir)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tuner.pkl" in lines[0]
    assert not (tmp_path / "marker").exists()
    assert not ray.is_initialized()
