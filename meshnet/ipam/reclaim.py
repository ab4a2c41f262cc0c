"""Graceful leave, explicit reclaim and predecessor adoption (ipam.md 3.9, 3.10).

Theory of operation.

*Leave.* The leaver retires its identity (durably, then ``ipam.retired``), releases what it holds by
proxy, and grants every block it believes to one heir per space (an alive node using that network,
the one with the most free space there), with the manifest of the live allocations that outlive it
(service VIPs, network VNIs, addresses it allocated for other nodes; its own endpoints are gone). It
waits up to ``leave_wait`` for the heirs' held records; grants still unconfirmed then are delivered by
relays (the views keep the granted records after NetworkDB deletes the leaver's entries). Blocks with
no live heir stay with the retired identity, to be reclaimed.

*Reclaim* (never automatic): an operator's ``meshnetctl ipam reclaim NODE...``, or predecessor adoption
(a fresh identity on the same host, which holds the host lock, proves the old process gone). A failed
node may have allocated after the last record anyone saw, so only an assertion that it is dead makes
reuse safe; the protocol below makes the reuse itself safe (one winner, no late grant), which
ipam.md's 30-second settle could not do under a partition (two reclaimers cut off from each other
would both win). This is the deviation: acknowledgements instead of a timer.

1. Preconditions (else ``ReclaimRefused``; ``force`` skips 1a and 1b): (a) no target is alive in this
   node's view; (b) every *acker* is alive. Ackers are all known identities except this node, the
   targets, retired identities, and *superseded* ones (not alive while another identity of their host
   is: provably dead, which lets a whole partition restart together, Weave's documented failure).
2. Retire the targets (``ipam.retired``). For each block whose view owner is a target, propose epoch
   e' = max(view epoch, reclaim hints, own hw) + 1: persist hw = e' and write a ``reclaim`` record (a
   status hint).
3. Send ``ReclaimIntent`` to every acker (retried until the budget). A member M answers per block:
   *nack* if M believes it, if M's hw > e' (M knows a later epoch), if M's view has a chain record at
   >= e', or if M proposes the block itself with priority (higher epoch, or equal epoch and lower
   name); otherwise *ack*, after persisting hw_M = max(hw_M, e') (and abandoning its own weaker
   proposal). The answer lists the holdings M knows in those blocks: addresses M got by proxy, and
   the VNIs and pool subnets of the networks M knows (a network outlives its creator).
4. A block every acker acked is won: persist belief at e' with allocations = the target's last known
   ``used`` (endpoint addresses quarantined ``quarantine_interval``; VIPs, VNIs and other nodes'
   addresses kept) plus the holdings the acks reported; write the held record. A nack abandons the block.

Why one believer (adds to 3.6): a winner at e' holds an ack from every live member, each of which did
not believe and can no longer accept a grant at <= e' (hw only grows), nor win its own proposal at <= e'
(winning needs hw == its proposal). Two concurrent reclaimers are each other's ackers, and a reclaimer
acks only a proposal that beats its own, abandoning its own first; so at most one collects all acks. A
grant issued by the dead node but not yet accepted can no longer be accepted by any acker. Residual risk
(as in 3.9): an identity unknown to the reclaimer (its node record never seen) is not asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshnet.core.errors import LocalProtocolError

from . import messages as msg
from .errors import Conflict, ReclaimRefused
from .events import LeaveCompleted, OpId, Reclaimed
from .owner import KEEP_TAGS
from .records import QUARANTINE, TABLE_BLOCK, BlockRecord, Holder, RetiredRecord, block_key, encode_block
from .space import SpaceId
from .state import BlockState, PendingRelease
from .view import ReclaimHint

__all__ = ["ReclaimRole"]

BlockKey = tuple[SpaceId, int]


@dataclass
class _ReclaimOp:
    id: int
    targets: tuple[str, ...]
    adoption: bool
    deadline: float
    ackers: tuple[str, ...] = ()
    blocks: dict[BlockKey, int] = field(default_factory=dict)
    pending: dict[BlockKey, set[str]] = field(default_factory=dict)
    holdings: dict[BlockKey, list[tuple[int, str, str]]] = field(default_factory=dict)
    rids: list[int] = field(default_factory=list)
    won: int = 0
    abandoned: int = 0
    done: bool = False


@dataclass
class _LeaveOp:
    id: int
    deadline: float
    waiting: set[BlockKey] = field(default_factory=set)
    no_heir: list[BlockKey] = field(default_factory=list)
    handed: int = 0
    done: bool = False


class ReclaimRole:
    """Mixin of ``Ipam``: leave, reclaim, adoption. State lives on ``Ipam`` (``core.py``)."""

    def _init_reclaim(self: Any) -> None:
        self._proposals: dict[BlockKey, tuple[int, int]] = {}
        self._adopt_pending = False
        self._adopt_next = 0.0
        self._adopt_op: int | None = None
        self._leave_op: int | None = None

    # ------------------------------------------------------------------ public

    def reclaim(self: Any, targets: list[str] | tuple[str, ...], *, now: float, force: bool = False) -> OpId:
        """Reclaim the blocks of dead nodes (``meshnetctl ipam reclaim NODE...``): see the module
        docstring. ``force`` skips the liveness preconditions (the target is asserted dead although it
        looks alive; members that are down are not asked) and is unsafe if that assertion is wrong.
        Ends in ``Reclaimed`` or ``OperationFailed(ReclaimRefused)``."""
        ts = tuple(sorted(set(targets)))
        if not ts:
            raise LocalProtocolError("reclaim needs at least one node")
        op_id = self._new_op()
        if not self._can_believe():
            self._fail(op_id, "reclaim", Conflict(self._conflict_reason()))
        else:
            err = self._reclaim_refusal(ts, force=force, adoption=False)
            if err is not None:
                self._fail(op_id, "reclaim", err)
            else:
                self._begin_reclaim(
                    _ReclaimOp(op_id, ts, False, now + self.config.reclaim_budget), force, now
                )
        self._done(now)
        return op_id

    def leave(self: Any, *, now: float) -> OpId:
        """Graceful leave: retire this identity and hand every block to an heir (module docstring). Ends
        in ``LeaveCompleted`` within ``leave_wait``; then the shell leaves the cluster."""
        if self._id.retired:
            raise LocalProtocolError("this identity has already left")
        op_id = self._new_op()
        believed = {sid: self._believed_blocks(sid) for sid in sorted(self._spaces)}
        self._fail_all_ops("this node is leaving", now)
        self._id = self._id.with_(retired=True)
        self._out.put(("ident",), self._id)
        self._on_retired(self.name, RetiredRecord("leave", self.name), now)
        for (sid, off), rh in sorted(self._remote.items()):
            if rh.tag.startswith(KEEP_TAGS):
                continue  # a VIP or a network's VNI outlives this node (3.11)
            del self._remote[(sid, off)]
            self._out.put(("remote", sid.scope, sid.name, off), None)
            self._add_release(PendingRelease(sid.scope, sid.name, off, rh.tag, rh.owner))
        op = _LeaveOp(op_id, now + self.config.leave_wait)
        for sid, ks in believed.items():
            if not ks:
                continue
            heir = self._choose_heir(sid)
            for k in ks:
                if heir is None:
                    op.no_heir.append((sid, k))
                    continue
                b = self._block(sid, k)
                manifest = tuple(
                    (o, h.node, h.tag)
                    for o, h in sorted(b.allocs.items())
                    if h.node != self.name or h.tag.startswith(KEEP_TAGS)
                )
                self._grant_block(sid, k, heir, manifest, 0, now)
                op.waiting.add((sid, k))
                op.handed += 1
        self._ops[op_id] = op
        self._leave_op = op_id
        if op.waiting:
            self._timers.set(("budget", op_id), op.deadline)
        else:
            self._finish_leave(op)
        self._done(now)
        return op_id

    # ------------------------------------------------------------------ membership helpers

    def _superseded(self: Any, node: str) -> bool:
        """Not alive while another identity of its host is: that host's lock proves it dead."""
        r = self._nodes.get(node)
        if r is None or self._is_alive(node):
            return False
        if r.host == self._id.host:
            return True
        return any(z != node and self._is_alive(z) and zr.host == r.host for z, zr in self._nodes.items())

    def _ackers(self: Any, targets: tuple[str, ...]) -> list[str]:
        return sorted(
            n
            for n in self._nodes
            if n != self.name and n not in targets and n not in self._retired and not self._superseded(n)
        )

    def _reclaim_refusal(
        self: Any, targets: tuple[str, ...], *, force: bool, adoption: bool
    ) -> ReclaimRefused | None:
        if self.name in targets:
            return ReclaimRefused("a node cannot reclaim itself")
        unknown = [t for t in targets if t not in self._nodes and t not in self._members]
        if unknown and not adoption:
            return ReclaimRefused(f"unknown node(s) {', '.join(unknown)}")
        if force:
            return None
        if not adoption:
            alive = [t for t in targets if self._is_alive(t)]
            if alive:
                return ReclaimRefused(
                    f"{', '.join(alive)} is alive: reclaim only a node that is gone for good "
                    "(--force if you know it is dead)"
                )
        down = [a for a in self._ackers(targets) if not self._is_alive(a)]
        if down:
            together = " ".join((*targets, *down))
            return ReclaimRefused(
                f"{', '.join(down)} not alive here and could hold blocks of {', '.join(targets)}: wait until "
                f"they are reachable, or if they are gone too run `meshnetctl ipam reclaim {together}`"
            )
        return None

    def _choose_heir(self: Any, sid: SpaceId) -> str | None:
        users = self._users.get(sid.scope) if sid.scope else None
        cands = [
            n
            for n in sorted(self._nodes)
            if n != self.name and self._is_alive(n) and (users is None or n in users)
        ]
        if not cands:
            return None
        owners = self._owners(self._spaces[sid])
        return max(cands, key=lambda n: (owners.get(n, [0, 0])[1], n))

    def _visible(self: Any, sid: SpaceId) -> bool:
        """Whether this node's view of ``sid`` is good enough to reclaim in it: the scope is synced, and a
        network's scope is one this node uses (else it never received the network's records)."""
        return sid.scope in self._synced and (not sid.scope or sid.scope in self._attached)

    def _auto_targets(self: Any) -> set[str]:
        """Retired identities that still own blocks this node can see: a retirement is the death
        assertion (a leave, a reclaim, or a successor holding the host lock), so their space is taken back
        without another command, by whoever sees it (acknowledgements pick one winner)."""
        out = set()
        for sid in self._spaces:
            if not self._visible(sid):
                continue
            sp = self._spaces[sid]
            for k in range(sp.nblocks):
                if self._believes(sid, k):
                    continue
                owner = self._reclaim_owner(sid, k, self._view.get(sp, k))
                if owner in self._retired and owner != self.name and self._members.get(owner) != "alive":
                    out.add(owner)
        return out

    def _reclaim_owner(self: Any, sid: SpaceId, k: int, e: Any) -> str:
        """Whom a reclaim of block ``k`` takes it from: its view owner; but a grant to this node that it
        had to refuse (a reclaimer fenced it at that epoch, then gave up) belongs to its donor still, so
        the target can take the block back once the donor is gone instead of leaving it orphaned."""
        if e.state == "granted" and e.owner == self.name and self._block(sid, k).hw >= e.epoch:
            return e.writer
        return e.owner

    def _maybe_adopt(self: Any, now: float) -> None:
        """A new identity of this host appeared in the records: older identities of this host are dead
        (this process holds the host lock), so retire them; their blocks are then reclaimed."""
        if not self._can_believe():
            return
        host = self._id.host
        for n, r in sorted(self._nodes.items()):
            if r.host == host and n != self.name and n not in self._retired:
                self._on_retired(n, RetiredRecord("adopted", self.name), now)
                self._count("adoptions")
        self._adopt_pending = True

    # ------------------------------------------------------------------ reclaimer side

    def _begin_reclaim(self: Any, op: _ReclaimOp, force: bool, now: float) -> None:
        acks = self._ackers(op.targets)
        op.ackers = tuple(a for a in acks if self._is_alive(a)) if force else tuple(acks)
        for t in op.targets:
            if t not in self._retired:
                self._on_retired(t, RetiredRecord("adopted" if op.adoption else "reclaim", self.name), now)
        for sid in sorted(self._spaces):
            if not self._visible(sid):
                continue
            sp = self._spaces[sid]
            for k in range(sp.nblocks):
                key = (sid, k)
                if key in self._proposals or self._believes(sid, k):
                    continue
                e = self._view.get(sp, k)
                if self._reclaim_owner(sid, k, e) not in op.targets:
                    continue
                b = self._block(sid, k)
                hint = self._view.reclaim_hint(sid, k)
                epoch = max(e.epoch, b.hw, hint.epoch if hint is not None else 0) + 1
                self._set_block(sid, k, BlockState(hw=epoch, seq=b.seq))
                self._proposals[key] = (op.id, epoch)
                op.blocks[key] = epoch
                op.pending[key] = set(op.ackers)
                rec = BlockRecord(epoch, "reclaim", by=self.name)
                self._stage_write(
                    TABLE_BLOCK, sid.scope, block_key(sid.name, k, self.name), encode_block(rec)
                )
                self._view.offer_reclaim(sid, k, ReclaimHint(epoch, self.name))
        self._ops[op.id] = op
        self._count("reclaims_started")
        if not op.blocks:
            return self._finish_reclaim(op, now)
        if not op.ackers or self.config.unsafe_reclaim_without_acks:
            for key in sorted(op.blocks):
                self._win(op, key, now)
            return self._finish_reclaim(op, now)
        self._timers.set(("budget", op.id), op.deadline)
        self._send_intents(op, now)

    def _send_intents(self: Any, op: _ReclaimOp, now: float) -> None:
        per: dict[tuple[str, SpaceId], list[tuple[int, int]]] = {}
        for (sid, k), epoch in sorted(op.blocks.items()):
            for a in sorted(op.pending[(sid, k)]):
                per.setdefault((a, sid), []).append((k, epoch))
        n = self.config.max_proposals_per_message
        for (a, sid), props in sorted(per.items()):
            if not self._is_alive(a):
                continue
            for i in range(0, len(props), n):
                rid = self._new_rid()
                op.rids.append(rid)
                self._by_rid[rid] = op.id
                self._send(
                    a, msg.ReclaimIntent(rid, op.targets, sid.scope, sid.name, tuple(props[i : i + n]))
                )
        self._timers.set(("try", op.id), min(op.deadline, now + self.config.request_try_timeout))

    def _on_reclaim_reply(self: Any, src: str, m: msg.ReclaimReply, now: float) -> None:
        op = self._ops.get(self._by_rid.get(m.rid, -1))
        if not isinstance(op, _ReclaimOp) or op.done:
            return
        sid = SpaceId(m.scope, m.space)
        sp = self._spaces.get(sid)
        if sp is None:
            return
        for k in m.acks:
            if (sid, k) in op.pending:
                op.pending[(sid, k)].discard(src)
        for off, node, tag in m.holdings:
            key = (sid, sp.block_of(off)) if off < sp.size else None
            if key in op.blocks:
                op.holdings.setdefault(key, []).append((off, node, tag))
        for k, _reason in m.nacks:
            if (sid, k) in op.blocks:
                self._abandon(op, (sid, k))
        for key in sorted(op.blocks):
            if not op.pending.get(key):
                self._win(op, key, now)
        if not op.blocks:
            self._finish_reclaim(op, now)

    def _win(self: Any, op: _ReclaimOp, key: BlockKey, now: float) -> None:
        sid, k = key
        epoch = op.blocks.pop(key)
        op.pending.pop(key, None)
        p = self._proposals.pop(key, None)
        b = self._block(sid, k)
        if p is None or p[0] != op.id or b.hw != epoch or b.believe or not self._can_believe():
            op.abandoned += 1
            return
        sp = self._spaces[sid]
        allocs: dict[int, Holder] = {}
        for off, node, tag in self._view.get(sp, k).used:
            if (node in op.targets or node in self._retired) and not tag.startswith(KEEP_TAGS):
                tag = QUARANTINE
            allocs[off] = Holder(node, tag)
        for off, node, tag in op.holdings.get(key, ()):
            allocs[off] = Holder(node, tag)
        lo, hi = sp.block_range(k)
        for off, node, tag in self._netcfg_units(sid):
            if lo <= off < hi:
                allocs[off] = Holder(node, tag)
        for off, h in allocs.items():
            if h.tag == QUARANTINE:
                self._quarantine[(sid, off)] = now + self.config.quarantine_interval
        self._set_block(sid, k, BlockState(hw=epoch, believe=True, allocs=allocs, seq=b.seq))
        self._write_block_record(sid, k, now)
        op.won += 1
        self._count("blocks_reclaimed")
        self._space_gained(sid, now)

    def _abandon(self: Any, op: _ReclaimOp, key: BlockKey) -> None:
        op.blocks.pop(key, None)
        op.pending.pop(key, None)
        p = self._proposals.get(key)
        if p is not None and p[0] == op.id:
            del self._proposals[key]
            e = self._view.explicit(*key)
            if key in self._copies and e is not None and e.writer == self._copies[key]:
                self._publish_copy(key[0], key[1], e)
            elif not self._block(*key).granted_to:
                self._delete_block_record(*key)
        op.abandoned += 1

    def _drop_proposal(self: Any, sid: SpaceId, k: int) -> None:
        p = self._proposals.get((sid, k))
        if p is None:
            return
        op = self._ops.get(p[0])
        if isinstance(op, _ReclaimOp) and (sid, k) in op.blocks:
            self._abandon(op, (sid, k))
        else:
            del self._proposals[(sid, k)]

    def _proposal_view_changed(self: Any, sid: SpaceId, k: int, e: Any, now: float) -> None:
        p = self._proposals.get((sid, k))
        if p is not None and e.epoch >= p[1] and e.writer != self.name:
            op = self._ops.get(p[0])
            self._drop_proposal(sid, k)
            if isinstance(op, _ReclaimOp) and not op.blocks and not op.done:
                self._finish_reclaim(op, now)

    def _finish_reclaim(self: Any, op: _ReclaimOp, now: float) -> None:
        silent = sorted({a for s in op.pending.values() for a in s})
        for key in sorted(op.blocks):
            self._abandon(op, key)
        op.done = True
        self._ops.pop(op.id, None)
        for rid in op.rids:
            self._by_rid.pop(rid, None)
        self._timers.cancel(("try", op.id))
        self._timers.cancel(("budget", op.id))
        if op.adoption:
            self._adopt_op = None
            if silent or op.abandoned:
                self._adopt_pending = True
                self._adopt_next = now + 5 * self.config.retry_interval
        if silent and not op.won:
            err = ReclaimRefused(
                f"no answer from {', '.join(silent)} within {self.config.reclaim_budget:g} s: the blocks of "
                f"{', '.join(op.targets)} stay locked; retry when they are reachable"
            )
            self._fail(op.id, "reclaim", err)
            return
        self._out.stage(Reclaimed(OpId(op.id), op.targets, op.won, op.abandoned))

    # ------------------------------------------------------------------ member side

    def _on_reclaim_intent(self: Any, src: str, m: msg.ReclaimIntent, now: float) -> None:
        sid = SpaceId(m.scope, m.space)
        sp = self._spaces.get(sid)
        acks: list[int] = []
        nacks: list[tuple[int, str]] = []
        ks = set()
        for k, e in m.proposals:
            ks.add(k)
            reason = self._nack_reason(sid, k, e, src) if sp is not None and k < sp.nblocks else "unknown"
            if reason:
                nacks.append((k, reason))
                continue
            b = self._block(sid, k)
            if b.hw < e:
                self._set_block(sid, k, b.with_(hw=e))
            acks.append(k)
        holdings = []
        if sp is not None:
            holdings = [(off, self.name, rh.tag) for (s, off), rh in sorted(self._remote.items())
                        if s == sid and sp.block_of(off) in ks]  # fmt: skip
            holdings += [
                (off, node, tag) for off, node, tag in self._netcfg_units(sid) if sp.block_of(off) in ks
            ]
        self._send(src, msg.ReclaimReply(m.rid, m.scope, m.space, tuple(acks), tuple(nacks), tuple(holdings)))

    def _nack_reason(self: Any, sid: SpaceId, k: int, e: int, src: str) -> str:
        b = self._block(sid, k)
        if self._believes(sid, k):
            return "believer"
        if b.hw > e:
            return "newer epoch"
        if b.granted_to and b.granted_at >= e:
            return "pending grant"
        v = self._view.explicit(sid, k)
        if v is not None and v.epoch >= e:
            return "newer owner"
        p = self._proposals.get((sid, k))
        if p is not None:
            if p[1] > e or (p[1] == e and self.name < src):
                return "competing reclaim"
            self._drop_proposal(sid, k)
        return ""

    # ------------------------------------------------------------------ leave completion, timers

    def _heir_gone(self: Any, node: str) -> None:
        """An heir of this node's leave failed, left or retired (it is leaving too): it will never
        confirm, so the leave stops waiting for it (its grants stay pending, reported unconfirmed, and
        the blocks are reclaimed from the retired heir later)."""
        op = self._ops.get(self._leave_op) if self._leave_op is not None else None
        if not isinstance(op, _LeaveOp) or op.done:
            return
        gone = sorted(key for key in op.waiting if self._block(*key).granted_to == node)
        if not gone:
            return
        op.waiting.difference_update(gone)
        op.no_heir.extend(gone)
        if not op.waiting:
            self._finish_leave(op)

    def _grant_confirmed(self: Any, sid: SpaceId, k: int, now: float) -> None:
        op = self._ops.get(self._leave_op) if self._leave_op is not None else None
        if isinstance(op, _LeaveOp) and not op.done:
            op.waiting.discard((sid, k))
            if not op.waiting:
                self._finish_leave(op)

    def _finish_leave(self: Any, op: _LeaveOp) -> None:
        op.done = True
        self._ops.pop(op.id, None)
        self._timers.cancel(("budget", op.id))
        left = sorted(f"{sid}#{k}" for sid, k in (*op.waiting, *op.no_heir))
        self._out.stage(LeaveCompleted(OpId(op.id), op.handed, tuple(left)))

    def _other_op_timer(self: Any, op: Any, kind: str, now: float) -> None:
        if isinstance(op, _LeaveOp):
            if kind == "budget" and not op.done:
                self._finish_leave(op)
        elif isinstance(op, _ReclaimOp) and not op.done:
            if kind == "budget":
                self._finish_reclaim(op, now)
            else:
                self._send_intents(op, now)

    def _reclaim_periodic(self: Any, now: float) -> None:
        if not self._adopt_pending or self._adopt_op is not None or now < self._adopt_next:
            return
        self._adopt_pending = False
        if not self._can_believe():
            return
        targets = tuple(sorted(self._auto_targets()))
        if not targets:
            return
        if self._reclaim_refusal(targets, force=False, adoption=True) is not None:
            self._adopt_pending = True
            self._adopt_next = now + 5 * self.config.retry_interval
            self._count("auto_reclaims_deferred")
            return
        op = _ReclaimOp(self._new_op(), targets, True, now + self.config.reclaim_budget)
        self._adopt_op = op.id
        self._count("auto_reclaims")
        self._begin_reclaim(op, False, now)
