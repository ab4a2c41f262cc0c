"""meshnet's demo: ``python -m meshnet.demo`` (what ``scripts/demo`` runs).

Default (root): a three-host cluster in network namespaces (``sim.netns``: an underlay bridge in its own
namespace, hosts ``h1``..``h3`` each running ``meshnet-agent``), a network ``demo`` with container ``web`` on
h1 and ``client`` on h2, and ``client`` pinging ``web`` over the VXLAN overlay, by address and, when the
agents run the DNS service, by name. Then it prints how to explore and leaves the cluster running;
``--down`` (or ``python -m sim.netns down``) removes it. ``--check`` runs the same non-interactively, checks
every step and tears everything down (exit 0 only if all of it worked). A failure or Ctrl-C at any point
tears down what was created. Nothing touches the root namespace's addresses, routes or firewall.

With an agent that has no ``--dataplane kernel`` yet, the hosts run ``--dataplane none`` and the demo shows
the gossip cluster and a NetworkDB entry crossing the namespaces instead of containers.

``--loopback``: no namespaces and no root: N agents on 127.0.0.21.. (``--dataplane none``) that converge,
replicate one NetworkDB entry, and are stopped again (``--keep`` leaves them running).
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from meshnet import ctl

__all__ = ["main"]

NETWORK = "demo"
#: The overlay answers once the endpoint's record reached the other host and both reconciled (about a
#: second on the local profile); bounded generously for a loaded machine.
REACH_TIMEOUT = 30.0


def _cmd(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _short(path: str) -> str:
    """``path`` relative to the current directory when it is below it (``.venv/bin/python``)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


