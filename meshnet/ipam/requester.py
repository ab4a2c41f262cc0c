"""Operations (ipam.md 3.5, 3.7, 3.11, 3.12): allocate, release, create_network, attach.

Theory of operation. An allocation is an operation with an id, a budget (``allocation_budget``) and at
most one request in flight:

1. If this node believes a block of the space with a free pickable unit (or, for a static address, the
   block holding it), it allocates locally: no message; the result is released after the persist.
2. Otherwise it asks one owner at a time (``SpaceRequest``, ``request_try_timeout`` per try): owners of
   blocks whose free hint is positive first, weighted by the hint (the view says who they are), then
   alive owners it has not asked yet (hints can be stale; ``exhausted`` must be honest). An owner answers
   with a block (then step 1 succeeds), a proxy address, or a denial. A static address goes to the block's
   believer only.
3. When nobody is left to ask (or the budget ends) the operation fails with a typed error, never hangs:
   ``unreachable`` when free space exists only at failed, gone or silent owners (named, with the reclaim
   command), ``unknown`` while the network is not synced, ``exhausted`` otherwise.

Proxy bookkeeping: the owners asked for a tag are persisted (``asked``); when the operation ends, each of
them except the one that answered gets a release for that tag, so a lost answer never leaks an address;
an unexpected ``AddressGrant`` is released too. Releases are retried until acknowledged (the address
stays reserved meanwhile, never double-used).

``create_network`` draws the VNI (and, without a subnet, a pool subnet) as ordinary allocations in the
global spaces, then persists the ``NetConfig`` (which makes this node the genesis believer of every
block) and publishes it. ``attach`` publishes the config and eagerly asks for one block of each subnet so
the creator's early death rarely strands a network (3.2); every joiner asks for a VNI block (3.12).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshnet.core.errors import LocalProtocolError

from . import messages as msg
from .errors import Conflict, Exhausted, InUse, IpamError, OwnerInfo, Unknown, Unreachable
from .events import Allocated, NetworkCreated, OperationFailed, OpId
from .records import GLOBAL_KEY, Holder
from .space import GLOBAL_SCOPE, POOL_SPACE, VNI_SPACE, NetConfig, Space, SpaceId, SubnetConfig
from .state import PendingRelease, RemoteHolding

__all__ = ["RequesterRole"]


@dataclass
class _AllocOp:
    id: int
    sid: SpaceId
    network: str
    tag: str
    offset: int | None
    deadline: float
    parent: int | None = None
    rid: int = 0
    asking: str = ""
    denied: dict[str, str] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    done: bool = False


@dataclass
class _CreateOp:
    id: int
    network: str
    subnets: tuple[SubnetConfig, ...] | None
    children: dict[str, int] = field(default_factory=dict)  # "vni" / "pool" -> op id
    results: dict[str, str] = field(default_factory=dict)
    done: bool = False


class RequesterRole:
    """Mixin of ``Ipam``: operations and their retries. State lives on ``Ipam`` (``core.py``)."""

    def _init_requester(self: Any) -> None:
        self._ops: dict[int, Any] = {}
        self._by_rid: dict[int, int] = {}
        self._next_op = 0
        #: eager block requests: space -> [rid, tries, owner, sent_at]
        self._eager: dict[SpaceId, list[Any]] = {}

    # ------------------------------------------------------------------ public operations

    def allocate(
        self: Any,
        network: str,
        *,
        tag: str,
        now: float,
        address: str | None = None,
        family: int | None = None,
        subnet: str | None = None,
    ) -> OpId:
        """Allocate an address in ``network`` for holder ``tag`` (an endpoint id, ``service:<id>`` for a
        VIP, ``lb`` for this node's load-balancer address): ``address`` for a static one, else a dynamic
        pick in ``subnet`` or the first subnet of ``family``. Idempotent per tag. Ends in ``Allocated`` or
        ``OperationFailed``. Raises ``LocalProtocolError`` for an address or subnet the network does not
        have, or a reserved address."""
        if not tag or "@" in tag:
            raise LocalProtocolError("tag must be a non-empty string without '@'")
        op_id = self._new_op()
        c = self._netcfg.get(network)
        if c is None:
            self._fail(op_id, "allocate", Unknown(f"network {network} is not known here yet (not synced)"))
            self._done(now)
            return op_id
        sid, offset = self._pick_space(c, address, family, subnet)
        op = _AllocOp(op_id, sid, network, tag, offset, now + self.config.allocation_budget)
        self._start(op, now)
        self._done(now)
        return op_id

    def release(self: Any, network: str, address: str, *, tag: str, now: float) -> bool:
        """Release ``address`` held for ``tag`` (local at once; by proxy: a release retried until the
        owner acknowledges). Returns False if this node holds no such allocation."""
        c = self._netcfg.get(network)
        if c is None:
            raise LocalProtocolError(f"unknown network {network}")
        sid, off = self._pick_space(c, address, None, None)
        ok = self._release_offset(sid, off, tag, now)
        self._done(now)
        return ok

    def create_network(
        self: Any,
        network: str,
        *,
        now: float,
        subnets: list[SubnetConfig | str] | None = None,
        vni: int | None = None,
    ) -> OpId:
        """Create a network: draw its VNI (static if ``vni``) and, without ``subnets``, a subnet of the
        default pool; then this node is the genesis believer of every block. Ends in ``NetworkCreated`` or
        ``OperationFailed``. Raises ``LocalProtocolError`` for a bad id or subnet."""
        if not network or network == GLOBAL_KEY or any(ch in network for ch in "@#"):
            raise LocalProtocolError(f"invalid network id {network!r}")
        if network in self._netcfg:
            raise LocalProtocolError(f"network {network} exists")
        subs = None
        if subnets:
            subs = tuple(s if isinstance(s, SubnetConfig) else SubnetConfig.make(s) for s in subnets)
            subs = tuple(
                SubnetConfig.make(s.subnet, ip_range=s.ip_range, gateway=s.gateway, aux=s.aux) for s in subs
            )
        op_id = self._new_op()
        if self._global is None:
            self._fail(op_id, "create_network", Unknown("the cluster's VNI space is not known here yet"))
            self._done(now)
            return op_id
        op = _CreateOp(op_id, network, subs)
        self._ops[op_id] = op
        vsid = SpaceId(GLOBAL_SCOPE, VNI_SPACE)
        voff = self._spaces[vsid].offset(vni) if vni is not None else None
        children = [("vni", vsid, voff)]
        if subs is None:
            children.append(("pool", SpaceId(GLOBAL_SCOPE, POOL_SPACE), None))
        kids = []
        for what, sid, off in children:
            child = _AllocOp(self._new_op(), sid, GLOBAL_SCOPE, f"net:{network}", off,
                             now + self.config.allocation_budget, parent=op_id)  # fmt: skip
            op.children[what] = child.id
            kids.append(child)
        for child in kids:
            if not op.done:
                self._start(child, now)
        self._done(now)
        return op_id

    def attach(self: Any, network: str, *, now: float) -> None:
        """This node uses ``network`` (the shell joined it in NetworkDB): publish its config and ask for one
        block of each subnet. Before the config is known the attach waits for it."""
        if network not in self._attached:
            self._attached.add(network)
            self._out.put(("attached", network), True)
        if network in self._netcfg:
            self._publish_netcfg(network)
            self._attached_ready(network, now)
        self._done(now)

    # ------------------------------------------------------------------ internals: ops

    def _new_op(self: Any) -> OpId:
        self._next_op += 1
        return OpId(self._next_op)

    def _pick_space(
        self: Any, c: NetConfig, address: str | None, family: int | None, subnet: str | None
    ) -> tuple[SpaceId, int | None]:
        spaces = [self._spaces[sid] for sid in c.space_ids()]
        if address is not None:
            for sp in spaces:
                if sp.contains(address):
                    off = sp.offset(address)
                    if sp.is_reserved(off):
                        raise LocalProtocolError(f"{address} is reserved in {c.network} (network, broadcast, "
                                                 "gateway or aux address)")  # fmt: skip
                    return sp.id, off
            raise LocalProtocolError(f"{address} is in no subnet of network {c.network}")
        if subnet is not None:
            for sp in spaces:
                if sp.id.name == subnet:
                    return sp.id, None
            raise LocalProtocolError(f"network {c.network} has no subnet {subnet}")
        for sp in spaces:
            if family is None or sp.version == family:
                return sp.id, None
        raise LocalProtocolError(f"network {c.network} has no IPv{family} subnet")

    def _start(self: Any, op: _AllocOp, now: float) -> None:
        self._ops[op.id] = op
        self._timers.set(("budget", op.id), op.deadline)
        self._advance(op, now)

    def _advance(self: Any, op: _AllocOp, now: float) -> None:
        if op.done:
            return
        if not self._can_believe():
            return self._finish(op, now, error=Conflict(self._conflict_reason()))
        sp: Space | None = self._spaces.get(op.sid)
        if sp is None:
            return self._finish(op, now, error=Unknown(f"{op.sid} is not known here yet"))
        holder = Holder(self.name, op.tag)
        off = self._holders.get((op.sid, holder))
        if off is not None and self._believes(op.sid, sp.block_of(off)):
            return self._finish(op, now, offset=off, owner=self.name)
        for (sid, o), rh in self._remote.items():
            if sid == op.sid and rh.tag == op.tag:
                return self._finish(op, now, offset=o, owner=rh.owner)
        if op.offset is not None:
            k = sp.block_of(op.offset)
            if self._believes(op.sid, k):
                cur = self._block(op.sid, k).allocs.get(op.offset)
                if cur is not None and cur != holder:
                    return self._finish(op, now, error=InUse(f"{sp.value(op.offset)} is held by {cur.node}"))
                if cur is None:
                    self._alloc(op.sid, k, op.offset, holder, now)
                return self._finish(op, now, offset=op.offset, owner=self.name)
            owner = self._view.get(sp, k).owner
            if owner == self.name or op.asking:
                if owner == self.name:
                    return self._finish(
                        op, now, error=Unknown(f"ownership of {sp.value(op.offset)} is settling")
                    )
                return
            if op.denied.get(owner) == "not_owner":
                return self._finish(
                    op, now, error=Unknown(f"ownership of {sp.value(op.offset)} is moving; retry")
                )
            if not self._is_alive(owner) or owner in op.denied:
                return self._finish(op, now, error=self._classify(op, sp, only=owner))
            return self._ask(op, owner, now)
        if self._pick_local(op.sid, holder, now) is not None:
            off = self._holders[(op.sid, holder)]
            return self._finish(op, now, offset=off, owner=self.name)
        if op.asking:
            return
        owner = self._candidate(op, sp)
        if owner is None:
            return self._finish(op, now, error=self._classify(op, sp))
        self._ask(op, owner, now)

    def _owners(self: Any, sp: Space) -> dict[str, list[int]]:
        """Owner -> [blocks, free] in this node's view (this node excluded)."""
        out: dict[str, list[int]] = {}
        for k in range(sp.nblocks):
            e = self._view.get(sp, k)
            if e.owner == self.name:
                continue
            row = out.setdefault(e.owner, [0, 0])
            row[0] += 1
            row[1] += sp.free_in(k, [u[0] for u in e.used])
        return out

    def _candidate(self: Any, op: _AllocOp, sp: Space) -> str | None:
        owners = self._owners(sp)
        eligible = sorted(
            o for o in owners if self._is_alive(o) and o not in op.denied and o not in op.silent
        )
        with_free = [o for o in eligible if owners[o][1] > 0]
        if with_free:
            return self._rng.choices(with_free, weights=[owners[o][1] for o in with_free])[0]
        return eligible[0] if eligible else None

    def _classify(self: Any, op: _AllocOp, sp: Space, only: str | None = None) -> IpamError:
        owners = self._owners(sp)
        if only is not None:
            owners = {only: owners.get(only, [1, 1])}
        stuck = [
            OwnerInfo(o, row[0], row[1], "not answering" if self._is_alive(o) else self._node_state(o))
            for o, row in sorted(owners.items())
            if (row[1] > 0 or only is not None) and (not self._is_alive(o) or o in op.silent)
        ]
        what = f"{op.network or 'the cluster'} {sp.id.name}"
        if stuck:
            return Unreachable.naming(what, stuck)
        if only is not None and op.denied.get(only) == "in_use":
            return InUse(f"{sp.value(op.offset)} is in use")
        if op.sid.scope not in self._synced:
            return Unknown(f"{what}: ownership not synced yet; retry")
        return Exhausted(f"{what}: no free {'VNI' if sp.kind == 'vni' else 'address'} at any reachable owner")

    def _ask(self: Any, op: _AllocOp, owner: str, now: float) -> None:
        op.rid = self._new_rid()
        op.asking = owner
        self._by_rid[op.rid] = op.id
        key = (op.sid, op.tag)
        asked = self._asked.get(key, ())
        if owner not in asked:
            self._asked[key] = (*asked, owner)
            self._out.put(("asked", op.sid.scope, op.sid.name, op.tag), self._asked[key])
        self._send(owner, msg.SpaceRequest(op.rid, op.sid.scope, op.sid.name, op.tag,
                                           -1 if op.offset is None else op.offset))  # fmt: skip
        self._timers.set(("try", op.id), min(op.deadline, now + self.config.request_try_timeout))

    def _op_timer(self: Any, op_id: int, kind: str, now: float) -> None:
        op = self._ops.get(op_id)
        if op is None:
            return
        if not isinstance(op, _AllocOp):
            self._other_op_timer(op, kind, now)
            return
        if op.asking:
            op.silent.add(op.asking)
            self._by_rid.pop(op.rid, None)
            op.asking = ""
        if kind == "budget":
            sp = self._spaces.get(op.sid)
            err = self._classify(op, sp, only=None) if sp is not None else Unknown(f"{op.sid} unknown")
            return self._finish(op, now, error=err)
        if op.offset is not None:
            op.silent.discard(
                self._view.get(self._spaces[op.sid], self._spaces[op.sid].block_of(op.offset)).owner
            )
        self._advance(op, now)

    def _finish(
        self: Any,
        op: _AllocOp,
        now: float,
        *,
        offset: int | None = None,
        owner: str = "",
        error: IpamError | None = None,
    ) -> None:
        op.done = True
        self._ops.pop(op.id, None)
        self._by_rid.pop(op.rid, None)
        self._timers.cancel(("try", op.id))
        self._timers.cancel(("budget", op.id))
        key = (op.sid, op.tag)
        asked = self._asked.pop(key, ())
        if asked:
            self._out.put(("asked", op.sid.scope, op.sid.name, op.tag), None)
            for o in asked:
                if o != owner:
                    self._add_release(PendingRelease(op.sid.scope, op.sid.name, -1, op.tag, o))
        if error is None:
            value = self._spaces[op.sid].value(offset)
            if op.parent is not None:
                return self._child_done(op, now, value=value)
            self._out.stage(Allocated(OpId(op.id), op.network, op.sid.name, value, op.tag, owner))
            return
        self._count(f"failed_{error.code}")
        if op.parent is not None:
            return self._child_done(op, now, error=error)
        self._out.stage(OperationFailed(OpId(op.id), "allocate", error))

    def _fail(self: Any, op_id: int, what: str, error: IpamError) -> None:
        self._count(f"failed_{error.code}")
        self._out.stage(OperationFailed(OpId(op_id), what, error))

    def _conflict_reason(self: Any) -> str:
        if self._id.retired:
            return f"identity {self.name} is retired (it left or was reclaimed); restart with a new identity"
        return f"identity {self.name} is fenced: {self._id.fenced}; restart with an empty state directory"

    def _fail_all_ops(self: Any, reason: str, now: float) -> None:
        for op in sorted(self._ops.values(), key=lambda o: o.id):
            if isinstance(op, _AllocOp) and not op.done:
                self._finish(op, now, error=Conflict(reason))

    # ------------------------------------------------------------------ internals: create_network

    def _child_done(
        self: Any, child: _AllocOp, now: float, *, value: str = "", error: IpamError | None = None
    ) -> None:
        op = self._ops.get(child.parent)
        if not isinstance(op, _CreateOp) or op.done:
            if error is None:  # the parent is gone: give the allocation back
                self._release_offset(child.sid, self._spaces[child.sid].offset(value), child.tag, now)
            return
        what = next(w for w, i in op.children.items() if i == child.id)
        if error is not None:
            op.done = True
            self._ops.pop(op.id, None)
            for w, v in op.results.items():
                sid = SpaceId(GLOBAL_SCOPE, VNI_SPACE if w == "vni" else POOL_SPACE)
                self._release_offset(sid, self._spaces[sid].offset(v), child.tag, now)
            self._fail(op.id, "create_network", error)
            return
        op.results[what] = value
        if len(op.results) < len(op.children):
            return
        op.done = True
        self._ops.pop(op.id, None)
        subs = op.subnets if op.subnets is not None else (SubnetConfig.make(op.results["pool"]),)
        c = NetConfig(
            op.network, subs, int(op.results["vni"]), self.name, self.cluster_id, op.results.get("pool")
        )
        self._attached.add(op.network)
        self._out.put(("attached", op.network), True)
        self._install_netcfg(c, now)
        self._out.stage(NetworkCreated(OpId(op.id), c))

    # ------------------------------------------------------------------ responses

    def _on_address_grant(self: Any, src: str, m: msg.AddressGrant, now: float) -> None:
        sid = SpaceId(m.scope, m.space)
        op = self._ops.get(self._by_rid.get(m.rid, -1))
        if isinstance(op, _AllocOp) and not op.done and op.sid == sid and op.tag == m.tag:
            self._remote[(sid, m.offset)] = RemoteHolding(src, m.tag)
            self._out.put(("remote", sid.scope, sid.name, m.offset), RemoteHolding(src, m.tag))
            return self._finish(op, now, offset=m.offset, owner=src)
        held = self._remote.get((sid, m.offset))
        if held is not None and held.owner == src and held.tag == m.tag:
            return  # a duplicate answer
        self._count("unexpected_address_grants")
        self._add_release(PendingRelease(sid.scope, sid.name, m.offset, m.tag, src))

    def _on_space_denied(self: Any, src: str, m: msg.SpaceDenied, now: float) -> None:
        for sid, ent in list(self._eager.items()):
            if ent[0] == m.rid:
                del self._eager[sid]
        op = self._ops.get(self._by_rid.pop(m.rid, -1))
        if not isinstance(op, _AllocOp) or op.done or op.asking != src:
            return
        op.asking = ""
        op.denied[src] = m.reason
        self._timers.cancel(("try", op.id))
        if m.reason == "in_use" and op.offset is not None:
            return self._finish(op, now, error=InUse(f"{self._spaces[op.sid].value(op.offset)} is in use"))
        self._advance(op, now)

    def _space_gained(self: Any, sid: SpaceId, now: float) -> None:
        self._eager.pop(sid, None)
        self._ensure_attached(sid.scope)
        for op in sorted(self._ops.values(), key=lambda o: o.id):
            if isinstance(op, _AllocOp) and op.sid == sid and not op.done:
                if op.asking:
                    self._by_rid.pop(op.rid, None)
                    self._timers.cancel(("try", op.id))
                    op.asking = ""
                self._advance(op, now)

    def _owner_gone(self: Any, node: str, now: float) -> None:
        for op in sorted(self._ops.values(), key=lambda o: o.id):
            if isinstance(op, _AllocOp) and op.asking == node and not op.done:
                self._by_rid.pop(op.rid, None)
                self._timers.cancel(("try", op.id))
                op.asking = ""
                op.silent.add(node)
                self._advance(op, now)

    # ------------------------------------------------------------------ releases

    def _release_offset(self: Any, sid: SpaceId, off: int, tag: str, now: float) -> bool:
        sp = self._spaces[sid]
        k = sp.block_of(off)
        if self._believes(sid, k):
            if self._block(sid, k).allocs.get(off) == Holder(self.name, tag):
                self._free(sid, k, off, now)
                return True
            return False
        rh = self._remote.get((sid, off))
        if rh is None or rh.tag != tag:
            return False
        del self._remote[(sid, off)]
        self._out.put(("remote", sid.scope, sid.name, off), None)
        self._add_release(PendingRelease(sid.scope, sid.name, off, tag, rh.owner))
        return True

    def _add_release(self: Any, pr: PendingRelease) -> None:
        rid = self._new_rid()
        self._releases[rid] = pr
        self._out.put(("release", rid), pr)
        self._send_release(rid, pr)

    def _send_release(self: Any, rid: int, pr: PendingRelease) -> None:
        sid = SpaceId(pr.scope, pr.space)
        sp = self._spaces.get(sid)
        target = pr.owner
        if not target and sp is not None and pr.offset >= 0:
            target = self._view.get(sp, sp.block_of(pr.offset)).owner
        if not target or not self._is_alive(target) or target == self.name:
            return
        self._send(target, msg.Release(rid, pr.scope, pr.space, pr.offset, pr.tag))

    def _on_release_ack(self: Any, src: str, m: msg.ReleaseAck, now: float) -> None:
        pr = self._releases.get(m.rid)
        if pr is None:
            return
        if m.status == "done":
            del self._releases[m.rid]
            self._out.put(("release", m.rid), None)
        elif pr.owner and pr.offset >= 0:
            pr = PendingRelease(pr.scope, pr.space, pr.offset, pr.tag, "")  # ask the view's owner next
            self._releases[m.rid] = pr
            self._out.put(("release", m.rid), pr)

    # ------------------------------------------------------------------ eager block requests

    def _ensure_attached(self: Any, network: str) -> None:
        """A node that believes blocks of a network uses it: it re-publishes the network's config, so the
        config outlives its creator and the nodes that attached first."""
        if network and network not in self._attached:
            self._attached.add(network)
            self._out.put(("attached", network), True)
            if network in self._netcfg:
                self._publish_netcfg(network)

    def _attached_ready(self: Any, network: str, now: float) -> None:
        for sid in self._netcfg[network].space_ids():
            self._request_block(sid, now)

    def _global_known(self: Any, now: float) -> None:
        self._request_block(SpaceId(GLOBAL_SCOPE, VNI_SPACE), now)

    def _request_block(self: Any, sid: SpaceId, now: float, tries: int = 0) -> None:
        if self._believed_blocks(sid) or not self._can_believe() or sid in self._eager:
            return  # (a request in flight is retried by the periodic work)
        sp = self._spaces.get(sid)
        if sp is None:
            return
        owners = self._owners(sp)
        alive = sorted((-row[1], o) for o, row in owners.items() if self._is_alive(o) and row[1] > 0)
        if not alive:
            return
        owner = alive[0][1]
        rid = self._new_rid()
        self._eager[sid] = [rid, tries + 1, owner, now]
        self._send(owner, msg.SpaceRequest(rid, sid.scope, sid.name, "", -1))

    def _requester_periodic(self: Any, now: float) -> None:
        for rid, pr in sorted(self._releases.items()):
            self._send_release(rid, pr)
        for sid, (_, tries, _, sent_at) in sorted(self._eager.items()):
            if now - sent_at >= self.config.request_try_timeout:
                del self._eager[sid]
                if tries < 3:
                    self._request_block(sid, now, tries)
