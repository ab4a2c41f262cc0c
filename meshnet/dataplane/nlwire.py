"""Netlink plumbing for ``NetlinkDataplane``: sockets inside namespaces, named namespaces, messages.

Theory of operation
-------------------
This module and ``netlink.py`` are the only code in meshnet that talks to the kernel.

- **A socket per namespace, no fork.** A netlink socket belongs to the namespace it was created in for
  its whole life. ``NlSocket.open(ns_fd)`` creates one in a short-lived helper thread that ``setns()``-es
  into the namespace first (Python 3.11 has no ``os.setns``, so libc's through ctypes), so the calling
  thread never changes namespace and nothing forks (pyroute2's ``IPRoute(netns=...)`` forks a child per
  object; environment.md section 1).
- **pyroute2 for the rich messages.** Links and addresses are built and decoded with pyroute2's message
  classes (``ifinfmsg``, ``ifaddrmsg``): nested link info (VXLAN, veth peers) is where a codec pays.
- **struct for the bulk ones.** FDB and neighbour requests are a fixed header and two or three
  attributes; packing them by hand costs about 2 us where pyroute2's encoder costs about 90 us
  (environment.md "Bulk speed"). ``NlSocket.bulk`` sends them many to one ``send()`` (up to
  ``CHUNK_BYTES``), each with ``NLM_F_ACK`` and its own sequence number, and collects the acks after
  each chunk, so every op still gets its own verdict; ``NETLINK_CAP_ACK`` keeps acks small and
  ``NETLINK_EXT_ACK`` brings the kernel's error text. Dumps of FDB and neighbour tables are parsed by
  hand for the same reason.
- **Named namespaces** are created as iproute2 does (``ip netns add``): ``/run/netns`` made a shared
  mount, an empty file bind-mounted over by the namespace of a helper thread that ``unshare()``-d one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import NamedTuple

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

__all__ = [
    "NlSocket",
    "NlError",
    "NeighRecord",
    "RTM_NEWLINK",
    "RTM_DELLINK",
    "RTM_GETLINK",
    "RTM_NEWADDR",
    "RTM_DELADDR",
    "RTM_GETADDR",
    "RTM_NEWNEIGH",
    "RTM_DELNEIGH",
    "netns_path",
    "open_netns",
    "create_netns",
    "remove_netns",
    "is_netns",
    "pack_fdb",
    "pack_neigh",
    "link_message",
    "addr_message",
    "NUD_PERMANENT",
    "NUD_NOARP",
    "FDB_PERMANENT",
    "FDB_STATIC",
]

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED, MNT_DETACH = 0x1000, 0x4000, 1 << 20, 2

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT_MATCH = 0x300  # NLM_F_DUMP
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWNSID, RTM_GETNSID = 88, 90
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
AF_BRIDGE = 7
NTF_SELF = 0x02
NUD_REACHABLE, NUD_NOARP, NUD_PERMANENT = 0x02, 0x40, 0x80
#: FDB states as ``bridge fdb ... permanent|static`` sends them (VXLAN refuses NUD_NOARP alone: EINVAL).
FDB_PERMANENT, FDB_STATIC = NUD_NOARP | NUD_PERMANENT, NUD_NOARP | NUD_REACHABLE
NDA_DST, NDA_LLADDR, NDA_VNI = 1, 2, 7
NETNSA_NSID, NETNSA_FD = 1, 3

#: Bytes per ``send()`` in ``NlSocket.bulk``: about 1,400 FDB requests.
CHUNK_BYTES = 64 * 1024
#: Socket buffers asked for (root may exceed rmem_max): room for every ack of a chunk, and dumps.
BUFFER_BYTES = 8 * 1024 * 1024
#: Upper bound on waiting for the kernel's answer; rtnetlink answers synchronously, so this only
#: guards against a lost message.
ANSWER_TIMEOUT = 30.0

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")

_libc = ctypes.CDLL(None, use_errno=True)


class NlError(Exception):
    """The kernel answered a request with an error (``errno``, and its extended-ack text if any)."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(errno_, message or os.strerror(errno_))
        self.errno = errno_
        self.message = message or os.strerror(errno_)


