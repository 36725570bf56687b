"""Caption metrics: hand-computed BLEU, agreement with pycocoevalcap, nltk cross-check,
edge cases, METEOR through Java, and the skip paths of METEOR/SPICE."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import textwrap
import time

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from captioner.errors import CaptionerError
from captioner.metrics import (
    MetricUnavailable,
    TokenizedCorpus,
    cider_d,
    coco_bleu,
    meteor_spice,
    nltk_bleu,
    rouge_l,
    score_captions,
)
from captioner.metrics.bleu import BleuStats, image_stats
from captioner.vocab import tokenize

# ----------------------------------------------------------------------------- hand-computed BLEU

# Two images, references tokenized by captioner.vocab.tokenize (punctuation and case go).
#
# image "cat": hypothesis "a cat sits on a mat" (6 words), closest reference length 6
#   r1 "a cat sits on the mat" (6)     r2 "there is a cat on a mat" (7)
#   1-grams  a a cat sits on mat        a: max ref count 2 (r2) -> 2, cat, sits(r1), on, mat: 6/6
#   2-grams  a_cat cat_sits sits_on on_a a_mat: a_cat, cat_sits, sits_on (r1), on_a, a_mat (r2): 5/5
#   3-grams  a_cat_sits (r1) cat_sits_on (r1) sits_on_a (none) on_a_mat (r2): 3/4
#   4-grams  a_cat_sits_on (r1) cat_sits_on_a (none) sits_on_a_mat (none): 1/3
# image "dogs": hypothesis "two dogs play" (3 words)
#   r1 "two dogs play in the snow" (6)  r2 "two dogs are playing" (4): closest |4-3|=1 -> 4
#   1-grams 3/3, 2-grams 2/2, 3-grams 1/1 (all in r1), 4-grams: the hypothesis has none
#
# Corpus: hypothesis length c = 6 + 3 = 9, reference length r = 6 + 4 = 10
#   BP = exp(1 - r/c) = exp(-1/9) = 0.894839316814...
#   coco counts 4-grams as 3 + 0:   matches [9, 7, 4, 1] over [9, 7, 5, 3]
#     BLEU-1 = BP * (9/9)                          = 0.894839316814
#     BLEU-2 = BP * (9/9 * 7/7) ** (1/2)           = 0.894839316814
#     BLEU-3 = BP * (1 * 1 * 4/5) ** (1/3)         = 0.830695236161
#     BLEU-4 = BP * (1 * 1 * 4/5 * 1/3) ** (1/4)   = 0.643038892155
#   nltk counts a 3-word hypothesis as having max(1, 0) = 1 4-gram: 4-grams 1/4
#     BLEU-4 = BP * (4/5 * 1/4) ** (1/4)           = 0.598415117631
# Per image (each with its own BP):
#   cat:  BLEU-4 = (1 * 1 * 3/4 * 1/3) ** (1/4) = 0.707106781187 (BP 1)
#   dogs: BP = exp(1 - 4/3) = 0.716531310574; coco's 4-gram factor is (0 + 1e-15)/(0 + 1e-9)
#         = 1e-6, so BLEU-4 = 0.716531310574 * 1e-6 ** (1/4) = 0.022658709...
BP = math.exp(-1 / 9)
HAND_PRED = {"cat": "A cat sits on a mat.", "dogs": "Two dogs play!"}
HAND_REFS = {
    "cat": ["A cat sits on the mat.", "There is a cat on a mat."],
    "dogs": ["Two dogs play in the snow.", "two dogs are playing"],
}


def test_bleu_matches_hand_computation():
    scores = score_captions(HAND_PRED, HAND_REFS, metrics=("bleu",))
    expected = [BP, BP, BP * (4 / 5) ** (1 / 3), BP * (4 / 15) ** (1 / 4)]
    for k in range(4):
        assert scores[f"bleu_{k + 1}"] == pytest.approx(expected[k], abs=1e-8)
    # nltk agrees on 1..3 and is lower on BLEU-4 because of the 3-word hypothesis
    nltk_expected = [*expected[:3], BP * (1 / 5) ** (1 / 4)]
    for k in range(4):
        assert scores.cross_checks[f"nltk_bleu_{k + 1}"] == pytest.approx(nltk_expected[k], abs=1e-12)
    assert scores.per_image["bleu_4"]["cat"] == pytest.approx(0.25**0.25, abs=1e-8)
    assert scores.per_image["bleu_4"]["dogs"] == pytest.approx(math.exp(1 - 4 / 3) * 1e-6**0.25, rel=1e-6)
    assert scores.per_image["bleu_1"]["dogs"] == pytest.approx(math.exp(1 - 4 / 3), abs=1e-8)
    assert scores.skipped == {}


def test_bleu_statistics_orders_and_refusals():
    # "a b" against "a b c": 2 of 2 unigrams, 1 of 1 bigram, no 3- or 4-grams to guess
    assert image_stats(["a", "b"], [["a", "b", "c"]]) == BleuStats(2, 3, [2, 1, 0, 0], [2, 1, 0, 0])
    assert image_stats(["a", "b"], [["a", "b", "c"]], max_n=2) == BleuStats(2, 3, [2, 1], [2, 1])
    # max_n reaches the per-image statistics: BLEU-1..2 only, the bigram precision 1/2
    two = coco_bleu([["a", "b", "c"]], [[["a", "b", "x"]]], max_n=2)
    assert len(two.corpus) == 2 and [len(s.guess) for s in two.stats] == [2]
    assert two.corpus == pytest.approx([2 / 3, (2 / 3 * 1 / 2) ** 0.5], rel=1e-6)
    with pytest.raises(ValueError, match=r"^BLEU needs at least one reference per image$"):
        image_stats(["a"], [])
    with pytest.raises(ValueError, match=r"^2 hypotheses but 1 reference lists$"):
        coco_bleu([["a"], ["b"]], [[["a"]]])
    with pytest.raises(ValueError, match=r"^BLEU of an empty corpus is undefined$"):
        coco_bleu([], [])


def test_cider_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"^2 hypotheses but 1 reference lists$"):
        cider_d([["a"], ["b"]], [[["a"]]])
    with pytest.raises(ValueError, match=r"^CIDEr of an empty corpus is undefined$"):
        cider_d([], [])
    with pytest.raises(ValueError, match=r"^CIDEr needs at least one reference per image \(image #1 has none\)$"):
        cider_d([["a"], ["b"]], [[["a"]], []])


# ----------------------------------------------------------------------------- agreement with pycocoevalcap

WORDS = [
    "a",
    "the",
    "dog",
    "dogs",
    "cat",
    "man",
    "woman",
    "on",
    "in",
    "with",
    "grass",
    "red",
    "ball",
    "two",
    "is",
    "sitting",
    "runs",
    "of",
    "café",
    "日本",
    "naïve",
]


def random_corpus(seed: int) -> TokenizedCorpus:
    """A seeded corpus with the awkward cases mixed in: empty and 1-word predictions,
    predictions longer than every reference, empty references, single references."""
    rng = random.Random(seed)
    vocab = WORDS[: rng.randint(6, len(WORDS))]  # small vocabularies -> many n-gram matches
    n = rng.randint(1, 30)
    hyps = [[rng.choice(vocab) for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 12, 25]))] for _ in range(n)]
    refs = [
        [[rng.choice(vocab) for _ in range(rng.randint(0, 14))] for _ in range(rng.randint(1, 5))] for _ in range(n)
    ]
    return TokenizedCorpus([f"img{i}" for i in range(n)], hyps, refs)


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_pycocoevalcap(seed):
    c = random_corpus(seed)
    gts, res = c.to_coco()
    ids = c.ids

    coco_b, coco_b_img = Bleu(4).compute_score(gts, res, verbose=0)
    ours_b = coco_bleu(c.hypotheses, c.references)
    for k in range(4):
        assert ours_b.corpus[k] == pytest.approx(coco_b[k], abs=1e-9)
        for i in range(len(ids)):
            assert ours_b.per_image[i][k] == pytest.approx(coco_b_img[k][i], abs=1e-9)

    coco_c, coco_c_img = Cider().compute_score(gts, res)
    ours_c = cider_d(c.hypotheses, c.references)
    assert ours_c.corpus == pytest.approx(coco_c, abs=1e-9)
    assert ours_c.per_image == pytest.approx(list(coco_c_img), abs=1e-9)

    coco_r, coco_r_img = Rouge().compute_score(gts, res)
    ours_r = rouge_l(c.hypotheses, c.references)
    assert ours_r.corpus == pytest.approx(coco_r, abs=1e-9)
    assert ours_r.per_image == pytest.approx(list(coco_r_img), abs=1e-9)


def test_score_captions_from_raw_text_agrees_with_pycocoevalcap():
    # raw captions with case, punctuation and unicode; pycocoevalcap gets our tokenization
    preds = {1: "A dog, running on GRASS!", 2: "Ｔｗｏ cats on a sofa", 3: "", 4: "the man's café is red"}
    refs = {
        1: ["A dog runs on the grass.", "a brown dog running on green grass"],
        2: ["two cats sleeping on a sofa", "Two cats on a couch."],
        3: ["a plate of food"],
        4: ["A man's café with a red door.", "the café is red", "red café"],
    }
    scores = score_captions(preds, refs, metrics=("bleu", "cider", "rouge"))
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in refs.items()}
    res = {i: [" ".join(tokenize(p))] for i, p in preds.items()}
    assert res[2] == ["two cats on a sofa"]  # NFKC folded the full-width letters
    b, _b_img = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        assert scores[f"bleu_{k + 1}"] == pytest.approx(b[k], abs=1e-9)
    c, c_img = Cider().compute_score(gts, res)
    assert scores["cider_d"] == pytest.approx(c, abs=1e-9)
    assert [scores.per_image["cider_d"][i] for i in refs] == pytest.approx(list(c_img), abs=1e-9)
    r, _ = Rouge().compute_score(gts, res)
    assert scores["rouge_l"] == pytest.approx(r, abs=1e-9)


# ----------------------------------------------------------------------------- nltk cross-check


def nltk_from_stats(hyps, refs, max_n=4):
    """nltk corpus_bleu rebuilt from coco's statistics with nltk's two rules: a
    hypothesis has at least one n-gram of each order, and an order with no match makes
    the score 0. Equality with nltk proves these are the only differences."""
    stats = [image_stats(h, r, max_n) for h, r in zip(hyps, refs)]
    correct = [sum(s.correct[k] for s in stats) for k in range(max_n)]
    guess = [sum(max(1, s.guess[k]) for s in stats) for k in range(max_n)]
    c, r = sum(s.test_len for s in stats), sum(s.ref_len for s in stats)
    bp = 1.0 if c > r else (0.0 if c == 0 else math.exp(1 - r / c))
    out = []
    for k in range(1, max_n + 1):
        if correct[0] == 0 or any(correct[i] == 0 for i in range(k)):
            out.append(0.0)
        else:
            out.append(bp * math.exp(sum(math.log(correct[i] / guess[i]) for i in range(k)) / k))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_nltk_differs_only_by_its_denominator_and_zero_rules(seed):
    c = random_corpus(seed)
    nltk = nltk_bleu(c.hypotheses, c.references)
    for got, want in zip(nltk, nltk_from_stats(c.hypotheses, c.references)):
        assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_nltk_equals_coco_when_hypotheses_are_long_and_every_order_matches(seed):
    rng = random.Random(100 + seed)
    n = rng.randint(2, 25)
    hyps, refs = [], []
    for _ in range(n):
        ref_set = [[rng.choice(WORDS[:8]) for _ in range(rng.randint(1, 14))] for _ in range(rng.randint(1, 5))]
        hyp = list(ref_set[0][:4]) + [rng.choice(WORDS[:8]) for _ in range(rng.randint(0, 9))]
        hyp = hyp if len(hyp) >= 4 else hyp + ["dog"] * (4 - len(hyp))  # every hypothesis has >= 4 words
        hyps.append(hyp)
        refs.append(ref_set)
    refs[0].append(list(hyps[0]))  # guarantees at least one 4-gram match in the corpus
    coco = coco_bleu(hyps, refs).corpus
    nltk = nltk_bleu(hyps, refs)
    assert all(x > 0.01 for x in nltk)
    assert nltk == pytest.approx(coco, abs=1e-6)


# ----------------------------------------------------------------------------- edge cases


def test_empty_prediction_scores_zero():
    scores = score_captions(
        {"a": "", "b": "a red ball"}, {"a": ["a dog"], "b": ["a red ball on grass"]}, metrics=("bleu", "cider", "rouge")
    )
    for name in ("bleu_1", "bleu_4", "cider_d", "rouge_l"):
        assert scores.per_image[name]["a"] == 0.0
    assert scores.per_image["rouge_l"]["b"] > 0.5


def test_prediction_longer_than_every_reference_has_no_brevity_penalty():
    # 6 words against a 2-word reference: BP = 1; clipped unigrams a:1 dog:1 -> 2/6
    scores = score_captions({"x": "a dog a dog a dog"}, {"x": ["a dog"]}, metrics=("bleu",))
    assert scores.per_image["bleu_1"]["x"] == pytest.approx(2 / 6, abs=1e-8)
    assert scores["bleu_1"] == pytest.approx(2 / 6, abs=1e-8)


def test_one_reference_and_unicode_exact_match():
    preds = {"p": "Ein Café in São Paulo", "q": "ＦＵＬＬ width text here"}
    refs = {"p": ["ein café in são paulo"], "q": ["full width text here"]}
    scores = score_captions(preds, refs, metrics=("bleu", "cider", "rouge"))
    for k in range(1, 5):
        assert scores[f"bleu_{k}"] == pytest.approx(1.0, abs=1e-8)
    assert scores["rouge_l"] == pytest.approx(1.0)
    # identical captions whose n-grams are unique to their image: every cosine is 1 -> 10
    assert scores["cider_d"] == pytest.approx(10.0)


def test_cider_of_a_single_image_is_zero_as_in_coco():
    # IDF = log(1) - log(1) = 0 for every n-gram: a documented property of CIDEr-D
    scores = score_captions({"x": "a dog"}, {"x": ["a dog"]}, metrics=("cider",))
    assert scores["cider_d"] == 0.0
    assert Cider().compute_score({"x": ["a dog"]}, {"x": ["a dog"]})[0] == 0.0


def test_rouge_empty_against_empty_follows_coco():
    ours = rouge_l([[]], [[[]]]).corpus
    theirs = Rouge().compute_score({0: [""]}, {0: [""]})[0]
    assert ours == theirs == 1.0


@pytest.mark.parametrize(
    "preds, refs, message",
    [
        ({"a": "x"}, {"a": ["x"], "b": ["y"]}, "no prediction ('b')"),
        ({"a": "x", "c": "z"}, {"a": ["x"]}, "no references ('c')"),
        ({"a": "x"}, {"a": []}, "empty reference list"),
        ({"a": "x"}, {"a": "x"}, "must be a list"),
        ({"a": None}, {"a": ["x"]}, "expected a string"),
        ({}, {}, "no references"),
    ],
)
def test_bad_input_raises_clear_errors(preds, refs, message):
    with pytest.raises(CaptionerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        score_captions(preds, refs, metrics=("bleu",))


def test_unknown_metric_is_rejected():
    with pytest.raises(CaptionerError, match=r"unknown metric.*bleurt"):
        score_captions({"a": "x"}, {"a": ["x"]}, metrics=("bleu", "bleurt"))


def test_worst_examples_and_json_report():
    preds = {"good": "a dog runs on the grass", "bad": "a plate of food", "mid": "a dog on a sofa"}
    refs = {k: ["a dog runs on the grass", "a dog running on grass"] for k in preds}
    scores = score_captions(preds, refs, metrics=("bleu", "cider", "rouge"))
    assert [i for i, _ in scores.worst("rouge_l", k=2)] == ["bad", "mid"]
    assert scores.worst("bleu_4", k=1)[0][0] == "bad"
    with pytest.raises(KeyError, match="meteor"):
        scores.worst("meteor")
    report = json.loads(json.dumps(scores.to_dict()))
    assert set(report["metrics"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "rouge_l"}
    assert [row["image_id"] for row in report["per_image"]] == ["good", "bad", "mid"]
    assert dict(scores) == scores.metrics
    quick = score_captions(preds, refs, metrics="bleu", nltk_cross_check=False)
    assert quick.cross_checks == {} and quick["bleu_4"] == scores["bleu_4"]


# ----------------------------------------------------------------------------- METEOR / SPICE (Java)


def _have_meteor() -> bool:
    try:
        meteor_spice.java_executable()
        meteor_spice.meteor_files()
        return True
    except MetricUnavailable:
        return False


@pytest.mark.skipif(not _have_meteor(), reason="needs Java and pycocoevalcap's METEOR jar")
def test_all_metrics_with_meteor_through_java():
    preds = {
        "same": "a black dog runs across the green grass",
        "close": "a dog running on grass",
        "wrong": "a plate of food on a table",
        "empty": "",
    }
    refs = {
        "same": ["a black dog runs across the green grass", "a dog in a field"],
        "close": ["a dog runs on the grass", "the dog is running across grass"],
        "wrong": ["a man rides a wave on a surfboard"],
        "empty": ["two cats on a sofa"],
    }
    scores = score_captions(preds, refs)  # default: all five groups
    assert "meteor" not in scores.skipped, scores.skipped.get("meteor")
    m = scores.per_image["meteor"]
    assert m["same"] > 0.95
    assert 0.2 < m["close"] < 0.9
    assert m["wrong"] < m["close"]
    assert m["empty"] == 0.0
    assert 0.1 < scores["meteor"] < 0.9
    # SPICE either ran (CoreNLP installed) or says why not
    if "spice" in scores.skipped:
        assert "SPICE" in scores.skipped["spice"]
    else:
        assert 0.0 <= scores["spice"] <= 1.0


def _fake_java(tmp_path, body: str) -> str:
    """An executable standing in for `java`, to exercise the failure paths quickly."""
    path = tmp_path / "java"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def test_meteor_that_never_answers_times_out(tmp_path):
    pid_file = tmp_path / "pid"
    java = _fake_java(
        tmp_path, f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    start = time.monotonic()
    with pytest.raises(MetricUnavailable, match="no answer within 1 s"):
        meteor_spice.meteor(["a dog"], [["a dog"]], timeout=1.0, java=java)
    # The child was killed and reaped, not left sleeping: the timeout's real effect, and no
    # wall-clock assumption. The bound below only proves the call did not wait out the
    # child's 60 s; it is generous (1 s timeout + 5 s grace + an interpreter start on a
    # machine shared by many processes) so that load cannot fail it.
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    assert time.monotonic() - start < 45


def test_meteor_that_dies_reports_its_stderr(tmp_path):
    java = _fake_java(tmp_path, "import sys\nsys.stderr.write('Error: Unable to access jarfile\\n')\nsys.exit(1)\n")
    with pytest.raises(MetricUnavailable, match=r"exited unexpectedly.*Unable to access jarfile"):
        meteor_spice.meteor(["a dog"], [["a dog"]], timeout=20.0, java=java)


def test_without_java_meteor_and_spice_are_skipped_and_the_rest_is_scored(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `java`
    scores = score_captions({"a": "a dog"}, {"a": ["a dog runs"]})
    assert "Java is not installed" in scores.skipped["meteor"]
    assert "spice" in scores.skipped
    assert "meteor" not in scores and "spice" not in scores
    assert scores["bleu_1"] > 0


def test_spice_without_corenlp_explains_how_to_get_it(tmp_path):
    (tmp_path / "spice").mkdir()
    (tmp_path / "spice" / "spice-1.0.jar").write_bytes(b"PK")
    with pytest.raises(MetricUnavailable, match=r"Stanford CoreNLP 3\.6\.0"):
        meteor_spice.spice(["a dog"], [["a dog"]], root=tmp_path)


def test_spice_output_parsing():
    results = [
        {"image_id": 1, "scores": {"All": {"f": 0.5, "pr": 0.5, "re": 0.5}}},
        {"image_id": 0, "scores": {"All": {"f": 0.25, "pr": 0.2, "re": 0.3}}},
        {"image_id": 2, "scores": {"All": {"f": None, "pr": None, "re": None}}},
    ]
    corpus, per_image = meteor_spice.parse_spice_output(results, 3)
    assert per_image[:2] == [0.25, 0.5] and math.isnan(per_image[2])
    assert corpus == pytest.approx(0.375)  # NaN images are left out of the mean
    with pytest.raises(MetricUnavailable, match="lacks 1 of 4"):
        meteor_spice.parse_spice_output(results, 4)


# ----------------------------------------------------------------------------- tokenisation vs coco's PTB

# (caption, coco-caption's PTB tokenizer + punctuation removal, ours); docs/metrics.md has this table
TOKENIZER_CASES = [
    ("A dog's toy, on a RED mat!", "a dog 's toy on a red mat", "a dog's toy on a red mat"),
    ("A man doesn't like it.", "a man does n't like it", "a man doesn't like it"),
    ("It’s a dog’s life", "it 's a dog 's life", "it's a dog's life"),
    ("A black-and-white photo of a cat.", "a black-and-white photo of a cat", "a black and white photo of a cat"),
    (
        "Two people (a man and a woman) sit.",
        "two people -lrb- a man and a woman -rrb- sit",
        "two people a man and a woman sit",
    ),
    ("The price is $3.50 at 5:30pm.", "the price is $ 3.50 at 5:30 pm", "the price is 3 50 at 5 30pm"),
    ("100,000 people", "100,000 people", "100 000 people"),
    ("rock 'n' roll", "rock 'n' roll", "rock n roll"),
    ("cannot gonna", "can not gon na", "cannot gonna"),
    ("A ＦＵＬＬＷＩＤＴＨ word", "a ｆｕｌｌｗｉｄｔｈ word", "a fullwidth word"),
    ('A "big" dog; a café in São Paulo...', "a big dog a café in são paulo", "a big dog a café in são paulo"),
]


def test_our_tokenizer_on_the_documented_examples():
    for caption, _, ours in TOKENIZER_CASES:
        assert " ".join(tokenize(caption)) == ours, caption


@pytest.mark.skipif(shutil.which("java") is None, reason="coco's PTB tokenizer is a Java program")
def test_documented_ptb_tokenizer_behaviour_is_true(tmp_path, monkeypatch):
    # pycocoevalcap's PTBTokenizer writes a temporary file beside its jar; copy the jar
    # so that the test works on a read-only site-packages too.
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = os.path.join(os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    shutil.copy(jar, tmp_path / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    monkeypatch.setattr(ptbtokenizer, "__file__", str(tmp_path / "ptbtokenizer.py"))
    captions = {i: [{"caption": c}] for i, (c, _, _) in enumerate(TOKENIZER_CASES)}
    out = ptbtokenizer.PTBTokenizer().tokenize(captions)
    for i, (caption, ptb, _) in enumerate(TOKENIZER_CASES):
        assert out[i] == [ptb], caption


# ----------------------------------------------------------------------------- tokenizer="ptb": coco-caption's numbers

# Punctuation, capitals, contractions, hyphens, numbers, brackets and non-ASCII letters.
PARITY_PREDS = {
    1: "A man doesn't like the black-and-white photo.",
    2: "Two dogs (a puppy and its mother) play on the GRASS!",
    3: "It's 5:30pm; the price is $3.50...",
    4: "Ein Café in São Paulo, naïve & hübsch.",
    5: "A 2-year-old girl can't ride her bike",
    6: "",
    7: "Three cats on a sofa, aren't they?",
    8: "\"Rock 'n' roll\" -- a guitar on 100,000 seats",
}
PARITY_REFS = {
    1: ["A man does not like the black and white photo.", "The man dislikes an old photo!", "a man, a photo"],
    2: ["Two dogs play on the grass.", "A puppy and its mother play (outside).", "two dogs playing on grass"],
    3: ["It is 5:30 pm and the price is $3.50.", "A price tag: $3.50"],
    4: ["A café in São Paulo.", "Ein hübsches Café in São Paulo", "a naïve café"],
    5: ["A two-year-old girl can't ride a bike.", "A little girl on her bike", "a girl rides a bike"],
    6: ["An empty street at night."],
    7: ["Three cats sleep on a sofa.", "Cats on a couch, aren't they cute?"],
    8: ["A guitar on stage at a rock 'n' roll concert", "100,000 seats and a guitar", "Rock-n-roll!"],
}


@pytest.fixture
def coco_ptb(tmp_path, monkeypatch):
    """pycocoevalcap's own PTBTokenizer, with its jar copied out of site-packages (it
    writes its temporary file beside the jar)."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = os.path.join(os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    shutil.copy(jar, tmp_path / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    monkeypatch.setattr(ptbtokenizer, "__file__", str(tmp_path / "ptbtokenizer.py"))
    return ptbtokenizer.PTBTokenizer()


