"""NetworkDB in the simulator: propagation latency, lost entries, bytes/s, 10,000-entry join.

Theory of operation. ``sim.ndb.NdbSim`` runs a real ``NetworkDB`` beside each real ``Swim`` core in
virtual time (LAN gossip config, NetworkDB ``lan()`` config, LAN links 2 ms +- 1 ms, no loss). The
cluster starts converged (``sim.bootstrap.bootstrap_converged``: full views from a synthetic
push-pull, the merge's alive rumours cut), then every node joins network ``bench`` and we wait until
every node lists every other as a peer of it.

* propagation: ``--rate`` writes/s in aggregate for ``--seconds`` virtual seconds, each a new key
  written by a random node at a uniform random instant. Every node watches the table; a reader's
  ``EntryCreated`` for a key gives one latency sample (writer excluded). After the writes we run
  ``--settle`` more seconds; (key, reader) pairs never seen are *lost*. Bytes/s per node counts
  datagrams and stream bytes sent during the write window.
* join: ``--join-entries`` entries written by ``--join-writers`` nodes into network ``big`` (all
  nodes joined), let the gossip queues drain, then one node that never joined ``big`` joins it: the
  time until its view holds them all, and the largest queue length any node's ``big`` queue ever
  reached because of the join: the joiner's own, and the rise of any other node's above its
  pre-join backlog (``QueueStats.max_len_seen``, reset before the join).

Targets (issue 3): p99 <= 1.0 s and 0 lost at 1,000 nodes; the join in <= 1 s with queue <= 500.
We print figures and ratios only, no timed assertions.
Usage: ``python bench/networkdb_sim.py [--sizes 100,1000] [--rate 1000] [--seconds 5] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnet.gossip.config import lan  # noqa: E402
from meshnet.networkdb import codec  # noqa: E402
from meshnet.networkdb import lan as ndb_lan  # noqa: E402
from meshnet.networkdb.events import EntryCreated  # noqa: E402
from meshnet.networkdb.messages import Envelope, PushPullState  # noqa: E402
from meshnet.networkdb.replication import attachment_to_wire  # noqa: E402
from sim.bootstrap import bootstrap_converged  # noqa: E402
from sim.ndb import NdbSim  # noqa: E402

P99_TARGET = 1.0
JOIN_TARGET = 1.0
QUEUE_TARGET = 500


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def build(n: int, seed: int, compression: bool) -> NdbSim:
    g = lan() if compression else lan().with_(enable_compression=False)
    s = NdbSim(n, seed=seed, gossip_config=g, ndb_config=ndb_lan())
    bootstrap_converged(s.c)
    return s


def join_all(s: NdbSim, network: str, nodes: list[Any], timeout: float = 60.0) -> float | None:
    t0 = s.c.now
    for node in nodes:
        s.join_network(node, network)
    want = len(nodes) - 1
    ok = s.c.run_until_true(
        lambda: all(len(s.db(x).peers(network)) >= want for x in nodes), timeout, every=0.1
    )
    return None if ok is None else ok - t0


def bootstrap_network(s: NdbSim, network: str) -> float:
    """Every node joins ``network`` already converged: each joins alone (no peers yet, so no join
    sync), its attachment broadcast is dropped, and every node then gets all the attachment records at
    once from a synthetic push-pull state (the public ``receive_push_pull_state``), as after the
    join rumours and syncs had settled. The join storm itself (N broadcasts, N x N join syncs) is
    not what this bench measures, and at N = 1,000 it costs more CPU than the writes. Returns 0.0
    (virtual seconds spent)."""
    c = s.c
    now = c.now
    for node in c.nodes:
        node.state.setdefault("networks", set()).add(network)
        db = s.db(node)
        db.join_network(network, now=now)
        db.broadcasts_to_send()  # every node learns every record below instead
    atts = tuple(attachment_to_wire(a, now) for x in c.nodes for a in s.db(x).attachments(network))
    payload = {
        x.name: codec.encode(Envelope(x.name, s.db(x).cluster_id, PushPullState(atts))) for x in c.nodes[:2]
    }
    for i, node in enumerate(c.nodes):
        src = c.nodes[1 if i == 0 else 0]
        data = payload[src.name]
        c.with_rider(
            node, lambda db, now, src=src, data=data: db.receive_push_pull_state(src.addr, data, now=now)
        )
    return 0.0


def propagation(s: NdbSim, rate: float, seconds: float, settle: float) -> dict[str, Any]:
    c = s.c
    n = len(c.nodes)
    for node in c.nodes:
        c.with_rider(node, lambda db, now: db.watch("t", "bench"))
    written: dict[str, tuple[float, str]] = {}
    seen: dict[str, int] = {}
    lat: list[float] = []

    def on(node: Any, t_us: int, ev: Any) -> None:
        if isinstance(ev, EntryCreated) and ev.network == "bench":
            w = written.get(ev.key)
            if w is not None and node.name != w[1]:
                lat.append(t_us / 1e6 - w[0])
                seen[ev.key] = seen.get(ev.key, 0) + 1

    s.listeners.append(on)
    total = int(rate * seconds)
    t0 = c.now + 0.1
    times = sorted(t0 + c.rng.random() * seconds for _ in range(total))
    for i, t in enumerate(times):
        writer = c.nodes[c.rng.randrange(n)]
        key = f"k{i}"

        def write(writer: Any = writer, key: str = key) -> None:
            written[key] = (c.now, writer.name)
            s.put(writer, "bench", "t", key, b"x" * 32)

        c.at(t, write)
    tot0 = c.totals()
    c.run_until(t0 + seconds)
    tot1 = c.totals()
    c.run_for(settle)
    s.listeners.remove(on)
    lost = sum((n - 1) - seen.get(k, 0) for k in written)
    sent = (tot1["datagram_bytes"] - tot0["datagram_bytes"]) + (tot1["stream_bytes"] - tot0["stream_bytes"])
    return {
        "writes": len(written),
        "samples": len(lat),
        "p50": pct(lat, 50) if lat else None,
        "p99": pct(lat, 99) if lat else None,
        "max": max(lat) if lat else None,
        "mean": statistics.mean(lat) if lat else None,
        "lost_pairs": lost,
        "lost_entries": sum(1 for k in written if seen.get(k, 0) < n - 1),
        "bytes_per_node_s": sent / n / seconds,
        "dgram_bytes_per_node_s": (tot1["datagram_bytes"] - tot0["datagram_bytes"]) / n / seconds,
    }


def big_join(s: NdbSim, entries: int, writers: int, timeout: float = 30.0) -> dict[str, Any]:
    c = s.c
    joiner = c.nodes[-1]
    others = c.nodes[:-1]
    join_all(s, "big", others)
    per = entries // writers
    for w in range(writers):
        node = others[w % len(others)]
        for i in range(per):
            s.put(node, "big", "t", f"w{w}-{i}", b"y" * 32)
        c.run_for(0.05)
    # Let the writes spread and the queues drain (retransmit limit x gossip interval, generously).
    c.run_until_true(
        lambda: all(s.db(x).stats("big")["queue_len"] == 0 for x in others[:: max(1, len(others) // 20)]),
        120.0,
        every=0.5,
    )
    have = [s.db(x).stats("big")["entries"] for x in others[:: max(1, len(others) // 10)]]
    before: dict[str, int] = {}
    for x in c.nodes:
        net = s.db(x)._nets.get("big")
        if net is not None:
            before[x.name] = len(net.queue)
            net.queue.stats.max_len_seen = len(net.queue)
    t0 = c.now
    s.join_network(joiner, "big")
    want = per * writers
    done = c.run_until_true(lambda: s.db(joiner).stats("big")["entries"] >= want, timeout, every=0.01)
    # The joiner's own queue, and how far any other node's queue rose above its pre-join length
    # (writers' queues may still hold their own backlog: that is not the join's doing).
    jnet = s.db(joiner)._nets.get("big")
    qjoiner = jnet.queue.stats.max_len_seen if jnet is not None else 0
    qrise = 0
    for x in others:
        net = s.db(x)._nets.get("big")
        if net is not None:
            qrise = max(qrise, net.queue.stats.max_len_seen - before[x.name])
    qmax = max(qjoiner, qrise)
    return {
        "entries": want,
        "others_hold": have,
        "join_s": None if done is None else done - t0,
        "joiner_has": s.db(joiner).stats("big")["entries"],
        "max_queue": qmax,
        "joiner_queue": qjoiner,
        "others_rise": qrise,
        "others_backlog": max(before.values()) if before else 0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=1000.0, help="writes/s in aggregate")
    p.add_argument("--seconds", type=float, default=5.0, help="virtual seconds of writes")
    p.add_argument("--settle", type=float, default=10.0, help="virtual seconds after the writes")
    p.add_argument("--join-entries", type=int, default=10_000)
    p.add_argument("--join-writers", type=int, default=10)
    p.add_argument("--join-size", type=int, default=100, help="cluster size for the join test (0: skip)")
    p.add_argument("--compression", action="store_true", help="LZW on (off by default: CPU)")
    p.add_argument(
        "--join-storm",
        action="store_true",
        help="every node joins 'bench' through the protocol (default: attachments bootstrapped converged)",
    )
    args = p.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}")
    for n in (int(x) for x in args.sizes.split(",") if x):
        w0 = time.perf_counter()
        s = build(n, args.seed, args.compression)
        if args.join_storm:
            tj = join_all(s, "bench", s.c.nodes)
            how = "all joined 'bench'"
        else:
            tj = bootstrap_network(s, "bench")
            how = "'bench' attachments bootstrapped converged (no join storm)"
        r = propagation(s, args.rate, args.seconds, args.settle)
        wall = time.perf_counter() - w0
        print(
            f"N={n}: converged bootstrap, {how} in {tj}s virtual; {r['writes']} writes "
            f"at {args.rate:.0f}/s over {args.seconds}s, settle {args.settle}s; {wall:.1f}s wall"
        )
        if r["samples"]:
            print(
                f"  latency writer->reader: p50 {r['p50']:.3f}s p99 {r['p99']:.3f}s max {r['max']:.3f}s "
                f"mean {r['mean']:.3f}s ({r['samples']} samples); p99/target {r['p99'] / P99_TARGET:.2f}"
            )
        print(f"  lost after settling: {r['lost_entries']} entries ({r['lost_pairs']} (entry, reader) pairs)")
        print(
            f"  bytes/s per node sent during writes: {r['bytes_per_node_s']:.0f} "
            f"(datagrams {r['dgram_bytes_per_node_s']:.0f})"
        )
        print(f"  load average now: {os.getloadavg()}")
        sys.stdout.flush()
    if args.join_size:
        w0 = time.perf_counter()
        s = build(args.join_size, args.seed, args.compression)
        r = big_join(s, args.join_entries, args.join_writers)
        wall = time.perf_counter() - w0
        js = "never" if r["join_s"] is None else f"{r['join_s']:.3f}s"
        print(
            f"join: N={args.join_size}, network of {r['entries']} entries (sampled holders {r['others_hold']}); "
            f"joiner complete in {js} virtual (has {r['joiner_has']}); max queue: joiner {r['joiner_queue']}, "
            f"others' rise {r['others_rise']} (their own pre-join backlog up to {r['others_backlog']}) "
            f"({wall:.1f}s wall)"
        )
        if r["join_s"] is not None:
            print(
                f"  ratios: join/target {r['join_s'] / JOIN_TARGET:.2f}, queue/target {r['max_queue'] / QUEUE_TARGET:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
