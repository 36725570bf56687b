"""Suite-wide rules.

Under ``CI=true`` a skipped test is a failure: a test that silently skips (no Java, no
Chromium, ...) is a test that does not exist, and CI must say so. ``make test`` installs
what the tests need (``scripts/system-deps.sh``: Chromium, chromedriver, a headless JRE),
so on a prepared machine nothing skips. An expected failure (``xfail``) is left alone.
"""

from __future__ import annotations

import os
import shutil

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


# The flags every browser test starts headless Chromium with: the machine has no network,
# so background networking and component updates are off (without them Chromium keeps
# trying to reach Google's hosts).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture
def one_thread():
    """torch on one thread for the test (small models: threads only wait for each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by chromedriver (Debian packages; ``make system-deps``), in a
    1280x1400 window with a fresh profile; quit after the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(
            "the browser tests need headless Chromium and its driver: install the Debian packages "
            "'chromium chromium-driver' (make system-deps does it)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    d = webdriver.Chrome(service=ChromeService(executable_path=driver), options=options)
    d.set_page_load_timeout(60)
    d.set_window_size(1280, 1400)
    try:
        yield d
    finally:
        d.quit()
