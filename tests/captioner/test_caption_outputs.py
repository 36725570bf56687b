"""What `captioner caption` and the Python API give back: the n-best captions (text and
JSON), the caption column kept clean of the out-of-domain note, per-image errors in a Python
batch and numpy arrays as images.

The taught checkpoint says "a cat" for the cat photo three times in five and "a cat on a
mat" twice, so beam search has a known second best; the shipped weights (trained on emoji
scenes, with domain statistics) flag the photos as unlike their training images.
"""

from __future__ import annotations

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
    import json

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
    code, out, err = run(capsys, *files, "--json")
    import json

    captions = [json.loads(line)["caption"] for line in out.splitlines()]
    code, out, err = run(capsys, *files)
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
