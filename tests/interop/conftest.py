"""Fixtures for tests against real third-party peers: a ``Lab`` of serf and meshnet agents on loopback."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.interop.serfctl import (
    Addr,
    AddressPool,
    MeshnetAgent,
    Processes,
    SerfAgent,
    new_key,
    write_keyring,
)

_DEFAULT = object()


class Lab:
    """serf and meshnet agents for one test, all plaintext or all encrypted with one shared key."""

    def __init__(self, workdir: Path, serf_bin: str, encrypted: bool) -> None:
        self.workdir = workdir
        self.serf_bin = serf_bin
        self.encrypted = encrypted
        self.procs = Processes(workdir / "logs")
        self.pool = AddressPool()
        self.keyring = write_keyring(workdir / "keyring.json", [new_key()]) if encrypted else None

    def other_keyring(self) -> Path:
        """A keyring with a different random key (for negative tests)."""
        return write_keyring(self.workdir / "other-keyring.json", [new_key()])

    def serf(
        self,
        name: str,
        *,
        join: Sequence[Addr] = (),
        tags: Mapping[str, str] | None = None,
        keyring: object = _DEFAULT,
    ) -> SerfAgent:
        bind = self.pool.take()
        rpc = (bind[0], self.pool.port_on(bind[0]))
        keyring_file = self.keyring if keyring is _DEFAULT else keyring
        return SerfAgent.start(
            self.procs, self.serf_bin, name, bind, rpc, join=join, keyring_file=keyring_file, tags=tags
        )

    def meshnet(
        self,
        name: str,
        *,
        join: Sequence[Addr] = (),
        tags: Mapping[str, str] | None = None,
        keyring: object = _DEFAULT,
    ) -> MeshnetAgent:
        keyring_file = self.keyring if keyring is _DEFAULT else keyring
        return MeshnetAgent.start(
            self.procs,
            name,
            self.pool.take(),
            api=self.workdir / f"{name}.sock",
            join=join,
            keyring_file=keyring_file,
            tags=tags,
        )

    def report(self) -> str:
        return self.procs.report()


@pytest.fixture(params=["plain", "encrypted"])
def lab(request: pytest.FixtureRequest, tmp_path: Path, serf_bin: str) -> Iterator[Lab]:
    """A ``Lab``, once plaintext and once encrypted. Every process is stopped at teardown, by PID."""
    lab = Lab(tmp_path, serf_bin, encrypted=request.param == "encrypted")
    try:
        yield lab
    finally:
        # Logs first (pytest shows this output only for a failing test), then stop everything.
        print(f"\n===== processes of {request.node.nodeid}\n{lab.report()}")
        lab.procs.stop_all()
