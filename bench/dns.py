#!/usr/bin/env python3
"""The sandbox resolver under dnsperf, against dnsmasq serving the same names, in the same run (issue 6).

    .venv/bin/python bench/dns.py                          # 1,000 names, 10 s per figure
    .venv/bin/python bench/dns.py --duration 5 --json /tmp/dns.json
    .venv/bin/python bench/dns.py --propagation 20         # also attach->resolve across hosts (netns harness)

Root only. Everything runs in a namespace the bench creates (``mnbench-dns-PID``, loopback only) plus one
upstream dnsmasq on 127.66.3.53 in the bench's own namespace; everything is removed at the end, also on
failure. Setup:

- the **resolver**: a child process running meshnet's sandbox server (``meshnet.runtime.dns_server.
  ResolverServer`` around ``meshnet.dns.Resolver``, the code ``DnsService`` runs per sandbox) with a
  ``NameTable`` of ``--names`` containers ``cN`` on network ``bench`` (10.x.y.z), listening on
  127.0.0.11:53 inside the namespace (sockets made there by the helper thread, served by one trio loop),
  upstream = the dnsmasq on 127.66.3.53 (reached from the child's own namespace, as the agent does);
- the **reference**: dnsmasq in the same namespace on 127.0.0.12:53 answering the same names (``cN``
  and ``cN.bench``) from a hosts file, no upstream;
- the **upstream**: dnsmasq on 127.66.3.53 with ``--names`` host records ``eN.example.test``.

Figures (dnsperf 2.x run inside the namespace; p99 from its per-query ``-v`` lines):

1. cluster names at full speed (``-q 100`` outstanding, one client): resolver qps and p99, dnsmasq qps
   and p99, and the ratio resolver/dnsmasq (target >= 0.3);
2. cluster names at ``--rate`` (1,000) qps against the resolver: p99 (target <= 2 ms);
3. forwarded names (``eN.example.test``) at full speed through the resolver to the upstream dnsmasq, and
   the same names asked of the upstream directly (the ratio shows the forwarding cost);
4. with ``--propagation N``: a two-host netns harness (real agents, ``--dataplane kernel``); N times a
   container is attached on h1 while a poller inside a container on h2 asks the h2 resolver for its
   name every 5 ms; the time from the attach call until the first NOERROR answer (p50, p99), and how
   long the attach API call itself took (p50: sandbox, veth, address, entry written).

Each figure also gives the resolver child's CPU time (utime+stime from /proc) and the load average:
2 cores shared with other work make wall-clock figures noisy; rerun for stable numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is bench/dns.py: its directory must not shadow dnspython's ``dns`` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

UPSTREAM_IP = "127.66.3.53"
RESOLVER_IP = "127.0.0.11"
REFERENCE_IP = "127.0.0.12"


def _addr(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{(i & 255) or 1}"


# ----------------------------------------------------------------------------------------------- child


def serve_child(netns: str, names: int, upstream: str) -> None:
    """The resolver process: build the table, listen in ``netns``, print READY, serve until SIGTERM."""
    import trio

    from meshnet.dns import EndpointRecord, NameTable, NetworkInfo, Resolver
    from meshnet.runtime.dns_server import ResolverServer
    from meshnet.runtime.dns_svc import parse_upstream

    table = NameTable()
    table.upsert_network(NetworkInfo("n1", "bench", ("10.0.0.0/8",)))
    for i in range(names):
        table.upsert_endpoint("n1", EndpointRecord(f"e{i}", f"c{i}", (_addr(i),)))
    resolver = Resolver(table, rng=random.SystemRandom(), scope=("n1",), upstreams=[parse_upstream(upstream)])
    server = ResolverServer(resolver, netns=netns)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            print("READY", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    print(
                        json.dumps({"resolver": resolver.stats.as_dict(), "sockets": server.stats}),
                        flush=True,
                    )
                    nursery.cancel_scope.cancel()
                    return

    trio.run(main)


# ----------------------------------------------------------------------------------------------- parent


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dnsmasq(listen: str, *extra: str, netns: str | None = None) -> subprocess.Popen:
    argv = [
        shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--listen-address={listen}",
        "--port=53",
        "--pid-file=",
        "--user=root",
        "--cache-size=10000",
        *extra,
    ]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def dnsperf(netns: str | None, server: str, data: Path, duration: float, *, rate: int | None = None) -> dict:
    """One dnsperf run inside ``netns`` (None: here): qps, p50 and p99 latency (ms), lost, rcodes."""
    argv = ["dnsperf", "-s", server, "-d", str(data), "-l", str(duration), "-v"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    argv += ["-q", "100", "-t", "2"]
    if rate is not None:
        argv += ["-Q", str(rate)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    lat: list[float] = []
    rcodes: dict[str, int] = {}
    qps = lost = None
    for line in res.stdout.splitlines():
        if line.startswith("> "):
            parts = line.split()
            rcodes[parts[1]] = rcodes.get(parts[1], 0) + 1
            if parts[1] != "T":  # "> T NAME TYPE": a timeout, counted in ``lost``
                lat.append(float(parts[-1]))
        elif "Queries per second:" in line:
            qps = float(line.split(":")[1])
        elif "Queries lost:" in line:
            lost = int(line.split(":")[1].split()[0])
    if qps is None:
        raise RuntimeError(f"dnsperf failed: {res.stdout[-2000:]} {res.stderr[-2000:]}")
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
    p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
    return {
        "qps": round(qps),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "lost": lost,
        "rcodes": rcodes,
    }


def measure(label: str, fn, server_pid: int | None) -> dict:
    """Run one figure; with ``server_pid``, add the server's CPU time over it and its CPU per answer."""
    cpu0 = _cpu(server_pid) if server_pid else 0.0
    t0 = time.monotonic()
    out = fn()
    wall = time.monotonic() - t0
    if server_pid:
        cpu = _cpu(server_pid) - cpu0
        out["server_cpu_s"] = round(cpu, 2)
        out["server_cpu_pct"] = round(100 * cpu / wall, 1)
        answered = sum(n for code, n in out.get("rcodes", {}).items() if code != "T")
        if answered:
            out["server_cpu_us_per_query"] = round(1e6 * cpu / answered, 1)
    out["loadavg"] = round(os.getloadavg()[0], 1)
    print(f"  {label:<46} {json.dumps(out)}", flush=True)
    return out


