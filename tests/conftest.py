"""Fixtures and markers shared by the whole test tree (see tests/README.md).

- ``@pytest.mark.root``: the test needs root. Skipped for a non-root user on a workstation; under CI
  (``CI`` set) a missing privilege is a failure, never a silent skip.
- ``@pytest.mark.interop``: the test runs a real third-party peer (serf, dig, nft).
- ``@pytest.mark.hang_guard(seconds)``: this test's hang limit (default ``MESHNET_TEST_TIMEOUT``, 300 s).
  A test that runs past it has every thread's stack dumped and the pytest process is ended with exit
  code 1, so a hang can never eat CI's time budget silently. Child processes started through
  ``tests/interop/serfctl.py`` die with pytest (``PR_SET_PDEATHSIG``).
- ``in_ci()``, the ``serf_bin`` fixture: the path of the ``serf`` binary; fails under CI when missing.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import sys

import pytest

DEFAULT_HANG_GUARD_S = float(os.environ.get("MESHNET_TEST_TIMEOUT", "300"))


def in_ci() -> bool:
    """True when running under CI (``CI`` set to anything but empty/0/false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name: str, why: str) -> str:
    """The path of executable ``name``; skips outside CI, fails under CI when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name!r} not found on PATH ({why}); scripts/bootstrap installs it"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hang_guard(seconds): end the run with a stack dump if this test runs longer (default "
        "MESHNET_TEST_TIMEOUT or 300 s)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        message = "needs root (run scripts/test as root or with sudo)"
        if in_ci():
            pytest.fail(f"{message}: CI must run as root", pytrace=False)
        pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    marker = item.get_closest_marker("hang_guard")
    limit = float(marker.args[0]) if marker is not None and marker.args else DEFAULT_HANG_GUARD_S
    if limit > 0:
        sys.stderr.flush()
        # Covers setup, call and teardown. exit=True: a hung test cannot be interrupted safely from
        # another thread, so the process ends (exit code 1) after the stacks are on stderr.
        faulthandler.dump_traceback_later(limit, exit=True)
    try:
        yield
    finally:
        if limit > 0:
            faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def serf_bin() -> str:
    """Path of the real ``serf`` agent binary (Debian package ``serf``, 0.9.4)."""
    return require_tool("serf", "real serf peers for the interop tests")
