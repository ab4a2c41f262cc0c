"""Fixtures and markers shared by the whole test tree (see tests/README.md).

- ``@pytest.mark.root``: the test needs root. Skipped for a non-root user on a workstation; under CI
  (``CI`` set) a missing privilege is a failure, never a silent skip.
- ``@pytest.mark.interop``: the test runs a real third-party peer (serf, dig, nft).
- ``@pytest.mark.hang_guard(seconds)``: this test's hang limit (default ``MESHNET_TEST_TIMEOUT``, 300 s).
  A test that runs past it gets its captured output and every thread's stack written to stderr, and the
  pytest process ends with exit code 1, so a hang can never eat CI's time budget silently. Child processes started through
  ``tests/interop/serfctl.py`` die with pytest (``PR_SET_PDEATHSIG``).
- ``in_ci()``, the ``serf_bin`` fixture: the path of the ``serf`` binary; fails under CI when missing.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import sys
import threading

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


def _end_hung_run(item: pytest.Item, limit: float) -> None:
    """Runs on the guard's timer thread: show what the test printed and every stack, then exit 1.

    A hung test cannot be interrupted safely from another thread, so the process ends; children started
    through ``tests/interop/serfctl.py`` die with it (PR_SET_PDEATHSIG).
    """
    capman = item.config.pluginmanager.getplugin("capturemanager")
    out = err = ""
    if capman is not None:
        capman.suspend_global_capture(in_=True)
        out, err = capman.read_global_capture()
    stream = sys.stderr
    stream.write(
        f"\n{'!' * 30} hang guard: {item.nodeid} ran longer than {limit:g} s; ending the run {'!' * 30}\n"
    )
    if out:
        stream.write(f"----- captured stdout\n{out}\n")
    if err:
        stream.write(f"----- captured stderr\n{err}\n")
    stream.write("----- stacks\n")
    stream.flush()
    faulthandler.dump_traceback(file=stream, all_threads=True)
    stream.flush()
    os._exit(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    marker = item.get_closest_marker("hang_guard")
    limit = float(marker.args[0]) if marker is not None and marker.args else DEFAULT_HANG_GUARD_S
    timer = None
    if limit > 0:  # covers setup, call and teardown
        timer = threading.Timer(limit, _end_hung_run, args=(item, limit))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


@pytest.fixture(scope="session")
def serf_bin() -> str:
    """Path of the real ``serf`` agent binary (Debian package ``serf``, 0.9.4)."""
    return require_tool("serf", "real serf peers for the interop tests")
