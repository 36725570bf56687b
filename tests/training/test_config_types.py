"""A wrongly typed training setting, from a --config file, a flag or Python, is one line naming
the key, the value and the expected type (exit status 2 on the command line), never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields

import pytest

from captioner.cli import main
from captioner.training.config import SettingError, TrainConfig

#: A wrong value for each kind of annotation a TrainConfig field has, and the words expected.
WRONG = {
    "int": ("many", "an integer"),
    "float": ("fast", "a number"),
    "str": (3, "a string"),
    "bool": ("yes", "true or false"),
}


def _kind(annotation: object) -> str:
    return str(annotation).replace(" | None", "")


@pytest.mark.parametrize("field", [f for f in fields(TrainConfig)], ids=lambda f: f.name)
def test_every_setting_names_key_value_and_type(field):
    value, expected = WRONG[_kind(field.type)]  # a new kind of field needs its entry here
    with pytest.raises(SettingError) as err:
        TrainConfig.from_dict({field.name: value})
    message = str(err.value)
    assert field.name in message and repr(value) in message and expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"epochs": "many"}, ["epochs", "'many'", "an integer"]),
        ({"lr": "fast"}, ["lr", "'fast'", "a number"]),
        ({"epochs": 2.5}, ["epochs", "2.5", "an integer"]),
        ({"amp": "no"}, ["amp", "'no'", "true or false"]),
        ({"threads": [2]}, ["threads", "[2]", "an integer or null"]),
        ({"batch_size": True}, ["batch_size", "True", "an integer"]),
    ],
)
def test_a_wrongly_typed_config_file_is_one_line_and_exit_2(tmp_path, capsys, values, words):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"data": "data/scenes", **values}))
    assert main(["train", "--config", str(config), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err, err


def test_well_typed_values_still_work_and_ints_are_numbers():
    cfg = TrainConfig.from_dict({"lr": 1, "epochs": 3, "threads": None, "amp": False, "images_dir": None})
    assert cfg.lr == 1 and cfg.epochs == 3 and cfg.amp is False


def test_torchrun_entry_point_flag_errors_are_one_line_and_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "captioner.training.cli_train", "--epochs", "many"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--epochs" in lines[0] and "'many'" in lines[0], proc.stderr
