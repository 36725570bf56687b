"""The upload page in real headless Chromium: pick images, read their captions back as a
user sees them (the rendered DOM), copy one, download all, and look at the layout.

Two servers: ``server`` (the colour-naming test checkpoint, whose captions are known) and
``shipped`` (the shipped weights, which carry calibration and domain statistics, so the
page shows confidence words and the out-of-domain note with what the CNN sees).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from servicekit import API_KEY, Server, colour_image, launch, wait_ready

from captioner.outputs import CSV_HEADER, read_records

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CAT = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
HIGH, MEDIUM = 0.8, 0.5  # the page's confidence words (service/static/app.js)


@pytest.fixture
def browser(browser):
    """The suite's headless Chromium (tests/conftest.py) in a 1280x1000 window."""
    browser.set_window_size(1280, 1000)
    return browser


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """``captioner serve`` with the shipped weights and a 2-megapixel limit."""
    log = tmp_path_factory.mktemp("shipped") / "serve.log"
    server = wait_ready(launch(ROOT / "weights" / "default", log, "--max-pixels", "2000000"), log)
    try:
        yield server
    finally:
        server.stop()


def open_page(browser, server: Server, model_text: str) -> None:
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: model_text in d.find_element(By.ID, "model").text)


def pick(browser, paths: list[Path]) -> list:
    """Pick ``paths`` in the file input and wait until every card has its result."""
    browser.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in paths))

    def settled(d):
        cards = d.find_elements(By.CSS_SELECTOR, "#results .card")
        return len(cards) == len(paths) and all(c.get_attribute("data-state") != "pending" for c in cards) and cards

    return WebDriverWait(browser, 90).until(settled)


def text_of(card, selector: str) -> str:
    return card.find_element(By.CSS_SELECTOR, selector).text


def test_upload_page_shows_each_image_with_its_caption(server, browser, tmp_path):
    red = tmp_path / "red <b>bold.png"  # markup in a file name must show as text
    red.write_bytes(colour_image("red", 501))
    blue = tmp_path / "blue.jpg"
    blue.write_bytes(colour_image("blue", 502, fmt="JPEG"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(colour_image("green", 503)[:100])
    notes = tmp_path / "notes.txt"  # not an image at all: the server says why
    notes.write_text("a shopping list")
    long = tmp_path / (
        "".join(f"part{i:02d}-" for i in range(30)) + ".png"
    )  # over 200 characters: the server shortens it
    long.write_bytes(b"not a png")

    open_page(browser, server, "test-colours")
    cards = pick(browser, [red, blue, broken, notes, long])
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

    # the cards are in the order the files were picked, captions under their pictures
    assert [text_of(c, ".name") for c in cards] == [red.name, blue.name, broken.name, notes.name, long.name]
    for card in cards[:2]:
        picture = card.find_element(By.CSS_SELECTOR, "img.preview")
        assert (
            picture.location["y"] + picture.size["height"]
            <= card.find_element(By.CSS_SELECTOR, ".caption").location["y"]
        )
    # what the browser cannot show is a placeholder naming the file type, never a broken-image icon
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('#results img')).every(i => i.complete && i.naturalWidth > 0)"
    )
    for card, ext in ((cards[2], "PNG"), (cards[3], "TXT"), (cards[4], "PNG")):
        assert text_of(card, ".placeholder") == f"{ext}\nno preview"
        assert not card.find_elements(By.TAG_NAME, "img")
    # the error text names the file once, with the server's reason
    for card, name, reason in (
        (cards[2], broken.name, "truncated or corrupt image data"),
        (cards[3], notes.name, "not a recognised image format"),
        (cards[4], long.name, "not a recognised image format"),
    ):
        assert card.text.count(name[:40]) == 1, card.text
        assert text_of(card, ".caption").startswith(f"{name} could not be captioned: {reason}"), card.text
        assert card.find_element(By.CSS_SELECTOR, ".caption").get_attribute("role") == "alert"
    assert text_of(cards[3], ".meta") == "error 415 unsupported_image"
    # a captioned card says nothing of trust fields this checkpoint has no statistics for
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .ood, #results .confidence")
    assert browser.find_element(By.ID, "status").text == "2 of 5 images captioned, 3 failed"
    # what the model knows, and the limits with readable numbers
    assert browser.find_element(By.ID, "knows").text == ("This model knows plain noisy colour pictures.")
    assert browser.find_element(By.ID, "limits").text == "up to 40 million pixels and 32 MiB per image"