# --- namespaces ---------------------------------------------------------------------------------


def netns_path(netns: str) -> str:
    """The file of namespace ``netns``: a name under /run/netns, or the path itself."""
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def is_netns(path: str) -> bool:
    """Whether ``path`` is a namespace file (an nsfs mount), not a stale empty file."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/thread-self/ns/net").st_dev
    except FileNotFoundError:
        return False


def open_netns(netns: str) -> int | None:
    """An O_RDONLY fd of namespace ``netns``, or None when it does not exist."""
    path = netns_path(netns)
    if not is_netns(path):
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _in_helper_thread(work):  # type: ignore[no-untyped-def]
    """Run ``work()`` in a fresh thread (which may change namespace and then ends); return its result."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, name="meshnet-netns-helper")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def _share_run_dir() -> None:
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    run_dir = NETNS_RUN_DIR.encode()
    if _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, f"mount --make-rshared {NETNS_RUN_DIR}")
    # Not a mount point yet: bind it onto itself first, as iproute2 does.
    _check(_libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None), f"mount --bind {NETNS_RUN_DIR}")
    _check(
        _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None), f"mount --make-rshared {NETNS_RUN_DIR}"
    )


def create_netns(name: str) -> bool:
    """Create ``/run/netns/NAME`` like ``ip netns add``; False when it existed already."""
    path = netns_path(name)
    if is_netns(path):
        return False
    _share_run_dir()
    with contextlib.suppress(FileExistsError):  # a stale empty file left by a crash: mount over it
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def unshare_and_bind() -> None:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        _check(
            _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None), f"mount {path}"
        )

    try:
        _in_helper_thread(unshare_and_bind)
    except OSError:
        if not is_netns(path):
            os.unlink(path)
        raise
    return True


def remove_netns(name: str) -> None:
    """Unmount and unlink ``/run/netns/NAME`` (``ip netns del``); missing is fine."""
    path = netns_path(name)
    if is_netns(path):
        _check(_libc.umount2(path.encode(), MNT_DETACH), f"umount {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --- messages -----------------------------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _ip_bytes(ip: str) -> tuple[int, bytes]:
    if ":" in ip:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip)
    return socket.AF_INET, socket.inet_pton(socket.AF_INET, ip)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


# The common cases in one struct each: header, ndmsg, then the attributes (MAC padded to 8 bytes).
_FDB_ADD4 = struct.Struct("=IHHIIBBHiHBBHH6s2xHH4s")
_NEIGH_ADD4 = struct.Struct("=IHHIIBBHiHBBHH4sHH6s2x")
_ADD_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE  # no NLM_F_ACK: see NlSocket.bulk


def pack_fdb(
    seq: int, ifindex: int, mac: str, dst: str | None, vni: int | None, state: int, *, add: bool
) -> bytes:
    """An FDB request on a VXLAN device (``bridge fdb replace|del ... self``)."""
    if add and vni is None and dst is not None and ":" not in dst:
        return _FDB_ADD4.pack(
            _FDB_ADD4.size, RTM_NEWNEIGH, _ADD_FLAGS, seq, 0, AF_BRIDGE, 0, 0, ifindex, state, NTF_SELF, 0,
            10, NDA_LLADDR, bytes.fromhex(mac.replace(":", "")), 8, NDA_DST, socket.inet_aton(dst),
        )  # fmt: skip
    body = _NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, state if add else 0, NTF_SELF, 0)
    body += _attr(NDA_LLADDR, _mac_bytes(mac))
    if dst is not None:
        body += _attr(NDA_DST, _ip_bytes(dst)[1])
    if vni is not None:
        body += _attr(NDA_VNI, struct.pack("=I", vni))
    flags = _ADD_FLAGS if add else NLM_F_REQUEST
    return _HDR.pack(16 + len(body), RTM_NEWNEIGH if add else RTM_DELNEIGH, flags, seq, 0) + body


