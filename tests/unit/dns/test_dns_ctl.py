"""``meshnetctl service`` / ``meshnetctl dns``: argument handling and table rendering (no agent)."""

from __future__ import annotations

import pytest

from meshnet import ctl
from meshnet.ctl_service import format_dns, format_services

SERVICE = {
    "id": "ab" * 12,
    "name": "api",
    "network": "f" * 24,
    "network_name": "front",
    "aliases": ["backend"],
    "ports": ["http:80/tcp"],
    "vips": [],
    "endpoints": ["c1"],
    "creator": "h1",
    "created": 0.0,
    "revision": 1,
    "tasks": [
        {"endpoint": "e1", "name": "c1", "host": "h1", "ipv4": "10.0.0.2", "ipv6": None},
        {"endpoint": "e2", "name": "c2", "host": "h2", "ipv4": "10.0.0.3", "ipv6": None},
    ],
}


def test_service_table():
    out = format_services([SERVICE]).splitlines()
    assert out[0].split() == ["NAME", "NETWORK", "TASKS", "PORTS", "ALIASES", "ID"]
    assert out[1].split() == ["api", "front", "c1@h1,c2@h2", "http:80/tcp", "backend", "ab" * 12]
    assert format_services([]) == "no services"


def test_dns_table():
    stats = dict.fromkeys(
        ("queries", "answered", "forwarded", "refused_over_limit", "refused_no_upstream"), 0
    )
    stats.update(queries=9, answered=7, forwarded=2, refused_policy=1)
    body = {
        "sandboxes": [
            {
                "name": "c1",
                "listening": "127.0.0.11:53",
                "scope": [{"id": "x", "name": "front"}],
                "stats": stats,
                "error": None,
            }
        ],
        "upstreams": [{"address": "127.0.0.53", "port": 53}],
        "servers": True,
    }
    lines = format_dns(body).splitlines()
    assert lines[1].split() == ["c1", "127.0.0.11:53", "front", "9", "7", "2", "1", "-"]
    assert lines[-1] == "upstreams: 127.0.0.53:53"


@pytest.mark.parametrize(
    "argv",
    [["service", "create", "api"], ["service"], ["service", "rm"], ["service", "create", "--network", "n"]],
)
def test_bad_usage_is_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        ctl.main(["--api", "/nonexistent", *argv])
    assert exc.value.code == 2


def test_agent_down_is_exit_1(capsys):
    assert ctl.main(["--api", "/nonexistent/agent.sock", "service", "ls"]) == 1
    assert "no meshnet agent" in capsys.readouterr().err
