"""Broadcast reach in the simulator versus the serf convergence model (anchors.md section 3.3).

Theory of operation. For each cluster size N we build a converged cluster of real ``Swim`` cores in
``sim`` (LAN config, LAN links: 2 ms +- 1 ms, no loss), then time how long one broadcast takes to reach
99.99 % of the other nodes (``ceil(0.9999 * (N - 1))`` receivers):

* ``send_user``: a user broadcast gossiped from one random node (time until that many nodes emitted
  ``UserMessageReceived`` for it). ``Swim`` leaves re-gossip of user messages to its delegate, so
  the bench plays serf's part: a node that receives the event for the first time ``send_user`` s it
  again (serf re-broadcasts every user event it has not seen);
* ``alive``: a new node joins three random seeds (time until that many nodes emitted
  ``MemberJoined`` for it) -- full mode only.

Two ways to build the converged cluster:

* ``full``: every node starts and joins 3 random running nodes, staggered, and we wait until every
  view equals the live set, then let the join rumours drain.
* ``light`` (for 10,000, where N full views would be N^2 = 10^8 member records): every node starts
  with a converged *partial* view handed to it as a synthetic push-pull reply from a virtual
  "directory" endpoint: the union of ``--light-cycles`` random Hamiltonian cycles, a symmetric random
  graph of degree <= 2 * cycles. Because the core sizes its retransmit limit by the members it knows,
  ``retransmit_mult`` is raised so that ``retransmit_mult * ceil(log10(known + 1))`` is at least the
  full-view limit ``4 * ceil(log10(N + 1))``, and periodic push-pull is off (it would merge whole
  views and turn them into full ones); gossip fanout and interval are unchanged. Merging the view
  queues an alive rumour per new member, as memberlist does, and among partial views those would
  flood every member to every node; a 6 s warm-up cuts ``alive`` parts out of datagrams (compression
  is forced off in light mode so the sim can see the parts) until they ran out their retransmits.

The model: contact = fanout/N * 0.5, infected(x) = N / (1 + (N+1) e^(-contact N x)) after x rounds of
0.2 s; the 99.99 % time is the first whole round reaching it. We print figures and ratios only: no
timed assertions. Usage: ``python bench/broadcast_sim.py [--sizes 100,1000,10000] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnet.gossip import codec, packet  # noqa: E402
from meshnet.gossip.config import lan  # noqa: E402
from meshnet.gossip.messages import MessageType, PushNodeState, PushPull  # noqa: E402
from sim.checks import membership_converged  # noqa: E402
from sim.cluster import Cluster  # noqa: E402

REACH = 0.9999
DIRECTORY = ("127.255.255.254", 7946)


def model_reach_time(
    n: int, *, fanout: int = 3, interval: float = 0.2, loss: float = 0.0, frac: float = REACH
) -> float:
    """serf's convergence-simulator formula: seconds until ``frac`` of ``n`` nodes are infected."""
    contact = fanout / n * (1 - loss) * 0.5
    x = 0
    while n / (1 + (n + 1) * math.exp(-contact * n * x)) < frac * n:
        x += 1
    return round(x * interval, 3)


def retransmit_limit(mult: int, n: int) -> int:
    return mult * math.ceil(math.log10(n + 1))


class Reach:
    """Counts first receipts of one rumour; records when ``target`` receivers have it."""

    def __init__(self, c: Cluster, target: int) -> None:
        self.c = c
        self.target = target
        self.got: set[str] = set()
        self.done_at: float | None = None

    def hit(self, node_name: str, t_us: int) -> None:
        if node_name not in self.got:
            self.got.add(node_name)
            if len(self.got) >= self.target and self.done_at is None:
                self.done_at = t_us / 1e6


