"""Hypothesis rule machine: the CNM controller and the overlay reconciler on 3-5 hosts whose tables replicate.

Each host runs a ``Controller`` (``meshnet.cnm``) over its own ``MemoryDataplane``, executing operations
with the pure world of ``tests/unit/cnm/helpers.py``. The replicated tables are a shared model with
per-host delivery queues: a host's own writes reach its mirror at once, other hosts' writes when the
``deliver`` rule runs for it (in write order; endpoint entries only of the networks it joined, whose
current entries it gets on joining, as a NetworkDB join sync does). A host reconciles its whole
dataplane after each delivery; operations reconcile their own namespaces.

Rules: create networks, attach (new or existing sandbox), leave + delete an endpoint, create and delete
an endpoint that is never joined (its address hides a stale remote record on its host), delete a sandbox,
an attach with a failure injected at a random step, drift (an FDB entry deleted and a neighbour altered
by hand, then reconciled), restart (a new controller from ``sandboxes.json``: before the tables arrive
it may only plan removals of remote entries; with the tables, adoption plans nothing, also through a
new dataplane object over the kernel state the old one left).

Invariants after every step:

* every host's dataplane equals ``desired(view)``: a full re-plan is empty;
* addresses held in IPAM are exactly those of the endpoint records (rollback leaks nothing);
* once every queue is delivered: for every host with an overlay for a network, ``vxlan0`` holds exactly
  one FDB entry (MAC -> VTEP of its host) and one neighbour (IP -> MAC) per endpoint of the network on
  another host, computed from the tables, not from ``desired``; and a host has an overlay
  namespace for a network exactly when one of its sandboxes is joined to it.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meshnet.cnm import (
    AttachNetwork,
    CnmConfig,
    Controller,
    DeleteEndpoint,
    DeleteNetwork,
    DetachNetwork,
    PutEndpoint,
    PutNetwork,
    decode_endpoint,
    decode_network,
    decode_sandboxes,
    encode_endpoint,
    encode_network,
)
from meshnet.dataplane import AddNeighbour, DelFdbEntry, DelNeighbour, MemoryDataplane
from meshnet.overlay import desired, overlay_netns, plan
from tests.unit.cnm.helpers import FakeIpam, Injected, World

Slot = tuple[str, str, str]  # (table, network, key)


class Tables:
    """The replicated tables: the truth, and each host's queue of writes it has not seen yet."""

    def __init__(self) -> None:
        self.rows: dict[Slot, bytes] = {}
        self.queues: dict[str, list[tuple[Slot, bytes | None]]] = {}

    def write(self, writer: str, slot: Slot, value: bytes | None) -> None:
        if value is None:
            self.rows.pop(slot, None)
        else:
            self.rows[slot] = value
        for host, queue in self.queues.items():
            if host != writer:
                queue.append((slot, value))


class Host(World):
    """A ``World`` whose table writes and network joins go through the shared ``Tables``."""

    def __init__(self, name: str, vtep: str, seed: int, ipam: FakeIpam, tables: Tables) -> None:
        super().__init__(host=name, vtep=vtep, seed=seed, ipam=ipam)
        self.shared = tables
        tables.queues.setdefault(name, [])

    def feed(self, slot: Slot, value: bytes | None) -> None:
        table, network, key = slot
        if table == "networks":
            self.ctl.apply_network_entry(key, value)
        elif network in self.joined:
            self.ctl.apply_endpoint_entry(network, key, value)

    def execute(self, action):
        if isinstance(action, PutNetwork):
            self.shared.write(self.host, ("networks", "", action.record.id), encode_network(action.record))
        elif isinstance(action, DeleteNetwork):
            self.shared.write(self.host, ("networks", "", action.network), None)
        elif isinstance(action, PutEndpoint):
            r = action.record
            self.shared.write(self.host, ("endpoint_table", r.network, r.id), encode_endpoint(r))
        elif isinstance(action, DeleteEndpoint):
            self.shared.write(self.host, ("endpoint_table", action.network, action.endpoint), None)
        elif isinstance(action, AttachNetwork) and action.network not in self.joined:
            self.joined.add(action.network)
            for (table, network, key), value in sorted(self.shared.rows.items()):
                if table == "endpoint_table" and network == action.network:
                    self.ctl.apply_endpoint_entry(network, key, value)
        elif isinstance(action, DetachNetwork):
            self.joined.discard(action.network)
            self.ctl.forget_network(action.network)
        return super().execute(action)

    def deliver(self) -> None:
        queue = self.shared.queues[self.host]
        while queue:
            slot, value = queue.pop(0)
            self.feed(slot, value)
        self.reconcile()

    def full_plan(self):
        d = desired(self.ctl.host_view())
        return plan(d, self.dp.observe(d.scope(self.dp.namespaces())))


