"""Real ``meshnet-agent`` processes on loopback for integration tests (``--dataplane none --profile local``).

``Pool`` starts agents, remembers each by PID and stops it by that PID (``stop_all``: SIGCONT first for a
stopped one, SIGTERM, then SIGKILL after 10 s); children die with pytest (PR_SET_PDEATHSIG). ``pool_fixture``
makes the pytest fixture that also removes the work directory (sockets, logs, state directories).
Test modules subclass ``Agent`` for their own API helpers and pass the class to ``Pool``.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshnet import ctl

BIN = Path(sys.executable).parent
AGENT = str(BIN / "meshnet-agent")
CTL = str(BIN / "meshnetctl")


def _die_with_parent() -> None:  # in the child, between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


@dataclass
class Agent:
    name: str
    ip: str
    port: int
    api: Path
    state: Path
    log: Path
    proc: subprocess.Popen
    stopped: bool = False

    def call(self, method: str, target: str, body: Any = None, timeout: float = 30.0) -> Any:
        return ctl.call(str(self.api), method, target, body=body, timeout=timeout)

    def get(self, target: str) -> Any:
        """The JSON body, or None when the agent answers an error or does not answer."""
        try:
            return self.call("GET", target)
        except (ctl.AgentError, ctl.AgentUnreachable):
            return None

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CTL, "--api", str(self.api), *args], capture_output=True, text=True, timeout=timeout
        )

    def states(self) -> dict[str, str]:
        body = self.get("/v1/members")
        return {} if body is None else {m["name"]: m["state"] for m in body["members"]}


def wait_until(
    pred: Callable[[], bool], timeout: float, what: str, describe: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{describe()}")


class Pool:
    def __init__(self, workdir: Path, agent_class: type[Agent] = Agent) -> None:
        self.workdir = workdir
        self.agent_class = agent_class
        self.agents: dict[str, Any] = {}
        self.history: list[Any] = []

    def start(
        self, name: str, ip: str, *, port: int = 0, join: Agent | None = None, state: Path | None = None
    ) -> Any:
        """Start an agent (state directory ``WORKDIR/NAME.state`` unless given) and wait for its API."""
        api = self.workdir / f"{name}.sock"
        state = state or self.workdir / f"{name}.state"
        log = self.workdir / f"{name}.{len(self.history)}.log"
        argv = [AGENT, "run", "--name", name, "--bind", f"{ip}:{port}", "--api", str(api)]
        argv += ["--state-dir", str(state), "--dataplane", "none", "--profile", "local"]
        if join is not None:
            argv += ["--join", f"{join.ip}:{join.port}"]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        agent = self.agent_class(name, ip, port, api, state, log, proc)
        self.agents[name] = agent
        self.history.append(agent)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}\n{self.describe()}")
            info = agent.get("/v1/agent")
            if info is None:
                return False
            agent.port = info["port"]
            return True

        wait_until(up, 20, f"{name}'s API", self.describe)
        return agent

    def describe(self) -> str:
        out = []
        for a in self.history:
            text = a.log.read_text(errors="replace") if a.log.exists() else ""
            out.append(f"----- {a.name} (pid {a.proc.pid}, rc {a.proc.poll()})\n{text[-4000:]}")
        return "\n".join(out)

    def kill(self, agent: Agent) -> None:
        agent.proc.kill()
        agent.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for agent in reversed(self.history):
            if agent.proc.poll() is not None:
                continue
            if agent.stopped:
                agent.proc.send_signal(signal.SIGCONT)
            agent.proc.send_signal(signal.SIGTERM)
            try:
                agent.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait()


def pool_fixture(prefix: str, agent_class: type[Agent] = Agent) -> Any:
    """A pytest fixture yielding a ``Pool`` in a fresh work directory, cleaned up also on failure."""

    @pytest.fixture
    def pool() -> Iterator[Pool]:
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        p = Pool(workdir, agent_class)
        try:
            yield p
        finally:
            try:
                p.stop_all()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)

    return pool
