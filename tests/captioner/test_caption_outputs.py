"""What `captioner caption` and the Python API give back: the n-best captions (text and
JSON), the caption column kept clean of the out-of-domain note, per-image errors in a Python
batch and numpy arrays as images.

The taught checkpoint says "a cat" for the cat photo three times in five and "a cat on a
mat" twice, so beam search has a known second best; the shipped weights (trained on emoji
scenes, with domain statistics) flag the photos as unlike their training images.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from captionkit import teach_checkpoint

from captioner.cli import main
from captioner.errors import ImageLoadError
from captioner.options import OptionError
from captioner.runtime.captioner import Captioner
from captioner.runtime.results import CaptionResult

DATA = Path(__file__).resolve().parents[1] / "data"
CAT_PHOTO, COFFEE_PHOTO = DATA / "chelsea.jpg", DATA / "coffee.jpg"
BEST, SECOND, COFFEE = "a cat", "a cat on a mat", "a cup of coffee"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    images = [CAT_PHOTO] * 5 + [COFFEE_PHOTO]
    captions = [BEST] * 3 + [SECOND] * 2 + [COFFEE]
    return teach_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "cats", images, captions, max_length=8, expect=[BEST] * 5 + [COFFEE]
    )


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["caption", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- n-best on the command line
def test_num_captions_prints_the_k_best_as_text_and_json(checkpoint, capsys):
    ckpt = ["--checkpoint", str(checkpoint)]
    code, out, _ = run(capsys, str(CAT_PHOTO), *ckpt, "--beam-size", "3", "--num-captions", "2")
    assert code == 0 and out.splitlines() == [BEST, SECOND]
    code, out, _ = run(capsys, str(CAT_PHOTO), str(COFFEE_PHOTO), *ckpt, "-k", "3", "-n", "2")
    lines = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and [row[:2] for row in lines[:2]] == [[str(CAT_PHOTO), BEST], [str(CAT_PHOTO), SECOND]]
    assert lines[2] == [str(COFFEE_PHOTO), COFFEE] and len(lines) in (3, 4)  # coffee: its best (and a second)

    code, out, _ = run(capsys, str(CAT_PHOTO), *ckpt, "--beam-size", "3", "--num-captions", "2", "--json")
    record = json.loads(out)
    assert code == 0 and record["caption"] == BEST
    assert [c["caption"] for c in record["candidates"]] == [BEST, SECOND]
    first, second = record["candidates"]
    assert set(first) == {"caption", "score", "confidence"}
    assert first["score"] == record["score"] and second["score"] < first["score"]
    code, out, _ = run(capsys, str(CAT_PHOTO), *ckpt, "--json")
    assert "candidates" not in json.loads(out)  # one caption asked for: no list


def test_num_captions_beyond_the_beam_or_with_out_is_one_line(checkpoint, capsys, tmp_path):
    code, out, err = run(capsys, str(CAT_PHOTO), "--checkpoint", str(checkpoint), "--num-captions", "3")
    assert code == 1 and out == ""
    assert err.strip() == (
        "error: num captions must be at most the beam size (1), got 3; raise the beam size to 3 or more"
    )
    code, _, err = run(capsys, str(DATA), "--out", str(tmp_path / "c.jsonl"), "-k", "3", "-n", "2")
    assert code == 1 and "--num-captions" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as stop:
        main(["caption", str(CAT_PHOTO), "--num-captions", "11"])
    assert stop.value.code == 2 and "num captions must be an integer from 1 to 10" in capsys.readouterr().err


# ---------------------------------------------------------------------- the out-of-domain note
def test_the_caption_column_is_the_caption_alone(capsys):
    """Shipped weights: the photos are out of domain; `cut -f2` must still give the caption."""
    files = [str(CAT_PHOTO), str(COFFEE_PHOTO)]
    code, out, _ = run(capsys, *files, "--json")
    captions = [json.loads(line)["caption"] for line in out.splitlines()]
    code, out, _ = run(capsys, *files)
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert [row[1] for row in rows] == captions  # cut -f2
    for row in rows:
        assert len(row) == 3 and not row[1].startswith("?") and "outside" not in row[1]
        assert "outside what this model was trained on (emoji scenes); the CNN sees: " in row[2]
    code, out, _ = run(capsys, files[1])  # one file: caption, then the note
    caption, note = out.rstrip("\n").split("\t")
    assert caption == captions[1] and note.startswith("outside what")


# ---------------------------------------------------------------------- the Python API
@pytest.fixture(scope="module")
def model(checkpoint) -> Captioner:
    return Captioner.load(checkpoint)


def test_python_n_best_and_labels_as_keywords(model):
    (r,) = model.caption_detailed(CAT_PHOTO, beam_size=3, num_captions=2, labels=3)
    assert isinstance(r, CaptionResult)
    assert [c.caption for c in r.candidates] == [BEST, SECOND] and r.candidates[0] is r
    assert r.labels is not None and len(r.labels) == 3
    assert model.caption(CAT_PHOTO, beam_size=3, num_captions=2) == [BEST]
    with pytest.raises(OptionError, match="at most the beam size"):
        model.caption_detailed(CAT_PHOTO, num_captions=2)


def test_a_python_batch_with_an_unreadable_image_returns_its_error(model, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(COFFEE_PHOTO.read_bytes()[:300])
    images = [CAT_PHOTO, broken, b"not an image", COFFEE_PHOTO]
    results = model.caption_detailed(images, errors="return", batch_size=2)
    assert len(results) == 4
    cat, bad_file, bad_bytes, coffee = results
    assert isinstance(cat, CaptionResult) and cat.caption == BEST
    assert isinstance(coffee, CaptionResult) and coffee.caption == COFFEE
    assert isinstance(bad_file, ImageLoadError) and "broken.jpg" in str(bad_file)
    assert isinstance(bad_bytes, ImageLoadError) and "not a recognised image format" in str(bad_bytes)
    with pytest.raises(ImageLoadError, match=r"broken\.jpg"):  # the default: the first bad image raises
        model.caption_detailed(images)
    with pytest.raises(ValueError, match='errors must be "raise" or "return"'):
        model.caption_detailed(images, errors="ignore")


def test_numpy_arrays_are_images_and_a_wrong_shape_says_what_is_accepted(model):
    from PIL import Image

    with Image.open(CAT_PHOTO) as im:
        pixels = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
    assert model.caption(pixels) == model.caption(CAT_PHOTO) == [BEST]
    assert model.caption([pixels, COFFEE_PHOTO]) == [BEST, COFFEE]
    for wrong in (pixels.transpose(2, 0, 1), pixels[..., 0], pixels.astype(np.float32), np.dstack([pixels, pixels])):
        with pytest.raises(ImageLoadError) as e:
            model.caption(wrong)
        message = str(e.value)
        assert f"an array must be HxWx3 uint8 RGB pixels, got shape {wrong.shape} of {wrong.dtype}" in message
        assert "or pass a path, the file's bytes or a PIL image" in message and "\n" not in message
    (r,) = model.caption_detailed([pixels.transpose(2, 0, 1)], errors="return")
    assert isinstance(r, ImageLoadError)


def test_options_and_keyword_settings_together_are_refused(model):
    from captioner.options import CaptionOptions

    with pytest.raises(TypeError, match="options or keyword settings"):
        model.caption_detailed(CAT_PHOTO, CaptionOptions(beam_size=3), labels=3)


def test_the_readme_python_snippet_runs_and_shows_the_trust_fields(tmp_path, monkeypatch, capsys):
    """The README's snippet on the shipped weights: a cat photo is a flagged guess with what
    the CNN sees, an emoji scene is captioned with its confidence, a broken file is an error."""
    from captioner.training.scenes import generate_scenes

    (code,) = re.findall(r"```python\n(.*?)```", (DATA.parents[1] / "README.md").read_text(), re.S)
    generate_scenes(tmp_path / "s", {"train": 0, "val": 0, "test": 1}, 7, progress=False)
    (scene,) = (tmp_path / "s" / "images" / "test").glob("*.jpg")
    for name, data in {
        "photo.jpg": scene.read_bytes(),
        "b.png": scene.read_bytes(),
        "cat.jpg": CAT_PHOTO.read_bytes(),
        "scene.jpg": scene.read_bytes(),
        "broken.jpg": CAT_PHOTO.read_bytes()[:200],
    }.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    guess, scene_line, failed, candidates = lines
    assert guess.startswith("guess: ") and "; the CNN sees " in guess and re.search(r"confidence \d+%", guess)
    assert re.fullmatch(r".+ \(confidence \d+%\)", scene_line) and not scene_line.startswith("guess")
    assert failed.startswith("failed: broken.jpg")
    assert candidates.startswith("[(") and candidates.count("', ") == 3
