"""NameTable: record types, scoping, cluster-name classification, incremental updates, reverse names."""

from __future__ import annotations

import ipaddress
import random

import pytest
from dns_helpers import cluster

from meshnet.core.errors import LocalProtocolError
from meshnet.dns import (
    EndpointRecord,
    NameTable,
    NetworkInfo,
    ServicePort,
    ServiceRecord,
    ServiceTask,
    Srv,
    Status,
)
from meshnet.dns.names import AAAA, ANY, NS, PTR, SRV, A, normalize_name, parse_reverse_name

ip = ipaddress.ip_address
S12 = ("n1", "n2")


def values(res):
    return sorted(str(rr.value) for rr in res.answer)


def test_endpoint_name_and_alias_resolve_to_its_addresses_by_family():
    t = cluster()
    assert values(t.resolve("web", A, ("n1",))) == ["10.0.1.2"]
    assert values(t.resolve("www", A, ("n1",))) == ["10.0.1.2"]
    assert values(t.resolve("web", AAAA, ("n1",))) == ["fd00:1::2"]
    assert values(t.resolve("web", ANY, ("n1",))) == ["10.0.1.2", "fd00:1::2"]


def test_ipv4_only_name_asked_for_aaaa_is_nodata_not_forwarded():
    t = cluster()
    assert t.resolve("db", AAAA, ("n2",)).status is Status.NODATA
    assert t.resolve("db", 15, ("n2",)).status is Status.NODATA  # MX: the name exists


def test_name_dot_network_picks_that_network():
    t = cluster()
    assert values(t.resolve("web.frontend", A, S12)) == ["10.0.1.2"]
    assert values(t.resolve("web.backend", A, S12)) == ["10.0.2.3"]
    assert values(t.resolve("tasks.api.frontend", A, S12)) == ["10.0.1.5", "10.0.1.6"]


def test_same_name_on_two_networks_first_network_in_scope_wins():
    t = cluster()
    assert values(t.resolve("web", A, ("n1", "n2"))) == ["10.0.1.2"]
    assert values(t.resolve("web", A, ("n2", "n1"))) == ["10.0.2.3"]


def test_round_robin_service_returns_every_task_and_tasks_name_too():
    t = cluster()
    assert values(t.resolve("api", A, ("n1",))) == ["10.0.1.5", "10.0.1.6"]
    assert values(t.resolve("tasks.api", A, ("n1",))) == ["10.0.1.5", "10.0.1.6"]
    assert values(t.resolve("api.1", A, ("n1",))) == ["10.0.1.5"]


def test_vip_service_returns_the_vip_with_stable_flag_and_tasks_return_tasks():
    t = cluster()
    res = t.resolve("vipsvc", A, ("n1",))
    assert values(res) == ["10.0.1.100"] and all(rr.is_stable for rr in res.answer)
    assert values(t.resolve("tasks.vipsvc", A, ("n1",))) == ["10.0.1.7"]
    assert not any(rr.is_stable for rr in t.resolve("api", A, ("n1",)).answer)


def test_srv_one_record_per_task_with_addresses_as_additional():
    t = cluster()
    res = t.resolve("_http._tcp.api", SRV, ("n1",))
    assert res.status is Status.ANSWER
    assert sorted(rr.value for rr in res.answer) == [
        Srv(0, 0, 8080, "api.1.frontend"),
        Srv(0, 0, 8080, "api.2.frontend"),
    ]
    assert sorted((rr.owner, str(rr.value)) for rr in res.additional) == [
        ("api.1.frontend", "10.0.1.5"),
        ("api.2.frontend", "10.0.1.6"),
    ]
    assert t.resolve("_http._tcp.api", A, ("n1",)).status is Status.NODATA
    assert t.resolve("_http._udp.api", SRV, ("n1",)).status is Status.FORWARD  # no such port: not ours


def test_srv_target_resolves_forward():
    t = cluster()
    assert values(t.resolve("api.2.frontend", A, ("n1",))) == ["10.0.1.6"]


def test_ptr_for_endpoint_task_and_vip_in_both_families():
    t = cluster()
    assert values(t.resolve("2.1.0.10.in-addr.arpa", PTR, ("n1",))) == ["web.frontend"]
    v6 = ip("fd00:1::2").reverse_pointer
    assert values(t.resolve(v6, PTR, ("n1",))) == ["web.frontend"]
    assert values(t.resolve("5.1.0.10.in-addr.arpa", PTR, ("n1",))) == ["api.1.frontend"]
    res = t.resolve("100.1.0.10.in-addr.arpa", PTR, ("n1",))
    assert values(res) == ["vipsvc.frontend"] and res.answer[0].is_stable
    assert t.resolve("2.1.0.10.in-addr.arpa", A, ("n1",)).status is Status.NODATA


def test_alias_gets_no_ptr_only_the_primary_name():
    t = NameTable()
    t.upsert_network(NetworkInfo("n", "net", ("10.9.0.0/16",)))
    t.upsert_endpoint("n", EndpointRecord("e", "main", ("10.9.0.5",), aliases=("alias1", "alias2")))
    assert values(t.resolve("5.0.9.10.in-addr.arpa", PTR, ("n",))) == ["main.net"]


