"""n-best captions (``num_captions``) and the domain threshold through the API, on real
uvicorn servers, and the upload page's control for them in headless Chromium.

Two servers: ``taught`` runs a checkpoint that says "a cat" for the cat photo three times in
five and "a cat on a mat" twice (so beam search has a known second best); ``shipped`` runs the
shipped weights, which carry calibration and domain statistics (confidence, threshold).
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from captionkit import teach_checkpoint
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from servicekit import Server, launch, wait_ready
from test_api import assert_error

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CAT_PHOTO = DATA / "chelsea.jpg"
CAT = CAT_PHOTO.read_bytes()
BEST, SECOND = "a cat", "a cat on a mat"
SCREENSHOTS = Path("/tmp/captioner-screens")


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, Server]]:
    root = tmp_path_factory.mktemp("nbest")
    ckpt = teach_checkpoint(
        root / "ckpt", [CAT_PHOTO] * 5, [BEST] * 3 + [SECOND] * 2, max_length=8, expect=[BEST] * 5, metadata={}
    )
    procs = {
        "taught": launch(ckpt, root / "taught.log", "--max-beam-size", "5"),
        "shipped": launch(ROOT / "weights" / "default", root / "shipped.log"),
    }
    running: dict[str, Server] = {}
    try:
        for name, proc in procs.items():
            running[name] = wait_ready(proc, root / f"{name}.log")
        yield running
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            Server(proc, "", root / f"{name}.log").stop()


def post(c: httpx.Client, where: str, options: dict[str, int]) -> httpx.Response:
    """One request with the cat photo and ``options`` as query, form fields or a JSON body."""
    if where == "json":
        doc = {"images": [{"data": base64.b64encode(CAT).decode(), "name": "cat.jpg"}], **options}
        return c.post("/v1/captions", content=json.dumps(doc), headers={"Content-Type": "application/json"})
    if where == "form":
        return c.post("/v1/captions", data={k: str(v) for k, v in options.items()}, files={"file": ("cat.jpg", CAT)})
    return c.post("/v1/captions", params=options, files={"file": ("cat.jpg", CAT)})


@pytest.mark.parametrize("where", ["query", "form", "json"])
def test_num_captions_gives_the_k_best_with_scores(servers, where):
    with servers["taught"].client() as c:
        r = post(c, where, {"beam_size": 3, "num_captions": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    (item,) = body["results"]
    assert body["num_captions"] == 2 and body["beam_size"] == 3
    assert item["caption"] == BEST
    assert [cand["caption"] for cand in item["candidates"]] == [BEST, SECOND]
    first, second = item["candidates"]
    assert first["score"] == item["score"] and second["score"] < first["score"]
    assert set(first) == {"caption", "score", "confidence"} and first["confidence"] is None  # no calibration


def test_one_caption_has_no_candidates_list(servers):
    with servers["taught"].client() as c:
        body = post(c, "query", {"beam_size": 3}).json()
    assert body["num_captions"] == 1 and "candidates" not in body["results"][0]


@pytest.mark.parametrize("where", ["query", "form", "json"])
def test_more_captions_than_the_beam_is_a_one_line_422(servers, where):
    with servers["taught"].client() as c:
        r = post(c, where, {"num_captions": 3, "beam_size": 2})
        default_beam = post(c, where, {"num_captions": 2})  # the server's default beam is 1
        too_many = post(c, where, {"num_captions": 6, "beam_size": 5})
    body = assert_error(r, 422, "invalid_option")
    assert body["detail"] == "num_captions must be at most beam_size (2), got 3; raise beam_size to 3 or more"
    assert "at most beam_size (1)" in assert_error(default_beam, 422, "invalid_option")["detail"]
    assert "num_captions must be an integer from 1 to 5" in assert_error(too_many, 422, "invalid_option")["detail"]


def test_openapi_documents_num_captions_candidates_and_the_threshold(servers):
    with servers["taught"].client() as c:
        doc = c.get("/openapi.json").json()
    op = doc["paths"]["/v1/captions"]["post"]
    params = {p["name"]: p for p in op["parameters"]}
    content = op["requestBody"]["content"]
    form = content["multipart/form-data"]["schema"]["properties"]
    js = content["application/json"]["schema"]["properties"]
    for schema in (params["num_captions"]["schema"], form["num_captions"], js["num_captions"]):
        assert (schema["type"], schema["minimum"], schema["maximum"]) == ("integer", 1, 5)
    assert "beam_size" in params["num_captions"]["description"]
    schemas = doc["components"]["schemas"]
    item = schemas["CaptionItem"]["properties"]
    assert "candidates" in item and "domain_threshold" in item
    assert set(schemas["Candidate"]["properties"]) == {"caption", "score", "confidence"}


def test_results_carry_the_domain_threshold_beside_the_distance(servers):
    with servers["shipped"].client() as c:
        item = c.post("/v1/captions", files={"file": ("cat.jpg", CAT)}).json()["results"][0]
        threshold = c.get("/v1/model").json()["trust"]["domain"]["threshold"]
        nbest = c.post("/v1/captions", params={"beam_size": 3, "num_captions": 3}, files={"file": ("c.jpg", CAT)})
    assert item["domain_threshold"] == pytest.approx(threshold, abs=1e-4)
    assert item["in_domain"] is (item["domain_distance"] <= item["domain_threshold"]) and item["in_domain"] is False
    candidates = nbest.json()["results"][0]["candidates"]
    assert len({c["caption"] for c in candidates}) == len(candidates) >= 2  # distinct
    assert all(0 <= c["confidence"] <= 1 for c in candidates)  # calibrated checkpoint: a confidence each


@pytest.mark.browser
def test_the_page_shows_the_k_best_captions_with_their_confidence(servers, browser, tmp_path):
    from captioner.training.scenes import generate_scenes

    generate_scenes(tmp_path / "s", {"train": 0, "val": 0, "test": 1}, 7, progress=False)
    (scene,) = sorted((tmp_path / "s" / "images" / "test").glob("*.jpg"))
    browser.set_window_size(1280, 1400)
    browser.get(servers["shipped"].url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "knows").is_displayed())  # /v1/model read
    control = browser.find_element(By.ID, "num-captions")
    control.clear()
    control.send_keys("3")
    browser.find_element(By.ID, "file").send_keys(f"{scene}\n{CAT_PHOTO}")

    def settled(d):
        cards = d.find_elements(By.CSS_SELECTOR, "#results .card")
        return len(cards) == 2 and all(c.get_attribute("data-state") == "done" for c in cards) and cards

    cards = WebDriverWait(browser, 90).until(settled)
    for card in cards:
        rows = card.find_elements(By.CSS_SELECTOR, ".candidates li.candidate")
        texts = [r.find_element(By.CSS_SELECTOR, ".text").text for r in rows]
        assert len(rows) == 3 and len(set(texts)) == 3, texts
        hows = [r.find_element(By.CSS_SELECTOR, ".how").text for r in rows]
        assert all(h.endswith(" %") and "confidence" in h for h in hows), hows
        assert card.find_element(By.CSS_SELECTOR, ".candidates-title").text == "3 best captions"
    scene_card = cards[0]
    assert (
        scene_card.find_element(By.CSS_SELECTOR, ".caption").text
        == scene_card.find_element(By.CSS_SELECTOR, ".candidates li .text").text
    )  # the best is the caption shown
    SCREENSHOTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "nbest.png"))
    control.clear()
    control.send_keys("1")
    browser.find_element(By.ID, "clear").click()
    browser.find_element(By.ID, "file").send_keys(str(scene))
    (card,) = WebDriverWait(browser, 90).until(
        lambda d: [
            c for c in d.find_elements(By.CSS_SELECTOR, "#results .card") if c.get_attribute("data-state") == "done"
        ]
    )
    assert not card.find_elements(By.CSS_SELECTOR, ".candidates")  # one caption asked for: no list
