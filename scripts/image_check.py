#!/usr/bin/env python3
"""``make image-check``: build the image from the Dockerfile and run it the way
docker-compose.yml does, with podman, as a user's first ``docker compose up`` would.

One line per check (``ok``, ``FAIL``, or ``note`` for a figure over its target); exit status 1
when a check failed. Runs on the host's python3: the standard library and PyYAML (which
podman-compose brings). scripts/image-check.sh installs podman and the base image first.

    python3 scripts/image_check.py [--image captioner:latest] [--skip-build] [--only NAME ...]
                                   [--context DIR]   (default: this checkout)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
SIZE_TARGET_MB = 500
HEALTHY_TARGET_S = 3.0
PREFIX = "captioner-check"
PODMAN_PATHS = {"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run", "/run/.containerenv", "/tmp"}
LOG_DIR = Path(os.environ.get("IMAGE_CHECK_LOGS", "/tmp/image-check"))


class Report:
    """The lines printed so far and whether any check failed."""

    def __init__(self) -> None:
        self.failed = 0

    def line(self, ok: bool, name: str, detail: str, *, soft: bool = False) -> bool:
        """Print one check; ``soft`` marks a figure whose miss is noted, not failed."""
        mark = "ok  " if ok else ("note" if soft else "FAIL")
        self.failed += 0 if ok or soft else 1
        print(f"{mark} {name}: {detail}", flush=True)
        return ok


def sh(*cmd: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; never raises on a non-zero status."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, check=False)


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return sh("podman", *args, timeout=timeout)


# --- the compose file, read as compose reads it -------------------------------------------------

_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``${NAME:-default}`` and ``${NAME}`` in every string, as compose substitutes them."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def compose_service(env: dict[str, str] | None = None) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return dict(interpolate(data["services"]["captioner"], {**os.environ, **(env or {})}))


def seconds(duration: str) -> float:
    """A compose duration (``45s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    return sum(float(n) * units[u] for n, u in parts)


def run_args(svc: dict[str, Any], *, restart: bool = True) -> list[str]:
    """The ``podman run`` flags that the compose service stands for (ports aside)."""
    limits = svc["deploy"]["resources"]["limits"]
    health = svc["healthcheck"]
    probe = health["test"] if isinstance(health["test"], str) else health["test"][1]  # CMD-SHELL
    args = ["--cpus", str(limits["cpus"]), "--memory", str(limits["memory"]).lower()]
    args += ["--read-only"] if svc.get("read_only") else []
    for path in svc.get("tmpfs", []):
        args += ["--tmpfs", path]
    for opt in svc.get("security_opt", []):
        args += ["--security-opt", opt]
    if restart and svc.get("restart"):
        args += ["--restart", svc["restart"]]
    args += ["--stop-timeout", str(int(seconds(svc["stop_grace_period"])))]
    args += ["--health-cmd", probe, "--health-interval", health["interval"]]
    args += ["--health-timeout", health["timeout"], "--health-retries", str(health["retries"])]
    args += ["--health-start-period", health["start_period"]]
    for key, value in svc["environment"].items():
        args += ["-e", key if value is None else f"{key}={value}"]  # no value: from this environment
    return args


# --- HTTP ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes | None = None, ctype: str = "") -> tuple[int, Any]:
    """One request; (status, parsed JSON or text). Status 0 when the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    except OSError as e:
        return 0, repr(e)
    finally:
        conn.close()


def caption(port: int) -> tuple[int, str]:
    body, ctype = multipart(PHOTO)
    status, data = request(port, "POST", "/v1/captions", body, ctype)
    text = data["results"][0].get("caption", "") if status == 200 and isinstance(data, dict) else str(data)[:200]
    return status, text


class SlowUpload:
    """A caption request held in flight: headers and half the body now, the rest on ``finish``."""

    def __init__(self, port: int) -> None:
        self.body, ctype = multipart(PHOTO)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.putrequest("POST", "/v1/captions")
        self.conn.putheader("Content-Type", ctype)
        self.conn.putheader("Content-Length", str(len(self.body)))
        self.conn.endheaders()
        self.conn.send(self.body[: len(self.body) // 2])

    def finish(self) -> tuple[int, str]:
        """(status, caption); (0, the error) when the server went away without answering."""
        try:
            self.conn.send(self.body[len(self.body) // 2 :])
            resp = self.conn.getresponse()
            data = json.loads(resp.read())
            return resp.status, data["results"][0].get("caption", "") if resp.status == 200 else str(data)
        except (OSError, http.client.HTTPException, ValueError) as e:
            return 0, type(e).__name__
        finally:
            self.conn.close()


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def wait_healthy(
    name: str, port: int, since: float | None = None, timeout: float = 60
) -> tuple[float | None, float | None]:
    """Seconds from ``since`` (default now) until /readyz answers 200 from the host, then until the
    HEALTHCHECK passes (``podman healthcheck run``: podman schedules it only under systemd);
    None on timeout."""
    t0 = time.monotonic() if since is None else since
    ready = wait_until(lambda: request(port, "GET", "/readyz")[0] == 200, timeout)
    t_ready = time.monotonic() - t0 if ready else None
    healthy = ready and wait_until(lambda: podman("healthcheck", "run", name).returncode == 0, timeout, 0.1)
    return t_ready, (time.monotonic() - t0 if healthy else None)


# --- the container ------------------------------------------------------------------------------


@contextmanager
def container(image: str, name: str, svc: dict[str, Any]) -> Iterator[tuple[int, float]]:
    """The image run as the compose service (on a free loopback port); yields (port, the
    monotonic time ``podman run`` was called). Removed on the way out, its log kept."""
    port = free_port()
    podman("rm", "-f", name)
    t0 = time.monotonic()
    started = podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", *run_args(svc), image)
    if started.returncode != 0:
        raise RuntimeError(f"podman run failed: {started.stderr.strip()}")
    try:
        yield port, t0
    finally:
        (LOG_DIR / f"{name}.log").write_text(podman("logs", name).stdout + podman("logs", name).stderr)
        podman("rm", "-f", "-t", "0", name)


def state(name: str, field: str) -> str:
    return podman("inspect", "--format", "{{" + field + "}}", name).stdout.strip()


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


# --- the checks ---------------------------------------------------------------------------------


def build(report: Report, image: str, context: Path, log: Path) -> subprocess.CompletedProcess[str]:
    """``podman build`` of the Dockerfile as it is: docker format (keeps HEALTHCHECK), pip over
    the host network with the host's CA bundle."""
    cmd = ["podman", "build", "--format", "docker", "--network", "host", "--target", "service"]
    cmd += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-t", image, "-f", str(context / "Dockerfile"), str(context)]
    done = sh(*cmd, timeout=1800)
    log.write_text(done.stdout + done.stderr)
    return done


def check_build(report: Report, image: str, context: Path) -> bool:
    t0 = time.monotonic()
    done = build(report, image, context, LOG_DIR / "build.log")
    took = time.monotonic() - t0
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-4:])
        return report.line(False, "build", f"podman build failed after {took:.0f} s: {tail}")
    return report.line(True, "build", f"{image} from the Dockerfile in {took:.0f} s (log {LOG_DIR / 'build.log'})")


