"""meshnet: one container network across many Linux hosts, with no central manager.

Rings (see docs/DESIGN.md): pure cores (``meshnet.core``, ``meshnet.gossip``, ...), the dataplane
port (``meshnet.dataplane``) and the trio runtime shell (``meshnet.runtime``).
"""

__version__ = "0.1.0"
