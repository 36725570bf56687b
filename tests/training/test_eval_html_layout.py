"""The evaluation page fits a 1280 px window: with every metric column, long file names and
a scene-errors column, no column is cut off and the page needs no sideways scrolling."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.training.eval_html import write_html

PHOTO = Path(__file__).resolve().parents[1] / "data" / "coffee.jpg"
METRICS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "rouge_l", "meteor", "spice"]


def _report(rows: int = 6) -> dict:
    per_image = []
    for i in range(rows):
        per_image.append(
            {
                "image_id": i,
                "file": f"val2014/very_long_folder_name_of_the_dataset/COCO_val2014_{i:012d}_extra_long_name.jpg",
                "caption": "a drawing of two boats and a dog on a red background with three apples beside them",
                "references": [
                    "two boats and a dog on a red background, drawn in the style of an emoji sprite",
                    "a red background with a dog and two small boats floating next to each other",
                ],
                "scores": {m: 0.1234 * (i + 1) for m in METRICS},
                "scene_correct": False,
                "scene_errors": [
                    "wrong count of boat: said 2, drawn 3",
                    "missed kind apple (3 drawn)",
                    "background: said red, drawn orange",
                ],
            }
        )
    return {
        "images": rows,
        "metrics": {m: 0.5 for m in METRICS},
        "intervals": {m: [0.4, 0.6] for m in METRICS},
        "bootstrap": {"level": 0.95, "resamples": 1000},
        "tokenizer": {"name": "ours", "description": "the project's tokenizer"},
        "source": {"predictions": "captions.jsonl", "references": "data/scenes"},
        "worst_by": "cider_d",
        "per_image": per_image,
        "notes": [],
    }


@pytest.mark.browser
def test_the_per_image_table_fits_1280_px(tmp_path, browser):
    from selenium.webdriver.common.by import By

    report = _report()
    page = write_html(report, tmp_path / "report.html", images={r["file"]: PHOTO for r in report["per_image"]})
    browser.set_window_size(1280, 1000)
    browser.get(page.as_uri())
    inner = browser.execute_script("return document.documentElement.clientWidth")  # less the scroll bar
    assert inner <= 1280
    assert len(browser.find_elements(By.CSS_SELECTOR, "#per-image img.thumb")) == len(report["per_image"])
    assert browser.execute_script("return document.documentElement.scrollWidth") <= inner  # no sideways scroll
    table = browser.find_element(By.ID, "per-image")
    right = browser.execute_script("return arguments[0].getBoundingClientRect().right", table)
    assert right <= inner, f"the table ends at {right} px, past the {inner} px window"
    last = browser.find_elements(By.CSS_SELECTOR, "#per-image tbody tr:first-child td")[-1]
    box = browser.execute_script("var r = arguments[0].getBoundingClientRect(); return [r.left, r.right]", last)
    assert box[1] <= inner and box[1] - box[0] >= 100  # the scene-errors cell is whole and readable
    assert "wrong count of boat" in last.text
    shot = tmp_path / "report-1280.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
