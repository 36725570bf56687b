"""Captions written without spaces (Chinese, Japanese): one token per character, end to end.

Unit checks of the tokenizer, then a small Chinese-caption JSONL made here: ``captioner data
stats`` says it counts characters, ``captioner train`` learns a vocabulary of characters
and writes captions without spaces, and ``captioner evaluate`` scores BLEU over characters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.cli import main as cli_main
from captioner.metrics import score_captions
from captioner.metrics.tokenize import tokenize_corpus
from captioner.vocab import Vocabulary, join_tokens, split_unspaced, tokenize

# The colour of a plain picture, in Chinese, and two captions for it.
COLOURS = {"红": (215, 35, 35), "绿": (40, 170, 60), "蓝": (35, 60, 215), "黄": (235, 215, 40)}
TEMPLATES = ("一张{}色的图片", "{}色的背景")


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("两只狗在草地上。", ["两", "只", "狗", "在", "草", "地", "上"]),
        ("两只Cat和3个苹果", ["两", "只", "cat", "和", "3", "个", "苹", "果"]),
        ("テーブルの上に猫", ["テ", "ー", "ブ", "ル", "の", "上", "に", "猫"]),
        ("ｶﾀｶﾅ", ["カ", "タ", "カ", "ナ"]),  # half-width katakana: NFKC first
        ("개 두 마리가 잔디 위에", ["개", "두", "마리가", "잔디", "위에"]),  # Korean keeps its words
        ("A Dog's toy, on a RED mat!", ["a", "dog's", "toy", "on", "a", "red", "mat"]),  # as before
    ],
)
def test_scripts_without_spaces_are_split_into_characters(text, tokens):
    assert tokenize(text) == tokens
    assert tokenize(join_tokens(tokens)) == tokens  # a decoded caption tokenizes back the same


def test_decoded_captions_are_written_as_the_language_is():
    vocab = Vocabulary.build(["两只cat在草地上", "a red cat"])
    assert vocab.decode(vocab.encode("两只cat在草地上")) == "两只cat在草地上"
    assert vocab.decode(vocab.encode("a red cat")) == "a red cat"
    assert split_unspaced(["两只狗", "dog", "x的y"]) == ["两", "只", "狗", "dog", "x", "的", "y"]  # after PTB


def test_metrics_count_character_ngrams():
    # the sixth character differs: 6 of 7 unigrams, 4 of 6 bigrams, 3 of 5 trigrams, 2 of 4 4-grams match
    scores = score_captions({1: "一张红色的照片"}, {1: ["一张红色的图片"]}, metrics=("bleu",), tokenizer="ours")
    expected = math.exp((math.log(6 / 7) + math.log(4 / 6) + math.log(3 / 5) + math.log(2 / 4)) / 4)
    assert scores["bleu_4"] == pytest.approx(expected, rel=1e-6)
    assert tokenize_corpus({1: "红色"}, {1: ["红色的"]}).hypotheses == [["红", "色"]]


def picture(path: Path, rgb: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.array(rgb, dtype=np.float32) + rng.normal(0, 10, size=(40, 48, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path)


@pytest.fixture(scope="module")
def chinese(tmp_path_factory) -> Path:
    """A JSONL of plain colour pictures with two Chinese captions each: 6 train, 1 val, 1 test per colour."""
    root = tmp_path_factory.mktemp("zh")
    rows = []
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i, split in enumerate(["train"] * 6 + ["val", "test"]):
            file = f"{c}_{i}.png"
            picture(root / file, rgb, seed=10 * c + i)
            captions = [t.format(name) for t in TEMPLATES]
            rows.append({"file": file, "captions": captions, "split": split})
    (root / "zh.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return root


def test_stats_say_the_captions_are_counted_in_characters(chinese, capsys):
    assert cli_main(["data", "stats", str(chinese / "zh.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "64 of 64 captions in Chinese or Japanese: one token per character" in text
    assert "caption length in characters  min 5  mean 6.0  max 7" in text
    assert cli_main(["data", "stats", str(chinese / "zh.jsonl"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tokenization"]["unit"] == "characters" and stats["caption_lengths"] == {"5": 32, "7": 32}
    assert stats["vocab_sizes"]["1"] == len(set("一张色的图片背景" + "".join(COLOURS)))  # 12 characters


def test_train_and_evaluate_chinese_captions_over_characters(chinese, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli_main(
        [
            "train", "--data", str(chinese / "zh.jsonl"), "--out", str(run), "--cache-dir", str(tmp_path / "cache"),
            "--epochs", "12", "--batch-size", "8", "--lr", "1e-2", "--warmup-steps", "0", "--dropout", "0",
            "--embed-dim", "32", "--hidden-dim", "64", "--img-proj-dim", "32", "--threads", "1",
            "--quiet", "--no-plot",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    tokens = json.loads((run / "best" / "vocab.json").read_text(encoding="utf-8"))["tokens"][4:]
    assert sorted(tokens) == sorted(set("一张色的图片背景" + "".join(COLOURS)))  # characters, not sentences
    report_path = tmp_path / "report.json"
    args = ["evaluate", "-c", str(run / "best"), "--data", str(chinese / "zh.jsonl"), "--split", "test"]
    assert cli_main([*args, "--metrics", "bleu,cider,rouge", "--bootstrap", "0", "--out", str(report_path), "-q"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["tokenizer"]["units"] == "characters" and "scored over characters" in printed
    rows = report["per_image"]
    assert len(rows) == 4 and all(" " not in r["caption"] and len(r["caption"]) >= 4 for r in rows)
    # the colour is learned: each test picture is captioned in its own colour
    assert [r["caption"] for r in rows if r["caption"] in r["references"]] == [r["caption"] for r in rows]
    assert all(COLOURS_BY_FILE[Path(r["file"]).name[0]] in r["caption"] for r in rows)
    # BLEU-4 is the one over characters: the same captions scored by hand with list(caption)
    preds = {r["image_id"]: r["caption"] for r in rows}
    refs = {r["image_id"]: r["references"] for r in rows}
    by_characters = score_captions(preds, refs, metrics=("bleu",), tokenizer=list)["bleu_4"]
    by_spaces = score_captions(preds, refs, metrics=("bleu",), tokenizer=str.split)["bleu_4"]
    assert report["metrics"]["bleu_4"] == pytest.approx(by_characters) and by_characters > 0.5
    assert by_spaces < 0.01  # one "word" per caption: no 4-gram at all (coco smoothing leaves ~3e-5)


COLOURS_BY_FILE = {str(i): name for i, name in enumerate(COLOURS)}
