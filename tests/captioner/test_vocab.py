import json

import pytest

from captioner.vocab import Vocabulary, tokenize


def test_tokenize_rules():
    assert tokenize("A Dog's toy, on a RED mat!") == ["a", "dog's", "toy", "on", "a", "red", "mat"]
    assert tokenize("  ") == [] and tokenize("") == [] and tokenize(None) == []  # type: ignore[arg-type]
    assert tokenize("Café—naïve  ＣＡＴ") == ["café", "naïve", "cat"]  # NFKC folds full-width letters
    assert tokenize("don’t stop") == ["don't", "stop"]  # typographic apostrophe normalised
    assert tokenize("two-tone car_park 3 dogs") == ["two", "tone", "car", "park", "3", "dogs"]


def test_build_min_count_order_and_specials():
    v = Vocabulary.build(["a dog", "a cat", "a dog runs"], min_count=2)
    assert v.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert v.itos[4:] == ["a", "dog"]  # by frequency, then alphabetical; 'cat' and 'runs' below min count
    assert (v.pad_id, v.start_id, v.end_id, v.unk_id) == (0, 1, 2, 3)
    with pytest.raises(ValueError):
        Vocabulary.build(["x"], min_count=0)
    assert len(Vocabulary.build(["a b c d"], max_size=2)) == 6


def test_encode_decode_round_trip_and_unknown_words():
    v = Vocabulary.build(["a dog on the grass", "two cats"])
    ids = v.encode("A dog on the grass.")
    assert ids[0] == v.start_id and ids[-1] == v.end_id
    assert v.decode(ids) == "a dog on the grass"
    unk = v.encode("a zebra")
    assert unk[2] == v.unk_id and v.decode(unk) == "a <unk>"
    assert v.encode("", add_special=True) == [v.start_id, v.end_id]
    assert v.encode("", add_special=False) == []
    assert v.decode([v.start_id, v.end_id]) == ""
    assert v.decode([v.stoi["two"], v.end_id, v.stoi["cats"]]) == "two"  # stops at <end>
    assert v.decode([v.stoi["two"], v.pad_id, v.stoi["cats"]]) == "two cats"


def test_json_save_load(tmp_path):
    v = Vocabulary.build(["ünïcode words here", "more words"])
    p = tmp_path / "vocab.json"
    v.save(p)
    assert Vocabulary.load(p) == v
    data = json.loads(p.read_text(encoding="utf-8"))
    data["tokens"] = ["<start>", "<pad>", "<end>", "<unk>", "x"]
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary.load(p)
    p.write_text(json.dumps({"tokens": ["<pad>", "<start>", "<end>", "<unk>", "x", "x"]}))
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary.load(p)


def test_order_is_frequency_then_alphabetical():
    v = Vocabulary.build(["zebra zebra zebra mango apple", "apple zebra", "kiwi banana"])
    assert v.itos[4:] == ["zebra", "apple", "banana", "kiwi", "mango"]  # 4, 2, then the ties a..z
    with pytest.raises(ValueError, match=r"^min_count must be >= 1$"):
        Vocabulary.build(["x"], min_count=0)


def test_membership_equality_and_out_of_range_ids():
    v = Vocabulary.build(["a dog", "two cats"])
    assert "dog" in v and "zebra" not in v and "<end>" in v
    assert v == Vocabulary.build(["a dog", "two cats"]) and v != Vocabulary.build(["a cat"]) and v != "a dog"
    # an id outside the table (a corrupt checkpoint, a bigger model's output) decodes to <unk>
    assert v.decode([len(v), -1, v.stoi["dog"]]) == "<unk> <unk> dog"


def test_json_format_and_refusals(tmp_path):
    v = Vocabulary.build(["ünïcode words here"])
    p = tmp_path / "vocab.json"
    v.save(p)
    text = p.read_text(encoding="utf-8")
    assert "ünïcode" in text  # readable, not \\u-escaped
    assert json.loads(text) == {"format": "captioner-vocab/1", "tokens": v.itos}
    assert Vocabulary.from_dict(v.to_dict()) == v
    bad_data: list[object] = [["<pad>"], {"tokens": "abc"}, {"tokens": [1, 2, 3, 4]}, {"words": []}]
    for bad in bad_data:
        with pytest.raises(ValueError, match=r"^vocabulary JSON must have a 'tokens' list of strings$"):
            Vocabulary.from_dict(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^vocabulary has duplicate tokens$"):
        Vocabulary.from_dict({"tokens": [*Vocabulary.SPECIALS, "x", "x"]})