def test_a_server_with_an_api_key_asks_for_it(limited, browser, tmp_path):
    red = tmp_path / "red.png"
    red.write_bytes(colour_image("red", 511))
    browser.get(limited.url + "/")
    model = browser.find_element(By.ID, "model")
    WebDriverWait(browser, 30).until(lambda d: model.text == "model: API key required")
    key = browser.find_element(By.ID, "api-key")
    assert key.is_displayed() and not browser.find_element(By.ID, "knows").is_displayed()
    key.send_keys("wrong-key")
    (refused,) = pick(browser, [red])
    assert text_of(refused, ".meta") == "error 401 unauthorized"
    assert text_of(refused, ".caption").startswith("red.png could not be captioned: ")
    assert model.text == "model: API key required"
    key.clear()
    key.send_keys(API_KEY, Keys.TAB)
    WebDriverWait(browser, 30).until(lambda d: "test-colours" in model.text)
    # this server's own limits, readable
    assert browser.find_element(By.ID, "limits").text == "up to 250,000 pixels and 64 KiB per image"
    assert browser.find_element(By.ID, "beam-size").get_attribute("max") == "3"
    browser.find_element(By.ID, "clear").click()
    (card,) = pick(browser, [red])
    assert text_of(card, ".caption") == "a red picture"


def grant_clipboard_and_downloads(browser, server: Server, folder: Path) -> None:
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})


def downloaded(folder: Path, name: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        path = folder / name
        if path.exists() and not list(folder.glob("*.crdownload")):
            return path.read_text(encoding="utf-8")
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded; {folder} holds {sorted(p.name for p in folder.iterdir())}")


def test_copy_caption_and_download_all(server, browser, tmp_path):
    colours = ["yellow", "red", "green", "blue"]
    paths = []
    for i, colour in enumerate(colours):
        path = tmp_path / f'{i} {colour}, "picked".png'  # a comma and quotes: CSV must quote them
        path.write_bytes(colour_image(colour, 600 + i))
        paths.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    paths.insert(2, broken)
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    open_page(browser, server, "test-colours")
    grant_clipboard_and_downloads(browser, server, downloads)
    for button in ("download-json", "download-csv"):  # nothing to download yet
        assert not browser.find_element(By.ID, button).is_enabled()
    cards = pick(browser, paths)
    expected = {p.name: f"a {c} picture" for p, c in zip([q for q in paths if q != broken], colours)}

    # copy, operated from the keyboard: the caption is in the clipboard and the button says so
    copy = cards[1].find_element(By.CSS_SELECTOR, ".copy")
    assert copy.get_attribute("aria-label") == f"Copy the caption of {paths[1].name}"
    copy.send_keys(Keys.ENTER)
    WebDriverWait(browser, 10).until(lambda d: copy.get_attribute("data-copied") == "true")
    assert copy.text == "Copied ✓"
    clipboard = browser.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, (e) => done('refused: ' + e))"
    )
    assert clipboard == "a red picture"
    assert not cards[2].find_elements(By.CSS_SELECTOR, ".copy")  # a failed image has no caption to copy

    shown = {text_of(c, ".name"): text_of(c, ".caption") for c in cards if c.get_attribute("data-state") == "done"}
    assert shown == expected
    browser.find_element(By.ID, "download-json").click()
    records = json.loads(downloaded(downloads, "captions.json"))
    assert [r["file"] for r in records] == [p.name for p in paths]  # picked order, failures included
    assert {r["file"]: r["caption"] for r in records if "caption" in r} == expected
    (failed,) = [r for r in records if "caption" not in r]
    assert failed["file"] == broken.name and failed["error"] == "unreadable_image" and failed["detail"]
    scores = {
        text_of(c, ".name"): text_of(c, ".meta").split(" · ")[0]
        for c in cards
        if c.get_attribute("data-state") == "done"
    }
    for r in records:
        if "caption" in r:
            assert scores[r["file"]] == f"score {r['score']:.2f}"

    browser.find_element(By.ID, "download-csv").click()
    text = downloaded(downloads, "captions.csv")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == CSV_HEADER
    assert {row[0]: row[1] for row in rows[1:]} == expected and len(rows) == 1 + len(expected)
    # the same file `captioner caption --out captions.csv` writes: `captioner evaluate` reads it
    (downloads / "captions.csv").write_text(text, encoding="utf-8")
    back = read_records(downloads / "captions.csv", "csv")
    assert [r["file"] for r in back] == [p.name for p in paths if p != broken]
    assert {r["file"]: r["score"] for r in back} == {r["file"]: r["score"] for r in records if "caption" in r}

    browser.find_element(By.ID, "clear").click()
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .card")
    assert not browser.find_element(By.ID, "download-json").is_enabled()


