"""Settings from the environment and flags; file-name cleaning; multipart parsing."""

from __future__ import annotations

import argparse

import pytest

from captioner.errors import CaptionerError
from captioner.service.cli import DEPRECATED_SETTINGS, register, settings_from_args
from captioner.service.errors import APIError
from captioner.service.settings import Settings
from captioner.service.uploads import clean_filename, parse_multipart


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


# ---------------------------------------------------------------------------- flags from Settings
def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner")
    sub = parser.add_subparsers(dest="verb")
    register(sub)
    return sub.choices["serve"]


def test_every_setting_is_a_flag_with_its_default_and_description():
    shown = [a for a in serve_parser()._actions if a.dest != "help" and a.help != argparse.SUPPRESS]
    actions = {a.dest: a for a in shown}  # old spellings are hidden (captioner.cli_names)
    assert set(actions) == set(Settings.model_fields) - set(DEPRECATED_SETTINGS)
    for name, field in Settings.model_fields.items():
        if name in DEPRECATED_SETTINGS:
            continue
        text = (actions[name].help or "") % {}
        assert field.description and field.description in text, (name, text)
        assert f"env CAPTIONER_{name.upper()}" in text, (name, text)
        if field.default not in (None, [], ()) and field.default_factory is None:
            default = field.default
            shown = (
                f"{default:,}"
                if isinstance(default, int) and default >= 10_000
                else f"{default:g}"
                if isinstance(default, float)
                else str(default)
            )
            assert f"default {shown}" in text, (name, text)
    assert "default 40,000,000" in (actions["max_pixels"].help or "")  # numbers people can read
    assert actions["checkpoint"].option_strings == ["--checkpoint", "-c"]
    assert actions["request_timeout_s"].option_strings == ["--request-timeout"]


def test_every_flag_sets_its_setting():
    values = {
        "host": "0.0.0.0", "port": "9001", "checkpoint": "ck", "device": "cpu", "torch_threads": "3",
        "max_batch_size": "7", "max_wait_ms": "2.5", "lanes": "2", "queue_size": "40", "decode_workers": "3",
        "decode_in": "threads", "max_files": "9", "max_body_bytes": "4096", "max_pixels": "1000", "request_timeout_s": "12",
        "body_timeout_s": "11", "max_buffered_bytes": "8192", "max_header_bytes": "2048", "header_timeout_s": "4",
        "max_connections": "50", "max_beam_size": "4", "max_length_limit": "20", "default_beam_size": "3",
        "api_key": "k3y!", "cors_origins": "http://a.example", "drain_seconds": "1.5", "log_level": "debug",
        "precision": "INT8", "threads": "2", "max_request_pixels": "2000", "max_client_pixels": "3000",
        "max_client_buffered_bytes": "4096", "min_upload_bytes_per_s": "0", "write_timeout_s": "7",
    }  # fmt: skip
    assert set(values) == set(Settings.model_fields)
    parser = serve_parser()
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.dest in values}
    argv = [part for name, value in values.items() for part in (flags[name], value)]
    s = settings_from_args(parse_serve(argv))
    assert (s.host, s.port, str(s.checkpoint), s.device, s.torch_threads) == ("0.0.0.0", 9001, "ck", "cpu", 3)
    assert (s.max_batch_size, s.max_wait_ms, s.lanes, s.queue_size, s.decode_workers) == (7, 2.5, 2, 40, 3)
    assert s.decode_in == "threads"
    assert (s.max_files, s.max_body_bytes, s.max_pixels, s.request_timeout_s, s.body_timeout_s) == (
        9,
        4096,
        1000,
        12,
        11,
    )
    assert (s.max_buffered_bytes, s.max_header_bytes, s.header_timeout_s, s.max_connections) == (8192, 2048, 4, 50)
    assert (s.max_beam_size, s.max_length_limit, s.default_beam_size) == (4, 20, 3)
    assert s.api_key is not None and s.api_key.get_secret_value() == "k3y!"
    assert (s.cors_origins, s.drain_seconds, s.log_level) == (["http://a.example"], 1.5, "debug")
    assert s.precision == "int8"  # case folded
    assert (s.max_request_pixels, s.max_client_pixels, s.max_client_buffered_bytes) == (2000, 3000, 4096)
    assert (s.min_upload_bytes_per_s, s.write_timeout_s) == (0, 7)
    assert s.threads == 2


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["--max-beam-size", "0"],
            "max_beam_size (--max-beam-size, CAPTIONER_MAX_BEAM_SIZE) must be from 1 to 20, got 0",
        ),
        (["--max-beam-size", "21"], "must be from 1 to 20, got 21"),
        (
            ["--max-length-limit", "0"],
            "max_length_limit (--max-length-limit, CAPTIONER_MAX_LENGTH_LIMIT) must be from 1 to 100",
        ),
        (["--default-beam-size", "6"], "default_beam_size (6) exceeds max_beam_size (5)"),
        (
            ["--request-timeout", "0"],
            "request_timeout_s (--request-timeout, CAPTIONER_REQUEST_TIMEOUT_S) must be greater than 0",
        ),
        (["--port", "-1"], "must be from 0 to 65535, got -1"),
    ],
)
def test_out_of_range_settings_exit_2_with_one_line(argv, words, capsys):
    from captioner.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


# ---------------------------------------------------------------------------- API keys that cannot work
@pytest.mark.parametrize(
    "key, words",
    [
        ("   ", "only whitespace"),
        ("\t", "only whitespace"),
        ("s3cret ", "starts or ends with whitespace"),
        (" s3cret", "starts or ends with whitespace"),
        ("cl\u00e9-secr\u00e8te", "outside printable ASCII"),
        ("line\nbreak", "outside printable ASCII"),
    ],
)
def test_an_api_key_no_client_could_send_is_refused(key, words, monkeypatch, capsys):
    from pydantic import ValidationError

    from captioner.cli import main

    with pytest.raises(ValidationError, match=words) as err:
        Settings(api_key=key)
    assert key.strip() == "" or key.strip() not in str(err.value)  # the key is never echoed
    monkeypatch.setenv("CAPTIONER_API_KEY", key)
    assert main(["serve", "--port", "0"]) == 2  # refused before anything is loaded
    out = capsys.readouterr().err.strip()
    assert len(out.splitlines()) == 1 and words in out and "CAPTIONER_API_KEY" in out, out
    assert key.strip() == "" or key.strip() not in out


def test_an_empty_key_means_no_key_and_a_good_key_is_kept(monkeypatch):
    monkeypatch.setenv("CAPTIONER_API_KEY", "")
    assert Settings().api_key is None
    monkeypatch.setenv("CAPTIONER_API_KEY", "A-b_c.d~e+f/g=h i")
    key = Settings().api_key
    assert key is not None and key.get_secret_value() == "A-b_c.d~e+f/g=h i"


def test_captioner_serve_with_a_blank_key_exits_2_with_one_line():
    """The real command, as a user runs it: exit status 2 and one line, no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CAPTIONER_API_KEY": "   "}
    done = subprocess.run(
        [sys.executable, "-m", "captioner", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "only whitespace" in lines[0] and "Traceback" not in done.stderr, done.stderr