class _Demo:
    def __init__(self, harness: Any, check: bool) -> None:
        self.h = harness
        self.check = check
        self.py = _short(sys.executable)
        self.netns_cli = [self.py, "-m", "sim.netns"]
        if harness.prefix:
            self.netns_cli += ["--prefix", harness.prefix]
        if str(harness.run_dir) != "/run/meshnet-netns":
            self.netns_cli += ["--run-dir", str(harness.run_dir)]
        self.ctl_bin = _short(str(Path(sys.executable).parent / "meshnetctl"))

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def show(self, argv: Sequence[str], shown: Sequence[str] | None = None, *, timeout: float = 60) -> int:
        """Print ``$ shown`` (default argv), run argv with its output on our stdout; its exit code."""
        self.say(f"\n$ {_cmd(shown or argv)}")
        return subprocess.run(list(argv), timeout=timeout, stdin=subprocess.DEVNULL).returncode

    def ctl(self, host: str, *args: str) -> int:
        api = self.h.api(host)
        self.say(f"\n$ {self.ctl_bin} --api {api} {_cmd(args)}")
        try:
            return ctl.main(["--api", api, *args])
        except SystemExit as exc:  # argparse: a subcommand this meshnetctl does not have
            return int(exc.code or 0)

    def in_ns(self, name: str, argv: Sequence[str], *, timeout: float = 60) -> int:
        return self.show(
            self.h.exec_argv(name, argv), [*self.netns_cli, "exec", name, "--", *argv], timeout=timeout
        )

    def run(self, hosts: int) -> None:
        h = self.h
        self.say(f"bringing up {hosts} hosts in network namespaces (underlay {h.underlay}, bridge br-under)")
        h.up(hosts)
        dataplane = h.state()["dataplane"]
        self.show([*self.netns_cli, "status"])
        self.ctl("h1", "members")
        if dataplane == "kernel":
            self.containers()
        else:
            self.say("\n(this meshnet-agent has no --dataplane kernel yet: the hosts run --dataplane none;")
            self.say(" showing a NetworkDB entry crossing the namespaces instead of containers)")
            self.networkdb()

    def containers(self) -> None:
        h = self.h
        last = "h2"  # containers on two different hosts
        self.say(f"\n$ {_cmd([*self.netns_cli, 'container', 'web', '--host', 'h1', '--network', NETWORK])}")
        web = h.container("web", host="h1", network=NETWORK, aliases=["www"])
        self.say(f"web on h1: {web['ip']} (namespace {web['netns']})")
        self.say(
            f"\n$ {_cmd([*self.netns_cli, 'container', 'client', '--host', last, '--network', NETWORK])}"
        )
        client = h.container("client", host=last, network=NETWORK)
        self.say(f"client on {last}: {client['ip']} (namespace {client['netns']})")
        if importlib.util.find_spec("meshnet.ctl_cnm") is not None:  # meshnetctl network ...
            self.ctl(last, "network", "inspect", NETWORK)
        # The first packets may go out before the agents programmed each other's entries: wait quietly
        # (bounded), then show a real ping.
        self._wait_reach("client", web["ip"])
        if self.in_ns("client", ["ping", "-c", "3", "-i", "0.2", "-W", "2", web["ip"]]) != 0:
            raise RuntimeError(f"client cannot ping web at {web['ip']} over the overlay")
        vni = h.call(last, "GET", f"/v1/networks/{NETWORK}")["vni"]
        overlay = f"{h.host_netns(last)}-ov-{vni}"
        self.say(f"\n{last}'s overlay namespace {overlay} (VXLAN {vni}): web's MAC is behind h1's address")
        self.show(["ip", "netns", "exec", overlay, "bridge", "fdb", "show", "dev", "vxlan0"])
        if self._dns_running(last):
            self._wait_reach("client", "web")
            if self.in_ns("client", ["ping", "-c", "3", "-i", "0.2", "-W", "2", "web"]) != 0:
                raise RuntimeError("client cannot ping web by name")
        else:
            self.say("\n(the agents run no DNS service yet: names come with it; pinging by address only)")

    def _wait_reach(self, name: str, target: str) -> None:
        def answers() -> bool:
            try:
                return self.h.exec(name, ["ping", "-c", "1", "-W", "1", target], timeout=10).returncode == 0
            except subprocess.TimeoutExpired:  # e.g. a name lookup that stalled: try again
                return False

        from sim.netns import wait_until

        wait_until(answers, REACH_TIMEOUT, f"{target} to answer {name}'s ping", interval=0.2)

    def _dns_running(self, host: str) -> bool:
        try:
            info = self.h.call(host, "GET", "/v1/agent", timeout=10)
        except (ctl.AgentUnreachable, ctl.AgentError):
            return False
        return "dns" in (info.get("services") or {})

    def networkdb(self) -> None:
        h = self.h
        last = h.host_names()[-1]
        if self.ctl("h1", "db", "put", "-", "demo", "greeting", "hello from h1") != 0:
            raise RuntimeError("meshnetctl db put failed")

        def arrived() -> bool:
            try:
                h.call(last, "GET", "/v1/db/-/demo/greeting", timeout=5)
            except (ctl.AgentUnreachable, ctl.AgentError):
                return False
            return True

        from sim.netns import wait_until

        wait_until(arrived, REACH_TIMEOUT, f"the entry to reach {last}")
        self.ctl(last, "db", "ls", "-", "demo")

    def explore(self) -> None:
        n = _cmd(self.netns_cli)
        h = self.h
        st = h.state()
        extra = ""
        if h.prefix:
            extra += f" --prefix {h.prefix}"
        if str(h.run_dir) != "/run/meshnet-netns":
            extra += f" --run-dir {h.run_dir}"
        lines = ["", "The cluster keeps running. Explore it:"]
        lines.append(f"  {n} status          # hosts, agents, containers, namespaces")
        if st.get("containers"):
            lines.append(
                f"  {n} exec client -- ping web          # or: ip addr, ip route, cat /etc/resolv.conf"
            )
            lines.append(f"  {n} container db --host h3 --network {NETWORK}")
            try:
                vni = h.call("h2", "GET", f"/v1/networks/{NETWORK}", timeout=10)["vni"]
                overlay = f"{h.host_netns('h2')}-ov-{vni}"
                lines.append(f"  ip netns exec {overlay} bridge fdb show dev vxlan0     # h2's overlay")
            except (ctl.AgentUnreachable, ctl.AgentError, KeyError):
                pass
        lines.append(f"  {n} exec h2 -- ip addr          # a host (h1..), or mnu: the underlay")
        lines.append(f"  {self.ctl_bin} --api {h.api('h1')} members          # or: network ls, endpoint ls")
        lines.append(f"  {n} ctl h2 -- network inspect {NETWORK}")
        lines.append(f"  agent logs: {h.run_dir}/h1.log ... h{len(h.host_names())}.log")
        lines.append("Tear it down:")
        lines.append(f"  scripts/demo --down{extra}          # or: {n} down")
        self.say("\n".join(lines))


