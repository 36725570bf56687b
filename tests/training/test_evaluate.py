"""The evaluate command: hand-computed BLEU, predictions formats and matching, model mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from captioner.training.datasets import load_dataset
from captioner.training.evaluate import (
    evaluate_captions,
    evaluate_model,
    evaluate_predictions,
    format_table,
    load_predictions,
    match_predictions,
)
from captioner.training.scenes import generate_scenes

from captioner import Captioner
from captioner.cli import main as cli_main
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.encoders import build_encoder
from captioner.errors import CaptionerError
from captioner.vocab import Vocabulary

FAST = ("bleu", "cider", "rouge")  # METEOR/SPICE start a JVM: covered by the metrics tests

# Two images with two references each, and one predicted caption each.
REFS = {
    1: ("dog.jpg", ["a dog runs on the grass", "a brown dog on the grass"]),
    2: ("cats/cat.jpg", ["two cats sleep on a sofa", "a cat on a red sofa"]),
}
PREDS = {1: "a dog on the grass", 2: "a cat on a sofa"}


def hand_bleu() -> list[float]:
    """BLEU-1..4 of PREDS against REFS, counted by hand.

    Clipped n-gram matches / candidate n-grams, summed over both images:
      1-grams: dog 5/5, cat 5/5 ("a" twice, clipped at 2 by "a cat on a red sofa")  -> 10/10
      2-grams: 4/4 + 4/4                                                               -> 8/8
      3-grams: "a dog on" is in no reference: 2/3; cat 3/3                             -> 5/6
      4-grams: only "dog on the grass" 1/2; only "a cat on a" 1/2                      -> 2/4
    Brevity penalty: candidates 5 + 5 = 10 words, closest reference lengths 6 + 6 = 12,
    so BP = exp(1 - 12/10).
    """
    bp = math.exp(1 - 12 / 10)
    p = [1.0, 1.0, 5 / 6, 2 / 4]
    return [bp * math.exp(sum(math.log(x) for x in p[:n]) / n) for n in range(1, 5)]


def write_coco_refs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": f} for i, (f, _) in REFS.items()]
    anns = [
        {"id": 10 * i + k, "image_id": i, "caption": c} for i, (_, caps) in REFS.items() for k, c in enumerate(caps)
    ]
    path = folder / "captions_test.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


@pytest.fixture
def refs(tmp_path):
    return load_dataset(write_coco_refs(tmp_path / "refs"), check_files=False)


def test_bleu_matches_hand_computation(refs):
    pairs = [(item, PREDS[item.image_id]) for item in refs.items]
    report = evaluate_captions(pairs, refs, metrics=FAST)
    for n, expected in enumerate(hand_bleu(), start=1):
        assert report["metrics"][f"bleu_{n}"] == pytest.approx(expected, rel=1e-6)
        assert report["cross_checks"][f"nltk_bleu_{n}"] == pytest.approx(expected, rel=1e-6)
    assert hand_bleu()[3] == pytest.approx(0.6578, abs=1e-4)  # exp(-0.2) * (5/12) ** (1/4), for the reader
    rows = {r["image_id"]: r for r in report["per_image"]}
    assert rows[1]["references"] == REFS[1][1] and rows[2]["caption"] == PREDS[2]
    assert set(rows[1]["scores"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "rouge_l"}
    worst = [r["scores"]["cider_d"] for r in report["worst"]]
    assert worst == sorted(worst) and report["worst_by"] == "cider_d"
    table = format_table(report)
    assert "BLEU-4" in table and f"{report['metrics']['bleu_4']:.4f}" in table and "CIDEr-D" in table


def test_predictions_formats_all_give_the_same_scores(refs, tmp_path):
    coco = tmp_path / "results.json"
    coco.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PREDS.items()]))
    jsonl = tmp_path / "captions.jsonl"  # as `captioner caption DIR --out` writes it
    jsonl.write_text(
        "".join(json.dumps({"file": REFS[i][0], "caption": c, "score": -3.5}) + "\n" for i, c in PREDS.items())
    )
    csv = tmp_path / "captions.csv"
    csv.write_text("file,caption,score\n" + "".join(f"/elsewhere/{REFS[i][0]},{c},-2.0\n" for i, c in PREDS.items()))
    by_id = tmp_path / "by_id.json"  # {id: caption} with ids as strings
    by_id.write_text(json.dumps({str(i): c for i, c in PREDS.items()}))
    reports = [evaluate_predictions(p, refs, metrics=FAST) for p in (coco, jsonl, csv, by_id)]
    for r in reports:
        assert r["images"] == 2 and not r["unmatched"]
        assert r["metrics"] == reports[0]["metrics"]
    assert reports[0]["metrics"]["bleu_4"] == pytest.approx(hand_bleu()[3], rel=1e-6)


def test_matching_reports_unmatched_duplicate_and_ambiguous(refs, tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        '{"file": "cat.jpg", "caption": "a cat"}\n'
        '{"image_id": "1", "caption": "a dog"}\n'
        '{"image_id": 1, "caption": "another dog"}\n'
        '{"file": "nowhere.jpg", "caption": "x"}\n'
    )
    matched = match_predictions(load_predictions(preds), refs)
    assert [(item.image_id, cap) for item, cap in matched.pairs] == [(1, "a dog"), (2, "a cat")]
    assert [p.caption for p in matched.duplicates] == ["another dog"]
    assert [p.key for p in matched.unmatched] == ["nowhere.jpg"]
    report = evaluate_predictions(preds, refs, metrics=("bleu",))
    assert any("match no reference image" in n and "p.jsonl:4" in n for n in report["notes"])

    # the same file name in two folders: a bare name is ambiguous, a longer tail is not
    two = tmp_path / "two"
    two.mkdir()
    (two / "captions_test.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a/x.jpg"}, {"id": 2, "file_name": "b/x.jpg"}],
                "annotations": [{"id": 1, "image_id": 1, "caption": "one"}, {"id": 2, "image_id": 2, "caption": "two"}],
            }
        )
    )
    ds = load_dataset(two, check_files=False)
    amb = tmp_path / "amb.jsonl"
    amb.write_text('{"file": "x.jpg", "caption": "one"}\n{"file": "photos/b/x.jpg", "caption": "two"}\n')
    m = match_predictions(load_predictions(amb), ds)
    assert [p.key for p in m.ambiguous] == ["x.jpg"] and [i.image_id for i, _ in m.pairs] == [2]

    nothing = tmp_path / "nothing.json"
    nothing.write_text(json.dumps([{"image_id": 99, "caption": "x"}]))
    with pytest.raises(CaptionerError, match="match no reference image"):
        evaluate_predictions(nothing, refs, metrics=FAST)


def test_bad_predictions_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "a.jpg", "caption": "ok"}\n{"file": "b.jpg"}\n')
    with pytest.raises(CaptionerError, match=r"bad.jsonl:2: needs a caption"):
        load_predictions(bad)
    notjson = tmp_path / "r.json"
    notjson.write_text("[{]")
    with pytest.raises(CaptionerError, match="not valid JSON"):
        load_predictions(notjson)
    with pytest.raises(CaptionerError, match="not found"):
        load_predictions(tmp_path / "missing.json")


# ---------------------------------------------------------------------------- model mode
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a dog and a cat on a green background", "two cars on a red background"])
    encoder = build_encoder("efficientnet_lite0")
    decoder = CaptionDecoder(
        DecoderConfig(
            vocab_size=len(vocab),
            feature_dim=encoder.feature_dim,
            embed_dim=16,
            hidden_dim=32,
            img_proj_dim=16,
            max_length=6,
        )
    )
    return Captioner(encoder, decoder, vocab).save(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "scenes"
    generate_scenes(out, {"test": 4}, seed=3, progress=False)
    return out


def test_model_mode_cli_scores_scenes_with_scene_accuracy(model_dir, scenes, tmp_path, capsys):
    # one image of the split is corrupt: it is reported and the others are scored
    victim = sorted((scenes / "images" / "test").iterdir())[1]
    original = victim.read_bytes()
    victim.write_bytes(original[:200])
    try:
        report_path = tmp_path / "report.json"
        code = cli_main(
            [
                "evaluate",
                "--checkpoint",
                str(model_dir),
                "--data",
                str(scenes),
                "--split",
                "test",
                "--metrics",
                "bleu,cider,rouge",
                "--beam-size",
                "2",
                "--out",
                str(report_path),
                "-q",
            ]
        )
    finally:
        victim.write_bytes(original)
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["images"] == 3 and len(report["per_image"]) == 3
    assert [f["file"] for f in report["failed"]] == [f"test/{victim.name}"]
    assert any("could not be read" in n for n in report["notes"])
    assert report["generation"]["beam_size"] == 2 and report["speed"]["images_per_second"] > 0
    assert set(report["metrics"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "rouge_l", "scene_accuracy"}
    # a random decoder is never exactly right; the reasons are recorded per image
    assert report["metrics"]["scene_accuracy"] == 0.0 and report["scene"]["total"] == 3
    assert all(r["scene_correct"] is False and r["scene_errors"] for r in report["per_image"])
    assert len(report["per_image"][0]["references"]) == 5
    assert "scene accuracy" in printed and "BLEU-4" in printed

    # scoring the same captions through predictions mode gives the same numbers
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": r["image_id"], "caption": r["caption"]} for r in report["per_image"]]))
    again = evaluate_predictions(preds, load_dataset(scenes, split="test", check_files=False), metrics=FAST)
    assert again["metrics"] == pytest.approx(report["metrics"])
    assert any("1 reference image(s) have no prediction" in n for n in again["notes"])


def test_model_mode_captions_match_the_library(model_dir, scenes):
    model = Captioner.load(model_dir, device="cpu")
    ds = load_dataset(scenes, split="test")
    report = evaluate_model(model, ds, metrics=("bleu",), batch_size=3, workers=1, progress=False)
    captions = [r["caption"] for r in report["per_image"]]
    assert captions == model.caption([item.image_path for item in ds.items])
    assert report["source"]["model_id"] == model.model_id and report["failed"] == []