def api_results(server: Server, paths: list[Path]) -> dict[str, dict]:
    files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    r = httpx.post(server.url + "/v1/captions", params={"labels": 3}, files=files, timeout=120)
    return {item["filename"]: item for item in r.json()["results"]}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[Path]:
    """Two freshly rendered scenes (seed 7; training used seed 0)."""
    from captioner.training.scenes import generate_scenes

    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, {"train": 0, "val": 0, "test": 2}, 7, progress=False)
    return sorted((out / "images" / "test").glob("*.jpg"))


def test_confidence_and_out_of_domain_note_with_the_shipped_model(shipped, scenes, browser, tmp_path):
    chelsea = ROOT / "tests" / "data" / "chelsea.jpg"
    big = tmp_path / "big.jpg"  # 1600x1300 = 2.08 million pixels, over this server's 2 million
    Image.new("RGB", (1600, 1300), (200, 120, 40)).save(big, quality=80)
    paths = [scenes[0], chelsea, big]
    api = api_results(shipped, paths[:2])

    open_page(browser, shipped, "default")
    knows = browser.find_element(By.ID, "knows")
    assert knows.text.startswith("This model knows emoji scenes: one to three ")
    assert knows.find_element(By.TAG_NAME, "strong").text == "emoji scenes"
    assert knows.text.endswith("(32,000 training images). Pictures unlike these are marked as such.")
    assert browser.find_element(By.ID, "limits").text == "up to 2 million pixels and 32 MiB per image"
    cards = pick(browser, paths)
    scene, cat, too_large = cards

    for card, path in ((scene, scenes[0]), (cat, chelsea)):
        item = api[path.name]
        assert text_of(card, ".caption") == item["caption"]
        meter = card.find_element(By.CSS_SELECTOR, ".confidence meter")
        value = float(meter.get_attribute("value"))
        assert abs(value - item["confidence"]) < 0.01
        word = "high" if value >= HIGH else "medium" if value >= MEDIUM else "low"
        assert text_of(card, ".confidence .words") == f"{word} confidence · {round(value * 100)} %"
        assert card.find_element(By.CSS_SELECTOR, ".confidence").get_attribute("data-level") == word

    # the scene is what the model knows: no note
    assert api[scenes[0].name]["in_domain"] is True
    assert not scene.find_elements(By.CSS_SELECTOR, ".ood") and scene.get_attribute("data-domain") is None
    # the cat is not: a clear note before the caption, with what the CNN sees, and low confidence
    item = api[chelsea.name]
    assert item["in_domain"] is False and cat.get_attribute("data-domain") == "out"
    assert text_of(cat, ".ood .badge") == "Unlike the training images"
    sees = text_of(cat, ".ood .sees")
    labels = ", ".join(f"{lab['name']} {round(lab['probability'] * 100)} %" for lab in item["labels"])
    assert sees == f"outside what this model was trained on (emoji scenes); the CNN sees: {labels}"
    assert {lab["name"] for lab in item["labels"]} & CAT
    assert text_of(cat, ".confidence .words").startswith("low confidence")
    note, caption = cat.find_element(By.CSS_SELECTOR, ".ood"), cat.find_element(By.CSS_SELECTOR, ".caption")
    assert note.location["y"] < caption.location["y"]
    assert browser.find_element(By.ID, "status").text == (
        "2 of 3 images captioned, 1 failed; 1 looks unlike the training data"
    )
    # the pixel limit in words, the picture still previewed (the browser can show it)
    error = text_of(too_large, ".caption")
    assert error == (
        "big.jpg could not be captioned: 1600x1300 pixels exceed the limit of 2 million (possible decompression bomb)"
    )
    assert not re.search(r"\d{5,}", too_large.text)
    assert too_large.find_element(By.CSS_SELECTOR, "img.preview").get_attribute("naturalWidth") == "1600"


