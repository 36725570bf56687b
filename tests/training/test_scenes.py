"""The built-in scenes dataset: catalogue and sprites, layout, captions, determinism, files on disk."""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from captioner.errors import CaptionerError
from captioner.metrics.scene import SceneImage, SceneTruth, check_caption, scene_accuracy
from captioner.training.datasets import load_dataset
from captioner.training.scenes import (
    BACKGROUNDS,
    CATEGORIES,
    SceneConfig,
    describe_scene,
    generate_scenes,
    make_example,
    render_preview,
    sample_scene,
)
from captioner.training.scenes.captions import TEMPLATES
from captioner.training.scenes.catalogue import CATEGORY_BY_NAME
from captioner.training.scenes.generator import SPRITES_DIR, styled_sprite

CONFIG = SceneConfig()


def test_catalogue_and_committed_sprites():
    assert len(CATEGORIES) >= 40
    assert len({c.name for c in CATEGORIES}) == len(CATEGORIES)
    assert {c.group for c in CATEGORIES} == {"animal", "vehicle", "food", "household"}
    for c in CATEGORIES:
        with Image.open(SPRITES_DIR / c.sprite_file) as im:
            assert im.mode == "RGBA" and im.size == (96, 96)
            alpha = im.getchannel("A")
            box = alpha.getbbox()
            assert box is not None
            # drawn to the edge on one axis at least (cropped glyph, centred)
            x0, y0, x1, y1 = box
            assert (x1 - x0) >= 90 or (y1 - y0) >= 90, c.name
        assert c.article == ("an" if c.name[0] in "aeiou" else "a")
    assert "SIL OPEN FONT LICENSE" in (SPRITES_DIR / "LICENSE-OFL.txt").read_text()
    assert len(BACKGROUNDS) >= 8


def test_scenes_are_learnable_layouts():
    lo, hi = CONFIG.sprite_range
    kinds_seen: Counter[str] = Counter()
    counts_seen: Counter[int] = Counter()
    backgrounds_seen: Counter[str] = Counter()
    n_kinds: Counter[int] = Counter()
    for i in range(400):
        scene = sample_scene(random.Random(i), CONFIG)
        boxes = [b for o in scene.objects for b in o.boxes]
        n_kinds[len(scene.objects)] += 1
        backgrounds_seen[scene.background] += 1
        for o in scene.objects:
            kinds_seen[o.kind] += 1
            counts_seen[o.count] += 1
            assert len(o.boxes) == o.count
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= CONFIG.image_size and 0 <= y0 < y1 <= CONFIG.image_size
            assert lo <= x1 - x0 <= hi and x1 - x0 == y1 - y0
        for a in range(len(boxes)):  # never overlapping, never touching
            for b in range(a + 1, len(boxes)):
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
                assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0
        assert len({o.kind for o in scene.objects}) == len(scene.objects)
    assert set(n_kinds) == {1, 2} and set(counts_seen) == {1, 2, 3}
    assert set(backgrounds_seen) == {b.name for b in BACKGROUNDS}
    assert len(kinds_seen) == len(CATEGORIES)
    assert (hi / lo) ** 2 < 2  # one big object never covers as much as two small ones


def test_deterministic_per_seed_split_and_index():
    a = make_example(7, "train", 3)
    b = make_example(7, "train", 3)
    assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1] and a[2] == b[2]
    others = [make_example(8, "train", 3), make_example(7, "val", 3), make_example(7, "train", 4)]
    assert all(o[0].tobytes() != a[0].tobytes() for o in others)
    image = a[0]
    assert image.mode == "RGB" and image.size == (224, 224)
    # the painted background is within the jitter of the named colour
    rgb = dict((b.name, b.rgb) for b in BACKGROUNDS)[a[1]["background"]]
    assert all(abs(p - q) <= CONFIG.background_jitter for p, q in zip(image.getpixel((0, 0)), rgb))


def test_captions_are_varied_grammatical_and_exactly_true():
    truth = SceneTruth(
        {
            "format": "captioner-scenes-truth/1",
            "categories": [c.to_dict() for c in CATEGORIES],
            "backgrounds": [b.name for b in BACKGROUNDS],
            "images": [],
        }
    )
    patterns = [
        re.compile("^" + t.format(objects=".+", a_bg="an?", bg=r"\w+", be="(?:is|are)") + "$") for t in TEMPLATES
    ]
    templates_used: Counter[int] = Counter()
    for i in range(300):
        rng = random.Random(i)
        scene = sample_scene(rng, CONFIG)
        captions = describe_scene(scene, rng)
        assert len(captions) == 5 and len(set(captions)) == 5
        gt = scene.truth()
        image = SceneImage(
            id=i, file_name="", background=gt["background"], counts={o["kind"]: o["count"] for o in gt["objects"]}
        )
        for caption in captions:
            check = check_caption(caption, image, truth.words)
            assert check.correct, (caption, check.details)
            assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", caption), caption
            assert not re.search(
                r"\b(two|three) (" + "|".join(c.name for c in CATEGORIES if c.name != c.plural) + r")\b", caption
            ), caption
            templates_used.update(i for i, p in enumerate(patterns) if p.match(caption))
    assert set(templates_used) == set(range(len(TEMPLATES)))
    scene = sample_scene(random.Random(0), CONFIG)
    (caption,) = describe_scene(scene, random.Random(0), 1)  # n=1 allowed: one caption, and a true one
    gt = scene.truth()
    image = SceneImage(
        id=0, file_name="", background=gt["background"], counts={o["kind"]: o["count"] for o in gt["objects"]}
    )
    assert check_caption(caption, image, truth.words).correct, caption
    assert any(p.match(caption) for p in patterns), caption
    with pytest.raises(ValueError):
        describe_scene(sample_scene(random.Random(0), CONFIG), random.Random(0), 9)