def _netns_main(args: argparse.Namespace) -> int:
    from sim.netns import Harness, HarnessError

    if os.geteuid() != 0:
        print(
            "the demo creates network namespaces and needs root (sudo scripts/demo), or use --loopback",
            file=sys.stderr,
        )
        return 1
    harness = Harness(
        prefix=args.prefix,
        run_dir=args.run_dir,
        dataplane=args.dataplane,
        log=lambda msg: print(msg, flush=True),
    )
    if args.down:
        report = harness.down()
        print(
            f"removed {len(report['netns'])} namespaces, stopped {len(report['stopped']) + len(report['killed'])} processes"
        )
        return 0
    from sim.netns import list_netns

    demo = _Demo(harness, args.check)
    if harness.state().get("hosts") or any(harness.owns_netns(n) for n in list_netns()):
        print(
            f"a demo is already up ({harness.run_dir}): explore it ({_cmd(demo.netns_cli)} status) or remove "
            f"it with scripts/demo --down{' --prefix ' + args.prefix if args.prefix else ''}",
            file=sys.stderr,
        )
        return 1
    ok = False
    try:
        demo.run(args.hosts)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", file=sys.stderr, flush=True)
        return 130
    except (
        HarnessError,
        RuntimeError,
        OSError,
        ctl.AgentError,
        ctl.AgentUnreachable,
        subprocess.SubprocessError,
    ) as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        if harness.state().get("hosts"):
            print(harness.describe_failure(), file=sys.stderr, flush=True)
        return 1
    finally:
        if not ok or args.check:
            _down_quietly(harness)
    if not args.check:
        demo.explore()
    else:
        print("demo check passed; everything removed")
    return 0


def _down_quietly(harness: Any) -> None:
    # A second Ctrl-C during the teardown must not leave namespaces or agents behind.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        report = harness.down()
        print(
            f"torn down: {len(report['netns'])} namespaces deleted, "
            f"{len(report['stopped']) + len(report['killed'])} processes stopped",
            flush=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshnet.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--hosts", type=int, default=3, help="host namespaces (2..50, default 3)")
    parser.add_argument(
        "--check", action="store_true", help="non-interactive: check every step, then tear down"
    )
    parser.add_argument("--down", action="store_true", help="tear down a demo left running")
    parser.add_argument(
        "--dataplane",
        choices=("auto", "kernel", "none"),
        default="auto",
        help="the agents' dataplane (auto: kernel when the agent has it)",
    )
    parser.add_argument("--prefix", default="", help="namespace name prefix (a second, separate demo)")
    parser.add_argument("--run-dir", default="/run/meshnet-netns", help="harness run directory")
    parser.add_argument("--loopback", action="store_true", help="the loopback gossip demo (no root)")
    parser.add_argument("--nodes", type=int, default=3, help="--loopback: number of agents (1..200)")
    parser.add_argument("--base-ip", default="127.0.0.21", help="--loopback: first address")
    parser.add_argument("--port", type=int, default=7946, help="--loopback: gossip port")
    parser.add_argument(
        "--profile", default="local", choices=("local", "lan", "wan"), help="--loopback: timing"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="--loopback: convergence wait")
    parser.add_argument("--keep", action="store_true", help="--loopback: leave the agents running")
    args = parser.parse_args(argv)
    if args.loopback:
        return _loopback_main(parser, args)
    if not 2 <= args.hosts <= 50:
        parser.error("--hosts must be 2..50")
    return _netns_main(args)


# ------------------------------------------------------------------------------- the loopback demo

STOP_TIMEOUT = 10.0


@dataclass
class Agent:
    name: str
    addr: str
    port: int
    api: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]


def _agent_argv(name: str, ip: str, port: int, api: Path, seed: str | None, profile: str) -> list[str]:
    argv = [sys.executable, "-m", "meshnet.agent_cli", "run", "--name", name, "--bind", f"{ip}:{port}"]
    argv += ["--dataplane", "none", "--api", str(api), "--profile", profile, "--tag", "demo=yes"]
    argv += ["--state-dir", str(api.parent / f"{name}.state")]
    argv += ["--tag", f"index={name.rsplit('-', 1)[-1]}"]
    if seed is not None:
        argv += ["--join", seed]
    return argv


def _start(name: str, ip: str, port: int, workdir: Path, seed: str | None, profile: str) -> Agent:
    api = workdir / f"{name}.sock"
    log_path = workdir / f"{name}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in _stop
    proc = subprocess.Popen(
        _agent_argv(name, ip, port, api, seed, profile),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops the agents itself
    )
    return Agent(name, ip, port, api, log_path, proc, log_file)


