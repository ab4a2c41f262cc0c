"""The trio shell around one ``Swim`` core: sockets, the single timer, TCP exchanges.

Theory of operation (docs/gossip-core.md, "How a driver drives it"):

- ``Node.run`` opens one nursery. It owns one UDP socket and one TCP listener bound to the same
  IP:port, the UDP receive and send tasks, the TCP accept task and one task per TCP exchange, the single
  deadline timer task, the retry-join task and (optionally) the local HTTP API server.
- Every input goes through ``_feed``: call the core with ``now = trio.current_time()``, then
  ``meshnet.core.drive.drain`` it and ``_dispatch`` the outputs *synchronously* (no await in between),
  so two core calls never interleave with half-dispatched outputs. Datagrams go to a bounded queue that
  one task sends from the bound UDP socket (memberlist sends from the bound port); each StreamRequest
  gets its own task; events are logged and mirrored into the state the API reads; the timer's cancel
  scope is moved to the core's next deadline (the one timer, re-armed in place).
- Socket and I/O failures never escape: an outbound exchange that fails or times out becomes
  ``stream_failed(stream_id)``; inbound garbage, oversize (20 MiB) or slow streams are counted and
  closed. No protocol decision lives here.
- Graceful leave: ``leave()`` asks the core to leave and waits for ``LeaveCompleted`` (bounded by
  ``leave_timeout``); ``stop()`` then cancels the nursery. Cancelling ``run`` without a leave is a crash
  as far as peers can tell: they detect the node failed.
- NetworkDB (``networkdb=DbSettings(...)``, see ``db.py``): the NetworkDB core rides on Swim's user
  messages. Every step then drains the pair with ``drive.drain_stacked`` (the timer with
  ``fire_due_stacked``), and ``_dispatch`` hands NetworkDB's events to ``DbShell.handle_events`` before it
  sends anything, so a raised Lamport high-water mark is on disk first; if that write fails the node stops
  (``fatal``) without sending. Once the node is leaving, NetworkDB's outputs are dropped (Swim accepts no
  more user messages). The state directory is opened and locked before the sockets are bound.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from meshnet.core.drive import Outputs, drain, drain_stacked, fire_due, fire_due_stacked
from meshnet.core.errors import ConfigError, DecodeError
from meshnet.gossip import events as ev
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.swim import Swim
from meshnet.runtime import api
from meshnet.runtime.db import DbSettings, DbShell, StateWriteError
from meshnet.runtime.state import StateDir

__all__ = ["Addr", "Node", "run_node", "MAX_STREAM_FRAME_BYTES"]

Addr = tuple[str, int]
T = TypeVar("T")

log = logging.getLogger("meshnet.agent")

#: Inbound and reply TCP frames larger than this are refused (a push-pull of ~100k members fits).
MAX_STREAM_FRAME_BYTES = 20 * 1024 * 1024
#: memberlist's UDP receive buffer.
UDP_RECV_BYTES = 65536
#: Datagrams waiting for the send task; beyond this the newest are dropped and counted.
DATAGRAM_QUEUE_LIMIT = 4096
#: Concurrent inbound TCP exchanges; beyond this new connections are closed at once and counted.
MAX_INBOUND_STREAMS = 512
_RECEIVE_CHUNK = 1 << 20
#: Below this a partial TCP frame is re-measured after every chunk (see ``Node._read_frame``).
_EAGER_CHECK_BYTES = 256 * 1024
_QUIET_CHECK_DELAY = 0.005


class FrameTooLarge(Exception):
    """A TCP frame grew past MAX_STREAM_FRAME_BYTES."""


class Node:
    """One gossip member on this host: the state the API reads, and the tasks that drive the core.

    ``bind`` may use port 0 (an ephemeral port, the same for UDP and TCP). ``advertise`` defaults to the
    bound address; an unspecified bind IP (0.0.0.0, ::) needs an explicit advertise address.
    ``seeds`` are joined at start and retried with backoff (serf's ``-retry-join``) until one join
    succeeds or another member shows up. ``on_event`` sees every core event after the node handled it.
    """

    def __init__(
        self,
        config: GossipConfig,
        *,
        name: str,
        bind: Addr,
        advertise: Addr | None = None,
        seeds: Sequence[Addr] = (),
        meta: bytes = b"",
        keyring: Any = None,
        rng: random.Random | None = None,
        swim_factory: Callable[..., Any] | None = None,
        on_event: Callable[[Any], None] | None = None,
        retry_join_interval: float = 1.0,
        retry_join_max_interval: float = 30.0,
        networkdb: DbSettings | None = None,
        services: Sequence[Any] = (),
    ) -> None:
        if not name:
            raise ConfigError("a node needs a non-empty name; pass --name")
        self.config = config
        self.name = name
        self.bind = _check_addr(bind, "bind")
        self.advertise = _check_addr(advertise, "advertise") if advertise is not None else None
        if self.advertise is None and ipaddress.ip_address(self.bind[0]).is_unspecified:
            raise ConfigError(
                f"bind address {self.bind[0]} cannot be advertised to peers; pass --advertise IP:PORT"
            )
        self.seeds = [_check_addr(s, "join") for s in seeds]
        self.meta = meta
        self.keyring = keyring
        self.rng = rng if rng is not None else random.Random()
        self._swim_factory = swim_factory or Swim
        self._on_event = on_event
        self._retry_join_interval = retry_join_interval
        self._retry_join_max_interval = retry_join_max_interval
        self._db_settings = networkdb
        #: Agent services beside NetworkDB (``meshnet/runtime/service.py``), in call order.
        self.services: list[Any] = list(services)
        if self.services and networkdb is None:
            raise ConfigError("agent services need NetworkDB; pass networkdb=DbSettings(...)")

        #: The core, created once the sockets are bound (its address needs the bound port).
        self.swim: Any = None
        #: NetworkDB beside the core (``networkdb=`` given), created with it.
        self.db: DbShell | None = None
        #: Why the node stopped itself (a state write failed), else None.
        self.fatal: str | None = None
        #: (ip, port) actually bound, set before ``run`` reports started.
        self.bound_addr: Addr | None = None
        self.started_at: float | None = None
        self.stats: dict[str, int] = {
            "udp_received": 0,
            "udp_sent": 0,
            "udp_bytes_received": 0,
            "udp_bytes_sent": 0,
            "tcp_bytes_received": 0,
            "tcp_bytes_sent": 0,
            "udp_send_errors": 0,
            "udp_receive_errors": 0,
            "udp_queue_dropped": 0,
            "tcp_in_accepted": 0,
            "tcp_in_refused_busy": 0,
            "tcp_in_errors": 0,
            "tcp_in_garbage": 0,
            "tcp_in_oversize": 0,
            "tcp_in_timeouts": 0,
            "tcp_out_opened": 0,
            "tcp_out_failed": 0,
            "core_errors": 0,
        }
        self.is_joined = False
        self.is_leaving = False
        self.leave_drained: bool | None = None

        self._nursery: trio.Nursery | None = None
        self._udp: trio.socket.SocketType | None = None
        self._dgram_send, self._dgram_recv = trio.open_memory_channel[tuple[Addr, bytes]](
            DATAGRAM_QUEUE_LIMIT
        )
        self._deadline: float | None = None
        self._timer_scope: trio.CancelScope | None = None
        self._inbound_active = 0
        self._udp_sending = False
        self._left = trio.Event()
        self._join_outcome = trio.Event()
        self._stopped = trio.Event()

    # -- reads (the API uses these) --

    @property
    def advertise_addr(self) -> Addr | None:
        """The address peers know us by (advertise, else the bound address)."""
        if self.bound_addr is None:
            return None
        if self.advertise is None:
            return self.bound_addr
        ip, port = self.advertise
        return (ip, port or self.bound_addr[1])

    def members(self) -> list[Any]:
        """Every member the core knows, self included, sorted by name (empty before ``run`` binds)."""
        return list(self.swim.members()) if self.swim is not None else []

    def gossip_stats(self) -> dict[str, int]:
        return dict(self.swim.stats()) if self.swim is not None else {}

    @property
    def health_score(self) -> int:
        return int(self.swim.health_score) if self.swim is not None else 0

    # -- control --

    async def run(self, *, api_path: str | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, start every task, report ``started(bound_addr)``, run until ``stop()`` or cancelled.

        Raises ConfigError (message names the fix) if the gossip address or the API path cannot be bound;
        nothing is started then.
        """
        state = loaded = None
        if self._db_settings is not None and self._db_settings.state_dir is not None:
            state = StateDir.open(self._db_settings.state_dir, self.name)
        try:
            if state is not None:
                loaded = state.load()
            udp, tcp = await _bind_udp_and_tcp(self.bind)
        except BaseException:
            if state is not None:
                state.close()
            raise
        api_sock = None
        try:
            if api_path is not None:
                api_sock = await api.open_api_socket(api_path)
            self.bound_addr = (self.bind[0], udp.getsockname()[1])
            self._udp = udp
            now = trio.current_time()
            self.started_at = now
            self.swim = self._swim_factory(
                self.config,
                name=self.name,
                addr=self.advertise_addr,
                meta=self.meta,
                keyring=self.keyring,
                rng=self.rng,
                now=now,
            )
            if self._db_settings is not None:
                # Restores persisted state right after construction, before any input (README).
                self.db = DbShell(
                    self._db_settings,
                    name=self.name,
                    rng=random.Random(self.rng.getrandbits(64)),
                    now=now,
                    has_seeds=bool(self.seeds),
                    state=state,
                    loaded=loaded,
                )
                for svc in self.services:
                    svc.attach(self)
            log.info(
                "agent %s listening on %s:%d (udp+tcp), advertising %s:%d",
                self.name,
                *self.bound_addr,
                *self.advertise_addr,  # type: ignore[misc]
            )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._udp_send_loop)
                nursery.start_soon(self._udp_receive_loop)
                nursery.start_soon(self._tcp_accept_loop, tcp)
                nursery.start_soon(self._timer_loop)
                if self.db is not None and self.db.state is not None:
                    nursery.start_soon(self.db.run_persister)
                for svc in self.services:
                    await nursery.start(functools.partial(svc.run))
                if api_sock is not None:
                    await nursery.start(api.serve_api, api_sock, self, api_path)
                if self.seeds:
                    self._join()
                    nursery.start_soon(self._retry_join_loop)
                else:
                    self._dispatch(self._drain(trio.current_time()))
                task_status.started(self.bound_addr)
        finally:
            self._nursery = None
            self._stopped.set()
            udp.close()
            tcp.close()
            if api_sock is not None:
                api_sock.close()
            if self.db is not None:
                self.db.flush_now()
            if state is not None:
                state.close()

    def stop(self) -> None:
        """Stop every task and close the sockets (no leave: call ``leave()`` first for that)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def leave(self) -> bool:
        """Leave gracefully: the core broadcasts our leave; wait until it drained or ``leave_timeout``.

        Returns whether the broadcast drained. Idempotent: a second call waits for the same leave.
        """
        if self.swim is None:
            return False
        if not self.is_leaving:
            for svc in reversed(self.services):
                try:
                    await svc.leave()
                except Exception:
                    log.exception("service %s failed to leave gracefully", svc.name)
            self.is_leaving = True
            log.info("leaving the cluster (waiting up to %.1fs for the broadcast)", self.config.leave_timeout)
            self._feed(lambda now: self.swim.leave(now=now))
        # The core bounds the whole leave (serf intent, then dead) by leave_timeout in total; the
        # extra second covers a core that never says so.
        with trio.move_on_after(self.config.leave_timeout + 1.0):
            await self._left.wait()
        # The last leave broadcasts often come out in the same step as LeaveCompleted: hand them to the
        # kernel before the caller stops us, or peers would see a failure instead of a leave.
        with trio.move_on_after(1.0):
            while self._dgram_send.statistics().current_buffer_used or self._udp_sending:
                await trio.sleep(0.001)
        if self.leave_drained is None:
            self.leave_drained = False
        return self.leave_drained

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- the drive step --

    def _feed(self, call: Callable[[float], T]) -> T | None:
        """Give the core one input at the current time, then dispatch everything it asked for."""
        now = trio.current_time()
        result: T | None = None
        try:
            result = call(now)
        except Exception:
            # A core must never raise on remote input; if it does anyway the node keeps running.
            self.stats["core_errors"] += 1
            log.exception("gossip core raised on an input (counted as core_errors)")
        self._dispatch(self._drain(now))
        return result

    def db_input(self, call: Callable[[float], T]) -> T:
        """Give the NetworkDB core one local input (an API request) and dispatch the outcome.

        The core's ``LocalProtocolError`` propagates (the core changed nothing then)."""
        if self.db is None or self.swim is None:
            raise RuntimeError("this node does not run NetworkDB")
        now = trio.current_time()
        try:
            return call(now)
        finally:
            self._dispatch(self._drain(now))

    def _drain(self, now: float) -> Outputs:
        if self.db is None:
            return drain(self.swim)
        try:
            return drain_stacked(self.swim, self.db.core, now=now, mute_rider=self.is_leaving)
        except Exception:
            self.stats["core_errors"] += 1
            log.exception("a core raised while draining (counted as core_errors)")
            return drain(self.swim)

    def _fire_due(self, now: float) -> Outputs:
        if self.db is None:
            return fire_due(self.swim, now)
        return fire_due_stacked(self.swim, self.db.core, now, mute_rider=self.is_leaving)

    def _dispatch(self, out: Outputs) -> None:
        if self.fatal is not None:
            return
        if self.db is not None and out.rider_events:
            try:
                self.db.handle_events(out.rider_events)
            except StateWriteError as exc:
                # The Lamport high-water mark must be on disk before this step's outputs are sent:
                # stop instead of sending (peers see a crash; the state directory stays consistent).
                self.fatal = str(exc)
                log.critical("%s; stopping without sending", exc)
                self.stop()
                return
        if self.services and out.rider_events:
            now = trio.current_time()
            for svc in self.services:
                try:
                    svc.on_db_events(out.rider_events, now)
                except Exception:
                    self.stats["core_errors"] += 1
                    log.exception("service %s raised in on_db_events (counted as core_errors)", svc.name)
        for addr, data in out.datagrams:
            try:
                self._dgram_send.send_nowait((addr, data))
            except trio.WouldBlock:
                self.stats["udp_queue_dropped"] += 1
        for request in out.streams:
            assert self._nursery is not None
            self._nursery.start_soon(self._outbound_stream, request)
        for event in out.events:
            self._handle_event(event)
        self._deadline = out.deadline
        if self._timer_scope is not None:
            self._timer_scope.deadline = math.inf if out.deadline is None else out.deadline

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=math.inf if self._deadline is None else self._deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            try:
                out = self._fire_due(now)
            except Exception:
                self.stats["core_errors"] += 1
                log.exception("a core raised in handle_timer (counted as core_errors)")
                out = self._drain(now)
            self._dispatch(out)

    # -- UDP --

    async def _udp_receive_loop(self) -> None:
        assert self._udp is not None
        while True:
            try:
                data, src = await self._udp.recvfrom(UDP_RECV_BYTES)
            except OSError as exc:
                # e.g. a queued ICMP error; never fatal, but do not spin on a persistent one.
                self.stats["udp_receive_errors"] += 1
                log.debug("udp receive error: %s", exc)
                await trio.sleep(0.01)
                continue
            self.stats["udp_received"] += 1
            self.stats["udp_bytes_received"] += len(data)
            self._feed(functools.partial(self._receive_datagram, (src[0], src[1]), data))

    def _receive_datagram(self, peer: Addr, data: bytes, now: float) -> None:
        self.swim.receive_datagram(peer, data, now=now)

    async def _udp_send_loop(self) -> None:
        assert self._udp is not None
        async for addr, data in self._dgram_recv:
            self._udp_sending = True
            try:
                await self._udp.sendto(data, addr)
            except OSError as exc:
                self.stats["udp_send_errors"] += 1
                log.debug("udp send to %s:%s failed: %s", addr[0], addr[1], exc)
            else:
                self.stats["udp_sent"] += 1
                self.stats["udp_bytes_sent"] += len(data)
            finally:
                self._udp_sending = False

    # -- TCP --

    async def _read_frame(self, stream: trio.abc.ReceiveStream) -> bytes | None:
        """One stream frame, as ``stream_frame_length`` delimits it; at EOF whatever came (None if nothing).

        Raises DecodeError (garbage), FrameTooLarge, or the stream's own errors.

        ``stream_frame_length`` walks a plaintext push-pull state by state, so asking after every
        chunk of a large frame costs O(n^2). Small buffers are checked after every chunk; above
        ``_EAGER_CHECK_BYTES`` only after 25% growth, or as soon as the peer pauses (it may be
        waiting for our answer to a complete frame). A cancelled ``receive_some`` loses no data.
        """
        buf = bytearray()
        checked = 0
        while True:
            if checked < len(buf) and len(buf) >= _EAGER_CHECK_BYTES and len(buf) < checked * 5 // 4:
                with trio.move_on_after(_QUIET_CHECK_DELAY) as quiet:
                    chunk = await stream.receive_some(_RECEIVE_CHUNK)
                if quiet.cancelled_caught:
                    chunk = b""
                    checked = len(buf)
                    length = self.swim.stream_frame_length(bytes(buf))
                    if length is not None:
                        return bytes(buf[:length])
                    continue
            else:
                chunk = await stream.receive_some(_RECEIVE_CHUNK)
            if not chunk:
                if buf and checked < len(buf):
                    length = self.swim.stream_frame_length(bytes(buf))
                    if length is not None:
                        return bytes(buf[:length])
                return bytes(buf) if buf else None
            buf += chunk
            if len(buf) < _EAGER_CHECK_BYTES or len(buf) >= checked * 5 // 4:
                checked = len(buf)
                length = self.swim.stream_frame_length(bytes(buf))
                if length is not None:
                    return bytes(buf[:length])
            if len(buf) > MAX_STREAM_FRAME_BYTES:
                raise FrameTooLarge(len(buf))

    async def _outbound_stream(self, request: Any) -> None:
        """One outbound TCP exchange; exactly one of receive_stream_reply / stream_failed follows."""
        self.stats["tcp_out_opened"] += 1
        reply: bytes | None = None
        ok = False
        reason = "timed out"
        with trio.move_on_after(request.timeout):
            try:
                stream = await trio.open_tcp_stream(request.addr[0], request.addr[1])
                async with stream:
                    await stream.send_all(request.data)
                    self.stats["tcp_bytes_sent"] += len(request.data)
                    if request.expect_reply:
                        reply = await self._read_frame(stream)
                        ok = reply is not None
                        self.stats["tcp_bytes_received"] += len(reply or b"")
                        reason = "closed without a reply"
                    else:
                        ok = True
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = str(exc) or type(exc).__name__
            except DecodeError as exc:
                reason = f"garbage reply: {exc}"
            except FrameTooLarge:
                reason = f"reply over {MAX_STREAM_FRAME_BYTES} bytes"
        if ok and request.expect_reply:
            frame = reply
            self._feed(lambda now: self.swim.receive_stream_reply(request.stream_id, frame, now=now))
        elif not ok:
            self.stats["tcp_out_failed"] += 1
            log.debug("tcp exchange %d with %s:%s failed: %s", request.stream_id, *request.addr, reason)
            self._feed(lambda now: self.swim.stream_failed(request.stream_id, now=now))

    async def _tcp_accept_loop(self, listener: trio.socket.SocketType) -> None:
        assert self._nursery is not None
        while True:
            try:
                sock, peer = await listener.accept()
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS/ENOMEM: back off like trio.serve_listeners, never die.
                self.stats["tcp_in_errors"] += 1
                log.warning("tcp accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            self.stats["tcp_in_accepted"] += 1
            stream = trio.SocketStream(sock)
            if self._inbound_active >= MAX_INBOUND_STREAMS:
                self.stats["tcp_in_refused_busy"] += 1
                sock.close()
                continue
            self._nursery.start_soon(self._inbound_stream, stream, (peer[0], peer[1]))

    async def _inbound_stream(self, stream: trio.SocketStream, peer: Addr) -> None:
        """One inbound exchange: read one frame (bounded), hand it to the core, write its reply, close."""
        self._inbound_active += 1
        try:
            with trio.move_on_after(self.config.tcp_timeout) as scope:
                async with stream:
                    try:
                        frame = await self._read_frame(stream)
                        if frame is None:
                            return
                        self.stats["tcp_bytes_received"] += len(frame)
                        reply = self._feed(lambda now: self.swim.receive_stream(peer, frame, now=now))
                        if reply:
                            await stream.send_all(reply)
                            self.stats["tcp_bytes_sent"] += len(reply)
                    except DecodeError as exc:
                        self.stats["tcp_in_garbage"] += 1
                        log.debug("garbage tcp stream from %s:%s: %s", *peer, exc)
                    except FrameTooLarge:
                        self.stats["tcp_in_oversize"] += 1
                        log.warning(
                            "tcp stream from %s:%s over %d bytes, closed", *peer, MAX_STREAM_FRAME_BYTES
                        )
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        self.stats["tcp_in_errors"] += 1
                        log.debug("tcp stream from %s:%s failed: %s", *peer, exc)
            if scope.cancelled_caught:
                self.stats["tcp_in_timeouts"] += 1
        finally:
            self._inbound_active -= 1

    # -- join --

    def _join(self) -> None:
        self._join_outcome = trio.Event()
        seeds = list(self.seeds)
        self._feed(lambda now: self.swim.join(seeds, now=now))

    async def _retry_join_loop(self) -> None:
        """serf's -retry-join: keep trying the seeds, with backoff, until a join succeeds."""
        delay = self._retry_join_interval
        while True:
            # Wait for the outcome of the attempt in flight (bounded: a core that never reports is retried).
            with trio.move_on_after(self.config.tcp_timeout + 1.0):
                await self._join_outcome.wait()
            if self.is_joined or self.is_leaving:
                return
            await trio.sleep(delay)
            if self.is_joined or self.is_leaving:
                return
            log.info("retrying join to %s", ", ".join(f"{ip}:{port}" for ip, port in self.seeds))
            self._join()
            delay = min(delay * 2, self._retry_join_max_interval)

    # -- events --

    def _handle_event(self, event: Any) -> None:
        if isinstance(event, ev.MemberJoined):
            m = event.member
            if m.name != self.name:
                self.is_joined = True
                self._join_outcome.set()
            log.info("member joined: %s %s:%d", m.name, m.addr, m.port)
        elif isinstance(event, ev.MemberUpdated):
            m = event.member
            log.info("member updated: %s %s:%d", m.name, m.addr, m.port)
        elif isinstance(event, ev.MemberSuspected):
            log.info("member suspected: %s (by %s)", event.member.name, event.from_node)
        elif isinstance(event, ev.MemberFailed):
            log.info("member failed: %s %s:%d", event.member.name, event.member.addr, event.member.port)
        elif isinstance(event, ev.MemberLeft):
            log.info("member left: %s %s:%d", event.member.name, event.member.addr, event.member.port)
        elif isinstance(event, ev.MemberReaped):
            log.info("member reaped: %s", event.name)
        elif isinstance(event, ev.JoinCompleted):
            self.is_joined = True
            self._join_outcome.set()
            log.info("joined via %s:%d (%d members)", *event.seed, event.members)
        elif isinstance(event, ev.JoinFailed):
            self._join_outcome.set()
            log.warning("join via %s:%d failed: %s (will retry)", *event.seed, event.reason)
        elif isinstance(event, ev.NameConflict):
            log.warning(
                "name conflict: %s is %s:%d here, but %s:%d claims it too",
                event.existing.name,
                event.existing.addr,
                event.existing.port,
                event.other_addr,
                event.other_port,
            )
        elif isinstance(event, ev.LeaveCompleted):
            self.leave_drained = event.drained
            self._left.set()
            log.info("left the cluster (%s)", "broadcast drained" if event.drained else "leave timed out")
        elif isinstance(event, ev.MessageRejected):
            log.debug("rejected input from %s:%s: %s", *event.src, event.reason)
        if self.services:
            now = trio.current_time()
            for svc in self.services:
                try:
                    svc.on_member_event(event, now)
                except Exception:
                    self.stats["core_errors"] += 1
                    log.exception("service %s raised in on_member_event (counted as core_errors)", svc.name)
        if self._on_event is not None:
            self._on_event(event)


async def run_node(
    config: GossipConfig,
    *,
    name: str,
    bind: Addr,
    advertise: Addr | None = None,
    seeds: Sequence[Addr] = (),
    meta: bytes = b"",
    keyring: Any = None,
    api_path: str | None = None,
    rng: random.Random | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one gossip node until cancelled; ``task_status.started(bound_addr)`` once it is serving.

    To read the node's state (members, stats) build a ``Node`` and ``await nursery.start(node.run)``.
    """
    node = Node(
        config, name=name, bind=bind, advertise=advertise, seeds=seeds, meta=meta, keyring=keyring, rng=rng
    )
    await node.run(api_path=api_path, task_status=task_status)


def _check_addr(addr: Addr, what: str) -> Addr:
    ip, port = addr
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ConfigError(f"{what} address {ip!r} is not an IP address; use IP:PORT") from None
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} port {port} is out of range; use 0..65535")
    return (str(ip), int(port))


#: Receive buffer asked for the gossip UDP socket. Datagrams arrive in bursts (NetworkDB packs up to 32
#: datagrams per peer per interval); with the kernel's default (~208 KiB) an agent that is not scheduled
#: for ~100 ms overflows it, the kernel drops datagrams, SWIM probes are lost (false suspicions) and table
#: entries wait for the next bulk sync. memberlist asks for 2 MiB for the same reason.
UDP_RCVBUF = 4 << 20


def _grow_receive_buffer(udp: trio.socket.SocketType) -> None:
    """Ask for ``UDP_RCVBUF``: the kernel caps SO_RCVBUF at net.core.rmem_max; with CAP_NET_ADMIN (root)
    SO_RCVBUFFORCE goes past it. Best effort: a smaller buffer only means earlier drops under load."""
    try:
        udp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, UDP_RCVBUF)
        # Linux reports twice the size it keeps for bookkeeping.
        if udp.getsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF) < UDP_RCVBUF:
            force = getattr(trio.socket, "SO_RCVBUFFORCE", None)
            if force is not None:
                udp.setsockopt(trio.socket.SOL_SOCKET, force, UDP_RCVBUF)
    except OSError as exc:
        log.debug("could not grow the UDP receive buffer: %s", exc)


async def _bind_udp_and_tcp(addr: Addr) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A UDP socket and a listening TCP socket on the same IP:port (port 0: one free port for both)."""
    ip, port = addr
    family = trio.socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else trio.socket.AF_INET
    attempts = 32 if port == 0 else 1
    last: OSError | None = None
    for _ in range(attempts):
        tcp = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        udp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        try:
            tcp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            await tcp.bind((ip, port))
            bound_port = tcp.getsockname()[1]
            await udp.bind((ip, bound_port))
            _grow_receive_buffer(udp)
            tcp.listen(128)
            return udp, tcp
        except OSError as exc:
            tcp.close()
            udp.close()
            last = exc
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue  # the ephemeral TCP port is taken on UDP: try another
            break
    assert last is not None
    hint = {
        errno.EADDRINUSE: "another process uses it; choose another --bind port or stop that process",
        errno.EADDRNOTAVAIL: "no local interface has this IP; --bind must be an address of this host",
        errno.EACCES: "ports below 1024 need root; choose a port >= 1024",
    }.get(last.errno or 0, "check --bind")
    raise ConfigError(f"cannot bind udp+tcp {ip}:{port}: {last.strerror or last}; {hint}") from last
