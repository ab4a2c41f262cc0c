"""NetworkDB riding real ``Swim`` cores (the gossip-core contract), in memory with explicit time.

Each node is a Swim core plus a NetworkDB core. After every input the node's NetworkDB outputs are
handed to Swim (``flush_to``), Swim's events are fed back (``handle_gossip_event``), and Swim's
datagrams and streams are delivered to the other Swim cores one millisecond later. This checks the
contract end to end: the 0x6e prefix through user messages, UDP gossip, TCP syncs, member events.
"""

from __future__ import annotations

import heapq
import random

import pytest

from meshnet.networkdb import NetworkDB
from meshnet.networkdb import fast as ndb_fast

swim_mod = pytest.importorskip("meshnet.gossip.swim")
gossip_config = pytest.importorskip("meshnet.gossip.config")


class SwimNet:
    def __init__(self, n: int, seed: int = 0) -> None:
        self.now = 0.0
        self.seq = 0
        self.heap: list = []
        self.down: set[str] = set()
        self.armed: dict[str, float] = {}
        self.nodes: dict[str, tuple] = {}
        self.by_addr: dict[tuple[str, int], str] = {}
        for i in range(n):
            name = f"n{i}"
            addr = (f"127.0.1.{i + 1}", 7946)
            swim = swim_mod.Swim(
                gossip_config.local(), name=name, addr=addr, rng=random.Random(f"{seed}:{name}"), now=0.0
            )
            db = NetworkDB(ndb_fast(), name=name, rng=random.Random(f"{seed}:{name}:db"), now=0.0)
            self.nodes[name] = (swim, db)
            self.by_addr[addr] = name
        for name in self.nodes:
            self.pump(name)
        first = self.nodes["n0"][0].addr
        for name, (swim, _) in self.nodes.items():
            if name != "n0":
                swim.join([first], now=0.0)
                self.pump(name)

    def pump(self, name: str) -> None:
        swim, db = self.nodes[name]
        for _ in range(10):
            db.flush_to(swim, now=self.now)
            progressed = False
            while (ev := swim.next_event()) is not None:
                db.handle_gossip_event(ev, now=self.now)
                progressed = True
            if not progressed:
                break
        while db.next_event() is not None:
            pass
        for addr, data in swim.datagrams_to_send():
            self._push("dgram", name, addr, data)
        for req in swim.streams_to_open():
            self._push("stream", name, req.addr, req)
        d = self._deadline(name)
        if d is not None and self.armed.get(name) != d:
            self.armed[name] = d
            self._push("timer", name, None, None, at=max(d, self.now))

    def _deadline(self, name: str) -> float | None:
        ds = [d for d in (core.next_deadline() for core in self.nodes[name]) if d is not None]
        return min(ds) if ds else None

    def _push(self, kind, src, addr, data, at=None):
        self.seq += 1
        heapq.heappush(self.heap, (self.now + 0.001 if at is None else at, self.seq, kind, src, addr, data))

    def run_until(self, t: float) -> None:
        while self.heap and self.heap[0][0] <= t:
            at, _, kind, src, addr, data = heapq.heappop(self.heap)
            self.now = max(self.now, at)
            if src in self.down:
                if kind == "timer":
                    self.armed.pop(src, None)
                continue
            if kind == "timer":
                self.armed.pop(src, None)
                swim, db = self.nodes[src]
                for core in (swim, db):
                    d = core.next_deadline()
                    if d is not None and d <= self.now:
                        core.handle_timer(now=self.now)
                self.pump(src)
                continue
            dst = self.by_addr.get(addr)
            if dst is None or dst in self.down:
                if kind == "stream" and data.expect_reply:
                    self.nodes[src][0].stream_failed(data.stream_id, now=self.now)
                    self.pump(src)
                continue
            swim = self.nodes[dst][0]
            src_addr = self.nodes[src][0].addr
            if kind == "dgram":
                swim.receive_datagram(src_addr, data, now=self.now)
            else:
                reply = swim.receive_stream(src_addr, data.data, now=self.now)
                if data.expect_reply:
                    requester = self.nodes[src][0]
                    if reply is None:
                        requester.stream_failed(data.stream_id, now=self.now)
                    else:
                        requester.receive_stream_reply(data.stream_id, reply, now=self.now)
                    self.pump(src)
            self.pump(dst)
        self.now = max(self.now, t)

    def db(self, name: str) -> NetworkDB:
        return self.nodes[name][1]


def test_entries_replicate_over_swim_and_hide_on_failure():
    net = SwimNet(4, seed=1)
    net.run_until(5.0)
    assert all(len(s.members()) == 4 for s, _ in net.nodes.values())
    for name in net.nodes:
        net.db(name).join_network("overlay", now=net.now)
        net.pump(name)
    net.run_until(8.0)
    net.db("n2").create_entry("endpoint_table", "overlay", "ep2", b"10.0.0.2", now=net.now)
    net.db("n3").create_entry("svc", "", "web", b"vip", now=net.now)
    net.pump("n2")
    net.pump("n3")
    net.run_until(10.0)
    for name in net.nodes:
        db = net.db(name)
        assert db.get_entry("endpoint_table", "overlay", "ep2").value == b"10.0.0.2", name
        assert db.get_entry("svc", "", "web").value == b"vip", name
        assert sorted(db.peers("overlay")) == sorted(n for n in net.nodes if n != name)
    net.down.add("n2")
    net.run_until(30.0)
    for name in ("n0", "n1", "n3"):
        db = net.db(name)
        assert db.node_state("n2") == "failed", name
        assert db.get_entry("endpoint_table", "overlay", "ep2") is None
        assert db.get_entry("endpoint_table", "overlay", "ep2", include_hidden=True) is not None
    # SIGCONT: the frozen node resumes, refutes its death, and its entries come back everywhere
    net.down.discard("n2")
    net.pump("n2")
    net.run_until(120.0)
    for name in net.nodes:
        db = net.db(name)
        assert db.get_entry("endpoint_table", "overlay", "ep2").value == b"10.0.0.2", name
        assert db.stats().get("messages_rejected", 0) == 0
