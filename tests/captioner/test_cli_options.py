"""The command line's first contact: fast --help, one-line range errors, exit status 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from captioner.options import BATCH_SIZE, BEAM_SIZE, LENGTH_PENALTY, MAX_LENGTH, WORKERS, CaptionOptions, OptionError

PROBE = """
import sys
from captioner.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("TORCH", "torch" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["caption", "--help"], ["evaluate", "--help"]])
def test_help_does_not_import_torch(args):
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "usage: captioner" in proc.stdout
    assert "TORCH False" in proc.stderr


def test_top_level_help_lists_every_verb():
    proc = run_cli("--help")
    for verb in ("caption", "info", "encoders", "calibrate", "data", "evaluate", "serve", "train"):
        assert re.search(rf"^    {verb}(\s|$)", proc.stdout, re.MULTILINE), verb


def test_encoders_lists_every_encoder_in_aligned_columns(capsys):
    from captioner.cli import main
    from captioner.encoders import list_encoders

    assert main(["encoders"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "-d  " in line]
    assert [row.split()[0] for row in rows] == list_encoders()
    assert len({row.index("-d  ") for row in rows}) == 1, rows  # the dimension column lines up, long names too


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["caption", "x.jpg", "--beam-size", "0"], "beam size must be an integer from 1 to 20, got 0"),
        (["caption", "x.jpg", "--beam-size", "-3"], "beam size must be an integer from 1 to 20, got -3"),
        (["caption", "x.jpg", "--beam-size", "200"], "beam size must be an integer from 1 to 20, got 200"),
        (["caption", "x.jpg", "--max-length", "0"], "max length must be an integer from 1 to 100, got 0"),
        (["caption", "x.jpg", "--max-length", "-1"], "max length must be an integer from 1 to 100, got -1"),
        (["caption", "x.jpg", "--length-penalty", "nan"], "length penalty must be a number from 0 to 5, got nan"),
        (["caption", "d/", "--out", "o.jsonl", "--batch-size", "0"], "batch size must be an integer from 1 to 1024"),
        (["caption", "d/", "--out", "o.jsonl", "--workers", "-1"], "workers must be an integer from 0 to 64"),
        (["caption", "d/", "--out", "o.jsonl", "--max-length", "0"], "max length must be an integer from 1 to 100"),
        (["evaluate", "--data", "d", "--max-length", "0"], "max length must be an integer from 1 to 100, got 0"),
        (["evaluate", "--data", "d", "--beam-size", "x"], "beam size must be an integer from 1 to 20, got 'x'"),
    ],
)
def test_out_of_range_options_are_one_line_and_exit_2(args, expected):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("TORCH")]
    assert len(lines) == 1, proc.stderr  # no usage block, no traceback
    assert expected in lines[0]
    assert "TORCH False" in proc.stderr  # refused before anything heavy is imported


def test_ranges_are_the_library_checks_too():
    assert BEAM_SIZE.check(20) == 20 and MAX_LENGTH.check(1) == 1 and WORKERS.check(0) == 0
    for rng, bad in ((BEAM_SIZE, 21), (BEAM_SIZE, 2.5), (MAX_LENGTH, 0), (BATCH_SIZE, True), (LENGTH_PENALTY, -0.1)):
        with pytest.raises(OptionError, match=rng.name):
            rng.check(bad)
    with pytest.raises(ValueError, match="beam size must be an integer from 1 to 20, got 0"):
        CaptionOptions(beam_size=0)
    assert CaptionOptions(beam_size=3, max_length=None, length_penalty=0.6).beam_size == 3
