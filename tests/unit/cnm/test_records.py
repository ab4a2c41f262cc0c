"""The CNM records every host reads: exact round trips, stable bytes, and garbage refused as DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.cnm import (
    EndpointRecord,
    NetworkRecord,
    SubnetRecord,
    decode_endpoint,
    decode_network,
    encode_endpoint,
    encode_network,
    mac_from_ip,
)
from meshnet.core.errors import DecodeError

NET = NetworkRecord(
    id="4f1c0a9e2b7d6c5a8e3f1b20",
    name="front",
    vni=4097,
    subnets=(SubnetRecord("10.0.1.0/24", "10.0.1.1"), SubnetRecord("fd00:1::/64", "fd00:1::1")),
    mtu=1450,
    labels={"team": "web"},
    internal=True,
    creator="h1",
    created=1764320000.5,
)
EP = EndpointRecord(
    id="ep1",
    name="web1",
    network=NET.id,
    host="h2",
    vtep="192.168.77.12",
    mac=mac_from_ip("10.0.1.5"),
    ipv4="10.0.1.5",
    ipv6="fd00:1::5",
    aliases=("web", "www"),
    sandbox="sb1",
)


def test_records_round_trip_and_encode_to_stable_bytes():
    assert decode_network(encode_network(NET)) == NET
    assert decode_endpoint(encode_endpoint(EP)) == EP
    assert encode_endpoint(decode_endpoint(encode_endpoint(EP))) == encode_endpoint(EP)
    assert EP.addresses() == ("10.0.1.5", "fd00:1::5")
    assert mac_from_ip("10.0.1.5") == "02:42:0a:00:01:05"


def test_optional_fields_default_and_unknown_fields_are_ignored():
    value = b'{"id":"n","name":"x","vni":7,"subnets":[],"future":1}'
    rec = decode_network(value)
    assert (rec.vxlan_port, rec.mtu, rec.attachable, rec.internal) == (4789, 0, True, False)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"[]",
        b'{"id":"n","name":"x","vni":0,"subnets":[]}',  # VNI 0 is not a VXLAN id
        b'{"id":"n","name":"x","vni":true,"subnets":[]}',
        b'{"id":"n","name":"x","vni":5,"subnets":[{"subnet":"10.0.1.0/24","gateway":"10.0.2.1"}]}',
        b'{"id":"n","name":"x","vni":5,"subnets":[{"subnet":"10.0.1.1/24","gateway":"10.0.1.1"}]}',
        b'{"id":"","name":"x","vni":5,"subnets":[]}',
    ],
)
def test_malformed_network_records_are_decode_errors(value):
    with pytest.raises(DecodeError):
        decode_network(value)


@pytest.mark.parametrize(
    "patch",
    [
        {"mac": "02:42:0a"},
        {"vtep": "h2"},
        {"ipv4": "fd00::1"},
        {"ipv6": "10.0.0.1"},
        {"aliases": [""]},
        {"host": 3},
    ],
)
def test_malformed_endpoint_records_are_decode_errors(patch):
    import json

    obj = json.loads(encode_endpoint(EP))
    obj.update(patch)
    with pytest.raises(DecodeError):
        decode_endpoint(json.dumps(obj).encode())


@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_decode_error(data):
    for decode in (decode_network, decode_endpoint):
        with contextlib.suppress(DecodeError):
            decode(data)