def check_image(report: Report, image: str) -> None:
    size_mb = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip() or 0) / 1e6
    report.line(size_mb <= SIZE_TARGET_MB, "image size", f"{size_mb:.0f} MB (target <= {SIZE_TARGET_MB} MB)")
    probe = "import importlib.util as u; print('torch' if u.find_spec('torch') else 'no torch')"
    out = podman("run", "--rm", "--network", "none", image, "python", "-c", probe).stdout.strip()
    report.line(out == "no torch", "lean runtime", f"{out} in the image")
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    uid = user.split(":")[0]
    report.line(uid.isdigit() and uid != "0", "user", f"runs as {user or 'root'} (numeric, not root)")
    health = podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image).stdout
    stop = podman("image", "inspect", "--format", "{{.Config.StopSignal}}", image).stdout.strip()
    report.line("/readyz" in health and stop == "SIGTERM", "image config", f"HEALTHCHECK on /readyz, STOPSIGNAL {stop}")
    # weights/pooled reads the label graph it shares with the default through a link (Dockerfile)
    pooled = "import captioner.weights as w, pathlib; print(pathlib.Path(w.__file__).parent / 'pooled')"
    where = podman("run", "--rm", "--network", "none", image, "python", "-c", pooled).stdout.strip()
    mount = f"{PHOTO}:/tmp/{PHOTO.name}:ro"
    done = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        mount,
        image,
        "captioner",
        "caption",
        "--checkpoint",
        where,
        f"/tmp/{PHOTO.name}",
    )
    said = first_line(done.stdout or done.stderr).strip()
    report.line(done.returncode == 0 and bool(said), "weights/pooled", f"exit {done.returncode}: {said}")


