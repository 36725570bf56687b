"""An installed copy must work outside the source tree, next to other people's packages.

The repository keeps four top-level folders (captioner/, training/, service/, weights/);
installed, they are one import package, ``captioner`` (``captioner.training``,
``captioner.service``, ``captioner.weights``), so the wheel never claims a top-level name
such as ``service`` that another distribution may already use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPRITES = "captioner/training/scenes/sprites/"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.glob("captioner-*.whl"))


def test_wheel_contains_weights_sprites_and_static_files(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "captioner/weights/default/model.safetensors",
        "captioner/weights/default/config.json",
        "captioner/weights/default/vocab.json",
        "captioner/weights/default/metadata.json",
        "captioner/weights/default/trust.json",
        "captioner/weights/default/trust.safetensors",
        "captioner/weights/pooled/model.safetensors",
        "captioner/weights/pooled/config.json",
        "captioner/weights/pooled/calibration.safetensors",
        "captioner/service/static/index.html",
        "captioner/service/static/app.js",
        "captioner/encoders/efficientnet_lite.py",
        "captioner/engines/ray_engine.py",
        SPRITES + "dog.png",
    ):
        assert required in names, f"{required} missing from the wheel"
    assert sum(n.startswith(SPRITES) and n.endswith(".png") for n in names) >= 40
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for verb in ("serve", "train", "data", "evaluate", "calibrate"):
        assert f"{verb} = captioner." in text, text
    assert not any(n.startswith("tests/") for n in names)


def test_the_wheel_claims_only_the_captioner_import_name(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"captioner"}, tops
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["captioner"]


def _venv_beside_the_dependencies(path: Path) -> Path:
    """A fresh venv with our wheel only; the heavy dependencies (torch, ...) are borrowed
    from this interpreter's site-packages through a plain path line, which puts them on
    sys.path without running their .pth files, so the editable install of the source tree
    is not active there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_installed_wheel_works_next_to_a_top_level_service_package(wheel: Path, tmp_path: Path):
    python = _venv_beside_the_dependencies(tmp_path / "venv")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # Somebody else's top-level packages called `service`, `training` and `weights`.
    others = tmp_path / "others"
    for name in ("service", "training", "weights"):
        (others / name).mkdir(parents=True)
        (others / name / "__init__.py").write_text(f"OWNER = 'another distribution ({name})'\n")
    work = tmp_path / "elsewhere"  # not the source tree
    work.mkdir()
    script = f"""
import sys
import captioner, captioner.service.app, captioner.training.train, captioner.weights
import service, training, weights
assert service.OWNER.startswith('another') and training.OWNER.startswith('another'), 'shadowed'
assert weights.OWNER.startswith('another')
assert captioner.__file__.startswith(sys.prefix), captioner.__file__
from captioner import Captioner
model = Captioner.load(device='cpu', fast=False)
print('CAPTION', model.caption({str(ROOT / "tests" / "data" / "chelsea.jpg")!r})[0])
"""
    env = {**os.environ, "PYTHONPATH": str(others)}
    env.pop("CAPTIONER_WEIGHTS", None)  # the weights must come from the installed package
    done = subprocess.run([str(python), "-c", script], cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    from captioner import Captioner

    expected = Captioner.load(device="cpu", fast=False).caption(str(ROOT / "tests" / "data" / "chelsea.jpg"))[0]
    assert done.stdout.splitlines()[-1] == f"CAPTION {expected}"  # the installed weights are the shipped ones
    # The console verbs that live in the mapped packages are found through their entry points.
    for verb in (["serve", "--help"], ["data", "--help"], ["evaluate", "--help"]):
        r = subprocess.run(
            [str(python), "-m", "captioner", *verb], cwd=work, capture_output=True, text=True, timeout=300, env=env
        )
        assert r.returncode == 0, (verb, r.stderr[-2000:])
        assert "usage: captioner " + verb[0] in r.stdout
