"""What ``GET /v1/model`` may show any caller: the model's facts without the training
machine's file system.

A checkpoint's metadata records where it was trained (``dataset.path``,
``train_config.cache_dir``, the training command line). Absolute paths say nothing about
the model and something about the machine (user names, folder layout), so every absolute
path, alone or inside a longer string such as a command line, is reduced to its last part:
``/home/ann/data/scenes`` -> ``scenes``. Relative paths (``runs/default``) stay.
"""

from __future__ import annotations

import re
from typing import Any

# A POSIX absolute path (/x/y, ~/x) or a Windows one (C:\x, C:/x, \\server\share), up to whitespace or a quote.
ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/\\~-])(?:~?/|[A-Za-z]:[\\/]|\\\\)[^\s'"]+""")


def _last_part(match: re.Match[str]) -> str:
    parts = [p for p in re.split(r"[\\/]+", match.group(0)) if p and p != "~" and not re.fullmatch(r"[A-Za-z]:", p)]
    return parts[-1] if parts else "."


def strip_paths(value: Any) -> Any:
    """``value`` (JSON data) with every absolute path in its strings reduced to its last part."""
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub(_last_part, value)
    if isinstance(value, dict):
        return {k: strip_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strip_paths(v) for v in value]
    return value


def has_absolute_path(value: Any) -> bool:
    """True when any string in ``value`` (JSON data) holds an absolute path."""
    if isinstance(value, str):
        return ABSOLUTE_PATH.search(value) is not None
    if isinstance(value, dict):
        return any(has_absolute_path(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_absolute_path(v) for v in value)
    return False


def public_model_info(info: dict[str, Any]) -> dict[str, Any]:
    """The service's model description, safe to show any caller."""
    cleaned: dict[str, Any] = strip_paths(info)
    return cleaned
