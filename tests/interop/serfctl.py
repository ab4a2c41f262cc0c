"""Run real serf agents and meshnet agents side by side on loopback, for interop tests and benches.

Every process is started here, its PID remembered in a ``Processes`` registry, and stopped by that PID
(never by name). Children also get ``PR_SET_PDEATHSIG(SIGKILL)``, so they die with the Python process
that started them even if it is killed. Agents bind 127.0.0.x addresses only.

    procs = Processes(log_dir)
    try:
        pool = AddressPool()
        s1 = SerfAgent.start(procs, serf_bin, "s1", pool.take(), rpc=..., tags={"role": "x"})
        m1 = MeshnetAgent.start(procs, "m1", pool.take(), api=log_dir / "m1.sock", join=[s1.bind])
        wait_for(lambda: s1.status_of("m1") == "alive", timeout=20, what="m1 alive in serf")
    finally:
        procs.stop_all()
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

__all__ = [
    "Addr",
    "AddressPool",
    "Member",
    "MeshnetAgent",
    "Proc",
    "Processes",
    "SerfAgent",
    "ProcessExited",
    "Timeout",
    "fmt_addr",
    "meshnet_command",
    "new_key",
    "parse_meshnet_members",
    "parse_serf_members",
    "wait_for",
    "write_keyring",
]

Addr = tuple[str, int]
T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def fmt_addr(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# processes


@dataclass
class Proc:
    """One child process: its argv, log file and Popen. Stopped only through its own PID."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.running():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.send(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 0.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.running() and grace > 0:
            self.send(sig)
            rc = self.wait(grace)
            if rc is not None:
                return rc
        if self.running():
            self.popen.send_signal(signal.SIGKILL)
        return self.popen.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Registry of every process a test or bench started; ``stop_all()`` in a ``finally``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                preexec_fn=_die_with_parent,  # children die with us
            )
        proc = Proc(name, list(argv), log_path, popen, time.monotonic())
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGKILL every process still running, by PID, and reap it."""
        for proc in self.procs:
            if proc.running():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)

    def report(self, lines: int = 40) -> str:
        """Every process's argv, exit state and log tail (for a failing test's output)."""
        parts = []
        for proc in self.procs:
            state = "running" if proc.running() else f"exit {proc.popen.returncode}"
            parts.append(
                f"----- {proc.name} (pid {proc.pid}, {state}): {' '.join(proc.argv)}\n{proc.log_tail(lines)}"
            )
        return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# addresses


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


class AddressPool:
    """Hands out 127.0.0.x addresses, each with a port free for both UDP and TCP right now.

    Ports come from 20000-32000, below Linux's ephemeral range, so outgoing connections cannot take
    them between the check and the agent's bind.
    """

    def __init__(self, first: int = 100, last: int = 250, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.hosts = list(range(first, last + 1))
        self.rng.shuffle(self.hosts)
        self.next = 0
        self.taken: set[Addr] = set()

    def next_ip(self) -> str:
        ip = f"127.0.0.{self.hosts[self.next % len(self.hosts)]}"
        self.next += 1
        return ip

    def port_on(self, ip: str) -> int:
        for _ in range(500):
            port = self.rng.randrange(20000, 32000)
            if (ip, port) not in self.taken and _free(ip, port):
                self.taken.add((ip, port))
                return port
        raise RuntimeError(f"no free port on {ip}")

    def take(self) -> Addr:
        ip = self.next_ip()
        return ip, self.port_on(ip)


# --------------------------------------------------------------------------------------------------
# waiting


class Timeout(AssertionError):
    pass


class ProcessExited(RuntimeError):
    """The agent being asked has exited: waiting longer cannot help, so ``wait_for`` re-raises it."""


def wait_for(
    probe: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy; ``Timeout`` (an AssertionError) after ``timeout``.

    Exceptions from ``probe`` count as "not yet" and the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except ProcessExited:
            raise
        except Exception as exc:  # reported on timeout
            last = exc
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe is not None else ""
            raise Timeout(f"timed out after {timeout:.1f} s waiting for {what}; last probe: {last!r}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# keys


def new_key(size: int = 32) -> str:
    """A random AES key, base64, as ``serf keygen`` prints and ``serf agent -encrypt`` takes."""
    return base64.b64encode(os.urandom(size)).decode()


def write_keyring(path: Path, keys: Iterable[str]) -> Path:
    """serf's keyring file: a JSON array of base64 keys, the first one primary."""
    path.write_text(json.dumps(list(keys)) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# members


@dataclass(frozen=True)
class Member:
    name: str
    addr: str
    status: str  # alive, leaving, left, failed (serf's words; meshnet's "dead" is read as failed)
    tags: dict[str, str] = field(default_factory=dict)


def _status(raw: object) -> str:
    text = str(raw).strip().lower()
    return "failed" if text == "dead" else text


def parse_serf_members(text: str) -> dict[str, Member]:
    out = {}
    for m in json.loads(text)["members"]:
        out[m["name"]] = Member(m["name"], m["addr"], _status(m["status"]), dict(m.get("tags") or {}))
    return out


def parse_meshnet_members(text: str) -> dict[str, Member]:
    """``meshnetctl members --json``: a list of members, or ``{"members": [...]}``.

    Field names are read loosely (``name``/``Name``, ``addr``/``address``, ``status``/``state``,
    ``tags``) so the tests pin behaviour, not spelling.
    """
    data = json.loads(text)
    items = data.get("members", data) if isinstance(data, dict) else data
    out = {}
    for m in items:
        low = {str(k).lower(): v for k, v in m.items()}
        name = low["name"]
        addr = low.get("addr") or low.get("address") or ""
        if isinstance(addr, list | tuple):
            addr = fmt_addr((addr[0], int(addr[1])))
        if "port" in low and ":" not in str(addr):
            addr = f"{addr}:{low['port']}"
        status = low.get("status") or low.get("state") or ""
        out[name] = Member(name, str(addr), _status(status), dict(low.get("tags") or {}))
    return out


# --------------------------------------------------------------------------------------------------
# serf


@dataclass
class SerfAgent:
    name: str
    bind: Addr
    rpc: Addr
    proc: Proc
    serf_bin: str

    @classmethod
    def start(
        cls,
        procs: Processes,
        serf_bin: str,
        name: str,
        bind: Addr,
        rpc: Addr,
        *,
        join: Sequence[Addr] = (),
        keyring_file: Path | None = None,
        tags: Mapping[str, str] | None = None,
        profile: str = "local",
        extra: Sequence[str] = (),
    ) -> SerfAgent:
        """``serf agent -node NAME -bind IP:PORT -rpc-addr IP:RPC [-keyring-file F] [-tag k=v]... -profile P``.

        The keyring file is copied per agent (serf rewrites it when keys change).
        """
        argv = [serf_bin, "agent", f"-node={name}", f"-bind={fmt_addr(bind)}", f"-rpc-addr={fmt_addr(rpc)}"]
        argv.append(f"-profile={profile}")
        if keyring_file is not None:
            own = procs.log_dir / f"{name}.keyring.json"
            shutil.copyfile(keyring_file, own)
            argv.append(f"-keyring-file={own}")
        for key, value in (tags or {}).items():
            argv += ["-tag", f"{key}={value}"]
        for seed in join:
            argv.append(f"-join={fmt_addr(seed)}")
        argv += list(extra)
        agent = cls(name, bind, rpc, procs.spawn(name, argv), serf_bin)
        wait_for(
            agent.members,
            timeout=15,
            what=f"serf agent {name} RPC on {fmt_addr(rpc)}",
            describe=agent.describe,
        )
        return agent

    def describe(self) -> str:
        return f"----- {self.proc.name} (pid {self.proc.pid}):\n{self.proc.log_tail()}"

    def members(self) -> dict[str, Member]:
        if not self.proc.running():
            raise ProcessExited(f"serf agent {self.name} exited with {self.proc.popen.returncode}")
        out = subprocess.run(
            [self.serf_bin, "members", f"-rpc-addr={fmt_addr(self.rpc)}", "-format=json"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise RuntimeError(f"serf members: rc {out.returncode}: {out.stderr.strip()}")
        return parse_serf_members(out.stdout)

    def status_of(self, name: str) -> str | None:
        member = self.members().get(name)
        return None if member is None else member.status


# --------------------------------------------------------------------------------------------------
# meshnet


def _venv_tool(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable} nor on PATH; run scripts/bootstrap"
        )
    return found


def meshnet_command(
    name: str,
    bind: Addr,
    *,
    api: Path,
    join: Sequence[Addr] = (),
    keyring_file: Path | None = None,
    tags: Mapping[str, str] | None = None,
    profile: str = "local",
    extra: Sequence[str] = (),
) -> list[str]:
    """The agent CLI contract: ``meshnet-agent run --name N --bind IP:PORT [--join IP:PORT]...
    [--keyring FILE] --dataplane none --api PATH --state-dir DIR --profile P [--tag k=v]...``; the state
    directory sits next to the API socket (``NAME.state``), so it goes wherever the socket goes."""
    argv = [_venv_tool("meshnet-agent"), "run", "--name", name, "--bind", fmt_addr(bind)]
    for seed in join:
        argv += ["--join", fmt_addr(seed)]
    if keyring_file is not None:
        argv += ["--keyring", str(keyring_file)]
    argv += ["--dataplane", "none", "--api", str(api), "--profile", profile]
    argv += ["--state-dir", str(api.parent / f"{api.stem}.state")]
    for key, value in (tags or {}).items():
        argv += ["--tag", f"{key}={value}"]
    return argv + list(extra)


@dataclass
class MeshnetAgent:
    name: str
    bind: Addr
    api: Path
    proc: Proc

    @classmethod
    def start(
        cls,
        procs: Processes,
        name: str,
        bind: Addr,
        *,
        api: Path | None = None,
        join: Sequence[Addr] = (),
        keyring_file: Path | None = None,
        tags: Mapping[str, str] | None = None,
        profile: str = "local",
        extra: Sequence[str] = (),
        ready_timeout: float = 20.0,
    ) -> MeshnetAgent:
        api = api or procs.log_dir / f"{name}.sock"
        argv = meshnet_command(
            name, bind, api=api, join=join, keyring_file=keyring_file, tags=tags, profile=profile, extra=extra
        )
        agent = cls(name, bind, api, procs.spawn(name, argv))
        wait_for(
            lambda: name in agent.members(),
            timeout=ready_timeout,
            what=f"meshnet agent {name} answering `meshnetctl members` on {api}",
            interval=0.3,
            describe=agent.describe,
        )
        return agent

    def describe(self) -> str:
        return f"----- {self.proc.name} (pid {self.proc.pid}):\n{self.proc.log_tail()}"

    def members(self) -> dict[str, Member]:
        if not self.proc.running():
            raise ProcessExited(f"meshnet agent {self.name} exited with {self.proc.popen.returncode}")
        out = subprocess.run(
            [_venv_tool("meshnetctl"), "--api", str(self.api), "members", "--json"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise RuntimeError(f"meshnetctl members: rc {out.returncode}: {out.stderr.strip()[-500:]}")
        return parse_meshnet_members(out.stdout)

    def status_of(self, name: str) -> str | None:
        member = self.members().get(name)
        return None if member is None else member.status
