"""Fixtures of the dataplane conformance tests: one ``Harness`` per implementation.

``memory_harness`` runs everywhere. ``netlink_harness`` needs root (the tests using it carry
``@pytest.mark.root``: skipped for a non-root user on a workstation, a failure under CI). It works inside
namespaces whose names start with a prefix unique to the test (``mnt<pid><random>-``): it creates the
first of them (the VXLAN underlay) and removes every namespace with the prefix afterwards, also when the
test failed, falling back to ``ip netns del`` if the dataplane itself cannot. It then asserts that no
namespace was left behind and that no link with a name the checks use appeared in the namespace pytest
runs in (normally the root namespace).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from meshnet.dataplane import AddNetns, DelNetns, MemoryDataplane
from tests.conformance.dataplane_contract import LINK_NAMES, Harness

NETNS_DIR = "/run/netns"


def unique_prefix() -> str:
    """A namespace-name prefix no other test (or concurrent run) uses."""
    return f"mnt{os.getpid() % 100000}{secrets.token_hex(3)}-"


def prefixed_namespaces(prefix: str) -> list[str]:
    """Namespaces under /run/netns whose name starts with ``prefix``."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def own_link_names() -> set[str]:
    """Names of the links in the namespace this process runs in (normally the root namespace)."""
    return {name for _, name in socket.if_nameindex()}


def remove_prefixed_namespaces(prefix: str, dataplane: object | None) -> None:
    """Remove every namespace with ``prefix``: through the dataplane, then by ``ip netns del``."""
    names = prefixed_namespaces(prefix)
    if names and dataplane is not None:
        try:
            dataplane.apply(tuple(DelNetns(name=n) for n in names))  # type: ignore[attr-defined]
        except Exception as exc:  # the fallback below still cleans up; report after
            print(f"dataplane cleanup failed: {exc!r}")
    for name in prefixed_namespaces(prefix):
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def netlink_harness() -> Iterator[Harness]:
    from meshnet.dataplane.netlink import NetlinkDataplane

    prefix = unique_prefix()
    ours_before = own_link_names() & set(LINK_NAMES)
    dp = NetlinkDataplane()
    try:
        dp.apply((AddNetns(name=prefix + "u"),))
        yield Harness(dp, prefix, atomic=False)
    finally:
        remove_prefixed_namespaces(prefix, dp)
        dp.close()
    assert prefixed_namespaces(prefix) == [], "test namespaces left behind"
    assert own_link_names() & set(LINK_NAMES) == ours_before, (
        "a test link appeared outside the test namespaces"
    )


@pytest.fixture
def memory_harness() -> Harness:
    prefix = unique_prefix()
    dp = MemoryDataplane()
    dp.apply((AddNetns(name=prefix + "u"),))
    return Harness(dp, prefix, atomic=True)


@pytest.fixture(params=["memory", pytest.param("netlink", marks=pytest.mark.root)])
def harness(request: pytest.FixtureRequest) -> Harness:
    return request.getfixturevalue(f"{request.param}_harness")
