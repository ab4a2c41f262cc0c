"""An agent process imports the big optional dependencies only when its configuration uses them.

cryptography (keyring), dnspython's ``dns.message`` (the DNS reference path) and pyroute2 (``--dataplane
kernel``) cost several MB of RSS each (bench/README.md, gossip section). The agent reports which it has
loaded in ``GET /v1/agent`` under ``debug.optional_modules_loaded`` (from ``sys.modules``); cryptography is
also checked independently in ``/proc/PID/maps`` (its compiled extension). Agents run on loopback with
``--dataplane none`` and are stopped by PID in the fixture's teardown.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.integration.test_agent_cli import Agent, Agents, agents, wait_until  # noqa: F401 - fixture

__all__ = ["agents"]


def _loaded(agent: Agent) -> list[str]:
    info = json.loads(agent.ctl("info", "--json").stdout)
    return info["debug"]["optional_modules_loaded"]


def _maps_mention(agent: Agent, needle: str) -> bool:
    return needle in Path(f"/proc/{agent.proc.pid}/maps").read_text()


def _gossip_rejects(agent: Agent) -> int:
    stats = json.loads(agent.ctl("info", "--json").stdout)["stats"]
    counts = {**stats["gossip"], **stats["runtime"]}
    return sum(
        v
        for k, v in counts.items()
        if isinstance(v, int) and ("error" in k or "garbage" in k or "decode" in k)
    )


def test_optional_modules_load_only_when_configured(agents: Agents, tmp_path: Path):
    plain = agents.start("imp-plain", "127.0.0.81")
    assert "cryptography" not in _loaded(plain)
    assert not _maps_mention(plain, "cryptography")
    assert "dns.message" not in _loaded(plain)
    assert "pyroute2" not in _loaded(plain)

    # A keyring agent loads cryptography (the check can see it) and tries to join the plaintext one: its
    # encrypted push-pull reaches the plaintext agent, which rejects it without loading cryptography.
    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps([base64.b64encode(bytes(range(32))).decode()]))
    before = _gossip_rejects(plain)
    keyed = agents.start("imp-key", "127.0.0.82", join=[plain.addr()], extra=["--keyring", str(keyring)])
    assert "cryptography" in _loaded(keyed)
    assert _maps_mention(keyed, "cryptography")
    wait_until(lambda: _gossip_rejects(plain) > before, 20, "the plaintext agent to reject encrypted traffic")
    assert "imp-key" not in plain.members()
    assert "cryptography" not in _loaded(plain)
    assert not _maps_mention(plain, "cryptography")
    assert "dns.message" not in _loaded(keyed) and "pyroute2" not in _loaded(keyed)
