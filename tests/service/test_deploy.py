"""Deployment files: docker-compose.yml, Dockerfile and .dockerignore agree with the code.

No Docker engine is needed (nor used): the compose file is parsed as YAML and checked
field by field, and every CAPTIONER_* variable they set must be a real setting.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from captioner.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTING_VARS = {f"CAPTIONER_{name.upper()}" for name in Settings.model_fields}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_service_with_healthcheck_on_readyz():
    svc = compose()["services"]["captioner"]
    assert svc["build"]["context"] == "."
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and "/readyz" in " ".join(test)
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    assert svc["environment"]["CAPTIONER_HOST"] == "0.0.0.0" and str(svc["environment"]["CAPTIONER_PORT"]) == "8000"
    assert "replicas" in svc["deploy"] and "cpus" in svc["deploy"]["resources"]["limits"]


def test_compose_threads_match_the_cpu_limit():
    svc = compose()["services"]["captioner"]
    env = svc["environment"]
    cpus = str(svc["deploy"]["resources"]["limits"]["cpus"])
    assert env["CAPTIONER_TORCH_THREADS"] == env["OMP_NUM_THREADS"] == cpus.strip('"') == "${CAPTIONER_CPUS:-2}"


def test_compose_gives_time_to_drain_before_sigkill():
    env = compose()["services"]["captioner"]["environment"]
    grace = compose()["services"]["captioner"]["stop_grace_period"]
    grace_match = re.fullmatch(r"(\d+)s", grace)
    timeout_match = re.search(r"(\d+)\}?$", str(env["CAPTIONER_REQUEST_TIMEOUT_S"]))
    assert grace_match and timeout_match, (grace, env["CAPTIONER_REQUEST_TIMEOUT_S"])
    seconds = int(grace_match.group(1))
    timeout = float(timeout_match.group(1))
    assert seconds > float(env["CAPTIONER_DRAIN_SECONDS"]) + timeout


def library_vars() -> set[str]:
    """CAPTIONER_* variables the captioner package itself reads (weights folder, fast path, cache)."""
    source = "\n".join(p.read_text() for p in (ROOT / "captioner").rglob("*.py"))
    return set(re.findall(r'"(CAPTIONER_[A-Z_]+)"', source))


def test_every_captioner_variable_is_a_real_setting():
    env = compose()["services"]["captioner"]["environment"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    used = {k for k in env if k.startswith("CAPTIONER_")} | set(re.findall(r"\b(CAPTIONER_[A-Z_]+)=", dockerfile))
    known = SETTING_VARS | library_vars()
    assert used and used <= known, sorted(used - known)


def test_dockerfile_serves_the_default_weights_with_a_readiness_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY weights ", text, re.M), "the image must contain the shipped weights"
    assert re.search(r"^RUN .*\bcaptioner info\b", text, re.M), "the build must check that the weights load"
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", text, re.M)
    assert re.search(r'^CMD \["captioner", "serve"\]', text, re.M)
    assert re.search(r"^USER (?!root)", text, re.M), "the service must not run as root"
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", "data", "runs"} <= ignored
    for line in re.findall(r"^COPY (.+)$", text, re.M):  # nothing the build copies may be ignored
        for copied in line.split()[:-1]:
            assert copied not in ignored and (ROOT / copied).exists(), copied


def test_plain_uvicorn_factory_serves_with_settings_from_the_environment(checkpoint, tmp_path):
    """``uvicorn --factory captioner.service.app:create_app``, as docs/service.md shows it: a real
    uvicorn process, settings only from CAPTIONER_* variables, the model loaded at startup."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx
    from servicekit import colour_image

    log = tmp_path / "uvicorn.log"
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    env.update(
        CAPTIONER_CHECKPOINT=str(checkpoint),
        CAPTIONER_TORCH_THREADS="1",
        CAPTIONER_MAX_BEAM_SIZE="2",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "captioner.service.app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline, url = time.monotonic() + 180, None
        while time.monotonic() < deadline and url is None:
            assert proc.poll() is None, log.read_text()
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = m.group(1) if m else None
            time.sleep(0.2)
        assert url, log.read_text()
        with httpx.Client(base_url=url, timeout=60) as c:
            while c.get("/readyz").status_code != 200:  # the model loads in the lifespan
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            r = c.post("/v1/captions", files={"file": ("red.png", colour_image("red", 90))})
            assert r.status_code == 200 and r.json()["results"][0]["caption"] == "a red picture", r.text
            assert c.get("/v1/model").json()["service"]["max_beam_size"] == 2  # from the environment
            assert c.post("/v1/captions", params={"beam_size": 3}, content=b"x").status_code == 422
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down cleanly, then exits 0 or re-raises the signal (newer versions do)
        assert proc.wait(60) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("key, words", [("   ", "only whitespace"), ("s3cret\u00e9", "outside printable ASCII")])
def test_plain_uvicorn_refuses_an_unusable_api_key_with_one_line(key, words):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    env["CAPTIONER_API_KEY"] = key
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "captioner.service.app:create_app", "--port", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "CAPTIONER_API_KEY" in lines[0] and words in lines[0], lines
    assert key.strip() not in lines[0] or not key.strip()
