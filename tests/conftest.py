"""Suite-wide rules.

Under ``CI=true`` a skipped test is a failure: a test that silently skips (no Java, no
Chromium, ...) is a test that does not exist, and CI must say so. ``make test`` installs
what the tests need (``scripts/system-deps.sh``: Chromium, chromedriver, a headless JRE),
so on a prepared machine nothing skips. An expected failure (``xfail``) is left alone.
"""

from __future__ import annotations

import os

import pytest

TRUE = {"1", "true", "yes", "on"}


def ci() -> bool:
    """Whether the suite runs under CI (``CI`` set to true, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() in TRUE


def skip_reason(report: pytest.TestReport) -> str:
    """The reason text of a skipped report (pytest keeps it as (file, line, reason))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and ci() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true, which counts as a failure ({skip_reason(report)}); "
            "install what the test needs (make system-deps) so that it runs"
        )