def check_serving(report: Report, image: str, svc: dict[str, Any]) -> None:
    """Run to healthy, a caption, /v1/model, read-only root, then SIGTERM with a request in flight."""
    name = f"{PREFIX}-serve"
    grace = seconds(svc["stop_grace_period"])
    with container(image, name, svc) as (port, t0):
        t_ready, t_healthy = wait_healthy(name, port, since=t0)
        if t_healthy is None:
            report.line(False, "healthy", f"not healthy within 60 s: {first_line(podman('logs', name).stderr)}")
            return
        fast = t_healthy <= HEALTHY_TARGET_S
        detail = f"/readyz 200 {t_ready:.1f} s after podman run, HEALTHCHECK passes at {t_healthy:.1f} s"
        detail += f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
        report.line(fast, "healthy", f"{detail} (target <= {HEALTHY_TARGET_S:g} s)", soft=True)
        status, text = caption(port)
        report.line(status == 200 and bool(text), "caption", f"{status} {PHOTO.name}: {text!r}")
        status, model = request(port, "GET", "/v1/model")
        ok = status == 200 and isinstance(model, dict) and bool(model.get("model_id"))
        shown = {k: model.get(k) for k in ("model_id", "precision")} if isinstance(model, dict) else model
        report.line(ok, "/v1/model", f"{status} {shown}")
        usage = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()
        report.line(bool(usage), "memory", f"{usage} (podman stats after one caption; the compose limit)")
        # podman's own mount points (/etc/hosts, /run/.containerenv, ...) aside, nothing changed
        diff = json.loads(podman("diff", "--format", "json", name).stdout or "{}")
        changed = [p for paths in diff.values() for p in paths if p not in PODMAN_PATHS]
        report.line(not changed, "read-only root", f"written outside /tmp: {changed or 'nothing'}")
        check_drain(report, name, port, grace)