def _wait_until(pred: Callable[[], bool], timeout: float, what: str, agents: Sequence[Agent]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for agent in agents:
            if agent.proc.poll() is not None:
                raise RuntimeError(
                    f"agent {agent.name} exited with {agent.proc.returncode} while waiting for {what}"
                )
        if pred():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _alive_names(agent: Agent) -> set[str]:
    try:
        body: Any = ctl.call(str(agent.api), "GET", "/v1/members", timeout=5)
    except (ctl.AgentUnreachable, ctl.AgentError):
        return set()
    return {m["name"] for m in body["members"] if m["state"] == "alive"}


def _bound_port(agent: Agent) -> int | None:
    try:
        return int(ctl.call(str(agent.api), "GET", "/v1/agent", timeout=5)["port"])
    except (ctl.AgentUnreachable, ctl.AgentError):
        return None


def _stop(agents: Sequence[Agent]) -> None:
    """SIGTERM each agent by PID (a graceful leave), one after the other, SIGKILL one that hangs.

    One at a time, newest first: each leave is then seen by the agents still running, and no agent
    waits out its leave timeout for peers that are themselves leaving.
    """
    for agent in reversed(agents):
        if agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGTERM)
            try:
                agent.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait()
        agent.log_file.close()


def _show_networkdb(writer: Agent, reader: Agent, agents: Sequence[Agent], timeout: float) -> None:
    """Write one entry of the global table ``demo`` on ``writer``; list it on ``reader`` once it arrived."""
    argv = ["--api", str(writer.api), "db", "put", "-", "demo", "greeting", f"hello from {writer.name}"]
    print(f"\n$ meshnetctl {' '.join(argv[:6])} greeting 'hello from {writer.name}'")
    sys.stdout.flush()
    if ctl.main(argv) != 0:
        raise RuntimeError("meshnetctl db put failed")

    def arrived() -> bool:
        try:
            ctl.call(str(reader.api), "GET", "/v1/db/-/demo/greeting", timeout=5)
        except (ctl.AgentUnreachable, ctl.AgentError):
            return False
        return True

    _wait_until(arrived, timeout, f"the entry to reach {reader.name}", agents)
    print(f"\n$ meshnetctl --api {reader.api} db ls - demo")
    sys.stdout.flush()
    ctl.main(["--api", str(reader.api), "db", "ls", "-", "demo"])


def _log_tail(agent: Agent, lines: int = 15) -> str:
    try:
        text = agent.log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"  {line}" for line in text)


def _loopback_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    base = ipaddress.ip_address(args.base_ip)
    if not 1 <= args.nodes <= 200:
        parser.error("--nodes must be 1..200")
    if not base.is_loopback or not (base + args.nodes - 1).is_loopback:
        parser.error("--base-ip must leave room for --nodes addresses inside 127.0.0.0/8")

    workdir = Path(tempfile.mkdtemp(prefix="meshnet-demo-"))
    agents: list[Agent] = []
    ok = False
    try:
        first = _start("node-1", str(base), args.port, workdir, None, args.profile)
        agents.append(first)
        _wait_until(lambda: _bound_port(first) is not None, 15, "node-1's API", agents)
        seed = f"{first.addr}:{_bound_port(first)}"
        for i in range(2, args.nodes + 1):
            agents.append(_start(f"node-{i}", str(base + i - 1), args.port, workdir, seed, args.profile))
        names = {a.name for a in agents}
        print(f"started {args.nodes} agents on {base}..{base + args.nodes - 1}, waiting for them to converge")
        _wait_until(
            lambda: all(_alive_names(a) >= names for a in agents),
            args.timeout,
            f"every agent to see all {args.nodes} members alive",
            agents,
        )
        print(f"\n$ meshnetctl --api {first.api} members")
        sys.stdout.flush()
        ctl.main(["--api", str(first.api), "members"])
        _show_networkdb(first, agents[-1], agents, args.timeout)
        ok = True
        if args.keep:
            print("\nthe agents keep running:")
            for a in agents:
                print(f"  {a.name}  pid {a.proc.pid}  meshnetctl --api {a.api} members  (log {a.log_path})")
            pids = " ".join(str(a.proc.pid) for a in agents)
            print(f"stop them with: kill {pids}   (then remove {workdir})")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the agents", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        for agent in agents:
            print(f"--- {agent.name} log:\n{_log_tail(agent)}", file=sys.stderr)
        return 1
    finally:
        if not (ok and args.keep):
            _stop_quietly(agents)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for agent in agents:
                agent.log_file.close()


def _stop_quietly(agents: Sequence[Agent]) -> None:
    # A second Ctrl-C during the stop must not leave agents behind.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _stop(agents)
        print(f"stopped {len(agents)} agents (SIGTERM: graceful leave)")
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
