"""declared_size on the hostile corpus: never less than the size Pillow opens (the service
holds each decode to the size it priced from the header, so under-declaring would refuse a
good image, and over-declaring only overprices it)."""

from __future__ import annotations

import io

from PIL import Image

from captioner.image_checks import declared_size
from captioner.images import ACCEPTED_FORMATS


def pillow_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            return im.size
    except Exception:
        return None


def test_the_hostile_corpus_never_declares_less_than_pillow_opens(corpus) -> None:
    checked = 0
    for sample in corpus:
        size = pillow_size(sample.data)
        if size is None:
            continue
        declared = declared_size(sample.data)
        assert declared is not None and declared[0] * declared[1] >= size[0] * size[1], (sample.name, size, declared)
        checked += 1
    assert checked >= 100
