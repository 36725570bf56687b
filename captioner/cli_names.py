"""One name per thing on the command line, and the old spellings that still work for a release.

Every verb spells the same idea the same way (docs/architecture.md, "Names on the command
line and in outputs"; ``tests/test_names.py`` walks every verb's parser and the API schema
against :data:`FLAGS`):

* ``--images-dir DIR``: the folder a dataset's image paths are relative to;
* ``--limit N``: only the first N images;
* ``--threads N``: CPU threads of the model;
* ``--workers N``: how many images are read and decoded (or drawn) in parallel;
* ``--quiet``: no progress bar;
* ``file``: an image's name in every output (JSONL, CSV, errors files, the API).

An old spelling is registered with :func:`add_deprecated`: hidden from ``--help``, it sets
the same value as the new one and prints one line on stderr saying what to write instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: The canonical flags: what each one means wherever it appears.
FLAGS = {
    "--images-dir": "the folder the dataset's image paths are relative to",
    "--limit": "only the first N images",
    "--threads": "CPU threads of the model",
    "--workers": "images read and decoded (or drawn) in parallel",
    "--quiet": "no progress bar",
}
#: The field naming an image in outputs (captions JSONL/CSV, errors files, API results).
IMAGE_NAME_FIELD = "file"
#: Old spellings, per verb, and what replaced them; they still work until the next release.
DEPRECATED: dict[str, dict[str, str]] = {
    "calibrate": {"--images": "--images-dir"},
    "data stats": {"--images": "--images-dir"},
    "evaluate": {"--images": "--images-dir"},
    "serve": {"--decode-workers": "--workers", "--torch-threads": "--threads"},
    "train": {"--num-workers": "--workers", "--no-progress": "--quiet", "--progress": "--quiet"},
    "units": {"--images": "--limit"},
}
#: Old output field names still written beside the new one for a release.
DEPRECATED_FIELDS = {"path": "file (errors files)", "filename": "file (API results)"}


def deprecation_note(prog: str, old: str, new: str) -> str:
    return f"{prog}: note: {old} is deprecated and will be removed in the next release; use {new}"


def add_deprecated(
    container: argparse._ActionsContainer, old: str, new: str, *, action: Any = "store", **kwargs: Any
) -> None:
    """Register ``old`` as a hidden spelling of ``new``: same ``dest`` and parsing (give the
    same ``action`` / ``type`` / ``dest`` as the new flag), plus a one-line note on stderr."""
    base = container._registry_get("action", action, action)  # "store" -> argparse._StoreAction

    class Deprecated(base):  # type: ignore[valid-type, misc]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:  # fmt: skip
            print(deprecation_note(parser.prog, option_string or old, new), file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    container.add_argument(old, action=Deprecated, help=argparse.SUPPRESS, **kwargs)