class OverlayMachine(RuleBasedStateMachine):
    @initialize(n=st.integers(3, 5), seed=st.integers(0, 2**16))
    def start(self, n: int, seed: int) -> None:
        self.tables = Tables()
        self.ipam = FakeIpam()
        self.hosts = [
            Host(f"h{i}", f"192.0.2.{10 + i}", seed * 10 + i, self.ipam, self.tables) for i in range(1, n + 1)
        ]
        self.rng = random.Random(seed)
        self.counter = 0
        # Two networks everyone knows, so attaches start at once.
        for i in range(2):
            self.create_network(i)
        for h in self.hosts:
            h.deliver()

    # --- helpers ------------------------------------------------------------------------------------

    def _host(self, i: int) -> Host:
        return self.hosts[i % len(self.hosts)]

    def _joined_pairs(self, h: Host) -> list[tuple[str, str]]:
        return [(sb.name, ep) for sb in h.ctl.sandboxes() for ep, _ in sb.interfaces]

    # --- rules --------------------------------------------------------------------------------------

    @rule(i=st.integers(0, 4))
    def create_network(self, i: int) -> None:
        h = self._host(i)
        self.counter += 1
        k = self.counter
        if k > 40:
            return
        h.ok(h.ctl.create_network(name=f"n{k}", subnet=f"10.{k}.0.0/24", now=float(k)))

    @rule(i=st.integers(0, 4), pick=st.integers(0, 100), existing=st.booleans())
    def attach_again(self, i: int, pick: int, existing: bool) -> None:
        self.attach(i, pick, existing)

    @rule(i=st.integers(0, 4), pick=st.integers(0, 100), existing=st.booleans())
    def attach(self, i: int, pick: int, existing: bool) -> None:
        h = self._host(i)
        nets = h.ctl.networks()
        if not nets:
            return
        net = nets[pick % len(nets)]
        sbs = [
            sb
            for sb in h.ctl.sandboxes()
            if not any(
                h.ctl._find_local(ep) is not None and h.ctl._find_local(ep).network == net.id
                for ep in sb.endpoints()
            )
        ]
        if existing and sbs:
            name = sbs[pick % len(sbs)].name
        else:
            self.counter += 1
            name = f"c{self.counter}"
        h.ok(h.ctl.attach(network=net.id, sandbox=name, name=f"{name}-{net.name}", now=1.0))

    @rule(i=st.integers(0, 4), pick=st.integers(0, 100), fail=st.integers(0, 20), after=st.booleans())
    def attach_that_fails(self, i: int, pick: int, fail: int, after: bool) -> None:
        h = self._host(i)
        nets = h.ctl.networks()
        if not nets:
            return
        self.counter += 1
        net = nets[pick % len(nets)]
        r = h.run(
            h.ctl.attach(network=net.id, sandbox=f"f{self.counter}", now=1.0), fail_at=fail, after=after
        )
        if r.error is not None:
            assert isinstance(r.error, Injected), r.error
            assert not r.undo_errors
            assert all(sb.name != f"f{self.counter}" for sb in h.ctl.sandboxes())

    @rule(i=st.integers(0, 4), pick=st.integers(0, 100))
    def leave_and_delete(self, i: int, pick: int) -> None:
        h = self._host(i)
        pairs = self._joined_pairs(h)
        if not pairs:
            return
        sb, ep = pairs[pick % len(pairs)]
        h.ok(h.ctl.leave(sb, ep))
        h.ok(h.ctl.delete_endpoint(ep))

    @rule(i=st.integers(0, 4), pick=st.integers(0, 100))
    def create_loose_endpoint(self, i: int, pick: int) -> None:
        h = self._host(i)
        nets = h.ctl.networks()
        if not nets:
            return
        self.counter += 1
        h.ok(h.ctl.create_endpoint(network=nets[pick % len(nets)].id, name=f"l{self.counter}"))

    @rule(i=st.integers(0, 4), pick=st.integers(0, 100))
    def delete_loose_endpoint(self, i: int, pick: int) -> None:
        h = self._host(i)
        loose = [ep for ep in h.ctl.local_endpoints() if h.ctl.sandbox_of(ep.id) is None]
        if loose:
            h.ok(h.ctl.delete_endpoint(loose[pick % len(loose)].id))

    @rule(i=st.integers(0, 4), pick=st.integers(0, 100))
    def delete_sandbox(self, i: int, pick: int) -> None:
        h = self._host(i)
        sbs = h.ctl.sandboxes()
        if sbs:
            h.ok(h.ctl.delete_sandbox(sbs[pick % len(sbs)].id))

    @rule(i=st.integers(0, 4))
    def deliver(self, i: int) -> None:
        self._host(i).deliver()

    @rule()
    def deliver_all(self) -> None:
        for h in self.hosts:
            h.deliver()

    @rule(i=st.integers(0, 4))
    def drift(self, i: int) -> None:
        h = self._host(i)
        snap = h.dp.snapshot()
        ops = []
        for ns, state in snap.namespaces.items():
            for e in state.fdb[:1]:
                ops.append(DelFdbEntry(netns=ns, dev=e.dev, mac=e.mac))
            for n in state.neighbours[:1]:
                ops.append(AddNeighbour(netns=ns, dev=n.dev, ip=n.ip, mac="02:00:00:00:00:99"))
        if not ops:
            return
        h.dp.apply(tuple(ops))
        assert h.full_plan() != ()
        h.reconcile()

    @rule(i=st.integers(0, 4))
    def restart(self, i: int) -> None:
        h = self._host(i)
        h.deliver()
        programmed = h.dp.dump()
        h.ctl = Controller(CnmConfig(h.host, h.vtep), rng=random.Random(self.rng.random()))
        h.ctl.load_state(h.persisted)
        assert h.ctl.sandboxes() == sorted(decode_sandboxes(h.persisted), key=lambda sb: (sb.name, sb.id))
        # Before the tables sync, sandboxes.json alone describes the local overlay: the only ops are the
        # removals of remote entries (which the runtime holds back while it settles).
        early = h.full_plan()
        assert all(isinstance(op, DelFdbEntry | DelNeighbour) for op in early), early[:5]
        for (table, network, key), value in sorted(self.tables.rows.items()):
            h.feed((table, network, key), value)
        # The kernel outlives the agent: the same dataplane state, seen by a new dataplane object too.
        assert h.full_plan() == (), "adoption after a restart must change nothing"
        fresh = MemoryDataplane(h.dp.snapshot())
        d = desired(h.ctl.host_view())
        assert plan(d, fresh.observe(d.scope(fresh.namespaces()))) == ()
        assert h.dp.dump() == programmed

    # --- invariants ---------------------------------------------------------------------------------

    @invariant()
    def every_dataplane_matches_its_desired_state(self) -> None:
        for h in getattr(self, "hosts", ()):
            ops = h.full_plan()
            assert ops == (), f"{h.host}: {ops[:5]}"

    @invariant()
    def ipam_holds_exactly_the_endpoints_addresses(self) -> None:
        if not hasattr(self, "tables"):
            return
        eps = [decode_endpoint(v) for (t, _, _), v in self.tables.rows.items() if t == "endpoint_table"]
        want = {(ep.network, ep.ipv4, ep.id) for ep in eps}
        have = {(net, ip, tag) for net, held in self.ipam.held.items() for ip, tag in held.items()}
        assert have == want

    @invariant()
    def converged_hosts_hold_exactly_the_remote_entries(self) -> None:
        if not hasattr(self, "tables") or any(self.tables.queues[h.host] for h in self.hosts):
            return
        nets = {k: decode_network(v) for (t, _, k), v in self.tables.rows.items() if t == "networks"}
        eps = [decode_endpoint(v) for (t, _, _), v in self.tables.rows.items() if t == "endpoint_table"]
        vtep = {h.host: h.vtep for h in self.hosts}
        for h in self.hosts:
            local_nets = {
                ep.network
                for ep in eps
                if ep.host == h.host and ep.sandbox and h.ctl.sandbox_of(ep.id) is not None
            }
            want_ns = {overlay_netns("mn-", nets[n].vni) for n in local_nets}
            have_ns = {ns for ns in h.dp.namespaces() if "-ov-" in ns}
            assert have_ns == want_ns, h.host
            for n in local_nets:
                ns = overlay_netns("mn-", nets[n].vni)
                state = h.dp.observe([ns]).get(ns)
                remote = [ep for ep in eps if ep.network == n and ep.host != h.host]
                assert {(e.mac, e.dst) for e in state.fdb} == {(ep.mac, vtep[ep.host]) for ep in remote}
                assert {(x.ip, x.mac) for x in state.neighbours if x.dev == "vxlan0"} == {
                    (ep.ipv4, ep.mac) for ep in remote
                }
        note(f"{len(eps)} endpoints, {len(nets)} networks")

    def teardown(self) -> None:
        if hasattr(self, "tables"):
            joined = sum(1 for (t, _, _), v in self.tables.rows.items() if t == "endpoint_table")
            entries = sum(len(st.fdb) for h in self.hosts for st in h.dp.snapshot().namespaces.values())
            event(f"joined endpoints at the end: {min(joined, 8) // 4 * 4}+")
            event(f"FDB entries at the end: {'0' if not entries else '1-9' if entries < 10 else '10+'}")


OverlayMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOverlayMachine = OverlayMachine.TestCase