def pack_neigh(seq: int, ifindex: int, ip: str, mac: str | None, *, add: bool) -> bytes:
    """A neighbour request (``ip neigh replace ... nud permanent`` or ``ip neigh del``)."""
    if add and mac is not None and ":" not in ip:
        return _NEIGH_ADD4.pack(
            _NEIGH_ADD4.size, RTM_NEWNEIGH, _ADD_FLAGS, seq, 0, socket.AF_INET, 0, 0, ifindex, NUD_PERMANENT, 0, 0,
            8, NDA_DST, socket.inet_aton(ip), 10, NDA_LLADDR, bytes.fromhex(mac.replace(":", "")),
        )  # fmt: skip
    family, raw = _ip_bytes(ip)
    body = _NDMSG.pack(family, 0, 0, ifindex, NUD_PERMANENT if add else 0, 0, 0) + _attr(NDA_DST, raw)
    if mac is not None:
        body += _attr(NDA_LLADDR, _mac_bytes(mac))
    flags = _ADD_FLAGS if add else NLM_F_REQUEST
    return _HDR.pack(16 + len(body), RTM_NEWNEIGH if add else RTM_DELNEIGH, flags, seq, 0) + body


def link_message(
    kind: int, flags: int, *, index: int = 0, up: bool | None = None, attrs: list | None = None
) -> ifinfmsg:
    """A pyroute2 ``ifinfmsg`` (header filled in by ``NlSocket.request``)."""
    msg = ifinfmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    if up is not None:
        msg["flags"] = 1 if up else 0  # IFF_UP
        msg["change"] = 1
    msg["attrs"] = attrs or []
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    return msg


def addr_message(kind: int, flags: int, *, index: int, ip: str, prefixlen: int) -> ifaddrmsg:
    """A pyroute2 ``ifaddrmsg`` for ``ip addr replace|del IP/PREFIXLEN dev INDEX``."""
    family, _ = _ip_bytes(ip)
    msg = ifaddrmsg()
    msg["family"] = family
    msg["prefixlen"] = prefixlen
    msg["index"] = index
    msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    return msg


class NeighRecord(NamedTuple):
    """One decoded neighbour or FDB message: raw fields, MAC and IP already as text."""

    family: int
    ifindex: int
    state: int
    flags: int
    dst: str | None
    mac: str | None
    vni: int | None


