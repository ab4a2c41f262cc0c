"""NetlinkDataplane beyond the shared contract: the kernel agrees with the fake on random plans, calls
work from any thread without forking or moving the caller, the bulk path, and the wire encoding.

The differential test is the strongest check of ``MemoryDataplane``'s model: hypothesis draws random
plans over a few namespaces and link names, applies each to both implementations, and requires the same
outcome (success, or the same errno at the same op) and the same observed state after every plan.
Everything runs in namespaces with a unique prefix (``netlink_harness`` in conftest.py).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.core.errors import DataplaneError
from meshnet.dataplane import (
    AddAddress,
    AddBridge,
    AddFdbEntry,
    AddNeighbour,
    AddNetns,
    AddVeth,
    AddVxlan,
    DelAddress,
    DelFdbEntry,
    DelLink,
    DelNeighbour,
    DelNetns,
    MemoryDataplane,
    SetLinkDown,
    SetLinkMaster,
    SetLinkMtu,
    SetLinkUp,
    Snapshot,
    nlwire,
)
from tests.conformance.dataplane_contract import Harness, overlay_plan, peers

pytestmark = pytest.mark.root


# --- the kernel agrees with the fake ------------------------------------------------------------

NAMES = ("br0", "vx0", "ve0", "eth0")
CIDRS = ("10.0.0.1/24", "10.0.0.2/24", "10.0.0.1/16", "fd00::1/64", "fd00::1/48")


def port_mac(netns: str, name: str) -> str:
    """A fixed MAC per (namespace, link) for every non-bridge link, so both sides compute the same
    bridge MAC (the smallest port MAC) without depending on the kernel's random ones."""
    return f"02:00:00:{ord(netns[-1]):02x}:{NAMES.index(name):02x}:01"


@st.composite
def random_op(draw: st.DrawFn, prefix: str):  # type: ignore[no-untyped-def]
    ns = draw(st.sampled_from((prefix + "a", prefix + "a", prefix + "b")))
    name = draw(st.sampled_from(NAMES))
    mtu = draw(st.sampled_from((None, 1400, 1450)))
    # Weighted towards ops that meet something in the base overlay (a refused op loses its whole plan).
    kind = draw(
        st.sampled_from(
            (0, 1, 2, 3, 4, 5, 5, 5, 6, 6, 7, 8, 8, 9, 10, 10, 10, 11, 12, 12, 13, 13, 14, 15, 15)
        )
    )
    if kind == 0:
        return draw(st.sampled_from((AddNetns(name=ns), DelNetns(name=ns))))
    if kind == 1:
        mac = draw(st.sampled_from((None, "02:00:00:00:0b:01")))
        return AddBridge(netns=ns, name=name, mtu=mtu, mac=mac)
    if kind == 2:
        return AddVxlan(
            # VNIs per namespace: a clash is then always with a device of the plan's namespaces, which
            # validation sees (the unforeseeable kind is check_kernel_refusal_then_replan_converges's).
            netns=ns, name=name, vni=draw(st.sampled_from((1, 2) if ns.endswith("a") else (3, 4))),
            mtu=mtu, mac=port_mac(ns, name),
            learning=draw(st.booleans()), proxy=draw(st.booleans()), underlay=prefix + "u",
            local=draw(st.sampled_from((None, "192.0.2.1"))),
        )  # fmt: skip
    if kind == 3:
        peer_ns = draw(st.sampled_from((prefix + "a", prefix + "b")))
        peer = draw(st.sampled_from(NAMES))
        if (peer_ns, peer) == (ns, name):
            peer = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
        return AddVeth(netns=ns, name=name, peer_netns=peer_ns, peer_name=peer, mtu=mtu,
                       mac=port_mac(ns, name), peer_mac=port_mac(peer_ns, peer))  # fmt: skip
    if kind == 4:
        return DelLink(netns=ns, name=name)
    if kind == 5:
        return draw(st.sampled_from((SetLinkUp(netns=ns, name=name), SetLinkDown(netns=ns, name=name))))
    if kind == 6:
        master = draw(st.sampled_from((None, *NAMES)))
        return SetLinkMaster(netns=ns, name=name, master=None if master == name else master)
    if kind == 7:
        return SetLinkMtu(netns=ns, name=name, mtu=draw(st.sampled_from((1300, 1400, 1500))))
    if kind in (8, 9):
        cidr = draw(st.sampled_from(CIDRS))
        return (AddAddress if kind == 8 else DelAddress)(netns=ns, dev=name, cidr=cidr)
    mac = draw(st.sampled_from(("02:42:0a:00:00:05", "02:42:0a:00:00:06")))
    if kind in (10, 11):
        dst = draw(st.sampled_from(("192.0.2.2", "192.0.2.3", "192.0.2.3", "2001:db8::2")))
        vni = draw(st.sampled_from((None, None, 1, 7)))
        dev = draw(st.sampled_from(("vx0", "vx0", "vx0", name)))
        return AddFdbEntry(netns=ns, dev=dev, mac=mac, dst=dst, vni=vni, permanent=draw(st.booleans()))
    if kind == 12:
        return DelFdbEntry(netns=ns, dev=name, mac=mac)
    ip = draw(st.sampled_from(("10.0.0.5", "10.0.0.6", "fd00::5")))
    if kind in (13, 14):
        return AddNeighbour(netns=ns, dev=name, ip=ip, mac=mac)
    return DelNeighbour(netns=ns, dev=name, ip=ip)


