"""The dataplane contract (dataplane_contract.py) run against every implementation.

``harness`` (conftest.py) is ``MemoryDataplane`` everywhere and ``NetlinkDataplane`` as root, inside
fresh namespaces that are removed afterwards, also on failure.
"""

from __future__ import annotations

import pytest

from tests.conformance.dataplane_contract import CHECKS, Harness


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_contract(harness: Harness, check) -> None:  # type: ignore[no-untyped-def]
    check(harness)
