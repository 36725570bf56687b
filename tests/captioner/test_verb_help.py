"""Every verb's --help says what the verb does (a description under the usage line), not only
its options; `captioner --help` lists each verb with a one-line summary."""

from __future__ import annotations

import argparse

import pytest

from captioner.cli import build_parser


def _verbs() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
            for name, child in sub.choices.items():
                found[" ".join([*words, name])] = child
                walk(child, [*words, name])

    walk(build_parser(load=None), [])
    return found


VERBS = _verbs()


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_describes_itself_in_its_help(verb):
    text = VERBS[verb].format_help()
    description = (VERBS[verb].description or "").strip()
    assert len(description.split()) >= 5, f"`captioner {verb} --help` has no description"
    assert description.split("\n")[0][:40] in text


def test_the_top_level_help_summarises_every_verb():
    top = build_parser(load=set())
    choices = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {c.dest: c.help for c in choices._choices_actions}
    assert set(summaries) >= {"caption", "info", "encoders", "explain", "units", "train", "serve", "evaluate"}
    assert all(help_ and len(help_.split()) >= 4 for help_ in summaries.values()), summaries
