"""The trio runtime shell: the only trio code in meshnet.

``Node``/``run_node`` drive a ``Swim`` core over one UDP socket and one TCP listener on the same
IP:port; ``api`` serves the local HTTP/JSON control API on a unix socket; ``agent.serve_agent`` is
what ``meshnet-agent run`` runs (node + API + signals).
"""

from meshnet.runtime.node import Addr, Node, run_node

__all__ = ["Addr", "Node", "run_node"]
