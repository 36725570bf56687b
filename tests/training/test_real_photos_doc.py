"""docs/real-photos.md: every command in it is one the command line takes as written.

Each ``captioner ...`` line of its code blocks (continuations joined) is parsed by the real
parser with nothing deprecated in it, and each ``captioner train`` command is run with
``--print-config``, which checks every setting (ranges, combinations) without training.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from captioner.cli import build_parser
from captioner.cli import main as cli_main

DOC = Path(__file__).resolve().parents[2] / "docs" / "real-photos.md"


def doc_commands() -> list[list[str]]:
    """The ``captioner`` commands of the page's code blocks, as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("captioner ")]


COMMANDS = doc_commands()


def test_the_page_has_the_recipe():
    verbs = [" ".join(c[:2]) if c[0] == "data" else c[0] for c in COMMANDS]
    assert verbs.count("train") == 2 and verbs.count("evaluate") == 2 and verbs.count("data stats") == 2
    assert {"calibrate", "info", "caption", "serve"} <= set(verbs)
    text = DOC.read_text(encoding="utf-8")
    assert "not measured here" in text.lower() and "estimate" in text


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_every_command_parses_with_no_deprecated_flag(argv, capsys):
    parser = build_parser(load=None)
    args = parser.parse_args(argv)  # an unknown flag or a bad value exits 2 here
    assert callable(getattr(args, "func", None)), argv
    assert "deprecated" not in capsys.readouterr().err.lower()


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[0] == "train"], ids=["flickr8k", "coco"])
def test_every_train_command_is_a_valid_configuration(argv, capsys):
    assert cli_main([*argv, "--print-config"]) == 0, capsys.readouterr().err
    config = json.loads(capsys.readouterr().out)
    assert (config["min_count"], config["metric"], config["decoder"]) == (5, "cider_d", "attention")
    assert (config["hidden_dim"], config["attention_dim"], config["annotation_dim"]) == (
        256,
        128,
        512,
    )  # as the page says
