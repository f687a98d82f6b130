"""Atomic folder writes shared by every on-disk artifact (policies, simulators).

A folder is written complete under a temporary name beside its target, synced, and only then swapped in; if
anything fails, the temporary folder is removed and a previous folder at the target is put back, so an interrupted
save never loses the last good copy.

:func:`load_safetensors` reads a weights file back and turns a damaged file (empty, truncated) into an error that
names it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def load_safetensors(
    path: str | os.PathLike, what: str, *, fix: str = "re-download or re-save the simulator"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the metadata of a safetensors file onto the CPU.

    Args:
        path: the file.
        what: what the file holds, for the message (e.g. ``"the simulator's reward head"``).
        fix: what the reader should do about a bad file.

    Returns:
        ``(tensors, metadata)``; ``metadata`` is empty when the file has none.

    Raises:
        ValueError: the file is empty, truncated or not a safetensors file (safetensors' own error names no file);
            the message names ``path`` and says what to do.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        size = os.path.getsize(path) if os.path.isfile(path) else None
        state = "is empty" if size == 0 else "is truncated or not a safetensors file"
        raise ValueError(f"{path} ({what}) {state} ({e}); {fix}.") from e
