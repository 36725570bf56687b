"""The unsure-word cut (captioner.runtime.results.cut_unsure) on hypotheses built by hand:
it ends at a phrase boundary or gives nothing, and the score stays the model's (the kept
words' log-probs, then ``<end>``'s after them, as the search recorded it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from captioner.runtime.results import FUNCTION_WORDS, cut_unsure, finish, function_word_ids
from captioner.runtime.search import Hypothesis
from captioner.trust import OUT_OF_DOMAIN_CONFIDENCE, Calibration, DomainModel, TrustStats
from captioner.vocab import Vocabulary

FLOOR = 0.1
SURE, UNSURE = math.log(0.6), math.log(0.05)
CAPTION = "a red background with two boats and a dog on a red boat"
VOCAB = Vocabulary.build([CAPTION, "a cat on a mat"])
FUNCTION = function_word_ids(VOCAB)


def hypothesis(caption: str, unsure: int, with_attention: bool = False) -> Hypothesis:
    """``caption`` with every word sure but word ``unsure`` (and those after it); ``<end>``'s
    log-prob after the first j words is -(j + 1) / 10, so each cut point has its own."""
    tokens = VOCAB.encode(caption, add_special=False)
    n = len(tokens)
    words = np.array([SURE if i < unsure else UNSURE for i in range(n)], np.float32)
    ends = np.array([-(j + 1) / 10 for j in range(n + 1)], np.float32)
    lps = np.append(words, ends[n]).astype(np.float32)
    att = np.arange((n + 1) * 3, dtype=np.float32).reshape(n + 1, 3) if with_attention else None
    return Hypothesis(tokens, float(lps.sum()), lps, ends, att)


def kept(h: Hypothesis) -> str:
    return VOCAB.decode(h.tokens)


def test_a_cut_mid_phrase_goes_back_to_the_last_phrase_boundary():
    words = CAPTION.split()
    h = hypothesis(CAPTION, words.index("boat"))  # today: "... a dog on a red"
    cut = cut_unsure(h, FLOOR, FUNCTION)
    assert kept(cut) == "a red background with two boats and a dog"
    n = len(cut.tokens)
    assert n == 9
    # score: the kept words' log-probs, then <end> after those nine words (recorded at prefix 9)
    assert cut.logprobs[-1] == pytest.approx(-1.0) and len(cut.logprobs) == n + 1
    assert cut.score == pytest.approx(n * SURE - 1.0, abs=1e-5)
    assert cut.score == pytest.approx(float(cut.logprobs.sum()), abs=1e-5)
    assert len(cut.end_logprobs) == n + 1


@pytest.mark.parametrize(
    "unsure_word, expected",
    [
        ("boats", "a red background"),  # "with two [boats]": the phrase from "with" goes
        ("and", "a red background with two boats"),  # the unsure word opens a phrase: what is before is whole
        ("dog", "a red background with two boats"),  # "and a [dog]": back to before "and"
        ("background", ""),  # the first phrase is unsure: nothing is left
        ("a", ""),  # the very first word is unsure
    ],
)
def test_the_cut_never_ends_on_a_function_word(unsure_word, expected):
    i = CAPTION.split().index(unsure_word)
    cut = cut_unsure(hypothesis(CAPTION, i), FLOOR, FUNCTION)
    assert kept(cut) == expected
    assert not cut.tokens or cut.tokens[-1] not in FUNCTION
    assert cut.score == pytest.approx(len(cut.tokens) * SURE - (len(cut.tokens) + 1) / 10, abs=1e-5)


def test_attention_is_cut_with_the_words_and_a_sure_caption_is_left_alone():
    h = hypothesis(CAPTION, CAPTION.split().index("boat"), with_attention=True)
    cut = cut_unsure(h, FLOOR, FUNCTION)
    assert cut.attention is not None and h.attention is not None
    assert np.array_equal(cut.attention, h.attention[: len(cut.tokens) + 1])
    sure = hypothesis(CAPTION, 99)
    assert cut_unsure(sure, FLOOR, FUNCTION) is sure


def test_function_words_are_found_in_the_vocabulary():
    assert {VOCAB.itos[i] for i in FUNCTION} == {w for w in VOCAB.itos if w in FUNCTION_WORDS}
    assert {"a", "on", "with", "two", "and"} <= {VOCAB.itos[i] for i in FUNCTION}
    assert "boat" not in {VOCAB.itos[i] for i in FUNCTION}
    digits = Vocabulary.build(["a cat on 3 mats"])
    assert digits.stoi["3"] in function_word_ids(digits)


def test_finish_cuts_only_out_of_domain_captions_and_carries_the_threshold():
    """Two images with the same hypothesis: the first in domain (kept whole), the second
    outside (cut at the phrase boundary); both carry the distance and its threshold."""
    domain = DomainModel(np.zeros(2, np.float32), np.eye(2, 1, dtype=np.float32), np.ones(1), 1.0, threshold=1.0)
    trust = TrustStats(domain=domain)
    h = hypothesis(CAPTION, CAPTION.split().index("boat"))
    inside, outside = finish([[h], [h]], VOCAB, trust, np.array([0.5, 3.0]), min_word_prob=FLOOR)
    assert inside.caption == CAPTION and inside.in_domain is True
    assert outside.caption == "a red background with two boats and a dog" and outside.in_domain is False
    assert inside.domain_threshold == outside.domain_threshold == 1.0
    assert outside.domain_distance == 3.0


def test_each_candidate_carries_its_own_confidence_and_its_image_s_domain_fields():
    """n-best of three for two images, one in the domain, one outside: every candidate's
    confidence is the calibration of its own log-probs (capped outside), while distance,
    threshold and flag are its image's; outside, the cut candidates that became the same
    caption are kept once, and the list stays best first."""
    domain = DomainModel(np.zeros(2, np.float32), np.eye(2, 1, dtype=np.float32), np.ones(1), 1.0, threshold=1.0)
    calibration = Calibration("mean_token_logprob", slope=2.0, intercept=4.0)
    trust = TrustStats(calibration=calibration, domain=domain)
    words = CAPTION.split()
    shorter = " ".join(words[:-1])  # "... a dog on a red": unsure at "red", cut as the second is
    hyps = [hypothesis(CAPTION, 99), hypothesis(CAPTION, words.index("boat")), hypothesis(shorter, len(words) - 2)]
    inside, outside = finish([hyps, hyps], VOCAB, trust, np.array([0.25, 2.5]), min_word_prob=FLOOR)

    def own(r) -> float:
        return float(calibration.confidence([float(np.mean(np.asarray(r.logprobs, np.float64)))])[0])

    assert [c.caption for c in inside.candidates] == [CAPTION, CAPTION, shorter]
    assert inside.candidates[0] is inside
    assert len({c.confidence for c in inside.candidates}) == 3  # each its own, not the best's
    for c in inside.candidates:
        assert c.confidence == pytest.approx(own(c), abs=1e-4) and c.confidence > OUT_OF_DOMAIN_CONFIDENCE
        assert (c.in_domain, c.domain_distance, c.domain_threshold) == (True, 0.25, 1.0)
    assert [c.caption for c in outside.candidates] == [CAPTION, "a red background with two boats and a dog"]
    for c in outside.candidates:
        assert c.confidence == pytest.approx(min(own(c), OUT_OF_DOMAIN_CONFIDENCE), abs=1e-4)
        assert (c.in_domain, c.domain_distance, c.domain_threshold) == (False, 2.5, 1.0)
    assert outside.candidates[0] is outside


def test_the_cut_reads_the_function_words_of_each_vocabulary():
    """Two vocabularies in turn (the function words are worked out once per vocabulary):
    each cut goes back to its own vocabulary's phrase boundary."""
    domain = DomainModel(np.zeros(2, np.float32), np.eye(2, 1, dtype=np.float32), np.ones(1), 1.0, threshold=1.0)
    trust = TrustStats(domain=domain)
    other = Vocabulary.build(["dog boat cat mat red on a with"])  # other ids for the same words
    for vocab in (VOCAB, other, VOCAB):
        tokens = vocab.encode("a dog on a red boat", add_special=False)
        lps = np.array([SURE] * 5 + [UNSURE, -0.5], np.float32)
        h = Hypothesis(tokens, float(lps.sum()), lps, np.full(7, -0.5, np.float32))
        (r,) = finish([[h]], vocab, trust, np.array([3.0]), min_word_prob=FLOOR)
        assert r.caption == "a dog"