@pytest.mark.skipif(not _have_meteor(), reason="coco's PTB tokenizer and METEOR are Java programs")
def test_ptb_tokenizer_scores_equal_pycocoevalcaps_pipeline(coco_ptb):
    from pycocoevalcap.meteor.meteor import Meteor

    ours = score_captions(PARITY_PREDS, PARITY_REFS, metrics=("bleu", "cider", "rouge", "meteor"), tokenizer="ptb")
    assert ours.tokenizer == "ptb" and "meteor" not in ours.skipped

    # COCOEvalCap.evaluate(): tokenize gts and res with PTBTokenizer, then each scorer (SPICE left out)
    gts = coco_ptb.tokenize({i: [{"caption": c} for c in refs] for i, refs in PARITY_REFS.items()})
    res = coco_ptb.tokenize({i: [{"caption": c}] for i, c in PARITY_PREDS.items()})
    assert res[1] == ["a man does n't like the black-and-white photo"] and res[6] == [""]
    ids = list(PARITY_REFS)
    bleu, bleu_img = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, meteor_img = Meteor().compute_score(gts, res)
    rouge, rouge_img = Rouge().compute_score(gts, res)
    cider, cider_img = Cider().compute_score(gts, res)
    expected = {f"bleu_{k + 1}": (bleu[k], bleu_img[k]) for k in range(4)}
    expected |= {"meteor": (meteor, meteor_img), "rouge_l": (rouge, rouge_img), "cider_d": (cider, cider_img)}
    for name, (corpus, per_image) in expected.items():
        assert ours[name] == pytest.approx(corpus, abs=1e-9), name
        assert [ours.per_image[name][i] for i in ids] == pytest.approx(list(per_image), abs=1e-9), name
    # and the tokenisation matters: ours gives other numbers on this corpus
    plain = score_captions(PARITY_PREDS, PARITY_REFS, metrics=("bleu", "cider"), tokenizer="ours")
    assert abs(plain["cider_d"] - ours["cider_d"]) > 1e-3 and plain.tokenizer == "ours"


