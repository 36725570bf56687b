"""Deployment files: Dockerfile, docker-compose.yml, .dockerignore and deploy/kubernetes.yaml
agree with the code and with each other.

No container engine is needed (nor used): the files are parsed and checked field by field;
`make image-check` (scripts/image_check.py) builds and runs the image for real. Every
CAPTIONER_* variable they set must be a real setting.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from captioner.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTING_VARS = {f"CAPTIONER_{name.upper()}" for name in Settings.model_fields}
THREAD_VARS = {"OMP_NUM_THREADS"}  # read by the native libraries, not by the settings


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def service() -> dict:
    return compose()["services"]["captioner"]


def dockerfile() -> str:
    """The Dockerfile with its continuation lines joined."""
    return re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())


def stages() -> dict[str, str]:
    """Each ``FROM ... AS name`` stage's instructions, by name, in order."""
    parts = re.split(r"^FROM \S+ AS (\w+)\s*$", dockerfile(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def instruction(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name} (.+)$", text, re.M)


def default_of(value: object) -> str:
    """``${CAPTIONER_CPUS:-2}`` -> ``2``: the value compose uses when the variable is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def library_vars() -> set[str]:
    """CAPTIONER_* variables the captioner package itself reads (weights folder, precision, threads, cache)."""
    source = "\n".join(p.read_text() for p in (ROOT / "captioner").rglob("*.py"))
    return set(re.findall(r'"(CAPTIONER_[A-Z_]+)"', source))


def known_vars() -> set[str]:
    """Real settings, less the deprecated old names (kept working for a release, not for new files)."""
    deprecated = {
        f"CAPTIONER_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if (field.description or "").startswith("deprecated")
    }
    return (SETTING_VARS - deprecated) | library_vars() | THREAD_VARS


def k8s() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_every_path_the_dockerfile_copies_exists_and_reaches_the_build():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", "data", "runs"} <= ignored
    copied = [
        src
        for line in instruction(dockerfile(), "COPY")
        if "--from" not in line
        for src in [w for w in line.split() if not w.startswith("--")][:-1]
    ]
    assert {"pyproject.toml", "captioner", "service", "weights"} <= set(copied)
    for src in copied:
        assert src not in ignored and (ROOT / src).exists(), src


def test_dockerfile_builds_a_lean_non_root_service_that_refuses_missing_weights():
    parts = stages()
    assert list(parts)[-1] == "service", "the service must be the default (last) target"
    svc, build = parts["service"], parts["build"]
    assert re.search(r"--constraint \S+", build) and "torch<0" in build, "pip must refuse torch for the service"
    assert instruction(svc, "COPY") == ["--from=build /install /usr/local"], "the service gets only what pip installed"
    assert re.search(r"^RUN .*find_spec\('torch'\).*&& captioner info\s*$", svc, re.M), (
        "the weights must load torch-free"
    )
    users = instruction(svc, "USER")
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users  # numeric: runAsNonRoot can check it
    assert instruction(svc, "STOPSIGNAL") == ["SIGTERM"]
    assert instruction(svc, "CMD") == ['["captioner", "serve"]']
    env = dict(pair.split("=", 1) for line in instruction(svc, "ENV") for pair in line.split())
    assert env["CAPTIONER_HOST"] == "0.0.0.0" and env["HOME"].startswith("/tmp")
    assert {k for k in env if k.startswith("CAPTIONER_")} <= known_vars()
    assert instruction(svc, "EXPOSE") == [env["CAPTIONER_PORT"]]


def test_the_image_links_the_label_graph_both_shipped_models_share():
    """The Dockerfile links weights/pooled's labels.onnx to weights/default's when their bytes
    agree (cmp): a re-export that made them differ would quietly put 5 MB back in the image."""
    build = stages()["build"]
    graphs = re.search(r'graphs="\$site/(\S+)"', build)
    assert graphs and graphs.group(1) == "captioner/weights", "the installed weights' path changed"
    assert "ln -sf ../../default/graphs/labels.onnx" in build
    default, pooled = (ROOT / "weights" / name / "graphs" / "labels.onnx" for name in ("default", "pooled"))
    assert default.read_bytes() == pooled.read_bytes(), "the shipped label graphs differ: the image copies both"


def test_compose_names_the_dockerfiles_stage_port_and_healthcheck():
    svc, text = service(), dockerfile()
    assert svc["build"] == {"context": ".", "target": "service"} and svc["build"]["target"] in stages()
    assert default_of(svc["image"]) == "captioner:latest"
    port = instruction(text, "EXPOSE")[0]
    assert svc["ports"] and all(str(p).endswith(f":{port}") for p in svc["ports"])
    assert str(svc["environment"]["CAPTIONER_PORT"]) == port and svc["environment"]["CAPTIONER_HOST"] == "0.0.0.0"
    # the same probe as the image's HEALTHCHECK, as a string (CMD-SHELL): podman-compose 1.0
    # mangles the exec form and loses the list form's first item from the second replica on
    (health,) = instruction(text, "HEALTHCHECK")
    probe = health.split(" CMD ", 1)[1]
    assert svc["healthcheck"]["test"] == probe and "/readyz" in probe
    argv = shlex.split(probe)
    assert argv[:2] == ["python", "-c"] and "CAPTIONER_PORT" in argv[2]
    compile(argv[2], "healthcheck", "exec")  # the probe is valid Python
    flags = dict(re.findall(r"--([\w-]+)=(\S+)", health.split(" CMD ", 1)[0]))
    for key in ("interval", "timeout", "retries"):
        assert str(svc["healthcheck"][key]) == flags[key], key


def test_compose_runs_it_locked_down_with_threads_matching_the_cpu_limit():
    svc = service()
    assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"]
    assert "no-new-privileges:true" in svc["security_opt"] and svc["restart"] == "unless-stopped"
    limits = svc["deploy"]["resources"]["limits"]
    assert "replicas" in svc["deploy"] and {"cpus", "memory"} <= set(limits)
    threads = {k: v for k, v in svc["environment"].items() if k.endswith("_THREADS")}
    assert threads and set(threads.values()) == {str(limits["cpus"])}, (threads, limits)
    assert set(svc["environment"]) <= known_vars(), sorted(set(svc["environment"]) - known_vars())


def test_compose_variables_substitute_the_same_under_docker_compose_and_podman_compose():
    """``${NAME:-}`` (an empty default) is kept as literal text by podman-compose 1.0, which once
    made the literal string the API key; a variable passed through has no value instead."""
    text = yaml.safe_dump(compose())  # the values, not the comments
    assert not re.findall(r"\$\{\w+:-\}", text)
    assert re.findall(r"\$\{\w+:-[^}]+\}", text)  # the defaults that remain are not empty
    env = service()["environment"]
    assert env["CAPTIONER_API_KEY"] is None and env["CAPTIONER_CORS_ORIGINS"] is None


def test_compose_gives_time_to_drain_before_sigkill():
    env = service()["environment"]
    grace = seconds(service()["stop_grace_period"])
    timeout = float(default_of(env["CAPTIONER_REQUEST_TIMEOUT_S"]))
    assert grace > float(env["CAPTIONER_DRAIN_SECONDS"]) + timeout


def test_kubernetes_deployment_probes_resources_and_settings():
    docs = k8s()
    deploy = docs["Deployment"]
    assert deploy["apiVersion"] == "apps/v1" and deploy["spec"]["replicas"] >= 2
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert docs["Service"]["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    (box,) = pod["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in box["ports"]}["http"]
    assert str(port) == instruction(dockerfile(), "EXPOSE")[0]
    assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert box["startupProbe"]["httpGet"]["path"] == "/readyz"
    res = box["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    env = {e["name"]: e.get("value") for e in box["env"]}
    assert set(env) <= known_vars(), sorted(set(env) - known_vars())
    assert {v for k, v in env.items() if k.endswith("_THREADS")} == {res["limits"]["cpu"]}
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(env["CAPTIONER_DRAIN_SECONDS"]) + float(env["CAPTIONER_REQUEST_TIMEOUT_S"])
    # non-root, as the image's numeric USER; read-only root with /tmp writable
    user = instruction(stages()["service"], "USER")[-1]
    ctx = pod["spec"]["securityContext"]
    assert ctx["runAsNonRoot"] is True and f"{ctx['runAsUser']}:{ctx['runAsGroup']}" == user
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert box["securityContext"]["allowPrivilegeEscalation"] is False
    assert [m["mountPath"] for m in box["volumeMounts"]] == ["/tmp"]


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
        CAPTIONER_THREADS="1",
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