_POLLER = r"""
import socket, struct, sys, time, random
name = sys.argv[1]; deadline = time.monotonic() + float(sys.argv[2])
q = lambda i: struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.005)
print("GO", flush=True)
while time.monotonic() < deadline:
    i = random.getrandbits(16)
    s.sendto(q(i), ("127.0.0.11", 53))
    try:
        while True:
            d = s.recv(4096)
            if d[:2] == struct.pack("!H", i) and d[3] & 15 == 0 and struct.unpack("!H", d[6:8])[0] > 0:
                print("OK", time.monotonic(), flush=True); sys.exit(0)
    except socket.timeout:
        pass
print("TIMEOUT", flush=True)
"""


def propagation(rounds: int) -> dict:
    """Attach on h1 -> first answer on h2 (netns harness, real agents)."""
    from sim.netns.harness import Harness

    run_dir = tempfile.mkdtemp(prefix="mnbench-dns-harness-")
    h = Harness(prefix="dnsb-", run_dir=run_dir, die_with_parent=True)
    times = []
    calls = []  # how long the attach API call itself took
    try:
        h.up(2)
        h.container("probe", host=2, network="bench")
        h.container("seed", host=1, network="bench")
        for i in range(rounds):
            name = f"p{i}"
            poller = subprocess.Popen(
                h.exec_argv("probe", [sys.executable, "-c", _POLLER, name, "20"]),
                stdout=subprocess.PIPE,
                text=True,
            )
            assert poller.stdout is not None
            assert poller.stdout.readline().strip() == "GO"
            t0 = time.monotonic()
            h.container(name, host=1, network="bench")
            calls.append(time.monotonic() - t0)
            line = poller.stdout.readline().split()
            poller.wait(30)
            if line and line[0] == "OK":
                times.append(float(line[1]) - t0)
            h.remove_container(name)
    finally:
        h.down()
        shutil.rmtree(run_dir, ignore_errors=True)
    times.sort()
    if not times:
        return {"rounds": rounds, "resolved": 0}
    return {
        "rounds": rounds,
        "resolved": len(times),
        "p50_ms": round(times[len(times) // 2] * 1000, 1),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 1),
        "max_ms": round(times[-1] * 1000, 1),
        "attach_call_p50_ms": round(sorted(calls)[len(calls) // 2] * 1000, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run")
    p.add_argument("--rate", type=int, default=1000, help="qps of the latency run")
    p.add_argument("--propagation", type=int, default=0, metavar="N", help="attach->resolve rounds (harness)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--serve-child", nargs=3, metavar=("NETNS", "NAMES", "UPSTREAM"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_child:
        serve_child(args.serve_child[0], int(args.serve_child[1]), args.serve_child[2])
        return 0
    if os.geteuid() != 0:
        print("bench/dns.py needs root (namespaces)", file=sys.stderr)
        return 2
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is missing; run scripts/bootstrap", file=sys.stderr)
            return 2
    ns = f"mnbench-dns-{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="mnbench-dns-"))
    procs: list[subprocess.Popen] = []
    child = None
    results: dict = {"names": args.names, "duration_s": args.duration, "cpus": os.cpu_count()}
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        hosts = work / "hosts"
        hosts.write_text("".join(f"{_addr(i)} c{i} c{i}.bench\n" for i in range(args.names)))
        cluster_q = work / "cluster.txt"
        cluster_q.write_text("".join(f"c{i} A\n" for i in range(args.names)))
        ext_q = work / "ext.txt"
        ext_q.write_text("".join(f"e{i}.example.test A\n" for i in range(args.names)))
        records = [f"--host-record=e{i}.example.test,{_addr(i)}" for i in range(args.names)]
        conf = work / "upstream.conf"
        conf.write_text("\n".join(r[2:] for r in records) + "\n")
        procs.append(_dnsmasq(UPSTREAM_IP, f"--conf-file={conf}"))
        procs.append(_dnsmasq(REFERENCE_IP, f"--addn-hosts={hosts}", netns=ns))
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", f"/run/netns/{ns}", str(args.names), UPSTREAM_IP],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        if child.stdout.readline().strip() != "READY":
            raise RuntimeError("the resolver child did not start")
        time.sleep(0.5)  # dnsmasq up
        for proc in procs:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"dnsmasq exited at start (address in use?): {err.strip()}")
        print(
            f"bench/dns.py: {args.names} names, {args.duration:.0f} s per run, {os.cpu_count()} CPUs",
            flush=True,
        )
        pid = child.pid
        up_pid, ref_pid = procs[0].pid, procs[1].pid  # ip netns exec execs: the PIDs are dnsmasq's
        r = results["cluster_full"] = {
            "resolver": measure(
                "cluster names, resolver, full speed",
                lambda: dnsperf(ns, RESOLVER_IP, cluster_q, args.duration),
                pid,
            ),
            "dnsmasq": measure(
                "cluster names, dnsmasq, full speed",
                lambda: dnsperf(ns, REFERENCE_IP, cluster_q, args.duration),
                ref_pid,
            ),
        }
        r["qps_ratio"] = round(r["resolver"]["qps"] / r["dnsmasq"]["qps"], 3)
        if r["resolver"].get("server_cpu_us_per_query") and r["dnsmasq"].get("server_cpu_us_per_query"):
            # qps each could serve with a whole core: robust against other load on a shared machine
            r["cpu_efficiency_ratio"] = round(
                r["dnsmasq"]["server_cpu_us_per_query"] / r["resolver"]["server_cpu_us_per_query"], 3
            )
        r2 = results["cluster_rate"] = {
            "resolver": measure(
                f"cluster names, resolver, {args.rate} qps",
                lambda: dnsperf(ns, RESOLVER_IP, cluster_q, args.duration, rate=args.rate),
                pid,
            ),
            "dnsmasq": measure(
                f"cluster names, dnsmasq, {args.rate} qps",
                lambda: dnsperf(ns, REFERENCE_IP, cluster_q, args.duration, rate=args.rate),
                ref_pid,
            ),
        }
        r3 = results["forwarded_full"] = {
            "resolver": measure(
                "forwarded names via resolver, full speed",
                lambda: dnsperf(ns, RESOLVER_IP, ext_q, args.duration),
                pid,
            ),
            "upstream_direct": measure(
                "same names to the upstream directly (host ns)",
                lambda: dnsperf(None, UPSTREAM_IP, ext_q, args.duration),
                up_pid,
            ),
        }
        r3["qps_ratio"] = round(r3["resolver"]["qps"] / r3["upstream_direct"]["qps"], 3)
        if args.propagation:
            results["propagation"] = measure(
                "attach on h1 -> resolves on h2", lambda: propagation(args.propagation), None
            )
        child.send_signal(signal.SIGTERM)
        tail = child.stdout.readline()
        child.wait(10)
        results["resolver_counters"] = json.loads(tail) if tail.strip() else None
        print()
        print(
            f"cluster qps: resolver {r['resolver']['qps']}, dnsmasq {r['dnsmasq']['qps']}, ratio {r['qps_ratio']} (target >= 0.3)"
        )
        print(
            f"cluster CPU per query: resolver {r['resolver'].get('server_cpu_us_per_query')} us, dnsmasq "
            f"{r['dnsmasq'].get('server_cpu_us_per_query')} us, ratio {r.get('cpu_efficiency_ratio')}"
        )
        print(
            f"cluster p99 at {args.rate} qps: resolver {r2['resolver']['p99_ms']} ms, dnsmasq {r2['dnsmasq']['p99_ms']} ms (target <= 2 ms)"
        )
        print(
            f"forwarded qps: {r3['resolver']['qps']} (upstream directly {r3['upstream_direct']['qps']}, ratio {r3['qps_ratio']})"
        )
        if "propagation" in results:
            print(f"attach -> resolve: {results['propagation']}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait(10)
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
