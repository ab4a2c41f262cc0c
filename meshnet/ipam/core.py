"""``Ipam``: the manager-free IPAM of one node, as a pure (sans-IO) core (ipam.md section 3).

Theory of operation. House rules (style.md 3.3): no I/O, clock, threads or global randomness; every input
takes a keyword-only ``now`` (monotonic seconds); randomness comes from the injected ``random.Random``;
outputs are drained; remote garbage is counted and dropped, never raised; local misuse raises
``LocalProtocolError`` and changes nothing.

The model (ipam.md 3.2-3.6). Every space (a network's subnets, the VNI space, the default pool) is tiled
into fixed blocks. A node allocates only in blocks it *believes* (durably, ``state.py``); a new space's
creator believes every block at epoch 1. A node with no free space asks an owner, which hands over a
whole fully free block at epoch e+1 (persisting "granted" first, so it stops believing before anyone can
start) or allocates one address on the asker's behalf (``owner.py``). A grant is accepted only with an
epoch above the block's high-water mark, so no duplicate, late or relayed grant revives an old epoch.
Together (3.6): at most one believer per block at any instant, so no address is ever held twice.

Modules: ``owner.py`` (the believer's side: local allocation, requests, grants, releases, hints),
``requester.py`` (operations: allocate, release, create_network, attach; retries and typed errors),
``reclaim.py`` (graceful leave, explicit reclaim with a single winner, predecessor adoption), and this
facade (construction and restart, NetworkDB records, membership, messages, timers, outputs, listing).

Wiring (the shell; DESIGN.md "Data flow"):

    inputs   handle_record(table, network, key, value, owner=)   every ipam.* entry NetworkDB shows,
                                                                 hidden ones included (watch with
                                                                 include_hidden); deletes are ignored
             node_alive / node_failed / node_left(name)          gossip verdicts (left also on reap)
             network_synced(network)                             NetworkDB's first sync of a network
             receive_message(src, payload)                       NetworkDB RequestReceived payloads
             persisted(seq)                                      the shell wrote a Persist durably
             handle_timer(); allocate, release, create_network, attach, reclaim, leave
    outputs  persists_to_write() -> Persist                      write to the state dir, then persisted()
             writes_to_send()    -> TableWrite                   NetworkDB put_entry / delete_entry
                                                                 (join the write's network first)
             messages_to_send()  -> SendMessage                  NetworkDB request(node, payload)
             next_event(), next_deadline(), listing()
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshnet.core.clock import DeadlineHeap
from meshnet.core.errors import DecodeError, LocalProtocolError

from . import messages as msg
from .config import IpamConfig
from .durable import spaces_of, summarize
from .events import Alarm
from .owner import OwnerRole
from .reclaim import ReclaimRole
from .records import (
    GLOBAL_KEY,
    TABLE_BLOCK,
    TABLE_NETCFG,
    TABLE_NODE,
    TABLE_RETIRED,
    BlockRecord,
    Holder,
    NodeRecord,
    RetiredRecord,
    block_key,
    decode_block,
    decode_global,
    decode_netcfg,
    decode_node,
    decode_retired,
    encode_block,
    encode_global,
    encode_netcfg,
    encode_node,
    encode_retired,
    parse_block_key,
    parse_writer_key,
    writer_key,
)
from .requester import RequesterRole
from .space import GLOBAL_SCOPE, GlobalConfig, NetConfig, Space, SpaceId
from .state import (
    BlockState,
    Identity,
    Outbox,
    PendingRelease,
    Persist,
    RemoteHolding,
    SendMessage,
    TableWrite,
)
from .view import ReclaimHint, View, ViewEntry

__all__ = ["Ipam", "BlockInfo"]

_DEFAULT = BlockState()


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """One row of ``ipam ls``: a block, its owner as this node sees it, and its free units."""

    network: str
    space: str
    block: int
    first: str
    last: str
    owner: str
    epoch: int
    state: str  # held | granted | reclaiming
    free: int
    owner_state: str  # self | alive | failed | left | retired | unknown


class Ipam(OwnerRole, RequesterRole, ReclaimRole):
    """One node's IPAM. Build with ``Ipam.fresh`` (new state directory) or ``Ipam.restore``."""

    def __init__(
        self,
        config: IpamConfig | None = None,
        *,
        identity: Identity,
        rng: random.Random,
        now: float,
        records: Mapping[tuple[Any, ...], Any] | None = None,
        founder: bool = False,
    ) -> None:
        self.config = cfg = config if config is not None else IpamConfig()
        self._rng = rng
        self._out = Outbox(write_ahead=not cfg.unsafe_skip_write_ahead)
        self._timers = DeadlineHeap()
        self._id = identity
        self._global: GlobalConfig | None = None
        self._netcfg: dict[str, NetConfig] = {}
        self._attached: set[str] = set()
        self._spaces: dict[SpaceId, Space] = {}
        self._blocks: dict[tuple[SpaceId, int], BlockState] = {}
        self._believed: dict[SpaceId, set[int]] = {}
        self._holders: dict[tuple[SpaceId, Holder], int] = {}
        self._pending_grants: set[tuple[SpaceId, int]] = set()
        self._grant_sent_at: dict[tuple[SpaceId, int], float] = {}
        self._relayed_at: dict[tuple[SpaceId, int], float] = {}
        self._view = View()
        self._remote: dict[tuple[SpaceId, int], RemoteHolding] = {}
        self._releases: dict[int, PendingRelease] = {}
        self._asked: dict[tuple[SpaceId, str], tuple[str, ...]] = {}
        self._retired: dict[str, RetiredRecord] = {}
        self._nodes: dict[str, NodeRecord] = {}
        self._members: dict[str, str] = {}
        self._users: dict[str, set[str]] = {}  # network -> nodes that published its netcfg
        self._synced: set[str] = set()
        self._quarantine: dict[tuple[SpaceId, int], float] = {}
        self._hint_dirty: dict[SpaceId, set[int]] = {}
        self._hint_last: dict[SpaceId, float] = {}
        self._counters: dict[str, int] = {}
        #: blocks whose departed writer's best record this node re-publishes: block -> origin
        self._copies: dict[tuple[SpaceId, int], str] = {}
        self._init_roles()
        if records is not None:
            self._restore(records, now)
        else:
            self._out.put(("ident",), identity)
            self._publish_node()
            if founder:
                if not identity.cluster_id:
                    raise LocalProtocolError("a founder needs the cluster id (NetworkDB.found_cluster)")
                self._install_global(GlobalConfig.found(identity.name, identity.cluster_id, cfg), now)
        self._done(now)

    # ------------------------------------------------------------------ construction

    @classmethod
    def fresh(
        cls,
        config: IpamConfig | None = None,
        *,
        host: str,
        rng: random.Random,
        now: float,
        name: str | None = None,
        cluster_id: str = "",
        founder: bool = False,
    ) -> Ipam:
        """A new identity with an empty state directory: ``name`` defaults to ``<host>-<incarnation>``
        (a stateless restart must never reuse a name, ipam.md 3.10). ``founder``: this node founds the
        cluster (no join targets, empty state dir) and believes every VNI and pool block at epoch 1."""
        inc = rng.getrandbits(64)
        ident = Identity(name or f"{host}-{inc:016x}", host, inc, 0, cluster_id)
        return cls(config, identity=ident, rng=rng, now=now, founder=founder)

    @classmethod
    def restore(
        cls,
        config: IpamConfig | None,
        records: Mapping[tuple[Any, ...], Any],
        *,
        rng: random.Random,
        now: float,
    ) -> Ipam:
        """Resume from a state directory: beliefs and allocations hold at once (ipam.md 3.10). Raises
        ``LocalProtocolError`` if the identity was retired (a graceful leave ended it): start ``fresh``."""
        ident = records.get(("ident",))
        if not isinstance(ident, Identity):
            raise LocalProtocolError("state directory has no IPAM identity; start fresh")
        if ident.retired:
            raise LocalProtocolError(f"identity {ident.name} was retired; start with a new identity")
        return cls(config, identity=ident, rng=rng, now=now, records=records)

    def _restore(self, records: Mapping[tuple[Any, ...], Any], now: float) -> None:
        cfg = self.config
        s = summarize(records, cfg)
        gen = self._id.generation + 1
        self._id = self._id.with_(generation=gen)
        self._out.put(("ident",), self._id)
        self._global = records.get(("global",))
        self._netcfg = {k[1]: v for k, v in records.items() if k[0] == "netcfg"}
        self._spaces = spaces_of(cfg, self._global, self._netcfg)
        for key, v in sorted(records.items(), key=lambda kv: repr(kv[0])):
            kind = key[0]
            if kind == "attached":
                self._attached.add(key[1])
            elif kind == "view":
                self._view.restore(SpaceId(key[1], key[2]), key[3], v, now=now)
            elif kind == "release":
                self._releases[key[1]] = v
            elif kind == "asked":
                self._asked[(SpaceId(key[1], key[2]), key[3])] = v
            elif kind == "retired":
                self._retired[key[1]] = v
            elif kind == "node":
                self._nodes[key[1]] = v
            elif kind == "copy":
                self._copies[(SpaceId(key[1], key[2]), key[3])] = v
        for (sid, k), b in sorted(s.blocks.items()):
            self._index_block(sid, k, b)
            self._blocks[(sid, k)] = b
            if b.allocs:
                for off, h in b.allocs.items():
                    if h.tag.startswith("~"):
                        self._quarantine[(sid, off)] = now + cfg.quarantine_interval
        self._remote = dict(s.remote)
        # A proxy request in flight died with the old process: release whatever it may have got.
        for (sid, tag), owners in sorted(self._asked.items()):
            for owner in owners:
                self._add_release(PendingRelease(sid.scope, sid.name, -1, tag, owner))
            self._out.put(("asked", sid.scope, sid.name, tag), None)
        self._asked.clear()
        # Re-assert what this identity writes (NetworkDB does not keep another node's copy authoritative).
        self._publish_node()
        if self._global is not None:
            self._stage_write(
                TABLE_NETCFG, GLOBAL_SCOPE, writer_key(GLOBAL_KEY, self.name), encode_global(self._global)
            )
        for net in sorted(self._attached):
            if net in self._netcfg:
                self._stage_write(
                    TABLE_NETCFG, GLOBAL_SCOPE, writer_key(net, self.name), encode_netcfg(self._netcfg[net])
                )
        for node, r in sorted(self._retired.items()):
            self._stage_write(TABLE_RETIRED, GLOBAL_SCOPE, writer_key(node, self.name), encode_retired(r))
        for (sid, k), b in sorted(self._blocks.items()):
            if b.believe and (b.hw > 1 or b.allocs or b.seq) or b.granted_to:
                self._write_block_record(sid, k, now)
        for (sid, k), origin in sorted(self._copies.items()):
            e = self._view.explicit(sid, k)
            if e is not None and e.writer == origin:
                self._publish_copy(sid, k, e)
        self._count("restarts")

    # ------------------------------------------------------------------ identity and reads

    @property
    def name(self) -> str:
        """This identity's name (also its gossip member name)."""
        return self._id.name

    @property
    def identity(self) -> Identity:
        return self._id

    @property
    def cluster_id(self) -> str:
        return self._id.cluster_id

    @property
    def is_retired(self) -> bool:
        return self._id.retired

    @property
    def is_fenced(self) -> bool:
        return bool(self._id.fenced)

    def set_cluster_id(self, cluster_id: str, *, now: float) -> None:
        """NetworkDB adopted (or founded) the cluster id: record it (ClusterIdSet)."""
        if self._id.cluster_id == cluster_id:
            return
        if self._id.cluster_id:
            raise LocalProtocolError(f"cluster id is already {self._id.cluster_id}")
        self._id = self._id.with_(cluster_id=cluster_id)
        self._out.put(("ident",), self._id)
        self._publish_node()
        self._done(now)

    def believes(self, network: str, space: str, k: int) -> bool:
        """Whether this node believes block ``k`` (in memory; durable once persisted)."""
        return self._believes(SpaceId(network, space), k)

    def block_state(self, network: str, space: str, k: int) -> BlockState:
        return self._block(SpaceId(network, space), k)

    def view_entry(self, network: str, space: str, k: int) -> ViewEntry | None:
        sp = self._spaces.get(SpaceId(network, space))
        return None if sp is None else self._view.get(sp, k)

    def attached_networks(self) -> list[str]:
        """Networks this node uses (the shell keeps them joined in NetworkDB, also after a restart)."""
        return sorted(self._attached)

    def believed(self) -> dict[tuple[SpaceId, int], int]:
        """Blocks believed (in memory) -> epoch; empty when retired or fenced."""
        if not self._can_believe():
            return {}
        return {(sid, k): self._blocks[(sid, k)].hw for sid, ks in self._believed.items() for k in ks}

    def view_snapshot(self) -> dict[tuple[SpaceId, int], ViewEntry]:
        """The explicit view entries (blocks without one are at genesis)."""
        return dict(self._view.items())

    def pending_grants(self) -> dict[tuple[SpaceId, int], str]:
        """Grants issued by this node and not yet confirmed: block -> target."""
        return {key: self._blocks[key].granted_to for key in sorted(self._pending_grants)}

    def unconfirmed_grants(self) -> dict[tuple[SpaceId, int], ViewEntry]:
        """View entries that are grants without a confirming held record."""
        return {
            key: e for key in sorted(self._view.unconfirmed) if (e := self._view.explicit(*key)) is not None
        }

    def proposals(self) -> dict[tuple[SpaceId, int], int]:
        """Active reclaim proposals of this node: block -> proposed epoch."""
        return {key: e for key, (_, e) in self._proposals.items()}

    def spaces(self) -> list[SpaceId]:
        return sorted(self._spaces)

    def space(self, network: str, space: str) -> Space | None:
        return self._spaces.get(SpaceId(network, space))

    def netcfg(self, network: str) -> NetConfig | None:
        return self._netcfg.get(network)

    def global_config(self) -> GlobalConfig | None:
        return self._global

    def remote_holdings(self) -> dict[tuple[SpaceId, int], RemoteHolding]:
        return dict(self._remote)

    def stats(self) -> dict[str, int]:
        out = dict(sorted(self._counters.items()))
        out.update(
            spaces=len(self._spaces),
            believed=sum(len(v) for v in self._believed.values()),
            pending_grants=len(self._pending_grants),
            pending_releases=len(self._releases),
            ops=len(self._ops),
            pending_persists=self._out.pending_persists,
        )
        return out

    def listing(self, network: str | None = None) -> list[BlockInfo]:
        """``meshnetctl ipam ls [NETWORK]``: every block of the network's subnets (or of every known space),
        its owner and epoch in this node's view (exact for its own blocks), and its free units."""
        rows = []
        for sid in sorted(self._spaces):
            if network is not None and sid.scope != network:
                continue
            sp = self._spaces[sid]
            for k in range(sp.nblocks):
                e = self._view.get(sp, k)
                b = self._block(sid, k)
                if b.believe and self._can_believe():
                    owner, epoch, state, free = self.name, b.hw, "held", sp.free_in(k, b.allocs)
                else:
                    owner, epoch, state = e.owner, e.epoch, e.state
                    free = sp.free_in(k, [u[0] for u in e.used])
                hint = self._view.reclaim_hint(sid, k)
                if hint is not None and hint.epoch > epoch:
                    state = f"reclaiming by {hint.by}"
                lo, hi = sp.block_range(k)
                rows.append(
                    BlockInfo(
                        sid.scope,
                        sid.name,
                        k,
                        sp.value(lo),
                        sp.value(hi - 1),
                        owner,
                        epoch,
                        state,
                        free,
                        self._node_state(owner),
                    )  # fmt: skip
                )
        return rows

    # ------------------------------------------------------------------ inputs: NetworkDB

    def handle_record(
        self, table: str, network: str, key: str, value: bytes, *, now: float, owner: str | None = None
    ) -> None:
        """An ``ipam.*`` entry NetworkDB holds (created or updated, hidden or not). Malformed records and
        keys written by someone other than the key's writer are counted and ignored."""
        try:
            self._on_record(table, network, key, value, owner, now)
        except DecodeError:
            self._count("bad_records")
        self._done(now)

    def _on_record(
        self, table: str, network: str, key: str, value: bytes, owner: str | None, now: float
    ) -> None:
        if table == TABLE_BLOCK:
            name, k, writer = parse_block_key(key)
            if owner is not None and owner != writer:
                self._count("foreign_writes")
                return
            rec = decode_block(value)
            sid = SpaceId(network, name)
            if rec.state == "reclaim":
                self._view.offer_reclaim(sid, k, ReclaimHint(rec.epoch, rec.by))
                return
            self._offer_view(sid, k, ViewEntry.of(rec, writer), now)
        elif table == TABLE_NETCFG:
            subject, writer = parse_writer_key(key)
            if owner is not None and owner != writer:
                self._count("foreign_writes")
                return
            if subject == GLOBAL_KEY:
                self._on_global(decode_global(value), now)
            else:
                self._on_netcfg(decode_netcfg(value), writer, now)
        elif table == TABLE_RETIRED:
            subject, writer = parse_writer_key(key)
            self._on_retired(subject, decode_retired(value), now)
        elif table == TABLE_NODE:
            if owner is not None and owner != key:
                self._count("foreign_writes")
                return
            self._on_node_record(key, decode_node(value), now)

    def _on_global(self, g: GlobalConfig, now: float) -> None:
        if self._global is not None:
            if g != self._global:
                self._alarm("global_conflict", f"two global configs: {self._global} and {g}")
            return
        if self.cluster_id and g.cluster_id and g.cluster_id != self.cluster_id:
            self._alarm("foreign_cluster", f"global config of cluster {g.cluster_id} ignored")
            return
        self._install_global(g, now)

    def _on_netcfg(self, c: NetConfig, writer: str, now: float) -> None:
        if self.cluster_id and c.cluster_id and c.cluster_id != self.cluster_id:
            self._alarm("foreign_cluster", f"netcfg of {c.network} from cluster {c.cluster_id} ignored")
            return
        self._users.setdefault(c.network, set()).add(writer)
        cur = self._netcfg.get(c.network)
        if cur is not None:
            if cur != c:
                self._alarm("netcfg_conflict", f"network {c.network} has two configs: {cur} and {c}")
            return
        self._install_netcfg(c, now)

    def _on_retired(self, node: str, r: RetiredRecord, now: float) -> None:
        if node in self._retired:
            return
        self._retired[node] = r
        self._out.put(("retired", node), r)
        self._stage_write(TABLE_RETIRED, GLOBAL_SCOPE, writer_key(node, self.name), encode_retired(r))
        if node == self.name and not self._id.retired:
            self._fence(f"this identity was retired by {r.by} ({r.reason}) while running", now)
        elif node != self.name:
            self._retire_holder(node, now)
            self._heir_gone(node)
            self._adopt_pending = True

    def _on_node_record(self, node: str, r: NodeRecord, now: float) -> None:
        if self.cluster_id and r.cluster_id and r.cluster_id != self.cluster_id:
            return
        if node == self.name:
            if r.generation > self._id.generation:
                self._fence(f"generation {r.generation} > {self._id.generation}: state dir rolled back", now)
            return
        cur = self._nodes.get(node)
        if cur == r:
            return
        self._nodes[node] = r
        self._out.put(("node", node), r)
        if r.host == self._id.host:
            self._maybe_adopt(now)

    # ------------------------------------------------------------------ inputs: membership

    def node_alive(self, name: str, *, now: float) -> None:
        """The gossip layer sees ``name`` alive: it speaks for its records again (copies are dropped)."""
        if name != self.name:
            self._members[name] = "alive"
            for key, origin in sorted(self._copies.items()):
                if origin == name:
                    self._copies.pop(key)
                    self._out.put(("copy", key[0].scope, key[0].name, key[1]), None)
                    b = self._block(*key)
                    if not b.believe and not b.granted_to and key not in self._proposals:
                        self._delete_block_record(*key)
        self._done(now)

    def node_failed(self, name: str, *, now: float) -> None:
        """The gossip layer declared ``name`` failed: requests waiting on it move on at once; its
        ownership records are re-published as copies while it is down (stewardship)."""
        if name != self.name and self._members.get(name) != "failed":
            self._members[name] = "failed"
            self._owner_gone(name, now)
            self._heir_gone(name)
            self._steward(name)
        self._done(now)

    def node_left(self, name: str, *, now: float) -> None:
        """``name`` left gracefully or was reaped."""
        if name != self.name and self._members.get(name) != "left":
            self._members[name] = "left"
            self._owner_gone(name, now)
            self._heir_gone(name)
            self._steward(name)
        self._done(now)

    def network_synced(self, network: str, *, now: float) -> None:
        """NetworkDB finished the first sync of ``network`` ("" = the global tables): from now on a lack
        of space there is ``exhausted`` or ``unreachable``, no longer ``unknown``."""
        self._synced.add(network)
        self._adopt_pending = True
        if network in self._attached and network in self._netcfg:
            # the owners are known now (at attach time the view may still have shown only the creator,
            # gone since): ask for the eager block again
            self._attached_ready(network, now)
        self._done(now)

    # ------------------------------------------------------------------ inputs: messages, persistence, time

    def receive_message(self, src: str, payload: bytes, *, now: float) -> None:
        """A direct message from node ``src``. Garbage and other clusters' messages are counted and dropped."""
        try:
            env = msg.decode(payload)
        except DecodeError:
            self._count("bad_messages")
            return
        if env.sender != src or (env.cluster_id and self.cluster_id and env.cluster_id != self.cluster_id):
            self._count("refused_messages")
            return
        self._count("messages_received")
        self._dispatch(src, env.body, now)
        self._done(now)

    def _dispatch(self, src: str, m: msg.Message, now: float) -> None:
        if isinstance(m, msg.SpaceRequest):
            self._on_space_request(src, m, now)
        elif isinstance(m, msg.SpaceGrant):
            self._on_space_grant(src, m, now)
        elif isinstance(m, msg.AddressGrant):
            self._on_address_grant(src, m, now)
        elif isinstance(m, msg.SpaceDenied):
            self._on_space_denied(src, m, now)
        elif isinstance(m, msg.Release):
            self._on_release(src, m, now)
        elif isinstance(m, msg.ReleaseAck):
            self._on_release_ack(src, m, now)
        elif isinstance(m, msg.ReclaimIntent):
            self._on_reclaim_intent(src, m, now)
        else:
            self._on_reclaim_reply(src, m, now)

    def persisted(self, seq: int, *, now: float) -> None:
        """The shell wrote ``Persist(seq)`` durably (in order): release the outputs waiting for it."""
        self._out.ack(seq)
        self._done(now)

    def handle_timer(self, *, now: float) -> None:
        """Run every timer due at ``now``."""
        for _ in range(8):
            due = self._timers.pop_due(now)
            if not due:
                break
            for key in due:
                self._fire(key, now)
        self._done(now)

    def _periodic(self, now: float) -> None:
        self._owner_periodic(now)
        self._requester_periodic(now)
        self._reclaim_periodic(now)

    def _fire(self, key: Any, now: float) -> None:
        kind = key[0]
        if kind == "tick":
            self._periodic(now)
        elif kind == "hint":
            self._flush_hints(key[1], now)
        elif kind in ("try", "budget"):
            self._op_timer(key[1], kind, now)

    # ------------------------------------------------------------------ outputs

    def persists_to_write(self) -> list[Persist]:
        """Durable changes, in order: write each atomically, then call ``persisted(seq)``."""
        return self._out.take_persists()

    def writes_to_send(self) -> list[TableWrite]:
        out, self._out.writes = self._out.writes, []
        return out

    def messages_to_send(self) -> list[SendMessage]:
        out, self._out.messages = self._out.messages, []
        return out

    def next_event(self) -> object | None:
        return self._out.events.popleft() if self._out.events else None

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    # ------------------------------------------------------------------ shared internals

    def _init_roles(self) -> None:
        self._init_owner()
        self._init_requester()
        self._init_reclaim()

    def _done(self, now: float) -> None:
        self._out.commit()
        if self._needs_tick():
            if "tick" not in self._timers:
                self._timers.set(("tick",), now + self.config.retry_interval)
        else:
            self._timers.cancel(("tick",))

    def _needs_tick(self) -> bool:
        return bool(
            self._pending_grants
            or self._releases
            or self._quarantine
            or self._eager
            or self._adopt_pending
            or self._view.unconfirmed
        )

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def _alarm(self, code: str, message: str) -> None:
        self._count(f"alarm_{code}")
        self._out.stage(Alarm(code, message))

    def _fence(self, reason: str, now: float) -> None:
        """Stop believing everything, for good: this identity's durable state is no longer trustworthy."""
        if self._id.fenced:
            return
        self._id = self._id.with_(fenced=reason)
        self._out.put(("ident",), self._id)
        self._alarm("fenced", reason)
        self._fail_all_ops(reason, now)

    def _can_believe(self) -> bool:
        return not self._id.retired and not self._id.fenced

    def _node_state(self, node: str) -> str:
        if node == self.name:
            return "self"
        if node in self._retired:
            return "retired"
        return self._members.get(node, "unknown")

    def _is_alive(self, node: str) -> bool:
        return node == self.name or (self._members.get(node) == "alive" and node not in self._retired)

    def _stage_write(self, table: str, network: str, key: str, value: bytes | None) -> None:
        self._out.stage(TableWrite(table, network, key, value))

    def _send(self, node: str, m: msg.Message) -> None:
        self._count("messages_sent")
        self._out.stage(SendMessage(node, msg.encode(msg.Envelope(self.name, self.cluster_id, m))))

    def _publish_node(self) -> None:
        r = NodeRecord(self._id.host, self._id.generation, self._id.cluster_id)
        self._stage_write(TABLE_NODE, GLOBAL_SCOPE, self.name, encode_node(r))

    def _new_rid(self) -> int:
        return self._rng.getrandbits(62) + 1

    # -- spaces

    def _install_global(self, g: GlobalConfig, now: float) -> None:
        self._global = g
        self._out.put(("global",), g)
        self._stage_write(TABLE_NETCFG, GLOBAL_SCOPE, writer_key(GLOBAL_KEY, self.name), encode_global(g))
        for sp in spaces_of(self.config, g, {}).values():
            self._install_space(sp)
        self._global_known(now)

    def _install_netcfg(self, c: NetConfig, now: float) -> None:
        self._netcfg[c.network] = c
        self._out.put(("netcfg", c.network), c)
        for sp in spaces_of(self.config, None, {c.network: c}).values():
            self._install_space(sp)
        self._claim_netcfg_units(c, now)
        if c.network in self._attached:
            self._publish_netcfg(c.network)
            self._attached_ready(c.network, now)

    def _publish_netcfg(self, network: str) -> None:
        self._users.setdefault(network, set()).add(self.name)
        self._stage_write(
            TABLE_NETCFG, GLOBAL_SCOPE, writer_key(network, self.name), encode_netcfg(self._netcfg[network])
        )

    def _install_space(self, sp: Space) -> None:
        self._spaces[sp.id] = sp
        if sp.creator == self.name:
            for k in range(sp.nblocks):
                if (sp.id, k) not in self._blocks:
                    self._blocks[(sp.id, k)] = BlockState(hw=1, believe=True)
                    self._believed.setdefault(sp.id, set()).add(k)

    # -- blocks

    def _block(self, sid: SpaceId, k: int) -> BlockState:
        return self._blocks.get((sid, k), _DEFAULT)

    def _believes(self, sid: SpaceId, k: int) -> bool:
        return self._can_believe() and k in self._believed.get(sid, ())

    def _believed_blocks(self, sid: SpaceId) -> list[int]:
        if not self._can_believe():
            return []
        return sorted(self._believed.get(sid, ()))

    def _index_block(self, sid: SpaceId, k: int, b: BlockState) -> None:
        old = self._blocks.get((sid, k))
        if old is not None:
            for off, h in old.allocs.items():
                if self._holders.get((sid, h)) == off:
                    del self._holders[(sid, h)]
        for off, h in b.allocs.items():
            self._holders[(sid, h)] = off
        s = self._believed.setdefault(sid, set())
        if b.believe:
            s.add(k)
        else:
            s.discard(k)
        if b.granted_to:
            self._pending_grants.add((sid, k))
        else:
            self._pending_grants.discard((sid, k))

    def _set_block(self, sid: SpaceId, k: int, b: BlockState) -> None:
        """Change a block's durable state (persisted at the end of this input, before any output)."""
        self._index_block(sid, k, b)
        self._blocks[(sid, k)] = b
        self._out.put(("block", sid.scope, sid.name, k), b)

    def _write_block_record(self, sid: SpaceId, k: int, now: float) -> None:
        """Publish this node's record of a block (held with its allocations, or a pending grant)."""
        b = self._block(sid, k)
        if b.believe:
            rec = BlockRecord(b.hw, "held", used=b.used(), seq=b.seq + 1)
        elif b.granted_to:
            rec = BlockRecord(b.granted_at, "granted", to=b.granted_to, used=b.manifest, seq=b.seq + 1)
        else:
            return
        self._set_block(sid, k, b.with_(seq=rec.seq))
        self._stage_write(TABLE_BLOCK, sid.scope, block_key(sid.name, k, self.name), encode_block(rec))
        self._offer_view(sid, k, ViewEntry.of(rec, self.name), now)

    def _steward(self, departed: str) -> None:
        """A failed writer's entries live only in the memory of others, and NetworkDB deletes a departed
        (left or reaped) writer's entries: re-publish its records that are still the best in this view,
        under this node's key (``origin`` = the writer), until it is alive again, so its ownership stays
        known to nodes that join or restart later and views keep agreeing (ipam.md 3.8 keeps it only in
        the views of the nodes that saw it)."""
        for (sid, k), e in sorted(self._view.items()):
            if e.writer == departed:
                self._steward_one(sid, k, e)

    def _steward_one(self, sid: SpaceId, k: int, e: ViewEntry) -> None:
        b = self._block(sid, k)
        if (sid, k) in self._copies or b.believe or b.granted_to or (sid, k) in self._proposals:
            return
        self._copies[(sid, k)] = e.writer
        self._out.put(("copy", sid.scope, sid.name, k), e.writer)
        self._publish_copy(sid, k, e)
        self._count("stewarded")

    def _publish_copy(self, sid: SpaceId, k: int, e: ViewEntry) -> None:
        to = e.owner if e.state == "granted" else ""
        rec = BlockRecord(e.epoch, e.state, to=to, used=e.used, seq=max(e.seq, 0), origin=e.writer)
        self._stage_write(TABLE_BLOCK, sid.scope, block_key(sid.name, k, self.name), encode_block(rec))

    def _drop_copy(self, sid: SpaceId, k: int, entry: ViewEntry) -> None:
        self._copies.pop((sid, k))
        self._out.put(("copy", sid.scope, sid.name, k), None)
        b = self._block(sid, k)
        if (
            entry.writer != self.name
            and not b.believe
            and not b.granted_to
            and (sid, k) not in self._proposals
        ):
            self._delete_block_record(sid, k)

    def _delete_block_record(self, sid: SpaceId, k: int) -> None:
        self._stage_write(TABLE_BLOCK, sid.scope, block_key(sid.name, k, self.name), None)

    def _offer_view(self, sid: SpaceId, k: int, entry: ViewEntry, now: float) -> None:
        cur = self._view.explicit(sid, k)
        if (
            cur is not None
            and cur.epoch == entry.epoch
            and cur.state == entry.state
            and cur.owner != entry.owner
        ):
            self._alarm("double_owner", f"{sid}#{k} at epoch {entry.epoch}: {cur.owner} and {entry.owner}")
        improved, changed = self._view.offer(sid, k, entry, now=now)
        if not improved:
            return
        copied = self._copies.get((sid, k))
        if copied is not None and entry.writer != copied:
            self._drop_copy(sid, k, entry)
        if changed:
            self._out.put(("view", sid.scope, sid.name, k), entry)
        self._view_changed(sid, k, entry, now)
        if self._members.get(entry.writer) in ("failed", "left"):
            self._steward_one(sid, k, entry)
