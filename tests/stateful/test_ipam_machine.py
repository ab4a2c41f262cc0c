"""Hypothesis rule machines over the IPAM harness (``tests/unit/ipam/ipam_harness.py``): ipam.md section 4.

Rules: create networks (IPv4 /22../30, IPv6 /64, or a subnet of the default pool; also on several hosts
at one instant), attach, allocate dynamic and static addresses and service VIPs, release, crash (also
right after the next input, losing the persists in flight), restart with and without the state
directory, partitions and healing, loss, duplication, reordering and replays of any old direct
message, graceful leave, reap, explicit reclaim of a crashed host (the operator asserts it is gone:
its state directory is never used again), and time.

Targeted rules put an ordinary fault at the worst instant, which uniform rule choice reaches rarely:
a donor crashing right after it handles a request for space, a dead host reclaimed on two hosts at once,
a replay of an old grant to a node that has given the block away since.

Safety, after every step and at every persist (``tests/unit/ipam/safety.py``): S1 one believer per
block, S2 no address held twice, S3 one grant target and one believer per (block, epoch) over history,
S4 monotone high-water marks and views, S5 reserved addresses and ranges, S6 no shared VNI, S7 retired
identities never believe again. Ground truth is every host's state directory (crashed and partitioned
hosts included) plus the running cores.

Liveness (``heal_and_settle`` and at teardown): heal, stop faults, restart crashed hosts, attach every
node to every network, run 120 s; then L2 views agree and free hints are exact, L3 no grant to an alive
node is unconfirmed and no reclaim is pending, L1 every node can allocate within 10 s in every network
where an alive node owns a free address, L6 concurrent network creations all succeed with distinct VNIs.

Mutation tests (S9): with one safety check removed (``IpamConfig.unsafe_*``: the epoch check on grants,
the write-ahead order, the reclaim acknowledgements; or a reclaim forced onto a live partitioned node)
a focused machine (the same invariants, fewer rules, the targeted ones kept) must find an S1/S2/S3/S6
counterexample within ``MUTATION``'s budget; each has a control, the same focused machine with the
check in place, which must find nothing. Determinism: the machine run twice with one seed yields the
same harness trace hashes.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from meshnet.ipam import Allocated, NetworkCreated, SpaceId, fast
from meshnet.ipam.messages import SpaceGrant, decode
from meshnet.ipam.records import QUARANTINE
from tests.unit.ipam.ipam_harness import Cluster
from tests.unit.ipam.safety import Safety

PROFILE = os.environ.get("IPAM_MACHINE_PROFILE", "ci")
_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
MAIN = {
    "ci": settings(derandomize=True, max_examples=100, stateful_step_count=30, **_COMMON),
    "dev": settings(max_examples=200, stateful_step_count=50, **_COMMON),
}[PROFILE]
#: mutation runs stop at the first counterexample (no shrinking: the point is that one exists)
MUTATION = settings(
    derandomize=True,
    max_examples=300,
    stateful_step_count=25,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate],
    **_COMMON,
)

CFG = fast().with_(
    vni_last=4096 + 16 * 16 - 1, vni_block_size=16, default_pool="10.0.0.0/20", default_pool_prefix=28
)
PREFIXES = [22, 24, 26, 28, 30, 64, 0]  # 0: a subnet of the default pool
SETTLE = 120.0


class IpamMachine(RuleBasedStateMachine):
    """The rules and invariants of ipam.md section 4 (see the module docstring)."""

    config = CFG
    #: allow reclaiming a host that is up but cut off (the "--force on a live node" mutation)
    force_reclaim_live = False
    #: check liveness after settling (mutation machines only look for safety counterexamples)
    liveness = True
    #: how many hosts a run has (min, max)
    hosts = (3, 5)
    #: subnet prefix lengths of created networks
    prefixes = PREFIXES
    #: the counter of names (networks, tags) stops network creation here
    max_networks = 10_000
    #: start with a network of h0 attached by h1 ("attach"), and then h0 leaving, h1 its heir ("inherit")
    prelude = ""

    @initialize(n=st.integers(0, 2), seed=st.integers(0, 2**32 - 1))
    def boot(self, n, seed):
        n = min(self.hosts[0] + n, self.hosts[1])
        self.c = Cluster(n, config=self.config, seed=seed)
        self.log: list[str] = [f"boot n={n} seed={seed}"]
        self.safety = Safety(self.c, self.log)
        self.counter = 0
        self.faulted = False
        self.reaped = False
        if self.prelude:
            # a network on the first host, attached by the second (which then holds one block, and all
            # of them after an "inherit")
            self.c.call("h0", "create_network", "n0", subnets=["10.200.0.0/24"])
            self.c.run_for(0.5)
            self.c.call("h1", "attach", "n0")
            self.c.run_for(0.5)
            self.counter = 1
            if self.prelude == "inherit":
                self.c.leave("h0")
                self.faulted = True
            self._drain()

    # ------------------------------------------------------------------ helpers

    def _say(self, text):
        note(text)
        self.log.append(f"{self.c.now:9.3f} {text}")

    def _up_with(self, pred=None):
        return [h for h in self.c.up if pred is None or pred(h)]

    def _known_nets(self, host):
        core = self.c.ipam(host)
        return [n for n in sorted(self.safety.netcfgs) if core.netcfg(n) is not None]

    def _subnet(self, plen):
        i = self.counter
        if plen == 0:
            return None
        if plen == 64:
            return [f"fd00:{i + 1:x}::/64"]
        return [f"10.{i % 250 + 1}.{(i // 250) * 4}.0/{plen}"]

    def _drain(self):
        self.safety.drain()

    # ------------------------------------------------------------------ rules: networks and addresses

    @precondition(lambda self: self.counter < self.max_networks)
    @rule(data=st.data())
    def create_network(self, data):
        up = self.c.up
        if not up:
            return
        plen = data.draw(st.sampled_from(self.prefixes))
        host = data.draw(st.sampled_from(up))
        net = f"n{self.counter}"
        subnets = self._subnet(plen)
        self.counter += 1
        self.c.call(host, "create_network", net, subnets=subnets)
        self._say(f"{self.c.name(host)} create {net} {subnets}")

    @rule(data=st.data())
    def concurrent_create(self, data):
        up = self.c.up
        if len(up) < 2:
            return
        hosts = data.draw(st.lists(st.sampled_from(up), min_size=2, max_size=3, unique=True))
        for h in hosts:
            net = f"n{self.counter}"
            subnets = self._subnet(data.draw(st.sampled_from([24, 28, 0])))
            self.counter += 1
            if self.c.is_up(h):  # a crash trap may fire in between
                self.c.call(h, "create_network", net, subnets=subnets)
        self._say(f"concurrent create on {hosts}")

    def _attachable(self):
        return [
            (h, n)
            for h in self.c.up
            for n in self._known_nets(h)
            if n not in self.c.ipam(h).attached_networks()
        ]

    @precondition(lambda self: self._attachable())
    @rule(data=st.data())
    def attach(self, data):
        choices = self._attachable()
        h, n = data.draw(st.sampled_from(choices))
        self.c.call(h, "attach", n)
        self._say(f"{self.c.name(h)} attach {n}")

    @rule(data=st.data(), static=st.booleans(), service=st.booleans())
    def allocate(self, data, static, service):
        choices = [(h, n) for h in self.c.up for n in self._known_nets(h)]
        if not choices:
            return
        h, n = data.draw(st.sampled_from(choices))
        core = self.c.ipam(h)
        self.counter += 1
        tag = f"service:{self.counter}" if service else f"ep{self.counter}"
        address = None
        if static:
            sid = core.netcfg(n).space_ids()[0]
            sp = core.space(sid.scope, sid.name)
            off = data.draw(st.integers(0, min(sp.size - 1, 4095)))
            if sp.is_reserved(off):
                return
            address = sp.value(off)
        op = self.c.call(h, "allocate", n, tag=tag, address=address)
        if static:
            self.safety.static.add((self.c.name(h), op))
        self._say(f"{self.c.name(h)} allocate {n} {tag} {address or ''} -> op {op}")

    @rule(data=st.data())
    def release(self, data):
        choices = []
        for h in self.c.up:
            core = self.c.ipam(h)
            me = core.name
            for sid, k in core.believed():
                if not sid.scope:
                    continue
                sp = core.space(sid.scope, sid.name)
                for off, hd in core.block_state(sid.scope, sid.name, k).allocs.items():
                    if hd.node == me and hd.tag != QUARANTINE:
                        choices.append((h, sid.scope, sp.value(off), hd.tag))
            for (sid, off), rh in core.remote_holdings().items():
                if sid.scope:
                    choices.append((h, sid.scope, core.space(sid.scope, sid.name).value(off), rh.tag))
        if not choices:
            return
        h, n, value, tag = data.draw(st.sampled_from(sorted(choices)))
        self.c.call(h, "release", n, value, tag=tag)
        self._say(f"{self.c.name(h)} release {n} {value} {tag}")

    # ------------------------------------------------------------------ rules: faults and lifecycle

    @precondition(lambda self: len(self.c.up) > 1)
    @rule(data=st.data(), at_next_input=st.sampled_from([True, False]))
    def crash(self, data, at_next_input):
        h = data.draw(st.sampled_from(self.c.up))
        self.faulted = True
        if at_next_input:
            n, on = data.draw(st.integers(1, 3)), data.draw(st.sampled_from(["message", "any"]))
            self.c.crash_after(h, n, on=on)
            self._say(f"{self.c.name(h)} will crash after its next {n} inputs ({on})")
        else:
            self.c.crash(h)
            self._say(f"{self.c.name(h)} crash")

    @rule(data=st.data(), keep_state=st.booleans())
    def restart(self, data, keep_state):
        down = [h for h in self.c.hosts if not self.c.is_up(h)]
        if not down:
            return
        h = data.draw(st.sampled_from(down))
        slot = self.c.slots[h]
        ident = slot.disk.get(("ident",)) if slot.disk is not None else None
        state = keep_state and ident is not None and not ident.retired and not slot.destroyed
        self.c.restart(h, state=state)
        self._say(f"restart {h} as {self.c.name(h)} (state={state})")

    @precondition(lambda self: len(self.c.up) > 1)
    @rule(data=st.data())
    def partition(self, data):
        up = self.c.up
        side = data.draw(st.lists(st.sampled_from(up), min_size=1, max_size=len(up) - 1, unique=True))
        self.c.partition(sorted(side))
        self.faulted = True
        self._say(f"partition {sorted(side)}")

    @rule()
    def heal(self):
        self.c.heal()
        self._say("heal")

    @rule(
        loss=st.sampled_from([0.0, 0.1, 0.3]),
        dup=st.sampled_from([0.0, 0.2]),
        jitter=st.sampled_from([0.0, 0.5]),
    )
    def faults(self, loss, dup, jitter):
        self.c.loss, self.c.dup, self.c.jitter = loss, dup, jitter
        self.faulted = self.faulted or bool(loss or dup or jitter)
        self._say(f"loss={loss} dup={dup} jitter={jitter}")

    @rule(i=st.integers(0, 10_000))
    def replay(self, i):
        if self.c.history:
            self.c.replay(i)
            self.faulted = True

    def _stale_grants(self):
        """Remembered grants whose target is running and no longer believes the block, then the rest."""
        grants = []
        for n, (_src, dst, dst_name, payload) in enumerate(self.c.history):
            body = decode(payload).body
            if isinstance(body, SpaceGrant):
                core = self.c.slots[dst].core
                stale = (
                    core is not None
                    and core.name == dst_name
                    and not core.believes(body.scope, body.space, body.k)
                )
                grants.append((not stale, n))
        return sorted(grants)

    @precondition(lambda self: self.c.history)
    @rule(i=st.integers(0, 10_000))
    def replay_grant(self, i):
        """An adversarial duplicate: replay an old grant, preferring one whose target no longer
        believes the block (the case the epoch check exists for)."""
        grants = self._stale_grants()
        stale = [g for g in grants if not g[0]]
        pool = stale or grants
        if not pool:
            return
        n = pool[i % len(pool)][1]
        self.c.replay(n)
        self.faulted = True
        self._say(f"replay grant #{n}")

    @precondition(lambda self: len(self.c.up) >= 3)
    @rule(data=st.data())
    def leave(self, data):
        h = data.draw(st.sampled_from(self.c.up))
        name = self.c.name(h)
        res = self.c.leave(h)
        self.faulted = True
        self._say(f"{name} leave -> {res}")

    @rule(data=st.data())
    def reclaim(self, data):
        up = self.c.up
        if not up:
            return
        if self.force_reclaim_live:
            targets = [h for h in self.c.hosts if self.c.is_up(h)]
        else:
            targets = [h for h in self.c.hosts if not self.c.is_up(h) and self.c.slots[h].disk is not None]
        if not targets:
            return
        t = data.draw(st.sampled_from(targets))
        others = [h for h in up if h != t]
        if not others:
            return
        r = data.draw(st.sampled_from(others))
        target = self.c.name(t)
        if self.force_reclaim_live:
            if self.c.can_talk(r, t):
                return
            op = self.c.call(r, "reclaim", [target], force=True)
        else:
            self.c.destroy(t)  # the operator asserts it is gone for good
            op = self.c.call(r, "reclaim", [target])
        self.faulted = True
        self._say(f"{self.c.name(r)} reclaim {target} -> op {op}")

    # ------------------------------------------------------------------ rules: targeted scenarios
    # Faults at the worst instant, which uniform rule choice reaches only rarely. Each is an ordinary
    # fault (a crash, a duplicate, an operator's command) with adversarial timing.

    def _donors(self):
        """(donor, network, asker): the donor believes >= 2 fully free blocks of the network's first
        space, the asker is another running host not attached to it (its attach asks for a block)."""
        out = []
        for o in self.c.up:
            core = self.c.ipam(o)
            for n in self._known_nets(o):
                sid = core.netcfg(n).space_ids()[0]
                free = [
                    k
                    for s, k in core.believed()
                    if s == sid and not core.block_state(s.scope, s.name, k).allocs
                ]
                if len(free) < 2:
                    continue
                for a in self.c.up:
                    if a != o and n not in self.c.ipam(a).attached_networks() and self.c.ipam(a).netcfg(n):
                        out.append((o, n, a))
        return out

    @precondition(lambda self: self._donors())
    @rule(data=st.data(), allocate_too=st.booleans())
    def crash_donor_on_request(self, data, allocate_too):
        """A host that owns free blocks crashes right after handling the next direct message (its
        persists in flight are lost; what it sent is on its way) while another host attaches to the
        network and asks it for a block (and, maybe, for an address)."""
        o, n, a = data.draw(st.sampled_from(self._donors()))
        self.c.crash_after(o, 1, on="message")
        self.c.call(a, "attach", n)
        if allocate_too and self.c.is_up(a):
            self.counter += 1
            self.c.call(a, "allocate", n, tag=f"ep{self.counter}")
        self.faulted = True
        self._say(f"{self.c.name(o)} crashes on its next message; {self.c.name(a)} attaches {n}")
        with self._explained():
            self.c.run_for(0.05)

    def _reclaimable(self):
        """Running hosts that believe a block while at least two others are running."""
        up = self.c.up
        if len(up) < 3:
            return []
        return [h for h in up if self.c.ipam(h).believed()]

    @precondition(lambda self: self._reclaimable())
    @rule(data=st.data())
    def crash_and_reclaim_twice(self, data):
        """A host dies for good and the operator runs ``ipam reclaim`` for it on two hosts at the same
        instant (weaveworks/weave #1949, #3190)."""
        t = data.draw(st.sampled_from(self._reclaimable()))
        target = self.c.name(t)
        self.c.crash(t)
        self.c.destroy(t)
        others = [h for h in self.c.up]
        rs = data.draw(st.lists(st.sampled_from(others), min_size=2, max_size=2, unique=True))
        for r in rs:
            if self.c.is_up(r):
                self.c.call(r, "reclaim", [target])
        self.faulted = True
        self._say(f"{target} dies; {[self.c.name(r) for r in rs]} reclaim it at once")

    @rule(data=st.data())
    def reap(self, data):
        down = [h for h in self.c.hosts if not self.c.is_up(h) and self.c.slots[h].name not in self.c.left]
        if not down:
            return
        h = data.draw(st.sampled_from(down))
        self.c.forget(self.c.name(h))
        self.reaped = self.faulted = True
        self._say(f"reap {self.c.name(h)}")

    @rule(dt=st.sampled_from([0.3, 2.0, 12.0, 0.001]))
    def advance(self, dt):
        self._say(f"advance {dt}")
        with self._explained():
            self.c.run_for(dt)

    # ------------------------------------------------------------------ safety

    @invariant()
    def safety(self):
        if not hasattr(self, "c"):
            return
        with self._explained():
            self._drain()
            self.check_safety()

    def _explained(self):
        machine = self

        class _Ctx:
            def __enter__(self):
                return self

            def __exit__(self, et, ev, tb):
                if et is AssertionError and os.environ.get("IPAM_MACHINE_LOG"):
                    raise AssertionError(f"{ev}\n--- steps ---\n" + "\n".join(machine.log)) from ev
                return False

        return _Ctx()

    def check_safety(self):
        self.safety.check()

    # ------------------------------------------------------------------ liveness

    @precondition(lambda self: self.faulted)
    @rule()
    def heal_and_settle(self):
        self._say("heal and settle")
        with self._explained():
            self.settle_and_check()

    def teardown(self):
        if hasattr(self, "c") and self.liveness:
            with self._explained():
                self.settle_and_check()

    def settle_and_check(self):
        c = self.c
        c.clear_traps()
        c.heal()
        c.loss = c.dup = c.jitter = 0.0
        for h in c.hosts:
            if not c.is_up(h):
                slot = c.slots[h]
                ident = slot.disk.get(("ident",)) if slot.disk is not None else None
                c.restart(h, state=ident is not None and not ident.retired and not slot.destroyed)
        c.run_for(5.0)
        self._drain()
        for h in c.up:
            for n in self._known_nets(h):
                c.call(h, "attach", n)
        c.run_for(SETTLE)
        self._drain()
        self.check_safety()
        self.faulted = False
        if not self.liveness:
            return
        self.check_l3()
        self.check_l2()
        self.check_l1()
        self.check_l6()
        self.check_safety()

    def _alive_names(self):
        return {self.c.name(h) for h in self.c.up if not self.c.ipam(h).is_retired}

    def check_l3(self):
        alive = self._alive_names()
        for h in self.c.up:
            core = self.c.ipam(h)
            stuck = {k: t for k, t in core.pending_grants().items() if t in alive}
            assert not stuck, f"L3: {core.name} has unconfirmed grants to alive nodes: {stuck}"
            unconf = {k: e.owner for k, e in core.unconfirmed_grants().items() if e.owner in alive}
            assert not unconf, f"L3: {core.name} sees unconfirmed grants to alive nodes: {unconf}"
            assert not core.proposals(), f"L3: {core.name} still has reclaim proposals {core.proposals()}"

    def check_l2(self):
        cores = [self.c.ipam(h) for h in self.c.up]
        alive = self._alive_names()
        common = set.intersection(*(set(core.spaces()) for core in cores)) if cores else set()
        for sid in sorted(common):
            sp = cores[0].space(sid.scope, sid.name)
            users = [core for core in cores if not sid.scope or sid.scope in core.attached_networks()]
            for k in range(sp.nblocks):
                entries = {core.name: core.view_entry(sid.scope, sid.name, k) for core in users}
                shapes = {(e.epoch, e.owner, e.state) for e in entries.values()}
                if self.reaped and any(e.owner not in alive for e in entries.values()):
                    continue
                if len(shapes) != 1:
                    recs = {
                        self.c.name(h): sorted(
                            (key[2], r.writer, r.value is not None)
                            for key, r in self.c.slots[h].replica.items()
                            if key[1] == sid.scope and key[2].startswith(f"{sid.name}#{k}@")
                        )
                        for h in self.c.up
                    }
                    joined = {self.c.name(h): sorted(self.c.slots[h].joined) for h in self.c.up}
                    raise AssertionError(
                        f"L2: views of {sid}#{k} differ: {entries}; records {recs}; joined {joined}"
                    )
                owner = next(iter(entries.values())).owner
                believer = next(
                    (core for core in users if core.name == owner and core.believes(sid.scope, sid.name, k)),
                    None,
                )
                if believer is not None:
                    truth = sp.free_in(k, believer.block_state(sid.scope, sid.name, k).allocs)
                    for core in users:
                        e = entries[core.name]
                        hint = sp.free_in(k, [u[0] for u in e.used]) if core is not believer else truth
                        assert hint == truth, (
                            f"L2: {core.name}'s free hint of {sid}#{k} is {hint}, truth {truth}"
                        )

    def _truth_free(self, sid):
        for h in self.c.up:
            core = self.c.ipam(h)
            sp = core.space(sid.scope, sid.name)
            for s, k in core.believed():
                if s == sid and sp.free_in(k, core.block_state(s.scope, s.name, k).allocs) > 0:
                    return True
        return False

    def check_l1(self):
        c = self.c
        for h in c.up:
            core = c.ipam(h)
            for n in core.attached_networks():
                cfg = core.netcfg(n)
                if cfg is None:
                    continue
                sid = cfg.space_ids()[0]
                if not self._truth_free(sid):
                    continue
                self.counter += 1
                tag = f"l1-{self.counter}"
                op = c.call(h, "allocate", n, tag=tag)
                res = c.wait(h, op, timeout=CFG.allocation_budget)
                assert isinstance(res, Allocated), f"L1: {core.name} could not allocate in {n}: {res}"
                c.call(h, "release", n, res.value, tag=tag)
        c.run_for(3.0)
        self._drain()

    def check_l6(self):
        c = self.c
        hosts = c.up[:3]
        vsid = SpaceId("", "vni")
        free = 0
        for h in c.up:
            core = c.ipam(h)
            sp = core.space("", "vni")
            if sp is None:
                return
            free += sum(
                sp.free_in(k, core.block_state("", "vni", k).allocs)
                for (s, k) in core.believed()
                if s == vsid
            )
        if free < len(hosts):
            return
        ops = []
        for h in hosts:
            net = f"n{self.counter}"
            self.counter += 1
            ops.append((h, c.call(h, "create_network", net, subnets=self._subnet(24))))
        c.run_for(CFG.allocation_budget + 1)
        vnis = []
        for h, op in ops:
            res = c.result(h, op)
            assert isinstance(res, NetworkCreated), f"L6: create on {c.name(h)} ended with {res}"
            vnis.append(res.netcfg.vni)
        assert len(set(vnis)) == len(vnis), f"L6: VNIs not distinct: {vnis}"
        self._drain()


IpamMachine.TestCase.settings = MAIN
TestIpamMachine = IpamMachine.TestCase
if PROFILE == "dev":  # 200 long examples: minutes, more on a shared machine
    TestIpamMachine = pytest.mark.hang_guard(3600)(TestIpamMachine)


def test_same_seed_same_trace_hashes():
    """Determinism: the machine run twice with one hypothesis seed drives the harness through the same
    traces (the harness's trace hash per example), so any counterexample replays exactly."""

    def run():
        hashes = []

        class Recording(IpamMachine):
            def teardown(self):
                super().teardown()
                if hasattr(self, "c"):
                    hashes.append(self.c.trace_hash())

        run_state_machine_as_test(
            Recording, settings=settings(MAIN, derandomize=True, max_examples=8, database=None)
        )
        return hashes

    first, second = run(), run()
    assert first == second
    assert len(set(first)) > 1


# ---------------------------------------------------------------------- mutation tests (S9)


RULES = (  # noqa: SIM905
    "create_network concurrent_create attach allocate release crash restart partition heal faults replay "
    "replay_grant leave reclaim crash_donor_on_request crash_and_reclaim_twice reap advance heal_and_settle"
).split()


def test_rules_lists_every_rule():
    """``_focused`` switches rules off by name: a rule missing from RULES would stay on in every focused
    machine and dilute its search."""
    from hypothesis.stateful import RULE_MARKER

    def names(cls):
        return {n for n in dir(cls) if getattr(getattr(cls, n), RULE_MARKER, None) is not None}

    assert names(IpamMachine) == set(RULES)
    assert names(_NoReclaimAcks) == {
        "create_network",
        "attach",
        "allocate",
        "crash_and_reclaim_twice",
        "advance",
    }


def _focused(name, config, keep, **extra):
    """A machine with the same invariants and only the rules in ``keep`` (the others are switched off),
    so the search for a counterexample to one removed check stays short."""
    attrs = {r: None for r in RULES if r not in keep}
    return type(
        name, (IpamMachine,), {"config": config, "liveness": False, "hosts": (3, 3), **attrs, **extra}
    )


_NoEpochCheck = _focused(
    "_NoEpochCheck",
    CFG.with_(allow_unsafe=True, unsafe_skip_epoch_check=True),
    {"create_network", "attach", "allocate", "leave", "replay_grant", "advance"},
    hosts=(3, 4),
    prefixes=[24, 26],
    prelude="inherit",
)
_NoWriteAhead = _focused(
    "_NoWriteAhead",
    CFG.with_(allow_unsafe=True, unsafe_skip_write_ahead=True),
    {"create_network", "attach", "allocate", "crash_donor_on_request", "restart", "advance"},
    prefixes=[24, 26],
)
_NoReclaimAcks = _focused(
    "_NoReclaimAcks",
    CFG.with_(allow_unsafe=True, unsafe_reclaim_without_acks=True),
    {"create_network", "attach", "allocate", "crash_and_reclaim_twice", "advance"},
    prefixes=[24, 26],
)
_ForcedReclaimOfLiveNode = _focused(
    "_ForcedReclaimOfLiveNode",
    CFG,
    {"create_network", "attach", "allocate", "partition", "reclaim", "advance"},
    prefixes=[24, 26],
    force_reclaim_live=True,
)


MUTANTS = [_NoEpochCheck, _NoWriteAhead, _NoReclaimAcks, _ForcedReclaimOfLiveNode]
MUTANT_IDS = ["epoch-check", "write-ahead", "reclaim-acks", "force-on-live-node"]
#: the controls run the focused machines this long with the check in place (more examples than any
#: mutation needed to be caught, see test_mutation_is_caught's output)
CONTROL = settings(MUTATION, max_examples=80)


def _counting(machine, **attrs):
    """``machine`` (with ``attrs`` overridden) and a list whose length is the number of examples run."""
    runs: list[int] = []

    def __init__(self):
        runs.append(1)
        machine.__init__(self)

    return type(machine.__name__, (machine,), {"__init__": __init__, **attrs}), runs


@pytest.mark.parametrize("machine", MUTANTS, ids=MUTANT_IDS)
def test_mutation_is_caught(machine):
    """S9: with one safety check removed, the focused machine finds an S1/S2/S3/S6 counterexample."""
    counted, runs = _counting(machine)
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(counted, settings=MUTATION)
    text = str(info.value)
    assert any(text.startswith(w) for w in ("S1", "S2", "S3", "S6")), text
    print(f"{machine.__name__}: counterexample in example {len(runs)}: {text.splitlines()[0][:160]}")


@pytest.mark.parametrize("machine", MUTANTS, ids=MUTANT_IDS)
def test_focused_machine_without_mutation_is_safe(machine):
    """The control of each mutation test: the same focused machine with the check in place finds
    nothing, so what the mutation test catches is the removed check, not the machine."""
    counted, runs = _counting(machine, config=CFG, force_reclaim_live=False)
    run_state_machine_as_test(counted, settings=CONTROL)
    assert len(runs) >= CONTROL.max_examples // 2
