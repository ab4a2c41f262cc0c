"""The believer's side of IPAM (ipam.md 3.5, 3.6, 3.11): local allocation, requests, grants, releases.

Theory of operation. Rules, each guarding a step of the safety argument of 3.6:

1. Only a believer allocates in a block, and records the allocation durably before answering (the answer
   is gated behind the persist, ``state.py``). Dynamic picks take the lowest free pickable offset of the
   most used believed block, so fully free blocks stay donatable.
2. A request for space (``SpaceRequest``): if the owner believes >= 2 fully free blocks it grants one
   (never more than half, never the last) at epoch hw+1: it persists "granted to N" *first*, so it stops
   believing before the record or the message exists, writes the granted record and sends ``SpaceGrant``.
   Otherwise it allocates one address on the asker's behalf (proxy allocation, idempotent per (asker,
   tag)), or denies with its free count. Static addresses are served only by the believer of their block.
3. Accepting a grant (``SpaceGrant`` from the donor or a relay, or a granted record naming this node, even
   hidden): only if its epoch is above the block's high-water mark, which never decreases; so duplicates,
   late copies and relays cannot revive an epoch. The receiver persists belief, then writes its held
   record (the confirming write). The donor, on seeing a chain record at or above its grant's epoch,
   stops resending and deletes its granted record. Anyone whose view shows a grant unconfirmed for
   ``relay_after`` resends it to its alive target (grants are final facts, so relaying is idempotent).
4. A believer that sees a chain record of a higher epoch naming someone else stops believing (it was
   reclaimed by force while cut off): the alarm says so; never two believers once both are connected.
5. Free hints (``used`` in the held record) are rewritten at most once per ``hint_interval`` per space.
6. When an identity is retired, every believer moves that identity's endpoint allocations to quarantine
   (freed after ``quarantine_interval``, the ARP/FDB drain); service VIPs and network allocations stay.
"""

from __future__ import annotations

from typing import Any

from . import messages as msg
from .records import QUARANTINE, Holder
from .space import SpaceId
from .state import BlockState

__all__ = ["OwnerRole", "KEEP_TAGS"]

#: Allocations with these tag prefixes belong to cluster objects, not to the holder node's endpoints:
#: they survive that node's leave or death (ipam.md 3.11).
KEEP_TAGS = ("service:", "net:")


