"""Every flag of every verb that takes a value answers a value of the wrong type with one line
naming the flag, the value and what it expects (exit status 2), never a traceback and never
the name of a Python function ("invalid _quantile value")."""

from __future__ import annotations

import argparse
import contextlib
import io
import re

import pytest
from test_names import VERBS

from captioner.cli import build_parser

#: What each verb needs besides the flag under test, so parsing reaches it.
REQUIRED = {
    "calibrate": ["--checkpoint", "c", "--data", "d"],
    "evaluate": ["--data", "d"],
    "units": ["--data", "d", "--out", "o.html"],
    "data stats": ["data/scenes"],
    "data scenes": ["--out", "o"],
    "data preview": ["--out", "o"],
}


def _numeric(action: argparse.Action) -> bool:
    """Whether the flag takes a number (its type turns "7" into an int or a float)."""
    if not action.option_strings or action.nargs == 0 or action.type is None or action.choices:
        return False
    for text in ("7", "0.7", "1"):  # one of them is in range
        try:
            return isinstance(action.type(text), (int, float))  # type: ignore[misc, operator]
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            continue
    return False


TYPED = [
    (verb, a.option_strings[0])
    for verb, parser in sorted(VERBS.items())
    for a in parser._actions
    if _numeric(a) and a.help != argparse.SUPPRESS
]


@pytest.mark.parametrize(("verb", "flag"), TYPED, ids=[f"{v}:{f}" for v, f in TYPED])
def test_a_wrongly_typed_value_is_one_line_naming_flag_value_and_type(verb, flag):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        build_parser(load=None).parse_args([*verb.split(), *REQUIRED.get(verb, []), flag, "many"])
    lines = err.getvalue().strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1, lines
    line = lines[0]
    assert flag in line and "'many'" in line, line
    assert not re.search(r"invalid (_\w+|parse) value", line), line  # a type's words, not a function's name
    assert re.search(r"int|float|number|integer", line), line


def test_there_are_typed_flags_in_every_verb_that_has_numbers():
    verbs = {v for v, _ in TYPED}
    assert {"caption", "train", "serve", "evaluate", "calibrate", "data scenes", "units"} <= verbs