def build_full(n: int, seed: int, cfg: Any) -> tuple[Cluster, str]:
    c = Cluster(n, seed=seed, config=cfg, link="lan")
    stagger = min(0.05, 10.0 / n)
    last = c.bootstrap(stagger=stagger, seeds_per_join=3, start_at=0.0)
    c.run_until(last)
    t = c.run_until_true(lambda: membership_converged(c), timeout=180.0, every=0.1)
    if t is None:
        raise SystemExit(f"N={n} full bootstrap did not converge within 180 s after the last join")
    c.run_for(10.0)  # let join rumours run out their retransmits
    return (
        c,
        f"full: staggered joins ({stagger * 1000:.0f} ms apart, 3 seeds each), converged {t - last:.2f}s after the last",
    )


def build_light(n: int, seed: int, cycles: int, base: Any) -> tuple[Cluster, str]:
    rng = random.Random(f"{seed}:light")
    adj: list[set[int]] = [set() for _ in range(n)]
    for _ in range(cycles):
        perm = rng.sample(range(n), n)
        for i in range(n):
            a, b = perm[i], perm[(i + 1) % n]
            if a != b:
                adj[a].add(b)
                adj[b].add(a)
    max_known = max(len(s) for s in adj) + 1
    want = retransmit_limit(4, n)
    mult = math.ceil(want / math.ceil(math.log10(max_known + 1)))
    min_known = min(len(s) for s in adj) + 1
    # Periodic push-pull would merge whole views between neighbours and flood alive rumours about
    # members the receivers never knew, turning partial views into full ones: it is off here.
    cfg = base.with_(retransmit_mult=mult, push_pull_interval=0.0, enable_compression=False)
    c = Cluster(n, seed=seed, config=cfg, link="lan")
    for node in c.nodes:
        c.start(node)
    selves: list[Any] = []
    for node in c.nodes:
        me = next(m for m in node.core.members() if m.name == node.name)
        selves.append(
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
    enc_rng = random.Random(f"{seed}:directory")

    def directory(src: Any, data: bytes, now: float) -> bytes:
        states = tuple(selves[j] for j in sorted(adj[src.idx]))
        body = codec.encode_push_pull(PushPull(join=False, states=states, user_state=b""))
        return packet.encode_stream(body, compress=False, keyring=None, rng=enc_rng)

    c.endpoints[DIRECTORY] = directory
    stripped = {"parts": 0}

    def strip_alive(src: Any, dst: Any, data: bytes) -> bytes | None:
        # Merging the synthetic view queues an alive broadcast per new member (memberlist does the
        # same); among partial views those rumours would teach every node every member. During the
        # warm-up they are cut out of each datagram (plain, compound or CRC-wrapped compound).
        crc = data[0] == MessageType.HAS_CRC
        inner = codec.decode_crc(data) if crc else data
        if inner[0] == MessageType.ALIVE:
            stripped["parts"] += 1
            return None
        if inner[0] != MessageType.COMPOUND:
            return data
        parts, _ = codec.decode_compound(inner)
        keep = [p for p in parts if p[0] != MessageType.ALIVE]
        if len(keep) == len(parts):
            return data
        stripped["parts"] += len(parts) - len(keep)
        if not keep:
            return None
        out = keep[0] if len(keep) == 1 else codec.encode_compound(keep)
        return codec.encode_crc(out) if crc else out

    c.datagram_filter = strip_alive
    for node in c.nodes:
        c.join(node, [DIRECTORY])
    c.run_for(6.0)  # views installed; the merge's alive rumours run out their retransmits unheard
    c.datagram_filter = None
    c.run_for(2.0)
    sizes = [len(m) for m in (node.view.up for node in c.nodes)]
    note = (
        f"light: converged partial views from a synthetic push-pull (union of {cycles} random cycles, "
        f"known members {min_known}..{max_known}, mean view {statistics.mean(sizes):.1f}); retransmit_mult "
        f"{mult} so the limit is {retransmit_limit(mult, min_known)}..{retransmit_limit(mult, max_known)} "
        f"(full view at N={n}: {want}); periodic push-pull off; {stripped['parts']} alive rumours cut "
        "during a 6 s warm-up"
    )
    return c, note


def time_send_user(c: Cluster, k: int, timeout: float = 30.0) -> float | None:
    live = c.live_nodes()
    src = c.rng.choice(live)
    payload = f"bench-{k}".encode()
    reach = Reach(c, math.ceil(REACH * (len(live) - 1)))

    def on(node: Any, t_us: int, ev: Any, flat: tuple[Any, ...]) -> None:
        if flat[0] == "UserMessageReceived" and getattr(ev, "payload", None) == payload:
            if node.name not in reach.got and node is not src:
                # The core leaves re-gossip to its delegate; serf re-broadcasts an unseen user event.
                c.sched.call_at(t_us, lambda node=node: node.running and c.send_user(node, payload))
            reach.hit(node.name, t_us)

    c.listeners.append(on)
    t0 = c.now
    c.send_user(src, payload)
    c.run_until_true(lambda: reach.done_at is not None, timeout, every=0.01)
    c.listeners.remove(on)
    return None if reach.done_at is None else reach.done_at - t0


def time_alive(c: Cluster, timeout: float = 30.0) -> float | None:
    live = c.live_nodes()
    new = c.add_node()
    reach = Reach(c, math.ceil(REACH * len(live)))

    def on(node: Any, t_us: int, ev: Any, flat: tuple[Any, ...]) -> None:
        if flat[0] == "MemberJoined" and flat[1] == new.name and node is not new:
            reach.hit(node.name, t_us)

    c.listeners.append(on)
    t0 = c.now
    c.start(new, c.pick_seeds(new, 3))
    c.run_until_true(lambda: reach.done_at is not None, timeout, every=0.01)
    c.listeners.remove(on)
    return None if reach.done_at is None else reach.done_at - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--broadcasts", type=int, default=5, help="send_user broadcasts per size")
    p.add_argument(
        "--mode", choices=("auto", "full", "light"), default="auto", help="auto: light above 2,000"
    )
    p.add_argument("--light-cycles", type=int, default=40)
    p.add_argument("--no-compression", action="store_true", help="LZW off: same protocol, ~2x faster")
    args = p.parse_args(argv)
    base = lan().with_(enable_compression=False) if args.no_compression else lan()
    if args.no_compression:
        print("compression off (LAN config otherwise): piggyback budgets are computed before compression")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        wall0 = time.perf_counter()
        mode = args.mode if args.mode != "auto" else ("light" if n > 2000 else "full")
        if mode == "full":
            c, how = build_full(n, args.seed, base)
        else:
            c, how = build_light(n, args.seed, args.light_cycles, base)
        built = time.perf_counter() - wall0
        model = model_reach_time(n)
        sends = []
        for k in range(args.broadcasts):
            sends.append(time_send_user(c, k))
            c.run_for(3.0)
        alive = time_alive(c) if mode == "full" else None
        wall = time.perf_counter() - wall0
        print(f"N={n} [{how}] (built in {built:.1f}s wall, total {wall:.1f}s wall)")
        ok = [s for s in sends if s is not None]
        med = statistics.median(ok) if ok else None
        fmt = lambda v: "never" if v is None else f"{v:.3f}s"  # noqa: E731
        print(f"  send_user 99.99% reach: {', '.join(fmt(s) for s in sends)}")
        if med is not None:
            print(
                f"    median {med:.3f}s max {max(ok):.3f}s  model {model:.1f}s  ratio median/model {med / model:.2f}"
            )
        if alive is not None:
            print(
                f"  alive (new node joins 3 seeds) 99.99% reach: {alive:.3f}s  ratio/model {alive / model:.2f}"
            )
        elif mode == "full":
            print("  alive (new node joins 3 seeds) 99.99% reach: never (within 30 s)")
        rows.append((n, mode, med, model))
        sys.stdout.flush()
    print("\nsummary: N, mode, median send_user reach to 99.99%, serf model, ratio")
    for n, mode, med, model in rows:
        ratio = "-" if med is None else f"{med / model:.2f}"
        medtxt = "never" if med is None else f"{med:.3f}s"
        print(f"  {n:>6} {mode:>5} {medtxt:>8} {model:.1f}s {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
