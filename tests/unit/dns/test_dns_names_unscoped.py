"""Rule 6 of names.py: names of networks outside the sandbox's scope are NXDOMAIN, never forwarded."""

from __future__ import annotations

from meshnet.dns import EndpointRecord, NameTable, NetworkInfo, Status
from meshnet.dns.names import PTR, A


def _table() -> NameTable:
    t = NameTable()
    t.upsert_network(NetworkInfo("n1", "frontend", ("10.0.1.0/24",)))
    t.upsert_network(NetworkInfo("n2", "backend", ("10.0.2.0/24",)))
    t.upsert_endpoint("n2", EndpointRecord("e2", "secret", ("10.0.2.2",)))
    return t


def test_names_under_an_unscoped_network_are_nxdomain_not_forwarded():
    t = _table()
    assert t.resolve("secret.backend", A, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("x.y.backend", A, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("backend", A, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("secret.backend", A, ("n2",)).status is Status.ANSWER
    assert t.resolve("example.com", A, ("n1",)).status is Status.FORWARD
    assert t.resolve("notbackend.com", A, ("n1",)).status is Status.FORWARD


def test_reverse_names_in_an_unscoped_subnet_are_nxdomain_not_forwarded():
    t = _table()
    assert t.resolve("2.2.0.10.in-addr.arpa", PTR, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("2.0.10.in-addr.arpa", PTR, ("n1",)).status is Status.NODATA
    assert t.resolve("2.3.0.10.in-addr.arpa", PTR, ("n1",)).status is Status.FORWARD


def test_a_removed_or_renamed_network_stops_capturing_its_names():
    t = _table()
    t.remove_network("n2")
    assert t.resolve("secret.backend", A, ("n1",)).status is Status.FORWARD
    t.upsert_network(NetworkInfo("n1", "front2", ("10.0.1.0/24",)))
    assert t.resolve("x.frontend", A, ()).status is Status.FORWARD
    assert t.resolve("x.front2", A, ()).status is Status.NXDOMAIN
