"""Atomic folder writes shared by every on-disk artifact (policies, simulators).

A folder is written complete under a temporary name beside its target, synced, and only then swapped in; if
anything fails, the temporary folder is removed and a previous folder at the target is put back, so an interrupted
save never loses the last good copy.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
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


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(d)


def write_folder_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a fresh temporary folder, then swap it in at ``path``.

    The caller decides beforehand whether an existing ``path`` may be replaced. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = path.parent / f".{path.name}.tmp-{token}"
    old = path.parent / f".{path.name}.old-{token}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.rename(old, path)  # put the previous copy back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path
