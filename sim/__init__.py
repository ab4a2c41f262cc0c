"""Deterministic virtual-time simulator for meshnet's pure cores (style.md section 3.9).

Theory of operation. One thread, one heap (``scheduler``), integer microseconds, a global tie-breaking
counter and seeded randomness everywhere, so a seed fixes a whole run and ``trace`` hashes it. The
``cluster`` drives real ``Swim`` cores through ``meshnet.core.drive`` over a modelled ``network``
(latency, loss, duplication, reordering, partitions); ``checks`` holds convergence and safety
predicates. Nothing here imports trio or the runtime, opens a socket or reads a clock inside the
simulated world. ``python -m sim gossip ...`` runs a scenario from the command line.
"""

from sim.checks import SafetyMonitor, members_agree, membership_converged, unconverged
from sim.cluster import Cluster, SimNode, node_addr
from sim.network import Latency, LinkParams, Network, profile
from sim.scheduler import Scheduler
from sim.trace import Trace

__all__ = [
    "Cluster",
    "SimNode",
    "node_addr",
    "Network",
    "Latency",
    "LinkParams",
    "profile",
    "Scheduler",
    "Trace",
    "SafetyMonitor",
    "membership_converged",
    "members_agree",
    "unconverged",
]
