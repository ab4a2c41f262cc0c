"""meshnetctl against a node's API (fake core), and its error when no agent runs."""

from __future__ import annotations

import json

import trio

from meshnet import ctl
from meshnet.gossip.config import local
from meshnet.runtime import Node
from tests.shell.helpers import fake_factory, running


async def test_members_table_json_and_info(tmp_path, capsys):
    path = str(tmp_path / "a.sock")
    node = Node(local(), name="ctl-node", bind=("127.0.0.46", 0), swim_factory=fake_factory())
    async with running(node, api_path=path):
        assert await trio.to_thread.run_sync(ctl.main, ["--api", path, "members"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["NAME", "ADDRESS", "STATE", "INCARNATION", "TAGS"]
        assert table[1].split() == ["ctl-node", f"127.0.0.46:{node.bound_addr[1]}", "alive", "1"]
        assert table[2].split() == ["peer-b", "127.0.0.99:7946", "suspect", "3", "role=web"]

        assert await trio.to_thread.run_sync(ctl.main, ["--api", path, "members", "--json"]) == 0
        members = json.loads(capsys.readouterr().out)["members"]
        assert [m["name"] for m in members] == ["ctl-node", "peer-b"]

        assert await trio.to_thread.run_sync(ctl.main, ["--api", path, "info"]) == 0
        assert "name:          ctl-node" in capsys.readouterr().out


def test_unreachable_agent_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "missing.sock")
    monkeypatch.setenv("MESHNET_API", path)
    assert ctl.main(["members"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert path in err and "--api" in err and "MESHNET_API" in err


def test_format_members_ipv6_and_tags():
    text = ctl.format_members(
        [
            {
                "name": "b",
                "addr": "fd00::1",
                "port": 7946,
                "state": "left",
                "incarnation": 2,
                "tags": {"z": "1", "a": "2"},
            }
        ]
    )
    assert text.splitlines()[1].split() == ["b", "[fd00::1]:7946", "left", "2", "a=2,z=1"]
