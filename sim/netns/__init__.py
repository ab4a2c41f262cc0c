"""The netns cluster harness: real ``meshnet-agent`` processes in network namespaces on a private underlay.

``python -m sim.netns up --hosts 3`` / ``container NAME --host h1 --network NET`` / ``exec NAME -- CMD`` /
``status`` / ``down``; ``Harness`` is the same from Python (tests use it with their own ``prefix`` and
``run_dir``). docs/agent-services.md section 6 is the contract; ``sim/netns/harness.py`` explains how.
"""

from sim.netns.harness import (
    BRIDGE,
    DEFAULT_RUN_DIR,
    GOSSIP_PORT,
    UNDERLAY,
    Harness,
    HarnessError,
    agent_binary,
    host_addr,
    list_netns,
    wait_until,
)

__all__ = [
    "Harness",
    "HarnessError",
    "DEFAULT_RUN_DIR",
    "UNDERLAY",
    "BRIDGE",
    "GOSSIP_PORT",
    "host_addr",
    "agent_binary",
    "list_netns",
    "wait_until",
]
