"""Walking folders for images to caption.

:func:`find_images` lists the files with an image extension (hidden files and folders
skipped, symbolic-link loops detected by the real path of every folder entered) and sorts
them, so every run sees the same list (and a rerun can skip what an earlier one wrote).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CaptionerError
from .images import IMAGE_EXTENSIONS
from .pipeline import ImageItem

__all__ = ["FileProblem", "ImageItem", "find_images"]


@dataclass
class FileProblem:
    """A file the walk found but cannot caption (broken link, unreadable folder, ...)."""

    key: str
    reason: str


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(
    paths: Sequence[str | os.PathLike], recursive: bool = False
) -> tuple[list[ImageItem], list[FileProblem]]:
    """All images under ``paths`` (folders and/or files), sorted by key.

    A folder contributes its files with an image extension (``IMAGE_EXTENSIONS``,
    case-insensitive), and with ``recursive`` those of its sub-folders. Names starting
    with a dot are skipped. Symbolic links are followed, but a folder whose real path was
    already entered is not entered again, so link loops end. A file given by name is
    taken whatever its extension (the user asked for it). Keys are relative to the
    common parent of the inputs: for a single folder, to the folder itself.

    Returns the images and the problems met on the way (entries with an image extension
    that are not regular files, folders that cannot be listed). Raises
    :class:`CaptionerError` for an input that does not exist.
    """
    if not paths:
        raise CaptionerError("no input given; pass image files or folders")
    roots: list[tuple[Path, bool]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            roots.append((path, True))
        elif path.is_file():
            roots.append((path, False))
        elif path.exists() or path.is_symlink():
            raise CaptionerError(f"{path}: not a regular file or folder")
        else:
            raise CaptionerError(f"{path}: no such file or folder")
    bases = [os.path.abspath(r if is_dir else r.parent) for r, is_dir in roots]
    base = os.path.commonpath(bases)

    def key_of(path: Path) -> str:
        return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()

    found: dict[str, ImageItem] = {}
    problems: list[FileProblem] = []
    seen_dirs: set[str] = set()
    for root, is_dir in roots:
        if not is_dir:
            found.setdefault(key_of(root), ImageItem(key_of(root), root))
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            if real in seen_dirs:  # a link loop, or the same folder reached twice
                continue
            seen_dirs.add(real)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                problems.append(FileProblem(key_of(folder), f"cannot list folder ({e.strerror or e})"))
                continue
            subdirs = []
            for entry in entries:
                if _is_hidden(entry.name):
                    continue
                try:
                    is_subdir = entry.is_dir(follow_symlinks=True)
                    is_file = entry.is_file(follow_symlinks=True)
                except OSError:
                    is_subdir = is_file = False
                entry_path = Path(entry.path)
                if is_subdir:
                    if recursive:
                        subdirs.append(entry_path)
                    continue
                if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                key = key_of(entry_path)
                if is_file:
                    found.setdefault(key, ImageItem(key, entry_path))
                elif entry.is_symlink() and not entry_path.exists():
                    problems.append(FileProblem(key, "broken symbolic link"))
                else:
                    problems.append(FileProblem(key, "not a regular file"))
            stack.extend(reversed(subdirs))  # depth-first, in name order
    items = sorted(found.values(), key=lambda i: i.key)
    problems.sort(key=lambda p: p.key)
    return items, problems
