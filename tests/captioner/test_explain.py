"""Attention maps per word: a tiny attention captioner trained in the test gives one map per
word (a distribution over its grid), the figure has the classic layout and its tiles are
bright where the map is high, `captioner explain` writes the figures, a pooled model gets
the one line saying maps need an attention model, and the localisation geometry maps an
attention peak onto the scene's grid."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from captioner.attention import AttentionConfig, AttentionDecoder
from captioner.cli import main
from captioner.encoders import Preprocess
from captioner.explain import (
    COLUMNS,
    NEEDS_ATTENTION,
    TILE,
    explain,
    object_words,
    peak_cell,
    render_figure,
    scene_cells,
    write_figures,
)
from captioner.model import ReferenceCaptioner
from captioner.vocab import Vocabulary

SIZE = 48
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class GridEncoder(nn.Module):
    """A spatial encoder: the mean colour of each cell of a 3 x 3 grid, (B, 9, 3)."""

    feature_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 3).flatten(2).transpose(1, 2)  # (B, 9, 3)


def _image(colour: str, cell: int) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    r, c = divmod(cell, 3)
    im.paste(COLOURS[colour], (c * 16, r * 16, c * 16 + 16, r * 16 + 16))
    return im


@pytest.fixture(scope="module")
def tiny_model() -> ReferenceCaptioner:
    torch.set_num_threads(1)
    rng = random.Random(0)
    samples = [(rng.choice(list(COLOURS)), rng.randrange(9)) for _ in range(120)]
    captions = [f"a {c} square on gray" for c, _ in samples]
    vocab = Vocabulary.build(captions)
    torch.manual_seed(0)
    cfg = AttentionConfig(
        vocab_size=len(vocab), feature_dim=3, embed_dim=8, hidden_dim=16, img_proj_dim=8, attention_dim=8, dropout=0.0
    )
    pre = Preprocess(resize_size=SIZE, crop_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    model = ReferenceCaptioner(GridEncoder(), AttentionDecoder(cfg), vocab, preprocess=pre, device="cpu")
    features = torch.from_numpy(
        model.encode(np.stack([model.preprocess(_image(c, k)) for c, k in samples]))
    )  # (B, 9, 3)
    tokens = torch.tensor([vocab.encode(c) for c in captions])  # (B, T): all the same length
    dec = model.decoder.train()
    opt = torch.optim.Adam(dec.parameters(), lr=0.03)
    for _ in range(120):
        opt.zero_grad()
        loss = dec.loss(features.clone(), tokens)
        loss.backward()
        opt.step()
    dec.eval()
    return model


def test_one_map_per_word_each_a_distribution_over_the_grid(tiny_model):
    exs = explain(tiny_model, [_image("green", 4), _image("red", 0)])
    assert [e.caption for e in exs] == ["a green square on gray", "a red square on gray"]  # it learnt the task
    for e in exs:
        assert e.words == [*e.caption.split(), "<end>"]
        assert e.maps.shape == (len(e.words), 3, 3)
        np.testing.assert_allclose(e.maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
        assert e.image.size == (SIZE, SIZE)
        assert len(e.peaks()) == len(e.words)
    d = exs[0].to_dict()
    assert d["words"][1]["word"] == "green" and len(d["words"][1]["attention"]) == 3


def test_the_figure_has_the_classic_layout_and_tiles_are_bright_where_the_map_is(tiny_model):
    ex = explain(tiny_model, [_image("blue", 8)])[0]
    ex.maps[1] = 0.0
    ex.maps[1, 2, 2] = 1.0  # word 1: all attention on the bottom-right cell
    fig = render_figure(ex)
    tiles = 1 + len(ex.words)
    cols = min(COLUMNS, tiles)
    assert fig.size[0] == cols * (TILE + 6) + 6
    assert fig.size[1] == 34 + -(-tiles // cols) * (TILE + 24 + 6)
    pixels = np.asarray(fig, dtype=np.float32)
    x0, y0 = 6 + 2 * (TILE + 6), 34  # word 1 is the third tile of the first row
    tile = pixels[y0 : y0 + TILE, x0 : x0 + TILE]
    lit = tile[int(TILE * 5 / 6), int(TILE * 5 / 6)]  # the bottom-right cell's centre: the blue square
    dark = tile[TILE // 6, TILE // 6]  # the top-left cell's centre: grey background, dimmed
    assert lit[2] > 150 and dark.max() < 60
    original = pixels[y0 : y0 + TILE, 6 : 6 + TILE]  # the first tile is the image itself
    assert abs(original[TILE // 6, TILE // 6].mean() - 128) < 6


def test_write_figures_writes_a_png_per_image_and_the_maps(tiny_model, tmp_path):
    paths = []
    for i, (c, k) in enumerate([("red", 2), ("green", 6)]):
        paths.append(tmp_path / f"img{i}.png")
        _image(c, k).save(paths[-1])
    written = write_figures(tiny_model, paths, tmp_path / "out")
    assert [p.name for p in written] == ["img0.png", "img1.png"]
    with Image.open(written[0]) as im:
        assert im.format == "PNG" and im.size[0] > TILE * 3
    record = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert record[str(paths[1])]["caption"] == "a green square on gray"


def test_a_pooled_model_gets_one_line_saying_maps_need_an_attention_model(tmp_path, capsys):
    image = tmp_path / "x.png"
    _image("red", 0).save(image)
    pooled = Path(__file__).resolve().parents[2] / "weights" / "pooled"  # the shipped classic model
    assert main(["explain", str(image), "--checkpoint", str(pooled), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {NEEDS_ATTENTION}"
    assert not (tmp_path / "out").exists()


def test_localisation_geometry():
    # a 224 px scene on a 3 x 3 board; the encoder's 7 x 7 grid over the same square
    assert scene_cells([(10, 10, 60, 60), (160, 80, 210, 130)], 224, 3) == {(0, 0), (1, 2)}
    att = np.zeros((7, 7))
    att[6, 0] = 1.0  # bottom-left encoder cell -> bottom-left scene cell
    assert peak_cell(att, 224, 3) == (2, 0)
    att[6, 0], att[3, 3] = 0.0, 1.0  # the centre
    assert peak_cell(att, 224, 3) == (1, 1)
    att[3, 3], att[2, 5] = 0.0, 1.0  # row 2 of 7 (y = 80) is the middle third; column 5 (x = 176) the right
    assert peak_cell(att, 224, 3) == (1, 2)
    words = object_words([{"name": "teddy bear", "plural": "teddy bears"}, {"name": "sheep", "plural": "sheep"}])
    assert words == {"teddy": "teddy bear", "bear": "teddy bear", "bears": "teddy bear", "sheep": "sheep"}


def test_localisation_counts_object_words_whose_peak_is_on_their_object(tiny_model, tmp_path):
    """A scenes-format dataset of the tiny model's pictures: one 'square' per image, in cell k
    of a 3 x 3 board (the encoder's grid is the same board, so a peak cell is a board cell)."""
    from captioner.explain import localisation

    rng = random.Random(5)
    (tmp_path / "images" / "val").mkdir(parents=True)
    truths, expected_hits = [], 0
    for i in range(12):
        colour, cell = rng.choice(list(COLOURS)), rng.randrange(9)
        name = f"val/{i:06d}.png"
        _image(colour, cell).save(tmp_path / "images" / name)
        r, c = divmod(cell, 3)
        box = [c * 16 + 2, r * 16 + 2, c * 16 + 14, r * 16 + 14]
        truths.append(
            {
                "id": i,
                "file_name": name,
                "background": "gray",
                "objects": [{"kind": "square", "count": 1, "boxes": [box]}],
            }
        )
        ex = explain(tiny_model, [_image(colour, cell)])[0]
        expected_hits += ex.peaks()[ex.words.index("square")] == (r, c)
    catalogue = {"categories": [{"name": "square", "plural": "squares", "article": "a"}], "backgrounds": ["gray"]}
    (tmp_path / "scenes_val.json").write_text(json.dumps({"format": "x", **catalogue, "images": truths}))
    (tmp_path / "dataset.json").write_text(json.dumps({"config": {"image_size": SIZE, "grid": 3}}))
    loc = localisation(tiny_model, tmp_path, "val", images=10)
    assert (loc.images, loc.words) == (10, 10)  # one 'square' per caption, the first 10 images
    assert loc.chance == pytest.approx(1 / 9)
    full = localisation(tiny_model, tmp_path, "val", images=12)
    assert full.hits == expected_hits and full.fraction == pytest.approx(expected_hits / 12)
