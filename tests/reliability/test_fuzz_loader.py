"""Property-based fuzzing of the safe image loader (hypothesis).

For any bytes at all - random ones, and valid images of every format with bytes
overwritten, cut off, duplicated or inserted - ``load_image`` either returns an RGB image
within the pixel limit or raises :class:`ImageLoadError` with a known code and a reason.
Nothing else may escape (no ``OSError``, ``SyntaxError``, ``struct.error``, ``ValueError``,
``MemoryError``, ...), and no input may take long: each call must finish within a
second-scale deadline, and the whole test within pytest's timeout (a hang fails it).

Examples per property: ``RELIABILITY_FUZZ_EXAMPLES_LOADER`` (default 250, a few seconds).
"""

from __future__ import annotations

import os
import time

import pytest
from hostile import MAX_PIXELS as SERVICE_MAX_PIXELS
from hostile import animated, encode, exif_jpeg, hostile_images, picture, png_16bit_rgb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captioner.errors import ImageLoadError
from captioner.images import load_image, probe_image_size

MAX_PIXELS = 1_000_000
SLOW_S = 3.0  # generous: the machine may be shared; a decoder stuck in a loop takes far longer
CODES = {"unreadable", "unsupported", "too_large", "empty", "not_found"}
EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES_LOADER", "250"))
TIME_LIMIT_S = max(180, EXAMPLES // 10)  # pytest-timeout: a hung decoder fails the test
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def seeds() -> list[bytes]:
    """Small valid images of every format and odd mode the loader handles."""
    base = picture(24, 16, seed=3)
    return [
        encode(base, "JPEG"),
        encode(base, "JPEG", progressive=True),
        encode(base.convert("CMYK"), "JPEG"),
        encode(base, "PNG"),
        encode(base.convert("P"), "PNG", transparency=0),
        encode(base.convert("LA"), "PNG"),
        encode(base.convert("I;16"), "PNG"),
        png_16bit_rgb(8, 6),
        encode(base.convert("P"), "GIF"),
        animated("GIF", 2),
        animated("PNG", 2),
        animated("WEBP", 2),
        encode(base, "WEBP"),
        encode(base, "WEBP", lossless=True),
        encode(base, "BMP"),
        encode(base.convert("P"), "BMP"),
        encode(base, "TIFF"),
        encode(base, "TIFF", compression="tiff_lzw"),
        encode(base.convert("F"), "TIFF"),
        encode(base, "PPM"),
        exif_jpeg(6, 24, 16),
        encode(base, "AVIF"),
        encode(base, "HEIF"),
    ]


def refused_seeds() -> dict[str, bytes]:
    """Valid files of formats the loader does not accept (Pillow could read them)."""
    base = picture(24, 16, seed=3)
    return {fmt: encode(base, fmt) for fmt in ("ICO", "TGA", "PCX", "QOI", "SGI")}


SEEDS = seeds()
REFUSED = refused_seeds()


def check(data: bytes) -> None:
    """The property: an RGB image within limits, or ImageLoadError; quickly."""
    start = time.monotonic()
    try:
        im = load_image(data, name="fuzz.bin", max_pixels=MAX_PIXELS, draft_size=(224, 224))
    except ImageLoadError as e:
        assert e.code in CODES and e.reason and e.name == "fuzz.bin"
    else:
        assert im.mode == "RGB" and 0 < im.width * im.height <= MAX_PIXELS
    try:
        w, h = probe_image_size(data)
        assert w >= 0 and h >= 0
    except ImageLoadError:
        pass
    took = time.monotonic() - start
    assert took < SLOW_S, f"{took:.1f} s for {len(data)} bytes starting {data[:32]!r}"


@pytest.mark.timeout(TIME_LIMIT_S)
@FUZZ
@given(st.binary(max_size=8192))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@pytest.mark.timeout(TIME_LIMIT_S)
@FUZZ
@given(st.binary(min_size=0, max_size=600))
def test_arbitrary_bytes_after_a_real_magic_number(tail: bytes) -> None:
    for magic in (
        b"\xff\xd8\xff\xe0",
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBPVP8L",
        b"BM",
        b"II*\x00",
        b"MM\x00*",
        b"P6\n",
    ):
        check(magic + tail)


@st.composite
def mutated(draw) -> bytes:
    """A seed image with a few random edits: overwrite, cut, insert, duplicate a slice."""
    data = bytearray(draw(st.sampled_from(SEEDS + list(REFUSED.values()))))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["overwrite", "overwrite", "cut", "insert", "duplicate", "zero_run"]))
        n = len(data)
        if n == 0:
            break
        i = draw(st.integers(0, n - 1))
        if kind == "overwrite":
            data[i] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[i:]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "duplicate":
            j = draw(st.integers(i, min(n, i + 256)))
            data[j:j] = data[i:j] * draw(st.integers(1, 4))
        else:
            data[i : i + draw(st.integers(1, 32))] = b"\x00" * 32
    return bytes(data)


@pytest.mark.timeout(TIME_LIMIT_S)
@FUZZ
@given(mutated())
def test_mutated_valid_images(data: bytes) -> None:
    check(data)


def test_the_seeds_are_valid() -> None:
    """The mutation seeds themselves decode (else the fuzzing above would prove little)."""
    for data in SEEDS:
        assert load_image(data, max_pixels=MAX_PIXELS).mode == "RGB"


def test_seeds_of_other_formats_are_refused_by_name() -> None:
    """Formats outside the allow-list are refused (415) naming the format, never decoded."""
    for fmt, data in REFUSED.items():
        with pytest.raises(ImageLoadError) as e:
            load_image(data, name=f"seed.{fmt.lower()}", max_pixels=MAX_PIXELS)
        assert e.value.code == "unsupported", (fmt, e.value.reason)
        # TGA has no magic number (its first bytes can read as a CUR header), the others do
        named = "images are not accepted" if fmt == "TGA" else f"{fmt} images are not accepted"
        assert named in e.value.reason, e.value.reason
        assert "JPEG, PNG" in e.value.reason


@pytest.mark.parametrize("draft", [None, (224, 224)], ids=["full-size", "draft"])
def test_every_corpus_file_gets_the_outcome_written_in_the_corpus(draft) -> None:
    """The corpus says per file what must happen (hostile.py, independent of the loader):
    a bomb answered "unreadable" or a valid HEIC refused fails here."""
    corpus = hostile_images()
    wrong = []
    for sample in corpus:
        try:
            im = load_image(sample.data, name=sample.filename, max_pixels=SERVICE_MAX_PIXELS, draft_size=draft)
        except ImageLoadError as e:
            assert e.name == sample.filename and e.reason
            if e.code not in sample.outcomes:
                wrong.append(
                    f"{sample.filename} ({sample.note}): {e.code} ({e.reason}), expected {set(sample.outcomes)}"
                )
            continue
        if "ok" not in sample.outcomes:
            wrong.append(f"{sample.filename} ({sample.note}): decoded, expected {set(sample.outcomes)}")
        elif draft is None and sample.size is not None and im.size != sample.size:
            wrong.append(f"{sample.filename}: decoded at {im.size}, expected {sample.size}")
    assert not wrong, "\n".join(wrong)
    kinds = {o for s in corpus if len(s.outcomes) == 1 for o in s.outcomes}
    assert kinds == {"ok", "too_large", "unsupported", "unreadable", "empty"}
