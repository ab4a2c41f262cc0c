"""A simulated cluster: N ``Swim`` cores on a virtual network, driven by ``meshnet.core.drive``.

Theory of operation. Each ``SimNode`` owns at most one core (``None`` while crashed or stopped) and is
identified by a fake address ``127.a.b.c:7946`` (``node_addr``); nothing is ever sent anywhere, the
address is just the key the cores use. The node's randomness is ``Random(f"{seed}:{name}")`` (later
lives after a restart: ``f"{seed}:{name}:{life}"``), the network's is ``Random(f"{seed}:net")`` and
the scenario's is ``Random(f"{seed}:cluster")``, so one integer seed fixes the whole run.

Every input to a core is followed by the shared drive step (``drive.drain`` after a receive or an
API call, ``drive.fire_due`` on a timer), and ``_process`` turns the outputs into heap entries:

* datagrams -> ``Network.datagram_delays`` -> zero or more ``DGRAM`` entries at the destination;
* stream requests -> one ``STREAM_REQ`` hop (one RTT for the connect, then one one-way latency);
  the target's ``receive_stream`` reply comes back one latency later as ``STREAM_REPLY``, through
  ``receive_stream_reply``. A stream to a crashed, unknown or partitioned-away node, or one whose
  reply would be later than its timeout, ends in ``stream_failed`` at the timeout (``STREAM_FAIL``);
  a request answered with nothing when a reply was expected fails one latency later (EOF). Frames
  are checked with ``stream_frame_length`` on the receiving core, the way the runtime reads them;
  ``endpoints`` are virtual stream peers (an address that is no node, answered by a function), used
  to hand a core a synthetic push-pull reply;
* events -> the ``Trace``, the node's ``MemberView`` (see ``sim.checks``) and any listeners;
* the next deadline -> a lazy ``TIMER`` entry (stale ones are ignored when popped).

A crash drops the core and everything in flight to or from that life of the node; a restart makes
a new core with the same name and address (``life`` counts them). A graceful leave calls
``leave()`` and stops the node when the core reports ``LeaveCompleted``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from meshnet.core.drive import Outputs, drain, drain_stacked, fire_due, fire_due_stacked
from meshnet.gossip import packet
from sim.checks import MemberView, membership_converged
from sim.network import PROFILES, LinkParams, Network
from sim.scheduler import US_PER_S, Scheduler, to_us
from sim.trace import Trace

__all__ = ["Cluster", "SimNode", "node_addr", "default_core_factory", "Addr"]

Addr = tuple[str, int]
PORT = 7946
#: After this many timer firings at one instant that leave the deadline still due, the core is stuck.
_MAX_REFIRES = 1000


#: LZW memos for a simulated cluster: every datagram a node compresses is inflated by its receiver in
#: this process, so the inflate memo must hold the datagrams in flight (a hit changes no byte).
SIM_LZW_MEMO = (2048, 32 << 20)
packet.set_lzw_memo(*SIM_LZW_MEMO)


def node_addr(index: int, port: int = PORT) -> Addr:
    """The fake loopback address of node ``index``: 127.0.0.2, 127.0.0.3, ... (identifiers only)."""
    n = index + 2
    return (f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", port)


def default_core_factory(config: Any, *, name: str, addr: Addr, rng: random.Random, now: float) -> Any:
    """Build the real ``meshnet.gossip.swim.Swim`` core."""
    from meshnet.gossip.swim import Swim

    return Swim(config, name=name, addr=addr, rng=rng, now=now)


class SimNode:
    """One simulated member: name, address, its current core (or None) and counters."""

    __slots__ = (
        "idx", "name", "addr", "core", "running", "leaving", "left", "life", "timer_us", "refires",
        "started_us", "view", "sent_datagrams", "sent_bytes", "recv_datagrams", "streams_opened",
        "stream_bytes", "rider", "state",
    )  # fmt: skip

    def __init__(self, idx: int, name: str, addr: Addr) -> None:
        self.idx = idx
        self.name = name
        self.addr = addr
        self.core: Any = None
        self.running = False
        self.leaving = False
        self.left = False
        self.life = 0
        self.timer_us: int | None = None
        self.refires = 0
        self.started_us = 0
        self.view = MemberView(name)
        self.sent_datagrams = 0
        self.sent_bytes = 0
        self.recv_datagrams = 0
        self.streams_opened = 0
        self.stream_bytes = 0
        #: The rider core (NetworkDB) beside ``core``, or None; ``state`` outlives crashes (a state dir).
        self.rider: Any = None
        self.state: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = "running" if self.running else ("left" if self.left else "down")
        return f"<SimNode {self.name} {self.addr[0]} {state} life={self.life}>"


NodeRef = SimNode | str | int


class Cluster:
    """N simulated nodes, a network and a scheduler; see the module comment.

    ``config`` is a ``GossipConfig`` (default ``lan()``); ``link`` the default ``LinkParams`` or a
    profile name (``"lan"``/``"local"``); ``core_factory(config, name=, addr=, rng=, now=)`` builds a
    core (default: ``Swim``). Nodes are created stopped; ``start``/``bootstrap`` bring them up.
    """

    def __init__(
        self,
        n: int = 0,
        *,
        seed: int = 0,
        config: Any = None,
        link: LinkParams | str = "lan",
        core_factory: Callable[..., Any] | None = None,
        trace: Trace | None = None,
        check_frames: bool = True,
        rider_factory: Callable[[SimNode, float], Any] | None = None,
    ) -> None:
        if config is None:
            from meshnet.gossip.config import lan

            config = lan()
        self.seed = seed
        self.config = config
        self.rng = random.Random(f"{seed}:cluster")
        self.network = Network(
            random.Random(f"{seed}:net"), PROFILES[link] if isinstance(link, str) else link
        )
        self.core_factory = core_factory or default_core_factory
        self.trace = trace if trace is not None else Trace()
        self.check_frames = check_frames
        #: ``fn(node, now) -> rider`` builds a rider core (e.g. NetworkDB) beside each new core.
        self.rider_factory = rider_factory
        self.sched = Scheduler()
        self._k_timer = self.sched.register(self._on_timer)
        self._k_dgram = self.sched.register(self._on_dgram)
        self._k_sreq = self.sched.register(self._on_stream_request)
        self._k_srep = self.sched.register(self._on_stream_reply)
        self._k_sfail = self.sched.register(self._on_stream_fail)
        self.nodes: list[SimNode] = []
        self.by_name: dict[str, SimNode] = {}
        self.by_addr: dict[Addr, SimNode] = {}
        #: Callbacks ``fn(node, t_us, event, flat)`` for every core event (``flat`` from ``trace.describe_event``).
        self.listeners: list[Callable[[SimNode, int, Any, tuple[Any, ...]], None]] = []
        #: Callbacks ``fn(node, t_us, event)`` for every rider event, run before the step's sends.
        self.rider_listeners: list[Callable[[SimNode, int, Any], None]] = []
        #: Problems the simulator itself noticed in a core (stuck timer, bad stream frame).
        self.violations: list[str] = []
        #: When the network last stopped being faulty (heal, loss off), for safety grace periods.
        self.last_net_fault_end_us = 0
        #: Optional ``fn(src, dst, data) -> data | None`` applied to every datagram sent (None drops it).
        self.datagram_filter: Callable[[SimNode, SimNode, bytes], bytes | None] | None = None
        #: Virtual stream endpoints: an address that is no node, answered by ``fn(src_node, data, now)``.
        self.endpoints: dict[Addr, Callable[[SimNode, bytes, float], bytes | None]] = {}
        self.unknown_dst = 0
        self.dropped_at_down = 0
        self.streams_failed = 0
        self._name_width = max(4, len(str(max(n - 1, 0))))
        for _ in range(n):
            self.add_node()

    # -- time -------------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Virtual time in seconds."""
        return self.sched.now_us / US_PER_S

    @property
    def now_us(self) -> int:
        return self.sched.now_us

    def run_until(self, t: float) -> None:
        """Advance virtual time to ``t`` seconds, processing everything due."""
        self.sched.run_until(to_us(t))

    def run_for(self, seconds: float = 0.0, *, us: int = 0) -> None:
        """Advance virtual time by ``seconds`` (plus ``us`` microseconds)."""
        self.sched.run_until(self.sched.now_us + to_us(seconds) + us)

    def run_until_true(self, pred: Callable[[], bool], timeout: float, every: float = 0.05) -> float | None:
        """Advance in steps of ``every`` s until ``pred()``; return the time it became true, or None."""
        end = self.sched.now_us + to_us(timeout)
        step = max(1, to_us(every))
        while True:
            if pred():
                return self.now
            if self.sched.now_us >= end:
                return None
            self.sched.run_until(min(end, self.sched.now_us + step))

    def at(self, t: float, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` at virtual time ``t`` seconds (scenario scripting)."""
        self.sched.call_at(to_us(t), fn)

    # -- membership of the simulation -------------------------------------------------------------

    def add_node(self, name: str | None = None) -> SimNode:
        """Create a (stopped) node with the next fake address."""
        idx = len(self.nodes)
        if name is None:
            name = f"n{idx:0{self._name_width}d}"
        if name in self.by_name:
            raise ValueError(f"duplicate node name {name!r}")
        node = SimNode(idx, name, node_addr(idx, getattr(self.config, "port", PORT)))
        self.nodes.append(node)
        self.by_name[name] = node
        self.by_addr[node.addr] = node
        return node

    def node(self, ref: NodeRef) -> SimNode:
        """A node by object, name or index."""
        if isinstance(ref, SimNode):
            return ref
        if isinstance(ref, int):
            return self.nodes[ref]
        return self.by_name[ref]

    def live_nodes(self) -> list[SimNode]:
        """Running nodes that are not leaving (the set every live node should see as alive)."""
        return [n for n in self.nodes if n.running and not n.leaving]

    def running_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.running]

    def pick_seeds(self, exclude: SimNode, k: int) -> list[SimNode]:
        """Up to ``k`` random live nodes other than ``exclude`` (scenario rng)."""
        cands = [n for n in self.nodes if n.running and not n.leaving and n is not exclude]
        return self.rng.sample(cands, min(k, len(cands)))

    def _addrs(self, seeds: Iterable[NodeRef | Addr]) -> list[Addr]:
        out: list[Addr] = []
        for s in seeds:
            if isinstance(s, tuple):
                out.append(s)
            else:
                out.append(self.node(s).addr)
        return out

    def start(self, ref: NodeRef, seeds: Sequence[NodeRef | Addr] = ()) -> SimNode:
        """Create the node's core now and join ``seeds`` (none: it starts a cluster alone)."""
        node = self.node(ref)
        if node.running:
            raise ValueError(f"{node.name} is already running")
        t = self.sched.now_us
        node.life += 1
        seed_str = f"{self.seed}:{node.name}" if node.life == 1 else f"{self.seed}:{node.name}:{node.life}"
        node.core = self.core_factory(
            self.config, name=node.name, addr=node.addr, rng=random.Random(seed_str), now=t / US_PER_S
        )
        node.running = True
        node.leaving = node.left = False
        node.timer_us = None
        node.started_us = t
        node.view = MemberView(node.name)
        node.rider = self.rider_factory(node, t / US_PER_S) if self.rider_factory is not None else None
        addrs = self._addrs(seeds)
        self.trace.record(
            t,
            node.name,
            "start" if node.life == 1 else "restart",
            node.addr[0],
            ",".join(a[0] for a in addrs),
        )
        if addrs:
            node.core.join(addrs, now=t / US_PER_S)
        self._step(node, t)
        return node

    def restart(self, ref: NodeRef, seeds: Sequence[NodeRef | Addr] | None = None, k: int = 3) -> SimNode:
        """Start a crashed/stopped node again as a new core; seeds default to ``k`` random live nodes."""
        node = self.node(ref)
        if seeds is None:
            seeds = self.pick_seeds(node, k)
        return self.start(node, seeds)

    def crash(self, ref: NodeRef) -> None:
        """SIGKILL: the core and its state vanish; in-flight traffic to or from it is lost."""
        node = self.node(ref)
        if not node.running:
            return
        node.running = False
        node.leaving = False
        node.core = None
        node.rider = None
        node.timer_us = None
        self.trace.record(self.sched.now_us, node.name, "crash")

    def leave(self, ref: NodeRef) -> None:
        """Graceful leave: ``core.leave()``; the node stops when the core reports ``LeaveCompleted``."""
        node = self.node(ref)
        if not node.running or node.leaving:
            return
        t = self.sched.now_us
        node.leaving = True
        self.trace.record(t, node.name, "leave")
        node.core.leave(now=t / US_PER_S)
        self._step(node, t)

    def join(self, ref: NodeRef, seeds: Sequence[NodeRef | Addr]) -> None:
        """Ask a running node to join ``seeds`` (push-pull with each)."""
        node = self.node(ref)
        t = self.sched.now_us
        node.core.join(self._addrs(seeds), now=t / US_PER_S)
        self._step(node, t)

    def send_user(self, ref: NodeRef, payload: bytes) -> None:
        """Have a node gossip a user broadcast (``Swim.send_user``)."""
        node = self.node(ref)
        t = self.sched.now_us
        self.trace.record(t, node.name, "send_user", len(payload))
        node.core.send_user(payload, now=t / US_PER_S)
        self._step(node, t)

    def bootstrap(
        self,
        nodes: Sequence[NodeRef] | None = None,
        *,
        stagger: float = 0.01,
        seeds_per_join: int = 3,
        start_at: float | None = None,
    ) -> float:
        """Schedule staggered starts: the first node alone, each later one joining ``seeds_per_join``
        random nodes already running when its turn comes. Returns the time of the last start."""
        todo = [self.node(r) for r in (nodes if nodes is not None else self.nodes)]
        t0 = self.now if start_at is None else start_at
        for i, node in enumerate(todo):
            self.at(
                t0 + i * stagger, lambda node=node: self.start(node, self.pick_seeds(node, seeds_per_join))
            )
        return t0 + (len(todo) - 1) * stagger

    @classmethod
    def boot(cls, n: int, *, seed: int = 0, timeout: float = 120.0, **kwargs: Any) -> Cluster:
        """A cluster of ``n`` nodes, bootstrapped and run until its membership converged."""
        c = cls(n, seed=seed, **kwargs)
        c.bootstrap(stagger=0.05)
        c.run_for(0.05 * n)
        if c.run_until_true(lambda: membership_converged(c), timeout) is None:
            raise AssertionError(f"cluster of {n} (seed {seed}) did not converge in {timeout}s")
        return c

    # -- network faults ---------------------------------------------------------------------------

    def partition(self, groups: Iterable[Iterable[NodeRef]]) -> None:
        """Split into groups that cannot reach each other; unlisted nodes form group 0."""
        idx_groups = [[self.node(r).idx for r in g] for g in groups]
        self.network.partition(idx_groups)
        names = "|".join(",".join(self.nodes[i].name for i in g) for g in idx_groups)
        self.trace.record(self.sched.now_us, "-", "partition", names)

    def block_one_way(self, src: Iterable[NodeRef], dst: Iterable[NodeRef]) -> None:
        """Asymmetric cut: ``src`` nodes cannot send to ``dst`` nodes (the reverse still works)."""
        s = [self.node(r).idx for r in src]
        d = [self.node(r).idx for r in dst]
        self.network.block_one_way(s, d)
        self.trace.record(self.sched.now_us, "-", "block_one_way", repr(s), repr(d))

    def heal(self) -> None:
        """Remove all partitions."""
        if self.network.is_partitioned:
            self.last_net_fault_end_us = self.sched.now_us
        self.network.heal()
        self.trace.record(self.sched.now_us, "-", "heal")

    def set_loss(self, loss: float) -> None:
        """Set the default links' random loss probability."""
        from dataclasses import replace

        if self.network.default.loss > 0 and loss == 0:
            self.last_net_fault_end_us = self.sched.now_us
        self.network.set_default(replace(self.network.default, loss=loss))
        self.trace.record(self.sched.now_us, "-", "loss", loss)

    def with_rider(self, ref: NodeRef, fn: Callable[[Any, float], Any]) -> Any:
        """Call ``fn(rider, now)`` on a running node's rider (an API call), then run the drive step."""
        node = self.node(ref)
        if not node.running or node.rider is None:
            raise ValueError(f"{node.name} has no running rider")
        t = self.sched.now_us
        result = fn(node.rider, t / US_PER_S)
        self._step(node, t)
        return result

    # -- the drive step ---------------------------------------------------------------------------

    def _step(self, node: SimNode, t: int) -> None:
        """Drain a node after an input: its core alone, or the core and its rider (``drain_stacked``)."""
        if node.rider is None:
            self._process(node, drain(node.core), t)
            return
        out = drain_stacked(node.core, node.rider, now=t / US_PER_S, mute_rider=node.leaving)
        self._rider_out(node, out, t)
        self._process(node, out, t)

    def _rider_out(self, node: SimNode, out: Outputs, t: int) -> None:
        # Rider events first: a shell persists e.g. a high-water mark before the step's sends.
        for ev in out.rider_events:
            for fn in self.rider_listeners:
                fn(node, t, ev)

    def _process(self, node: SimNode, out: Outputs, t: int) -> None:
        if out.datagrams:
            net = self.network
            push = self.sched.push
            by_addr = self.by_addr
            k = self._k_dgram
            for addr, data in out.datagrams:
                node.sent_datagrams += 1
                node.sent_bytes += len(data)
                dst = by_addr.get(addr)
                if dst is None:
                    self.unknown_dst += 1
                    continue
                if self.datagram_filter is not None:
                    data = self.datagram_filter(node, dst, data)
                    if data is None:
                        continue
                for d in net.datagram_delays(node.idx, dst.idx, len(data)):
                    push(t + d, k, dst, (node.idx, data))
        if out.streams:
            for req in out.streams:
                self._open_stream(node, req, t)
        if out.events:
            for ev in out.events:
                self._on_event(node, t, ev)
        if not node.running:
            return
        d = out.deadline
        if d is None:
            node.timer_us = None
            return
        due = math.ceil(d * US_PER_S)
        if due / US_PER_S < d:
            due += 1
        if due <= t:
            due = t
            node.refires += 1
            if node.refires > _MAX_REFIRES:
                self.violations.append(
                    f"t={t / 1e6:.6f} {node.name}: deadline {d!r} stays due after handle_timer"
                )
                self.trace.record(t, node.name, "violation", "stuck timer")
                due = t + 1000
                node.refires = 0
        else:
            node.refires = 0
        if due != node.timer_us:
            node.timer_us = due
            self.sched.push(due, self._k_timer, node, node.life)

    def _on_event(self, node: SimNode, t: int, ev: Any) -> None:
        flat = self.trace.record_event(t, node.name, ev)
        kind = flat[0]
        view = node.view
        if kind == "MemberJoined" or kind == "MemberSuspected":
            view.mark_up(flat[1], t)
        elif kind == "MemberUpdated":
            if flat[3] in ("alive", "suspect"):
                view.mark_up(flat[1], t)
        elif kind == "MemberFailed" or kind == "MemberLeft" or kind == "MemberReaped":
            if flat[1] != node.name:
                view.mark_down(flat[1], t)
        elif kind == "LeaveCompleted":
            node.running = False
            node.left = True
            node.core = None
            node.rider = None
            node.timer_us = None
            self.trace.record(t, node.name, "stopped", "left")
        for fn in self.listeners:
            fn(node, t, ev, flat)

    def _on_timer(self, t: int, node: SimNode, life: int) -> None:
        if life != node.life or node.timer_us != t or not node.running:
            return
        node.timer_us = None
        if node.rider is None:
            self._process(node, fire_due(node.core, t / US_PER_S), t)
        else:
            out = fire_due_stacked(node.core, node.rider, t / US_PER_S, mute_rider=node.leaving)
            self._rider_out(node, out, t)
            self._process(node, out, t)

    def _on_dgram(self, t: int, node: SimNode, payload: tuple[int, bytes]) -> None:
        if not node.running:
            self.dropped_at_down += 1
            return
        src, data = payload
        node.recv_datagrams += 1
        self.trace.packet(t, src, node.idx, data)
        core = node.core
        core.receive_datagram(self.nodes[src].addr, data, now=t / US_PER_S)
        self._step(node, t)

    # -- streams ----------------------------------------------------------------------------------

    def _framed(self, reader: SimNode, data: bytes, sid: tuple[SimNode, int, int], t: int) -> bytes | None:
        """What a runtime reading ``data`` with ``reader``'s framing would hand its core (None: nothing)."""
        if not self.check_frames:
            return data
        try:
            n = reader.core.stream_frame_length(data)
        except Exception as exc:  # a DecodeError: the runtime closes the stream
            n = None
            reason = f"stream_frame_length raised {type(exc).__name__}"
        else:
            reason = f"stream_frame_length says {n}"
        if n == len(data):
            return data
        self.violations.append(
            f"t={t / 1e6:.6f} {reader.name}: stream {sid[2]} of {len(data)} bytes: {reason}"
        )
        self.trace.record(t, reader.name, "frame_mismatch", sid[2], -1 if n is None else n, len(data))
        if n is None or n > len(data):
            return None
        return data[:n]

    def _open_stream(self, node: SimNode, req: Any, t: int) -> None:
        node.streams_opened += 1
        node.stream_bytes += len(req.data)
        sid = (node, node.life, req.stream_id)
        deadline = t + to_us(req.timeout)
        dst = self.by_addr.get(req.addr)
        net = self.network
        if dst is None and req.addr in self.endpoints:
            reply = self.endpoints[req.addr](node, req.data, t / US_PER_S)
            rtt = 2 * net.one_way_us(node.idx, node.idx) + net.one_way_us(node.idx, node.idx)
            if not req.expect_reply:
                return
            if reply is None:
                self.sched.push(t + rtt, self._k_sfail, sid, "eof")
            else:
                self.sched.push(t + rtt, self._k_srep, sid, (node, reply, deadline))
            return
        if dst is None or not dst.running or not net.connected(node.idx, dst.idx):
            self.sched.push(deadline, self._k_sfail, sid, "unreachable")
            return
        arrive = t + net.one_way_us(node.idx, dst.idx) + net.one_way_us(dst.idx, node.idx)
        arrive += net.one_way_us(node.idx, dst.idx)
        if arrive > deadline:
            self.sched.push(deadline, self._k_sfail, sid, "timeout")
            return
        self.sched.push(arrive, self._k_sreq, dst, (sid, req, deadline))

    def _on_stream_request(self, t: int, dst: SimNode, payload: tuple[Any, Any, int]) -> None:
        sid, req, deadline = payload
        src = sid[0]
        if not dst.running or not self.network.connected(src.idx, dst.idx):
            self.sched.push(deadline, self._k_sfail, sid, "unreachable")
            return
        self.trace.packet(t, src.idx, dst.idx, req.data)
        data = self._framed(dst, req.data, sid, t)
        if data is None:
            self.sched.push(deadline, self._k_sfail, sid, "bad frame")
            return
        core = dst.core
        reply = core.receive_stream(src.addr, data, now=t / US_PER_S)
        self._step(dst, t)
        if not req.expect_reply:
            return
        back = t + self.network.one_way_us(dst.idx, src.idx)
        if reply is None:
            self.sched.push(min(back, deadline), self._k_sfail, sid, "eof")
        elif back > deadline:
            self.sched.push(deadline, self._k_sfail, sid, "timeout")
        else:
            self.sched.push(back, self._k_srep, sid, (dst, reply, deadline))

    def _on_stream_reply(
        self, t: int, sid: tuple[SimNode, int, int], payload: tuple[SimNode, bytes, int]
    ) -> None:
        src, life, stream_id = sid
        dst, reply, deadline = payload
        if life != src.life or not src.running:
            return
        if not self.network.connected(src.idx, dst.idx):
            self.sched.push(deadline, self._k_sfail, sid, "unreachable")
            return
        self.trace.packet(t, dst.idx, src.idx, reply)
        data = self._framed(src, reply, sid, t)
        if data is None:
            self.sched.push(deadline, self._k_sfail, sid, "bad frame")
            return
        src.core.receive_stream_reply(stream_id, data, now=t / US_PER_S)
        self._step(src, t)

    def _on_stream_fail(self, t: int, sid: tuple[SimNode, int, int], reason: str) -> None:
        src, life, stream_id = sid
        if life != src.life or not src.running:
            return
        self.streams_failed += 1
        src.core.stream_failed(stream_id, now=t / US_PER_S)
        self._step(src, t)

    # -- reporting --------------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Cluster-wide counters (datagrams and bytes sent, streams, drops, events run)."""
        return {
            "datagrams": sum(n.sent_datagrams for n in self.nodes),
            "datagram_bytes": sum(n.sent_bytes for n in self.nodes),
            "streams": sum(n.streams_opened for n in self.nodes),
            "stream_bytes": sum(n.stream_bytes for n in self.nodes),
            "streams_failed": self.streams_failed,
            "lost": self.network.lost,
            "cut": self.network.cut,
            "unknown_dst": self.unknown_dst,
            "dropped_at_down": self.dropped_at_down,
            "sched_events": self.sched.events_run,
        }
