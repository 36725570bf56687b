"""Scene accuracy: a caption is right only with exactly the right kinds, counts and background."""

from __future__ import annotations

import json

import pytest

from captioner.errors import CaptionerError
from captioner.metrics.scene import (
    REASONS,
    SceneTruth,
    check_caption,
    find_scene_truth,
    parse_caption,
    scene_accuracy,
)

CATEGORIES = [
    {"name": "dog", "plural": "dogs", "article": "a"},
    {"name": "car", "plural": "cars", "article": "a"},
    {"name": "cat", "plural": "cats", "article": "a"},
    {"name": "sheep", "plural": "sheep", "article": "a"},
    {"name": "bus", "plural": "buses", "article": "a"},
    {"name": "elephant", "plural": "elephants", "article": "an"},
    {"name": "teddy bear", "plural": "teddy bears", "article": "a"},
]
BACKGROUNDS = ["white", "green", "red", "orange", "light blue"]


def truth_dict() -> dict:
    return {
        "format": "captioner-scenes-truth/1",
        "split": "test",
        "categories": CATEGORIES,
        "backgrounds": BACKGROUNDS,
        "images": [
            {
                "id": 1,
                "file_name": "test/000000.jpg",
                "background": "green",
                "objects": [{"kind": "dog", "count": 2, "boxes": []}, {"kind": "car", "count": 1, "boxes": []}],
            },
            {
                "id": 2,
                "file_name": "test/000001.jpg",
                "background": "orange",
                "objects": [{"kind": "sheep", "count": 3, "boxes": []}],
            },
            {
                "id": 3,
                "file_name": "test/000002.jpg",
                "background": "light blue",
                "objects": [{"kind": "teddy bear", "count": 1, "boxes": []}, {"kind": "bus", "count": 2, "boxes": []}],
            },
        ],
    }


@pytest.fixture()
def truth() -> SceneTruth:
    return SceneTruth(truth_dict(), "truth.json")


def verdict(truth: SceneTruth, image_id: int, caption: str):
    return check_caption(caption, truth.get(image_id), truth.words)


@pytest.mark.parametrize(
    "caption",
    [
        "two dogs and a car on a green background",
        "a green picture with a car and two dogs",
        "there are two dogs and one car in front of a green background",
        "An image of 2 dogs and a car against a GREEN background.",
        "a car, two dogs, on green",
    ],
)
def test_right_captions_in_any_phrasing(truth, caption):
    check = verdict(truth, 1, caption)
    assert check.correct, check.details
    assert check.reasons == []


@pytest.mark.parametrize(
    "image_id,caption,reason",
    [
        (1, "two dogs on a green background", "missing_kind"),
        (1, "two dogs, a car and a cat on a green background", "extra_kind"),
        (1, "three dogs and a car on a green background", "wrong_count"),
        (1, "two dogs and two cars on a green background", "wrong_count"),
        (1, "two dog and a car on a green background", "plural_mismatch"),
        (1, "two dogs and a cars on a green background", "plural_mismatch"),
        (1, "dogs and a car on a green background", "no_count"),
        (1, "a dog and a car and a dog on a green background", "repeated_kind"),
        (1, "two dogs and a car on a red background", "wrong_background"),
        (1, "two dogs and a car", "missing_background"),
        (1, "two dogs and a car on a green and red background", "several_backgrounds"),
        (2, "two sheep on an orange background", "wrong_count"),
        (3, "a teddy bear and two buses on a blue background", "missing_background"),  # "blue" is not "light blue"
        (3, "a teddy bears and two buses on a light blue background", "plural_mismatch"),
        (3, "a teddy bear and two bus on a light blue background", "plural_mismatch"),
    ],
)
def test_each_way_of_being_wrong(truth, image_id, caption, reason):
    check = verdict(truth, image_id, caption)
    assert not check.correct
    assert reason in check.reasons, check.details
    assert set(check.reasons) <= set(REASONS)


def test_invariant_plural_and_multiword_names(truth):
    assert verdict(truth, 2, "three sheep on an orange background").correct
    assert verdict(truth, 2, "an orange picture with 3 sheep").correct
    assert verdict(truth, 3, "a light blue picture with a teddy bear and two buses").correct
    parsed = parse_caption("a teddy bear and two buses on a light blue background", truth.words)
    assert parsed.counts == {"teddy bear": 1, "bus": 2}
    assert parsed.backgrounds == ["light blue"]


def test_several_wrongs_are_all_reported(truth):
    check = verdict(truth, 1, "a cat on a red background")
    assert set(check.reasons) == {"missing_kind", "extra_kind", "wrong_background"}


def test_articles_are_not_graded(truth):
    # "a elephant" is bad English but still names one elephant: wrong here only because of the kinds
    check = verdict(truth, 1, "a elephant on a green background")
    assert set(check.reasons) == {"missing_kind", "extra_kind"}


def test_scene_accuracy_counts_and_lookup_by_id_or_file(truth):
    predictions = {
        1: "two dogs and a car on a green background",  # right
        "test/000001.jpg": "three sheep on a white background",  # wrong background
        "3": "a teddy bear and two buses on a light blue background",  # right, id as text
    }
    result = scene_accuracy(predictions, truth)
    assert (result.correct, result.total) == (2, 3)
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.reasons == {"wrong_background": 1}
    assert result.wrong[0][0] == "test/000001.jpg"
    assert result.to_dict()["errors"] == {"wrong_background": 1}


def test_unknown_image_is_an_error(truth):
    with pytest.raises(CaptionerError, match=r"not in truth\.json"):
        scene_accuracy({99: "a dog on a green background"}, truth)


def test_load_from_file_or_dataset_folder(tmp_path):
    (tmp_path / "scenes_test.json").write_text(json.dumps(truth_dict()), encoding="utf-8")
    assert len(SceneTruth.load(tmp_path / "scenes_test.json")) == 3
    assert len(SceneTruth.load(tmp_path, split="test")) == 3
    assert find_scene_truth(tmp_path, "test") == tmp_path / "scenes_test.json"
    assert find_scene_truth(tmp_path, "val") is None
    with pytest.raises(CaptionerError, match="no scenes ground truth"):
        SceneTruth.load(tmp_path, split="val")


def test_rejects_files_that_are_not_scene_truth(tmp_path):
    bad = tmp_path / "scenes_test.json"
    bad.write_text(json.dumps({"images": []}), encoding="utf-8")
    with pytest.raises(CaptionerError, match="not a scenes ground-truth file"):
        SceneTruth.load(bad)
    data = truth_dict()
    del data["images"][0]["background"]
    with pytest.raises(CaptionerError, match="malformed"):
        SceneTruth(data, "x.json")
    data = truth_dict()
    data["backgrounds"].append("dog")
    with pytest.raises(CaptionerError, match="both as a kind and a colour"):
        SceneTruth(data, "x.json")
