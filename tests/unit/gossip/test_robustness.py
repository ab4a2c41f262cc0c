"""Remote input never raises out of ``receive_*``: real serf captures and mutated copies of them."""

from __future__ import annotations

import json
import random
from pathlib import Path

from meshnet.gossip.config import lan
from meshnet.gossip.events import MessageRejected
from meshnet.gossip.swim import Swim

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "memberlist"


def _plain_captures() -> list[tuple[str, bytes]]:
    index = json.loads((VECTORS / "index.json").read_text())
    return [
        (v["transport"], (VECTORS / v["file"]).read_bytes())
        for v in index["vectors"]
        if not v["encrypted"] and not v.get("expect_decrypt_error")
    ]


def _core() -> Swim:
    return Swim(lan(), name="py", addr=("127.0.0.31", 7946), rng=random.Random(5), now=0.0)


def test_real_serf_traffic_is_accepted() -> None:
    core = _core()
    caps = _plain_captures()
    assert len(caps) > 40
    now = 0.0
    for transport, data in caps:
        now += 0.001
        if transport == "udp":
            core.receive_datagram(("127.0.0.11", 7946), data, now=now)
        elif data[:1] in (b"\x06", b"\x09"):
            core.receive_stream(("127.0.0.1", 40000), data, now=now)
    rejected = [e for e in iter(core.next_event, None) if isinstance(e, MessageRejected)]
    names = {m.name for m in core.members()}
    assert {"alpha", "beta", "gamma"} <= names
    # serf's own captures decode; only the deliberately foreign/labelled ones may be refused
    assert len(rejected) <= 3, rejected


def test_mutated_traffic_never_raises() -> None:
    rng = random.Random(1234)
    caps = _plain_captures()
    core = _core()
    now = 0.0
    for round_ in range(6):
        for transport, data in caps:
            buf = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                if op < 0.5 and buf:
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
                elif op < 0.75 and buf:
                    del buf[rng.randrange(len(buf)) :]
                else:
                    buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
            now += 0.003
            if transport == "udp":
                core.receive_datagram(("127.0.0.11", 7946), bytes(buf), now=now)
            else:
                core.receive_stream(("127.0.0.1", 40000), bytes(buf), now=now)
            if (d := core.next_deadline()) is not None and d <= now:
                core.handle_timer(now=now)
            core.datagrams_to_send()
            for req in core.streams_to_open():
                if round_ % 2:
                    core.stream_failed(req.stream_id, now=now)
                else:
                    core.receive_stream_reply(req.stream_id, bytes(buf), now=now)
            list(iter(core.next_event, None))
    stats = core.stats()
    assert stats["decode_errors"] > 100
    assert stats["datagrams_received"] > 100