def test_generated_dataset_loads_through_the_coco_loader(tmp_path):
    out = tmp_path / "scenes"
    summary = generate_scenes(out, {"train": 12, "val": 4, "test": 5}, seed=3, progress=False)
    assert summary.images == 21 and summary.images_per_second > 0
    ds = load_dataset(out)
    assert ds.format == "coco" and ds.report.ok
    assert ds.splits == {"train": 12, "val": 4, "test": 5}
    assert all(len(item.captions) == 5 for item in ds)
    ids = [item.image_id for item in ds]
    assert len(set(ids)) == len(ids)
    with Image.open(ds.split("test")[0].image_path) as im:
        assert im.size == (224, 224) and im.format == "JPEG"

    truth = SceneTruth.load(out, split="test")
    assert len(truth) == 5 and truth.words.kinds[("sheep",)] == ("sheep", "either")
    references = {item.image_id: item.captions[0] for item in ds.split("test")}
    assert scene_accuracy(references, truth).accuracy == 1.0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["seed"] == 3 and meta["splits"]["train"] == 12 and len(meta["categories"]) == len(CATEGORIES)


def test_parallel_generation_is_identical_and_png_works(tmp_path, monkeypatch):
    import captioner.training.scenes.dataset as scenes_dataset

    monkeypatch.setattr(scenes_dataset, "CHUNK", 4)  # several tasks even for a tiny dataset
    splits = {"train": 10, "test": 3}
    generate_scenes(tmp_path / "one", splits, seed=1, workers=1, image_format="png", progress=False)
    generate_scenes(tmp_path / "two", splits, seed=1, workers=2, image_format="png", progress=False)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert Path("images/train/000009.png") in files
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_output_folder_is_protected(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(CaptionerError, match="holds no scenes dataset"):
        generate_scenes(foreign, {"train": 1}, progress=False)
    assert (foreign / "thesis.txt").exists()

    out = tmp_path / "scenes"
    generate_scenes(out, {"train": 3, "test": 2}, progress=False)
    with pytest.raises(CaptionerError, match="--force"):
        generate_scenes(out, {"train": 1}, progress=False)
    generate_scenes(out, {"train": 1}, overwrite=True, progress=False)
    assert load_dataset(out).splits == {"train": 1}
    assert not (out / "images" / "test").exists() and not (out / "scenes_test.json").exists()
    with pytest.raises(CaptionerError, match="unknown split"):
        generate_scenes(tmp_path / "x", {"training": 1}, progress=False)


def run_cli(*argv: str) -> int:
    from captioner.training.cli_data import register

    parser = argparse.ArgumentParser(prog="captioner")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_scenes_stats_and_preview(tmp_path, capsys):
    out = tmp_path / "s"
    assert (
        run_cli(
            "data",
            "scenes",
            "--out",
            str(out),
            "--train",
            "6",
            "--val",
            "2",
            "--test",
            "2",
            "--categories",
            "dog,cat,car",
            "--quiet",
        )
        == 0
    )
    assert "wrote 10 images" in capsys.readouterr().out
    kinds = {
        o["kind"] for f in out.glob("scenes_*.json") for i in json.loads(f.read_text())["images"] for o in i["objects"]
    }
    assert kinds <= {"dog", "cat", "car"}
    # the ground truth still knows every kind's words, so the metric catches any kind named wrongly
    assert len(json.loads((out / "scenes_test.json").read_text())["categories"]) == len(CATEGORIES)
    assert run_cli("data", "stats", str(out)) == 0
    text = capsys.readouterr().out
    assert "images       10" in text and "captions     50" in text
    with pytest.raises(CaptionerError, match="unknown category unicorn"):
        run_cli("data", "scenes", "--out", str(tmp_path / "u"), "--categories", "dog,unicorn")
    grid = tmp_path / "grid.png"
    assert run_cli("data", "preview", "--out", str(grid), "--rows", "1", "--cols", "2") == 0
    with Image.open(grid) as im:
        assert im.width > 2 * 224 and im.height > 224
    assert render_preview(rows=1, cols=1).size[0] > 224


def test_every_category_can_be_drawn():
    for c in CATEGORIES:
        sprite = styled_sprite(c.name, 60, False, CONFIG.outline, CONFIG.outline_rgb)
        assert sprite.size == (60, 60) and sprite.getchannel("A").getextrema()[1] == 255
    assert CATEGORY_BY_NAME["sheep"].plural == "sheep"