def _attrs(buf: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of each attribute in ``buf[off:end]``."""
    while off + 4 <= end:
        size, kind = _NLA.unpack_from(buf, off)
        if size < 4:
            return
        yield kind & 0x3FFF, off + 4, off + size
        off += (size + 3) & ~3


def parse_neigh(buf: bytes, off: int, end: int) -> NeighRecord:
    """Decode the body of an RTM_NEWNEIGH message at ``buf[off:end]`` (a hot loop: observe() of a
    namespace with 10,000 remote endpoints decodes 20,000 of these)."""
    family, _, _, ifindex, state, flags, _ = _NDMSG.unpack_from(buf, off)
    dst = mac = None
    vni = None
    unpack_nla = _NLA.unpack_from
    pos = off + 12
    while pos + 4 <= end:
        size, kind = unpack_nla(buf, pos)
        if size < 4:
            break
        kind &= 0x3FFF
        if kind == NDA_DST:
            if size == 8:
                dst = socket.inet_ntop(socket.AF_INET, buf[pos + 4 : pos + 8])
            elif size == 20:
                dst = socket.inet_ntop(socket.AF_INET6, buf[pos + 4 : pos + 20])
        elif kind == NDA_LLADDR:
            if size == 10:
                mac = buf[pos + 4 : pos + 10].hex(":")
        elif kind == NDA_VNI and size == 8:
            vni = struct.unpack_from("=I", buf, pos + 4)[0]
        pos += (size + 3) & ~3
    return NeighRecord(family, ifindex, state, flags, dst, mac, vni)


# --- the socket ---------------------------------------------------------------------------------


class NlSocket:
    """A NETLINK_ROUTE socket living in one namespace; requests, dumps and bulk batches on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0

    @classmethod
    def open(cls, ns_fd: int) -> NlSocket:
        """A socket in the namespace of ``ns_fd`` (made in a helper thread; the caller stays put)."""

        def make() -> socket.socket:
            _setns(ns_fd)
            return socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )

        sock: socket.socket = _in_helper_thread(make)
        try:
            for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_BYTES)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.settimeout(ANSWER_TIMEOUT)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def reserve(self, count: int) -> int:
        """The first of ``count`` fresh sequence numbers."""
        first = self._seq + 1
        self._seq += count
        return first

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 20)
        except TimeoutError:
            raise NlError(errno.ETIMEDOUT, "no answer from the kernel") from None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise NlError(errno.ENOBUFS, "netlink answers were lost (receive buffer overrun)") from None
            raise

    @staticmethod
    def _error(buf: bytes, off: int, size: int, flags: int) -> NlError | None:
        code = -_ERR.unpack_from(buf, off + 16)[0]
        if code == 0:
            return None
        message = ""
        if flags & NLM_F_ACK_TLVS:
            inner_len = _HDR.unpack_from(buf, off + 20)[0]
            tlv = off + 20 + (16 if flags & NLM_F_CAPPED else inner_len)
            for kind, start, stop in _attrs(buf, tlv, off + size):
                if kind == 1:  # NLMSGERR_ATTR_MSG
                    message = buf[start:stop].rstrip(b"\0").decode(errors="replace")
        return NlError(code, message)

    def _messages(self, buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
        """(offset, size, type, flags, seq) of each message in ``buf``."""
        off = 0
        while off + 16 <= len(buf):
            size, kind, flags, seq, _ = _HDR.unpack_from(buf, off)
            if size < 16:
                return
            yield off, size, kind, flags, seq
            off += (size + 3) & ~3

    def request(self, msg: bytes | ifinfmsg | ifaddrmsg) -> None:
        """Send one request with ``NLM_F_ACK`` and wait for its ack; raise ``NlError`` on refusal."""
        seq = self.reserve(1)
        if not isinstance(msg, bytes):
            msg["header"]["sequence_number"] = seq
            msg["header"]["flags"] |= NLM_F_REQUEST | NLM_F_ACK
            msg.encode()
            data = msg.data
        else:
            data = msg[:8] + struct.pack("=I", seq) + msg[12:]
        self.sock.send(data)
        while True:
            buf = self._recv()
            for off, size, kind, flags, got in self._messages(buf):
                if got == seq and kind == NLMSG_ERROR:
                    error = self._error(buf, off, size, flags)
                    if error is not None:
                        raise error
                    return

    def dump(self, kind: int, body: bytes) -> list[tuple[bytes, int, int]]:
        """A dump request; the (buffer, body offset, end) of each answer. Retried when interrupted."""
        for _attempt in range(5):
            seq = self.reserve(1)
            self.sock.send(_HDR.pack(16 + len(body), kind, NLM_F_REQUEST | NLM_F_ROOT_MATCH, seq, 0) + body)
            out: list[tuple[bytes, int, int]] = []
            interrupted = False
            done = False
            while not done:
                buf = self._recv()
                for off, size, mtype, flags, got in self._messages(buf):
                    if got != seq:
                        continue
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    if mtype == NLMSG_DONE:
                        done = True
                    elif mtype == NLMSG_ERROR:
                        error = self._error(buf, off, size, flags)
                        if error is not None:
                            raise error
                        done = True
                    else:
                        out.append((buf, off + 16, off + size))
            if not interrupted:
                return out
        raise NlError(errno.EAGAIN, "the dump kept being interrupted by concurrent changes")

    def dump_links(self) -> list[ifinfmsg]:
        """Every link of the namespace, decoded by pyroute2."""
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
        links = []
        for buf, start, end in self.dump(RTM_GETLINK, body):
            msg = ifinfmsg(buf[start - 16 : end])
            msg.decode()
            links.append(msg)
        return links

    def dump_addresses(self) -> list[ifaddrmsg]:
        """Every address of the namespace, decoded by pyroute2."""
        body = struct.pack("=BBBBi", socket.AF_UNSPEC, 0, 0, 0, 0)
        out = []
        for buf, start, end in self.dump(RTM_GETADDR, body):
            msg = ifaddrmsg(buf[start - 16 : end])
            msg.decode()
            out.append(msg)
        return out

    def dump_neighbours(self, family: int) -> list[NeighRecord]:
        """Every neighbour (``family`` AF_UNSPEC) or FDB (AF_BRIDGE) entry, parsed by hand."""
        body = _NDMSG.pack(family, 0, 0, 0, 0, 0, 0)
        return [parse_neigh(buf, start, end) for buf, start, end in self.dump(RTM_GETNEIGH, body)]

    def nsid_of(self, ns_fd: int) -> int | None:
        """The id this namespace gives the namespace of ``ns_fd`` (RTM_GETNSID), None when it has none."""
        seq = self.reserve(1)
        body = struct.pack("=B3x", socket.AF_UNSPEC) + _attr(NETNSA_FD, struct.pack("=I", ns_fd))
        self.sock.send(_HDR.pack(16 + len(body), RTM_GETNSID, NLM_F_REQUEST, seq, 0) + body)
        while True:
            buf = self._recv()
            for off, size, kind, flags, got in self._messages(buf):
                if got != seq:
                    continue
                if kind == NLMSG_ERROR:
                    error = self._error(buf, off, size, flags)
                    if error is not None:
                        raise error
                    return None
                if kind == RTM_NEWNSID:
                    for akind, start, _stop in _attrs(buf, off + 20, off + size):
                        if akind == NETNSA_NSID:
                            nsid = struct.unpack_from("=i", buf, start)[0]
                            return None if nsid < 0 else nsid
                    return None

    def bulk(self, messages: list[bytes], first_seq: int, count: int) -> dict[int, NlError]:
        """Send ``messages`` (built without NLM_F_ACK, sequence numbers in ``first_seq`` ..
        ``first_seq + count - 1``) many to a ``send()``, in chunks of ``CHUNK_BYTES``.

        The kernel answers a message without NLM_F_ACK only when it refuses it. The last message of
        each chunk is sent with NLM_F_ACK: rtnetlink handles a chunk's messages in order inside
        ``send()`` and queues its answers in that order, so once that ack is read every refusal of the
        chunk has been read too. One receive per chunk instead of one per message. Returns the
        refusals keyed by ``seq - first_seq``.
        """
        errors: dict[int, NlError] = {}

        def send_chunk(chunk: list[bytes]) -> None:
            last = chunk[-1]
            (flags,) = struct.unpack_from("=H", last, 6)
            chunk[-1] = last[:6] + struct.pack("=H", flags | NLM_F_ACK) + last[8:]
            (barrier,) = struct.unpack_from("=I", last, 8)
            self.sock.send(b"".join(chunk))
            while True:
                buf = self._recv()
                for off, size, kind, mflags, seq in self._messages(buf):
                    position = seq - first_seq
                    if kind != NLMSG_ERROR or not 0 <= position < count:
                        continue
                    error = self._error(buf, off, size, mflags)
                    if error is not None:
                        errors[position] = error
                    if seq == barrier:
                        return

        chunk: list[bytes] = []
        size = 0
        for message in messages:
            chunk.append(message)
            size += len(message)
            if size >= CHUNK_BYTES:
                send_chunk(chunk)
                chunk, size = [], 0
        if chunk:
            send_chunk(chunk)
        return errors
