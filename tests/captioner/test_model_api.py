"""The public API (Captioner) and the `captioner caption` command on a small checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from captionkit import teach_checkpoint
from PIL import Image

from captioner import Captioner, CheckpointError

DATA = Path(__file__).resolve().parents[1] / "data"


# What the taught model says about each test photo (a random decoder would give both the
# same few words, and every "the same caption by each path" check would hold trivially).
CAT, COFFEE = "a cat on a mat", "a cup of coffee on a table"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return teach_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "small",
        [DATA / "chelsea.jpg", DATA / "coffee.jpg"],
        [CAT, COFFEE],
        max_length=8,
        metadata={"note": "test model"},
    )


@pytest.fixture(scope="module")
def model(model_dir):
    return Captioner.load(model_dir, device="cpu")


def test_accepts_paths_bytes_and_pil_and_batches_consistently(model):
    cat = DATA / "chelsea.jpg"
    coffee = DATA / "coffee.jpg"
    by_path = model.caption([cat, str(coffee)])
    by_bytes = model.caption([cat.read_bytes(), coffee.read_bytes()])
    by_pil = model.caption([Image.open(cat), Image.open(coffee)])
    one_by_one = [model.caption(cat)[0], model.caption(coffee)[0]]
    assert by_path == by_bytes == by_pil == one_by_one == [CAT, COFFEE]
    assert all(isinstance(c, str) and len(c.split()) <= 8 for c in by_path)
    detailed = model.caption_detailed([cat, coffee], beam_size=3, batch_size=1)
    assert all(r.score <= 0 for r in detailed)
    assert [r.caption for r in detailed] == model.caption([cat, coffee], beam_size=3)


def test_save_load_round_trip_gives_identical_results(model, model_dir, tmp_path):
    from captioner.model import ReferenceCaptioner

    again = Captioner.load(ReferenceCaptioner.load(model_dir).save(tmp_path / "copy"))
    img = (DATA / "chelsea.jpg").read_bytes()
    a, b = model.caption_detailed(img, beam_size=2)[0], again.caption_detailed(img, beam_size=2)[0]
    assert a.caption == b.caption == CAT and abs(a.score - b.score) < 1e-5
    assert model.describe()["encoder"]["name"] == "efficientnet_lite0"
    assert model.model_id.startswith("small-")


def test_unknown_encoder_and_missing_default_are_clear(model_dir, tmp_path, monkeypatch):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["encoder"]["name"] = "alexnet9000"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown encoder"):
        Captioner.load(bad)
    monkeypatch.setenv("CAPTIONER_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="default weights are missing"):
        Captioner.load()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "captioner", *args], capture_output=True, text=True, timeout=120)


def test_cli_caption_good_and_corrupt_files(model_dir, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes((DATA / "coffee.jpg").read_bytes()[:300])
    r = run_cli(
        "caption",
        str(DATA / "chelsea.jpg"),
        str(corrupt),
        str(tmp_path / "absent.png"),
        "--checkpoint",
        str(model_dir),
        "--json",
    )
    assert r.returncode == 1
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["file"] for d in lines] == [str(DATA / "chelsea.jpg")]
    assert [d["caption"] for d in lines] == [CAT]
    err = r.stderr.strip().splitlines()
    assert len(err) == 2 and "broken.jpg" in err[0] and "absent.png" in err[1]
    assert "Traceback" not in r.stderr
    r = run_cli("caption", str(DATA / "chelsea.jpg"), "--checkpoint", str(model_dir))
    assert r.returncode == 0 and r.stdout.strip().endswith(CAT), r.stdout


def test_cli_help_and_bad_checkpoint(tmp_path):
    r = run_cli("--help")
    assert r.returncode == 0 and "caption" in r.stdout and "serve" in r.stdout
    r = run_cli("caption", "--help")
    assert "--beam-size" in r.stdout
    r = run_cli("caption", str(DATA / "chelsea.jpg"), "--checkpoint", str(tmp_path / "nope"))
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
