"""The simulator's own machinery (scheduler, network, streams, timers, trace), with a tiny fake core."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass

from meshnet.core.drive import drain
from sim.cluster import Cluster, node_addr
from sim.network import Latency, LinkParams, Network
from sim.scheduler import Scheduler
from sim.trace import Trace


@dataclass(frozen=True)
class Req:
    stream_id: int
    addr: tuple[str, int]
    data: bytes
    expect_reply: bool
    timeout: float


class Fake:
    """Records its inputs; sends what the test queues; one timer every ``period`` seconds."""

    def __init__(self, config, *, name, addr, rng, now, period=1.0):
        self.name, self.addr, self.period = name, addr, period
        self.log: list[tuple] = []
        self.out: list = []
        self.streams: list = []
        self.deadline = now + period
        self.timers = 0

    def join(self, seeds, *, now):
        self.log.append(("join", tuple(seeds), now))

    def receive_datagram(self, src, data, *, now):
        self.log.append(("dgram", src, data, now))

    def receive_stream(self, src, data, *, now):
        self.log.append(("stream", src, data, now))
        return None if data == b"silent" else b"re:" + data

    def receive_stream_reply(self, sid, data, *, now):
        self.log.append(("reply", sid, data, now))

    def stream_failed(self, sid, *, now):
        self.log.append(("failed", sid, now))

    def stream_frame_length(self, buf):
        return len(buf)

    def handle_timer(self, *, now):
        self.timers += 1
        self.deadline = now + self.period

    def datagrams_to_send(self):
        out, self.out = self.out, []
        return out

    def streams_to_open(self):
        out, self.streams = self.streams, []
        return out

    def next_event(self):
        return None

    def next_deadline(self):
        return self.deadline

    def members(self):
        return []


def cluster(n: int = 3, seed: int = 1, link: LinkParams | None = None) -> Cluster:
    c = Cluster(n, seed=seed, core_factory=Fake, link=link or LinkParams(latency=Latency(1000, 0)))
    for node in c.nodes:
        c.start(node)
    return c


def send(c: Cluster, src: int, dst: int, data: bytes) -> None:
    c.nodes[src].core.out.append((c.nodes[dst].addr, data))
    c._process(c.nodes[src], drain(c.nodes[src].core), c.now_us)


def test_scheduler_orders_ties_by_push_order_and_clamps_the_past() -> None:
    s = Scheduler()
    seen: list[str] = []
    s.call_at(10, lambda: seen.append("a"))
    s.call_at(5, lambda: seen.append("b"))
    s.call_at(10, lambda: seen.append("c"))
    s.run_until(7)
    assert seen == ["b"] and s.now_us == 7
    s.call_at(3, lambda: seen.append("past"))  # clamped to now (7)
    s.run_until(100)
    assert seen == ["b", "past", "a", "c"] and s.now_us == 100


def test_addresses_are_fake_loopback_identifiers() -> None:
    assert node_addr(0) == ("127.0.0.2", 7946)
    assert node_addr(300) == ("127.0.1.46", 7946)
    assert len({node_addr(i) for i in range(70_000)}) == 70_000


def test_network_loss_duplication_partition_and_overrides() -> None:
    net = Network(random.Random(1), LinkParams(latency=Latency(100, 50), loss=0.2, duplicate=0.1))
    copies = [len(net.datagram_delays(0, 1, 10)) for _ in range(20_000)]
    assert 0.18 < copies.count(0) / len(copies) < 0.22
    assert 0.06 < copies.count(2) / len(copies) < 0.10
    net.set_default(LinkParams(latency=Latency(100, 50)))
    assert all(50 <= d <= 150 for _ in range(1000) for d in net.datagram_delays(0, 1, 10))
    net.partition([[0, 1]])
    assert net.can_send(0, 1) and not net.can_send(0, 2) and not net.can_send(2, 0)
    net.heal()
    net.block_one_way([0], [1])
    assert not net.can_send(0, 1) and net.can_send(1, 0) and not net.connected(0, 1)
    net.heal()
    net.set_link(0, 1, LinkParams(loss=1.0))
    assert net.datagram_delays(0, 1, 10) == [] and net.datagram_delays(1, 0, 10) != []
    net.set_link(0, 1, None)
    assert net.datagram_delays(0, 1, 70_000) == [] and net.oversized == 1


def test_datagrams_arrive_after_latency_and_never_at_crashed_nodes() -> None:
    c = cluster()
    send(c, 0, 1, b"hi")
    send(c, 0, 2, b"lost")
    c.crash(2)
    c.run_for(0.01)
    assert ("dgram", c.nodes[0].addr, b"hi", 0.001) in c.nodes[1].core.log
    assert c.dropped_at_down == 1


def test_lazy_timers_fire_once_per_deadline_and_stale_entries_are_ignored() -> None:
    c = cluster(1)
    node = c.nodes[0]
    c.run_for(3.5)
    assert node.core.timers == 3
    node.core.deadline = c.now + 10.0  # moved later: the entry pushed for 4.0 is now stale
    send(c, 0, 0, b"kick")
    c.run_for(9.9)
    assert node.core.timers == 3
    c.run_for(0.2)
    assert node.core.timers == 4


def test_streams_reply_fail_across_partition_and_on_eof() -> None:
    c = cluster()
    a, b = c.nodes[0], c.nodes[1]
    a.core.streams.append(Req(1, b.addr, b"pp", True, 2.0))
    a.core.streams.append(Req(2, b.addr, b"silent", True, 2.0))
    a.core.streams.append(Req(3, b.addr, b"fire-and-forget", False, 2.0))
    c.join(a, [])  # any input drains the core
    c.run_for(0.1)
    assert ("reply", 1, b"re:pp", 0.004) in a.core.log  # connect RTT + request + reply, 1 ms each
    assert ("failed", 2, 0.004) in a.core.log  # EOF instead of a frame
    assert not any(e[0] in ("reply", "failed") and e[1] == 3 for e in a.core.log)
    c.partition([[0]])
    a.core.streams.append(Req(4, b.addr, b"pp", True, 2.0))
    c.join(a, [])
    c.run_for(1.0)
    assert not any(e[1] == 4 for e in a.core.log if e[0] == "failed")
    c.run_for(1.5)
    assert any(e[0] == "failed" and e[1] == 4 and abs(e[2] - (c.now - 2.5 + 2.0)) < 1e-6 for e in a.core.log)


def test_trace_hash_is_deterministic_and_jsonl_is_written() -> None:
    def run(seed: int, sink: io.StringIO | None = None) -> str:
        c = Cluster(4, seed=seed, core_factory=Fake, trace=Trace(jsonl=sink))
        for node in c.nodes:
            c.start(node, [c.nodes[0]] if node.idx else [])
        for i in range(20):
            send(c, i % 4, (i * 3 + 1) % 4, bytes([i]))
        c.crash(2)
        c.run_for(2.0)
        return c.trace.hexdigest()

    sink = io.StringIO()
    assert run(5, sink) == run(5) != run(6)
    lines = [json.loads(x) for x in sink.getvalue().splitlines()]
    assert lines[0] == {"t": 0.0, "node": "n0000", "event": "start", "addr": "127.0.0.2", "seeds": ""}
    assert lines[-1]["event"] == "crash"
