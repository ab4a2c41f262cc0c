"""``DnsService``: the embedded DNS of every local sandbox, and the ``service_table`` (issue 6).

Theory of operation.

**Names.** One ``NameTable`` per agent, fed incrementally from three NetworkDB watches (in
``on_db_events``, synchronously; the table is a local value, not a NetworkDB input):

- ``networks`` (global, hidden entries included: a network outlives its creator's failure) -> the
  network's name and subnets (``NAME.NETWORK``, reverse zones);
- ``endpoint_table`` (every network; hidden entries excluded, so a failed host's containers stop
  resolving) -> container names, aliases and addresses;
- ``service_table`` (``meshnet/cnm/service_records.py``): ``svc:`` specs through a watch that includes
  hidden entries (a failed creator keeps its services), ``task:`` entries through one that does not (a
  failed task host hides its tasks) -> folded by ``ServiceBook`` into the table's services.

**Task entries.** This host owns the ``task:`` entries of its own endpoints: after every change a
reconcile pass (the ``run`` task, never a hook) computes ``wanted_tasks`` from the live specs and
the local endpoints of each joined network and puts/deletes the difference through ``node.db_input``.

**Sandboxes.** Local sandboxes come from the ``cnm`` service (``local_sandboxes()``, and
``add_sandbox_listener`` when it has one; else polled every ``sandbox_poll_interval``), or from any
object with that method passed as ``sandboxes=`` (tests). For each one with ``start_servers``: a
``Resolver`` core (scope = the networks of its endpoints, in join order; upstreams = the host's) and a
``ResolverServer`` listening on 127.0.0.11:53 UDP+TCP *inside* the sandbox's namespace, served by the
agent's trio loop; its upstream sockets are made in the agent's namespace (``dns_server.py``). For a
namespace named by ``ip netns`` (``/run/netns/NAME``) the service writes ``/etc/netns/NAME/resolv.conf``
(127.0.0.11, the host's search domains and options, ``ndots:0``) and ``/etc/netns/NAME/hosts`` (the
sandbox's name on its addresses), atomically and only when the text changes, and removes them (and the
directory when it is empty) when the sandbox goes. A server that cannot start (namespace gone, loopback
down) is retried on later passes, at most every ``retry_interval``, and shown in ``GET /v1/dns``.

**Upstreams** are the host's ``resolv.conf`` nameservers (re-read when the file changes), or
``DnsConfig.upstreams`` (``IP`` or ``IP:PORT``; tests point them at a dnsmasq on 127.0.0.x).
Forwarding rules and limits are the resolver core's (``meshnet/dns/resolver.py``).

**API.** ``POST /v1/services {name, network, endpoints?, ports?, aliases?}`` writes a ``svc:`` entry
(this host must be attached to the network: it has an endpoint there); ``GET /v1/services[?network=]``,
``GET|DELETE /v1/services/{id|name}[?network=]``; ``GET /v1/dns``: per-sandbox resolver and socket
counters, upstreams, table size.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from meshnet.cnm.records import (
    TABLE_ENDPOINTS,
    TABLE_NETWORKS,
    EndpointRecord,
    NetworkRecord,
    decode_endpoint,
    decode_network,
)
from meshnet.cnm.service_records import (
    TABLE_SERVICES,
    PortSpec,
    ServiceBook,
    ServiceSpec,
    ServiceView,
    decode_service,
    decode_task,
    encode_service,
    parse_key,
    parse_port,
    service_key,
    wanted_tasks,
)
from meshnet.core.errors import ApiError, ConfigError, DecodeError, LocalProtocolError
from meshnet.dns import EndpointRecord as NameEndpoint
from meshnet.dns import (
    NameTable,
    NetworkInfo,
    Resolver,
    ResolverConfig,
    ServicePort,
    ServiceRecord,
    ServiceTask,
    Upstream,
    parse_resolv_conf,
    render_hosts,
    sandbox_resolv_conf,
)
from meshnet.runtime.dns_server import DEFAULT_LISTEN, ResolverServer
from meshnet.runtime.service import BaseService

__all__ = [
    "DnsConfig",
    "DnsService",
    "SandboxInfo",
    "StaticSandboxes",
    "parse_upstream",
    "dns_config_from_toml",
]

log = logging.getLogger("meshnet.dns")

RUN_NETNS = "/run/netns/"


def parse_upstream(text: str) -> Upstream:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` -> ``Upstream`` (loopback ones flagged); ConfigError."""
    raw = text.strip()
    host, port = raw, 53
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        if rest:
            port = int(rest[1:]) if rest[1:].isdigit() else -1
    elif raw.count(":") == 1:
        host, _, p = raw.partition(":")
        port = int(p) if p.isdigit() else -1
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"dns upstream {text!r} is not IP[:PORT]") from None
    if not 0 < port <= 65535:
        raise ConfigError(f"dns upstream {text!r} has a bad port; use 1..65535")
    return Upstream(str(addr), port, is_host_loopback=addr.is_loopback or addr.is_unspecified)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """Settings of the DNS service.

    - ``resolver``: the resolver core's (TTLs, ``max_concurrent_forwards``, ``forward_timeout``, ...).
    - ``upstreams``: override the host's resolv.conf nameservers (``IP`` or ``IP:PORT``); None: the host's.
    - ``host_resolv_conf``: where the host's resolver configuration is read.
    - ``etc_netns``: where ``ip netns exec`` looks for per-namespace files.
    - ``listen``: the sandbox resolver's address (127.0.0.11:53).
    - ``start_servers``: False with ``--dataplane none`` (names and services are kept, nothing listens).
    - ``write_files``: write resolv.conf and hosts under ``etc_netns``.
    """

    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    upstreams: tuple[str, ...] | None = None
    host_resolv_conf: str = "/etc/resolv.conf"
    etc_netns: str = "/etc/netns"
    listen: tuple[str, int] = DEFAULT_LISTEN
    start_servers: bool = True
    write_files: bool = True
    sandbox_poll_interval: float = 0.5
    retry_interval: float = 2.0

    def __post_init__(self) -> None:
        if self.upstreams is not None:
            for u in self.upstreams:
                parse_upstream(u)
        if not self.sandbox_poll_interval > 0 or not self.retry_interval > 0:
            raise ConfigError("dns sandbox_poll_interval and retry_interval must be > 0 seconds")