def check_drain(report: Report, name: str, port: int, grace: float) -> None:
    """``podman stop`` (STOPSIGNAL, then SIGKILL after the grace period) with a request in flight."""
    upload = SlowUpload(port)
    t0 = time.monotonic()
    stopper = subprocess.Popen(
        ["podman", "stop", "-t", str(int(grace)), name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    draining = wait_until(lambda: request(port, "GET", "/readyz")[0] == 503, 10)
    t_503 = time.monotonic() - t0
    report.line(draining, "drain /readyz", f"503 {t_503:.1f} s after SIGTERM" if draining else "never 503")
    status, text = upload.finish()
    report.line(
        status == 200 and bool(text), "drain in-flight", f"request sent before SIGTERM answered {status} {text!r}"
    )
    try:
        stopper.wait(grace + 15)
    except subprocess.TimeoutExpired:
        stopper.kill()
    took = time.monotonic() - t0
    code = state(name, ".State.ExitCode")
    detail = f"exit status {code} {took:.1f} s after SIGTERM (grace {grace:g} s)"
    report.line(code == "0" and took < grace, "drain exit", detail)


def check_starts(report: Report, image: str, svc: dict[str, Any], count: int) -> None:
    """Run to healthy ``count`` more times: the spread, since one start on a busy machine says little."""
    ready, healthy = [], []
    for i in range(count):
        with container(image, f"{PREFIX}-start{i}", svc) as (port, t0):
            t_ready, t_healthy = wait_healthy(f"{PREFIX}-start{i}", port, since=t0)
        if t_ready is None or t_healthy is None:
            report.line(False, "starts", f"start {i + 1} not healthy within 60 s")
            return
        ready.append(t_ready)
        healthy.append(t_healthy)
    ready.sort()
    healthy.sort()
    mid = count // 2
    detail = (
        f"{count} runs: /readyz 200 after {ready[0]:.1f}/{ready[mid]:.1f}/{ready[-1]:.1f} s, HEALTHCHECK passes "
        f"after {healthy[0]:.1f}/{healthy[mid]:.1f}/{healthy[-1]:.1f} s (min/median/max; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; target <= {HEALTHY_TARGET_S:g} s)"
    )
    report.line(healthy[mid] <= HEALTHY_TARGET_S, "starts", detail, soft=True)


def check_bad_settings(report: Report, image: str, svc: dict[str, Any]) -> None:
    """A broken CAPTIONER_* setting: one line naming it, exit status 2, nothing served. The
    container's own output is read from its log (podman adds its own lines on a terminal)."""
    for var, value in (("CAPTIONER_MAX_BATCH_SIZE", "0"), ("CAPTIONER_DECODE_IN", "fork")):
        name = f"{PREFIX}-setting"
        podman("rm", "-f", name)
        args = run_args(svc, restart=False)
        podman("run", "-d", "--name", name, "--network", "none", *args, "-e", f"{var}={value}", image)
        code = podman("wait", name, timeout=120).stdout.strip()
        logs = podman("logs", name)
        podman("rm", "-f", name)
        lines = (logs.stdout + logs.stderr).strip().splitlines()
        ok = code == "2" and len(lines) == 1 and var in lines[0]
        report.line(ok, "bad setting", f"{var}={value}: exit {code}, {len(lines)} line: {' | '.join(lines)}")


def check_kill(report: Report, image: str, svc: dict[str, Any]) -> None:
    """SIGKILL to the server mid-request (a crash, an OOM kill): the client gets no answer, so
    nothing it was told succeeded is lost; ``restart: unless-stopped`` brings it back healthy."""
    name = f"{PREFIX}-kill"
    with container(image, name, svc) as (port, _):
        if wait_healthy(name, port)[1] is None:
            report.line(False, "kill", "not healthy before the kill")
            return
        upload = SlowUpload(port)
        t0 = time.monotonic()
        os.kill(int(state(name, ".State.Pid")), signal.SIGKILL)
        status, text = upload.finish()
        report.line(status == 0, "kill in-flight", f"request in flight got no answer ({text}), nothing acknowledged")
        restarted = wait_until(lambda: state(name, ".RestartCount") not in ("", "0"), 30, 0.1)
        t_healthy = wait_healthy(name, port)[1] if restarted else None
        took = time.monotonic() - t0
        status, text = caption(port)
        ok = restarted and t_healthy is not None and status == 200
        restarts = state(name, ".RestartCount")
        detail = f"restarted ({restarts}x), healthy {took:.1f} s after SIGKILL, captions again: {status} {text!r}"
        report.line(ok, "kill restart", detail)


def check_replicas(report: Report, image: str) -> None:
    """Two replicas from docker-compose.yml with podman-compose, each on its own free port."""
    project = f"{PREFIX}-compose"
    env = {"CAPTIONER_REPLICAS": "2", "CAPTIONER_PORTS": "127.0.0.1:", "CAPTIONER_CPUS": "1", "CAPTIONER_IMAGE": image}
    compose = ["podman-compose", "-f", str(ROOT / "docker-compose.yml"), "-p", project]
    sh(*compose, "down", timeout=120, env=env)
    up = sh(*compose, "up", "-d", "--no-build", timeout=300, env=env)
    (LOG_DIR / "compose-up.log").write_text(up.stdout + up.stderr)
    try:
        label = f"label=io.podman.compose.project={project}"
        names = podman("ps", "--filter", label, "--format", "{{.Names}}").stdout.split()
        report.line(up.returncode == 0 and len(names) == 2, "compose up", f"{len(names)} replicas: {' '.join(names)}")
        ports = set()
        for name in sorted(names):
            where = podman("port", name, "8000").stdout.strip()
            port = int(where.rsplit(":", 1)[1]) if ":" in where else 0
            ports.add(port)
            healthy = port > 0 and wait_healthy(name, port)[1] is not None
            status, text = caption(port) if healthy else (0, "not healthy")
            report.line(healthy and status == 200, "replica", f"{name} on {where or '?'}: healthy, {status} {text!r}")
        report.line(len(ports) == len(names) == 2, "replica ports", f"{len(ports)} distinct host ports")
    finally:
        for name in podman(
            "ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"
        ).stdout.split():
            (LOG_DIR / f"{name}.log").write_text(podman("logs", name).stderr)
        sh(*compose, "down", timeout=120, env=env)


def context_files(context: Path) -> list[str]:
    """The build context's files: git's view of a checkout (tracked and not ignored), else all."""
    if (context / ".git").exists():
        listed = sh("git", "-C", str(context), "ls-files", "--cached", "--others", "--exclude-standard").stdout
        return [rel for rel in listed.split() if (context / rel).is_file()]
    return [str(p.relative_to(context)) for p in context.rglob("*") if p.is_file()]


def check_no_graphs(report: Report, context: Path) -> None:
    """The build context with the default weights' exported graphs taken out must not build."""
    with tempfile.TemporaryDirectory(prefix="image-check-ctx-") as tmp:
        ctx = Path(tmp)
        files = context_files(context)
        removed = [f for f in files if f.startswith("weights/default/") and f.endswith(".onnx")]
        for rel in set(files) - set(removed):
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context / rel, ctx / rel)
        done = build(report, f"{PREFIX}-nographs:latest", ctx, LOG_DIR / "build-no-graphs.log")
        podman("rmi", "-f", f"{PREFIX}-nographs:latest")
        out = (done.stdout + done.stderr).splitlines()
        said = next(
            (line for line in reversed(out) if "captioner" in line and ("graph" in line or "export" in line)), ""
        )
        ok = bool(removed) and done.returncode != 0 and bool(said)
        report.line(ok, "build without graphs", f"{len(removed)} .onnx left out: build exit {done.returncode}: {said}")


CHECKS = ("build", "image", "serve", "starts", "settings", "kill", "replicas", "nographs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default="captioner:latest")
    p.add_argument("--skip-build", action="store_true", help="use the image as it is")
    p.add_argument("--only", nargs="+", choices=CHECKS, help="run only these checks")
    p.add_argument("--starts", type=int, default=5, help="more runs to healthy, for the spread (0: none)")
    p.add_argument("--context", type=Path, default=ROOT, help="the build context (default: this checkout)")
    args = p.parse_args(argv)
    wanted = (
        set(args.only or CHECKS) - ({"build"} if args.skip_build else set()) - (set() if args.starts else {"starts"})
    )
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    report, svc = Report(), compose_service()
    t0 = time.monotonic()
    if "build" in wanted and not check_build(report, args.image, args.context):
        return 1
    steps: dict[str, Callable[[], None]] = {
        "image": lambda: check_image(report, args.image),
        "serve": lambda: check_serving(report, args.image, svc),
        "starts": lambda: check_starts(report, args.image, svc, args.starts),
        "settings": lambda: check_bad_settings(report, args.image, svc),
        "kill": lambda: check_kill(report, args.image, svc),
        "replicas": lambda: check_replicas(report, args.image),
        "nographs": lambda: check_no_graphs(report, args.context),
    }
    for key, step in steps.items():
        if key in wanted:
            try:
                step()
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                report.line(False, key, f"{type(e).__name__}: {e}")
    verdict = "FAIL" if report.failed else "ok  "
    print(f"{verdict} image-check: {report.failed} failed, {time.monotonic() - t0:.0f} s (logs {LOG_DIR})")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
