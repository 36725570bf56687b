"""tests/conftest.py: under CI=true a skipped test fails; an xfail stays an xfail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SAMPLE = """
import pytest

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="needs a thing this machine lacks")
def test_skips():
    pass

def test_skips_inside():
    pytest.skip("no java here")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
"""


def run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_skips_fail_under_ci(tmp_path):
    proc = run_suite(tmp_path, "true")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # a skipif mark skips in setup (an error), pytest.skip() in the call (a failure): both fail the run
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in out, out
    assert "skipped under CI=true" in out and "needs a thing this machine lacks" in out and "no java here" in out


def test_skips_are_skips_outside_ci(tmp_path):
    for ci in (None, "false"):
        proc = run_suite(tmp_path, ci)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert "1 passed, 2 skipped, 1 xfailed" in out, out
