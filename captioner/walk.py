"""Walking folders for images to caption.

:func:`find_images` lists the files with an image extension, and those without any
extension whose first bytes are an image's (hidden files and folders skipped, symbolic-link loops detected by the real path of every folder entered) and sorts
them, so every run sees the same list (and a rerun can skip what an earlier one wrote).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CaptionerError
from .images import ACCEPTED_FORMATS, IMAGE_EXTENSIONS, sniff_format
from .pipeline import ImageItem

__all__ = ["FileProblem", "ImageItem", "find_images"]


@dataclass
class FileProblem:
    """A file the walk found but cannot caption (broken link, unreadable folder, ...)."""

    key: str
    reason: str


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _roots(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, bool]]:
    """(path, is a folder) for every input; CaptionerError for one that is neither."""
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
    return roots


def _image_bytes(path: Path) -> bool:
    """Whether a file's first bytes are those of an accepted image format (for files named
    without an extension: a camera dump's ``000003`` is a JPEG all the same)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    fmt = sniff_format(head)
    return fmt is not None and (fmt in ACCEPTED_FORMATS or fmt == "WebP")  # sniff_format names WEBP "WebP"


class _Walk:
    """What one walk has found so far: images by key, problems, folders entered."""

    def __init__(self, base: str, recursive: bool) -> None:
        self.base = base
        self.recursive = recursive
        self.found: dict[str, ImageItem] = {}
        self.problems: list[FileProblem] = []
        self.seen_dirs: set[str] = set()

    def key_of(self, path: Path) -> str:
        return Path(os.path.relpath(os.path.abspath(path), self.base)).as_posix()

    def add_file(self, path: Path) -> None:
        key = self.key_of(path)
        self.found.setdefault(key, ImageItem(key, path))

    def folder(self, root: Path) -> None:
        """Depth-first, in name order; a folder already entered (by real path) is skipped."""
        stack = [root]
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            if real in self.seen_dirs:  # a link loop, or the same folder reached twice
                continue
            self.seen_dirs.add(real)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self.problems.append(FileProblem(self.key_of(folder), f"cannot list folder ({e.strerror or e})"))
                continue
            subdirs = [sub for entry in entries if (sub := self.entry(entry)) is not None]
            stack.extend(reversed(subdirs))

    def entry(self, entry: os.DirEntry) -> Path | None:
        """Take one folder entry; returns it when it is a sub-folder to enter."""
        if _is_hidden(entry.name):
            return None
        try:
            is_subdir = entry.is_dir(follow_symlinks=True)
            is_file = entry.is_file(follow_symlinks=True)
        except OSError:
            is_subdir = is_file = False
        path = Path(entry.path)
        if is_subdir:
            return path if self.recursive else None
        suffix = Path(entry.name).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS and (suffix or not is_file or not _image_bytes(path)):
            return None
        if is_file:
            self.add_file(path)
        elif entry.is_symlink() and not path.exists():
            self.problems.append(FileProblem(self.key_of(path), "broken symbolic link"))
        else:
            self.problems.append(FileProblem(self.key_of(path), "not a regular file"))
        return None


def find_images(
    paths: Sequence[str | os.PathLike], recursive: bool = False
) -> tuple[list[ImageItem], list[FileProblem]]:
    """All images under ``paths`` (folders and/or files), sorted by key.

    A folder contributes its files with an image extension (``IMAGE_EXTENSIONS``,
    case-insensitive) or with no extension and an accepted image format's first bytes
    (``000003`` from a camera), and with ``recursive`` those of its sub-folders. Names starting
    with a dot are skipped. Symbolic links are followed, but a folder whose real path was
    already entered is not entered again, so link loops end. A file given by name is
    taken whatever its extension (the user asked for it). Keys are relative to the
    common parent of the inputs: for a single folder, to the folder itself.

    Returns the images and the problems met on the way (entries with an image extension
    that are not regular files, folders that cannot be listed). Raises
    :class:`CaptionerError` for an input that does not exist.
    """
    roots = _roots(paths)
    walk = _Walk(os.path.commonpath([os.path.abspath(r if is_dir else r.parent) for r, is_dir in roots]), recursive)
    for root, is_dir in roots:
        if is_dir:
            walk.folder(root)
        else:
            walk.add_file(root)
    items = sorted(walk.found.values(), key=lambda i: i.key)
    problems = sorted(walk.problems, key=lambda p: p.key)
    return items, problems
