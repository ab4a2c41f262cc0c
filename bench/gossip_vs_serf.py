#!/usr/bin/env python3
"""A serf cluster and a meshnet cluster of the same size and timing, on loopback, in one run.

    .venv/bin/python bench/gossip_vs_serf.py --nodes 20            # as root (tcpdump for byte counts)
    .venv/bin/python bench/gossip_vs_serf.py --nodes 5 --kills 2 --idle 10 --only serf

For each implementation, in turn (serf first, then meshnet; never both at once, so they do not share
the two cores):

1. **join convergence**: node 0 is started and ready; then nodes 1..N-1 are spawned back to back, each
   told to join node 0. The time runs from the first spawn until every agent has logged a join for
   each of the N-1 others. It includes process start-up, so it is also split at the moment the last
   agent logged its own join (it is up): start-up of N-1 processes at once, then gossip convergence.
2. **idle**: after a settle time, over ``--idle`` seconds: CPU% per agent from utime+stime in
   /proc/PID/stat, RSS from VmRSS in /proc/PID/status (at the end), and gossip payload bytes/s per agent
   from a tcpdump capture on ``lo`` filtered to the cluster's gossip port (UDP payload + TCP payload, summed
   over the cluster and divided by N, so it is the mean a node sends; every byte is sent by one node).
3. **failure detection**: ``--kills`` times, a random non-seed agent is SIGKILLed; the time from the kill
   until each surviving agent logs it as failed. Reported: per kill the first and the last detector, and
   their spread; over all kills the median. The dead stay in the member lists (both implementations count
   them in n for the suspicion timeout), so later kills run with n a little inflated, for both alike.

Detections and joins are read from each agent's own log lines (serf ``EventMemberJoin``/``EventMemberFailed``,
meshnet ``member joined``/``member failed``), timestamped by this script when they appear (it polls the
log files every 10 ms), the same way for both.

Addresses: serf at 127.0.1.1..N, meshnet at 127.0.2.1..N, one gossip port per cluster. Every process is
started by this script, stopped by its PID, and dies with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.interop.serfctl import (  # noqa: E402
    Addr,
    Proc,
    Processes,
    fmt_addr,
    meshnet_command,
    parse_meshnet_members,
    parse_serf_members,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")

# What each implementation logs (the subject is the member's name).
PATTERNS = {
    "serf": {
        "join": re.compile(rb"EventMemberJoin: (\S+) "),
        "failed": re.compile(rb"EventMemberFailed: (\S+) "),
    },
    "meshnet": {
        "join": re.compile(rb"member joined: (\S+) "),
        "failed": re.compile(rb"member failed: (\S+) "),
    },
}

TARGETS = {
    "detect_p50_ratio": 1.0,  # meshnet / serf, median detection time over all detectors and kills
    "spread_median_s": 0.10,  # meshnet first -> last detector, median over kills
    "cpu_ratio": 2.0,  # meshnet / serf, median idle CPU% per agent
    "rss_ratio": 2.5,  # meshnet / serf, median RSS per agent
}


# --------------------------------------------------------------------------------------------------
# measurements


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # after ")": state is field 3, utime 14, stime 15 (1-based) -> indexes 11 and 12 here
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pcap_payload_bytes(path: Path) -> tuple[int, int]:
    """(payload bytes, packets) of the IPv4 UDP/TCP packets in a pcap file (Ethernet or Linux cooked)."""
    data = path.read_bytes()
    if len(data) < 24:
        return 0, 0
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    l2 = {1: 14, 113: 16, 276: 20}.get(linktype)
    if l2 is None:
        raise ValueError(f"unexpected pcap link type {linktype}")
    total = packets = 0
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[off + 8 : off + 12])[0]
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ip = pkt[l2:]
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        ip_len = struct.unpack("!H", ip[2:4])[0]
        proto = ip[9]
        if proto == 17:
            payload = ip_len - ihl - 8
        elif proto == 6 and len(ip) >= ihl + 13:
            payload = ip_len - ihl - (ip[ihl + 12] >> 4) * 4
        else:
            continue
        total += max(0, payload)
        packets += 1
    return total, packets


class LogWatch:
    """Follows every agent's log file; yields (monotonic time, agent, kind, subject) for matching lines."""

    def __init__(self, patterns: dict[str, re.Pattern[bytes]]) -> None:
        self.patterns = patterns
        self.files: dict[str, tuple[int, bytearray]] = {}

    def add(self, agent: str, path: Path) -> None:
        self.files[agent] = (os.open(path, os.O_RDONLY), bytearray())

    def close(self) -> None:
        for fd, _ in self.files.values():
            os.close(fd)
        self.files.clear()

    def poll(self) -> list[tuple[float, str, str, str]]:
        out = []
        for agent, (fd, buf) in self.files.items():
            while chunk := os.read(fd, 65536):
                buf += chunk
            now = time.monotonic()
            while (nl := buf.find(b"\n")) >= 0:
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                for kind, pattern in self.patterns.items():
                    m = pattern.search(line)
                    if m:
                        out.append((now, agent, kind, m.group(1).decode(errors="replace")))
        return out


