"""``POST /v1/captions?explain=true``: per image, per word and for the end token, the
attention grid (7 x 7 weights that sum to 1) and its peak cell, on a real uvicorn serving an
attention checkpoint; on the pooled test server the request is refused with 422 before the
body is read, and without explain nothing changes. Documented in OpenAPI."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from captionkit import teach_checkpoint
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from servicekit import colour_image, launch, wait_ready


def build_attention_checkpoint(out: Path) -> Path:
    """The real spatial EfficientNet-Lite0 and a small attention decoder taught "a red
    picture" / "a blue picture" for a few seconds."""
    captions = [f"a {c} picture" for c in ("red", "blue") for _ in range(3)]
    pictures = [colour_image(c.split()[1], seed=i) for i, c in enumerate(captions)]
    return teach_checkpoint(out, pictures, captions, max_length=5, attention=True, width=16, steps=60, export=True)


@pytest.fixture(scope="module")
def attention_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    proc = launch(build_attention_checkpoint(root / "ckpt"), root / "server.log", "--max-wait-ms", "5")
    server = wait_ready(proc, root / "server.log")
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        server.stop()


def test_explain_adds_each_words_attention_grid_and_peak(attention_server):
    files = [
        ("file", ("a.png", colour_image("red", 1), "image/png")),
        ("file", ("b.jpg", b"not an image", "image/jpeg")),
    ]
    with attention_server.client() as c:
        r = c.post("/v1/captions", params={"explain": "true", "max_length": 4}, files=files)
        plain = c.post("/v1/captions", files=files[:1])
    assert r.status_code == 200, r.text
    good, bad = r.json()["results"]
    assert good["caption"] == "a red picture"
    assert [w["word"] for w in good["attention"]] == ["a", "red", "picture", "<end>"]
    for w in good["attention"]:
        grid = np.array(w["attention"])
        assert grid.shape == (7, 7)
        assert abs(grid.sum() - 1.0) <= 49 * 0.0005 + 1e-9 and (grid >= 0).all()  # 3 decimals each
        assert grid[w["peak"][0], w["peak"][1]] == grid.max()
    assert "attention" not in bad and bad["error"]  # a failed image has no maps
    assert plain.status_code == 200 and "attention" not in plain.json()["results"][0]


def test_explain_on_a_pooled_model_is_refused_before_the_body(server):
    with server.client() as c:
        r = c.post("/v1/captions", params={"explain": "true"}, files=[("file", ("a.png", b"x", "image/png"))])
        bad = c.post("/v1/captions", params={"explain": "maybe"}, files=[("file", ("a.png", b"x", "image/png"))])
        spec = c.get("/openapi.json").json()
    assert r.status_code == 422 and r.json()["error"] == "explain_unavailable"
    assert "attention model" in r.json()["detail"]
    assert bad.status_code == 422
    params = {p["name"] for p in spec["paths"]["/v1/captions"]["post"]["parameters"]}
    assert "explain" in params
    assert "WordAttention" in spec["components"]["schemas"]


@pytest.mark.browser
def test_the_page_draws_a_words_attention_over_the_preview(attention_server, server, browser, tmp_path):
    picture = tmp_path / "red.png"
    picture.write_bytes(colour_image("red", 3, size=(96, 64)))
    browser.set_window_size(1280, 1000)
    browser.get(server.url + "/")  # a pooled model: no toggle
    WebDriverWait(browser, 30).until(lambda d: "test-colours" in d.find_element(By.ID, "model").text)
    assert not browser.find_element(By.ID, "explain-row").is_displayed()
    browser.get(attention_server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "explain-row").is_displayed())
    browser.find_element(By.ID, "explain").click()
    browser.find_element(By.ID, "file").send_keys(str(picture))
    words = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".card .caption .word"))
    assert [w.text for w in words] == ["a", "red", "picture"]
    words[1].click()
    canvas = browser.find_element(By.CSS_SELECTOR, ".card canvas.heat")
    assert canvas.get_attribute("data-word") == "red" and words[1].get_attribute("data-active") == "true"
    alphas = browser.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "return [c.width, c.height, Math.max(...d.filter((_, i) => i % 4 === 3))];",
        canvas,
    )
    assert alphas == [7, 7, 200]  # the grid, its peak fully drawn
    box = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(), m = document.querySelector('.card img.preview'),"
        "i = m.getBoundingClientRect(); return [r.left - i.left, r.top - i.top, r.width, r.height,"
        "m.clientWidth, m.clientHeight, m.naturalWidth, m.naturalHeight];",
        canvas,
    )
    left, top, width, height, cw, ch, nw, nh = box
    scale = min(cw / nw, ch / nh)  # object-fit: contain
    side = min(nw, nh) * scale  # the model saw the centre square (shorter side)
    assert (nw, nh) == (96, 64)
    assert width == pytest.approx(side, abs=1) and height == pytest.approx(side, abs=1)
    assert left == pytest.approx((cw - side) / 2, abs=1) and top == pytest.approx((ch - side) / 2, abs=1)
