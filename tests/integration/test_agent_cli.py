"""The real ``meshnet-agent`` and ``meshnetctl`` as subprocesses on loopback (127.0.0.x, ephemeral ports).

Every process a test starts is stopped by PID in the ``agents`` fixture's teardown. Waits poll with a
bounded deadline; nothing sleeps as an assertion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
AGENT = str(BIN / "meshnet-agent")
CTL = str(BIN / "meshnetctl")


def wait_until(
    pred: Callable[[], bool], timeout: float, what: str, describe: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{describe()}")


@dataclass
class Agent:
    name: str
    api: Path
    log: Path
    proc: subprocess.Popen

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([CTL, "--api", str(self.api), *args], capture_output=True, text=True, timeout=20)
        if check and out.returncode != 0:
            raise AssertionError(f"meshnetctl {' '.join(args)}: rc {out.returncode}: {out.stderr}")
        return out

    def members(self) -> dict[str, dict]:
        if self.proc.poll() is not None:
            raise AssertionError(f"agent {self.name} exited with {self.proc.returncode}:\n{self.log_text()}")
        out = self.ctl("members", "--json", check=False)
        if out.returncode != 0:
            return {}
        return {m["name"]: m for m in json.loads(out.stdout)["members"]}

    def addr(self) -> str:
        info = json.loads(self.ctl("info", "--json").stdout)
        return f"{info['addr']}:{info['port']}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Agents:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Agent] = []

    def start(
        self, name: str, ip: str, *, port: int = 0, join: list[str] = (), extra: list[str] = ()
    ) -> Agent:
        api = self.workdir / f"{name}.sock"
        log = self.workdir / f"{name}.log"
        argv = [AGENT, "run", "--name", name, "--bind", f"{ip}:{port}", "--api", str(api)]
        argv += ["--state-dir", str(self.workdir / f"{name}.state")]
        argv += ["--dataplane", "none", "--profile", "local", "--tag", f"role=r-{name}", "--tag", "dc=lab"]
        for seed in join:
            argv += ["--join", seed]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                argv + list(extra), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
            )
        agent = Agent(name, api, log, proc)
        self.started.append(agent)
        wait_until(lambda: name in agent.members(), 20, f"{name}'s API", self.describe)
        return agent

    def describe(self) -> str:
        return "\n".join(
            f"----- {a.name} (pid {a.proc.pid}, rc {a.proc.poll()})\n{a.log_text()}" for a in self.started
        )

    def stop_all(self) -> None:
        # One at a time, newest first: agents that leave together wait out their leave timeout.
        for agent in reversed(self.started):
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
                try:
                    agent.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    agent.proc.kill()
                    agent.proc.wait()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    pool = Agents(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def test_three_agents_join_see_tags_and_a_sigterm_is_a_leave(agents: Agents):
    a = agents.start("cli-a", "127.0.0.51")
    seed = a.addr()
    b = agents.start("cli-b", "127.0.0.52", join=[seed])
    c = agents.start("cli-c", "127.0.0.53", join=[seed])
    names = {"cli-a", "cli-b", "cli-c"}

    def all_alive() -> bool:
        return all(
            set(m) == names and all(x["state"] == "alive" for x in m.values())
            for m in (x.members() for x in (a, b, c))
        )

    wait_until(all_alive, 20, "every agent to see all three alive", agents.describe)
    view = a.members()
    assert view["cli-b"]["tags"] == {"role": "r-cli-b", "dc": "lab"}
    assert view["cli-c"]["addr"] == "127.0.0.53"

    table = a.ctl("members").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "ADDRESS", "STATE"]
    assert any(line.split()[0] == "cli-b" and "role=r-cli-b" in line for line in table[1:])

    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(timeout=15) == 0
    wait_until(
        lambda: (
            a.members().get("cli-b", {}).get("state") == "left"
            and c.members().get("cli-b", {}).get("state") == "left"
        ),
        15,
        "cli-b left in a's and c's view",
        agents.describe,
    )
    assert "member left: cli-b" in a.log_text()
    assert not b.api.exists()  # the API socket was removed on the way out


def test_meshnetctl_leave_stops_the_agent(agents: Agents):
    a = agents.start("cli-d", "127.0.0.54")
    out = a.ctl("leave")
    assert "left the cluster" in out.stdout
    assert a.proc.wait(timeout=15) == 0


def test_a_seed_that_is_down_is_retried_until_it_answers(agents: Agents, tmp_path: Path):
    # Pick a free port for the seed that is not running yet.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.55", 0))
        port = s.getsockname()[1]
    late = agents.start("cli-late", "127.0.0.56", join=[f"127.0.0.55:{port}"])
    wait_until(lambda: "retrying join" in late.log_text(), 15, "a logged join retry", agents.describe)
    assert late.proc.poll() is None  # still running
    seed = agents.start("cli-seed", "127.0.0.55", port=port)
    wait_until(
        lambda: (
            late.members().get("cli-seed", {}).get("state") == "alive"
            and seed.members().get("cli-late", {}).get("state") == "alive"
        ),
        40,
        "the late joiner and the seed to see each other",
        agents.describe,
    )


def run_agent(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(
        [AGENT, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--bind", "nonsense"], "IP:PORT"),
        (["run", "--bind", "127.0.0.57:99999"], "port"),
        (["run", "--name", "x"], "--bind"),
        (["run", "--bind", "127.0.0.57:0", "--dataplane", "bogus"], "invalid choice"),
        (["run", "--bind", "127.0.0.57:0", "--tag", "novalue"], "KEY=VALUE"),
        (["run", "--bind", "127.0.0.57:0", "--join", "host.example:7946"], "IP:PORT"),
        (["run", "--bind", "0.0.0.0:0"], "--advertise"),
        (["run", "--bogus"], "unrecognized arguments"),
        (["run", "--profile", "mars"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["run", "--bind", "127.0.0.57:0", "--config", "/nonexistent/agent.toml"], "--config"),
        (["run", "--bind", "127.0.0.57:0", "--keyring", "/nonexistent/keyring.json"], "keyring"),
    ],
)
def test_bad_flags_are_one_line_exit_2_and_nothing_starts(tmp_path: Path, args, needle):
    api = tmp_path / "never.sock"
    state = ["--state-dir", str(tmp_path / "state")]
    out = run_agent(*args, "--api", str(api), *state) if args[0] == "run" else run_agent(*args)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("meshnet-agent") and needle in lines[0], lines[0]
    assert not api.exists()


@pytest.mark.parametrize(
    "toml, needle",
    [
        ('bind = "127.0.0.57:0"\nnmae = "typo"\n', "unknown key 'nmae'"),
        ('bind = "127.0.0.57:0"\n[gossip]\nprobe_intervall = 1\n', "probe_intervall"),
        ('bind = "127.0.0.57:0"\n[gossip]\nprobe_timeout = 5.0\n', "probe_timeout"),
        ('bind = = "x"\n', "not valid TOML"),
        ("bind = 7946\n", "bind must be"),
    ],
)
def test_bad_config_file_is_one_line_exit_2(tmp_path: Path, toml, needle):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml)
    out = run_agent(
        "run", "--config", str(cfg), "--api", str(tmp_path / "a.sock"), "--state-dir", str(tmp_path / "s")
    )
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_port_in_use_is_one_line_exit_2(tmp_path: Path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.58", 0))
        port = holder.getsockname()[1]
        out = run_agent(
            "run",
            "--name",
            "x",
            "--bind",
            f"127.0.0.58:{port}",
            "--api",
            str(tmp_path / "a.sock"),
            "--state-dir",
            str(tmp_path / "s"),
        )
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot bind" in lines[0] and "--bind" in lines[0], out.stderr


def test_config_file_settings_and_flags_win(agents: Agents, tmp_path: Path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'name = "from-file"\nbind = "127.0.0.59:0"\nprofile = "local"\n'
        '[tags]\nzone = "z1"\n[gossip]\nprobe_interval = 0.5\nprobe_timeout = 0.2\n'
    )
    a = agents.start("from-flag", "127.0.0.59", extra=["--config", str(cfg)])
    members = a.members()
    # --name and --tag from flags win over the file's name and [tags].
    assert list(members) == ["from-flag"]
    assert members["from-flag"]["tags"] == {"role": "r-from-flag", "dc": "lab"}
    assert os.path.exists(a.api)


def test_agents_with_a_shared_keyring_join_and_sigint_is_graceful(agents: Agents, tmp_path: Path):
    import base64

    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps([base64.b64encode(bytes(range(32))).decode()]))
    a = agents.start("key-a", "127.0.0.60", extra=["--keyring", str(keyring)])
    b = agents.start("key-b", "127.0.0.70", join=[a.addr()], extra=["--keyring", str(keyring)])
    wait_until(
        lambda: a.members().get("key-b", {}).get("state") == "alive",
        15,
        "key-b alive at key-a",
        agents.describe,
    )
    b.proc.send_signal(signal.SIGINT)
    assert b.proc.wait(timeout=15) == 0
    wait_until(lambda: a.members().get("key-b", {}).get("state") == "left", 15, "key-b left", agents.describe)