# --------------------------------------------------------------------------------------------------
# clusters


def _free(ip: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((ip, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def pick_port(ips: list[str], rng: random.Random, exclude: set[int]) -> int:
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if port not in exclude and all(_free(ip, port) for ip in ips):
            return port
    raise RuntimeError("no port free on every address")


@dataclass
class Agent:
    name: str
    bind: Addr
    proc: Proc
    rpc: Addr | None = None
    api: Path | None = None


class Cluster:
    """N agents of one implementation, started, watched and stopped by this bench."""

    def __init__(
        self, impl: str, n: int, subnet: int, args: argparse.Namespace, workdir: Path, rng: random.Random
    ):
        self.impl = impl
        self.n = n
        self.args = args
        self.rng = rng
        self.workdir = workdir / impl
        self.procs = Processes(self.workdir / "logs")
        self.ips = [f"127.0.{subnet}.{i + 1}" for i in range(n)]
        self.port = pick_port(self.ips, rng, set())
        self.rpc_port = pick_port(self.ips, rng, {self.port})
        self.agents: list[Agent] = []
        self.watch = LogWatch(PATTERNS[impl])
        self.joined: dict[str, set[str]] = {}
        self.up: dict[str, float] = {}  # agent -> when it logged its own join (it is running)
        self.failed: dict[str, dict[str, float]] = {}  # victim -> observer -> time

    # -- processes --

    def _spawn(self, i: int, join: list[Addr]) -> Agent:
        name = f"{self.impl[0]}{i:03d}"
        bind = (self.ips[i], self.port)
        if self.impl == "serf":
            rpc = (self.ips[i], self.rpc_port)
            argv = [
                self.args.serf,
                "agent",
                f"-node={name}",
                f"-bind={fmt_addr(bind)}",
                f"-rpc-addr={fmt_addr(rpc)}",
                f"-profile={self.args.profile}",
            ]
            argv += [f"-join={fmt_addr(a)}" for a in join]
            agent = Agent(name, bind, self.procs.spawn(name, argv), rpc=rpc)
        else:
            api = self.workdir / f"{name}.sock"
            argv = meshnet_command(name, bind, api=api, join=join, profile=self.args.profile)
            agent = Agent(name, bind, self.procs.spawn(name, argv), api=api)
        self.agents.append(agent)
        self.watch.add(name, agent.proc.log_path)
        self.joined[name] = set()
        return agent

    def members(self, agent: Agent) -> dict[str, str]:
        """name -> status as this agent sees it (serf members / GET /v1/members on the API socket)."""
        if agent.rpc is not None:
            import subprocess

            out = subprocess.run(
                [self.args.serf, "members", f"-rpc-addr={fmt_addr(agent.rpc)}", "-format=json"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if out.returncode:
                raise RuntimeError(out.stderr.strip())
            return {m.name: m.status for m in parse_serf_members(out.stdout).values()}
        assert agent.api is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(agent.api))
            s.sendall(b"GET /v1/members HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:80])
        return {m.name: m.status for m in parse_meshnet_members(body.decode()).values()}

    def wait_ready(self, agent: Agent, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        while True:
            if not agent.proc.running():
                raise RuntimeError(f"{agent.name} exited:\n{agent.proc.log_tail()}")
            try:
                if agent.name in self.members(agent):
                    return time.monotonic() - t0
            except (OSError, RuntimeError):
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{agent.name} not ready after {timeout}s:\n{agent.proc.log_tail()}")
            time.sleep(0.05)

    def pump(self) -> None:
        for t, observer, kind, subject in self.watch.poll():
            if subject == observer:
                if kind == "join":
                    self.up.setdefault(observer, t)
                continue
            if kind == "join":
                self.joined[observer].add(subject)
            elif kind == "failed":
                self.failed.setdefault(subject, {}).setdefault(observer, t)

    def stop(self) -> None:
        self.watch.close()
        self.procs.stop_all()

    # -- phases --

    def start(self) -> dict[str, float]:
        seed = self._spawn(0, [])
        t_spawn = time.monotonic()
        startup = self.wait_ready(seed)
        t0 = time.monotonic()
        for i in range(1, self.n):
            self._spawn(i, [seed.bind])
            self.pump()
        names = {a.name for a in self.agents}
        deadline = t0 + self.args.join_timeout
        while True:
            self.pump()
            if all(self.joined[a] >= names - {a} for a in names):
                break
            for a in self.agents:
                if not a.proc.running():
                    raise RuntimeError(f"{a.name} exited during join:\n{a.proc.log_tail()}")
            if time.monotonic() > deadline:
                missing = {
                    a: sorted(names - {a} - self.joined[a]) for a in names if self.joined[a] < names - {a}
                }
                raise RuntimeError(
                    f"{self.impl}: no join convergence in {self.args.join_timeout}s; missing {missing}"
                )
            time.sleep(0.01)
        t_converged = time.monotonic()
        converged = t_converged - t0
        last_up = max(self.up.get(a, t0) for a in names)
        # cross-check with each agent's member list
        for a in self.agents:
            view = self.members(a)
            alive = sum(1 for s in view.values() if s == "alive")
            if alive != self.n:
                raise RuntimeError(f"{self.impl}: {a.name} lists {alive} alive of {self.n}: {view}")
        del t_spawn
        return {
            "startup_s": startup,
            "join_convergence_s": converged,
            "last_agent_up_s": last_up - t0,
            "join_after_last_up_s": t_converged - last_up,
        }

    def idle(self) -> dict[str, object]:
        settle_end = time.monotonic() + self.args.settle
        while time.monotonic() < settle_end:
            self.pump()
            time.sleep(0.01)
        capture = self.workdir / "idle.pcap"
        tcpdump = shutil.which("tcpdump")
        dump: Proc | None = None
        byte_note = ""
        if tcpdump is None:
            byte_note = "tcpdump not installed"
        elif os.geteuid() != 0:
            byte_note = "tcpdump needs root"
        else:
            net = ".".join(self.ips[0].split(".")[:3]) + ".0/24"
            dump = self.procs.spawn(
                f"tcpdump-{self.impl}",
                [
                    tcpdump,
                    "-i",
                    "lo",
                    "-n",
                    "-U",
                    "-Z",
                    "root",
                    "-s",
                    "128",
                    "-w",
                    str(capture),
                    f"net {net} and (udp port {self.port} or tcp port {self.port})",
                ],
            )
            time.sleep(1.0)  # let tcpdump open the capture
        pids = {a.name: a.proc.pid for a in self.agents}
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.args.idle:
            self.pump()
            time.sleep(0.05)
        wall = time.monotonic() - t0
        cpu = {n: 100.0 * (cpu_seconds(p) - cpu0[n]) / wall for n, p in pids.items()}
        rss = {n: rss_kib(p) for n, p in pids.items()}
        result: dict[str, object] = {
            "idle_window_s": round(wall, 2),
            "cpu_pct_median": statistics.median(cpu.values()),
            "cpu_pct_max": max(cpu.values()),
            "rss_mib_median": statistics.median(rss.values()) / 1024,
            "rss_mib_max": max(rss.values()) / 1024,
        }
        if dump is not None:
            dump.stop(grace=5.0, sig=signal.SIGINT)
            payload, packets = pcap_payload_bytes(capture)
            result["bytes_per_s_per_agent"] = payload / wall / self.n
            result["packets_per_s_per_agent"] = packets / wall / self.n
        else:
            result["bytes_per_s_per_agent"] = None
            result["bytes_note"] = byte_note
        return result

    def kills(self) -> dict[str, object]:
        victims = self.rng.sample([a for a in self.agents[1:]], min(self.args.kills, self.n - 2))
        per_kill = []
        for victim in victims:
            survivors = [a for a in self.agents if a.proc.running() and a is not victim]
            t_kill = time.monotonic()
            victim.proc.kill()
            deadline = t_kill + self.args.detect_timeout
            while time.monotonic() < deadline:
                self.pump()
                seen = self.failed.get(victim.name, {})
                if all(a.name in seen for a in survivors):
                    break
                time.sleep(0.01)
            seen = self.failed.get(victim.name, {})
            times = sorted(seen[a.name] - t_kill for a in survivors if a.name in seen)
            per_kill.append(
                {
                    "victim": victim.name,
                    "detectors": len(times),
                    "survivors": len(survivors),
                    "first_s": times[0] if times else None,
                    "last_s": times[-1] if times else None,
                    "spread_s": times[-1] - times[0] if times else None,
                    "all_s": times,
                }
            )
            quiet = time.monotonic() + self.args.between
            while time.monotonic() < quiet:
                self.pump()
                time.sleep(0.01)
        complete = [k for k in per_kill if k["detectors"] == k["survivors"]]
        every = [t for k in per_kill for t in k["all_s"]]
        return {
            "kills": per_kill,
            "kills_fully_detected": f"{len(complete)}/{len(per_kill)}",
            "detect_p50_s": statistics.median(every) if every else None,
            "first_median_s": statistics.median(k["first_s"] for k in complete) if complete else None,
            "last_median_s": statistics.median(k["last_s"] for k in complete) if complete else None,
            "spread_median_s": statistics.median(k["spread_s"] for k in complete) if complete else None,
        }


# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    impl: str
    nodes: int
    profile: str
    figures: dict[str, object] = field(default_factory=dict)
    error: str | None = None


def run_one(impl: str, subnet: int, args: argparse.Namespace, workdir: Path, rng: random.Random) -> Result:
    result = Result(impl, args.nodes, args.profile)
    cluster = Cluster(impl, args.nodes, subnet, args, workdir, rng)
    print(
        f"== {impl}: {args.nodes} agents on {cluster.ips[0]}..{cluster.ips[-1]} port {cluster.port}",
        flush=True,
    )
    try:
        result.figures.update(cluster.start())
        print(f"   joined in {result.figures['join_convergence_s']:.2f} s", flush=True)
        result.figures.update(cluster.idle())
        print(
            f"   idle: {result.figures['cpu_pct_median']:.2f}% CPU, {result.figures['rss_mib_median']:.1f} MiB",
            flush=True,
        )
        result.figures.update(cluster.kills())
        print(f"   detection p50 {result.figures['detect_p50_s']}", flush=True)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"   FAILED: {result.error}", flush=True)
    finally:
        cluster.stop()
    return result


def _fmt(value: object, spec: str = ".2f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return format(value, spec)
    return str(value)


def report(results: dict[str, Result]) -> dict[str, object]:
    rows = [
        ("agent start-up (spawn to ready), s", "startup_s", ".2f"),
        ("join convergence (from first spawn), s", "join_convergence_s", ".2f"),
        ("  of which: until the last agent is up, s", "last_agent_up_s", ".2f"),
        ("  then: until all see all, s", "join_after_last_up_s", ".2f"),
        ("kills fully detected", "kills_fully_detected", ""),
        ("detection p50 (all detectors), s", "detect_p50_s", ".2f"),
        ("first detector, median, s", "first_median_s", ".2f"),
        ("last detector, median, s", "last_median_s", ".2f"),
        ("first->last spread, median, s", "spread_median_s", ".3f"),
        ("idle CPU per agent, median, %", "cpu_pct_median", ".2f"),
        ("idle CPU per agent, max, %", "cpu_pct_max", ".2f"),
        ("RSS per agent, median, MiB", "rss_mib_median", ".1f"),
        ("gossip payload bytes/s per agent", "bytes_per_s_per_agent", ".0f"),
        ("packets/s per agent", "packets_per_s_per_agent", ".1f"),
    ]
    impls = list(results)
    print()
    print(f"{'':44s}" + "".join(f"{i:>12s}" for i in impls))
    for label, key, spec in rows:
        print(f"{label:44s}" + "".join(f"{_fmt(results[i].figures.get(key), spec):>12s}" for i in impls))
    for i in impls:
        if results[i].error:
            print(f"{i}: {results[i].error}")
        note = results[i].figures.get("bytes_note")
        if note:
            print(f"{i}: bytes not measured: {note}")
    verdict: dict[str, object] = {}
    if "serf" in results and "meshnet" in results:
        s, m = results["serf"].figures, results["meshnet"].figures

        def ratio(key: str) -> float | None:
            a, b = m.get(key), s.get(key)
            return a / b if isinstance(a, float | int) and isinstance(b, float | int) and b else None

        checks = {
            "detect_p50_ratio": ratio("detect_p50_s"),
            "spread_median_s": m.get("spread_median_s"),
            "cpu_ratio": ratio("cpu_pct_median"),
            "rss_ratio": ratio("rss_mib_median"),
        }
        print()
        print("meshnet against the targets:")
        for key, value in checks.items():
            target = TARGETS[key]
            ok = isinstance(value, float | int) and value <= target
            verdict[key] = {"value": value, "target": target, "met": ok}
            print(f"  {key:22s} {_fmt(value, '.3f'):>8s}  target <= {target}  {'met' if ok else 'MISSED'}")
        verdict["bytes_ratio"] = ratio("bytes_per_s_per_agent")
        print(f"  {'bytes_ratio':22s} {_fmt(verdict['bytes_ratio'], '.3f'):>8s}  (no target)")
    return verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=20, help="agents per cluster (default 20, at most 250)")
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs per cluster (default 5)")
    p.add_argument("--idle", type=float, default=20.0, help="idle measurement window, s (default 20)")
    p.add_argument("--settle", type=float, default=5.0, help="wait after join convergence, s (default 5)")
    p.add_argument(
        "--between", type=float, default=2.0, help="quiet time after each detection, s (default 2)"
    )
    p.add_argument("--profile", default="local", choices=["lan", "wan", "local"], help="timing, both sides")
    p.add_argument("--only", choices=["serf", "meshnet"], help="run one implementation")
    p.add_argument("--join-timeout", type=float, default=120.0)
    p.add_argument("--detect-timeout", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=None, help="seed for victim choice and ports")
    p.add_argument("--serf", default=shutil.which("serf") or "serf", help="serf binary")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, captures)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)
    if not 3 <= args.nodes <= 250:
        p.error("--nodes must be 3..250")

    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    workdir = Path(tempfile.mkdtemp(prefix="meshnet-bench-"))
    results: dict[str, Result] = {}
    try:
        for impl, subnet in (("serf", 1), ("meshnet", 2)):
            if args.only in (None, impl):
                results[impl] = run_one(impl, subnet, args, workdir, rng)
        verdict = report(results)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"results": {k: asdict(v) for k, v in results.items()}, "verdict": verdict}, indent=2
                )
            )
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if any(r.error for r in results.values()):
        return 2
    if args.check and any(isinstance(v, dict) and not v["met"] for v in verdict.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
