"""An installed copy must work outside the source tree: the wheel carries the package data."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_weights_sprites_and_static_files(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("captioner-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "weights/default/model.safetensors",
        "weights/default/config.json",
        "weights/default/vocab.json",
        "weights/default/metadata.json",
        "service/static/index.html",
        "service/static/app.js",
        "captioner/encoders/efficientnet_lite.py",
        "training/scenes/sprites/dog.png",
    ):
        assert required in names, f"{required} missing from the wheel"
    assert sum(n.startswith("training/scenes/sprites/") and n.endswith(".png") for n in names) >= 40
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for verb in ("serve", "train", "data", "evaluate"):
        assert f"{verb} = " in text
    assert not any(n.startswith("tests/") for n in names)
