"""Every caption format loads from a tiny fixture of its real layout, edge cases included:
duplicate ids, missing files, empty captions, bytes that are not UTF-8, Windows line endings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.errors import CaptionerError
from captioner.training.datasets import DatasetError, detect_format, load_dataset
from captioner.training.datasets.coco import load_coco
from captioner.training.datasets.flickr import load_flickr
from captioner.training.datasets.karpathy import load_karpathy
from captioner.training.datasets.simple import load_csv, load_jsonl
from captioner.training.datasets.stats import compute_stats, format_stats
from captioner.vocab import Vocabulary


def make_images(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (200, 10, 10)).save(path)


def by_id(ds) -> dict:
    return {item.image_id: item for item in ds}


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# --------------------------------------------------------------------------- COCO


def write_coco(path: Path) -> None:
    """COCO captions with every kind of problem, CRLF line endings and one Latin-1 byte."""
    data = {
        "info": {"description": "fixture"},
        "images": [
            {"id": 1, "file_name": "one.jpg"},
            {"id": 2, "file_name": "two.jpg"},
            {"id": 3, "file_name": "three.jpg"},  # no caption
            {"id": 4, "file_name": "four.jpg"},  # file missing
            {"id": 1, "file_name": "other.jpg"},  # duplicate id
            {"file_name": "noid.jpg"},  # malformed
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "  A dog\n runs on   the grass. "},
            {"id": 11, "image_id": 1, "caption": "A brown dog."},
            {"id": 12, "image_id": 2, "caption": ""},  # empty
            {"id": 13, "image_id": 2, "caption": "CAFE_PLACEHOLDER"},  # not UTF-8
            {"id": 14, "image_id": 2, "caption": "A red car."},
            {"id": 15, "image_id": 99, "caption": "Nobody's picture."},  # unknown image
            {"id": 16, "image_id": 4, "caption": "A lost file."},
            {"id": 17, "image_id": 1},  # malformed
        ],
    }
    text = json.dumps(data, indent=1)
    raw = crlf(text).replace(b"CAFE_PLACEHOLDER", b"a caf\xe9 sign")
    path.write_bytes(raw)


def test_coco_loads_and_reports_every_problem(tmp_path):
    make_images(tmp_path / "images", "one.jpg", "two.jpg", "three.jpg", "other.jpg")
    write_coco(tmp_path / "captions_val2014.json")
    ds = load_coco(tmp_path / "captions_val2014.json")
    assert ds.format == "coco" and ds.images_dir == tmp_path / "images"
    items = by_id(ds)
    assert sorted(items) == [1, 2]
    assert items[1].captions == ["A dog runs on the grass.", "A brown dog."]
    assert items[1].image_path == tmp_path / "images" / "one.jpg"  # the first of the duplicate ids wins
    assert items[2].captions == ["A red car."]
    assert {i.split for i in ds} == {"val"}  # from the file name
    r = ds.report
    assert r.count("duplicate") == 1 and r.count("unknown_image") == 1 and r.count("empty_caption") == 1
    assert r.count("malformed") == 2 and r.count("no_captions") == 1 and r.missing_files == 1
    assert r.count("encoding") == 1
    assert r.missing_examples == [str(tmp_path / "images" / "four.jpg")]
    encoding = r.problems("encoding")[0]
    raw_lines = (tmp_path / "captions_val2014.json").read_bytes().split(b"\n")
    line = next(i for i, ln in enumerate(raw_lines, 1) if b"\xe9" in ln)
    assert encoding.where.endswith(f":{line}") and "0xE9" in encoding.message
    assert "annotations[7]" in r.problems("malformed")[1].where
    summary = r.summary()
    assert "1 image files missing" in summary and "four.jpg" in summary


def test_coco_missing_files_can_fail_the_load(tmp_path):
    make_images(tmp_path / "images", "one.jpg", "two.jpg")
    write_coco(tmp_path / "captions_val2014.json")
    with pytest.raises(DatasetError, match=r"four\.jpg.*--images DIR") as err:
        load_coco(tmp_path / "captions_val2014.json", on_missing="error")
    assert isinstance(err.value, CaptionerError)
    assert "2 of 4 image files are missing" in str(err.value)  # three.jpg and four.jpg
    # and without looking at files at all, every captioned entry is kept
    ds = load_coco(tmp_path / "captions_val2014.json", check_files=False)
    assert sorted(by_id(ds)) == [1, 2, 4]


def test_coco_folder_of_split_files_finds_the_image_folders(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    for split, n in (("train2014", 3), ("val2014", 2)):
        make_images(tmp_path / split, *[f"{split}_{i}.jpg" for i in range(n)])
        (ann / f"captions_{split}.json").write_text(
            json.dumps(
                {
                    "images": [{"id": f"{split}-{i}", "file_name": f"{split}_{i}.jpg"} for i in range(n)],
                    "annotations": [{"image_id": f"{split}-{i}", "caption": f"picture {i}"} for i in range(n)],
                }
            )
        )
    ds = load_dataset(ann)
    assert ds.splits == {"train": 3, "val": 2}
    assert ds.report.ok
    assert all(item.image_path.parent.name in ("train2014", "val2014") for item in ds)
    assert len(load_dataset(ann, split="val")) == 2


def test_coco_rejects_what_is_not_coco(tmp_path):
    bad = tmp_path / "captions.json"
    bad.write_text('{"images": [1, 2,\n "oops"')
    with pytest.raises(DatasetError, match=r"captions\.json: not valid JSON at line 2"):
        load_coco(bad)
    bad.write_text("[1, 2, 3]")
    with pytest.raises(DatasetError, match="not a COCO captions file"):
        load_coco(bad)
    with pytest.raises(DatasetError, match="file not found"):
        load_coco(tmp_path / "nope.json")


# --------------------------------------------------------------------------- Flickr


def write_flickr(folder: Path) -> None:
    lines = [
        b"a.jpg#0\tA dog runs .",
        b"a.jpg#1\tA brown dog plays in the grass .",
        b"a.jpg#1\tthe same caption number again",  # duplicate
        b"b.jpg#0\t   ",  # empty caption
        b"b.jpg#1\tA caf\xe9 by the river .",  # not UTF-8
        b"b.jpg#2\tA bird on a branch .",
        b"this line has no tab",  # malformed
        b"c.jpg#0\tA cat sleeps .",
        b"d.jpg#0\tAn image in no split list .",
        b"e.jpg#0\tAn image whose file is missing .",
        b"",
    ]
    (folder / "Flickr8k.token.txt").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines))
    (folder / "Flickr8k.lemma.token.txt").write_bytes(b"x.jpg#0\tlemmatised , ignored\n")
    (folder / "Flickr_8k.trainImages.txt").write_bytes(b"a.jpg\r\nc.jpg\r\ne.jpg\r\n")
    (folder / "Flickr_8k.devImages.txt").write_bytes(b"b.jpg\n")
    (folder / "Flickr_8k.testImages.txt").write_bytes(b"f.jpg\na.jpg\n")
    make_images(folder / "Flicker8k_Dataset", "a.jpg", "b.jpg", "c.jpg", "d.jpg", "f.jpg")


def test_flickr_token_file_with_split_lists(tmp_path):
    write_flickr(tmp_path)
    ds = load_flickr(tmp_path / "Flickr8k.token.txt")
    items = by_id(ds)
    assert ds.images_dir == tmp_path / "Flicker8k_Dataset"
    assert sorted(items) == ["a.jpg", "b.jpg", "c.jpg"]
    assert items["a.jpg"].captions == ["A dog runs .", "A brown dog plays in the grass ."]
    assert items["a.jpg"].split == "train"  # listed again in test: the first list wins
    assert items["b.jpg"].split == "val" and items["b.jpg"].captions == ["A bird on a branch ."]
    r = ds.report
    assert r.count("duplicate") == 2
    assert sorted(p.where for p in r.problems("duplicate")) == ["Flickr8k.token.txt:3", "Flickr_8k.testImages.txt:2"]
    assert r.problems("malformed")[0].where == "Flickr8k.token.txt:7"
    assert r.problems("encoding")[0].where == "Flickr8k.token.txt:5"
    assert r.problems("empty_caption")[0].where == "Flickr8k.token.txt:4"
    assert r.count("not_in_split") == 1 and "d.jpg" in r.problems("not_in_split")[0].message
    assert r.missing_files == 1 and r.missing_examples[0].endswith("e.jpg")
    assert r.count("no_captions") == 1 and r.problems("no_captions")[0].where == "f.jpg"


def test_flickr_without_split_lists_and_folder_detection(tmp_path):
    write_flickr(tmp_path)
    ds = load_flickr(tmp_path / "Flickr8k.token.txt", split_lists={})
    assert ds.splits == {"train": 4}  # a, b, c, d (e's file is missing)
    fmt, path = detect_format(tmp_path)
    assert (fmt, path.name) == ("flickr", "Flickr8k.token.txt")  # not the lemma file
    assert sorted(by_id(load_dataset(tmp_path))) == ["a.jpg", "b.jpg", "c.jpg"]


# --------------------------------------------------------------------------- Karpathy


def write_karpathy(path: Path) -> None:
    def img(i, split, sentences, **extra):
        return {
            "filepath": "val2014",
            "filename": f"COCO_{i}.jpg",
            "split": split,
            "cocoid": i,
            "imgid": i,
            "sentences": sentences,
            **extra,
        }

    data = {
        "dataset": "coco",
        "images": [
            img(1, "train", [{"raw": "A man riding a horse.", "tokens": ["a", "man"]}]),
            img(2, "restval", [{"raw": "Two birds on a wire."}, {"raw": "   "}]),
            img(3, "val", [{"tokens": ["a", "red", "bus"]}]),
            img(4, "test", []),
            img(5, "bogus", [{"raw": "x"}]),
            img(1, "train", [{"raw": "duplicate id"}]),
            img(6, "test", [{"raw": "A missing image."}]),
        ],
    }
    path.write_text(json.dumps(data))


def test_karpathy_splits_restval_and_problems(tmp_path):
    write_karpathy(tmp_path / "dataset_coco.json")
    make_images(tmp_path / "val2014", *[f"COCO_{i}.jpg" for i in range(1, 6)])
    ds = load_karpathy(tmp_path / "dataset_coco.json")
    items = by_id(ds)
    assert ds.splits == {"train": 2, "val": 1}
    assert items[2].split == "train" and items[2].captions == ["Two birds on a wire."]
    assert items[3].captions == ["a red bus"]  # from tokens when there is no raw
    assert items[1].image_path == tmp_path / "val2014" / "COCO_1.jpg"
    r = ds.report
    assert r.count("malformed") == 1 and "bogus" in r.problems("malformed")[0].message
    assert r.count("duplicate") == 1 and r.count("empty_caption") == 1
    assert r.count("no_captions") == 1 and r.missing_files == 1

    kept = load_karpathy(tmp_path / "dataset_coco.json", fold_restval=False)
    assert kept.splits == {"train": 1, "val": 1, "restval": 1}
    assert detect_format(tmp_path) == ("karpathy", tmp_path / "dataset_coco.json")


# --------------------------------------------------------------------------- JSONL and CSV


def test_jsonl_rows(tmp_path):
    make_images(tmp_path / "photos", "cat.jpg", "dog.jpg")
    absolute = tmp_path / "elsewhere" / "abs.png"
    make_images(absolute.parent, absolute.name)
    lines = [
        b'{"file": "photos/cat.jpg", "caption": "a cat on a sofa"}',
        b'{"image": "photos/cat.jpg", "caption": "a sleeping cat", "split": "train"}',
        b'{"file": "photos/dog.jpg", "captions": ["a dog", "a happy dog"], "split": "validation"}',
        b'{"file": "photos/dog.jpg", "caption": "broken',  # not JSON
        b'["a", "list"]',  # not an object
        b'{"file": "photos/dog.jpg"}',  # no caption
        b'{"file": "photos/dog.jpg", "caption": "x", "split": "banana"}',  # bad split
        b'{"file": "photos/dog.jpg", "caption": "un caf\xe9"}',  # not UTF-8
        b"",
        b'{"file": "' + str(absolute).encode() + b'", "caption": "absolute path"}',
        b'{"file": "photos/gone.jpg", "caption": "a missing photo"}',
    ]
    path = tmp_path / "mine.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    ds = load_jsonl(path)
    items = by_id(ds)
    assert items["photos/cat.jpg"].captions == ["a cat on a sofa", "a sleeping cat"]
    assert items["photos/dog.jpg"].captions == ["a dog", "a happy dog"]
    assert items["photos/dog.jpg"].split == "val"
    assert items[str(absolute)].image_path == absolute
    r = ds.report
    assert [p.where for p in r.problems("malformed")] == [
        "mine.jsonl:4",
        "mine.jsonl:5",
        "mine.jsonl:6",
        "mine.jsonl:7",
    ]
    assert r.problems("encoding")[0].where == "mine.jsonl:8"
    assert r.missing_files == 1
    assert detect_format(path) == ("jsonl", path)


def test_csv_with_header_quotes_and_problems(tmp_path):
    make_images(tmp_path, "a.jpg", "b.jpg")
    path = tmp_path / "captions.csv"
    path.write_bytes(
        b"image,caption,split\r\n"
        b'a.jpg,"a dog, a cat and a bird",train\r\n'
        b"a.jpg,two dogs,train\r\n"
        b"b.jpg,a caption, with an unquoted comma,test\r\n"  # too many columns
        b"b.jpg\r\n"  # too few
        b"b.jpg,caf\xe9 au lait,test\r\n"  # not UTF-8
        b"b.jpg,,test\r\n"  # empty caption
        b"b.jpg,a blue bus,test\r\n"
    )
    ds = load_csv(path)
    items = by_id(ds)
    assert items["a.jpg"].captions == ["a dog, a cat and a bird", "two dogs"]
    assert items["b.jpg"].captions == ["a blue bus"] and items["b.jpg"].split == "test"
    r = ds.report
    assert [p.where for p in r.problems("malformed")] == ["captions.csv:4", "captions.csv:5"]
    assert r.problems("encoding")[0].where == "captions.csv:6"
    assert r.problems("empty_caption")[0].where == "captions.csv:7"


def test_tsv_without_header(tmp_path):
    make_images(tmp_path, "a.jpg")
    path = tmp_path / "captions.tsv"
    path.write_text("a.jpg\ta red apple\na.jpg\tan apple, shiny\n", encoding="utf-8")
    ds = load_dataset(path)
    assert ds.format == "csv" and ds[0].captions == ["a red apple", "an apple, shiny"]


# --------------------------------------------------------------------------- detection, stats, CLI


def test_detect_format_and_errors(tmp_path):
    write_coco(tmp_path / "my_captions.json")
    assert detect_format(tmp_path / "my_captions.json")[0] == "coco"
    (tmp_path / "Flickr30k.token").write_text("1.jpg#0\tx\n")
    assert detect_format(tmp_path / "Flickr30k.token")[0] == "flickr"
    (tmp_path / "results.txt").write_text("1000092795.jpg#0\tTwo young guys\n")
    assert detect_format(tmp_path / "results.txt")[0] == "flickr"
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(DatasetError, match="unknown caption file format"):
        detect_format(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="found no captions_"):
        load_dataset(empty)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_dataset(tmp_path / "my_captions.json", format="yaml")
    make_images(tmp_path / "images", "one.jpg", "two.jpg")
    with pytest.raises(DatasetError, match=r"no images in split\(s\) \['test'\]"):
        load_dataset(tmp_path / "my_captions.json", split="test")


def test_stats_match_the_vocabulary(tmp_path):
    make_images(tmp_path, "a.jpg", "b.jpg")
    rows = [{"file": "a.jpg", "caption": c} for c in ["a dog", "a dog runs", "a big dog runs fast"]]
    rows += [{"file": "b.jpg", "caption": "a cat", "split": "test"}]
    rows += [{"file": "gone.jpg", "caption": "a ghost"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_dataset(tmp_path / "d.jsonl")
    stats = compute_stats(ds)
    captions = list(ds.captions())
    assert stats.images == 2 and stats.captions == 4
    assert stats.splits == {"train": {"images": 1, "captions": 3}, "test": {"images": 1, "captions": 1}}
    assert stats.captions_per_image == {3: 1, 1: 1}
    assert stats.vocab_sizes[1] == len(Vocabulary.build(captions, min_count=1)) - 4 == 6
    assert stats.vocab_sizes[5] == len(Vocabulary.build(captions, min_count=5)) - 4 == 0
    assert stats.caption_lengths == {2: 2, 3: 1, 5: 1}
    assert stats.missing_files == 1
    text = format_stats(stats)
    assert "missing image files  1" in text and "vocabulary (words seen >= 5 times)  0" in text


def run_cli(*argv: str) -> int:
    from captioner.training.cli_data import register

    parser = argparse.ArgumentParser(prog="captioner")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_stats(tmp_path, capsys):
    write_flickr(tmp_path)
    assert run_cli("data", "stats", str(tmp_path)) == 1  # problems found: exit status 1
    out, _ = capsys.readouterr()
    assert "images       3" in out and "captions     4" in out and "1 image files missing" in out
    assert "Flickr8k.token.txt:7" in out  # the malformed line is shown, once, at the end of the report
    assert run_cli("data", "stats", str(tmp_path / "Flickr8k.token.txt"), "--json", "--split", "train") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 2 and data["format"] == "flickr" and data["splits"]["train"]["captions"] == 3
    with pytest.raises(CaptionerError, match="missing"):
        run_cli("data", "stats", str(tmp_path), "--on-missing", "error")