def test_reverse_zone_of_a_scoped_subnet_is_ours_unknown_addresses_nxdomain():
    t = cluster()
    assert t.resolve("77.1.0.10.in-addr.arpa", PTR, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("1.0.10.in-addr.arpa", PTR, ("n1",)).status is Status.NODATA  # the zone apex
    assert t.resolve("0.10.in-addr.arpa", PTR, ("n1",)).status is Status.FORWARD  # above the /24
    assert t.resolve("8.8.8.8.in-addr.arpa", PTR, ("n1",)).status is Status.FORWARD
    unknown6 = ip("fd00:1::99").reverse_pointer
    assert t.resolve(unknown6, PTR, ("n1",)).status is Status.NXDOMAIN


def test_other_networks_are_invisible_names_and_ptr():
    t = cluster()
    assert t.resolve("secret", A, S12).status is Status.NXDOMAIN
    # "other" is not in scope: no answer, and (rule 6) not forwarded either: the cluster's names never leak
    assert t.resolve("secret.other", A, S12).status is Status.NXDOMAIN
    assert t.resolve("2.3.0.10.in-addr.arpa", PTR, S12).status is Status.NXDOMAIN
    assert values(t.resolve("secret", A, ("n3",))) == ["10.0.3.2"]
    assert t.resolve("db", A, ("n1",)).status is Status.NXDOMAIN


def test_cluster_name_classification():
    t = cluster()
    assert t.resolve("nosuch", A, S12).status is Status.NXDOMAIN  # single label
    assert t.resolve("nosuch.frontend", A, S12).status is Status.NXDOMAIN  # under a scoped network
    assert t.resolve("a.b.frontend", A, S12).status is Status.NXDOMAIN
    assert t.resolve("frontend", A, S12).status is Status.NXDOMAIN
    assert t.resolve("example.com", A, S12).status is Status.FORWARD
    assert t.resolve("tasks.nosuch", A, S12).status is Status.FORWARD  # could be a real domain
    assert t.resolve("", A, S12).status is Status.FORWARD  # the root
    # zone infrastructure of single labels goes upstream (DNSSEC validators behind the resolver)
    assert t.resolve("com", NS, S12).status is Status.FORWARD
    assert t.resolve("com", 43, S12).status is Status.FORWARD  # DS
    assert t.resolve("web", NS, S12).status is Status.NODATA  # ...unless the name is ours


def test_localhost_is_answered():
    t = NameTable()
    assert values(t.resolve("localhost", A, ())) == ["127.0.0.1"]
    assert values(t.resolve("localhost", AAAA, ())) == ["::1"]


def test_removal_makes_the_name_nxdomain_and_drops_ptr():
    t = cluster()
    assert t.remove_endpoint("n1", "e-web")
    assert t.resolve("web", A, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("www", A, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("2.1.0.10.in-addr.arpa", PTR, ("n1",)).status is Status.NXDOMAIN
    assert not t.remove_endpoint("n1", "e-web")
    assert t.remove_service("n1", "s-api")
    assert t.resolve("api", A, ("n1",)).status is Status.NXDOMAIN
    # Dotted names stop being cluster names with their last record (rule 3 covers NAME.NETWORK only).
    for name in ("tasks.api", "api.1"):
        assert t.resolve(name, A, ("n1",)).status is Status.FORWARD
    assert t.resolve("api.1.frontend", A, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("_http._tcp.api", SRV, ("n1",)).status is Status.FORWARD


def test_shared_alias_merges_and_survives_removal_of_one_holder():
    t = NameTable()
    t.upsert_endpoint("n", EndpointRecord("e1", "c1", ("10.0.0.1",), aliases=("shared",)))
    t.upsert_endpoint("n", EndpointRecord("e2", "c2", ("10.0.0.2",), aliases=("shared",)))
    assert values(t.resolve("shared", A, ("n",))) == ["10.0.0.1", "10.0.0.2"]
    t.remove_endpoint("n", "e1")
    assert values(t.resolve("shared", A, ("n",))) == ["10.0.0.2"]


def test_upsert_replaces_old_names_and_addresses():
    t = cluster()
    t.upsert_endpoint("n1", EndpointRecord("e-web", "web2", ("10.0.1.22",)))
    assert t.resolve("web", A, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("www", A, ("n1",)).status is Status.NXDOMAIN
    assert values(t.resolve("web2", A, ("n1",))) == ["10.0.1.22"]
    assert t.resolve("2.1.0.10.in-addr.arpa", PTR, ("n1",)).status is Status.NXDOMAIN
    t.upsert_service("n1", ServiceRecord("s-api", "api", tasks=(ServiceTask("api.3", ("10.0.1.8",)),)))
    assert values(t.resolve("api", A, ("n1",))) == ["10.0.1.8"]
    assert t.resolve("api.1.frontend", A, ("n1",)).status is Status.NXDOMAIN
    assert t.resolve("_http._tcp.api", SRV, ("n1",)).status is Status.FORWARD


def test_names_are_case_insensitive():
    t = NameTable()
    t.upsert_endpoint("n", EndpointRecord("e", "MyApp", ("10.0.0.1",), aliases=("Alias.One",)))
    assert values(t.resolve("myapp", A, ("n",))) == ["10.0.0.1"]
    assert values(t.resolve("alias.one", A, ("n",))) == ["10.0.0.1"]
    assert normalize_name("WEB.Frontend.") == "web.frontend"


def test_generations_move_only_on_effective_changes_and_per_network():
    t = cluster()
    g, g1, g2 = t.generation, t.network_generation("n1"), t.network_generation("n2")
    t.upsert_endpoint("n1", EndpointRecord("e-web", "web", ("10.0.1.2", "fd00:1::2"), aliases=("www",)))
    assert t.generation == g  # same value: no change
    t.upsert_endpoint("n1", EndpointRecord("e-x", "x", ("10.0.1.50",)))
    assert t.generation > g and t.network_generation("n1") > g1 and t.network_generation("n2") == g2
    old = t.network_generation("n3")
    t.remove_network("n3")
    assert t.network_generation("n3") == -1
    t.upsert_network(NetworkInfo("n3", "other"))
    assert t.network_generation("n3") not in (-1, old)


def test_records_of_an_undeclared_network_resolve_by_name():
    t = NameTable()
    t.upsert_endpoint("nx", EndpointRecord("e", "early", ("10.5.0.1",)))
    assert values(t.resolve("early", A, ("nx",))) == ["10.5.0.1"]
    assert values(t.resolve("1.0.5.10.in-addr.arpa", PTR, ("nx",))) == ["early"]
    t.upsert_network(NetworkInfo("nx", "late"))
    assert values(t.resolve("early.late", A, ("nx",))) == ["10.5.0.1"]
    assert values(t.resolve("1.0.5.10.in-addr.arpa", PTR, ("nx",))) == ["early.late"]


def test_invalid_names_are_skipped_and_counted_the_record_still_works():
    t = NameTable()
    t.upsert_endpoint("n", EndpointRecord("e", "good", ("10.0.0.1",), aliases=("bad name", "x" * 64, "ok")))
    assert t.invalid_names == 2
    assert values(t.resolve("ok", A, ("n",))) == ["10.0.0.1"]
    t.remove_endpoint("n", "e")
    assert t.invalid_names == 2
    assert t.resolve("ok", A, ("n",)).status is Status.NXDOMAIN


def test_bad_local_values_raise_local_protocol_error():
    with pytest.raises(LocalProtocolError):
        EndpointRecord("e", "x", ("not-an-ip",))
    with pytest.raises(LocalProtocolError):
        ServicePort("p", "icmp", 1)
    with pytest.raises(LocalProtocolError):
        NetworkInfo("n", "net", ("10.0.0.1/33",))


def test_addresses_helper_filters_family_and_shuffles_with_the_injected_rng():
    t = NameTable()
    t.upsert_service(
        "n",
        ServiceRecord("s", "big", tasks=tuple(ServiceTask(f"t{i}", (f"10.0.0.{i}",)) for i in range(1, 30))),
    )
    plain = t.addresses("big", ("n",))
    assert list(plain) == sorted(plain)
    a = t.addresses("big", ("n",), rng=random.Random(1))
    b = t.addresses("big", ("n",), rng=random.Random(1))
    assert a == b and a != plain and sorted(a) == sorted(plain)
    assert t.addresses("web", ("n",), version=6) == ()


def test_index_is_incremental_update_cost_does_not_grow_with_table_size():
    # Re-indexing touches only the record's own names: count dict operations through a tiny probe.
    t = NameTable()
    for i in range(2000):
        t.upsert_endpoint("n", EndpointRecord(f"e{i}", f"c{i}", (ipaddress.IPv4Address(0x0A000000 + i),)))
    net = t._nets["n"]
    before = len(net.names)
    t.upsert_endpoint("n", EndpointRecord("e5", "renamed", ("10.0.0.5",)))
    assert len(net.names) == before and "c5" not in net.names and "renamed" in net.names


def test_parse_reverse_name():
    assert parse_reverse_name("4.3.2.1.in-addr.arpa") == (4, 0x01020304, 32)
    assert parse_reverse_name("2.1.in-addr.arpa") == (4, 0x0102, 16)
    assert parse_reverse_name("in-addr.arpa") == (4, 0, 0)
    assert parse_reverse_name("01.1.in-addr.arpa") is None
    assert parse_reverse_name("256.1.in-addr.arpa") is None
    assert parse_reverse_name("5.4.3.2.1.in-addr.arpa") is None
    assert parse_reverse_name("xin-addr.arpa") is None
    full = ip("fd00::1").reverse_pointer
    assert parse_reverse_name(full) == (6, int(ip("fd00::1")), 128)
    assert parse_reverse_name("g.ip6.arpa") is None
