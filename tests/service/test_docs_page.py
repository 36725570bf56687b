"""/docs in real headless Chromium: Swagger UI must render every operation of /openapi.json.

Fetching the page is not enough (a Swagger UI that cannot read the schema still answers
200 and says "Unable to render this definition"): the test waits for the operations to be
drawn and compares them with the schema's, method and path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.browser


def rendered_operations(browser) -> list[str]:
    """``METHOD /path`` of every operation Swagger UI has drawn."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('.opblock-summary')).map(s => "
        "s.querySelector('.opblock-summary-method').textContent.trim() + ' ' + "
        "(s.querySelector('.opblock-summary-path').getAttribute('data-path') || "
        "s.querySelector('.opblock-summary-path').textContent).trim())"
    )


def test_docs_page_renders_every_operation(server, browser, tmp_path):
    import httpx

    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    expected = sorted(f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item)
    assert "POST /v1/captions" in expected and "GET /v1/model" in expected

    browser.get(server.url + "/docs")
    WebDriverWait(browser, 60).until(lambda d: len(rendered_operations(d)) >= len(expected))
    assert sorted(rendered_operations(browser)) == expected
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "POST\n/v1/captions" in text or "POST /v1/captions" in text.replace("\n", " ")
    assert "Unable to render" not in text and "does not specify a valid version" not in text
    assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper .errors")  # no schema errors shown
    assert "captioner" in browser.find_element(By.CSS_SELECTOR, ".info .title").text

    # the schemas of the responses are drawn too (the typed response models)
    models = browser.find_element(By.CSS_SELECTOR, "section.models").text
    for name in ("CaptionResponse", "CaptionItem", "CaptionFailure", "ErrorBody", "ModelInfo"):
        assert name in models, models

    # opening POST /v1/captions shows its parameters with their ranges and the form's field names
    browser.find_element(By.CSS_SELECTOR, ".opblock-post .opblock-summary").click()
    WebDriverWait(browser, 30).until(lambda d: "beam_size" in d.find_element(By.CSS_SELECTOR, ".opblock-post").text)
    WebDriverWait(browser, 30).until(
        lambda d: "multipart/form-data" in d.find_element(By.CSS_SELECTOR, ".opblock-post").text
    )
    post = browser.find_element(By.CSS_SELECTOR, ".opblock-post").text
    for words in ("beam_size", "max_length", "timeout", "filename", "maximum: 5", "422"):
        assert words in post, (words, post[:2000])

    shot = Path(os.environ.get("TEST_SCREENSHOT_DIR", tmp_path)) / "docs.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
