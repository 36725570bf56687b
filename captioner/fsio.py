"""Crash-safe file writes, written once for the whole project.

* :func:`atomic_write` (and its ``_bytes``, ``_text``, ``_path`` forms): write a
  temporary sibling, ``fsync`` it, then ``os.replace`` it over the target, so a reader (or a
  run after a crash) sees the old file or the new one, never a torn one.
* :func:`replace_dir`: put a fully written folder in place of another one (two renames;
  the old folder is removed only once the new one is in place).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_path", "atomic_write_text", "fsync_dir", "replace_dir"]


def _normal_permissions(fd: int) -> None:
    """Give a ``mkstemp`` file (0600) the permissions ``open()`` would: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: not every OS can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], object], *, binary: bool = True, **open_kw: Any
) -> Path:
    """Create or replace ``path`` with what ``write(f)`` writes to an open temporary file.

    The temporary file sits beside ``path`` (same file system, so the rename is atomic), is
    flushed and fsynced before the rename, and is removed if ``write`` raises. Missing parent
    folders are created. ``binary=False`` opens it in text mode (UTF-8 unless ``encoding``
    is given). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _normal_permissions(fd)
        if binary:
            f = os.fdopen(fd, "wb")
        else:
            open_kw.setdefault("encoding", "utf-8")
            f = os.fdopen(fd, "w", **open_kw)
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """:func:`atomic_write` for writers that want a file name (e.g. ``safetensors.torch.save_file``):
    ``write(tmp)`` creates the temporary file ``tmp``, which is then fsynced and renamed over
    ``path``; removed if ``write`` raises. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        _normal_permissions(fd)  # mkstemp's 0600 would survive a writer that reopens the file
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of ``text`` (no newline translation)."""
    return atomic_write(path, lambda f: f.write(text), binary=False, encoding=encoding, newline="")


def replace_dir(building: str | os.PathLike, target: str | os.PathLike, aside: str | os.PathLike | None = None) -> Path:
    """Move the finished folder ``building`` to ``target``, replacing any folder there.

    An existing ``target`` is first renamed aside (to ``aside``, default ``.<name>-old``), then ``building`` is
    renamed to ``target``, then the old copy is removed: at every moment either the old or
    the new folder is complete under ``target`` or its aside name. Both must be on one file
    system (keep ``building`` beside ``target``). Returns ``target``.
    """
    building, target = Path(building), Path(target)
    if not target.exists():
        os.replace(building, target)
        fsync_dir(target.parent)
        return target
    old = Path(aside) if aside is not None else target.with_name(f".{target.name}-old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(target, old)
    os.replace(building, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target
