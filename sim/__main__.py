"""Command line: ``python -m sim gossip --nodes N --seed S [...]`` runs one seeded scenario.

Theory of operation. The scenario is scripted as scheduler callbacks on one ``Cluster``:

1. bootstrap (``--bootstrap joins``, the default): node 0 starts alone, each later node starts
   ``--stagger`` seconds after the previous one and joins ``--seeds-per-join`` random nodes that are
   already running (a real rollout, not a star on one seed). ``--bootstrap converged`` instead starts
   every node with the full view, as if the cluster had been running (``sim.bootstrap``: a synthetic
   push-pull reply through the core's own join path; the N^2 alive rumours the merge queues are cut,
   and the report says how many);
2. at ``--kill-at`` (default: 5 s after the last join) ``--kill`` random nodes are SIGKILLed;
3. ``--partition FRAC@START-END`` cuts a random FRAC of the nodes off from the rest between those
   instants, then heals;
4. the run stops at ``--duration`` seconds of virtual time.

A 50 ms virtual-time poll measures join convergence (every live node's view equals the live set, see
``sim.checks.membership_converged``) and convergence after the heal; a listener records every
``MemberFailed`` to time the detection of each killed node (first and last live observer) and to
count false deaths. Wall time is measured only for the report.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from typing import Any

from sim.checks import detection_bound, membership_converged, suspicion_timeout_bounds, unconverged
from sim.cluster import Cluster
from sim.network import profile
from sim.trace import Trace

POLL = 0.05


def _config(name: str) -> Any:
    from meshnet.gossip import config

    return {"lan": config.lan, "local": config.local, "wan": config.wan}[name]()


def _parse_partition(spec: str) -> tuple[float, float, float]:
    try:
        frac, span = spec.split("@")
        start, end = span.split("-")
        return float(frac), float(start), float(end)
    except ValueError:
        raise SystemExit(f"--partition wants FRAC@START-END (e.g. 0.5@20-35), got {spec!r}") from None


def run_gossip(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario described by ``args``; returns the figures (also printed by ``main``)."""
    wall0 = time.perf_counter()
    cfg = _config(args.profile)
    if args.no_compression:
        # Only the bytes on the wire change: piggyback budgets are computed before compression.
        cfg = cfg.with_(enable_compression=False)
    jsonl = open(args.jsonl, "w") if args.jsonl else None  # noqa: SIM115 (closed below)
    trace = Trace(jsonl=jsonl)
    c = Cluster(
        args.nodes, seed=args.seed, config=cfg, link=profile(args.profile, loss=args.loss), trace=trace
    )
    stagger = args.stagger if args.stagger is not None else min(0.05, 10.0 / max(1, args.nodes))
    boot: dict[str, Any] = {}
    if args.bootstrap == "converged":
        from sim.bootstrap import bootstrap_converged

        stagger = 0.0
        boot = bootstrap_converged(c, start_at=0.0)
        last_start = boot["converged_at"]
        boot["wall_s"] = round(time.perf_counter() - wall0, 2)
    else:
        last_start = c.bootstrap(stagger=stagger, seeds_per_join=args.seeds_per_join, start_at=0.0)
    kill_at = args.kill_at if args.kill_at is not None else last_start + 5.0
    r: dict[str, Any] = {
        "bootstrap": (
            f"converged: all {args.nodes} nodes started at t=0 with the full view from a synthetic push-pull "
            f"reply, installed by t={last_start:.3f}s; {boot['queued_cut']} alive rumours queued by the merge "
            f"were cut from the queues, {boot['parts_cut']} alive parts cut from datagrams "
            f"({boot['opaque']} compressed datagrams not inspectable); install took {boot['wall_s']}s wall"
            if boot
            else f"joins: staggered starts {stagger * 1000:.1f} ms apart, {args.seeds_per_join} seeds each"
        ),
        "nodes": args.nodes,
        "seed": args.seed,
        "profile": args.profile,
        "loss": args.loss,
        "compression": not args.no_compression,
        "stagger": stagger,
        "last_start": last_start,
    }
    killed: dict[str, float] = {}
    failed_at: dict[str, dict[str, float]] = {}
    false_deaths: list[str] = []
    partition = _parse_partition(args.partition) if args.partition else None
    cut: set[str] = set()

    def on_event(node: Any, t_us: int, ev: Any, flat: tuple[Any, ...]) -> None:
        if flat[0] != "MemberFailed":
            return
        victim = flat[1]
        if victim in killed:
            failed_at.setdefault(victim, {}).setdefault(node.name, t_us / 1e6)
        else:
            target = c.by_name.get(victim)
            partitioned = partition is not None and (victim in cut) != (node.name in cut)
            if target is not None and target.running and not partitioned:
                false_deaths.append(f"{t_us / 1e6:.3f} {node.name} -> {victim}")

    c.listeners.append(on_event)
    marks: dict[str, float | None] = {"join_converged": None, "heal_converged": None}
    waiting = {"join": True, "heal": False}
    heal_t = {"t": 0.0}

    def poll() -> None:
        if (waiting["join"] or waiting["heal"]) and c.now >= last_start and membership_converged(c):
            if waiting["join"]:
                marks["join_converged"] = c.now
                waiting["join"] = False
            if waiting["heal"]:
                marks["heal_converged"] = c.now
                waiting["heal"] = False
        c.at(c.now + POLL, poll)

    c.at(0.0, poll)

    def kill() -> None:
        victims = c.rng.sample(c.live_nodes(), min(args.kill, len(c.live_nodes())))
        for v in victims:
            killed[v.name] = c.now
            c.crash(v)

    if args.kill:
        c.at(kill_at, kill)
    if partition is not None:
        frac, p_start, p_end = partition

        def split() -> None:
            live = c.live_nodes()
            side = c.rng.sample(live, max(1, int(len(live) * frac)))
            cut.update(n.name for n in side)
            c.partition([side])

        def heal() -> None:
            c.heal()
            heal_t["t"] = c.now
            waiting["heal"] = True

        c.at(p_start, split)
        c.at(p_end, heal)

    window: dict[str, Any] = {}

    def snapshot() -> None:
        window.update(t=c.now, **c.totals())

    c.at(last_start + 2.0, snapshot)
    c.run_until(args.duration)
    wall = time.perf_counter() - wall0
    if jsonl is not None:
        jsonl.close()

    tot = c.totals()
    n_live = len(c.live_nodes())
    jc = marks["join_converged"]
    r["join_converged_after_last_start"] = None if jc is None else round(jc - last_start, 3)
    if jc is None:
        r["join_unconverged"] = unconverged(c, 5)
    smin, smax = suspicion_timeout_bounds(cfg, args.nodes)
    r["suspicion_timeout_min_max"] = (round(smin, 2), round(smax, 2))
    r["detection_bound"] = round(detection_bound(cfg, args.nodes), 2)
    det = {}
    for victim, t_kill in sorted(killed.items()):
        seen = failed_at.get(victim, {})
        live_names = [n.name for n in c.live_nodes()]
        missing = [n for n in live_names if n not in seen]
        times = [seen[n] for n in live_names if n in seen]
        det[victim] = {
            "first": round(min(seen.values()) - t_kill, 3) if seen else None,
            "last": round(max(times) - t_kill, 3) if times and not missing else None,
            "observers": len(times),
            "missing": len(missing),
        }
    r["kill_at"] = kill_at if args.kill else None
    r["detections"] = det
    if partition is not None:
        hc = marks["heal_converged"]
        r["heal_at"] = heal_t["t"]
        r["heal_converged_after"] = None if hc is None else round(hc - heal_t["t"], 3)
    r["false_deaths"] = len(false_deaths)
    r["false_death_examples"] = false_deaths[:5]
    duration = c.now
    r["per_node_per_s_all"] = {
        "datagrams": round(tot["datagrams"] / max(1, args.nodes) / duration, 2),
        "bytes": round(tot["datagram_bytes"] / max(1, args.nodes) / duration, 1),
        "streams": round(tot["streams"] / max(1, args.nodes) / duration, 3),
        "stream_bytes": round(tot["stream_bytes"] / max(1, args.nodes) / duration, 1),
    }
    if window and c.now > window["t"]:
        span = c.now - window["t"]
        r["per_node_per_s_after_join"] = {
            "datagrams": round((tot["datagrams"] - window["datagrams"]) / max(1, n_live) / span, 2),
            "bytes": round((tot["datagram_bytes"] - window["datagram_bytes"]) / max(1, n_live) / span, 1),
            "streams": round((tot["streams"] - window["streams"]) / max(1, n_live) / span, 3),
        }
    r["totals"] = tot
    r["violations"] = c.violations[:5]
    r["virtual_s"] = duration
    r["wall_s"] = round(wall, 2)
    r["events_per_wall_s"] = round(tot["sched_events"] / wall)
    r["trace_hash"] = trace.hexdigest()
    return r