_RESOLVER_KEYS = ("ttl", "vip_ttl", "max_concurrent_forwards", "forward_timeout", "edns_udp_payload")


def dns_config_from_toml(table: Any, where: str, *, start_servers: bool) -> DnsConfig:
    """``DnsConfig`` from the agent config file's ``[dns]`` table (None: defaults); ConfigError naming the
    key. Keys: ``upstreams`` (list of ``IP[:PORT]``), ``host_resolv_conf``, and the resolver's ``ttl``,
    ``vip_ttl``, ``max_concurrent_forwards``, ``forward_timeout``, ``edns_udp_payload``."""
    if table is None:
        return DnsConfig(start_servers=start_servers)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {where}: [dns] must be a table")
    resolver: dict[str, Any] = {}
    kw: dict[str, Any] = {"start_servers": start_servers}
    for key, value in table.items():
        if key == "upstreams":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(
                    f'config file {where}: [dns] upstreams must be a list of "IP[:PORT]" strings'
                )
            kw["upstreams"] = tuple(value)
        elif key == "host_resolv_conf":
            if not isinstance(value, str):
                raise ConfigError(f"config file {where}: [dns] host_resolv_conf must be a path string")
            kw["host_resolv_conf"] = value
        elif key in _RESOLVER_KEYS:
            ok = isinstance(value, int | float) if key == "forward_timeout" else isinstance(value, int)
            if not ok or isinstance(value, bool):
                raise ConfigError(f"config file {where}: [dns] {key} must be a number")
            resolver[key] = float(value) if key == "forward_timeout" else value
        else:
            known = ", ".join(("upstreams", "host_resolv_conf", *_RESOLVER_KEYS))
            raise ConfigError(f"config file {where}: unknown [dns] key {key!r}; known: {known}")
    return DnsConfig(resolver=ResolverConfig(**resolver), **kw)


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """A local sandbox as the DNS service needs it (the ``cnm`` service's objects may be any type with
    these attributes)."""

    id: str
    name: str
    netns: str
    endpoints: tuple[str, ...] = ()


