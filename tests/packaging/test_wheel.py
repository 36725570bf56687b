"""An installed copy must work outside the source tree, next to other people's packages,
and the plain install (no extras) must serve without PyTorch.

The repository keeps four top-level folders (captioner/, training/, service/, weights/);
installed, they are one import package, ``captioner`` (``captioner.training``,
``captioner.service``, ``captioner.weights``), so the wheel never claims a top-level name
such as ``service`` that another distribution may already use.

The lean install: ``pip install captioner-*.whl`` into a fresh venv, its dependencies
resolved by pip from this machine's configured index and wheel folders (PyPI, or the local
mirrors pip is configured with); there ``import torch`` fails while ``captioner caption``
(files and a folder) and a real ``captioner serve`` work on the shipped weights' graphs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from serverkit import wait_ready

ROOT = Path(__file__).resolve().parents[2]
SPRITES = "captioner/training/scenes/sprites/"
PHOTOS = [ROOT / "tests" / "data" / "chelsea.jpg", ROOT / "tests" / "data" / "coffee.jpg"]


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
        "captioner/weights/default/graphs/manifest.json",
        "captioner/weights/default/graphs/encoder.onnx",
        "captioner/weights/default/graphs/start.onnx",
        "captioner/weights/default/graphs/step.onnx",
        "captioner/weights/pooled/graphs/encoder-int8.onnx",
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
    for verb in ("serve", "train", "data", "evaluate", "calibrate", "export"):
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
model = Captioner.load()
print('CAPTION', model.caption({str(PHOTOS[0])!r})[0])
"""
    env = {**os.environ, "PYTHONPATH": str(others)}
    env.pop("CAPTIONER_WEIGHTS", None)  # the weights must come from the installed package
    done = subprocess.run([str(python), "-c", script], cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = shipped_captions()[0]
    assert done.stdout.splitlines()[-1] == f"CAPTION {expected}"  # the installed weights are the shipped ones
    # The console verbs that live in the mapped packages are found through their entry points.
    for verb in (["serve", "--help"], ["data", "--help"], ["evaluate", "--help"]):
        r = subprocess.run(
            [str(python), "-m", "captioner", *verb], cwd=work, capture_output=True, text=True, timeout=300, env=env
        )
        assert r.returncode == 0, (verb, r.stderr[-2000:])
        assert "usage: captioner " + verb[0] in r.stdout


def shipped_captions() -> list[str]:
    """What the shipped weights say about PHOTOS, from the source tree."""
    from captioner import Captioner

    return Captioner.load().caption([str(p) for p in PHOTOS])


# ---------------------------------------------------------------------------- the lean install
@pytest.fixture(scope="module")
def lean_venv(wheel: Path, tmp_path_factory) -> Path:
    """A fresh venv where ``pip install <wheel>`` (no extras) resolved the dependencies."""
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard: the dependencies may come from PyPI
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


def lean_env() -> dict[str, str]:
    """The environment of a user's shell: no source tree on the path, no CAPTIONER_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_") and k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1"}


def test_the_lean_install_has_no_torch_and_captions_files_and_folders(lean_venv: Path, tmp_path: Path):
    python, captioner = str(lean_venv / "bin" / "python"), str(lean_venv / "bin" / "captioner")
    env, work = lean_env(), tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=300, env=env)

    no_torch = run(python, "-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, no_torch.stderr
    where = run(python, "-c", "import captioner; print(captioner.__file__)")
    assert where.stdout.strip().startswith(str(lean_venv)), where  # the installed copy, not the source tree

    expected = shipped_captions()
    assert len(set(expected)) == 2  # two different captions: a mix-up of files would show
    files = run(captioner, "caption", *map(str, PHOTOS))
    assert files.returncode == 0, files.stderr[-3000:]
    lines = files.stdout.splitlines()
    assert len(lines) == 2 and all(
        line.split("\t")[:2] == [str(p), caption] for line, p, caption in zip(lines, PHOTOS, expected)
    ), (lines, expected)

    photos = work / "photos"
    (photos / "sub").mkdir(parents=True)
    for p in PHOTOS:
        (photos / "sub" / p.name).write_bytes(p.read_bytes())
    (photos / "broken.jpg").write_bytes(PHOTOS[0].read_bytes()[:300])  # a truncated JPEG
    out = work / "captions.jsonl"
    folder = run(captioner, "caption", str(photos), "-r", "--out", str(out), "--quiet")
    assert folder.returncode == 0, folder.stderr[-3000:]
    rows = {r["file"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {f: r["caption"] for f, r in rows.items()} == {f"sub/{p.name}": c for p, c in zip(PHOTOS, expected)}
    errors = [json.loads(line) for line in out.with_name("captions.errors.jsonl").read_text().splitlines()]
    assert [e["file"] for e in errors] == ["broken.jpg"], errors

    # the torch side is one line saying what to install, never a traceback
    train = run(captioner, "train", "--help")
    assert train.returncode != 0 and "pip install 'captioner[train]'" in train.stderr, train.stderr
    assert "Traceback" not in train.stderr


def test_the_lean_install_serves_over_http(lean_venv: Path, tmp_path: Path):
    from captioner import Captioner

    log = tmp_path / "serve.log"
    cmd = [str(lean_venv / "bin" / "captioner"), "serve", "--host", "127.0.0.1", "--port", "0", "--threads", "1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=lean_env(), start_new_session=True
    )
    server = wait_ready(proc, log, timeout_s=180)
    try:
        with server.client() as client:
            r = client.post("/v1/captions", files={"file": ("chelsea.jpg", PHOTOS[0].read_bytes(), "image/jpeg")})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["caption"] == shipped_captions()[0]
            facts = client.get("/v1/model")
            assert facts.status_code == 200, facts.text
            model = facts.json()
        shipped = Captioner.load()
        assert model["model_id"] == shipped.model_id and model["device"] == "cpu"
        assert model["runtime"]["encoder"] == "onnxruntime" and model["runtime"]["decoder"] == "onnxruntime"
    finally:
        code = server.stop()
    assert code == 0, server.log_text()[-3000:]
