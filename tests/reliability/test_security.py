"""Security: no code runs from weights files, API keys, file names that try to escape,
and a floor under the versions of the dependencies that parse untrusted input.

Malicious pickles (whose unpickling would create a marker file) are planted everywhere the
project reads weights: a checkpoint's ``model.safetensors`` and ``encoder.safetensors``,
an ``--encoder-weights`` file (``.pt`` and ``.safetensors``) and the feature cache (the
training run's ``last/`` that ``--resume`` reads is covered in test_crash.py, which has a
run to plant them in). Each must be refused with a clear error (or, for the cache,
ignored and rebuilt) and the marker must never appear.
"""

from __future__ import annotations

import asyncio
import hmac
import pickle
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hostile import encode, picture
from packaging.version import Version
from pydantic import SecretStr
from relkit import API_KEY, Payload, Server, plant

from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.errors import CheckpointError
from captioner.model.checkpoint import load_checkpoint, save_checkpoint
from captioner.vocab import Vocabulary


def test_the_payload_really_runs_when_unpickled(tmp_path) -> None:
    """The control: what the other tests refuse would otherwise execute."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def small_checkpoint(path: Path, with_encoder: bool = False) -> Path:
    vocab = Vocabulary.build(["a red dog", "a blue car"])
    cfg = DecoderConfig(vocab_size=len(vocab), feature_dim=8, embed_dim=8, hidden_dim=16, img_proj_dim=4)
    enc = {"w": torch.zeros(2, 2)} if with_encoder else None
    return save_checkpoint(
        path,
        decoder=CaptionDecoder(cfg),
        decoder_config=cfg,
        encoder_name="efficientnet_lite0",
        preprocess={},
        vocab=vocab,
        metadata={},
        encoder_state=enc,
    )


@pytest.mark.parametrize("target", ["model.safetensors", "encoder.safetensors"])
def test_pickle_planted_in_a_checkpoint_is_refused(tmp_path, monkeypatch, target) -> None:
    """Refused by the PyTorch reference path and by the runtime, which (the checkpoint
    having no graphs) would export them from those weights into the cache."""
    from captioner import Captioner, ReferenceCaptioner

    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = small_checkpoint(tmp_path / "ckpt", with_encoder=True)
    marker = tmp_path / "PWNED"
    plant(ckpt / target, marker)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="safetensors"):
        ReferenceCaptioner.load(ckpt)
    with pytest.raises(CheckpointError):
        Captioner.load(ckpt)
    assert not marker.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.onnx"))


@pytest.mark.parametrize("name,how", [("evil.pt", "torch"), ("evil.pth", "pickle"), ("evil.safetensors", "pickle")])
def test_pickle_as_encoder_weights_is_refused(tmp_path, name, how) -> None:
    from captioner.encoders import build_encoder
    from captioner.encoders.registry import EncoderWeightsError

    marker = tmp_path / "PWNED"
    plant(tmp_path / name, marker, how)
    with pytest.raises(EncoderWeightsError, match="cannot read encoder weights"):
        build_encoder("efficientnet_lite0", weights=tmp_path / name)
    assert not marker.exists()


def test_pickle_planted_in_the_feature_cache_is_ignored(tmp_path) -> None:
    from captioner.encoders import build_encoder
    from captioner.training.features import FeatureCache

    encoder = build_encoder("efficientnet_lite0", weights="random")
    images = []
    for i in range(2):
        images.append(tmp_path / f"{i}.png")
        images[-1].write_bytes(encode(picture(32, 32, seed=i), "PNG"))
    cache = FeatureCache(tmp_path / "cache", encoder, name="efficientnet_lite0", trace=False)
    cache.path.parent.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    plant(cache.path, marker)
    _table, report = cache.build(images, progress=False)
    assert not marker.exists()
    assert report.rebuilt_file and report.computed == 2 and report.reused == 0
    assert cache.path.read_bytes()[:2] != pickle.dumps({})[:2]  # replaced by a safetensors file
    assert cache.build(images, progress=False)[1].reused == 2


# ---------------------------------------------------------------------------- API keys
def test_api_key_is_required_and_checked(rel_server: Server) -> None:
    img = encode(picture(32, 24), "PNG")
    files = {"file": ("a.png", img, "image/png")}
    with rel_server.client(auth=False) as client:
        r = client.post("/v1/captions", files=files)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
        for header in (
            f"Bearer {API_KEY}x",
            f"Bearer {API_KEY[:-1]}",
            "Bearer",
            f"Basic {API_KEY}",
            API_KEY,
            f"Bearer {API_KEY.upper()}",
            f"Bearer\t{API_KEY}x",
        ):
            r = client.post("/v1/captions", files=files, headers={"Authorization": header})
            assert r.status_code == 401, header
        assert client.get("/v1/model").status_code == 401
        assert client.get("/healthz").status_code == 200  # probes stay open
        r = client.post("/v1/captions", files=files, headers={"Authorization": f"bearer {API_KEY}"})
        assert r.status_code == 200


def test_api_key_is_compared_in_constant_time(monkeypatch) -> None:
    """The key check goes through hmac.compare_digest (whose time does not depend on where
    the first differing byte is), never through ==."""
    from captioner.service import auth
    from captioner.service.errors import APIError

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)

    def request(header: str | None):
        settings = SimpleNamespace(api_key=SecretStr("s3cret-key"))
        headers = {"authorization": header} if header is not None else {}
        return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(settings=settings)), headers=headers)

    assert asyncio.run(auth.require_api_key(request("Bearer s3cret-key"))) is None
    with pytest.raises(APIError) as e:
        asyncio.run(auth.require_api_key(request("Bearer s3cret-kez")))
    assert e.value.status == 401
    assert calls == [(b"s3cret-key", b"s3cret-key"), (b"s3cret-kez", b"s3cret-key")]


# ---------------------------------------------------------------------------- file names
HOSTILE_NAMES = [
    "../../x.jpg",
    "/etc/passwd",
    "..\\..\\windows.jpg",
    "C:\\boot.jpg",
    "a\x00b.jpg",
    "\u202egnp.exe",
    "name\r\nX-Injected: 1.jpg",
    "....//....//y.jpg",
    "%2e%2e%2fz.jpg",
]


def test_request_file_names_never_become_paths(rel_server: Server, tmp_path) -> None:
    workdir = rel_server.log.parent
    before = {p for p in workdir.parent.rglob("*")}
    img = encode(picture(32, 24), "PNG")
    boundary = "secboundary"
    with rel_server.client() as client:
        for name in HOSTILE_NAMES:
            body = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
                + name.encode("utf-8")
                + b'"\r\nContent-Type: image/png\r\n\r\n'
                + img
                + f"\r\n--{boundary}--\r\n".encode()
            )
            r = client.post(
                "/v1/captions", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
            )
            assert r.status_code in (200, 400), (name, r.text)
            if r.status_code == 200:
                echoed = r.json()["results"][0]["filename"]
                assert echoed is None or (
                    "/" not in echoed
                    and "\\" not in echoed
                    and "\x00" not in echoed
                    and not any(ord(c) < 32 or 0x202A <= ord(c) <= 0x202E for c in echoed)
                    and echoed not in (".", "..")
                ), (name, echoed)
            r = client.post(
                "/v1/captions", content=img, params={"filename": name}, headers={"Content-Type": "image/png"}
            )
            assert r.status_code == 200
            echoed = r.json()["results"][0]["filename"]
            assert echoed is None or ("/" not in echoed and "\x00" not in echoed), (name, echoed)
    after = {p for p in workdir.parent.rglob("*")}
    assert after - before <= {workdir / "server.log"}, after - before
    assert not Path("/x.jpg").exists() and not (workdir.parent.parent / "x.jpg").exists()


# ---------------------------------------------------------------------------- dependencies
# The lowest versions without the published advisories we know of for the packages that
# parse untrusted input or load files (checked offline; see docs/reliability.md).
FLOORS = {
    "pillow": ("10.3.0", "CVE-2023-50447 (ImageMath.eval code execution), CVE-2024-28219 (buffer overflow)"),
    "torch": ("2.6.0", "CVE-2025-32434 (torch.load(weights_only=True) remote code execution)"),
    "python-multipart": ("0.0.18", "CVE-2024-24762 (ReDoS), CVE-2024-53981 (DoS by preamble bytes)"),
    "starlette": ("0.47.2", "CVE-2024-47874 (multipart DoS), CVE-2025-54121 (event loop blocked by uploads)"),
    "h11": ("0.16.0", "CVE-2025-43859 (request smuggling through chunked trailers)"),
    "jinja2": ("3.1.6", "CVE-2025-27516 (sandbox escape)"),
    "urllib3": ("2.5.0", "CVE-2025-50181, CVE-2025-50182 (redirect control)"),
    "requests": ("2.32.4", "CVE-2024-47081 (.netrc credential leak)"),
    "setuptools": ("78.1.1", "CVE-2025-47273 (path traversal in PackageIndex)"),
    "protobuf": ("5.29.5", "CVE-2025-4565 (recursion DoS)"),
    "onnx": ("1.16.0", "CVE-2024-27318, CVE-2024-27319 (path traversal, out-of-bounds read)"),
    "nltk": ("3.9", "CVE-2024-39705 (unpickling downloaded data)"),
}


def installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def test_dependencies_are_past_their_known_advisories() -> None:
    present = {p: installed(p) for p in FLOORS}
    assert present["pillow"] and present["torch"] and present["python-multipart"] and present["starlette"]
    old = [
        f"{p} {v} < {FLOORS[p][0]}: {FLOORS[p][1]}"
        for p, v in present.items()
        if v is not None and Version(v) < Version(FLOORS[p][0])
    ]  # an absent package cannot be vulnerable
    assert not old, "upgrade: " + "; ".join(old)
