"""Schema-driven fuzzing of the HTTP API with schemathesis, every check, bounded in time.

schemathesis reads the service's own OpenAPI document, unchanged, and sends schema-valid
and schema-violating requests to every operation (coverage phase: boundary values of every
parameter; fuzzing phase: random ones, including multipart bodies of random bytes, raw
``image/*`` bodies and JSON bodies), with ``--checks all``: no 5xx, status codes, content
types, headers and bodies as documented, schema-violating requests refused, schema-valid
ones accepted, 401 without the key, ``Allow`` on 405, and the server keeps serving.

What counts as documented is written in ``CHECKS_CONFIG`` (schemathesis' own config
format), each with its reason:

* a schema-valid request may still be refused 413/415/422: the schema says "binary", and
  random bytes are rarely an image the decoder accepts (``unsupported_image``,
  ``unreadable_image``, ``image_too_large``, ``too_many_files`` across the file-part
  aliases, ``explain_unavailable`` for a model without attention: docs/service.md);
* a schema-violating request may be refused 413 as well as 400/422 (``too_many_files``
  when a part list passes ``maxItems``);
* 504 ``timeout`` is a documented answer for a request that allows itself 0.5 s (the
  floor) and takes longer on a loaded machine; 500 and every other 5xx still fail.

Seed: ``RELIABILITY_FUZZ_SEED`` (default 1, so the suite is repeatable); examples per
operation: ``RELIABILITY_FUZZ_EXAMPLES`` (default 25; about 15 s).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from relkit import AUTH, Server


def schemathesis_bin() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert found, "schemathesis is not installed: pip install schemathesis (in the test extra)"
    return found


CHECKS_CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "504"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "413", "415", "422", "504"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "405", "413", "415", "422"]
"""


def test_schemathesis_with_every_check_finds_only_documented_behaviour(rel_server: Server, tmp_path) -> None:
    seed = os.environ.get("RELIABILITY_FUZZ_SEED", "1")
    examples = os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "25")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CHECKS_CONFIG)
    rss_before = rel_server.rss_kb()
    cmd = [
        schemathesis_bin(),
        "--config-file",
        str(config),
        "run",
        rel_server.url + "/openapi.json",
        "--url",
        rel_server.url,
        "-H",
        f"Authorization: {AUTH['Authorization']}",
        "--checks",
        "all",
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
    assert done.returncode == 0, f"schemathesis (seed {seed}) found undocumented behaviour:\n{output[-6000:]}"
    m = re.search(r"(\d+) generated, (\d+) passed", output)
    assert m and int(m.group(1)) >= 50 and m.group(1) == m.group(2), output[-2000:]
    assert rel_server.alive()
    with rel_server.client() as client:
        assert client.get("/readyz").status_code == 200
    print(
        f"\nschemathesis, all checks: {m.group(1)} requests, nothing undocumented (seed {seed}); server RSS "
        f"{rss_before / 1024:.0f} -> {rel_server.rss_kb() / 1024:.0f} MiB"
    )