def _print(r: dict[str, Any]) -> None:
    for key, value in r.items():
        if isinstance(value, dict) and key == "detections":
            print(f"{key}:")
            for victim, d in value.items():
                print(f"  {victim}: {d}")
        else:
            print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gossip", help="bootstrap N Swim nodes, kill some, partition, report figures")
    g.add_argument("--nodes", type=int, default=100)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--duration", type=float, default=60.0, help="virtual seconds")
    g.add_argument("--loss", type=float, default=0.0, help="datagram loss probability on every link")
    g.add_argument("--kill", type=int, default=0, help="nodes to SIGKILL")
    g.add_argument("--kill-at", type=float, default=None, help="virtual time of the kills")
    g.add_argument("--partition", default=None, help="FRAC@START-END: cut FRAC of nodes off, then heal")
    g.add_argument("--profile", choices=("lan", "local", "wan"), default="lan", help="config + link profile")
    g.add_argument(
        "--stagger", type=float, default=None, help="seconds between starts (default 10/N, <=50ms)"
    )
    g.add_argument("--seeds-per-join", type=int, default=3)
    g.add_argument(
        "--bootstrap",
        choices=("joins", "converged"),
        default="joins",
        help="joins: staggered join storm; converged: every node starts with the full view (steady state)",
    )
    g.add_argument("--no-compression", action="store_true", help="LZW off (pure-Python LZW dominates CPU)")
    g.add_argument("--jsonl", default=None, help="write the whole trace as JSON lines here")
    g.add_argument("--cprofile", type=int, default=0, help="print the top N functions by cumulative time")
    args = p.parse_args(argv)
    if args.cprofile:
        prof = cProfile.Profile()
        r = prof.runcall(run_gossip, args)
        _print(r)
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.cprofile)
        print(s.getvalue())
    else:
        _print(run_gossip(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
