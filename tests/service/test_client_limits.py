"""Per-request and per-client budgets (service.client_limits), without a server: pricing
uploads from their headers, and the per-client ledger. The same limits through a real
server: tests/reliability/test_client_shares.py."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from captioner.service.client_limits import ClientLedger, price_upload, price_uploads
from captioner.service.errors import APIError
from captioner.service.uploads import Upload


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def test_an_upload_is_charged_its_declared_pixels_and_held_to_them() -> None:
    assert price_upload(png(300, 200), max_pixels=10**6) == (60_000, 60_000)
    # Over the per-image limit: refused from its header by the decoder, so it costs nothing.
    assert price_upload(png(2000, 1000), max_pixels=10**6) == (0, 10**6)
    # Not an image any accepted format claims: refused unopened, costs nothing.
    assert price_upload(b"%PDF-1.4 not an image", max_pixels=10**6) == (0, 10**6)
    # An accepted format whose size cannot be read: charged the most an image may be.
    cut = png(300, 200)[:20]
    assert price_upload(cut, max_pixels=10**6) == (10**6, 10**6)


def test_a_request_over_its_pixel_budget_is_413_naming_the_limit() -> None:
    uploads = [Upload("a.png", png(300, 200)), Upload("b.png", png(100, 100))]
    assert price_uploads(uploads, max_pixels=10**6, max_request_pixels=70_000) == 70_000
    assert [u.max_pixels for u in uploads] == [60_000, 10_000]
    with pytest.raises(APIError) as refused:
        price_uploads(uploads, max_pixels=10**6, max_request_pixels=69_999)
    e = refused.value
    assert (e.status, e.code) == (413, "too_many_pixels")
    assert "70000 pixels" in e.detail and "69999 per request (max_request_pixels)" in e.detail


def test_a_client_holds_at_most_its_share_and_gives_it_back() -> None:
    ledger = ClientLedger(100, "pixels", "max_client_pixels")
    ledger.take("10.0.0.1", 60)
    ledger.take("10.0.0.2", 100)  # another client has a share of its own
    with pytest.raises(APIError) as refused:
        ledger.take("10.0.0.1", 41)
    e = refused.value
    assert (e.status, e.code, e.headers) == (429, "client_busy", {"Retry-After": "1"})
    assert "already has 60 pixels" in e.detail and "limit of 100 per client (max_client_pixels)" in e.detail
    ledger.take("10.0.0.1", 40)  # exactly the limit fits
    assert ledger.held("10.0.0.1") == 100
    ledger.give_back("10.0.0.1", 100)
    assert ledger.held("10.0.0.1") == 0
    with pytest.raises(RuntimeError), ledger.hold("10.0.0.1", 100):
        assert ledger.held("10.0.0.1") == 100
        raise RuntimeError("the request failed")
    assert ledger.held("10.0.0.1") == 0  # returned however the block ended
