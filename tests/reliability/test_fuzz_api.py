"""Schema-driven fuzzing of the HTTP API with schemathesis, bounded in time.

schemathesis reads the service's own OpenAPI document and sends schema-valid and
schema-violating requests to every operation (coverage phase: boundary values of every
parameter; fuzzing phase: random ones, including multipart bodies of random bytes and
raw ``image/*`` bodies). The check is the issue's: no 5xx, ever, and the server keeps
serving. One deliberate change to the schema it is given: the ``timeout`` option
(seconds the client allows; a query parameter, a form field and a JSON member) is held to 5..30 s,
because a client that allows 5e-324 s is answered 504 ``timeout`` by design, which is a
5xx this check would flag.

Seed: ``RELIABILITY_FUZZ_SEED`` (default 1, so the suite is repeatable); examples per
operation: ``RELIABILITY_FUZZ_EXAMPLES`` (default 40; about 10 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from relkit import AUTH, Server


def schemathesis_bin() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert found, "schemathesis is not installed: pip install schemathesis (in the test extra)"
    return found


def fuzz_schema(server: Server, out: Path) -> Path:
    """The service's OpenAPI document with the client timeout held to 5..30 s."""
    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    post = schema["paths"]["/v1/captions"]["post"]
    timeout = next(p for p in post["parameters"] if p["name"] == "timeout")
    timeout["schema"] = {"type": "number", "minimum": 5, "maximum": 30}
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    form["timeout"] = {"type": "number", "minimum": 5, "maximum": 30}  # the same option as a form field
    body = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    body["timeout"] = {"type": "number", "minimum": 5, "maximum": 30}  # and as a JSON member
    out.write_text(json.dumps(schema))
    return out


def test_schemathesis_finds_no_server_error(rel_server: Server, tmp_path) -> None:
    seed = os.environ.get("RELIABILITY_FUZZ_SEED", "1")
    examples = os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "40")
    schema = fuzz_schema(rel_server, tmp_path / "openapi.json")
    rss_before = rel_server.rss_kb()
    cmd = [
        schemathesis_bin(),
        "run",
        str(schema),
        "--url",
        rel_server.url,
        "-H",
        f"Authorization: {AUTH['Authorization']}",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing",
        "-n",
        examples,
        "--seed",
        seed,
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis (seed {seed}) found a server error:\n{output[-6000:]}"
    m = re.search(r"(\d+) generated, (\d+) passed", output)
    assert m and int(m.group(1)) >= 50 and m.group(1) == m.group(2), output[-2000:]
    assert rel_server.alive()
    with rel_server.client() as client:
        assert client.get("/readyz").status_code == 200
    print(
        f"\nschemathesis: {m.group(1)} requests, no 5xx (seed {seed}); server RSS "
        f"{rss_before / 1024:.0f} -> {rel_server.rss_kb() / 1024:.0f} MiB"
    )
