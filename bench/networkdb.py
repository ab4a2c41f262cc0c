#!/usr/bin/env python3
"""NetworkDB propagation with real agents on loopback: latency, loss, bytes, and a 10,000-entry join.

    .venv/bin/python bench/networkdb.py                                # 20 agents, 1000 writes/s for 20 s
    .venv/bin/python bench/networkdb.py --nodes 5 --rate 200 --duration 5 --join-entries 2000   # smoke run
    .venv/bin/python bench/networkdb.py --json /tmp/ndb.json --check

Real-agent part (this script). The simulator part (100 and 1,000 nodes) is ``bench/networkdb_sim.py``;
``--sim`` runs it with the arguments that follow (``bench/networkdb.py --sim --sizes 100``).

1. **Cluster**: ``--nodes`` ``meshnet-agent`` processes on ``--base-ip``.1..N (``--dataplane none``,
   ``--profile``, a state directory each), all joined to the first; then every agent joins the network
   ``bench`` (``POST /v1/db/networks/bench``) and the run waits until each sees N-1 peers in it.
2. **Idle**: ``--idle`` seconds without writes: bytes/s per agent of the gossip layer alone, from the
   runtime's byte counters (``udp_bytes_*``/``tcp_bytes_*`` in ``GET /v1/agent``: every datagram and TCP
   frame the agent sent or received, so SWIM plus NetworkDB).
3. **Writes**: ``--rate`` writes/s in aggregate for ``--duration`` s, each a new key of table ``kv``
   (``PUT /v1/db/bench/kv/KEY``, ``--value-bytes`` each), writers round-robin over the agents, issued open
   loop on a schedule by ``--clients`` threads (the achieved rate is printed). Bytes/s per agent over the
   window, and each agent's largest ``bench`` queue (``queue.max_len_seen``).
4. **Settle**: until every agent holds every key with none hidden (or ``--settle`` s). Then every
   agent's table is read once (hidden entries included, counted apart) with ``seen_at``: the CLOCK_MONOTONIC instant that agent's view got the version (stamped by the
   agent when the core's watch reported it, i.e. when it became readable through the API). Latency of a
   (key, reader) pair = reader's ``seen_at`` - writer's ``seen_at`` (the instant the write was applied on
   the writer); both are the same system-wide clock on one host. Every pair of a key and a reader other
   than its writer counts; a pair missing after the settle is a lost entry (one held but hidden, because
   that reader saw the writer failed at that moment, is not lost and is counted apart). p50/p99/max over
   all pairs.
   The API round trip of the PUTs is printed separately (client side).
5. **Join**: ``--join-members`` agents (the first ones) join network ``big`` and fill it with
   ``--join-entries`` entries (spread over them, as fast as the API takes them); once each holds all of
   them, the last agent joins ``big`` (``POST``, waiting for the join sync). Time from the join request
   until the joiner holds every entry (its last ``seen_at`` of a ``big`` entry, and its stats polled every
   250 ms), the joiner's largest ``big`` queue (``queue.max_len_seen``, exact) and the largest ``big``
   queue sampled at the members during the join.

Targets (issue 3): p99 <= 1.5 s with 20 real agents; 10,000-entry join <= 3 s with the joiner's queue <=
500 throughout; 0 lost. ``--check`` exits 1 when one is missed (2 when the cluster failed to run). Every
agent is started by this script, stopped by its PID (SIGTERM, then SIGKILL after a grace) and dies with
it (PR_SET_PDEATHSIG); the work directory (sockets, logs, state) is removed unless ``--keep``. All
traffic stays on 127.0.0.0/8. On a shared 2-core machine 20 Python agents plus this client compete for
CPU: read the figures with the machine's load in mind (printed at the start).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshnet import ctl  # noqa: E402
from tests.interop.serfctl import Processes, meshnet_command  # noqa: E402

NETWORK = "bench"
TABLE = "kv"
BIG = "big"
TARGETS = {"p99_s": 1.5, "join_s": 3.0, "join_queue": 500, "lost": 0}


@dataclass
class Agent:
    name: str
    ip: str
    api: str
    port: int = 0
    pid: int = 0

    def call(self, method: str, target: str, body: Any = None, timeout: float = 30.0) -> Any:
        return ctl.call(self.api, method, target, body=body, timeout=timeout)

    def try_get(self, target: str) -> Any:
        try:
            return self.call("GET", target, timeout=10)
        except (ctl.AgentError, ctl.AgentUnreachable):
            return None


@dataclass
class Figures:
    nodes: int
    compression: bool
    rate_target: float
    duration_s: float
    writes_sent: int = 0
    writes_failed: int = 0
    rate_achieved: float = 0.0
    put_rtt_p50_ms: float = 0.0
    put_rtt_p99_ms: float = 0.0
    pairs: int = 0
    lost: int = 0
    hidden_at_read: int = 0
    latency_p50_s: float = 0.0
    latency_p99_s: float = 0.0
    latency_max_s: float = 0.0
    settle_s: float = 0.0
    idle_bytes_per_s_per_node: float = 0.0
    write_bytes_per_s_per_node: float = 0.0
    write_bytes_per_s_per_node_max: float = 0.0
    bench_queue_max: int = 0
    join_entries: int = 0
    join_s: float | None = None
    join_api_s: float | None = None
    join_queue_max_joiner: int | None = None
    join_queue_max_members_sampled: int | None = None
    join_queue_members_before: int | None = None
    batch: int = 1
    write_window_s: float = 0.0
    agents_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    load_during: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)


def wait_until(pred, timeout: float, what: str, procs: Processes, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n{procs.report(15)}")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


def traffic_bytes(agent: Agent) -> int:
    info = agent.call("GET", "/v1/agent")
    rt = info["stats"]["runtime"]
    return sum(
        rt.get(k, 0) for k in ("udp_bytes_sent", "udp_bytes_received", "tcp_bytes_sent", "tcp_bytes_received")
    )


def sent_bytes(agents: list[Agent]) -> list[int]:
    out = []
    for a in agents:
        rt = a.call("GET", "/v1/agent")["stats"]["runtime"]
        out.append(rt.get("udp_bytes_sent", 0) + rt.get("tcp_bytes_sent", 0))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (from /proc/PID/stat; gone processes count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# -------------------------------------------------------------------------------------------- cluster


def start_cluster(args: argparse.Namespace, workdir: Path, procs: Processes) -> list[Agent]:
    agents: list[Agent] = []
    for i in range(1, args.nodes + 1):
        name = f"ndb-{i}"
        ip = f"{args.base_ip}.{i}"
        api = str(workdir / f"{name}.sock")
        join = [(agents[0].ip, agents[0].port)] if agents else []
        extra = ["--config", str(args.config_file)] if args.config_file else []
        argv = meshnet_command(name, (ip, 0), api=Path(api), join=join, profile=args.profile, extra=extra)
        proc = procs.spawn(name, argv)
        agent = Agent(name, ip, api, pid=proc.pid)
        agents.append(agent)
        if i == 1:
            wait_until(lambda a=agent: a.try_get("/v1/agent") is not None, 30, "the seed's API", procs)
            agents[0].port = agents[0].call("GET", "/v1/agent")["port"]
    names = {a.name for a in agents}

    def converged() -> bool:
        for a in agents:
            body = a.try_get("/v1/members")
            if body is None or {m["name"] for m in body["members"] if m["state"] == "alive"} != names:
                return False
        return True

    wait_until(converged, 120, f"all {args.nodes} agents alive everywhere", procs, interval=0.5)
    for a in agents:
        a.port = a.call("GET", "/v1/agent")["port"]
    return agents


def join_all(agents: list[Agent], network: str, procs: Processes) -> None:
    for a in agents:
        a.call("POST", f"/v1/db/networks/{network}?wait=false")
    n = len(agents)
    wait_until(
        lambda: all(
            len((a.try_get(f"/v1/db/{network}/peers") or {"peers": []})["peers"]) == n - 1 for a in agents
        ),
        60,
        f"every agent to see {n - 1} peers in {network}",
        procs,
        interval=0.5,
    )


# -------------------------------------------------------------------------------------------- writes


def run_writes(args: argparse.Namespace, agents: list[Agent], figs: Figures) -> dict[str, int]:
    """Open-loop writes on a schedule; returns key -> writer index."""
    total = int(args.rate * args.duration)
    value = "v" * args.value_bytes
    jobs: queue.Queue[tuple[int, float] | None] = queue.Queue()
    rtts: list[float] = []
    failed: list[str] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.5

    n = len(agents)
    batch = max(1, args.batch)

    def worker() -> None:
        while (job := jobs.get()) is not None:
            seqs, due = job
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            agent = agents[seqs[0] % n]
            t0 = time.monotonic()
            try:
                if len(seqs) == 1:
                    agent.call("PUT", f"/v1/db/{NETWORK}/{TABLE}/k{seqs[0]:07d}", {"value": value})
                else:
                    items = [{"key": f"k{seq:07d}", "value": value} for seq in seqs]
                    agent.call("POST", f"/v1/db/{NETWORK}/{TABLE}", {"entries": items})
            except (ctl.AgentError, ctl.AgentUnreachable) as exc:
                with lock:
                    failed.extend(f"k{seq}: {exc}" for seq in seqs)
                continue
            with lock:
                rtts.extend([time.monotonic() - t0] * len(seqs))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    # Write seq goes to agent seq % n at start + seq / rate. With --batch B, each agent's writes are
    # grouped B at a time into one batch request, sent at the due time of the batch's last write (no
    # write is issued early; the first of a batch waits up to B * n / rate).
    pending: dict[int, list[int]] = {}
    for seq in range(total):
        group = pending.setdefault(seq % n, [])
        group.append(seq)
        if len(group) == batch or seq + n >= total:
            jobs.put((group, start + seq / args.rate))
            del pending[seq % n]
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    figs.writes_sent = total
    figs.writes_failed = len(failed)
    figs.rate_achieved = round(len(rtts) / elapsed, 1) if elapsed > 0 else 0.0
    figs.put_rtt_p50_ms = round(1000 * pct(rtts, 0.5), 1)
    figs.put_rtt_p99_ms = round(1000 * pct(rtts, 0.99), 1)
    if failed:
        figs.notes.append(f"{len(failed)} writes failed, e.g. {failed[0]}")
    failed_keys = {f.split(":", 1)[0] for f in failed}
    return {f"k{seq:07d}": seq % len(agents) for seq in range(total) if f"k{seq}" not in failed_keys}


def measure_latency(
    args: argparse.Namespace, agents: list[Agent], written: dict[str, int], figs: Figures, procs: Processes
) -> None:
    want = len(written)
    t0 = time.monotonic()

    def settled() -> bool:
        # Every key held, none hidden (a writer wrongly declared failed by a starved peer hides its
        # entries there until it is seen alive again).
        for a in agents:
            s = a.try_get(f"/v1/db/stats?network={NETWORK}")
            if s is None or s.get("entries", 0) < want or s.get("hidden", 0) > 0:
                return False
        return True

    deadline = time.monotonic() + args.settle
    while time.monotonic() < deadline and not settled():
        time.sleep(2.0)  # stats are O(entries) in each agent: poll gently (latency comes from seen_at)
    figs.settle_s = round(time.monotonic() - t0, 2)
    views: list[dict[str, dict]] = []
    for a in agents:
        body = a.call("GET", f"/v1/db/{NETWORK}/{TABLE}?hidden=true", timeout=120)
        views.append({e["key"]: e for e in body["entries"]})
    latencies: list[float] = []
    slow: list[tuple[float, str, int, int]] = []  # pairs over 5 s: (latency, key, writer, reader)
    lost = hidden = 0
    for key, w in written.items():
        origin = views[w].get(key)
        if origin is None or origin.get("seen_at") is None:
            lost += len(agents) - 1
            continue
        for r, view in enumerate(views):
            if r == w:
                continue
            e = view.get(key)
            if e is None or e.get("seen_at") is None:
                lost += 1
                continue
            hidden += bool(e.get("hidden"))
            latencies.append(e["seen_at"] - origin["seen_at"])
            if latencies[-1] > 5.0:
                slow.append((latencies[-1], key, w, r))
    figs.pairs = len(written) * (len(agents) - 1)
    figs.lost = lost
    figs.hidden_at_read = hidden
    figs.latency_p50_s = round(pct(latencies, 0.5), 3)
    figs.latency_p99_s = round(pct(latencies, 0.99), 3)
    figs.latency_max_s = round(max(latencies), 3) if latencies else float("nan")
    if slow:
        # Which pairs make the tail: a writer hidden by its peers shows as one writer x many readers,
        # a reader that missed gossip until a bulk sync as one reader x many writers.
        by_w = collections.Counter(w + 1 for _, _, w, _ in slow)
        by_r = collections.Counter(r + 1 for _, _, _, r in slow)
        worst = sorted(slow, reverse=True)[:3]
        figs.notes.append(
            f"{len(slow)} pairs over 5 s; by writer agent {dict(by_w.most_common(5))}, by reader agent "
            f"{dict(by_r.most_common(5))}; worst "
            + ", ".join(f"{k} a{w + 1}->a{r + 1} {lat:.1f}s" for lat, k, w, r in worst)
        )


# -------------------------------------------------------------------------------------------- join


def run_join(args: argparse.Namespace, agents: list[Agent], figs: Figures, procs: Processes) -> None:
    members = agents[: args.join_members]
    joiner = agents[-1]
    for m in members:
        m.call("POST", f"/v1/db/networks/{BIG}?wait=false")
    wait_until(
        lambda: all(
            len((m.try_get(f"/v1/db/{BIG}/peers") or {"peers": []})["peers"]) == len(members) - 1
            for m in members
        ),
        60,
        f"{len(members)} members in {BIG}",
        procs,
    )
    jobs: queue.Queue[int | None] = queue.Queue()
    value = "j" * args.value_bytes

    def worker() -> None:
        while (seq := jobs.get()) is not None:
            m = members[seq % len(members)]
            for _ in range(3):
                try:
                    m.call("PUT", f"/v1/db/{BIG}/{TABLE}/j{seq:06d}", {"value": value})
                    break
                except (ctl.AgentError, ctl.AgentUnreachable):
                    time.sleep(0.1)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for seq in range(args.join_entries):
        jobs.put(seq)
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    n = args.join_entries
    wait_until(
        lambda: all((m.try_get(f"/v1/db/stats?network={BIG}") or {}).get("entries", 0) >= n for m in members),
        120,
        f"every member of {BIG} to hold {n} entries",
        procs,
        interval=0.5,
    )
    time.sleep(args.quiet)  # let the fill's gossip queues drain before the join
    figs.join_entries = n
    result: dict[str, Any] = {}

    def do_join() -> None:
        t = time.monotonic()
        try:
            result["body"] = joiner.call("POST", f"/v1/db/networks/{BIG}")
        except (ctl.AgentError, ctl.AgentUnreachable) as exc:
            result["error"] = str(exc)
        result["api_s"] = time.monotonic() - t

    figs.join_queue_members_before = max(
        (m.try_get(f"/v1/db/stats?network={BIG}") or {}).get("queue_len", 0) for m in members
    )
    t_join = time.monotonic()
    th = threading.Thread(target=do_join, daemon=True)
    th.start()
    sampled = 0
    done_at = None
    deadline = t_join + 60
    # Stats are O(entries) in each agent, so poll every 0.25 s: the join time itself comes from seen_at.
    while time.monotonic() < deadline:
        s = joiner.try_get(f"/v1/db/stats?network={BIG}") or {}
        if s.get("entries", 0) >= n and done_at is None:
            done_at = time.monotonic()
        for m in members:
            ms = m.try_get(f"/v1/db/stats?network={BIG}") or {}
            sampled = max(sampled, ms.get("queue_len", 0))
        if done_at is not None and not th.is_alive():
            break
        time.sleep(0.25)
    th.join(timeout=30)
    if "error" in result:
        figs.notes.append(f"join request failed: {result['error']}")
    figs.join_api_s = round(result.get("api_s", float("nan")), 3)
    body = joiner.call("GET", f"/v1/db/{BIG}/{TABLE}", timeout=120)
    seen = [e["seen_at"] for e in body["entries"] if e.get("seen_at") is not None]
    if len(seen) >= n:
        figs.join_s = round(max(seen) - t_join, 3)
    elif done_at is not None:
        figs.join_s = round(done_at - t_join, 3)
    else:
        figs.notes.append(f"the joiner holds only {len(body['entries'])} of {n} entries after 60 s")
    stats = joiner.call("GET", f"/v1/db/stats?network={BIG}")
    figs.join_queue_max_joiner = stats["queue"]["max_len_seen"]
    figs.join_queue_max_members_sampled = sampled


# -------------------------------------------------------------------------------------------- main


def run_real(args: argparse.Namespace) -> Figures:
    figs = Figures(
        nodes=args.nodes,
        compression=not args.no_compression,
        rate_target=args.rate,
        duration_s=args.duration,
        batch=max(1, args.batch),
    )
    workdir = Path(tempfile.mkdtemp(prefix="meshnet-ndb-bench-"))
    procs = Processes(workdir / "logs")
    args.config_file = None
    toml = ""
    if args.no_compression:
        toml += "[gossip]\nenable_compression = false\n"
    if args.networkdb:
        toml += "[networkdb]\n" + "".join(f"{kv}\n" for kv in args.networkdb)
    if toml:
        args.config_file = workdir / "agent.toml"
        args.config_file.write_text(toml)
        figs.notes.append("agent config: " + toml.replace("\n", " ").strip())
    agents: list[Agent] = []
    try:
        print(
            f"load average before start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)"
        )
        t = time.monotonic()
        agents = start_cluster(args, workdir, procs)
        print(f"{args.nodes} agents up and converged in {time.monotonic() - t:.1f}s")
        join_all(agents, NETWORK, procs)
        time.sleep(args.quiet)

        before = sent_bytes(agents)
        time.sleep(args.idle)
        after = sent_bytes(agents)
        figs.idle_bytes_per_s_per_node = round(
            statistics.mean(b - a for a, b in zip(before, after)) / args.idle, 1
        )

        print(f"writing {args.rate:.0f}/s for {args.duration:.0f}s over {args.nodes} agents ...")
        before = sent_bytes(agents)
        pids = [a.pid for a in agents]
        cpu0, own0, load0 = cpu_seconds(pids), own_cpu_seconds(), os.getloadavg()[0]
        drops0 = udp_rcvbuf_errors()
        t = time.monotonic()
        written = run_writes(args, agents, figs)
        window = time.monotonic() - t
        cpu1, own1 = cpu_seconds(pids), own_cpu_seconds()
        figs.write_window_s = round(window, 2)
        figs.agents_cpu_s = round(cpu1 - cpu0, 2)
        figs.client_cpu_s = round(own1 - own0, 2)
        figs.load_during = (round(load0, 2), round(os.getloadavg()[0], 2))
        after = sent_bytes(agents)
        per_node = [(b - a) / window for a, b in zip(before, after)]
        figs.write_bytes_per_s_per_node = round(statistics.mean(per_node), 1)
        figs.write_bytes_per_s_per_node_max = round(max(per_node), 1)
        drops = udp_rcvbuf_errors() - drops0
        measure_latency(args, agents, written, figs, procs)
        # Datagrams the kernel dropped because a receiver's socket buffer was full (whole host's
        # namespace: other jobs' UDP counts too): a starved agent loses gossip, a bulk sync repairs it.
        figs.notes.append(f"UDP receive-buffer drops in the write window (host-wide): {drops}")
        figs.notes.append("losses summed over agents: " + loss_counters(agents))
        figs.bench_queue_max = max(
            a.call("GET", f"/v1/db/stats?network={NETWORK}")["queue"]["max_len_seen"] for a in agents
        )
        if args.join_entries > 0:
            print(
                f"filling {BIG} with {args.join_entries} entries on {args.join_members} agents, then a join ..."
            )
            run_join(args, agents, figs, procs)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return figs
    finally:
        stop(procs)
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def loss_counters(agents: list[Agent]) -> str:
    """Where an agent can lose a gossiped entry: its datagram send queue and socket errors, the bench
    network's queue evictions, and NetworkDB's dropped/rejected counters (non-zero ones only)."""
    total: collections.Counter[str] = collections.Counter()
    for a in agents:
        rt = a.call("GET", "/v1/agent")["stats"]["runtime"]
        for k in ("udp_queue_dropped", "udp_send_errors", "udp_receive_errors"):
            total[k] += rt.get(k, 0)
        st = a.call("GET", "/v1/db/stats")
        for k, v in st["node"].items():
            if isinstance(v, int) and ("dropped" in k or "rejected" in k):
                total[k] += v
        for net in st["networks"]:
            if net["network"] == NETWORK:
                for k in ("evicted", "dropped_full"):
                    total[f"queue_{k}"] += net["queue"].get(k, 0)
    return ", ".join(f"{k} {v}" for k, v in sorted(total.items()) if v) or "none"


def udp_rcvbuf_errors() -> int:
    """``Udp: RcvbufErrors`` of this network namespace (``/proc/net/snmp``)."""
    rows = [
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")
    ]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def stop(procs: Processes) -> None:
    """SIGTERM every agent (by PID), wait for them together, SIGKILL what is left."""
    for p in procs.procs:
        if p.running():
            p.send(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs.procs:
        p.wait(max(0.1, deadline - time.monotonic()))
    procs.stop_all()


def run_sim(rest: list[str]) -> int:
    """The simulator half (100 and 1,000 nodes in virtual time): ``bench/networkdb_sim.py``'s main."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "networkdb_sim", Path(__file__).with_name("networkdb_sim.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(rest) or 0)


