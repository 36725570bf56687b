"""The upload page in real headless Chromium: pick images, read their captions back."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from servicekit import colour_image

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(
            "the browser test needs headless Chromium and its driver: install the Debian packages "
            "'chromium chromium-driver' (make system-deps does it)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    d = webdriver.Chrome(service=ChromeService(executable_path=driver), options=options)
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()


def test_upload_page_shows_each_image_with_its_caption(server, browser, tmp_path):
    red = tmp_path / "red <b>bold.png"  # markup in a file name must show as text
    red.write_bytes(colour_image("red", 501))
    blue = tmp_path / "blue.jpg"
    blue.write_bytes(colour_image("blue", 502, fmt="JPEG"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(colour_image("green", 503)[:100])

    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: "test-colours" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in (red, blue, broken)))

    def settled(d):
        cards = d.find_elements(By.CSS_SELECTOR, "#results .card")
        return len(cards) == 3 and all(c.get_attribute("data-state") != "pending" for c in cards) and cards

    cards = WebDriverWait(browser, 60).until(settled)
    shown = {
        c.find_element(By.CSS_SELECTOR, ".name").text: (
            c.get_attribute("data-state"),
            c.find_element(By.CSS_SELECTOR, ".caption").text,
        )
        for c in cards
    }
    assert shown[red.name] == ("done", "a red picture"), shown
    assert shown[blue.name] == ("done", "a blue picture"), shown
    state, text = shown[broken.name]
    assert state == "error" and "broken.png" in text, shown
    assert not browser.find_elements(By.CSS_SELECTOR, "#results b")  # the file name was not parsed as HTML
    # each card previews its own image (decoded by the browser from a blob: URL)
    assert (
        browser.execute_script(
            "return Array.from(document.querySelectorAll('#results .card img'))"
            ".filter(i => i.src.startsWith('blob:') && i.naturalWidth === 64).length"
        )
        >= 2
    )
