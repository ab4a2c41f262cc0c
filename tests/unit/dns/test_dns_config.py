"""The agent's ``[dns]`` config table and upstream parsing (meshnet/runtime/dns_svc.py)."""

from __future__ import annotations

import pytest

from meshnet.core.errors import ConfigError
from meshnet.dns import Upstream
from meshnet.runtime.dns_svc import dns_config_from_toml, parse_upstream


def test_defaults_and_overrides():
    assert dns_config_from_toml(None, "f", start_servers=False).start_servers is False
    cfg = dns_config_from_toml(
        {"upstreams": ["127.0.0.53", "10.0.0.2:5353"], "max_concurrent_forwards": 64, "forward_timeout": 2},
        "f",
        start_servers=True,
    )
    assert cfg.upstreams == ("127.0.0.53", "10.0.0.2:5353")
    assert (cfg.resolver.max_concurrent_forwards, cfg.resolver.forward_timeout) == (64, 2.0)


@pytest.mark.parametrize(
    "table",
    [
        {"nope": 1},
        {"upstreams": "127.0.0.1"},
        {"upstreams": ["not an ip"]},
        {"ttl": "5"},
        {"max_concurrent_forwards": 0},
        {"forward_timeout": True},
        [],
    ],
)
def test_bad_tables_are_config_errors(table):
    with pytest.raises(ConfigError):
        dns_config_from_toml(table, "f", start_servers=True)


def test_parse_upstream():
    assert parse_upstream("127.0.0.53") == Upstream("127.0.0.53", 53, is_host_loopback=True)
    assert parse_upstream("10.1.2.3:5353") == Upstream("10.1.2.3", 5353)
    assert parse_upstream("[::1]:53") == Upstream("::1", 53, is_host_loopback=True)
    assert parse_upstream("fd00::1") == Upstream("fd00::1", 53)
    for bad in ("x", "1.2.3.4:0", "1.2.3.4:99999", "1.2.3.4:x"):
        with pytest.raises(ConfigError):
            parse_upstream(bad)