@pytest.mark.skipif(shutil.which("java") is None, reason="coco's PTB tokenizer is a Java program")
def test_ptb_tokenize_keeps_one_line_per_caption():
    from captioner.metrics.ptb import ptb_tokenize

    texts = ["A dog.", "two\rlines\u2028here", "", "Café, São Paulo!", "", ""]
    assert ptb_tokenize(texts) == [["a", "dog"], ["two", "lines", "here"], [], ["café", "são", "paulo"], [], []]
    assert ptb_tokenize([]) == []


def test_without_java_auto_falls_back_to_our_tokenizer_and_ptb_says_why(tmp_path, monkeypatch):
    from captioner.metrics.tokenize import resolve_tokenizer

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `java`
    name, note = resolve_tokenizer("auto")
    assert (
        name == "ours" and note is not None and "Java" in note and "default-jre-headless" in note and "\n" not in note
    )
    with pytest.raises(CaptionerError, match=r"--tokenizer ptb cannot run: Java is not installed"):
        resolve_tokenizer("ptb")
    with pytest.raises(CaptionerError, match="Java is not installed"):
        score_captions(PARITY_PREDS, PARITY_REFS, metrics=("bleu",), tokenizer="ptb")
    auto = score_captions(PARITY_PREDS, PARITY_REFS, metrics=("bleu", "cider"), tokenizer="auto")
    ours = score_captions(PARITY_PREDS, PARITY_REFS, metrics=("bleu", "cider"), tokenizer=tokenize)
    assert auto.tokenizer == "ours" and dict(auto) == dict(ours)
    with pytest.raises(CaptionerError, match="unknown tokenizer"):
        resolve_tokenizer("spacy")


