"""resolv.conf and hosts text for sandboxes; upstreams from the host's resolv.conf."""

from __future__ import annotations

import pytest

from meshnet.core.errors import ConfigError
from meshnet.dns import Upstream, parse_resolv_conf, render_hosts, render_resolv_conf, sandbox_resolv_conf

SYSTEMD = """\
# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
nameserver 127.0.0.53
options edns0 trust-ad
search corp.example.com lab.example.com
"""

PLAIN = """\
; a comment
domain old.example
nameserver 192.0.2.1
nameserver 2001:db8::53
nameserver not-an-address
nameserver 192.0.2.1
nameserver 192.0.2.3
nameserver 192.0.2.4
search a.example b.example.
options ndots:5 timeout:2 rotate
"""


def body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_sandbox_resolv_conf_from_systemd_resolved_host():
    assert body(sandbox_resolv_conf(SYSTEMD)) == [
        "nameserver 127.0.0.11",
        "search corp.example.com lab.example.com",
        "options edns0 trust-ad ndots:0",
    ]


def test_host_ndots_is_replaced_and_caller_options_win():
    assert body(sandbox_resolv_conf(PLAIN))[-1] == "options timeout:2 rotate ndots:0"
    assert body(sandbox_resolv_conf(PLAIN, options=["ndots:2", "attempts:3"]))[-1] == (
        "options timeout:2 rotate ndots:2 attempts:3"
    )


def test_empty_host_file_still_gives_ndots_0():
    assert body(sandbox_resolv_conf("")) == ["nameserver 127.0.0.11", "options ndots:0"]


def test_parse_upstreams_flags_loopback_and_keeps_the_first_three():
    host = parse_resolv_conf(PLAIN)
    assert host.nameservers == (Upstream("192.0.2.1"), Upstream("2001:db8::53"), Upstream("192.0.2.3"))
    assert host.search == ("a.example", "b.example")  # search after domain: the last one wins
    assert host.options == ("ndots:5", "timeout:2", "rotate")
    assert parse_resolv_conf(SYSTEMD).nameservers == (Upstream("127.0.0.53", is_host_loopback=True),)
    assert parse_resolv_conf("nameserver ::1\n").nameservers[0].is_host_loopback
    assert parse_resolv_conf("domain only.example\n").search == ("only.example",)


def test_no_nameserver_means_the_local_server_like_glibc():
    assert parse_resolv_conf("search x\n").nameservers == (Upstream("127.0.0.1", is_host_loopback=True),)


def test_render_resolv_conf_rejects_tokens_that_would_break_the_file():
    with pytest.raises(ConfigError):
        render_resolv_conf(search=["bad domain"])
    with pytest.raises(ConfigError):
        render_resolv_conf(options=["#x"])


def test_render_hosts():
    text = render_hosts(
        hostname="web",
        domainname="frontend",
        addresses=["10.0.1.2", "fd00:1::2"],
        extra_hosts=[("gateway", "10.0.1.1")],
    )
    assert body(text) == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
        "10.0.1.2\tweb.frontend web",
        "fd00:1::2\tweb.frontend web",
        "10.0.1.1\tgateway",
    ]
    no6 = body(render_hosts(hostname="web", addresses=["10.0.1.2", "fd00:1::2"], ipv6=False))
    assert no6 == ["127.0.0.1\tlocalhost", "10.0.1.2\tweb"]


def test_render_hosts_rejects_bad_input():
    with pytest.raises(ConfigError):
        render_hosts(hostname="two words")
    with pytest.raises(ConfigError):
        render_hosts(hostname="ok", addresses=["10.0.0.300"])
    with pytest.raises(ConfigError):
        render_hosts(hostname="ok", extra_hosts=[("x\ny", "10.0.0.1")])
