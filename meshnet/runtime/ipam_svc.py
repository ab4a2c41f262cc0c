"""The IPAM service of the agent: the pure ``meshnet.ipam.Ipam`` core driven by trio beside NetworkDB.

Theory of operation (docs/agent-services.md sections 1, 4, 5; the core's wiring is in the docstring of
``meshnet/ipam/core.py``). The service owns one ``Ipam`` core and four kinds of work, all in trio tasks of
its ``run`` nursery, never in a hook:

- *Inputs.* The hooks ``on_db_events``/``on_member_event`` run inside the node's drive step and may not
  feed the node, so they only queue closures (``_inbox``) and wake the inbox task, which calls the core
  and then *pumps* it. The operations (``allocate``, ``create_network``, ...) call the core directly from
  the caller's task and pump at once.
  NetworkDB -> core: every ``ipam.*`` entry (one watch per table, ``include_hidden``: a failed owner's
  records are the truth about its blocks) -> ``handle_record``; ``NetworkSynced`` -> ``network_synced``;
  ``ClusterIdSet`` -> ``set_cluster_id``; ``RequestReceived`` whose payload starts with ``FRAME_PREFIX``
  -> ``receive_message``. Gossip -> core: ``MemberJoined``/``MemberUpdated`` (alive), ``MemberFailed``,
  ``MemberLeft``/``MemberReaped`` (left) are verdicts on a *host*; the core hears them about that host's
  identities (see "Identities" below).
- *Pump* (``_pump``, after every input): ``persists_to_write`` go to the persister; ``writes_to_send``
  become ``put_entry``/``delete_entry`` (joining the write's network first) and ``messages_to_send``
  become ``NetworkDB.request`` (one ``db_input`` step for all of them); result events resolve the
  waiting operation; the timer is re-armed to ``next_deadline``.
- *Persister.* The write-ahead order is the safety argument (ipam.md 3.6): the core gates every output
  behind the ``Persist`` that justifies it, and the persister calls ``persisted(seq)`` only after the
  records are appended to ``STATE_DIR/ipam/ipam.log`` durably (``O_DSYNC``; several persists share
  one write when they queue up: group commit). A failed write is retried and never acknowledged, so nothing that
  depends on it leaves the host.
- *Timer.* One task sleeps until ``next_deadline`` and calls ``handle_timer``.

Direct messages: the core treats them as one-way datagrams with its own retries and matching, so its
``SendMessage``s become ``NetworkDB.request``s to the destination identity's host that are never
answered: the messages of one pump for one identity go in one request (``FRAME_PREFIX``, the sender's
and the destination's identity names, then length-prefixed payloads, split below ``max_request_bytes``;
over TCP above ``RELIABLE_ABOVE`` bytes). The receiver drops (and counts) a request for another identity
(``misaddressed_messages``: an earlier identity of its host, gone) or whose sender identity is not of the
sending host (``foreign_messages``), and feeds each payload to its core as from the sender identity;
the answer is a request of its own. The requester's ``RequestTimedOut`` is ignored. The prefix keeps
IPAM payloads apart from other services' requests on the same NetworkDB.

Identities (ipam.md 3.10). The IPAM identity is one agent life, not the host: its name is
``HOST~xxxxxxxx`` (``HOST`` = the gossip name ``--name``, ``x`` = the low 32 bits of the random
incarnation in hex) and its ``host`` is the gossip name. A state directory resumes the identity, its
beliefs and allocations at once (``Ipam.restore``). ``leave`` (the agent's graceful leave: SIGTERM,
``meshnetctl leave``) is the core's: blocks go to heirs and the identity is retired; a restart with that
state directory keeps the retired state aside (``ipam.retired-N``) and starts a new identity of the same
host; so does a restart with an empty directory. The boundary translates:

- *Who runs where.* Each agent writes ``ipam.identity`` (scope ``""``, key = its host, value = its
  identity name); NetworkDB's owner authority makes a restarted host's value beat its previous life's.
  ``ipam.node`` records (accepted only when their ``host`` is the NetworkDB owner) and the writers of
  accepted records add identities of a host; a name's own ``HOST~`` prefix stands in until then.
- *Records.* NetworkDB names the writing host; an ``ipam.*`` key names the writing identity. A record
  reaches the core (with ``owner`` = that identity) only if the identity is of that host; else it is
  counted (``foreign_records``) and dropped.
- *Verdicts.* A host's current identity shares the host's gossip verdict; its other identities are
  superseded and told ``left`` (the host runs a newer identity, so they are gone: the core's
  ``_superseded`` and retired-owner reclaim rely on them not being alive). Before the host announced
  its identity, the only one known of it (or a legacy identity named as its host) counts as current;
  with several, a live host's identities are told ``failed``.
- *Predecessors.* After a restart without the state directory NetworkDB deletes this host's previous
  entries, its identities' ``ipam.node`` records included, so the core would never learn (and adopt)
  them. Every name of this host's form met in a record (writer, grant target, reclaimer, origin of a
  copy, retired subject, the previous ``ipam.identity`` value) is therefore handed to the core as a node
  record of this host; the core then retires it and takes its blocks back (predecessor adoption; the
  peers using a network reclaim its blocks there).
- *Operator.* ``reclaim`` takes a host (its identities that are not running: all if the host is not
  alive, else the superseded ones) or an exact identity; listings and allocation answers give
  ``owner`` as the host and ``owner_identity``; error messages name hosts in their reclaim commands.

The founder of the cluster
(no ``--join`` and no IPAM history) believes the VNI and pool spaces. The global tables count as synced
for the core when the node founded the cluster, or ``global_sync_timeout`` seconds after its first peer
appeared (NetworkDB reports a sync only for joins made while peers are known).

State files (``STATE_DIR/ipam/``, format 1): ``ipam.snap`` (pickle of the whole durable record map,
replaced atomically) and ``ipam.log`` (frames ``u32 length, u32 crc32, pickle of one Persist's
records``, appended through an ``O_DSYNC`` descriptor: durable when the write returns). A torn or
corrupt last frame (a crash during an append) is ignored;
damage elsewhere refuses the start. The directory is the agent's (mode 0700, locked by the agent).

API (``/v1/ipam``, JSON; errors ``{code, message}`` as ``ipam_api_error`` maps them):

    GET  /v1/ipam[?network=NET]            {node (host), identity, blocks: [{network, space, block,
                                           first, last, owner (host), owner_identity, epoch, state,
                                           free, owner_state}]}; NET ``-``: the global spaces (vni,
                                           pool); without it: every space known here
    POST /v1/ipam/reclaim {node: NAME | [NAME...], force?: bool}     NAME: a host or an identity
                                           {targets (identities), hosts, blocks, abandoned, force}
                                           once the reclaim ended
    GET  /v1/ipam/networks/NET             the network's IPAM config (subnets, gateway, VNI, creator)
    For tests and benchmarks (CnmService calls the methods below instead):
    POST /v1/ipam/networks {id, subnets?: [CIDR], ipv6?}        201 config (a pool subnet if none given)
    POST /v1/ipam/attach {network}                              join and attach a network created elsewhere
    POST /v1/ipam/allocate {network, tag, preferred?, ipv6?}    {network, address, tag, owner (host),
                                                                 owner_identity}
    POST /v1/ipam/release {network, address, tag}               {released: bool}
    POST /v1/ipam/latency/reset                                 forget ``stats()["latency_ms"]``

The operations used by ``CnmService`` (docs/agent-services.md section 1) raise the core's ``IpamError``
subclasses within the core's budget, or ``LocalProtocolError`` for bad input (nothing changed).
``ipam_api_error`` maps both to ``ApiError``. ``attach`` is both the service hook (``attach(node)``,
synchronous) and the network attach of the contract (``await attach(network_id)``); ``attach_network``
is the unambiguous name of the latter. ``delete_network`` is a no-op: the core has no network deletion
yet (addresses are released per endpoint; the blocks and the VNI stay owned).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import random
import re
import struct
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from meshnet.core.errors import ApiError, ConfigError, DecodeError, LocalProtocolError
from meshnet.gossip import events as gev
from meshnet.ipam import (
    TABLE_BLOCK,
    TABLE_NETCFG,
    TABLE_NODE,
    TABLE_RETIRED,
    Alarm,
    Allocated,
    Conflict,
    Exhausted,
    InUse,
    Ipam,
    IpamConfig,
    IpamError,
    LeaveCompleted,
    NetConfig,
    NetworkCreated,
    OperationFailed,
    Persist,
    Reclaimed,
    ReclaimRefused,
    SubnetConfig,
    Unknown,
    Unreachable,
)
from meshnet.ipam.records import (
    NodeRecord,
    decode_block,
    decode_node,
    encode_node,
    parse_block_key,
    parse_writer_key,
)
from meshnet.ipam.state import Identity
from meshnet.networkdb import (
    ClusterIdSet,
    EntryCreated,
    EntryUpdated,
    NetworkSynced,
    RequestReceived,
)
from meshnet.runtime.service import BaseService

__all__ = [
    "IpamService",
    "IpamStore",
    "ipam_api_error",
    "netcfg_json",
    "FRAME_PREFIX",
    "TABLE_IDENTITY",
    "encode_requests",
    "decode_request",
    "identity_host",
]

log = logging.getLogger("meshnet.ipam")

#: Marks a NetworkDB request payload as IPAM messages between two identities (``encode_requests``).
#: (``ipam\x00``/``ipam\x01``, the framings without identity names, are no longer accepted.)
FRAME_PREFIX = b"ipam\x02"
#: The table of the service's own records: key = host (gossip name), value = that host's current IPAM
#: identity name (UTF-8), written by the host itself (NetworkDB's owner authority makes a restarted
#: host's value win over its previous life's).
TABLE_IDENTITY = "ipam.identity"
#: A batch request stays below NetworkDB's max_request_bytes (64 KiB by default) by this margin.
BATCH_MARGIN = 1024
#: IPAM messages longer than this go over TCP (a UDP datagram carries about 1,400 bytes).
RELIABLE_ABOVE = 1000
#: Tables the service watches (hidden entries included).
TABLES = (TABLE_BLOCK, TABLE_NETCFG, TABLE_RETIRED, TABLE_NODE)
#: Compact the log when it holds more frames than this (and more than the snapshot's records).
COMPACT_MIN_FRAMES = 2048
PERSIST_RETRY_INTERVAL = 1.0
STORE_FORMAT = 1
_FRAME = struct.Struct(">II")
_LEN = struct.Struct(">I")
_NAME_LEN = struct.Struct(">H")
#: The suffix of an identity name (``HOST~`` + 8 hex digits of the incarnation).
_SUFFIX = re.compile(r"[0-9a-f]{8}")
#: Operation durations kept per kind for ``stats()`` (the benchmark reads them).
LATENCY_SAMPLES = 4096
#: Slack over the core's own budget before an operation's wait gives up (the core never hangs).
_OP_SLACK = 5.0


# ---------------------------------------------------------------------- errors


def ipam_api_error(err: Exception) -> ApiError:
    """The HTTP error of an IPAM failure (docs/agent-services.md section 1)."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, Exhausted):
        return ApiError(507, "exhausted", err.message)
    if isinstance(err, Unreachable):
        return ApiError(503, "unreachable", err.message)
    if isinstance(err, Unknown):
        return ApiError(503, "unknown", err.message)
    if isinstance(err, InUse):
        return ApiError(409, "in_use", err.message)
    if isinstance(err, Conflict):
        return ApiError(409, "conflict", err.message)
    if isinstance(err, ReclaimRefused):
        return ApiError(409, "reclaim_refused", err.message)
    if isinstance(err, IpamError):
        return ApiError(409, err.code, err.message)
    if isinstance(err, LocalProtocolError | ValueError):
        return ApiError(400, "invalid", str(err))
    return ApiError(500, "internal", f"{type(err).__name__}: {err}")