# ----------------------------------------------------------------------------- bootstrap


def synthetic_corpus(n: int, seed: int = 0) -> tuple[dict, dict]:
    """n images whose predictions share some words with their references."""
    rng = random.Random(seed)
    words = WORDS[:14]
    preds, refs = {}, {}
    for i in range(n):
        ref = [[rng.choice(words) for _ in range(rng.randint(4, 10))] for _ in range(3)]
        hyp = ref[0][: rng.randint(2, len(ref[0]))] + [rng.choice(words) for _ in range(rng.randint(0, 4))]
        preds[i] = " ".join(hyp)
        refs[i] = [" ".join(r) for r in ref]
    return preds, refs


def _fast_scores(preds, refs):
    return score_captions(preds, refs, metrics=("bleu", "cider", "rouge"), tokenizer="ours", nltk_cross_check=False)


def test_resampled_bleu_and_rouge_are_those_of_the_resampled_corpus():
    from captioner.metrics.bootstrap import ImageStats, corpus_values, resample_counts

    preds, refs = synthetic_corpus(40)
    scores = _fast_scores(preds, refs)
    counts = next(resample_counts(40, 3, seed=5))  # (3, 40)
    values = corpus_values(ImageStats.from_scores(scores), counts)
    for r in range(3):
        drawn = [i for i in range(40) for _ in range(int(counts[r, i]))]
        hyps = [tokenize(preds[i]) for i in drawn]
        rs = [[tokenize(x) for x in refs[i]] for i in drawn]
        bleu = coco_bleu(hyps, rs).corpus
        for k in range(4):
            assert values[f"bleu_{k + 1}"][r] == pytest.approx(bleu[k], rel=1e-12)
        assert values["rouge_l"][r] == pytest.approx(rouge_l(hyps, rs).corpus, rel=1e-12)
        # CIDEr-D keeps the full set's IDF: the mean of the drawn images' scores
        assert values["cider_d"][r] == pytest.approx(sum(scores.per_image["cider_d"][i] for i in drawn) / 40)


