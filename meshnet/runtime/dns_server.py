"""``ResolverServer``: one sandbox's DNS sockets (127.0.0.11:53, UDP and TCP), served on the agent's trio loop.

Theory of operation. The sans-IO ``meshnet.dns.Resolver`` decides everything; this module only moves
bytes and time:

- **Sockets in the sandbox, no process.** The listening UDP and TCP sockets are created inside the
  sandbox's network namespace by a short-lived helper thread that ``setns()``-es into it (Python 3.11
  has no ``os.setns``: libc's through ctypes) and then ends, so no thread of the agent ever changes
  namespace for long and nothing forks. A socket keeps its namespace for life, so the agent's one trio
  loop serves every sandbox. ``netns=None`` listens in the agent's own namespace (tests, benchmarks).
- **Upstream traffic from the host.** Forwards are sent from sockets the agent makes in its own
  namespace, so upstreams on the host's loopback (127.0.0.53, a dnsmasq on 127.0.0.x) work
  (libnetwork.md section 9 #17). Each forward uses one fresh *connected* UDP socket per upstream: a
  random source port per query, and ICMP port-unreachable from a dead upstream arrives as
  ``ECONNREFUSED`` and is reported to the resolver at once (``upstream_failed``), so a dead server
  costs nothing while another answers. A UDP reply with TC comes back from the resolver as a TCP
  ``Forward`` and is asked again over TCP (RFC 7766 framing).
  The UDP upstream sockets are sent on at once and read by one task through an epoll set of their
  own (no task per forward); they are closed when the resolver reports the forward complete (an
  answer, every upstream failed, or the deadline). TCP exchanges are one task each, bounded by their
  forward's deadline plus ``_GRACE``.
- **Time.** ``now`` is ``trio.current_time()``; one timer per server fires ``handle_timer`` at the
  resolver's next forward deadline (SERVFAIL to clients whose upstreams all stayed silent).
- **TCP clients.** At most ``max_tcp_clients`` connections at once (more are closed at once and
  counted); each may send several queries (pipelining, RFC 7766 6.2.1.1); replies are written under a
  per-connection lock; a connection idle for ``tcp_idle_timeout`` seconds is closed.
- **Never crash.** The resolver core never raises on remote input; if it does anyway the input is
  counted (``core_errors``) and dropped, and the server keeps serving. Socket errors are counted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import math
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from meshnet.dns import Forward, Reply, Resolver, Transport, Upstream

__all__ = ["ResolverServer", "in_netns", "DEFAULT_LISTEN"]

log = logging.getLogger("meshnet.dns")

DEFAULT_LISTEN = ("127.0.0.11", 53)
CLONE_NEWNET = 0x40000000
_GRACE = 0.5
#: Datagrams answered per wake-up of the UDP loop before other tasks get a turn.
UDP_BATCH = 64
_LEN = struct.Struct("!H")
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def in_netns(path: str | None, work: Callable[[], T]) -> T:
    """Run ``work()`` inside the network namespace at ``path`` (in a fresh helper thread that ends
    afterwards, so the caller never changes namespace); ``path=None`` runs it here. Blocking: call it
    through ``trio.to_thread.run_sync``."""
    if path is None:
        return work()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["result"] = work()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, name="meshnet-dns-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _open_listeners(address: tuple[str, int]) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets bound to ``address`` (port 0: one free port for both)."""
    family = _family(address[0])
    udp = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    tcp = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        udp.bind(address)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address[0], udp.getsockname()[1]))
        tcp.listen(128)
        udp.setblocking(False)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


class _TcpClient:
    """A TCP client connection (the resolver's ``client`` key for its replies)."""

    __slots__ = ("stream", "lock", "closed")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.lock = trio.Lock()
        self.closed = False


