"""The safety invariants of ipam.md section 4 over a ``Cluster`` (``ipam_harness.py``), for the rule
machine (``tests/stateful/test_ipam_machine.py``) and the named regressions (``tests/sim``).

Ground truth is every host's durable state directory (crashed and partitioned hosts included) plus the
running cores. ``Safety(cluster)`` hooks the cluster's ``on_persist`` (the history of durable decisions)
and ``check()`` asserts, raising ``AssertionError`` whose message starts with the property's name:

* S1 at most one believer per block (durable, also at every persist, so a transient double belief inside
  a run counts; and in memory among the running cores);
* S2 no address held twice: per address, the holders recorded by believers plus the proxy holdings of
  every state directory name at most one (node, tag);
* S3 per (space, block, epoch) at most one grant target and at most one believer over the whole history
  of persisted decisions (genesis included), among identities whose state directory still exists (a
  grant to, or a belief of, an identity whose directory is gone can never be acted on; an epoch it used
  may be reused by a reclaimer that never saw it);
* S4 a state directory's high-water marks and view never decrease, nor does a running core's view within
  one life (a crash may lose what was not yet persisted); blocks not believed hold no allocations;
* S5 reserved addresses are never allocated; dynamic picks stay inside the subnet and its ip-range
  (``drain``, which also collects the network configs the cluster created);
* S6 distinct networks never share a VNI, and a network has one config everywhere;
* S7 a retired identity never gains a belief (the harness asserts that identities are never reused).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from meshnet.ipam import Allocated, NetworkCreated, SpaceId
from meshnet.ipam.records import QUARANTINE
from meshnet.ipam.state import Persist

from .ipam_harness import Cluster

__all__ = ["Safety"]


class Safety:
    """Checks S1-S7 over one ``Cluster`` (see the module docstring)."""

    def __init__(self, c: Cluster, log: list[str] | None = None, hosts: list[str] | None = None) -> None:
        self.c = c
        #: the hosts checked (one cluster of several sharing the harness); default all
        self.hosts = sorted(hosts) if hosts is not None else c.hosts
        self.log = log if log is not None else []
        #: (identity, op) of static allocations (not subject to the dynamic-pick part of S5)
        self.static: set[tuple[str, int]] = set()
        self.seen_events: dict[tuple[str, int], int] = defaultdict(int)
        self.grants: dict[tuple[SpaceId, int, int], set[str]] = defaultdict(set)
        self.beliefs: dict[tuple[SpaceId, int, int], set[str]] = defaultdict(set)
        self.hw_seen: dict[str, dict[Any, int]] = defaultdict(dict)
        self.view_seen: dict[tuple[str, int], dict[Any, Any]] = defaultdict(dict)
        self.dview_seen: dict[str, dict[Any, Any]] = defaultdict(dict)
        self.retired_beliefs: dict[str, set[Any]] = {}
        #: network -> config, as first seen (a created network or a state directory's copy)
        self.netcfgs: dict[str, Any] = {}
        self._chained = c.on_persist
        c.on_persist = self.on_persist

    # ------------------------------------------------------------------ history

    def on_persist(self, host: str, p: Persist) -> None:
        """Every durable decision: S3 history, and S1 at once (a transient double belief counts too)."""
        self._chained(host, p)
        if host not in self.hosts:
            return
        c = self.c
        name = c.name(host)
        core = c.slots[host].core
        for key, value in p.records:
            if value is None:
                continue
            if key[0] == "block":
                sid, k = SpaceId(key[1], key[2]), key[3]
                if value.granted_to:
                    self.grants[(sid, k, value.granted_at)].add(value.granted_to)
                if value.believe:
                    self.beliefs[(sid, k, value.hw)].add(name)
            elif key[0] in ("netcfg", "global") and core is not None:
                creator = value.creator if key[0] == "netcfg" else value.founder
                if creator == name:
                    for sid in value.space_ids():
                        sp = core.space(sid.scope, sid.name)
                        for k in range(sp.nblocks):
                            self.beliefs[(sid, k, 1)].add(name)
        s = c.summary(host)
        mine = set(s.believed()) if s is not None else set()
        if not mine:
            return
        for h in self.hosts:
            if h == host:
                continue
            other = c.summary(h)
            if other is None:
                continue
            both = mine & set(other.believed())
            assert not both, f"S1: {name} and {c.name(h)} both durably believe {sorted(both)[:3]}"

    def drain(self) -> None:
        """Look at new events: NetworkCreated configs, dynamic picks (S5)."""
        for h, slot in sorted(self.c.slots.items()):
            if h not in self.hosts:
                continue
            evs = slot.events
            key = (h, slot.lives)
            for ev in evs[self.seen_events[key] :]:
                if isinstance(ev, NetworkCreated):
                    self.netcfgs.setdefault(ev.netcfg.network, ev.netcfg)
                    self.log.append(f"   => {slot.name} created {ev.netcfg.network} vni={ev.netcfg.vni}")
                elif not isinstance(ev, Allocated):
                    self.log.append(f"   => {slot.name} {ev!r}"[:300])
                elif ev.network and slot.core is not None and (slot.name, ev.op) not in self.static:
                    sp = slot.core.space(ev.network, ev.space)
                    off = sp.offset(ev.value)
                    assert sp.is_pickable(off), f"S5: dynamic pick {ev.value} outside range or reserved"
            self.seen_events[key] = len(evs)

    # ------------------------------------------------------------------ the invariants

    def check(self) -> None:
        self.drain()
        c = self.c
        sums = {h: s for h in self.hosts if (s := c.summary(h)) is not None and s.identity is not None}
        believers = defaultdict(list)
        holders = defaultdict(set)
        for h, s in sums.items():
            me = s.identity.name
            hw = self.hw_seen[me]
            for key, b in s.blocks.items():
                assert b.hw >= hw.get(key, 0), f"S4: {me} hw of {key} went {hw.get(key)} -> {b.hw}"
                hw[key] = b.hw
                if not b.believe:
                    assert not b.allocs, f"S4: {me} holds allocations in {key} without believing it"
            dview = self.dview_seen[me]
            for key, e in c.slots[h].disk.items():
                if key[0] == "view":
                    prev = dview.get(key)
                    assert prev is None or e.rank[:2] >= prev, f"S4: {me} durable view of {key} went back"
                    dview[key] = e.rank[:2]
            for key, b in s.believed().items():
                believers[key].append(me)
                sp = s.spaces.get(key[0])
                for off, hd in b.allocs.items():
                    if sp is not None:
                        assert not sp.is_reserved(off), f"S5: reserved {sp.value(off)} allocated by {me}"
                    if hd.tag != QUARANTINE:
                        holders[(key[0], off)].add((hd.node, hd.tag))
            for (sid, off), rh in s.remote.items():
                holders[(sid, off)].add((me, rh.tag))
            if s.identity.retired:
                raw = {key for key, b in s.blocks.items() if b.believe}
                prev = self.retired_beliefs.setdefault(me, raw)
                assert raw <= prev, f"S7: retired {me} gained beliefs {sorted(raw - prev)}"
            for net, cfg in ((k[1], v) for k, v in c.slots[h].disk.items() if k[0] == "netcfg"):
                known = self.netcfgs.setdefault(net, cfg)
                assert known == cfg, f"S6: two configs for {net}: {known} / {cfg}"
        dup = {key: v for key, v in believers.items() if len(v) > 1}
        assert not dup, f"S1: several durable believers: {dup}"
        twice = {key: v for key, v in holders.items() if len(v) > 1}
        assert not twice, f"S2: address held twice: {twice}"
        mem = defaultdict(list)
        for h in c.up:
            if h not in self.hosts:
                continue
            core = c.ipam(h)
            for key in core.believed():
                mem[key].append(core.name)
            seen = self.view_seen[(core.name, c.slots[h].lives)]
            for key, e in core.view_snapshot().items():
                prev = seen.get(key)
                assert prev is None or e.rank[:2] >= prev, f"S4: {core.name} view of {key} went back"
                seen[key] = e.rank[:2]
        dup = {key: v for key, v in mem.items() if len(v) > 1}
        assert not dup, f"S1: several running believers: {dup}"
        with_disk = {s.identity.name for s in sums.values()}
        multi = {key: v for key, v in self.grants.items() if len(v & with_disk) > 1}
        assert not multi, f"S3: several grant targets at one epoch: {multi}"
        multi = {key: v for key, v in self.beliefs.items() if len(v & with_disk) > 1}
        assert not multi, f"S3: several believers at one epoch over time: {multi}"
        vnis = defaultdict(set)  # networks some existing state directory knows (a network whose config
        for s in sums.values():  # died with its reclaimed creator never existed for the cluster)
            for key, cfg in c.slots[c.host_of[s.identity.name]].disk.items():
                if key[0] == "netcfg":
                    vnis[cfg.vni].add(key[1])
        shared = {v: n for v, n in vnis.items() if len(n) > 1}
        assert not shared, f"S6: networks sharing a VNI: {shared}"

    # ------------------------------------------------------------------ helpers for liveness checks

    def owners(self, network: str) -> dict[tuple[SpaceId, int], list[str]]:
        """Durable believers of each block of ``network`` (scope), over all state directories."""
        out: dict[tuple[SpaceId, int], list[str]] = defaultdict(list)
        for h in self.hosts:
            s = self.c.summary(h)
            if s is None or s.identity is None:
                continue
            for key in s.believed():
                if key[0].scope == network:
                    out[key].append(s.identity.name)
        return dict(out)
