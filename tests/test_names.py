"""One vocabulary across verbs, outputs and the API (captioner.cli_names, docs/architecture.md).

Walks every verb's parser: a flag about image folders, threads, workers or progress bars is
spelled the one way everywhere; every old spelling still parses to the same value as its
replacement, hidden from --help, with one line on stderr. Then the outputs: the image's name
is ``file`` in the captions JSONL, the errors file and the API's results.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest

from captioner.cli import build_parser
from captioner.cli_names import DEPRECATED, FLAGS, IMAGE_NAME_FIELD

DATA = Path(__file__).resolve().parent / "data"


def _verbs() -> dict[str, argparse.ArgumentParser]:
    """Every verb's parser, by its words ("caption", "data stats", ...)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, [*words, name])
        if words and not subs:
            found[" ".join(words)] = parser

    walk(build_parser(load=None), [])
    return found


VERBS = _verbs()


def _shown(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def test_every_verb_is_walked():
    assert {"caption", "explain", "units", "train", "evaluate", "serve", "calibrate", "data stats"} <= set(VERBS)
    assert set(DEPRECATED) <= set(VERBS)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_each_idea_has_one_spelling(verb):
    for action in _shown(VERBS[verb]):
        for flag in (f for f in action.option_strings if f.startswith("--")):
            assert flag not in DEPRECATED.get(verb, {}), f"{verb}: the old spelling {flag} is shown in --help"
            if "thread" in flag:
                assert flag == "--threads", f"{verb} {flag}: CPU threads are --threads"
            if "worker" in flag:
                assert flag == "--workers", f"{verb} {flag}: parallel image readers are --workers"
            if "progress" in flag:
                pytest.fail(f"{verb} {flag}: no progress bar is --quiet")
            if flag == "--images" or (re.search(r"image", flag) and action.metavar == "DIR"):
                assert flag == "--images-dir", f"{verb} {flag}: the image folder is --images-dir DIR"
            if flag in FLAGS:  # the same word means the same thing: a folder, a switch or a number
                kind = "a folder" if flag == "--images-dir" else "a switch" if flag == "--quiet" else "a number"
                shown = "a switch" if action.nargs == 0 else "a folder" if action.metavar == "DIR" else "a number"
                assert shown == kind, f"{verb} {flag} takes {shown}, expected {kind}"


def _value(verb: str, argv: list[str]) -> tuple[argparse.Namespace, str]:
    """Parse one verb's arguments (positionals filled in) -> (namespace, stderr)."""
    import contextlib
    import io

    required = {
        "calibrate": ["--checkpoint", "c", "--data", "d"],
        "evaluate": ["--data", "d"],
        "units": ["--data", "d", "--out", "o.html"],
        "data stats": ["data/scenes"],
    }
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        args = build_parser(load=None).parse_args([*verb.split(), *required.get(verb, []), *argv])
    return args, err.getvalue()


OLD_SPELLINGS = [(verb, old, new) for verb, table in sorted(DEPRECATED.items()) for old, new in table.items()]


@pytest.mark.parametrize(("verb", "old", "new"), OLD_SPELLINGS, ids=[f"{v}:{o}" for v, o, _ in OLD_SPELLINGS])
def test_old_spellings_still_work_with_one_note(verb, old, new):
    parser = VERBS[verb]
    action = next(a for a in parser._actions if old in a.option_strings)
    assert action.help == argparse.SUPPRESS  # hidden from --help
    takes_value = action.nargs != 0
    old_args, note = _value(verb, [old, "3"] if takes_value else [old])
    new_args, quiet = _value(verb, [new, "3"] if takes_value else [new])
    assert note.strip().splitlines() == [
        f"captioner {verb}: note: {old} is deprecated and will be removed in the next release; use {new}"
    ]
    assert quiet == ""
    if old == "--progress":  # the one old spelling that turns the bar on, the opposite of --quiet
        assert vars(old_args)["progress"] is True and vars(new_args)["progress"] is False
    else:
        replacement = next(a for a in parser._actions if new in a.option_strings)
        assert vars(old_args)[action.dest] == vars(new_args)[replacement.dest] in (3, "3", False)


def test_the_image_name_field_is_file_in_the_captions_file_and_the_errors_file(tmp_path):
    from captioner.folder import caption_folder
    from captioner.runtime.captioner import load_captioner

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DATA / "coffee.jpg", photos / "coffee.jpg")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "captions.jsonl"
    caption_folder(load_captioner(), [photos], out, workers=0)
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    (error,) = [json.loads(line) for line in (tmp_path / "captions.errors.jsonl").read_text().splitlines()]
    assert row[IMAGE_NAME_FIELD] == "coffee.jpg" and error[IMAGE_NAME_FIELD] == "broken.jpg"
    assert error["path"] == "broken.jpg"  # the old name, kept for a release


def test_the_image_name_field_is_file_in_the_api_schema():
    from captioner.service.schemas import CaptionItem

    schema = CaptionItem.model_json_schema()
    assert IMAGE_NAME_FIELD in schema["properties"]
    assert schema["properties"]["filename"].get("deprecated") is True  # the old name, kept for a release

    class Result:  # what the engine hands the schema
        index, filename, caption, score, time_ms = 0, "cat.jpg", "a cat", -1.0, 3.0
        error = None

    item = CaptionItem.from_result(Result()).model_dump()
    assert item[IMAGE_NAME_FIELD] == item["filename"] == "cat.jpg"