class StaticSandboxes:
    """A hand-fed sandbox source (tests, benchmarks): ``add``/``remove`` call the listeners."""

    def __init__(self) -> None:
        self._boxes: dict[str, SandboxInfo] = {}
        self._listeners: list[Callable[[], None]] = []

    def local_sandboxes(self) -> list[SandboxInfo]:
        return list(self._boxes.values())

    def add_sandbox_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def add(self, box: SandboxInfo) -> None:
        self._boxes[box.id] = box
        for cb in self._listeners:
            cb()

    def remove(self, box_id: str) -> None:
        self._boxes.pop(box_id, None)
        for cb in self._listeners:
            cb()


class _Box:
    """A running sandbox resolver (or one waiting to be retried)."""

    def __init__(self, info: Any, resolver: Resolver) -> None:
        self.info = info
        self.resolver = resolver
        self.server: ResolverServer | None = None
        self.scope: trio.CancelScope | None = None
        self.error: str | None = None
        self.retry_at = 0.0
        self.files: dict[str, str] = {}  # path -> text written
        self.files_key: tuple | None = None  # the inputs of the files written
        self.etc_dir: str | None = None


class DnsService(BaseService):
    """The ``dns`` agent service (module docstring)."""

    name = "dns"
    api_prefixes = ("/v1/services", "/v1/dns")

    def __init__(
        self, config: DnsConfig | None = None, *, sandboxes: Any = None, rng: random.Random | None = None
    ) -> None:
        self.config = config or DnsConfig()
        self.table = NameTable()
        self.book = ServiceBook()
        self._sandbox_source = sandboxes
        self._rng = rng if rng is not None else random.SystemRandom()
        self.node: Any = None
        self._watches: dict[int, str] = {}
        self._networks: dict[str, NetworkRecord] = {}
        self._endpoints: dict[str, dict[str, EndpointRecord]] = {}  # network -> endpoint id -> record
        self._by_id: dict[str, EndpointRecord] = {}  # endpoint id -> record (ids are cluster-unique)
        self._boxes: dict[str, _Box] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._upstreams: tuple[Upstream, ...] = ()
        self._resolv_stamp: tuple[float, int] | None = None
        self._host_resolv_text = ""
        self._resolv_cache: tuple[str | None, str] = (None, "")  # host text -> the sandboxes' resolv.conf
        self.counters: dict[str, int] = {
            "decode_errors": 0,
            "bad_keys": 0,
            "table_errors": 0,
            "task_puts": 0,
            "task_deletes": 0,
            "task_write_errors": 0,
            "servers_started": 0,
            "server_errors": 0,
            "server_crashes": 0,
            "servers_stopped": 0,
            "file_writes": 0,
            "file_errors": 0,
            "reconciles": 0,
            "reconcile_errors": 0,
        }

    # ---------------------------------------------------------------- hooks

    def attach(self, node: Any) -> None:
        self.node = node
        if self._sandbox_source is None:
            for svc in getattr(node, "services", ()):
                if getattr(svc, "name", None) == "cnm" and hasattr(svc, "local_sandboxes"):
                    self._sandbox_source = svc
        if self._sandbox_source is not None and hasattr(self._sandbox_source, "add_sandbox_listener"):
            self._sandbox_source.add_sandbox_listener(self._poke)
        self._load_upstreams()
        core = node.db.core
        self._watches[core.watch(TABLE_NETWORKS, "", include_hidden=True)] = "networks"
        self._watches[core.watch(TABLE_ENDPOINTS)] = "endpoints"
        self._watches[core.watch(TABLE_SERVICES, include_hidden=True)] = "specs"
        self._watches[core.watch(TABLE_SERVICES)] = "tasks"

    def _poke(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._reconcile()  # sandboxes adopted at start are not signalled by the cnm service
                polling = not hasattr(self._sandbox_source, "add_sandbox_listener")
                while True:
                    with trio.move_on_after(
                        self.config.sandbox_poll_interval if polling else self.config.retry_interval
                    ):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    await self._reconcile()
            finally:
                for box in list(self._boxes.values()):
                    self._stop_box(box)
                self._nursery = None

    def on_db_events(self, events: list[Any], now: float) -> None:
        changed = False
        for ev in events:
            kind = self._watches.get(getattr(ev, "watch_id", None))  # type: ignore[arg-type]
            if kind is None:
                continue
            changed = True
            try:
                if kind == "networks":
                    self._on_network(ev)
                elif kind == "endpoints":
                    self._on_endpoint(ev)
                else:
                    self._on_service_entry(ev, specs=kind == "specs")
            except DecodeError:
                self.counters["decode_errors"] += 1
            except LocalProtocolError:
                self.counters["table_errors"] += 1
        if changed:
            self._wake.set()

    async def leave(self) -> None:
        for box in list(self._boxes.values()):
            self._stop_box(box)

    def stats(self) -> dict[str, Any]:
        totals: dict[str, int] = {}
        for box in self._boxes.values():
            for k, v in box.resolver.stats.as_dict().items():
                totals[k] = totals.get(k, 0) + v
        return {
            **self.counters,
            "sandboxes": len(self._boxes),
            "serving": sum(1 for b in self._boxes.values() if b.server is not None and b.error is None),
            "upstreams": [f"{u.address}:{u.port}" for u in self._upstreams],
            "invalid_names": self.table.invalid_names,
            "services": len(self.book.views()),
            "resolver": totals,
        }

    # ---------------------------------------------------------------- feeding the table

    @staticmethod
    def _deleted(ev: Any) -> bool:
        return type(ev).__name__ == "EntryDeleted"

    def _on_network(self, ev: Any) -> None:
        if self._deleted(ev):
            self._networks.pop(ev.key, None)
            self.table.remove_network(ev.key)
            # keep the network's records resolvable by name (re-add what is still known)
            for rec in self._endpoints.get(ev.key, {}).values():
                self._upsert_endpoint(ev.key, rec)
            for view in self.book.views(ev.key):
                self._refresh_service(ev.key, view.spec.id)
            return
        rec = decode_network(ev.value)
        self._networks[ev.key] = rec
        self.table.upsert_network(NetworkInfo(ev.key, rec.name, tuple(s.subnet for s in rec.subnets)))

    def _upsert_endpoint(self, network: str, rec: EndpointRecord) -> None:
        self.table.upsert_endpoint(network, NameEndpoint(rec.id, rec.name, rec.addresses(), rec.aliases))

    def _on_endpoint(self, ev: Any) -> None:
        eps = self._endpoints.setdefault(ev.network, {})
        if self._deleted(ev):
            self._forget_endpoint(ev.network, ev.key)
            return
        try:
            rec = decode_endpoint(ev.value)
        except DecodeError:
            self._forget_endpoint(ev.network, ev.key)
            raise
        if rec.id != ev.key or rec.network != ev.network:
            rec = EndpointRecord(**{**_fields(rec), "id": ev.key, "network": ev.network})
        eps[ev.key] = rec
        self._by_id[ev.key] = rec
        self._upsert_endpoint(ev.network, rec)

    def _forget_endpoint(self, network: str, eid: str) -> None:
        if self._endpoints.get(network, {}).pop(eid, None) is not None:
            self.table.remove_endpoint(network, eid)
            rec = self._by_id.get(eid)
            if rec is not None and rec.network == network:
                del self._by_id[eid]

    def _on_service_entry(self, ev: Any, *, specs: bool) -> None:
        try:
            kind, sid, eid = parse_key(ev.key)
        except DecodeError:
            self.counters["bad_keys"] += 1
            return
        net = ev.network
        if kind == "svc":
            if not specs:
                return
            if self._deleted(ev):
                self.book.spec_gone(net, sid, tombstone=self._is_tombstone(net, ev.key))
            else:
                spec = decode_service(ev.value)
                if spec.id != sid or spec.network != net:
                    raise DecodeError(f"service record {ev.key} names {spec.id}/{spec.network}")
                self.book.put_spec(net, spec, hidden=bool(getattr(ev, "hidden", False)))
        else:
            if specs:
                return
            assert eid is not None
            if self._deleted(ev):
                self.book.remove_task(net, sid, eid)
            else:
                try:
                    task = decode_task(ev.value)
                    if task.service != sid or task.endpoint != eid:
                        raise DecodeError(f"task record {ev.key} names {task.service}/{task.endpoint}")
                except DecodeError:
                    self.book.remove_task(net, sid, eid)
                    self._refresh_service(net, sid)
                    raise
                self.book.put_task(net, task)
        self._refresh_service(net, sid)

    def _is_tombstone(self, network: str, key: str) -> bool:
        core = self.node.db.core
        for e in core.walk_table(TABLE_SERVICES, network, include_deleted=True, include_hidden=True):
            if e.key == key:
                return bool(e.deleted)
        return False

    def _refresh_service(self, network: str, sid: str) -> None:
        view = self.book.view(network, sid)
        if view is None:
            self.table.remove_service(network, sid)
            return
        spec = view.spec
        record = ServiceRecord(
            service_id=sid,
            name=spec.name,
            vips=spec.vips,
            tasks=tuple(ServiceTask(t.name, t.addresses()) for t in view.tasks),
            ports=tuple(ServicePort(p.name, p.protocol, p.port) for p in spec.ports),
            aliases=spec.aliases,
        )
        self.table.upsert_service(network, record)

    # ---------------------------------------------------------------- reconcile

    def _load_upstreams(self) -> None:
        if self.config.upstreams is not None:
            self._upstreams = tuple(parse_upstream(u) for u in self.config.upstreams)
            with contextlib.suppress(OSError), open(self.config.host_resolv_conf) as fh:
                self._host_resolv_text = fh.read()
            return
        path = self.config.host_resolv_conf
        try:
            st = os.stat(path)
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._resolv_stamp:
                return
            with open(path) as fh:
                text = fh.read()
        except OSError:
            text, stamp = "", None
        self._resolv_stamp = stamp
        self._host_resolv_text = text
        self._upstreams = parse_resolv_conf(text).nameservers
        for box in self._boxes.values():
            box.resolver.set_upstreams(self._upstreams)

    async def _reconcile(self) -> None:
        self.counters["reconciles"] += 1
        try:
            self._load_upstreams()
            self._reconcile_tasks()
            await self._reconcile_sandboxes()
        except Exception:
            # A bug here must not stop the agent (gossip, NetworkDB, the other sandboxes): the next
            # pass (an event, or ``retry_interval``) tries again.
            self.counters["reconcile_errors"] += 1
            log.exception("dns: reconcile pass failed (counted as reconcile_errors)")

    def _local_endpoints(self, network: str) -> list[EndpointRecord]:
        me = self.node.name
        return [r for r in self._endpoints.get(network, {}).values() if r.host == me]

    def _reconcile_tasks(self) -> None:
        node = self.node
        core = node.db.core
        for network in core.networks():
            wanted = wanted_tasks(self.book.live_specs(network), self._local_endpoints(network))
            owned = {
                e.key: e.value
                for e in core.walk_table(TABLE_SERVICES, network, include_hidden=True)
                if e.owner == node.name and e.key.startswith("task:")
            }
            for key, value in wanted.items():
                if owned.get(key) != value:
                    self._write(
                        lambda now, k=key, v=value, n=network: core.put_entry(
                            TABLE_SERVICES, n, k, v, now=now
                        )
                    )
                    self.counters["task_puts"] += 1
            for key in owned.keys() - wanted.keys():
                self._write(lambda now, k=key, n=network: core.delete_entry(TABLE_SERVICES, n, k, now=now))
                self.counters["task_deletes"] += 1

    def _write(self, call: Callable[[float], Any]) -> None:
        try:
            self.node.db_input(call)
        except LocalProtocolError as exc:
            self.counters["task_write_errors"] += 1
            log.warning("dns: service_table write refused: %s", exc)

    def _scope(self, info: Any) -> tuple[str, ...]:
        by_id = self._by_id
        return tuple(dict.fromkeys(by_id[e].network for e in info.endpoints if e in by_id))

    def _addresses(self, info: Any) -> list[str]:
        out: list[str] = []
        for eid in info.endpoints:
            rec = self._by_id.get(eid)
            if rec is not None:
                out.extend(a for a in rec.addresses() if a not in out)
        return out

    async def _reconcile_sandboxes(self) -> None:
        source = self._sandbox_source
        current: dict[str, Any] = {}
        if source is not None:
            try:
                current = {b.id: b for b in source.local_sandboxes()}
            except Exception:
                log.exception("dns: reading local sandboxes failed")
                return
        for box_id in list(self._boxes):
            if box_id not in current:
                self._remove_box(self._boxes.pop(box_id))
        now = trio.current_time()
        for box_id, info in current.items():
            box = self._boxes.get(box_id)
            scope = self._scope(info)
            if box is None:
                resolver = Resolver(
                    self.table,
                    self.config.resolver,
                    rng=self._rng,
                    scope=scope,
                    upstreams=self._upstreams,
                )
                box = self._boxes[box_id] = _Box(info, resolver)
            else:
                box.info = info
                if box.resolver.scope != scope:
                    box.resolver.set_scope(scope)
            self._write_files(box)
            if self.config.start_servers and box.server is None and now >= box.retry_at:
                await self._start_box(box, now)

    async def _start_box(self, box: _Box, now: float) -> None:
        assert self._nursery is not None
        server = ResolverServer(
            box.resolver, netns=box.info.netns, address=self.config.listen, label=box.info.name
        )
        scope = trio.CancelScope()

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await server.run(task_status=task_status)
            except Exception as exc:
                if server.bound is None:
                    raise  # before it listened: ``nursery.start`` hands it to the caller below
                # A crash while serving takes down this sandbox's resolver only; the next pass restarts it.
                self.counters["server_crashes"] += 1
                log.exception("dns: resolver of sandbox %s crashed; restarting it", box.info.name)
                if box.server is server:
                    box.server, box.scope, box.error = None, None, f"crashed: {exc!r}"
                    box.retry_at = trio.current_time() + self.config.retry_interval
                self._wake.set()

        try:
            await self._nursery.start(serve)
        except OSError as exc:
            box.error = f"{exc.strerror or exc}"
            box.retry_at = now + self.config.retry_interval
            self.counters["server_errors"] += 1
            log.warning("dns: cannot listen in sandbox %s (%s): %s", box.info.name, box.info.netns, box.error)
            return
        box.server, box.scope, box.error = server, scope, None
        self.counters["servers_started"] += 1
        log.info("dns: resolver of sandbox %s listening on %s:%d", box.info.name, *server.bound)

    def _stop_box(self, box: _Box) -> None:
        if box.scope is not None:
            box.scope.cancel()
            self.counters["servers_stopped"] += 1
        box.scope = box.server = None

    def _remove_box(self, box: _Box) -> None:
        self._stop_box(box)
        for path in box.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if box.etc_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(box.etc_dir)  # only when empty: files of others stay

    def _write_files(self, box: _Box) -> None:
        netns = str(box.info.netns)
        if not self.config.write_files or not netns.startswith(RUN_NETNS):
            return
        name = netns[len(RUN_NETNS) :]
        if not name or "/" in name or name in (".", ".."):
            return
        etc_dir = os.path.join(self.config.etc_netns, name)
        # Rendered only when their inputs changed (a pass over many sandboxes is then a few compares).
        key = (self._host_resolv_text, box.info.name, tuple(self._addresses(box.info)))
        if key == box.files_key and all(os.path.exists(p) for p in box.files):
            return
        try:
            if self._resolv_cache[0] != self._host_resolv_text:
                self._resolv_cache = (self._host_resolv_text, sandbox_resolv_conf(self._host_resolv_text))
            texts = {os.path.join(etc_dir, "resolv.conf"): self._resolv_cache[1]}
            try:
                hosts = render_hosts(hostname=box.info.name, addresses=key[2])
            except ConfigError:
                hosts = render_hosts(hostname="sandbox", addresses=())
            texts[os.path.join(etc_dir, "hosts")] = hosts
            for path, text in texts.items():
                if box.files.get(path) == text:
                    continue
                os.makedirs(etc_dir, mode=0o755, exist_ok=True)
                box.etc_dir = etc_dir
                tmp = f"{path}.meshnet-tmp"
                with open(tmp, "w") as fh:
                    fh.write(text)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
                box.files[path] = text
                self.counters["file_writes"] += 1
            box.files_key = key
        except (OSError, ConfigError) as exc:
            self.counters["file_errors"] += 1
            log.warning("dns: cannot write %s: %s", etc_dir, exc)

    # ---------------------------------------------------------------- API

    async def handle_api(self, node: Any, request: Any) -> Any:
        from meshnet.runtime.api import Response

        parts = urlsplit(request.target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = unquote(request.path).rstrip("/")
        method = request.method
        if path == "/v1/dns":
            if method != "GET":
                raise ApiError(405, "method_not_allowed", "/v1/dns accepts GET")
            return Response(200, self.dns_json())
        rest = path[len("/v1/services") :].lstrip("/")
        if not rest:
            if method == "GET":
                network = self._network_id(query["network"]) if "network" in query else None
                return Response(200, {"services": [self._view_json(v) for v in self.book.views(network)]})
            if method == "POST":
                return Response(201, await self._create(request))
            raise ApiError(405, "method_not_allowed", "/v1/services accepts GET, POST")
        view = self._find(rest, query.get("network"))
        if method == "GET":
            return Response(200, self._view_json(view))
        if method == "DELETE":
            await self._delete(view)
            return Response(200, {"deleted": view.spec.id})
        raise ApiError(405, "method_not_allowed", "/v1/services/{id|name} accepts GET, DELETE")

    def _network_id(self, ref: str) -> str:
        if ref in self._networks:
            return ref
        named = sorted((r for r in self._networks.values() if r.name == ref), key=lambda r: (r.created, r.id))
        if named:
            return named[0].id
        raise ApiError(404, "not_found", f"no network {ref!r} (by id or name)")

    def _find(self, ref: str, network: str | None) -> ServiceView:
        net = self._network_id(network) if network else None
        views = [v for v in self.book.views(net) if ref in (v.spec.id, v.spec.name)]
        if not views:
            raise ApiError(404, "not_found", f"no service {ref!r}")
        if len(views) > 1 and not any(v.spec.id == ref for v in views):
            raise ApiError(
                409, "ambiguous", f"service name {ref!r} exists on several networks; pass ?network= or the id"
            )
        return next((v for v in views if v.spec.id == ref), views[0])

    async def _create(self, request: Any) -> dict[str, Any]:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            raise ApiError(400, "bad_request", "body must be JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "body must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not name or any(c.isspace() for c in name) or "." in name:
            raise ApiError(400, "invalid", "service name must be a non-empty DNS label (no dots or spaces)")
        if not isinstance(body.get("network"), str):
            raise ApiError(400, "invalid", "network (id or name) is required")
        network = self._network_id(body["network"])
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("endpoints", "aliases"):
            raw = body.get(key, [])
            if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
                raise ApiError(400, "invalid", f"{key} must be a list of non-empty strings")
            lists[key] = tuple(raw)
        ports = []
        raw_ports = body.get("ports", [])
        if not isinstance(raw_ports, list):
            raise ApiError(400, "invalid", "ports must be a list of NAME:PORT/PROTO strings")
        for p in raw_ports:
            try:
                if isinstance(p, str):
                    ports.append(parse_port(p))
                elif isinstance(p, dict):
                    ports.append(parse_port(f"{p.get('name')}:{p.get('port')}/{p.get('protocol', 'tcp')}"))
                else:
                    raise LocalProtocolError(f"port {p!r} is not NAME:PORT/PROTO")
            except LocalProtocolError as exc:
                raise ApiError(400, "invalid", str(exc)) from None
        if any(v.spec.name == name for v in self.book.views(network)):
            raise ApiError(409, "exists", f"service {name!r} exists on network {body['network']!r}")
        core = self.node.db.core
        if network not in core.networks():
            raise ApiError(
                409,
                "not_attached",
                f"this host has no endpoint on network {body['network']!r}; create the service on a host that has one",
            )
        sid = f"{self._rng.getrandbits(96):024x}"
        spec = ServiceSpec(
            id=sid,
            name=name,
            network=network,
            aliases=lists["aliases"],
            ports=tuple(PortSpec(p.name, p.protocol, p.port) for p in ports),
            endpoints=lists["endpoints"],
            creator=self.node.name,
            created=time.time(),
            revision=1,
        )
        try:
            self.node.db_input(
                lambda now: core.create_entry(
                    TABLE_SERVICES, network, service_key(sid), encode_service(spec), now=now
                )
            )
        except LocalProtocolError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        await self._durable()
        self._reconcile_tasks()
        view = self.book.view(network, sid)
        return self._view_json(view) if view is not None else _spec_json(spec, self._networks)

    async def _delete(self, view: ServiceView) -> None:
        core = self.node.db.core
        network = view.spec.network
        if network not in core.networks():
            raise ApiError(
                409,
                "not_attached",
                "this host has no endpoint on the service's network; remove it from a host that has one",
            )
        key = service_key(view.spec.id)
        if core.get_entry(TABLE_SERVICES, network, key, include_hidden=True) is None:
            # The spec entry is gone (its creator left): write one to tombstone it.
            self.node.db_input(
                lambda now: core.put_entry(TABLE_SERVICES, network, key, encode_service(view.spec), now=now)
            )
        self.node.db_input(lambda now: core.delete_entry(TABLE_SERVICES, network, key, now=now))
        await self._durable()
        self._reconcile_tasks()

    async def _durable(self) -> None:
        db = self.node.db
        try:
            await db.wait_durable(db.journal_seq)
        except Exception as exc:  # StateWriteError
            raise ApiError(503, "not_persisted", f"the state directory could not be written: {exc}") from None

    def _view_json(self, view: ServiceView) -> dict[str, Any]:
        out = _spec_json(view.spec, self._networks)
        out["tasks"] = [
            {"endpoint": t.endpoint, "name": t.name, "host": t.host, "ipv4": t.ipv4, "ipv6": t.ipv6}
            for t in view.tasks
        ]
        return out

    def dns_json(self) -> dict[str, Any]:
        """``GET /v1/dns``: every local sandbox's resolver."""
        boxes = []
        for box in sorted(self._boxes.values(), key=lambda b: b.info.name):
            server = box.server
            boxes.append(
                {
                    "id": box.info.id,
                    "name": box.info.name,
                    "netns": box.info.netns,
                    "scope": [
                        {"id": n, "name": self._networks[n].name if n in self._networks else None}
                        for n in box.resolver.scope
                    ],
                    "listening": None
                    if server is None or server.bound is None
                    else f"{server.bound[0]}:{server.bound[1]}",
                    "error": box.error,
                    "outstanding_forwards": box.resolver.outstanding,
                    "stats": box.resolver.stats.as_dict(),
                    "sockets": dict(server.stats) if server is not None else {},
                    "files": sorted(box.files),
                }
            )
        return {
            "sandboxes": boxes,
            "upstreams": [
                {"address": u.address, "port": u.port, "host_loopback": u.is_host_loopback}
                for u in self._upstreams
            ],
            "servers": self.config.start_servers,
            "counters": dict(self.counters),
            "config": {
                "ttl": self.config.resolver.ttl,
                "vip_ttl": self.config.resolver.vip_ttl,
                "max_concurrent_forwards": self.config.resolver.max_concurrent_forwards,
                "forward_timeout": self.config.resolver.forward_timeout,
            },
        }


def _spec_json(spec: ServiceSpec, networks: dict[str, NetworkRecord]) -> dict[str, Any]:
    net = networks.get(spec.network)
    return {
        "id": spec.id,
        "name": spec.name,
        "network": spec.network,
        "network_name": net.name if net is not None else None,
        "aliases": list(spec.aliases),
        "ports": [f"{p.name}:{p.port}/{p.protocol}" for p in spec.ports],
        "vips": list(spec.vips),
        "endpoints": list(spec.endpoints),
        "creator": spec.creator,
        "created": spec.created,
        "revision": spec.revision,
    }


def _fields(rec: EndpointRecord) -> dict[str, Any]:
    return {f: getattr(rec, f) for f in rec.__dataclass_fields__}
