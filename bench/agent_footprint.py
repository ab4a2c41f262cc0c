"""Agent footprint: RSS and idle CPU of one agent with 5 networks and 1,000 remote endpoints.

    .venv/bin/python bench/agent_footprint.py                      # 5 hosts, 5 x 200 remote endpoints (~3 min)
    .venv/bin/python bench/agent_footprint.py --networks 2 --per-network 50 --idle 10     # smoke run
    .venv/bin/python bench/agent_footprint.py --json /tmp/footprint.json

Theory of operation. ``sim.netns`` brings up ``--hosts`` hosts (``--dataplane kernel``, local profile). The
measured agent is h1's. First the reference, in the same run: h1 idle in the converged cluster with no
network (``--idle`` seconds of CPU time from ``/proc/PID/stat``, ``VmRSS`` at the end). Then h1 creates
``--networks`` networks (a /20 each) and attaches one local container to all of them (an overlay namespace
per network only exists on a host with a local sandbox), and the other hosts attach ``--per-network``
containers to each network through their own APIs, spread evenly (``POST /v1/attach``; a sandbox holds
one endpoint per network, so sandbox ``bulk-K`` on a host is joined to every network as eth0, eth1, ...:
real veths and real endpoint records, with a fifth of the namespaces). h1 thus has
``networks x per-network`` remote endpoints to program: a permanent FDB and neighbour entry each in its
overlay namespaces. The run waits until h1's kernel holds all of them
(counted with ``ip -n ... neigh``), lets it settle, and measures the same idle window again: idle CPU
(percent of one core), RSS, peak RSS (``VmHWM``), thread count, and the ratios to the reference. The
other agents' figures are given too (each of them holds its own share of local endpoints plus the rest as
remote ones).

The machine is shared (2 cores): load average is printed beside the figures. Everything is removed at the
end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshnet import ctl  # noqa: E402
from sim.netns import Harness, HarnessError, wait_until  # noqa: E402

#: Programming 1,000 remote endpoints on a loaded 2-core machine: bounded generously.
PROGRAM_TIMEOUT = 600.0


def proc_figures(pid: int) -> dict[str, float]:
    status = {
        k: v.strip()
        for k, _, v in (line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    }
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "hwm_mb": int(status["VmHWM"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
    }


def idle_window(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """Per agent: CPU percent of one core over ``seconds`` of idling, and RSS / peak RSS / threads after it."""
    before = {h: proc_figures(p) for h, p in pids.items()}
    load0 = os.getloadavg()
    time.sleep(seconds)
    out = {}
    for h, p in pids.items():
        after = proc_figures(p)
        out[h] = {
            "cpu_pct": 100 * (after["cpu_s"] - before[h]["cpu_s"]) / seconds,
            "rss_mb": after["rss_mb"],
            "hwm_mb": after["hwm_mb"],
            "threads": after["threads"],
        }
    out["_load"] = {"before": load0, "after": os.getloadavg()}  # type: ignore[assignment]
    return out


def neigh_count(netns: str) -> int:
    proc = subprocess.run(
        ["ip", "-n", netns, "neigh", "show", "dev", "vxlan0"], capture_output=True, text=True
    )
    return sum(1 for line in proc.stdout.splitlines() if "PERMANENT" in line)


def fdb_count(netns: str) -> int:
    proc = subprocess.run(
        ["bridge", "-n", netns, "fdb", "show", "dev", "vxlan0"], capture_output=True, text=True
    )
    return sum(1 for line in proc.stdout.splitlines() if " dst " in line)


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    h = Harness(prefix=args.prefix, run_dir=run_dir, dataplane="kernel", die_with_parent=True)
    h.down()
    try:
        h.up(args.hosts)
        hosts = h.host_names()
        remote_hosts = hosts[1:]
        pids = {host: rec["pid"] for host, rec in h.state()["hosts"].items()}
        print(f"{len(hosts)} hosts up; reference: {args.idle:g} s idle with no network", flush=True)
        time.sleep(args.settle)
        reference = idle_window(pids, args.idle)

        t_setup = time.monotonic()
        networks = [f"fp{n}" for n in range(args.networks)]
        for n, net in enumerate(networks):
            h.call("h1", "POST", "/v1/networks", {"name": net, "subnet": f"10.{100 + n}.0.0/20"})
            h.call("h1", "POST", "/v1/attach", {"network": net, "sandbox": "local", "name": f"local-{net}"})
        for host in remote_hosts:
            for net in networks:
                wait_until(
                    lambda host=host, net=net: _sees_network(h, host, net), 60, f"{net} to reach {host}"
                )

        def fill(host: str) -> int:
            made = 0
            share = [len(range(i, args.per_network, len(remote_hosts))) for i in range(len(remote_hosts))]
            count = share[remote_hosts.index(host)]
            for k in range(count):
                for net in networks:
                    body = {"network": net, "sandbox": f"bulk-{k}", "name": f"{net}-{host}-{k}"}
                    h.call(host, "POST", "/v1/attach", body, timeout=120)
                    made += 1
            return made

        cpu0 = {host: proc_figures(pid)["cpu_s"] for host, pid in pids.items()}
        load_fill0 = os.getloadavg()
        t_fill = time.monotonic()
        with ThreadPoolExecutor(len(remote_hosts)) as pool:
            made = sum(pool.map(fill, remote_hosts))
        t_fill = time.monotonic() - t_fill
        fill_cpu = {host: proc_figures(pid)["cpu_s"] - cpu0[host] for host, pid in pids.items()}
        load_fill1 = os.getloadavg()
        t_api = time.monotonic() - t_setup
        print(f"{made} remote endpoints attached through the API in {t_api:.1f} s", flush=True)

        vnis = {net: h.call("h1", "GET", f"/v1/networks/{net}")["vni"] for net in networks}
        overlays = [f"{h.host_netns('h1')}-ov-{vni}" for vni in vnis.values()]
        want = args.networks * args.per_network

        def programmed() -> bool:
            return sum(neigh_count(ns) for ns in overlays) >= want

        wait_until(programmed, PROGRAM_TIMEOUT, f"h1 to program {want} remote endpoints", interval=1.0)
        t_prog = time.monotonic() - t_setup
        neigh = sum(neigh_count(ns) for ns in overlays)
        fdb = sum(fdb_count(ns) for ns in overlays)
        print(
            f"h1 programmed {neigh} neighbour and {fdb} FDB entries {t_prog:.1f} s after the first create",
            flush=True,
        )
        time.sleep(args.settle)
        print(f"measuring {args.idle:g} s idle", flush=True)
        loaded = idle_window(pids, args.idle)
        h1_stats = h.call("h1", "GET", "/v1/agent")
    finally:
        h.down()
    return {
        "hosts": args.hosts,
        "networks": args.networks,
        "remote_endpoints": want,
        "attached": made,
        "h1_neigh": neigh,
        "h1_fdb": fdb,
        "api_setup_s": t_api,
        "fill_wall_s": t_fill,
        "fill_cpu_s": fill_cpu,
        "fill_load": {"before": load_fill0, "after": load_fill1},
        "programmed_after_s": t_prog,
        "idle_window_s": args.idle,
        "reference": reference,
        "loaded": loaded,
        "h1_services": h1_stats.get("services", {}),
    }


def _sees_network(h: Harness, host: str, net: str) -> bool:
    try:
        h.call(host, "GET", f"/v1/networks/{net}", timeout=10)
    except ctl.AgentError:
        return False
    return True


def report(r: dict[str, Any]) -> None:
    ref, now = r["reference"], r["loaded"]
    print()
    print(
        f"agent footprint: h1 with {r['networks']} networks and {r['remote_endpoints']} remote endpoints "
        f"({r['h1_neigh']} neighbour + {r['h1_fdb']} FDB entries), {r['hosts']} hosts"
    )
    print(f"  {'':28} {'reference':>12} {'loaded':>12} {'ratio':>7}")
    for key, label, unit in (
        ("cpu_pct", "idle CPU (% of one core)", "%"),
        ("rss_mb", "RSS", "MB"),
        ("hwm_mb", "peak RSS", "MB"),
        ("threads", "threads", ""),
    ):
        a, b = ref["h1"][key], now["h1"][key]
        ratio = f"{b / a:.2f}x" if a else "-"
        print(f"  {label:28} {a:>10.2f}{unit:>2} {b:>10.2f}{unit:>2} {ratio:>7}")
    others = [h for h in now if h not in ("h1", "_load")]
    if others:
        print(
            "  other agents (loaded): "
            + ", ".join(f"{h} {now[h]['cpu_pct']:.2f}% {now[h]['rss_mb']:.1f} MB" for h in others)
        )
    print(
        f"setup: {r['attached']} attaches through the API in {r['api_setup_s']:.1f} s; h1 had programmed all "
        f"{r['programmed_after_s']:.1f} s after the first create"
    )
    made = max(1, r["attached"])
    cpu = r["fill_cpu_s"]
    print(
        f"attach phase: {r['attached']} attaches in {r['fill_wall_s']:.1f} s wall; agents' CPU per attach "
        f"(ms): h1 (every attach remote) {1000 * cpu['h1'] / made:.1f}, "
        + ", ".join(f"{h} {1000 * c / made:.1f}" for h, c in cpu.items() if h != "h1")
        + f" (the others' include their own attaches); load average "
        f"{' '.join(f'{x:.2f}' for x in r['fill_load']['before'])} -> "
        f"{' '.join(f'{x:.2f}' for x in r['fill_load']['after'])}"
    )
    for name, win in (("reference", ref), ("loaded", now)):
        load = win["_load"]
        print(
            f"load average during the {name} window: {' '.join(f'{x:.2f}' for x in load['before'])} -> "
            f"{' '.join(f'{x:.2f}' for x in load['after'])} ({r['idle_window_s']:g} s wall)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--networks", type=int, default=5)
    parser.add_argument("--per-network", type=int, default=200, help="remote endpoints per network")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of each idle window")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each window")
    parser.add_argument("--prefix", default="bfp-", help="namespace prefix (a separate harness)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.hosts < 2:
        parser.error("--hosts must be >= 2")
    try:
        r = run(args)
    except (
        HarnessError,
        RuntimeError,
        ctl.AgentError,
        ctl.AgentUnreachable,
        subprocess.SubprocessError,
    ) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