class OwnerRole:
    """Mixin of ``Ipam``: the believer's side. State lives on ``Ipam`` (``core.py``)."""

    def _init_owner(self: Any) -> None:
        #: (space, block) -> (the allocations mapping it was computed for, its free count): a block's
        #: mapping is replaced, never mutated, on every change, so identity tells whether it is current
        self._free_cache: dict[tuple[SpaceId, int], tuple[Any, int]] = {}

    def _block_free(self: Any, sid: SpaceId, k: int, allocs: Any) -> int:
        """Free pickable units of believed block ``k`` (cached per allocations mapping: a local
        allocation costs O(believed blocks), not O(believed blocks x allocations))."""
        hit = self._free_cache.get((sid, k))
        if hit is not None and hit[0] is allocs:
            return hit[1]
        n = self._spaces[sid].free_in(k, allocs)
        self._free_cache[(sid, k)] = (allocs, n)
        return n

    # ------------------------------------------------------------------ local allocation

    def _pick_local(self: Any, sid: SpaceId, holder: Holder, now: float) -> int | None:
        sp = self._spaces[sid]
        best: tuple[tuple[int, int], int] | None = None
        for k in self._believed_blocks(sid):
            b = self._block(sid, k)
            if self._block_free(sid, k, b.allocs) <= 0:
                continue
            key = (-len(b.allocs), k)
            if best is None or key < best[0]:
                best = (key, k)
        if best is None:
            return None
        k = best[1]
        off = sp.first_free(k, self._block(sid, k).allocs)
        if off is None:  # free_in said otherwise: only static allocations outside the range
            return None
        self._alloc(sid, k, off, holder, now)
        return off

    def _alloc(self: Any, sid: SpaceId, k: int, off: int, holder: Holder, now: float) -> None:
        assert self._believes(sid, k), "allocation outside a believed block"
        self._set_block(sid, k, self._block(sid, k).with_alloc(off, holder))
        self._count("allocations")
        self._touch_hint(sid, k, now)

    def _free(self: Any, sid: SpaceId, k: int, off: int, now: float) -> None:
        self._set_block(sid, k, self._block(sid, k).with_alloc(off, None))
        self._quarantine.pop((sid, off), None)
        self._count("releases")
        self._touch_hint(sid, k, now)

    def _free_total(self: Any, sid: SpaceId) -> int:
        return sum(self._block_free(sid, k, self._block(sid, k).allocs) for k in self._believed_blocks(sid))

    # ------------------------------------------------------------------ requests

    def _on_space_request(self: Any, src: str, m: msg.SpaceRequest, now: float) -> None:
        sid = SpaceId(m.scope, m.space)
        sp = self._spaces.get(sid)

        def deny(reason: str, free: int = 0) -> None:
            self._send(src, msg.SpaceDenied(m.rid, m.scope, m.space, reason, free))

        if sp is None:
            return deny("unknown")
        if not self._can_believe():
            return deny("retired")
        if m.offset >= 0:
            if m.offset >= sp.size:
                return deny("invalid")
            k = sp.block_of(m.offset)
            if not self._believes(sid, k):
                return deny("not_owner")
            if sp.is_reserved(m.offset):
                return deny("reserved")
            holder = Holder(src, m.tag)
            cur = self._block(sid, k).allocs.get(m.offset)
            if cur is not None and cur != holder:
                return deny("in_use")
            if cur is None:
                self._alloc(sid, k, m.offset, holder, now)
            self._send(src, msg.AddressGrant(m.rid, m.scope, m.space, m.offset, m.tag))
            return
        if m.tag:
            off = self._holders.get((sid, Holder(src, m.tag)))
            if off is not None and self._believes(sid, sp.block_of(off)):
                self._send(src, msg.AddressGrant(m.rid, m.scope, m.space, off, m.tag))
                return
        if src not in self._retired:
            free_blocks = [k for k in self._believed_blocks(sid) if not self._block(sid, k).allocs]
            if len(free_blocks) >= 2:
                # prefer blocks where dynamic picks can land, then the highest (the creator packs low)
                k = max(free_blocks, key=lambda k: (sp.pickable_in(k) > 0, k))
                self._grant_block(sid, k, src, (), m.rid, now)
                return
        if m.tag:
            off = self._pick_local(sid, Holder(src, m.tag), now)
            if off is not None:
                self._count("proxy_allocations")
                self._send(src, msg.AddressGrant(m.rid, m.scope, m.space, off, m.tag))
                return
        deny("exhausted", self._free_total(sid))

    # ------------------------------------------------------------------ grants (donor)

    def _grant_block(
        self: Any,
        sid: SpaceId,
        k: int,
        to: str,
        manifest: tuple[tuple[int, str, str], ...],
        rid: int,
        now: float,
    ) -> None:
        """Give block ``k`` to ``to`` at hw+1: persist "granted" (no longer believing) before any output."""
        b = self._block(sid, k)
        assert b.believe, "only a believer grants"
        e = b.hw + 1
        self._set_block(sid, k, BlockState(hw=e, granted_to=to, granted_at=e, manifest=manifest, seq=b.seq))
        self._hint_dirty.get(sid, set()).discard(k)
        self._write_block_record(sid, k, now)
        self._send_grant(sid, k, rid, now)
        self._count("grants_issued")

    def _send_grant(self: Any, sid: SpaceId, k: int, rid: int, now: float) -> None:
        b = self._block(sid, k)
        self._grant_sent_at[(sid, k)] = now
        self._send(
            b.granted_to, msg.SpaceGrant(rid, sid.scope, sid.name, k, b.granted_at, self.name, b.manifest)
        )

    def _confirm_grant(self: Any, sid: SpaceId, k: int, now: float) -> None:
        b = self._block(sid, k)
        self._set_block(sid, k, b.with_(granted_to="", granted_at=0, manifest=()))
        self._grant_sent_at.pop((sid, k), None)
        self._delete_block_record(sid, k)
        self._grant_confirmed(sid, k, now)

    # ------------------------------------------------------------------ grants (receiver)

    def _on_space_grant(self: Any, src: str, m: msg.SpaceGrant, now: float) -> None:
        sid = SpaceId(m.scope, m.space)
        if self._accept_grant(sid, m.k, m.epoch, m.manifest, now):
            self._count("grants_by_message")

    def _accept_grant(
        self: Any, sid: SpaceId, k: int, epoch: int, manifest: tuple[tuple[int, str, str], ...], now: float
    ) -> bool:
        if not self._can_believe():
            return False
        b = self._block(sid, k)
        if self.config.unsafe_skip_epoch_check:
            if b.believe:
                return False
        elif epoch <= b.hw:
            self._count("stale_grants")
            return False
        sp = self._spaces.get(sid)
        if sp is not None and k >= sp.nblocks:
            return False
        self._drop_proposal(sid, k)
        allocs: dict[int, Holder] = {}
        for off, node, tag in manifest:
            if node in self._retired and not tag.startswith(KEEP_TAGS):
                tag = QUARANTINE
            allocs[off] = Holder(node, tag)
            if tag == QUARANTINE:
                self._quarantine[(sid, off)] = now + self.config.quarantine_interval
        if sp is not None:
            lo, hi = sp.block_range(k)
            for off, node, tag in self._netcfg_units(sid):
                if lo <= off < hi:
                    allocs[off] = Holder(node, tag)
        self._set_block(sid, k, BlockState(hw=max(epoch, b.hw), believe=True, allocs=allocs, seq=b.seq))
        self._write_block_record(sid, k, now)
        self._count("grants_accepted")
        self._space_gained(sid, now)
        return True

    # ------------------------------------------------------------------ networks own their VNI

    def _netcfg_units(self: Any, sid: SpaceId) -> list[tuple[int, str, str]]:
        """(offset, creator, ``net:<id>``) of every known network's VNI or pool subnet in global space
        ``sid``: the replicated netcfgs are the truth for these units, whatever a block record says."""
        sp = self._spaces.get(sid)
        if sp is None or sid.scope or sp.kind not in ("vni", "pool"):
            return []
        out = []
        for net, c in sorted(self._netcfg.items()):
            value = c.vni if sp.kind == "vni" else c.pool_subnet
            if value is not None and sp.contains(str(value)):
                out.append((sp.offset(value), c.creator, f"net:{net}"))
        return out

    def _claim_netcfg_units(self: Any, c: Any, now: float) -> None:
        """A network became known: make sure its VNI (and pool subnet) is allocated where this node is
        the believer (repairs a block whose record had not shown it), alarm on a clash."""
        for sid in (SpaceId("", "vni"), SpaceId("", "pool")):
            sp = self._spaces.get(sid)
            value = c.vni if sid.name == "vni" else c.pool_subnet
            if sp is None or value is None or not sp.contains(str(value)):
                continue
            off = sp.offset(value)
            k = sp.block_of(off)
            if not self._believes(sid, k):
                continue
            holder = Holder(c.creator, f"net:{c.network}")
            cur = self._block(sid, k).allocs.get(off)
            if cur is None:
                self._alloc(sid, k, off, holder, now)
                self._count("netcfg_repairs")
            elif cur != holder:
                self._alarm(
                    "vni_clash", f"{sp.value(off)} of {c.network} is also held by {cur.node}/{cur.tag}"
                )

    # ------------------------------------------------------------------ the view moved

    def _view_changed(self: Any, sid: SpaceId, k: int, e: Any, now: float) -> None:
        if e.state == "granted" and e.owner == self.name and e.writer != self.name:
            self._accept_grant(sid, k, e.epoch, e.used, now)
        b = self._block(sid, k)
        if (
            (sid, k) in self._pending_grants
            and e.writer != self.name
            and e.epoch >= b.granted_at
            and (e.state == "held" or e.epoch > b.granted_at)
        ):
            self._confirm_grant(sid, k, now)
        b = self._block(sid, k)
        if b.believe and e.epoch > b.hw and e.owner != self.name:
            self._alarm("superseded", f"{sid}#{k}: believed at epoch {b.hw}, {e.owner} holds epoch {e.epoch}")
            self._set_block(sid, k, BlockState(hw=e.epoch, seq=b.seq))
        self._proposal_view_changed(sid, k, e, now)
        if e.owner in self._retired and e.owner != self.name:
            self._adopt_pending = True

    # ------------------------------------------------------------------ releases

    def _on_release(self: Any, src: str, m: msg.Release, now: float) -> None:
        sid = SpaceId(m.scope, m.space)
        sp = self._spaces.get(sid)
        if sp is None:
            self._send(src, msg.ReleaseAck(m.rid, "not_owner"))
            return
        holder = Holder(src, m.tag)
        off = m.offset if m.offset >= 0 else self._holders.get((sid, holder))
        if off is None or off >= sp.size:
            self._send(src, msg.ReleaseAck(m.rid, "done"))
            return
        k = sp.block_of(off)
        if not self._believes(sid, k):
            self._send(src, msg.ReleaseAck(m.rid, "done" if m.offset < 0 else "not_owner"))
            return
        if self._block(sid, k).allocs.get(off) == holder:
            self._free(sid, k, off, now)
        self._send(src, msg.ReleaseAck(m.rid, "done"))

    def _retire_holder(self: Any, node: str, now: float) -> None:
        """``node`` is retired: its endpoint allocations in my blocks go to quarantine."""
        for (sid, h), off in sorted(self._holders.items()):
            if h.node != node or h.tag.startswith(KEEP_TAGS) or h.tag == QUARANTINE:
                continue
            k = self._spaces[sid].block_of(off) if sid in self._spaces else None
            if k is None or not self._believes(sid, k):
                continue
            self._set_block(sid, k, self._block(sid, k).with_alloc(off, Holder(node, QUARANTINE)))
            self._quarantine[(sid, off)] = now + self.config.quarantine_interval
            self._touch_hint(sid, k, now)

    # ------------------------------------------------------------------ hints

    def _touch_hint(self: Any, sid: SpaceId, k: int, now: float) -> None:
        self._hint_dirty.setdefault(sid, set()).add(k)
        if ("hint", sid) in self._timers:
            return
        last = self._hint_last.get(sid)
        if last is None or now - last >= self.config.hint_interval:
            self._flush_hints(sid, now)
        else:
            self._timers.set(("hint", sid), last + self.config.hint_interval)

    def _flush_hints(self: Any, sid: SpaceId, now: float) -> None:
        dirty = self._hint_dirty.pop(sid, set())
        self._hint_last[sid] = now
        for k in sorted(dirty):
            if self._believes(sid, k):
                self._write_block_record(sid, k, now)

    # ------------------------------------------------------------------ periodic work

    def _owner_periodic(self: Any, now: float) -> None:
        cfg = self.config
        for key in sorted(self._pending_grants):
            b = self._block(*key)
            if not self._is_alive(b.granted_to):
                continue
            last = self._grant_sent_at.get(key)
            if last is None or now - last >= cfg.grant_retry_interval:
                self._send_grant(key[0], key[1], 0, now)
        for key in sorted(self._view.unconfirmed):
            e = self._view.explicit(*key)
            if e is None or e.state != "granted" or e.writer == self.name or e.owner == self.name:
                continue
            if not self._is_alive(e.owner):
                continue
            if now - self._view.seen_at.get(key, now) < cfg.relay_after:
                continue
            last = self._relayed_at.get(key)
            if last is not None and now - last < cfg.relay_after:
                continue
            self._relayed_at[key] = now
            self._count("relays")
            self._send(
                e.owner, msg.SpaceGrant(0, key[0].scope, key[0].name, key[1], e.epoch, e.writer, e.used)
            )
        for (sid, off), until in sorted(self._quarantine.items()):
            if until > now:
                continue
            del self._quarantine[(sid, off)]
            sp = self._spaces.get(sid)
            if sp is None:
                continue
            k = sp.block_of(off)
            h = self._block(sid, k).allocs.get(off)
            if self._believes(sid, k) and h is not None and h.tag == QUARANTINE:
                self._free(sid, k, off, now)
