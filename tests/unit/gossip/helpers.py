"""Test helpers for the gossip core: a fake link between ``Swim`` cores, with explicit virtual time.

``MiniCluster`` wires several ``Swim`` cores through an in-memory link: datagrams, stream requests and
their replies are delivered after ``latency`` seconds of virtual time, in a deterministic order (a
heap of ``(time, sequence)``). Nothing here touches sockets, threads or the real clock.

Switches: ``crash(name)`` (the node stops: its timers stop, traffic to it is lost, streams to it fail
at their timeout), ``partition(*groups)``/``heal()``, ``drop_udp(src, dst)`` (one direction of UDP only)
and ``intercept`` (a predicate that may drop any datagram). Every datagram is recorded in ``sent`` so
tests can decode exactly what went on the wire; every event in ``events[name]``.

``decode(data)`` and ``datagrams(core)`` decode plaintext wire bytes into message lists.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from meshnet.core.drive import drain
from meshnet.gossip import packet
from meshnet.gossip.config import GossipConfig, lan
from meshnet.gossip.messages import Message
from meshnet.gossip.swim import Swim

Addr = tuple[str, int]


def decode(data: bytes) -> list[Message]:
    """Decode one plaintext datagram into its messages."""
    return packet.decode_datagram(data, keyring=None)


def datagrams(core: Swim) -> list[tuple[Addr, list[Message], bytes]]:
    """Drain ``core``'s datagrams as (destination, decoded messages, raw bytes)."""
    return [(addr, decode(data), data) for addr, data in core.datagrams_to_send()]


def addr_of(i: int) -> Addr:
    return (f"10.0.0.{i + 1}", 7946)


@dataclass
class Sent:
    """One datagram that went on the (fake) wire."""

    at: float
    src: str
    dst: Addr
    data: bytes
    delivered: bool

    @property
    def messages(self) -> list[Message]:
        return decode(self.data)


@dataclass(order=True)
class _Item:
    at: float
    seq: int
    kind: str = field(compare=False)
    args: tuple = field(compare=False)


