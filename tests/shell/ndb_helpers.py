"""Helpers for the NetworkDB shell tests: real Swim + NetworkDB nodes over loopback in one trio process.

Nodes bind 127.0.8.x (ephemeral ports on the first start; a restart reuses the node's port, as a real
agent restarted with its config would). Each node runs in its own cancel scope so a test can crash it
(``kill``: tasks cancelled, sockets closed, no leave) and start it again with the same or another
state directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from meshnet.gossip.config import local
from meshnet.networkdb import fast as ndb_fast
from meshnet.runtime import Node
from meshnet.runtime.db import DbSettings
from tests.shell.helpers import http_raw, split_response

#: Gossip timing for these tests: failure detection in about 2 s, leave in well under a second.
FAST = local().with_(
    probe_interval=0.2,
    probe_timeout=0.1,
    gossip_interval=0.05,
    suspicion_mult=2,
    tcp_timeout=1.0,
    push_pull_interval=2.0,
    leave_timeout=2.0,
)
NDB = ndb_fast()


class DbCluster:
    """Named nodes with NetworkDB; ``start``/``kill``/``restart`` by name."""

    def __init__(self, nursery: trio.Nursery, tmp: Path, *, ndb_config: Any = NDB) -> None:
        self.nursery = nursery
        self.tmp = tmp
        self.ndb_config = ndb_config
        self.nodes: dict[str, Node] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.ips: dict[str, str] = {}
        self.ports: dict[str, int] = {}

    def state_dir(self, name: str, life: str = "") -> str:
        return str(self.tmp / f"{name}{life}.state")

    def api(self, name: str) -> str:
        return str(self.tmp / f"{name}.sock")

    async def start(
        self,
        name: str,
        ip: str,
        *,
        join: str | None = None,
        state_dir: str | None = None,
        persist: bool = True,
        api: bool = False,
        ndb_config: Any = None,
    ) -> Node:
        previous = self.nodes.get(name)
        if previous is not None:
            with trio.fail_after(10):
                await previous.wait_stopped()  # its state directory is unlocked once it stopped
        seeds = [self.nodes[join].bound_addr] if join is not None else []
        port = self.ports.get(name, 0)
        if persist and state_dir is None:
            state_dir = self.state_dir(name)
        settings = DbSettings(config=ndb_config or self.ndb_config, state_dir=state_dir if persist else None)
        node = Node(FAST, name=name, bind=(ip, port), seeds=seeds, networkdb=settings)
        api_path = self.api(name) if api else None

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                self.scopes[name] = scope
                await node.run(api_path=api_path, task_status=task_status)

        await self.nursery.start(run)
        self.nodes[name] = node
        self.ips[name] = ip
        self.ports[name] = node.bound_addr[1]
        return node

    def kill(self, name: str) -> None:
        """A crash: tasks cancelled, sockets closed, no leave."""
        self.scopes[name].cancel()

    def db(self, name: str) -> Any:
        return self.nodes[name].db.core

    def states(self, viewer: str) -> dict[str, str]:
        return {m.name: m.state for m in self.nodes[viewer].members()}


async def db_call(node: Node, fn: Any) -> Any:
    """Run a NetworkDB input on ``node`` the way the API does (drained and dispatched)."""
    return node.db_input(fn)


async def api_request(path: str, method: str, target: str, body: Any = None, raw: bytes | None = None):
    """(status, decoded JSON) of one API request on the unix socket ``path``."""
    payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
    status, headers, data = split_response(await http_raw(path, head + payload))
    assert headers["content-type"] == "application/json"
    return status, json.loads(data)
