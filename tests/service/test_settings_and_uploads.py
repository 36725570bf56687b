"""Settings from the environment and flags; file-name cleaning; multipart parsing."""

from __future__ import annotations

import argparse

import pytest
from captioner.service.cli import register, settings_from_args
from captioner.service.errors import APIError
from captioner.service.settings import Settings
from captioner.service.uploads import clean_filename, parse_multipart

from captioner.errors import CaptionerError


def parse_serve(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="captioner")
    register(parser.add_subparsers(dest="verb"))
    return parser.parse_args(["serve", *argv])


def test_settings_read_the_captioner_environment(monkeypatch):
    monkeypatch.setenv("CAPTIONER_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("CAPTIONER_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("CAPTIONER_API_KEY", "s3cret")
    monkeypatch.setenv("CAPTIONER_WEIGHTS", "/elsewhere")  # the library's own variable is not a setting
    s = Settings()
    assert s.max_batch_size == 32
    assert s.cors_origins == ["http://a.example", "http://b.example"]
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # secrets stay out of logs
    assert (s.max_files, s.max_wait_ms, s.checkpoint) == (16, 5.0, None)


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("CAPTIONER_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("CAPTIONER_PORT", "9000")
    s = settings_from_args(parse_serve(["--max-batch-size", "4", "--cors-origin", "http://x.example"]))
    assert s.max_batch_size == 4  # flag wins
    assert s.port == 9000  # env kept where no flag was given
    assert s.cors_origins == ["http://x.example"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--queue-size", "4", "--max-files", "8"], "queue_size"),
        (["--max-batch-size", "0"], "max_batch_size"),
        (["--port", "70000"], "port"),
    ],
)
def test_invalid_settings_are_a_clear_user_error(argv, needle):
    with pytest.raises(CaptionerError, match=needle):
        settings_from_args(parse_serve(argv))


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("photo.jpg", "photo.jpg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\cat.png", "cat.png"),
        ("evil\u202egnp.exe", "evilgnp.exe"),  # bidi override removed
        ("new\nline\x00.png", "newline.png"),
        ("café.jpg".encode(), "café.jpg"),
        ("/", None),
        (None, None),
    ],
)
def test_clean_filename(raw, clean):
    assert clean_filename(raw) == clean


def test_clean_filename_caps_the_length_and_keeps_the_extension():
    name = clean_filename("a" * 1000 + ".jpeg")
    assert len(name) <= 200 and name.endswith(".jpeg")


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[bytes, str]:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_parse_multipart_splits_files_and_options():
    body, ctype = multipart([("file", "a.png", b"AAA"), ("beam_size", None, b"3"), ("file", "b/c.jpg", b"B\r\nB")])
    uploads, options = parse_multipart(body, ctype, max_files=4)
    assert [(u.filename, u.data) for u in uploads] == [("a.png", b"AAA"), ("c.jpg", b"B\r\nB")]
    assert options == {"beam_size": "3"}


@pytest.mark.parametrize(
    "parts, ctype, status, code",
    [
        ([("file", "a", b"1")] * 3, None, 413, "too_many_files"),
        ([("colour", None, b"red")], None, 422, "unknown_field"),
        ([("file", "a", b"1")], "multipart/form-data", 400, "invalid_multipart"),
    ],
)
def test_parse_multipart_errors(parts, ctype, status, code):
    body, default_ctype = multipart(parts)
    with pytest.raises(APIError) as err:
        parse_multipart(body, ctype or default_ctype, max_files=2)
    assert (err.value.status, err.value.code) == (status, code)


def test_parse_multipart_rejects_garbage():
    with pytest.raises(APIError) as err:
        parse_multipart(b"--XyZ\r\nno headers end", "multipart/form-data; boundary=XyZ", max_files=2)
        raise AssertionError("garbage was accepted")
    assert err.value.status == 400


def test_serve_reports_a_missing_checkpoint_as_a_user_error(tmp_path):
    from captioner.service.cli import cmd_serve

    with pytest.raises(CaptionerError, match="not found"):
        cmd_serve(parse_serve(["--checkpoint", str(tmp_path / "missing"), "--port", "0"]))


def test_port_in_use_is_a_user_error():
    from captioner.service.server import bind_socket

    taken = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(CaptionerError, match="cannot listen"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