# ---------------------------------------------------------------------- message framing


def encode_requests(payloads: Sequence[bytes], max_bytes: int, *, src: str, dst: str) -> list[bytes]:
    """The NetworkDB request payloads carrying ``payloads`` (IPAM messages from identity ``src`` for
    identity ``dst``, in order): ``FRAME_PREFIX``, the two names (u16 length + UTF-8 each), then the
    messages as frames (u32 length + payload), each request at most ``max_bytes`` long. A message too
    large even alone is returned alone (NetworkDB refuses it; the caller counts it)."""
    head = FRAME_PREFIX + b"".join(_NAME_LEN.pack(len(b)) + b for b in (src.encode(), dst.encode()))
    out: list[bytes] = []
    group: list[bytes] = []
    size = len(head)
    for p in payloads:
        need = _LEN.size + len(p)
        if group and size + need > max_bytes:
            out.append(head + b"".join(group))
            group, size = [], len(head)
        group.append(_LEN.pack(len(p)) + p)
        size += need
    if group:
        out.append(head + b"".join(group))
    return out


def decode_request(data: bytes) -> tuple[str, str, list[bytes]] | None:
    """(sender identity, destination identity, IPAM messages) of a NetworkDB request payload; None if it
    is not IPAM's or is malformed."""
    if not data.startswith(FRAME_PREFIX):
        return None
    pos = len(FRAME_PREFIX)
    names = []
    for _ in range(2):
        if pos + _NAME_LEN.size > len(data):
            return None
        (n,) = _NAME_LEN.unpack_from(data, pos)
        pos += _NAME_LEN.size
        if n == 0 or pos + n > len(data):
            return None
        try:
            names.append(data[pos : pos + n].decode())
        except UnicodeDecodeError:
            return None
        pos += n
    out = []
    while pos < len(data):
        if pos + _LEN.size > len(data):
            return None
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if n == 0 or pos + n > len(data):
            return None
        out.append(data[pos : pos + n])
        pos += n
    return (names[0], names[1], out) if out else None