def test_bootstrap_interval_contains_the_value_shrinks_with_size_and_follows_the_seed():
    from captioner.metrics.bootstrap import ImageStats, intervals

    widths = {}
    for n in (30, 600):
        scores = _fast_scores(*synthetic_corpus(n, seed=n))
        stats = ImageStats.from_scores(scores)
        found = intervals(stats, resamples=400, seed=1)
        assert set(found) == set(scores.metrics)
        for name, (lo, hi) in found.items():
            assert lo <= scores[name] <= hi, (n, name)
            assert lo < hi
        widths[n] = {name: hi - lo for name, (lo, hi) in found.items()}
        assert intervals(stats, resamples=400, seed=1) == found
        assert intervals(stats, resamples=400, seed=2) != found
    for name in widths[30]:
        assert widths[600][name] < widths[30][name] / 2, name  # about 1/sqrt(20) as wide


def test_paired_bootstrap_same_system_and_a_fixed_sentence():
    from captioner.metrics.bootstrap import ImageStats, paired_bootstrap

    preds, refs = synthetic_corpus(60, seed=3)
    good = _fast_scores(preds, refs)
    fixed = _fast_scores({i: "a dog on the grass" for i in preds}, refs)
    sg, sf = ImageStats.from_scores(good), ImageStats.from_scores(fixed)
    same = paired_bootstrap(sg, sg, good.metrics, good.metrics, resamples=500, seed=0)
    for d in same.values():
        assert d.difference == 0.0 and d.interval == (0.0, 0.0) and d.p_value == 1.0
    worse = paired_bootstrap(sf, sg, fixed.metrics, good.metrics, resamples=500, seed=0)
    for name, d in worse.items():
        assert d.difference == pytest.approx(fixed[name] - good[name]) and d.difference < 0, name
        assert d.interval[1] < 0 and d.p_value < 0.01, name