class ResolverServer:
    """Serve ``resolver`` on ``address`` inside the namespace ``netns`` (module docstring).

    ``await nursery.start(server.run)`` opens the sockets (raising ``OSError`` if they cannot be made:
    no such namespace, loopback down, port taken) and serves until cancelled; the sockets are closed
    when it returns. ``stats`` counts socket-level events; the resolver keeps the DNS counters.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        netns: str | None,
        address: tuple[str, int] = DEFAULT_LISTEN,
        label: str = "",
        max_tcp_clients: int = 128,
        tcp_idle_timeout: float = 10.0,
    ) -> None:
        self.resolver = resolver
        self.netns = netns
        self.address = address
        self.label = label or (netns or "host")
        self.max_tcp_clients = max_tcp_clients
        self.tcp_idle_timeout = tcp_idle_timeout
        #: (ip, port) actually bound (UDP and TCP share the port), set before ``run`` reports started.
        self.bound: tuple[str, int] | None = None
        self.stats: dict[str, int] = {
            "udp_received": 0,
            "udp_sent": 0,
            "udp_send_errors": 0,
            "udp_receive_errors": 0,
            "tcp_accepted": 0,
            "tcp_refused_busy": 0,
            "tcp_errors": 0,
            "tcp_oversize": 0,
            "core_errors": 0,
            "upstream_sockets": 0,
            "upstream_socket_errors": 0,
        }
        self._udp: Any = None
        self._nursery: trio.Nursery | None = None
        self._forwards: dict[int, list[trio.CancelScope]] = {}  # TCP exchanges of a forward
        self._epoll: select.epoll | None = None
        self._up_socks: dict[
            int, tuple[socket.socket, int, Upstream]
        ] = {}  # fd -> (socket, forward, upstream)
        self._fwd_fds: dict[int, list[int]] = {}  # forward -> its UDP upstream sockets' fds
        self._timer_scope: trio.CancelScope | None = None
        self._tcp_clients = 0

    # ---------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        udp_raw, tcp_raw = await trio.to_thread.run_sync(
            in_netns, self.netns, lambda: _open_listeners(self.address)
        )
        udp = trio.socket.from_stdlib_socket(udp_raw)
        tcp = trio.socket.from_stdlib_socket(tcp_raw)
        self._udp = udp
        self.bound = udp.getsockname()[:2]
        self._epoll = select.epoll()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._udp_loop, udp)
                nursery.start_soon(self._tcp_accept_loop, tcp)
                nursery.start_soon(self._upstream_loop, self._epoll)
                task_status.started(self.bound)
        finally:
            self._nursery = None
            for fd in list(self._up_socks):
                self._close_upstream(fd)
            trio.lowlevel.notify_closing(self._epoll.fileno())  # trio waited on it: forget it first
            self._epoll.close()
            udp.close()
            tcp.close()

    # ---------------------------------------------------------------- outputs

    def _now(self) -> float:
        return trio.current_time()

    def _rearm(self) -> None:
        if self._timer_scope is not None:
            deadline = self.resolver.next_deadline()
            self._timer_scope.deadline = math.inf if deadline is None else deadline

    def _dispatch(self, out: Reply | Forward | None) -> None:
        """Act on one resolver output (never blocks: sends are tried at once, else handed to a task)."""
        if out is None:
            return
        if isinstance(out, Reply):
            self._reply(out)
        else:
            self._forward(out)
        self._rearm()

    def _reply(self, reply: Reply) -> None:
        if reply.completes is not None:
            for scope in self._forwards.pop(reply.completes, ()):
                scope.cancel()
            for fd in self._fwd_fds.pop(reply.completes, ()):
                self._close_upstream(fd)
        if reply.transport is Transport.UDP:
            try:
                self._udp_raw_send(reply.data, reply.client)
            except OSError:
                self.stats["udp_send_errors"] += 1
            return
        client = reply.client
        if isinstance(client, _TcpClient) and not client.closed and self._nursery is not None:
            self._nursery.start_soon(self._tcp_send, client, reply.data)

    def _udp_raw_send(self, data: bytes, addr: Any) -> None:
        # trio sockets expose the stdlib socket's non-blocking sendto through ``_sock``; a full send
        # buffer drops the datagram (the client retries), counted as a send error.
        self._udp._sock.sendto(data, addr)
        self.stats["udp_sent"] += 1

    def _forward(self, fwd: Forward) -> None:
        if self._nursery is None:
            return
        if fwd.transport is Transport.TCP:
            scopes = self._forwards.setdefault(fwd.query_id, [])
            for upstream in fwd.upstreams:
                scope = trio.CancelScope(deadline=fwd.deadline_at + _GRACE)
                scopes.append(scope)
                self._nursery.start_soon(self._ask_tcp, fwd, upstream, scope)
            return
        # UDP: one fresh connected socket per upstream (a random source port per query; an ICMP
        # port-unreachable fails the upstream at once), sent right here; replies are read by
        # ``_upstream_loop`` through one epoll set, so a forward costs no task.
        assert self._epoll is not None
        failed = []
        fds = self._fwd_fds.setdefault(fwd.query_id, [])
        for upstream in fwd.upstreams:
            try:
                sock = socket.socket(
                    _family(upstream.address), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                )
            except OSError:
                self.stats["upstream_socket_errors"] += 1
                failed.append(upstream)
                continue
            self.stats["upstream_sockets"] += 1
            try:
                sock.connect((upstream.address, upstream.port))
                sock.send(fwd.data)
            except OSError:
                sock.close()
                failed.append(upstream)
                continue
            fd = sock.fileno()
            self._up_socks[fd] = (sock, fwd.query_id, upstream)
            self._epoll.register(fd, select.EPOLLIN)
            fds.append(fd)
        # Failures are reported after every socket is registered: the last one may end the forward,
        # and its ``completes`` then closes them all.
        for upstream in failed:
            self._feed(lambda now, u=upstream: self.resolver.upstream_failed(fwd.query_id, u, now=now))

    def _close_upstream(self, fd: int) -> None:
        entry = self._up_socks.pop(fd, None)
        if entry is None:
            return
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        entry[0].close()

    def _feed(self, call: Callable[[float], Any]) -> None:
        try:
            out = call(self._now())
        except Exception:
            self.stats["core_errors"] += 1
            log.exception("dns resolver core raised (counted as core_errors)")
            return
        if isinstance(out, list):
            for item in out:
                self._dispatch(item)
            self._rearm()
        else:
            self._dispatch(out)

    # ---------------------------------------------------------------- tasks

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._timer_scope = scope
                self._rearm()
                await trio.sleep_forever()
            self._timer_scope = None
            self._feed(lambda now: self.resolver.handle_timer(now=now))

    async def _udp_loop(self, udp: Any) -> None:
        # Batched: wait until the socket is readable, then drain up to UDP_BATCH datagrams with plain
        # non-blocking calls on the stdlib socket (trio's per-datagram await costs about 50 us, more than
        # answering a cluster name), then let other tasks run.
        resolver = self.resolver
        stats = self.stats
        raw = udp._sock
        recvfrom, sendto = raw.recvfrom, raw.sendto
        udp_transport = Transport.UDP
        while True:
            await trio.lowlevel.wait_readable(raw)
            now = trio.current_time()
            for _ in range(UDP_BATCH):
                try:
                    data, addr = recvfrom(65535)
                except BlockingIOError:
                    break  # drained: wait_readable yields to the other tasks
                except OSError:
                    stats["udp_receive_errors"] += 1
                    continue
                stats["udp_received"] += 1
                try:
                    out = resolver.receive_query(data, client=addr, transport=udp_transport, now=now)
                except Exception:
                    stats["core_errors"] += 1
                    log.exception("dns resolver core raised on a query (counted as core_errors)")
                    continue
                if out is None:
                    continue
                if type(out) is Reply:
                    try:
                        sendto(out.data, addr)  # non-blocking; a full buffer drops it (counted)
                        stats["udp_sent"] += 1
                    except OSError:
                        stats["udp_send_errors"] += 1
                else:
                    self._dispatch(out)
            else:
                await trio.lowlevel.checkpoint()  # a full batch: let other tasks run before the next

    async def _tcp_accept_loop(self, listener: Any) -> None:
        while True:
            try:
                conn, _addr = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.stats["tcp_errors"] += 1
                    await trio.sleep(0.1)
                continue
            if self._tcp_clients >= self.max_tcp_clients:
                self.stats["tcp_refused_busy"] += 1
                conn.close()
                continue
            self.stats["tcp_accepted"] += 1
            self._tcp_clients += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._tcp_client, trio.SocketStream(conn))

    async def _tcp_client(self, stream: trio.SocketStream) -> None:
        client = _TcpClient(stream)
        buf = bytearray()
        try:
            while True:
                while len(buf) >= 2:
                    size = _LEN.unpack_from(buf)[0]
                    if len(buf) < 2 + size:
                        break
                    msg = bytes(buf[2 : 2 + size])
                    del buf[: 2 + size]
                    self._feed(
                        lambda now, m=msg: self.resolver.receive_query(
                            m, client=client, transport=Transport.TCP, now=now
                        )
                    )
                with trio.move_on_after(self.tcp_idle_timeout) as idle:
                    chunk = await stream.receive_some(65536)
                if idle.cancelled_caught or not chunk:
                    return
                buf += chunk
                if len(buf) > 2 * 65537:
                    self.stats["tcp_oversize"] += 1
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.stats["tcp_errors"] += 1
        finally:
            client.closed = True
            self._tcp_clients -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _tcp_send(self, client: _TcpClient, data: bytes) -> None:
        try:
            async with client.lock:
                with trio.move_on_after(self.tcp_idle_timeout):
                    await client.stream.send_all(_LEN.pack(len(data)) + data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.stats["tcp_errors"] += 1

    async def _upstream_loop(self, epoll: select.epoll) -> None:
        """Read the replies of every forward's UDP upstream sockets (one wait for all of them)."""
        stats = self.stats
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            for fd, _events in epoll.poll(0, 256):
                while fd in self._up_socks:
                    sock, query_id, upstream = self._up_socks[fd]
                    try:
                        data = sock.recv(65535)
                    except BlockingIOError:
                        break
                    except OSError:  # ECONNREFUSED (ICMP port unreachable) and the like
                        stats["upstream_socket_errors"] += 1
                        self._close_upstream(fd)
                        self._feed(
                            lambda now, q=query_id, u=upstream: self.resolver.upstream_failed(q, u, now=now)
                        )
                        break
                    self._feed(
                        lambda now, u=upstream, d=data: self.resolver.receive_upstream(
                            u, d, transport=Transport.UDP, now=now
                        )
                    )

    async def _ask_tcp(self, fwd: Forward, upstream: Upstream, scope: trio.CancelScope) -> None:
        with scope:
            try:
                stream = await trio.open_tcp_stream(upstream.address, upstream.port)
            except OSError:
                self._feed(lambda now: self.resolver.upstream_failed(fwd.query_id, upstream, now=now))
                return
            self.stats["upstream_sockets"] += 1
            try:
                await stream.send_all(_LEN.pack(len(fwd.data)) + fwd.data)
                buf = bytearray()
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise OSError("upstream closed the connection")
                    buf += chunk
                    if len(buf) >= 2 and len(buf) >= 2 + _LEN.unpack_from(buf)[0]:
                        msg = bytes(buf[2 : 2 + _LEN.unpack_from(buf)[0]])
                        self._feed(
                            lambda now, m=msg: self.resolver.receive_upstream(
                                upstream, m, transport=Transport.TCP, now=now
                            )
                        )
                        return
            except (OSError, trio.BrokenResourceError):
                self._feed(lambda now: self.resolver.upstream_failed(fwd.query_id, upstream, now=now))
            finally:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
