"""Is a directory tree private to the current user? (before loading anything that runs code)

``firm-ray sweep --resume DIR`` hands ``DIR/tune`` to ``tune.Tuner.restore``, which unpickles
``tuner.pkl`` and the cloudpickled fields of ``experiment_state-*.json`` and of each trial's
error file, and it loads the sweep's and trials' configs, which name Python modules to import
(``python`` rewards). A file that another user could have written there runs that user's code as
you. So the whole tree must be owned by you, and writable by nobody else: not by others, and
not by its group unless that group is your own user-private group (Debian/Ubuntu's ``umask
002`` convention: a group of your name with no other members).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from functools import lru_cache
from pathlib import Path

__all__ = ["untrusted_reason"]


@lru_cache(maxsize=64)
def _private_group(gid: int, uid: int) -> bool:
    """True when ``gid`` can hold no user but ``uid`` (its user-private group)."""
    try:
        user, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    if gid != user.pw_gid or group.gr_name != user.pw_name:
        return False
    if set(group.gr_mem) - {user.pw_name}:
        return False
    return all(p.pw_gid != gid or p.pw_uid == uid for p in pwd.getpwall())


def _problem(path: Path, uid: int) -> str | None:
    try:
        info = path.stat()  # a link counts as what it points to: that is what gets read
    except OSError as err:
        return f"{path} cannot be checked ({err.strerror})"
    if info.st_uid != uid:
        return f"{path} is owned by uid {info.st_uid}, not by you (uid {uid})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        return f"{path} is writable by others (mode {mode:04o})"
    if mode & stat.S_IWGRP and not _private_group(info.st_gid, uid):
        return f"{path} is writable by its group {info.st_gid} (mode {mode:04o})"
    return None


def untrusted_reason(root: Path) -> str | None:
    """Why ``root`` or anything under it could have been written by another user, or None.

    Names the first offending path and how many more there are. Walks without following
    directory links (a link is checked as the file or directory it points to).
    """
    uid = os.getuid()
    problems = []
    first = _problem(root, uid)
    if first is not None:
        problems.append(first)
    if root.is_dir():
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                problem = _problem(Path(folder) / name, uid)
                if problem is not None:
                    problems.append(problem)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more
