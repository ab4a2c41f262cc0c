"""service_table records: codec, key parsing, which tasks a host owns, and the reader's fold."""

from __future__ import annotations

import pytest

from meshnet.cnm.records import EndpointRecord
from meshnet.cnm.service_records import (
    PortSpec,
    ServiceBook,
    ServiceSpec,
    TaskRecord,
    decode_service,
    decode_task,
    encode_service,
    encode_task,
    parse_key,
    parse_port,
    service_key,
    task_key,
    wanted_tasks,
)
from meshnet.core.errors import DecodeError, LocalProtocolError

SPEC = ServiceSpec(
    id="s1",
    name="api",
    network="n1",
    aliases=("backend-api",),
    ports=(PortSpec("http", "tcp", 8080),),
    endpoints=("ep-a", "web2"),
    creator="h1",
    created=12.5,
    revision=3,
)


def ep(eid: str, name: str, host: str, *, network: str = "n1", service: str = "", ipv4: str = "10.0.1.5"):
    return EndpointRecord(
        id=eid,
        name=name,
        network=network,
        host=host,
        vtep="10.77.0.11",
        mac="02:42:0a:00:01:05",
        ipv4=ipv4,
        service=service,
    )


def test_round_trips():
    assert decode_service(encode_service(SPEC)) == SPEC
    task = TaskRecord("s1", "ep-a", "web1", "h2", "10.0.1.5", "fd00::5", SPEC)
    assert decode_task(encode_task(task)) == task
    bare = TaskRecord("s1", "ep-a", "web1", "h2", "10.0.1.5")
    assert decode_task(encode_task(bare)) == bare


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"[]",
        b"{",
        b'{"id": "x"}',
        b'{"id":"s","name":"a","network":"n","ports":[{"name":"p","port":70000}]}',
        b'{"id":"s","name":"a","network":"n","vips":["nope"]}',
        b"\xff\xfe",
        b'{"id":"s","name":"a","network":"n","revision":-1}',
    ],
)
def test_garbage_services_raise_decode_error(value):
    with pytest.raises(DecodeError):
        decode_service(value)


def test_task_with_foreign_spec_is_refused():
    task = TaskRecord("s2", "ep-a", "web1", "h2", "10.0.1.5", None, SPEC)
    with pytest.raises(DecodeError):
        decode_task(encode_task(task))
    with pytest.raises(DecodeError):
        decode_task(b'{"service":"s","endpoint":"e","name":"n","host":"h","ipv4":"fd00::1"}')


def test_keys():
    assert parse_key(service_key("s1")) == ("svc", "s1", None)
    assert parse_key(task_key("s1", "e1")) == ("task", "s1", "e1")
    for bad in ("", "svc:", "task:s1", "task::e", "x:y", "svc:a:b"):
        with pytest.raises(DecodeError):
            parse_key(bad)


def test_parse_port():
    assert parse_port("http:80/tcp") == PortSpec("http", "tcp", 80)
    assert parse_port("dns:53/UDP") == PortSpec("dns", "udp", 53)
    assert parse_port("x:1") == PortSpec("x", "tcp", 1)
    for bad in ("http", "http:0", "http:80/icmp", ":80", "http:x"):
        with pytest.raises(LocalProtocolError):
            parse_port(bad)


def test_wanted_tasks_only_for_selected_endpoints_of_the_network():
    eps = [
        ep("ep-a", "web1", "h2"),  # by id
        ep("ep-b", "web2", "h2"),  # by name
        ep("ep-c", "web3", "h2", service="api"),  # by its record's service field
        ep("ep-d", "web4", "h2"),  # not selected
        ep("ep-e", "web2", "h2", network="n2"),  # same name, other network
    ]
    wanted = wanted_tasks([SPEC], eps)
    assert sorted(wanted) == [task_key("s1", "ep-a"), task_key("s1", "ep-b"), task_key("s1", "ep-c")]
    task = decode_task(wanted[task_key("s1", "ep-a")])
    assert (task.name, task.host, task.ipv4, task.spec) == ("web1", "h2", "10.0.1.5", SPEC)


def _task(eid: str, spec: ServiceSpec | None = SPEC) -> TaskRecord:
    return TaskRecord("s1", eid, "t-" + eid, "h2", "10.0.1.9", None, spec)


def test_book_host_failure_hides_tasks_not_the_service():
    book = ServiceBook()
    book.put_spec("n1", SPEC)
    book.put_task("n1", _task("e1"))
    book.put_task("n1", _task("e2"))
    view = book.view("n1", "s1")
    assert view is not None and [t.endpoint for t in view.tasks] == ["e1", "e2"]
    book.remove_task("n1", "s1", "e2")  # its host failed: the entry is hidden
    view = book.view("n1", "s1")
    assert view is not None and [t.endpoint for t in view.tasks] == ["e1"]
    # the creator failed: the spec entry is hidden, still used
    book.put_spec("n1", SPEC, hidden=True)
    assert book.view("n1", "s1").spec == SPEC


def test_book_creator_gone_without_tombstone_falls_back_to_task_copies():
    book = ServiceBook()
    book.put_spec("n1", SPEC)
    book.put_task("n1", _task("e1"))
    book.spec_gone("n1", "s1", tombstone=False)
    assert book.view("n1", "s1").spec == SPEC
    book.remove_task("n1", "s1", "e1")
    assert book.view("n1", "s1") is None
    assert book.views() == []


def test_book_tombstone_ends_the_service_at_once():
    book = ServiceBook()
    book.put_spec("n1", SPEC)
    book.put_task("n1", _task("e1"))
    book.spec_gone("n1", "s1", tombstone=True)
    assert book.view("n1", "s1") is None
    assert book.live_specs("n1") == []


def test_book_highest_revision_wins():
    book = ServiceBook()
    newer = ServiceSpec(id="s1", name="api2", network="n1", revision=4)
    book.put_spec("n1", SPEC)
    book.put_task("n1", _task("e1", newer))
    assert book.view("n1", "s1").spec.name == "api2"
    book.put_task("n1", _task("e1", None))
    assert book.view("n1", "s1").spec == SPEC
