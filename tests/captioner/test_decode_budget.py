"""The enforced decode budget: load_image in worker processes, killed past the budget."""

import functools
import io
import os
import signal

import numpy as np
import pytest
from PIL import Image

from captioner.decode_budget import DecodePool, DecodeTimeout
from captioner.errors import ImageLoadError
from captioner.images import load_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def pool():
    with DecodePool(workers=2, budget_s=60.0) as p:
        yield p


def test_a_worker_decodes_exactly_what_load_image_decodes(pool, tmp_path):
    samples = {
        "photo.jpg": encode(noise(900, 700), "JPEG"),
        "photo.png": encode(noise(300, 200, 1), "PNG"),
        "gray16.png": encode(Image.fromarray(np.arange(600 * 400, dtype=np.uint16).reshape(400, 600)), "PNG"),
        "phone.heic": encode(noise(64, 48, 2), "HEIF"),
    }
    for name, data in samples.items():
        want = load_image(data, name=name, draft_size=(224, 224))
        got = pool.load(data, name=name, draft_size=(224, 224))
        assert got.mode == "RGB" and got.size == want.size and got.tobytes() == want.tobytes(), name
    path = tmp_path / "photo.png"
    path.write_bytes(samples["photo.png"])
    assert pool.load(path).tobytes() == load_image(path).tobytes()


def test_a_worker_can_crop_and_the_input_tensor_is_the_same(pool):
    # The service asks the workers for the crop (150 KB back instead of the whole picture);
    # preprocessing must then not crop again, and the tensor must be bitwise the same.

    from captioner import pipeline
    from captioner.encoders import Preprocess, get_spec
    from captioner.resize import CROPPED

    specs = [get_spec("efficientnet_lite0").preprocess, Preprocess(256, 224, (0.5,) * 3, (0.25,) * 3, "bilinear")]
    images = {"wide.jpg": encode(noise(900, 500), "JPEG"), "tall.png": encode(noise(300, 700, 3), "PNG")}
    for pre in specs:
        for name, data in images.items():
            got = pool.load(data, name=name, draft_size=pre.draft_size, crop=pre.resize_spec)
            assert got.size == (pre.crop_size, pre.crop_size) and got.info[CROPPED] == pre.resize_spec
            loader = functools.partial(pool.load, crop=pre.resize_spec)
            worker = pipeline.prepare(data, pre, loader=loader)
            assert np.array_equal(worker, pipeline.prepare(data, pre)), (name, pre)
    lite0, other = specs
    cropped = pool.load(images["wide.jpg"], draft_size=lite0.draft_size, crop=lite0.resize_spec)
    assert other.resize_and_crop(cropped) is not cropped  # cropped for another recipe: cropped again
    assert lite0.resize_and_crop(cropped) is cropped


def test_a_worker_raises_the_loaders_own_errors(pool, tmp_path):
    cases = [
        (b"", "empty"),
        (b"not an image at all", "unsupported"),
        (encode(noise(64, 48), "PNG")[:300], "unreadable"),
        (encode(Image.new("RGB", (8, 8)), "ICO"), "unsupported"),
    ]
    for data, code in cases:
        try:
            load_image(data, name="x.bin", max_pixels=10_000)
        except ImageLoadError as e:
            want = (e.name, e.reason, e.code)
        with pytest.raises(ImageLoadError) as got:
            pool.load(data, name="x.bin", max_pixels=10_000)
        assert (got.value.name, got.value.reason, got.value.code) == want and want[2] == code
    with pytest.raises(ImageLoadError) as e:
        pool.load(tmp_path / "missing.png")
    assert e.value.code == "not_found"
    with pytest.raises(ImageLoadError, match="exceed the limit of 1000"):
        pool.load(encode(noise(64, 48), "PNG"), max_pixels=1000)


def test_a_decode_past_its_budget_is_killed_and_its_worker_replaced():
    big = encode(noise(2500, 2500), "PNG")  # far longer than 1 ms to decode
    with DecodePool(workers=1, budget_s=60.0) as pool:
        assert pool.load(encode(noise(8, 8), "PNG")).size == (8, 8)  # the worker has started
        first = pool._all[0].proc
        with pytest.raises(DecodeTimeout) as e:
            pool.load(big, name="big.png", budget_s=0.001)
        assert e.value.code == "too_large" and e.value.name == "big.png" and e.value.budget_s == 0.001
        assert "budget of 0.001 s" in e.value.reason
        assert first.poll() == -signal.SIGKILL, "the worker still runs the abandoned decode"
        assert pool.recycled == 1 and pool._all[0].proc is not first
        assert pool.load(big).size == (2500, 2500)  # the replacement works


def test_a_worker_that_dies_is_replaced():
    with DecodePool(workers=1) as pool:
        assert pool.load(encode(noise(8, 8), "PNG")).size == (8, 8)
        os.kill(pool._all[0].proc.pid, signal.SIGKILL)
        pool._all[0].proc.wait()
        with pytest.raises(ImageLoadError) as e:
            pool.load(encode(noise(8, 8), "PNG"), name="a.png")
        assert e.value.code == "unreadable" and "crashed" in e.value.reason
        assert pool.recycled == 1
        assert pool.load(encode(noise(8, 8), "PNG")).size == (8, 8)


def test_waiting_for_a_busy_pool_is_bounded_too():
    with DecodePool(workers=1) as pool:
        worker = pool._idle.get()  # every worker busy
        try:
            with pytest.raises(TimeoutError, match="no decode worker was free"):
                pool.load(encode(noise(8, 8), "PNG"), budget_s=0.05)
        finally:
            pool._idle.put(worker)


def test_workers_stay_light_and_are_stopped_on_close():
    pool = DecodePool(workers=2)
    assert pool.load(encode(noise(8, 8), "PNG")).size == (8, 8)
    procs = [w.proc for w in pool._all]
    for proc in procs:  # no torch in a decode worker: the captioner package's imports are skipped
        with open(f"/proc/{proc.pid}/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        assert rss_kb < 200_000, f"a decode worker uses {rss_kb} kB"
        with open(f"/proc/{proc.pid}/maps") as f:
            assert "libtorch" not in f.read()
    pool.close()
    assert all(proc.poll() is not None for proc in procs)
    with pytest.raises(ValueError, match="at least 1"):
        DecodePool(workers=0)