def identity_host(name: str) -> str:
    """The host (gossip name) an IPAM identity name spells: ``HOST~xxxxxxxx`` -> ``HOST``; any other
    name (an identity made before names carried a suffix) is its own host."""
    base, sep, suffix = name.rpartition("~")
    return base if sep and base and _SUFFIX.fullmatch(suffix) else name


# ---------------------------------------------------------------------- state files


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class IpamStore:
    """``STATE_DIR/ipam``: the durable record map (snapshot + append-only log). Not thread-safe: one
    caller at a time (the persister). ``records`` mirrors what is on disk."""

    SNAP = "ipam.snap"
    LOG = "ipam.log"

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: dict[tuple[Any, ...], Any] = {}
        self.log_frames = 0
        self._log_fd: int | None = None

    def load(self) -> dict[tuple[Any, ...], Any]:
        """Read the directory (created if missing); raises ConfigError naming the damaged file."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {self.path}: {exc.strerror}; check --state-dir") from None
        snap = os.path.join(self.path, self.SNAP)
        records: dict[tuple[Any, ...], Any] = {}
        try:
            with open(snap, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise ConfigError(f"cannot read {snap}: {exc.strerror}") from None
        if raw is not None:
            try:
                fmt, items = pickle.loads(raw)
                if fmt != STORE_FORMAT:
                    raise ValueError(f"unknown format {fmt!r}")
                records = dict(items)
            except Exception as exc:
                raise ConfigError(
                    f"{snap} is damaged ({exc}); restore it, or start with an empty --state-dir "
                    "(this node then takes a new IPAM identity)"
                ) from None
        logp = os.path.join(self.path, self.LOG)
        try:
            with open(logp, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise ConfigError(f"cannot read {logp}: {exc.strerror}") from None
        pos = frames = 0
        while pos < len(data):
            if pos + _FRAME.size > len(data):
                break  # torn header
            length, crc = _FRAME.unpack_from(data, pos)
            body = data[pos + _FRAME.size : pos + _FRAME.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                if pos + _FRAME.size + length >= len(data):
                    break  # a torn or corrupt last frame: a crash during the append
                raise ConfigError(f"{logp} is damaged at byte {pos}; restore it or empty --state-dir")
            try:
                items = pickle.loads(body)
            except Exception as exc:
                raise ConfigError(f"{logp} frame at byte {pos} is damaged ({exc})") from None
            for key, value in items:
                if value is None:
                    records.pop(key, None)
                else:
                    records[key] = value
            frames += 1
            pos += _FRAME.size + length
        if pos < len(data):
            log.warning("ignoring a torn last frame in %s (%d bytes)", logp, len(data) - pos)
            with open(logp, "r+b") as fh:
                fh.truncate(pos)
                os.fsync(fh.fileno())
        self.records = records
        self.log_frames = frames
        return dict(records)

    @staticmethod
    def encode(batch: Sequence[Persist]) -> bytes:
        """The log frames of the persists. The persister encodes in the trio thread, so the writer
        thread needs the interpreter lock only to start, after its one ``write`` and to return."""
        parts = []
        for p in batch:
            body = pickle.dumps(p.records, protocol=pickle.HIGHEST_PROTOCOL)
            parts.append(_FRAME.pack(len(body), zlib.crc32(body)) + body)
        return b"".join(parts)

    def append(self, batch: Sequence[Persist], data: bytes | None = None) -> None:
        """Append the persists as frames (``data``: their ``encode``, if done already), durably, before
        returning (raises OSError). Updates ``records`` only after.

        The log is opened ``O_DSYNC``: a ``write`` returns only once its data, and the file size that
        makes it readable, are on stable storage (the ``fdatasync`` guarantee), in one system call
        instead of a write and an fsync. A new log's directory entry is made durable when the log is
        created (after a compaction removed the previous one)."""
        if data is None:
            data = self.encode(batch)
        if self._log_fd is None:
            self._log_fd = os.open(
                os.path.join(self.path, self.LOG),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC,
                0o600,
            )
            _fsync_dir(self.path)
        view = memoryview(data)
        while view:
            view = view[os.write(self._log_fd, view) :]
        self.log_frames += len(batch)
        for p in batch:
            for key, value in p.records:
                if value is None:
                    self.records.pop(key, None)
                else:
                    self.records[key] = value

    def wants_compaction(self) -> bool:
        return self.log_frames > max(COMPACT_MIN_FRAMES, len(self.records))

    def compact(self) -> None:
        """Write ``records`` as the snapshot (atomically), then empty the log (raises OSError)."""
        data = pickle.dumps((STORE_FORMAT, list(self.records.items())), protocol=pickle.HIGHEST_PROTOCOL)
        final = os.path.join(self.path, self.SNAP)
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, self.LOG))
        _fsync_dir(self.path)
        self.log_frames = 0

    def move_aside(self) -> str:
        """Rename the directory to ``ipam.retired-N`` and start an empty one; returns the new name."""
        self.close()
        n = 1
        while os.path.exists(f"{self.path}.retired-{n}"):
            n += 1
        aside = f"{self.path}.retired-{n}"
        os.rename(self.path, aside)
        os.makedirs(self.path, mode=0o700)
        self.records = {}
        self.log_frames = 0
        return aside

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


# ---------------------------------------------------------------------- helpers


class _Pending:
    """An operation waiting for its result event."""

    __slots__ = ("done", "event")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.event: Any = None


def netcfg_json(c: NetConfig) -> dict[str, Any]:
    return {
        "network": c.network,
        "subnets": [
            {"subnet": s.subnet, "ip_range": s.ip_range, "gateway": s.gateway, "aux": list(s.aux)}
            for s in c.subnets
        ],
        "vni": c.vni,
        "creator": c.creator,
        "cluster_id": c.cluster_id,
        "pool_subnet": c.pool_subnet,
    }


def _block_json(b: Any, host_of: Callable[[str], str] = identity_host) -> dict[str, Any]:
    return {
        "network": b.network,
        "space": b.space,
        "block": b.block,
        "first": b.first,
        "last": b.last,
        "owner": host_of(b.owner) if b.owner else "",
        "owner_identity": b.owner,
        "epoch": b.epoch,
        "state": b.state,
        "free": b.free,
        "owner_state": b.owner_state,
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of durations in seconds, as milliseconds."""
    if not samples:
        return {"n": 0}
    ms = sorted(x * 1000 for x in samples)

    def q(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))], 3)

    return {"n": len(ms), "p50": q(0.5), "p99": q(0.99), "max": round(ms[-1], 3)}