def comparable(snapshot: Snapshot) -> Snapshot:
    """Bridge MACs blanked (a bridge without a given MAC starts with a random one in the kernel), and
    neighbour entries the kernel learned by itself left out (the fake never makes any)."""
    return Snapshot(
        {
            ns: replace(
                st_,
                links=tuple(replace(x, mac="") if x.kind == "bridge" else x for x in st_.links),
                neighbours=tuple(n for n in st_.neighbours if n.permanent),
            )
            for ns, st_ in snapshot.namespaces.items()
        }
    )


@pytest.mark.hang_guard(600)
@settings(
    max_examples=int(os.environ.get("MESHNET_DIFF_EXAMPLES", "100")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_kernel_agrees_with_memory_on_random_plans(netlink_harness: Harness, data: st.DataObject) -> None:
    h = netlink_harness
    prefix = h.prefix
    scope = [prefix + "a", prefix + "b", prefix + "u"]
    memory = MemoryDataplane()
    memory.apply((AddNetns(name=prefix + "u"),))
    a, b = prefix + "a", prefix + "b"
    base = (  # a small overlay to start from, so that most random ops meet something
        AddNetns(name=a),
        AddNetns(name=b),
        AddBridge(netns=a, name="br0", mtu=1450, mac="02:00:00:00:0b:01"),
        AddVxlan(netns=a, name="vx0", vni=1, mac=port_mac(a, "vx0"), underlay=prefix + "u"),
        AddVeth(netns=a, name="ve0", peer_netns=b, peer_name="eth0", mac=port_mac(a, "ve0"),
                peer_mac=port_mac(b, "eth0")),
        SetLinkMaster(netns=a, name="vx0", master="br0"),
        SetLinkMaster(netns=a, name="ve0", master="br0"),
        *(SetLinkUp(netns=ns, name=n) for ns, n in ((a, "br0"), (a, "vx0"), (a, "ve0"), (b, "eth0"))),
        AddAddress(netns=a, dev="br0", cidr="10.0.0.1/24"),
        AddFdbEntry(netns=a, dev="vx0", mac="02:42:0a:00:00:05", dst="192.0.2.2"),
        AddNeighbour(netns=a, dev="vx0", ip="10.0.0.5", mac="02:42:0a:00:00:05"),
        AddNeighbour(netns=a, dev="br0", ip="10.0.0.6", mac="02:42:0a:00:00:06"),
    )  # fmt: skip
    try:
        memory.apply(base)
        h.dp.apply(base)
        for _ in range(data.draw(st.integers(1, 10), label="plans")):
            plan = tuple(data.draw(st.lists(random_op(prefix), min_size=1, max_size=3), label="plan"))
            outcomes = []
            for dp in (memory, h.dp):
                try:
                    dp.apply(plan)
                    outcomes.append(None)
                except DataplaneError as exc:
                    outcomes.append((exc.errno, exc.index))
            assert outcomes[0] == outcomes[1], f"memory vs kernel outcome for {plan}"
            kernel, fake = comparable(h.dp.observe(scope)), comparable(memory.observe(scope))
            assert kernel.render() == fake.render(), f"after {plan}"
    finally:
        h.dp.apply((DelNetns(name=prefix + "a"), DelNetns(name=prefix + "b")))


# --- threads, forks, the caller's namespace ------------------------------------------------------


def test_apply_from_a_worker_thread_never_forks_or_moves_the_caller(
    netlink_harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_fork() -> int:
        raise AssertionError("NetlinkDataplane forked")

    monkeypatch.setattr(os, "fork", no_fork)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    results: dict[str, object] = {}

    def work(tag: str) -> None:
        # Each thread its own namespaces (concurrent calls on the same ones are the caller's mistake).
        h = Harness(netlink_harness.dp, f"{netlink_harness.prefix}{tag}", atomic=False)
        try:
            mine = os.stat("/proc/thread-self/ns/net").st_ino
            h.dp.apply((AddNetns(name=h.ns("u")),) + overlay_plan(h) + peers(h, 10))
            state = h.observe("o").namespaces[h.ns("o")]
            moved = os.stat("/proc/thread-self/ns/net").st_ino != mine
            results[tag] = (len(state.fdb), len(state.neighbours), moved)
        except BaseException as exc:  # reported by the assert below
            results[tag] = exc

    workers = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == {"t0": (10, 10, False), "t1": (10, 10, False)}
    assert os.stat("/proc/thread-self/ns/net").st_ino == own


def test_bulk_runs_and_kernel_error_text(netlink_harness: Harness) -> None:
    h = netlink_harness
    result = h.dp.apply(overlay_plan(h) + peers(h, 100))
    assert result.bulk == 200 and result.applied == len(overlay_plan(h)) + 200
    x = h.ns("x")
    # A clash outside the plan's namespaces reaches the kernel, whose extended ack text is kept.
    h.apply(AddNetns(name=x), AddVxlan(netns=x, name="vx1", vni=99, local="192.0.2.7", underlay=h.ns("u")))
    with pytest.raises(DataplaneError) as info:
        h.apply(AddNetns(name=h.ns("y")), AddVxlan(netns=h.ns("y"), name="vx1", vni=99, underlay=h.ns("u")))
    assert info.value.is_exists() and info.value.index == 1
    assert "VNI" in info.value.message


def test_stale_namespace_file_is_reused(netlink_harness: Harness) -> None:
    h = netlink_harness
    stale = f"/run/netns/{h.ns('s')}"
    with open(stale, "x"):
        pass  # what a crash between create and mount leaves
    assert h.observe("s").namespaces == {}
    h.apply(AddNetns(name=h.ns("s")))
    assert h.observe("s").namespaces[h.ns("s")].link("lo") is not None


def test_missing_underlay_refused_before_anything_changes(netlink_harness: Harness) -> None:
    h = netlink_harness
    with pytest.raises(DataplaneError) as info:
        h.apply(AddNetns(name=h.ns("n")), AddVxlan(netns=h.ns("n"), name="vx0", vni=5, underlay=h.ns("gone")))
    assert info.value.errno == errno.ENOENT and info.value.index == 1
    assert h.observe("n").namespaces == {}


# --- encoding (no kernel needed, but kept with its users) ----------------------------------------


@pytest.mark.parametrize("add", [True, False])
def test_fast_packers_match_the_generic_encoding(add: bool) -> None:
    mac, raw_mac = "02:42:0a:00:00:05", bytes.fromhex("02420a000005")
    flags = nlwire._ADD_FLAGS if add else nlwire.NLM_F_REQUEST
    kind = nlwire.RTM_NEWNEIGH if add else nlwire.RTM_DELNEIGH
    body = nlwire._NDMSG.pack(7, 0, 0, 3, 0xC0 if add else 0, nlwire.NTF_SELF, 0) + nlwire._attr(2, raw_mac)
    if add:
        body += nlwire._attr(1, socket.inet_aton("192.0.2.2"))
    fdb = nlwire.pack_fdb(5, 3, mac, "192.0.2.2" if add else None, None, 0xC0, add=add)
    assert fdb == nlwire._HDR.pack(16 + len(body), kind, flags, 5, 0) + body
    body = nlwire._NDMSG.pack(2, 0, 0, 3, 0x80 if add else 0, 0, 0) + nlwire._attr(
        1, socket.inet_aton("10.0.0.5")
    )
    if add:
        body += nlwire._attr(2, raw_mac)
    neigh = nlwire.pack_neigh(6, 3, "10.0.0.5", mac if add else None, add=add)
    assert neigh == nlwire._HDR.pack(16 + len(body), kind, flags, 6, 0) + body
    parsed = nlwire.parse_neigh(neigh, 16, len(neigh))
    assert (parsed.ifindex, parsed.dst, parsed.mac) == (3, "10.0.0.5", mac if add else None)