def report(figs: Figures) -> dict[str, bool]:
    f = figs
    print()
    print(
        f"NetworkDB, {f.nodes} real agents on loopback (datagram compression {'on' if f.compression else 'off'})"
    )
    print(
        f"  writes              {f.writes_sent} over {f.duration_s:.0f}s, target {f.rate_target:.0f}/s, achieved {f.rate_achieved}/s, failed {f.writes_failed}"
    )
    print(
        f"  PUT round trip      p50 {f.put_rtt_p50_ms} ms, p99 {f.put_rtt_p99_ms} ms (client side; "
        f"{f.batch} write(s) per request)"
    )
    print(
        f"  CPU in the write window ({f.write_window_s}s): agents {f.agents_cpu_s}s in total "
        f"({f.agents_cpu_s / max(f.write_window_s, 1e-9):.2f} cores), bench client {f.client_cpu_s}s; "
        f"load average {f.load_during[0]} -> {f.load_during[1]}"
    )
    print(
        f"  propagation         p50 {f.latency_p50_s}s  p99 {f.latency_p99_s}s  max {f.latency_max_s}s  over {f.pairs} (key, reader) pairs"
    )
    print(
        f"  lost after settle   {f.lost} (settled in {f.settle_s}s; {f.hidden_at_read} pairs held but hidden at the read: writer seen failed)"
    )
    print(
        f"  bytes/s per agent   idle {f.idle_bytes_per_s_per_node:.0f}, while writing {f.write_bytes_per_s_per_node:.0f} (max {f.write_bytes_per_s_per_node_max:.0f}) sent"
    )
    print(f"  bench queue         max {f.bench_queue_max} (largest queue.max_len_seen of any agent)")
    if f.join_entries:
        print(
            f"  join of {f.join_entries}       {f.join_s}s until the joiner held all (API answered in {f.join_api_s}s); joiner queue max {f.join_queue_max_joiner}"
        )
        print(
            f"  members' big queue  {f.join_queue_members_before} just before the join (their own fill writes still draining), max {f.join_queue_max_members_sampled} sampled during it"
        )
    for note in f.notes:
        print(f"  note: {note}")
    verdict = {
        f"p99 <= {TARGETS['p99_s']}s": f.latency_p99_s <= TARGETS["p99_s"],
        "0 lost": f.lost == 0,
    }
    if f.join_entries:
        verdict[f"join <= {TARGETS['join_s']}s"] = f.join_s is not None and f.join_s <= TARGETS["join_s"]
        verdict[f"joiner queue <= {TARGETS['join_queue']}"] = (
            f.join_queue_max_joiner is not None and f.join_queue_max_joiner <= TARGETS["join_queue"]
        )
    print("targets: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in verdict.items()))
    return verdict


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--sim" in argv:  # everything after it is the simulator bench's (its option names overlap ours)
        return run_sim(argv[argv.index("--sim") + 1 :])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=20, help="real agents (default 20)")
    p.add_argument("--rate", type=float, default=1000.0, help="writes/s in aggregate (default 1000)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of writes (default 20)")
    p.add_argument("--value-bytes", type=int, default=64, help="bytes per value (default 64)")
    p.add_argument("--clients", type=int, default=24, help="client threads issuing writes (default 24)")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="writes per API request (POST /v1/db/NET/TABLE batch put; 1 = one PUT per write)",
    )
    p.add_argument("--settle", type=float, default=60.0, help="max seconds to wait for every key everywhere")
    p.add_argument("--idle", type=float, default=5.0, help="idle window for the baseline bytes/s (default 5)")
    p.add_argument("--quiet", type=float, default=2.0, help="pause between phases, s (default 2)")
    p.add_argument("--join-entries", type=int, default=10_000, help="entries in the joined network (0: skip)")
    p.add_argument("--join-members", type=int, default=5, help="agents that fill it (default 5)")
    p.add_argument("--base-ip", default="127.0.12", help="first three octets of the agents' addresses")
    p.add_argument("--profile", default="local", choices=["lan", "wan", "local"], help="timing profile")
    p.add_argument(
        "--no-compression",
        action="store_true",
        help="agents send uncompressed datagrams ([gossip] enable_compression = false; LZW is pure Python)",
    )
    p.add_argument(
        "--networkdb",
        action="append",
        metavar="FIELD=VALUE",
        help="a [networkdb] override for every agent (TOML syntax, e.g. gossip_packets=8); repeat for more",
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, state)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument(
        "--sim",
        action="store_true",
        help="run the simulator part instead: bench/networkdb_sim.py with the arguments after --sim",
    )
    args = p.parse_args(argv)
    if not args.base_ip.startswith("127."):
        p.error("--base-ip must be inside 127.0.0.0/8")
    if not 2 <= args.nodes <= 250:
        p.error("--nodes must be 2..250")
    if args.join_entries and not 2 <= args.join_members < args.nodes:
        p.error("--join-members must be at least 2 and below --nodes (the last agent is the joiner)")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        figs = run_real(args)
    except RuntimeError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    verdict = report(figs)
    if args.json:
        args.json.write_text(json.dumps({"figures": asdict(figs), "verdict": verdict}, indent=2))
    return 1 if args.check and not all(verdict.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
