"""Feature cache: computed once, reused, never used stale, unreadable images reported."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from captioner.encoders import Preprocess
from captioner.errors import CaptionerError
from captioner.model.torchscript import traced_forward
from captioner.training.features import FeatureCache, encode_images, weights_digest


class TinyEncoder(nn.Module):
    """A real (small) CNN with the Encoder interface: (B, 3, 32, 32) -> (B, 8)."""

    def __init__(self, seed: int = 0, preprocess: Preprocess | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8).eval()
        self.feature_dim = 8
        pp = preprocess or Preprocess(resize_size=32, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.spec = SimpleNamespace(name="tiny", preprocess=pp)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += x.size(0)
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))  # (B, 8)


def _images(folder, n=5):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.new("RGB", (40, 30), (40 * i, 255 - 40 * i, 100)).save(p)
        paths.append(str(p))
    return paths


def test_cache_computes_once_and_reuses(tmp_path):
    paths = _images(tmp_path / "imgs")
    enc = TinyEncoder()
    cache = FeatureCache(tmp_path / "cache", enc, trace=False)
    table, report = cache.build(paths, progress=False)
    assert (report.computed, report.reused, report.stale) == (5, 0, 0)
    assert table.features.shape == (5, 8)
    calls = enc.calls
    table2, report2 = FeatureCache(tmp_path / "cache", enc, trace=False).build(paths, progress=False)
    assert (report2.computed, report2.reused) == (0, 5)
    assert enc.calls == calls  # the encoder did not run again
    for p in paths:
        assert torch.equal(
            table.features[table.row_of[str(tmp_path / "imgs" / os.path.basename(p))]],
            table2.features[table2.rows([p])[0]],
        )
    # the features are the encoder's own output for the preprocessed image
    x = torch.from_numpy(enc.spec.preprocess(Image.open(paths[2]).convert("RGB")))[None]  # (1, 3, 32, 32)
    assert torch.allclose(table2.features[table2.rows([paths[2]])[0]], enc(x)[0], atol=1e-6)


def test_changed_image_is_stale_and_recomputed(tmp_path):
    paths = _images(tmp_path / "imgs")
    enc = TinyEncoder()
    table, _ = FeatureCache(tmp_path / "cache", enc, trace=False).build(paths, progress=False)
    before = table.features[table.rows([paths[1]])[0]].clone()
    Image.new("RGB", (40, 30), (0, 0, 255)).save(paths[1])  # new content (new size/mtime)
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    table2, report = FeatureCache(tmp_path / "cache", enc, trace=False).build(paths, progress=False)
    assert (report.computed, report.stale, report.reused) == (1, 1, 4)
    after = table2.features[table2.rows([paths[1]])[0]]
    assert not torch.allclose(before, after)
    x = torch.from_numpy(enc.spec.preprocess(Image.open(paths[1]).convert("RGB")))[None]  # (1, 3, 32, 32)
    assert torch.allclose(after, enc(x)[0], atol=1e-6)


def test_content_key_detects_change_with_same_size_and_mtime(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    path = folder / "same.bmp"  # BMP is uncompressed: other pixels, same file size
    Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    st = os.stat(path)
    enc = TinyEncoder()
    FeatureCache(tmp_path / "stat", enc, key="stat", trace=False).build([str(path)], progress=False)
    FeatureCache(tmp_path / "content", enc, key="content", trace=False).build([str(path)], progress=False)
    Image.new("RGB", (40, 30), (200, 20, 30)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # e.g. a copy that kept the old time
    assert os.stat(path).st_size == st.st_size
    _, by_stat = FeatureCache(tmp_path / "stat", enc, key="stat", trace=False).build([str(path)], progress=False)
    _, by_content = FeatureCache(tmp_path / "content", enc, key="content", trace=False).build(
        [str(path)], progress=False
    )
    assert by_stat.reused == 1  # size + mtime cannot see this change: what key="content" is for
    assert (by_content.stale, by_content.computed, by_content.reused) == (1, 1, 0)


def test_other_weights_or_preprocessing_use_another_cache(tmp_path):
    paths = _images(tmp_path / "imgs", 3)
    a = FeatureCache(tmp_path / "cache", TinyEncoder(seed=0), trace=False)
    b = FeatureCache(tmp_path / "cache", TinyEncoder(seed=1), trace=False)
    pp = Preprocess(resize_size=32, crop_size=32, mean=(0.4, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    c = FeatureCache(tmp_path / "cache", TinyEncoder(seed=0, preprocess=pp), trace=False)
    assert len({a.path, b.path, c.path}) == 3
    assert weights_digest(TinyEncoder(seed=0)) == weights_digest(TinyEncoder(seed=0))
    ta, _ = a.build(paths, progress=False)
    tb, rb = b.build(paths, progress=False)
    assert rb.computed == 3 and not torch.allclose(ta.features, tb.features)


def test_tampered_cache_file_is_rebuilt(tmp_path):
    paths = _images(tmp_path / "imgs", 3)
    enc = TinyEncoder()
    cache = FeatureCache(tmp_path / "cache", enc, trace=False)
    good, _ = cache.build(paths, progress=False)
    cache.path.write_bytes(b"not a safetensors file")
    table, report = cache.build(paths, progress=False)
    assert report.rebuilt_file and report.computed == 3
    assert torch.allclose(table.features[table.rows(paths)], good.features[good.rows(paths)])
    # and the file on disk is valid again
    assert FeatureCache(tmp_path / "cache", enc, trace=False).build(paths, progress=False)[1].reused == 3


def test_unreadable_images_are_reported_by_name_and_skipped(tmp_path):
    paths = _images(tmp_path / "imgs", 3)
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    missing = str(tmp_path / "imgs" / "gone.png")
    enc = TinyEncoder()
    table, report = FeatureCache(tmp_path / "cache", enc, trace=False).build(
        [*paths, str(bad), missing], progress=False
    )
    failed = dict(report.failed)
    assert set(failed) == {str(bad), missing}
    assert report.computed == 3
    assert table.rows([str(bad), missing, paths[0]])[:2] == [None, None]
    assert table.rows([paths[0]])[0] is not None
    assert "broken.png" in report.summary() or "2 unreadable" in report.summary()


def test_read_only_load_refuses_stale_entries(tmp_path):
    paths = _images(tmp_path / "imgs", 2)
    enc = TinyEncoder()
    cache = FeatureCache(tmp_path / "cache", enc, trace=False)
    with pytest.raises(CaptionerError):
        cache.load(paths)  # nothing built yet
    cache.build(paths, progress=False)
    assert len(cache.load(paths).row_of) == 2
    Image.new("RGB", (41, 30), (9, 9, 9)).save(paths[0])
    table = cache.load(paths)
    assert table.rows(paths)[0] is None and table.rows(paths)[1] is not None
    assert "stale" in dict(table.failed)[str(tmp_path / "imgs" / "img0.png")]


def test_cache_file_is_safetensors_with_json_index(tmp_path):
    from safetensors import safe_open

    paths = _images(tmp_path / "imgs", 2)
    cache = FeatureCache(tmp_path / "cache", TinyEncoder(), trace=False)
    cache.build(paths, progress=False)
    with safe_open(str(cache.path), framework="pt") as f:
        meta = f.metadata()
        assert f.get_tensor("features").shape == (2, 8)
    index = json.loads(meta["index"])
    assert [e["path"] for e in index] == [str((tmp_path / "imgs" / f"img{i}.png").resolve()) for i in range(2)]
    assert json.loads(meta["identity"])["encoder"] == "tiny"


def test_traced_forward_matches_eager():
    enc = TinyEncoder().eval()
    x = torch.randn(3, 3, 32, 32)
    fast = traced_forward(enc, x)
    with torch.inference_mode():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), enc(x), atol=1e-5)
        assert fast(torch.randn(1, 3, 32, 32)).shape == (1, 8)  # another batch size still works


def test_encode_images_traced_equals_eager(tmp_path):
    paths = _images(tmp_path / "imgs", 5)
    enc = TinyEncoder()
    a, _ = encode_images(enc, enc.spec.preprocess, paths, batch_size=2, trace=True, progress=False)
    b, _ = encode_images(enc, enc.spec.preprocess, paths, batch_size=1, trace=False, progress=False)
    assert sorted(a) == sorted(b) == list(range(5))
    for i in range(5):
        assert torch.allclose(a[i], b[i], atol=1e-5)