def _body(request: Any) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        obj = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_request", "body must be a JSON object") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    return obj


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, "bad_request", f"body needs {name!r}")
        return None
    value = body[name]
    if not isinstance(value, kind) or (kind is str and not value):
        raise ApiError(400, "bad_request", f"{name!r} has the wrong type or is empty")
    return value


# ---------------------------------------------------------------------- the service


class IpamService(BaseService):
    """Manager-free IPAM in the agent (see the module docstring)."""

    name = "ipam"
    api_prefixes = ("/v1/ipam",)

    def __init__(
        self,
        config: IpamConfig | None = None,
        *,
        rng: random.Random | None = None,
        global_sync_timeout: float = 1.0,
        store_class: type[IpamStore] | None = None,
    ) -> None:
        """``store_class``: the state files' class (tests inject a slow or failing disk with it)."""
        self.config = config if config is not None else IpamConfig()
        self._store_class = store_class or IpamStore
        self._rng = rng
        self.global_sync_timeout = global_sync_timeout
        self.node: Any = None
        self.core: Ipam | None = None
        self.store: IpamStore | None = None
        self._watches: set[Any] = set()
        self._inbox: deque[Callable[[float], Any]] = deque()
        self._wake = trio.Event()
        self._persist_queue: list[Persist] = []
        self._persist_wake = trio.Event()
        self._ops: dict[int, _Pending] = {}
        self._deadline = math.inf
        self._timer_scope: trio.CancelScope | None = None
        self._timer_kick = trio.Event()
        self._synced: set[str] = set()
        self._sync_waits: dict[str, trio.Event] = {}
        self._global_synced = False
        self._founder = False
        self._running = False
        #: identity name -> host (gossip name), from verified ``ipam.node`` records and ``ipam.identity``
        self._host_by_ident: dict[str, str] = {}
        #: host -> the identity names known on it; host -> its current identity (``ipam.identity``)
        self._idents: dict[str, set[str]] = {}
        self._current: dict[str, str] = {}
        #: host -> gossip verdict (alive | failed | left); identity -> the verdict the core was told
        self._gossip: dict[str, str] = {}
        self._told: dict[str, str] = {}
        #: names of this host's earlier identities already shown to the core (predecessor adoption)
        self._predecessors: set[str] = set()
        #: identities whose node record the core has (from NetworkDB, or made here for a predecessor)
        self._noded: set[str] = set()
        self._identity_watch: Any = None
        self.persist_error: str | None = None
        #: the latest durations (s) of successful operations, by kind (``stats()["latency_ms"]``)
        self._latency: dict[str, deque[float]] = {}
        self.counters: dict[str, int] = {
            "inputs": 0,
            "input_errors": 0,
            "persist_batches": 0,
            "persists": 0,
            "persist_errors": 0,
            "compactions": 0,
            "writes": 0,
            "write_errors": 0,
            "messages_sent": 0,
            "requests_sent": 0,
            "send_errors": 0,
            "bad_batches": 0,
            "messages_received": 0,
            "misaddressed_messages": 0,
            "foreign_messages": 0,
            "foreign_records": 0,
            "undeliverable_messages": 0,
            "predecessors_found": 0,
            "alarms": 0,
        }

    # ------------------------------------------------------------------ hooks

    def attach(self, target: Any) -> Any:  # type: ignore[override]
        """Hook ``attach(node)`` (synchronous); or ``await attach(network_id)`` (the contract's network
        attach, see ``attach_network``)."""
        if isinstance(target, str):
            return self.attach_network(target)
        self._attach_node(target)
        return None

    def _attach_node(self, node: Any) -> None:
        self.node = node
        db = node.db
        now = trio.current_time()
        rng = self._rng if self._rng is not None else random.Random(node.rng.getrandbits(64))
        state_dir = db.settings.state_dir
        records: dict[tuple[Any, ...], Any] = {}
        if state_dir is not None:
            self.store = self._store_class(os.path.join(state_dir, "ipam"))
            records = self.store.load()
        core = None
        retired = False
        if records:
            try:
                core = Ipam.restore(self.config, records, rng=rng, now=now)
            except LocalProtocolError as exc:
                # A retired identity (a graceful leave ended it) is never resumed: keep its state for
                # forensics and start a new one (see the module docstring on names).
                assert self.store is not None
                aside = self.store.move_aside()
                log.warning("IPAM state not resumed (%s); moved to %s, starting a new identity", exc, aside)
                records, retired = {}, True
        if core is not None:
            if core.identity.host != node.name:
                raise ConfigError(
                    f"IPAM state belongs to host {core.identity.host!r} (identity {core.name}), not "
                    f"{node.name!r}; pass --name {core.identity.host}"
                )
            log.info(
                "IPAM identity %s resumed from %s: %d blocks believed",
                core.name,
                self.store.path if self.store else "?",
                len(core.believed()),
            )
        else:
            cid = db.core.cluster_id
            # Founder: no --join and no IPAM history here. A retired identity's successor is not one even
            # without --join: the cluster (and its VNI space) exists already.
            self._founder = not node.seeds and bool(cid) and not retired
            # A new identity: a name of its own (HOST~ + the incarnation's low 32 bits), never the name of
            # an earlier identity of this host (ipam.md 3.10); host = the gossip name.
            inc = rng.getrandbits(64)
            ident = Identity(f"{node.name}~{inc & 0xFFFFFFFF:08x}", node.name, inc, 0, cid)
            core = Ipam(self.config, identity=ident, rng=rng, now=now, founder=self._founder)
            log.info("IPAM identity %s created%s", core.name, " (cluster founder)" if self._founder else "")
        self.core = core
        self._learn(core.name, node.name)
        self._current[node.name] = core.name
        if db.core.cluster_id and not core.cluster_id:
            core.set_cluster_id(db.core.cluster_id, now=now)
        if not node.seeds:
            # Nobody to sync with: the founder (or a lone restart) knows all there is.
            self._global_synced = True
            core.network_synced("", now=now)
        for table in TABLES:
            self._watches.add(db.core.watch(table=table, include_hidden=True))
        self._identity_watch = db.core.watch(table=TABLE_IDENTITY, include_hidden=True)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        assert self.core is not None, "attach(node) first"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._persister)
            nursery.start_soon(self._timer_loop)
            self._running = True
            joined = set(self.node.db.core.networks())
            missing = [n for n in self.core.attached_networks() if n not in joined]
            if missing:
                self.node.db_input(lambda now: [self.node.db.core.join_network(n, now=now) for n in missing])
            # Announce this host's current identity (peers map its gossip verdicts to it).
            me, ident = self.node.name, self.core.name.encode()
            self.node.db_input(
                lambda now: self.node.db.core.put_entry(TABLE_IDENTITY, "", me, ident, now=now)
            )
            self._pump()
            task_status.started()
            await self._inbox_loop()

    def on_db_events(self, events: list[Any], now: float) -> None:
        core = self.core
        if core is None:
            return
        queued = False
        for ev in events:
            kind = type(ev)
            if kind is EntryCreated or kind is EntryUpdated:
                if ev.watch_id in self._watches:
                    self._inbox.append(lambda t, e=ev: self._on_record(e, t))
                    queued = True
                elif ev.watch_id == self._identity_watch:
                    self._inbox.append(lambda t, e=ev: self._on_identity(e, t))
                    queued = True
            elif kind is RequestReceived:
                if ev.payload.startswith(b"ipam"):
                    decoded = decode_request(ev.payload)
                    if decoded is None:
                        self.counters["bad_batches"] += 1
                        continue
                    self._inbox.append(lambda t, n=ev.node, d=decoded: self._on_messages(n, *d, t))
                    queued = True
            elif kind is NetworkSynced:
                if ev.network == "" and not ev.peers and not self._global_synced:
                    continue  # the empty sync of the global network at start (no peers known yet)
                self._inbox.append(lambda t, n=ev.network: self._synced_now(n, t))
                queued = True
            elif kind is ClusterIdSet:
                self._inbox.append(lambda t, c=ev.cluster_id: core.set_cluster_id(c, now=t))
                queued = True
        if queued:
            self._wake.set()

    def on_member_event(self, event: Any, now: float) -> None:
        core = self.core
        if core is None:
            return
        me = self.node.name
        fn: Callable[[float], Any] | None = None
        if isinstance(event, gev.MemberJoined | gev.MemberUpdated):
            if event.member.name != me and event.member.state == "alive":
                fn = lambda t, n=event.member.name: self._verdict(n, "alive", t)  # noqa: E731
        elif isinstance(event, gev.MemberFailed):
            fn = lambda t, n=event.member.name: self._verdict(n, "failed", t)  # noqa: E731
        elif isinstance(event, gev.MemberLeft):
            fn = lambda t, n=event.member.name: self._verdict(n, "left", t)  # noqa: E731
        elif isinstance(event, gev.MemberReaped):
            fn = lambda t, n=event.name: self._verdict(n, "left", t)  # noqa: E731
        if not self._global_synced and (
            isinstance(event, gev.JoinCompleted) or (isinstance(event, gev.MemberJoined) and fn is not None)
        ):
            # The first peer: its entries arrive by NetworkDB's bootstrap sync shortly after.
            self._global_synced = True
            self._inbox.append(self._schedule_global_synced)
            self._wake.set()
        if fn is not None:
            self._inbox.append(fn)
            self._wake.set()

    async def leave(self) -> None:
        """The core's graceful leave: blocks (with their manifests) go to heirs, bounded by
        ``leave_wait`` plus slack; the identity is retired."""
        if self.core is None or not self._running:
            return
        try:
            with trio.move_on_after(self.config.leave_wait + 2.0):
                ev = await self._run_op(lambda now: self.core.leave(now=now), self.config.leave_wait)
                if isinstance(ev, LeaveCompleted):
                    log.info(
                        "IPAM leave: %d blocks handed over, %d unconfirmed", ev.handed, len(ev.unconfirmed)
                    )
                # Let the persister and NetworkDB take the last records before the gossip leave.
                with trio.move_on_after(1.0):
                    while self._persist_queue:
                        await trio.sleep(0.01)
        except IpamError as exc:
            log.warning("IPAM leave failed: %s", exc)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        if self.core is not None:
            out["identity"] = self.core.name
            out["host"] = self.core.identity.host
            out["hosts"] = {h: self._current.get(h, "") for h in sorted(self._idents)}
            out["core"] = self.core.stats()
        out["pending_ops"] = len(self._ops)
        out["persist_queue"] = len(self._persist_queue)
        out["persist_error"] = self.persist_error
        out["state_dir"] = self.store.path if self.store is not None else None
        out["latency_ms"] = {kind: _percentiles(list(d)) for kind, d in sorted(self._latency.items())}
        return out

    def reset_latency(self) -> None:
        """Forget the latency samples (``POST /v1/ipam/latency/reset``, for benchmarks)."""
        self._latency.clear()

    # ------------------------------------------------------------------ the contract (CnmService)

    async def create_network(
        self, network_id: str, *, subnets: Sequence[str | SubnetConfig] = (), ipv6: bool = False
    ) -> NetConfig:
        """Create a network: its VNI and subnets (a pool subnet if none are given); this node then
        owns every block. The network's NetworkDB network is joined before its first record is written
        (``_emit``), i.e. only once the core accepted the id."""
        subs = list(subnets) or None
        if ipv6 and not any(":" in (s.subnet if isinstance(s, SubnetConfig) else s) for s in subs or ()):
            raise LocalProtocolError("an IPv6 network needs an IPv6 subnet (there is no IPv6 pool)")
        ev = await self._run_op(lambda now: self.core.create_network(network_id, subnets=subs, now=now))
        assert isinstance(ev, NetworkCreated)
        return ev.netcfg

    async def attach_network(self, network_id: str) -> None:
        """Use a network created elsewhere: join its NetworkDB network (waiting for the join sync,
        bounded), publish its config and ask for one block of each subnet."""
        self._require()
        await self._join(network_id, wait=True)
        self._step(lambda now: self.core.attach(network_id, now=now))

    async def allocate(
        self, network_id: str, *, tag: str, preferred: str | None = None, ipv6: bool = False
    ) -> str:
        """An address in the network, held for ``tag`` (idempotent per tag)."""
        ev = await self.allocate_event(network_id, tag=tag, preferred=preferred, ipv6=ipv6)
        return ev.value

    async def allocate_event(
        self, network_id: str, *, tag: str, preferred: str | None = None, ipv6: bool = False
    ) -> Allocated:
        """``allocate`` with the whole ``Allocated`` event (the owner that recorded it)."""
        if preferred is not None:
            preferred = preferred.split("/", 1)[0]
        family = None if preferred is not None else (6 if ipv6 else 4)
        t0 = trio.current_time()
        ev = await self._run_op(
            lambda now: self.core.allocate(network_id, tag=tag, address=preferred, family=family, now=now)
        )
        assert isinstance(ev, Allocated)
        kind = "allocate_local" if ev.owner == self.core.name else "allocate_remote"
        self._latency.setdefault(kind, deque(maxlen=LATENCY_SAMPLES)).append(trio.current_time() - t0)
        return ev

    async def release(self, network_id: str, address: str, *, tag: str) -> None:
        """Release ``address`` held for ``tag``; a no-op if this node holds no such allocation."""
        self._require()
        addr = address.split("/", 1)[0]
        ok = self._step(lambda now: self.core.release(network_id, addr, tag=tag, now=now))
        if not ok:
            log.debug("release of %s in %s for %s: not held here", addr, network_id, tag)

    async def delete_network(self, network_id: str) -> None:
        """A no-op: the IPAM core has no network deletion yet (the blocks and the VNI stay owned)."""
        self._require()

    def netcfg(self, network_id: str) -> NetConfig | None:
        return self.core.netcfg(network_id) if self.core is not None else None

    def needs_network(self, network_id: str) -> bool:
        """Whether IPAM must stay joined to the network's NetworkDB network (a leave would delete its
        records there cluster-wide): it uses the network (created or attached; the core has no detach
        yet, so this stays true), or it writes an ``ipam.*`` entry there (its blocks, grants, copies)."""
        if self.core is None or network_id in self.core.attached_networks():
            return True
        db = self.node.db.core
        me = self.node.name
        return any(
            e.owner == me for table in TABLES for e in db.walk_table(table, network_id, include_hidden=True)
        )

    # ------------------------------------------------------------------ more operations

    async def reclaim(self, nodes: Sequence[str], *, force: bool = False) -> Reclaimed:
        """``meshnetctl ipam reclaim``: take the space of nodes asserted gone (single winner). A host
        (gossip) name stands for its identities that are not running: all of them if the host is not
        alive, else its superseded ones; an exact identity name for itself."""
        targets = self._reclaim_targets(nodes)
        ev = await self._run_op(
            lambda now: self.core.reclaim(targets, force=force, now=now), self.config.reclaim_budget
        )
        assert isinstance(ev, Reclaimed)
        return ev

    def listing(self, network: str | None = None) -> list[Any]:
        self._require()
        return self.core.listing(network)

    # ------------------------------------------------------------------ API

    async def handle_api(self, node: Any, request: Any) -> Any:
        from meshnet.runtime.api import Response

        self._require()
        path, method = request.path.rstrip("/") or "/", request.method
        try:
            if path == "/v1/ipam":
                if method != "GET":
                    raise ApiError(405, "method_not_allowed", "/v1/ipam accepts GET")
                query = {k: v[-1] for k, v in parse_qs(urlsplit(request.target).query).items()}
                network = query.get("network")
                if network == "-":
                    network = ""  # the global spaces (vni, pool), as meshnetctl spells them
                known = self.core.global_config() if network == "" else self.core.netcfg(network or "")
                if network is not None and known is None:
                    raise ApiError(404, "not_found", f"network {network or '-'} is not known here (yet)")
                rows = [_block_json(b, self.host_of) for b in self.core.listing(network)]
                return Response(200, {"node": self.node.name, "identity": self.core.name, "blocks": rows})
            if method != "POST" and path != "/v1/ipam/networks" and not path.startswith("/v1/ipam/networks/"):
                raise ApiError(405, "method_not_allowed", f"{path} accepts POST")
            if path == "/v1/ipam/reclaim":
                body = _body(request)
                raw = _field(body, "node", (str, list))
                nodes = [raw] if isinstance(raw, str) else raw
                if not nodes or not all(isinstance(n, str) and n for n in nodes):
                    raise ApiError(400, "bad_request", "'node' must be a name or a list of names")
                force = bool(_field(body, "force", bool, required=False))
                ev = await self.reclaim(nodes, force=force)
                return Response(
                    200,
                    {
                        "targets": list(ev.targets),
                        "hosts": sorted({self.host_of(t) for t in ev.targets}),
                        "blocks": ev.blocks,
                        "abandoned": ev.abandoned,
                        "force": force,
                    },
                )
            if path == "/v1/ipam/allocate":
                body = _body(request)
                ev = await self.allocate_event(
                    _field(body, "network", str),
                    tag=_field(body, "tag", str),
                    preferred=_field(body, "preferred", str, required=False),
                    ipv6=bool(_field(body, "ipv6", bool, required=False)),
                )
                return Response(
                    200,
                    {
                        "network": ev.network,
                        "address": ev.value,
                        "tag": ev.tag,
                        "owner": self.host_of(ev.owner),
                        "owner_identity": ev.owner,
                    },
                )
            if path == "/v1/ipam/release":
                body = _body(request)
                network, address, tag = (
                    _field(body, "network", str),
                    _field(body, "address", str),
                    _field(body, "tag", str),
                )
                self._require()
                held = self._step(lambda now: self.core.release(network, address, tag=tag, now=now))
                return Response(200, {"released": bool(held)})
            if path == "/v1/ipam/latency/reset":
                self.reset_latency()
                return Response(200, {"reset": True})
            if path == "/v1/ipam/attach":
                body = _body(request)
                network = _field(body, "network", str)
                await self.attach_network(network)
                c = self.core.netcfg(network)
                return Response(200, {"network": network, "netcfg": netcfg_json(c) if c else None})
            if path == "/v1/ipam/networks" and method == "POST":
                body = _body(request)
                subnets = _field(body, "subnets", list, required=False) or []
                if not all(isinstance(s, str) for s in subnets):
                    raise ApiError(400, "bad_request", "'subnets' must be a list of CIDR strings")
                c = await self.create_network(
                    _field(body, "id", str),
                    subnets=subnets,
                    ipv6=bool(_field(body, "ipv6", bool, required=False)),
                )
                return Response(201, netcfg_json(c))
            if path.startswith("/v1/ipam/networks/") and method == "GET":
                network = path[len("/v1/ipam/networks/") :]
                c = self.core.netcfg(network)
                if c is None:
                    raise ApiError(404, "not_found", f"network {network} is not known here")
                return Response(200, netcfg_json(c))
            raise ApiError(404, "not_found", f"no such endpoint {method} {path}")
        except (IpamError, LocalProtocolError) as exc:
            raise ipam_api_error(exc) from None

    # ------------------------------------------------------------------ identities at the boundary

    def host_of(self, ident: str) -> str:
        """The host (gossip name) of an IPAM identity: its verified node record's, else its name's."""
        return self._host_by_ident.get(ident) or identity_host(ident)

    def _learn(self, ident: str, host: str) -> bool:
        """Record that ``ident`` is an identity of ``host``; True if that is news."""
        old = self._host_by_ident.get(ident)
        if old == host:
            return False
        if old is not None:
            self._idents.get(old, set()).discard(ident)
        self._host_by_ident[ident] = host
        self._idents.setdefault(host, set()).add(ident)
        return True

    def _on_record(self, e: Any, now: float) -> None:
        """An ``ipam.*`` entry: NetworkDB names its writer host (``e.owner``), the key its writer identity.
        Passed to the core only if that identity is the host's (node record, else the name); the core
        then checks the key against the identity as ``owner``."""
        core = self.core
        assert core is not None
        try:
            if e.table == TABLE_NODE:
                writer = e.key
            elif e.table == TABLE_BLOCK:
                writer = parse_block_key(e.key)[2]
            else:
                writer = parse_writer_key(e.key)[1]
        except DecodeError:
            core.handle_record(e.table, e.network, e.key, e.value, now=now)  # counted by the core
            return
        if e.table == TABLE_NODE:
            try:
                host = decode_node(e.value).host
            except DecodeError:
                core.handle_record(e.table, e.network, e.key, e.value, now=now)
                return
            if host != e.owner:
                self.counters["foreign_records"] += 1
                return
            self._noded.add(writer)
        elif self.host_of(writer) != e.owner:
            self.counters["foreign_records"] += 1
            return
        if self._learn(writer, e.owner):
            self._reconcile(e.owner, now)
        self._spot_predecessors(e, writer, now)
        core.handle_record(e.table, e.network, e.key, e.value, owner=writer, now=now)

    def _spot_predecessors(self, e: Any, writer: str, now: float) -> None:
        """Names of earlier identities of this host in a record (writer, grant target, reclaimer,
        origin of a copy, retired subject) that no node record told the core about: after a restart
        without the state directory NetworkDB deletes this host's previous entries (owner authority),
        its node records included, so the core would never adopt them. Tell it (host = this host)."""
        core = self.core
        assert core is not None
        names = [writer]
        if e.table == TABLE_BLOCK:
            with contextlib.suppress(DecodeError):
                r = decode_block(e.value)
                names += [r.to, r.by, r.origin]
        elif e.table == TABLE_RETIRED:
            names.append(parse_writer_key(e.key)[0])
        me = self.node.name
        for n in names:
            if not n or n == core.name or n in self._predecessors or identity_host(n) != me:
                continue
            self._predecessors.add(n)
            if n in self._noded:
                continue  # its node record reached the core
            self._noded.add(n)
            self.counters["predecessors_found"] += 1
            self._learn(n, me)
            log.info("IPAM: %s is an earlier identity of this host; adopting its blocks", n)
            core.handle_record(TABLE_NODE, "", n, encode_node(NodeRecord(me, 0, "")), owner=n, now=now)

    def _on_identity(self, e: Any, now: float) -> None:
        """``ipam.identity``: a host's current IPAM identity (written by the host itself)."""
        core = self.core
        assert core is not None
        try:
            ident = e.value.decode()
        except UnicodeDecodeError:
            ident = ""
        if e.key != e.owner or not ident or self.host_of(ident) != e.key:
            self.counters["foreign_records"] += 1
            return
        if e.key == self.node.name:
            if ident != core.name and ident not in self._predecessors and ident not in self._noded:
                # this host's previous life (NetworkDB re-asserts ours over it)
                self._predecessors.add(ident)
                self._noded.add(ident)
                self.counters["predecessors_found"] += 1
                self._learn(ident, e.key)
                core.handle_record(
                    TABLE_NODE, "", ident, encode_node(NodeRecord(e.key, 0, "")), owner=ident, now=now
                )
            return
        self._learn(ident, e.key)
        self._current[e.key] = ident
        self._reconcile(e.key, now)

    def _verdict(self, host: str, state: str, now: float) -> None:
        """A gossip verdict (alive | failed | left) about ``host``."""
        self._gossip[host] = state
        self._reconcile(host, now)

    def _reconcile(self, host: str, now: float) -> None:
        """Tell the core about the identities of ``host``: its current one (``ipam.identity``) shares
        the host's gossip verdict; the others are superseded (the host runs a newer identity, so they
        are gone: ``left``). Until the host announced its current one, the only identity known of it
        (or a legacy identity named as its host) counts as current; with several, a live host's
        identities count as failed (the core neither sends them work nor picks them as heirs). This
        host's earlier identities are left to adoption."""
        core = self.core
        if core is None or host == self.node.name:
            return
        verdict = self._gossip.get(host)
        if verdict is None:
            return
        idents = self._idents.get(host, set())
        cur = self._current.get(host)
        if cur is None and idents:
            # not announced (yet): a legacy identity named as its host, or the only one known
            cur = host if host in idents else (next(iter(idents)) if len(idents) == 1 else None)
        for ident in sorted(idents):
            if ident == cur:
                want = verdict
            elif cur is not None:
                want = "left"
            else:
                want = "failed" if verdict == "alive" else verdict
            if self._told.get(ident) == want:
                continue
            self._told[ident] = want
            if want == "alive":
                core.node_alive(ident, now=now)
            elif want == "failed":
                core.node_failed(ident, now=now)
            else:
                core.node_left(ident, now=now)

    def _on_messages(self, node: str, src: str, dst: str, payloads: list[bytes], now: float) -> None:
        """IPAM messages from host ``node``: for this identity, from an identity of that host."""
        core = self.core
        assert core is not None
        if dst != core.name:
            self.counters["misaddressed_messages"] += len(payloads)
            return
        if self.host_of(src) != node:
            self.counters["foreign_messages"] += len(payloads)
            return
        self.counters["messages_received"] += len(payloads)
        for p in payloads:
            core.receive_message(src, p, now=now)

    def _reclaim_targets(self, names: Sequence[str]) -> list[str]:
        out: list[str] = []
        me = self.node.name
        for n in names:
            idents = self._idents.get(n)
            if not idents:
                out.append(n)  # an identity name (or unknown: the core says so)
                continue
            cur = self.core.name if n == me else self._current.get(n)
            running = n == me or self._gossip.get(n) == "alive"
            gone = sorted(i for i in idents if i != cur or not running)
            out.extend(gone or [cur or n])  # nothing gone: the core refuses the live identity
        return list(dict.fromkeys(out))

    def _readable(self, text: str) -> str:
        """A core message with the reclaim commands naming hosts (a host reclaims its gone identities)."""

        def hosts(m: re.Match[str]) -> str:
            names = dict.fromkeys(self.host_of(x) for x in m.group(1).split())
            return f"`meshnetctl ipam reclaim {' '.join(names)}`"

        return re.sub(r"`meshnetctl ipam reclaim ([^`]*)`", hosts, text)

    # ------------------------------------------------------------------ internals: driving the core

    def _require(self) -> None:
        if self.core is None or not self._running:
            raise ApiError(503, "stopped", "the IPAM service is not running")

    def _step(self, fn: Callable[[float], Any]) -> Any:
        """One local input at the current time, then pump (the caller's task)."""
        now = trio.current_time()
        self.counters["inputs"] += 1
        try:
            return fn(now)
        finally:
            self._pump()

    async def _run_op(self, start: Callable[[float], Any], budget: float | None = None) -> Any:
        """Start an operation (``start`` returns its OpId) and wait for its result event."""
        self._require()
        pending = _Pending()
        op = self._step(lambda now: self._register(start(now), pending))
        del op
        limit = (budget if budget is not None else self.config.allocation_budget) + _OP_SLACK
        with trio.move_on_after(limit):
            await pending.done.wait()
        ev = pending.event
        if ev is None:
            raise Unknown(f"the IPAM core gave no answer in {limit:.0f}s (state directory stuck?)")
        if isinstance(ev, OperationFailed):
            err = ev.error
            if isinstance(err, IpamError):
                err.message = self._readable(err.message)
                err.args = (err.message,)
            raise err
        return ev

    def _register(self, op: int, pending: _Pending) -> int:
        self._ops[op] = pending
        return op

    def _synced_now(self, network: str, now: float) -> None:
        self._synced.add(network)
        wait = self._sync_waits.pop(network, None)
        if wait is not None:
            wait.set()
        self.core.network_synced(network, now=now)

    def _schedule_global_synced(self, now: float) -> None:
        async def later() -> None:
            await trio.sleep(self.global_sync_timeout)
            self._inbox.append(lambda t: self.core.network_synced("", now=t))
            self._wake.set()

        self._nursery_start(later)

    def _nursery_start(self, fn: Callable[[], Any]) -> None:
        nursery = getattr(self, "_nursery", None)
        if nursery is not None:
            nursery.start_soon(fn)

    async def _join(self, network: str, *, wait: bool) -> None:
        db = self.node.db
        if network in db.core.networks():
            return
        ev = self._sync_waits.setdefault(network, trio.Event())
        self.node.db_input(lambda now: db.core.join_network(network, now=now))
        if wait:
            with trio.move_on_after(self.node.db.settings.config.request_timeout * 4 + 5.0):
                await ev.wait()

    async def _inbox_loop(self) -> None:
        self._nursery = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                if not self._inbox:
                    continue
                while self._inbox:
                    fn = self._inbox.popleft()
                    now = trio.current_time()
                    self.counters["inputs"] += 1
                    try:
                        fn(now)
                    except Exception:
                        self.counters["input_errors"] += 1
                        log.exception("the IPAM core raised on an input (counted as input_errors)")
                self._pump()

    def _pump(self) -> None:
        core = self.core
        assert core is not None
        persists = core.persists_to_write()
        if persists:
            self._persist_queue.extend(persists)
            self._persist_wake.set()
        writes = core.writes_to_send()
        messages = core.messages_to_send()
        if writes or messages:
            try:
                self.node.db_input(lambda now: self._emit(writes, messages, now))
            except Exception:
                # A NetworkDB core that raises (a bug: _emit catches its refusals) must not stop the
                # agent: counted and logged.
                self.counters["write_errors"] += 1
                log.exception("NetworkDB raised on the IPAM outputs (counted as write_errors)")
        while (ev := core.next_event()) is not None:
            self._on_core_event(ev)
        deadline = core.next_deadline()
        self._deadline = math.inf if deadline is None else deadline
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._deadline

    def _emit(self, writes: list[Any], messages: list[Any], now: float) -> None:
        db = self.node.db.core
        joined = set(db.networks())
        for w in writes:
            try:
                if w.network not in joined:
                    self._sync_waits.setdefault(w.network, trio.Event())
                    db.join_network(w.network, now=now)
                    joined.add(w.network)
                if w.value is None:
                    if db.get_entry(w.table, w.network, w.key, include_hidden=True) is not None:
                        db.delete_entry(w.table, w.network, w.key, now=now)
                else:
                    db.put_entry(w.table, w.network, w.key, w.value, now=now)
                self.counters["writes"] += 1
            except LocalProtocolError as exc:
                self.counters["write_errors"] += 1
                log.warning("IPAM write %s/%r/%s refused by NetworkDB: %s", w.table, w.network, w.key, exc)
        # One request per destination and burst (a leave hands thousands of blocks to one heir: one
        # datagram each would overflow the node's send queue), in the core's order.
        by_node: dict[str, list[bytes]] = {}
        for m in messages:
            by_node.setdefault(m.node, []).append(m.payload)
        limit = self.node.db.settings.config.max_request_bytes
        me, src = self.node.name, self.core.name
        for ident, payloads in by_node.items():
            node = self.host_of(ident)
            if node == me:
                # an earlier identity of this host: it is gone (this process holds the host's lock)
                self.counters["undeliverable_messages"] += len(payloads)
                continue
            for payload in encode_requests(payloads, max(limit - BATCH_MARGIN, 1), src=src, dst=ident):
                try:
                    db.request(node, payload, now=now, reliable=len(payload) > RELIABLE_ABOVE)
                    self.counters["requests_sent"] += 1
                except LocalProtocolError as exc:
                    self.counters["send_errors"] += 1
                    # No address known (the node is gone): the core retries or moves on. Too large: a
                    # bug worth seeing (the core splits what it knows can grow).
                    too_large = len(payload) > limit
                    (log.warning if too_large else log.debug)("IPAM message to %s not sent: %s", node, exc)
            self.counters["messages_sent"] += len(payloads)

    def _on_core_event(self, ev: Any) -> None:
        if isinstance(ev, Alarm):
            self.counters["alarms"] += 1
            log.warning("IPAM alarm %s: %s", ev.code, ev.message)
            return
        op = getattr(ev, "op", None)
        pending = self._ops.pop(op, None) if op is not None else None
        if pending is not None:
            pending.event = ev
            pending.done.set()
        if isinstance(ev, Reclaimed):
            log.info(
                "IPAM reclaim of %s: %d blocks won, %d abandoned",
                ", ".join(ev.targets),
                ev.blocks,
                ev.abandoned,
            )
        elif isinstance(ev, OperationFailed) and ev.what != "allocate":
            log.warning("IPAM %s failed: %s", ev.what, ev.error)

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            try:
                self._step(lambda now: self.core.handle_timer(now=now))
            except Exception:
                self.counters["input_errors"] += 1
                log.exception("the IPAM core raised in handle_timer (counted as input_errors)")
                self._deadline = trio.current_time() + 1.0

    def _acknowledge(self, batch: list[Persist], now: float) -> None:
        assert self.core is not None
        for p in batch:
            self.core.persisted(p.seq, now=now)

    async def _persister(self) -> None:
        store = self.store
        try:
            while True:
                if not self._persist_queue:
                    await self._persist_wake.wait()
                    self._persist_wake = trio.Event()
                    continue
                batch, self._persist_queue = self._persist_queue, []
                if store is not None:
                    try:
                        data = store.encode(batch)
                        await trio.to_thread.run_sync(store.append, batch, data)
                        if store.wants_compaction():
                            await trio.to_thread.run_sync(store.compact)
                            self.counters["compactions"] += 1
                    except OSError as exc:
                        # Never acknowledge what is not durable: nothing that depends on it leaves.
                        self._persist_queue = batch + self._persist_queue
                        self.counters["persist_errors"] += 1
                        self.persist_error = f"cannot write {store.path}: {exc}"
                        log.error("%s; retrying in %.0fs", self.persist_error, PERSIST_RETRY_INTERVAL)
                        await trio.sleep(PERSIST_RETRY_INTERVAL)
                        continue
                    self.persist_error = None
                self.counters["persist_batches"] += 1
                self.counters["persists"] += len(batch)
                self._step(lambda now, b=batch: self._acknowledge(b, now))
        finally:
            if store is not None:
                store.close()
