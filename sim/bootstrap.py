"""Start a simulated cluster already converged, as if it had been running for a while.

Theory of operation. A full join storm of N nodes costs the cores O(N^2) alive rumours, which at
N = 1,000 is most of a run's wall time. ``bootstrap_converged`` skips it through the cores' own input
path, without touching their internals beyond one documented cut:

1. every node starts alone at ``start_at`` (its own alive, incarnation 1);
2. every node joins a virtual "directory" endpoint (``Cluster.endpoints``) whose push-pull reply
   carries every member's alive state at incarnation 1 -- one encoded frame shared by all nodes. The
   core merges it exactly as it merges a real seed's reply (``MemberJoined`` per member, the same
   code that runs on a join);
3. that merge queues an alive rumour per newly learned member (memberlist does the same), N - 1 per
   node. In a cluster that had been running those rumours would long have run out their
   retransmits, so they are *cut*: in the very step that merges the directory's reply (on its
   ``JoinCompleted``, before any gossip tick can send them) the core's membership broadcast queue is
   cleared (``Swim.drop_membership_broadcasts()``; user broadcasts are kept). As a safety net, until every node
   merged plus ``window`` s a datagram filter removes ``alive`` parts from plain datagrams (it cannot
   look into compressed ones: those are counted as ``opaque``). Both counts are returned so the
   caller can print them.

After this every live node's view equals the live set (``sim.checks.membership_converged``).
"""

from __future__ import annotations

from typing import Any

from meshnet.gossip import codec, packet
from meshnet.gossip.messages import MessageType, PushNodeState, PushPull
from sim.cluster import Cluster

__all__ = ["DIRECTORY", "bootstrap_converged", "strip_alive_parts"]

#: The virtual directory endpoint's address (no node has it).
DIRECTORY = ("127.255.255.254", 7946)


def strip_alive_parts(data: bytes, counter: dict[str, int]) -> bytes | None:
    """``data`` without its ``alive`` parts (plain, compound or CRC-wrapped compound); None if empty.

    Compressed or encrypted datagrams are passed through unchanged (counted in ``opaque``)."""
    if not data:
        return data
    crc = data[0] == MessageType.HAS_CRC
    inner = codec.decode_crc(data) if crc else data
    if not inner:
        return data
    if inner[0] == MessageType.ALIVE:
        counter["parts"] += 1
        return None
    if inner[0] != MessageType.COMPOUND:
        if inner[0] in (MessageType.COMPRESS, MessageType.ENCRYPT):
            counter["opaque"] += 1
        return data
    parts, _ = codec.decode_compound(inner)
    keep = [p for p in parts if not p or p[0] != MessageType.ALIVE]
    if len(keep) == len(parts):
        return data
    counter["parts"] += len(parts) - len(keep)
    if not keep:
        return None
    out = keep[0] if len(keep) == 1 else codec.encode_compound(keep)
    return codec.encode_crc(out) if crc else out


def bootstrap_converged(c: Cluster, *, start_at: float = 0.0, window: float = 0.0) -> dict[str, Any]:
    """Start every node of ``c`` with the full membership view (see the module comment).

    Runs the cluster until the install window ends and returns figures: ``converged_at`` (virtual s),
    ``queued_cut`` (alive rumours cleared from queues), ``parts_cut`` (alive parts cut from datagrams
    during the window), ``opaque`` (datagrams the filter could not look into)."""
    c.run_until(start_at)
    for node in c.nodes:
        if not node.running:
            c.start(node)
    states = []
    for node in c.nodes:
        me = next(m for m in node.core.members() if m.name == node.name)
        states.append(
            PushNodeState(
                name=me.name,
                addr=bytes(int(x) for x in me.addr.split(".")),
                port=me.port,
                meta=me.meta,
                incarnation=me.incarnation,
                state=0,
                vsn=me.vsn,
            )
        )
    body = codec.encode_push_pull(PushPull(join=False, states=tuple(states), user_state=b""))
    frame = packet.encode_stream(body, compress=False, keyring=None, rng=c.rng)

    def directory(src: Any, data: bytes, now: float) -> bytes:
        return frame

    counter = {"parts": 0, "opaque": 0, "queued": 0, "joined": 0}

    def on_join(node: Any, t_us: int, ev: Any, flat: tuple[Any, ...]) -> None:
        # Cut the merge's rumours in the very step that queued them, before any gossip tick.
        if flat[0] == "JoinCompleted" and getattr(ev, "seed", None) == DIRECTORY and node.running:
            counter["queued"] += node.core.drop_membership_broadcasts()
            counter["joined"] += 1

    prev_filter = c.datagram_filter
    c.endpoints[DIRECTORY] = directory
    c.listeners.append(on_join)
    c.datagram_filter = lambda src, dst, data: strip_alive_parts(data, counter)
    try:
        for node in c.nodes:
            c.join(node, [DIRECTORY])
        n = len(c.nodes)
        c.run_until_true(lambda: counter["joined"] >= n, timeout=5.0, every=0.001)
        c.run_for(window)
    finally:
        c.datagram_filter = prev_filter
        c.listeners.remove(on_join)
        del c.endpoints[DIRECTORY]
    return {
        "converged_at": c.now,
        "queued_cut": counter["queued"],
        "parts_cut": counter["parts"],
        "opaque": counter["opaque"],
    }
