"""The evaluate command: hand-computed BLEU, predictions formats and matching, model mode."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from captionkit import teach_checkpoint

from captioner import Captioner
from captioner.cli import main as cli_main
from captioner.errors import CaptionerError
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
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "scenes"
    generate_scenes(out, {"test": 4}, seed=3, progress=False)
    return out


# What the taught model says about each test scene (seed 3): right, right, right, and a
# wrong count for the last one ("two strawberries": the scene has three), so the scene
# accuracy of the three readable images is exactly 2/3.
TAUGHT = {
    "000000.jpg": "a carrot and three laptops on a red background",
    "000001.jpg": "a pizza and a cat on a purple background",
    "000002.jpg": "three butterflies on a green background",
    "000003.jpg": "a fish and two strawberries on a pink background",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, scenes) -> Path:
    """A small decoder on the real Lite0 encoder, taught the TAUGHT caption of each test scene."""
    images = [scenes / "images" / "test" / name for name in TAUGHT]
    return teach_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", images, list(TAUGHT.values()))


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
    # the taught captions: two of the three scored scenes are right, the third has a wrong count
    assert report["metrics"]["scene_accuracy"] == pytest.approx(2 / 3) and report["scene"]["total"] == 3
    rows = {Path(r["file"]).name: r for r in report["per_image"]}
    assert {name: r["caption"] for name, r in rows.items()} == {n: c for n, c in TAUGHT.items() if n != victim.name}
    assert [rows[n]["scene_correct"] for n in ("000000.jpg", "000002.jpg", "000003.jpg")] == [True, True, False]
    assert not rows["000000.jpg"]["scene_errors"] and not rows["000002.jpg"]["scene_errors"]
    assert any("strawberr" in e for e in rows["000003.jpg"]["scene_errors"])  # the reason is recorded
    assert 0 < report["metrics"]["bleu_4"] < 1 and report["metrics"]["cider_d"] > 0
    # the two right captions are word for word one of their references: per-image BLEU-4 is 1
    assert [rows[n]["scores"]["bleu_4"] for n in ("000000.jpg", "000002.jpg")] == pytest.approx([1.0, 1.0])
    assert rows["000003.jpg"]["scores"]["bleu_4"] < 1
    assert len(report["per_image"][0]["references"]) == 5
    assert "scene accuracy" in printed and "BLEU-4" in printed

    # scoring the same captions through predictions mode gives the same numbers
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": r["image_id"], "caption": r["caption"]} for r in report["per_image"]]))
    again = evaluate_predictions(preds, load_dataset(scenes, split="test", check_files=False), metrics=FAST)
    assert again["metrics"] == pytest.approx(report["metrics"])
    assert again["metrics"]["scene_accuracy"] == pytest.approx(2 / 3)
    assert any("1 reference image(s) have no prediction" in n for n in again["notes"])


def test_model_mode_captions_match_the_library(model_dir, scenes):
    model = Captioner.load(model_dir)
    ds = load_dataset(scenes, split="test")
    report = evaluate_model(model, ds, metrics=("bleu",), batch_size=3, workers=1, progress=False)
    captions = [r["caption"] for r in report["per_image"]]
    assert captions == model.caption([item.image_path for item in ds.items])
    assert report["source"]["model_id"] == model.model_id and report["failed"] == []


# ---------------------------------------------------------------------------- matching a caption run
@pytest.fixture(scope="module")
def two_splits(tmp_path_factory) -> Path:
    """Scenes with train and test: the file names 000000.jpg..000003.jpg exist in both folders."""
    out = tmp_path_factory.mktemp("data2") / "scenes"
    generate_scenes(out, {"train": 6, "test": 4}, seed=5, progress=False)
    return out


def test_captions_of_one_split_folder_match_that_folder(model_dir, two_splits, tmp_path, capsys):
    # what a user does: caption the test images folder, then evaluate against the whole dataset
    preds = tmp_path / "p.jsonl"
    folder = two_splits / "images" / "test"
    assert cli_main(["caption", str(folder), "--checkpoint", str(model_dir), "--out", str(preds)]) == 0
    assert json.loads(preds.read_text().splitlines()[0])["file"] == "000000.jpg"  # relative to the folder
    refs = load_dataset(two_splits, check_files=False)
    matched = match_predictions(load_predictions(preds), refs)
    assert [item.split for item, _ in matched.pairs] == ["test"] * 4 and not matched.ambiguous
    assert matched.folder is not None and matched.folder.endswith("images/test") and matched.settled == 4
    capsys.readouterr()
    code = cli_main(
        ["evaluate", "--predictions", str(preds), "--references", str(two_splits), "--metrics", "bleu,cider"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "images scored: 4" in printed and "matched them in 'test'" in printed and "--split" in printed
    # the same numbers as naming the split
    by_split = evaluate_predictions(preds, load_dataset(two_splits, split="test", check_files=False), metrics=FAST)
    report = evaluate_predictions(preds, refs, metrics=FAST)
    assert report["metrics"] == by_split["metrics"]

    # the train folder's captions: 6 names, 4 of them also in test -> train, the folder that holds all 6
    train_preds = tmp_path / "train.jsonl"
    names = sorted(p.name for p in (two_splits / "images" / "train").iterdir())
    train_preds.write_text("".join(json.dumps({"file": n, "caption": "a cat"}) + "\n" for n in names))
    m = match_predictions(load_predictions(train_preds), refs)
    assert [item.split for item, _ in m.pairs] == ["train"] * 6 and m.settled == 4


def test_when_nothing_matches_the_message_shows_both_sides_and_what_to_pass(two_splits, tmp_path):
    refs = load_dataset(two_splits, check_files=False)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"file": "photo_17.jpg", "caption": "a cat"}\n{"file": "photo_18.jpg", "caption": "a dog"}\n')
    with pytest.raises(CaptionerError) as e:
        evaluate_predictions(wrong, refs, metrics=FAST)
    msg = str(e.value)
    assert "no prediction matched a reference image" in msg and "match no reference image" in msg
    assert "wrong.jsonl:1 names 'photo_17.jpg'" in msg  # one prediction
    assert "'test/000000.jpg' (image_id" in msg or "'train/000000.jpg' (image_id" in msg  # one reference
    assert "relative to" in msg and str(two_splits / "images") in msg  # what to pass

    # names that two equally full folders share: nothing settles them -> say --split
    same = tmp_path / "same"
    generate_scenes(same, {"train": 2, "test": 2}, seed=1, progress=False)
    shared = tmp_path / "shared.jsonl"
    shared.write_text('{"file": "000000.jpg", "caption": "a"}\n{"file": "000001.jpg", "caption": "b"}\n')
    with pytest.raises(CaptionerError, match=r"share: pass --split \(one of (train, test|test, train)\)"):
        evaluate_predictions(shared, load_dataset(same, check_files=False), metrics=FAST)


# ---------------------------------------------------------------------------- --worst, --limit, option ranges
def test_worst_keeps_the_k_lowest(refs, tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"image_id": 1, "caption": "a dog on the grass"}, {"image_id": 2, "caption": "x"}]))
    for k in (0, 1, 2, 5):
        report = evaluate_predictions(preds, refs, metrics=FAST, worst_k=k, bootstrap=0)
        lowest = sorted(report["per_image"], key=lambda r: r["scores"]["cider_d"])[:k]
        assert [r["image_id"] for r in report["worst"]] == [r["image_id"] for r in lowest]
    assert [r["image_id"] for r in evaluate_predictions(preds, refs, metrics=FAST, worst_k=1)["worst"]] == [2]


def test_limit_and_worst_through_the_command_line(model_dir, scenes, tmp_path):
    out = tmp_path / "r.json"
    args = ["evaluate", "--checkpoint", str(model_dir), "--data", str(scenes), "--metrics", "bleu,cider", "-q"]
    assert cli_main([*args, "--limit", "3", "--worst", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    first3 = [f"test/{p.name}" for p in sorted((scenes / "images" / "test").iterdir())[:3]]
    assert report["images"] == 3 and [r["file"] for r in report["per_image"]] == first3
    lowest = sorted(report["per_image"], key=lambda r: (r["scores"]["cider_d"], first3.index(r["file"])))
    assert [r["file"] for r in report["worst"]] == [r["file"] for r in lowest[:2]]
    assert cli_main([*args, "--limit", "1", "--worst", "0", "--bootstrap", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 1 and report["worst"] == [] and "intervals" not in report


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--limit", "0", "limit must be an integer from 1 to"),
        ("--worst", "-1", "worst examples must be an integer from 0 to"),
        ("--bootstrap", "-5", "bootstrap resamples must be an integer from 0 to 100000"),
        ("--seed", "x", "seed must be an integer from 0 to"),
        ("--tokenizer", "spacy", "invalid choice: 'spacy'"),
    ],
)
def test_out_of_range_options_exit_2_with_one_line(refs, option, value, words, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["evaluate", "--predictions", "p.json", "--references", str(refs.source), option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


# ---------------------------------------------------------------------------- tokenizer, intervals, skipped lines
def test_the_table_and_report_state_the_tokenizer_and_intervals(refs, tmp_path, capsys):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PREDS.items()]))
    out = tmp_path / "r.json"
    assert cli_main(["evaluate", "-p", str(preds), "--references", str(refs.source), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["tokenizer"]["name"] == "ptb" and printed.startswith("tokenizer: ptb = coco-caption's")
    assert report["bootstrap"]["resamples"] == 1000 and report["bootstrap"]["level"] == 0.95
    for name, value in report["metrics"].items():
        lo, hi = report["intervals"][name]
        assert lo <= value <= hi
        assert f"{value:8.4f}  {lo:.4f}-{hi:.4f}" in printed
    # a skipped metric is one short line pointing at the docs; the full reason stays in the report
    if "spice" in report["skipped"]:
        (line,) = [ln for ln in printed.splitlines() if ln.startswith("SPICE")]
        assert len(line) < 100 and "docs/metrics.md#spice" in line
        assert len(report["skipped"]["spice"]) > len(line)
    assert all(len(ln) < 120 for ln in printed.splitlines() if "skipped" in ln)


def test_without_java_the_table_says_our_tokenizer_in_one_line(refs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `java`
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PREDS.items()]))
    assert cli_main(["evaluate", "-p", str(preds), "--references", str(refs.source)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("tokenizer: ours = the project's")
    notes = [ln for ln in printed.splitlines() if "not coco-caption's PTB" in ln]
    assert len(notes) == 1 and "default-jre-headless" in notes[0]
    assert "METEOR           skipped  (needs Java" in printed
    assert cli_main(["evaluate", "-p", str(preds), "--references", str(refs.source), "--tokenizer", "ptb"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --tokenizer ptb cannot run: Java is not installed") and err.count("\n") == 1


# ---------------------------------------------------------------------------- comparing two systems
def test_compare_a_system_with_itself_and_with_a_fixed_sentence(scenes, tmp_path, capsys):
    ds = load_dataset(scenes, split="test", check_files=False)
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"file": Path(i.image_path).name, "caption": i.captions[0]}) + "\n" for i in ds))
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text(
        "".join(json.dumps({"file": Path(i.image_path).name, "caption": "a red background"}) + "\n" for i in ds)
    )
    args = ["evaluate", "--references", str(scenes), "--metrics", "bleu,cider,rouge"]

    out = tmp_path / "same.json"
    assert cli_main([*args, "--predictions", str(good), "--compare", str(good), "--out", str(out)]) == 0
    same = json.loads(out.read_text())
    assert same["format"] == "captioner-comparison/1" and same["images"] == len(ds)
    assert set(same["metrics"]) >= {"bleu_4", "cider_d", "rouge_l", "scene_accuracy"}
    for m in same["metrics"].values():
        assert m["a"] == m["b"] and m["difference"] == 0.0 and m["p_value"] == 1.0
    assert all(r["difference"] == 0.0 for r in same["differ_most"])

    capsys.readouterr()
    assert cli_main([*args, "--predictions", str(good), "--compare", str(fixed), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    worse = json.loads(out.read_text())
    for name, m in worse["metrics"].items():
        assert m["b"] < m["a"] and m["difference"] == pytest.approx(m["b"] - m["a"]), name
        assert m["interval"][1] < 0 and m["p_value"] < 0.01, name
    top = worse["differ_most"]
    assert [abs(r["difference"]) for r in top] == sorted((abs(r["difference"]) for r in top), reverse=True)
    assert top[0]["b"] == "a red background" and top[0]["a"] != top[0]["b"]
    assert "B - A" in printed and "differ most" in printed and "tokenizer: ptb" in printed


def test_compare_two_checkpoints(model_dir, scenes, tmp_path):
    out = tmp_path / "c.json"
    args = ["evaluate", "--checkpoint", str(model_dir), "--compare", str(model_dir), "--data", str(scenes)]
    assert cli_main([*args, "--metrics", "bleu,cider", "--bootstrap", "200", "-q", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 4 and report["sources"]["a"]["mode"] == report["sources"]["b"]["mode"] == "model"
    assert all(m["difference"] == 0.0 and m["p_value"] == 1.0 for m in report["metrics"].values())
    assert cli_main([*args, "--html", str(tmp_path / "x.html")]) == 1


# ---------------------------------------------------------------------------- the HTML report in a browser


@pytest.mark.browser
def test_html_report_shows_the_tables_sorted_and_thumbnails(scenes, tmp_path, browser):
    from selenium.webdriver.common.by import By

    ds = load_dataset(scenes, split="test")
    preds = tmp_path / "p.jsonl"
    lines = [
        {"file": Path(i.image_path).name, "caption": i.captions[n % 2] if n else "a cat"} for n, i in enumerate(ds)
    ]
    preds.write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = tmp_path / "report.html"
    out = tmp_path / "report.json"
    args = ["evaluate", "-p", str(preds), "--references", str(scenes), "--split", "test", "--metrics", "bleu,cider"]
    assert cli_main([*args, "--html", str(page), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text  # self-contained

    browser.get(page.as_uri())
    metric_rows = browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr[data-metric]")
    shown = {r.get_attribute("data-metric"): r.find_elements(By.TAG_NAME, "td") for r in metric_rows}
    assert set(shown) == set(report["metrics"])
    lo, hi = report["intervals"]["bleu_4"]
    assert shown["bleu_4"][0].text == "BLEU-4" and shown["bleu_4"][2].text == f"{lo:.4f} - {hi:.4f}"
    assert "tokenizer: ptb" in browser.find_element(By.ID, "tokenizer").text

    def column(metric: str) -> list[str]:
        heads = browser.find_elements(By.CSS_SELECTOR, "#per-image thead th")
        col = [h.get_attribute("data-metric") for h in heads].index(metric)
        return [
            r.find_elements(By.TAG_NAME, "td")[col].text
            for r in browser.find_elements(By.CSS_SELECTOR, "#per-image tbody tr")
        ]

    rows = browser.find_elements(By.CSS_SELECTOR, "#per-image tbody tr")
    assert len(rows) == len(ds)
    cider = [float(x) for x in column("cider_d")]
    assert cider == sorted(cider) and rows[0].find_element(By.CSS_SELECTOR, "td.caption").text == "a cat"  # worst first
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#per-image img.thumb")
    assert len(thumbs) == len(ds)
    assert all(browser.execute_script("return arguments[0].naturalWidth", t) > 0 for t in thumbs)
    assert rows[0].find_elements(By.CSS_SELECTOR, "td.refs li")[0].text in ds.items[0].captions

    head = browser.find_element(By.CSS_SELECTOR, '#per-image th[data-metric="bleu_1"]')
    head.click()
    bleu = [float(x) for x in column("bleu_1")]
    assert bleu == sorted(bleu) and "sorted-asc" in head.get_attribute("class")
    head.click()
    assert [float(x) for x in column("bleu_1")] == sorted(bleu, reverse=True)
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


# ---------------------------------------------------------------------------- --tokenizer ptb: coco-caption's numbers
@pytest.mark.skipif(shutil.which("java") is None, reason="coco-caption's tokenizer and METEOR are Java programs")
def test_tokenizer_ptb_equals_coco_eval_cap_on_the_same_files(tmp_path, monkeypatch, capsys):
    from pycocoevalcap import eval as coco_eval
    from pycocoevalcap.tokenizer import ptbtokenizer
    from pycocotools.coco import COCO

    # captions with punctuation, capitals, contractions, hyphens, numbers and non-ASCII letters
    refs = {
        1: ["A man doesn't like the black-and-white photo.", "The man dislikes an old photo!"],
        2: ["Two dogs play on the GRASS (outside).", "two dogs playing on grass"],
        3: ["It is 5:30 pm; the price is $3.50.", "A price tag: $3.50..."],
        4: ["Ein Café in São Paulo.", "a naïve café, hübsch"],
        5: ["A 2-year-old girl can't ride a bike.", "A little girl on her bike"],
    }
    preds = {
        1: "a man doesn't like the photo",
        2: "Two dogs (a puppy) play on grass!",
        3: "It's 5:30pm, the price is $3.50",
        4: "A café in São Paulo",
        5: "a two-year-old girl rides her bike",
    }
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in refs]
    anns = [{"id": 10 * i + k, "image_id": i, "caption": c} for i, caps in refs.items() for k, c in enumerate(caps)]
    ref_file, res_file = tmp_path / "captions_val.json", tmp_path / "results.json"
    ref_file.write_text(json.dumps({"images": images, "annotations": anns}, ensure_ascii=False), encoding="utf-8")
    res_file.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in preds.items()], ensure_ascii=False))
    out = tmp_path / "report.json"
    args = ["evaluate", "-p", str(res_file), "--references", str(ref_file), "--tokenizer", "ptb", "--out", str(out)]
    assert cli_main([*args, "--metrics", "bleu,meteor,rouge,cider", "--bootstrap", "0"]) == 0
    ours = json.loads(out.read_text())

    # coco-caption itself: COCOEvalCap.evaluate() on the same two files, SPICE left out (it needs CoreNLP)
    class NoSpice:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    shutil.copy(jar, tmp_path / jar.name)  # PTBTokenizer writes its temporary file beside the jar
    monkeypatch.setattr(ptbtokenizer, "__file__", str(tmp_path / "ptbtokenizer.py"))
    monkeypatch.setattr(coco_eval, "Spice", NoSpice)
    coco = COCO(str(ref_file))
    evaluator = coco_eval.COCOEvalCap(coco, coco.loadRes(str(res_file)))
    evaluator.evaluate()
    names = {"Bleu_1": "bleu_1", "Bleu_2": "bleu_2", "Bleu_3": "bleu_3", "Bleu_4": "bleu_4"}
    names |= {"METEOR": "meteor", "ROUGE_L": "rouge_l", "CIDEr": "cider_d"}
    rows = {r["image_id"]: r for r in ours["per_image"]}
    for theirs, name in names.items():
        assert ours["metrics"][name] == pytest.approx(evaluator.eval[theirs], abs=1e-9), name
        for image_id, per_image in evaluator.imgToEval.items():
            assert rows[image_id]["scores"][name] == pytest.approx(per_image[theirs], abs=1e-9), (name, image_id)
    assert ours["tokenizer"]["name"] == "ptb"