CONTRAST_JS = """
function rgb(s) { const m = s.match(/[\\d.]+/g).map(Number); return m.length > 3 ? m : [...m, 1]; }
function lum([r, g, b]) {
  const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
}
function background(node) {
  for (let n = node; n; n = n.parentElement) {
    const c = rgb(getComputedStyle(n).backgroundColor);
    if (c[3] > 0.5) return c;
  }
  return [255, 255, 255, 1];
}
const low = [];
for (const node of document.querySelectorAll("body *")) {
  const own = Array.from(node.childNodes).some((t) => t.nodeType === 3 && t.textContent.trim());
  if (!own || !node.checkVisibility() || node.closest(".placeholder") || node.disabled) continue;
  const [a, b] = [lum(rgb(getComputedStyle(node).color)), lum(background(node))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) low.push(node.className + " '" + node.textContent.trim().slice(0, 30) + "' " + ratio.toFixed(2));
}
return low;
"""

LABELLED_JS = """
return Array.from(document.querySelectorAll("input, button")).filter((n) => n.checkVisibility() || n.id === "file")
  .filter((n) => !((n.labels && n.labels.length && n.labels[0].textContent.trim()) || n.getAttribute("aria-label")
                   || (n.tagName === "BUTTON" && n.textContent.trim())))
  .map((n) => n.id || n.className);
"""


@pytest.mark.parametrize("width", [1280, 390])
def test_layout_at_desktop_and_phone_widths(shipped, scenes, browser, tmp_path, width):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    paths = [scenes[0], ROOT / "tests" / "data" / "chelsea.jpg", scenes[1], notes]
    open_page(browser, shipped, "default")
    browser.set_window_size(width, 1000)
    cards = pick(browser, paths)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, height + 200)
    shot = tmp_path / f"page-{width}.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).width == width

    inner = browser.execute_script("return window.innerWidth")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= inner  # no sideways scrolling
    columns = {c.location["x"] for c in cards}
    assert len(columns) == (1 if width < 500 else 4), columns
    for card in cards:  # nothing sticks out of its card
        right = card.location["x"] + card.size["width"]
        for part in card.find_elements(By.CSS_SELECTOR, ".body > *, .body .ood > *"):
            assert part.location["x"] + part.size["width"] <= right + 1, (card.text, part.text)
    # the controls sit inside the window too
    for name in ("beam-size", "download-json", "download-csv", "clear"):
        control = browser.find_element(By.ID, name)
        assert control.location["x"] + control.size["width"] <= inner, name
    assert browser.execute_script(CONTRAST_JS) == []  # text contrast at least 4.5:1 (WCAG AA)
    assert browser.execute_script(LABELLED_JS) == []  # every control has a name
    # the strict Content-Security-Policy held: nothing was refused, no script error
    problems = [e["message"] for e in browser.get_log("browser") if e["source"] in ("security", "javascript")]
    assert problems == []