class MiniCluster:
    """Several ``Swim`` cores on a deterministic fake link. Names are ``n0``, ``n1``...

    ``now`` only moves forward through ``run_until``/``run_for``; every input is given that ``now``.
    """

    def __init__(
        self,
        n: int = 0,
        *,
        config: GossipConfig | None = None,
        seed: int = 0,
        latency: float = 0.001,
        serf_compat: bool = True,
        start: float = 0.0,
    ) -> None:
        self.config = config or lan()
        self.seed = seed
        self.latency = latency
        self.serf_compat = serf_compat
        self.now = start
        self.nodes: dict[str, Swim] = {}
        self.addrs: dict[str, Addr] = {}
        self.by_addr: dict[Addr, str] = {}
        self.events: dict[str, list[Any]] = {}
        self.sent: list[Sent] = []
        self.down: set[str] = set()
        self.groups: dict[str, int] | None = None
        self.udp_blocked: set[tuple[str, str]] = set()
        self.intercept: Callable[[str, Addr, bytes], bool] | None = None
        self.streams_failed = 0
        #: Every stream request: (time, opener, request).
        self.stream_log: list[tuple[float, str, Any]] = []
        self._heap: list[_Item] = []
        self._seq = 0
        self._ephemeral = 40000
        for _ in range(n):
            self.add()

    # -- building ---------------------------------------------------------------------------------

    def add(self, name: str | None = None, *, addr: Addr | None = None, **kwargs: Any) -> Swim:
        """Create a node (``n<i>`` at ``10.0.0.<i+1>:7946`` unless given) at the current time."""
        i = len(self.nodes)
        name = name or f"n{i}"
        addr = addr or addr_of(i)
        kwargs.setdefault("serf_compat", self.serf_compat)
        core = Swim(
            self.config,
            name=name,
            addr=addr,
            rng=random.Random(f"{self.seed}:{name}"),
            now=self.now,
            **kwargs,
        )
        self.nodes[name] = core
        self.addrs[name] = addr
        self.by_addr[addr] = name
        self.events.setdefault(name, [])
        self.down.discard(name)
        self._flush(name)
        return core

    def join(self, name: str, seeds: Iterable[str]) -> None:
        """``name`` joins through the named seeds, now."""
        self.nodes[name].join([self.addrs[s] for s in seeds], now=self.now)
        self._flush(name)

    def join_all(self, seed: str = "n0") -> None:
        """Every node but ``seed`` joins through ``seed``."""
        for name in self.nodes:
            if name != seed:
                self.join(name, [seed])

    def call(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call an input method of one core now and deliver its outputs."""
        result = getattr(self.nodes[name], method)(*args, now=self.now, **kwargs)
        self._flush(name)
        return result

    # -- switches ---------------------------------------------------------------------------------

    def crash(self, name: str) -> None:
        self.down.add(name)

    def partition(self, *groups: Iterable[str]) -> None:
        self.groups = {n: gi for gi, g in enumerate(groups) for n in g}

    def heal(self) -> None:
        self.groups = None
        self.udp_blocked.clear()

    def drop_udp(self, src: str, dst: str) -> None:
        self.udp_blocked.add((src, dst))

    def reachable(self, src: str, dst: str | None) -> bool:
        if dst is None or dst in self.down or src in self.down:
            return False
        return self.groups is None or self.groups.get(src, -1) == self.groups.get(dst, -2)

    # -- reads ------------------------------------------------------------------------------------

    def view(self, name: str) -> dict[str, str]:
        """name -> state as ``name`` sees the cluster."""
        return {m.name: m.state for m in self.nodes[name].members()}

    def events_of(self, name: str, cls: type) -> list[Any]:
        return [e for e in self.events[name] if isinstance(e, cls)]

    def converged(self, names: Iterable[str] | None = None) -> bool:
        """Every live node sees exactly the live nodes alive (and the rest not alive)."""
        live = sorted(n for n in (names or self.nodes) if n not in self.down)
        for n in live:
            v = self.view(n)
            if sorted(k for k, s in v.items() if s == "alive") != live:
                return False
        return True

    def sent_by(self, name: str, since: float = 0.0) -> list[Sent]:
        return [s for s in self.sent if s.src == name and s.at >= since]

    # -- running ----------------------------------------------------------------------------------

    def run_until(self, t: float, until: Callable[[], bool] | None = None) -> bool:
        """Process everything due up to ``t`` (or until ``until()`` holds). Returns ``until``'s value."""
        while self._heap and self._heap[0].at <= t:
            item = heapq.heappop(self._heap)
            self.now = max(self.now, item.at)
            getattr(self, "_on_" + item.kind)(*item.args)
            if until is not None and until():
                return True
        self.now = max(self.now, t)
        return until() if until is not None else True

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def _push(self, at: float, kind: str, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Item(at, self._seq, kind, args))

    def _flush(self, name: str) -> None:
        core = self.nodes[name]
        out = drain(core)
        for dst, data in out.datagrams:
            dst_name = self.by_addr.get(dst)
            ok = self.reachable(name, dst_name) and (name, dst_name) not in self.udp_blocked
            if ok and self.intercept is not None and not self.intercept(name, dst, data):
                ok = False
            self.sent.append(Sent(self.now, name, dst, data, ok))
            if ok:
                self._push(self.now + self.latency, "datagram", dst_name, self.addrs[name], data)
        for req in out.streams:
            self.stream_log.append((self.now, name, req))
            dst_name = self.by_addr.get(req.addr)
            if self.reachable(name, dst_name):
                self._push(self.now + self.latency, "stream", name, dst_name, req)
            else:
                self._push(self.now + req.timeout, "stream_fail", name, req.stream_id)
        self.events[name].extend(out.events)
        if out.deadline is not None:
            self._push(out.deadline, "timer", name)

    def _on_timer(self, name: str) -> None:
        if name in self.down:
            return
        core = self.nodes[name]
        d = core.next_deadline()
        if d is not None and d <= self.now:
            core.handle_timer(now=self.now)
            self._flush(name)

    def _on_datagram(self, dst: str, src: Addr, data: bytes) -> None:
        if dst in self.down:
            return
        self.nodes[dst].receive_datagram(src, data, now=self.now)
        self._flush(dst)

    def _on_stream(self, src: str, dst: str, req: Any) -> None:
        if not self.reachable(src, dst):
            self._push(self.now + req.timeout, "stream_fail", src, req.stream_id)
            return
        core = self.nodes[dst]
        assert core.stream_frame_length(req.data) == len(req.data)
        self._ephemeral += 1
        reply = core.receive_stream(("127.0.0.1", self._ephemeral), req.data, now=self.now)
        self._flush(dst)
        if req.expect_reply:
            if reply is None:
                self._push(self.now + self.latency, "stream_fail", src, req.stream_id)
            else:
                self._push(self.now + self.latency, "stream_reply", src, req.stream_id, reply)

    def _on_stream_reply(self, src: str, stream_id: int, data: bytes) -> None:
        if src in self.down:
            return
        self.nodes[src].receive_stream_reply(stream_id, data, now=self.now)
        self._flush(src)

    def _on_stream_fail(self, src: str, stream_id: int) -> None:
        if src in self.down:
            return
        self.streams_failed += 1
        self.nodes[src].stream_failed(stream_id, now=self.now)
        self._flush(src)
