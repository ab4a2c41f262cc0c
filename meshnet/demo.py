"""A loopback demo of the gossip cluster: ``python -m meshnet.demo [--nodes 3] [--keep]``.

Starts N ``meshnet-agent`` processes on 127.0.0.21, 127.0.0.22, ... (``--dataplane none``, API sockets
and state directories in a temporary directory), waits until every agent sees all N members alive,
prints ``meshnetctl members`` from the first one, writes a NetworkDB entry on the first agent and lists
it on the last one once it arrived, then stops them by PID with SIGTERM (they leave gracefully) and removes
the temporary directory. It cleans up on failure and on Ctrl-C too. With ``--keep`` the agents keep
running and the demo prints how to talk to them and how to stop them. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import ipaddress
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnet.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="number of agents (1..200, default 3)")
    parser.add_argument("--base-ip", default="127.0.0.21", help="first loopback address (default 127.0.0.21)")
    parser.add_argument("--port", type=int, default=7946, help="gossip port on every address (default 7946)")
    parser.add_argument("--profile", default="local", choices=("local", "lan", "wan"), help="gossip timing")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for convergence")
    parser.add_argument("--keep", action="store_true", help="leave the agents running")
    args = parser.parse_args(argv)
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
