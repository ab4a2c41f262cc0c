"""Who is alive, and who is attached to which network, as NetworkDB sees it.

Theory of operation:

``NodeBook`` mirrors the gossip layer's verdicts (the facade feeds it ``MemberJoined``/``Failed``/
``Left``/``Reaped``). States and what they mean for a node's entries:

    (unknown) --alive--> ALIVE --failed--> FAILED --alive (incarnation >= failed one)--> ALIVE
        any --left/reaped--> LEFT --alive--> ALIVE          LEFT --forget timer--> (unknown)

- ALIVE or unknown: entries visible (an unknown owner's entry flagged hidden by the peer that sent it
  stays hidden until the gossip layer says the owner is alive);
- FAILED: entries kept but hidden (libnetwork deleted them: moby#53141);
- LEFT: entries removed, and copies that arrive later are refused until the node is alive again or is
  forgotten ``node_forget_interval`` later.
An alive verdict with an incarnation below the failed one is stale and ignored; Swim is otherwise
authoritative (it only revives a dead member on a higher incarnation). Addresses come from member
events, or from the source of a node's traffic while none is known.

``AttachmentBook`` holds every (node, network) attachment record in the cluster, merged last-writer-
wins by ``Attachment.precedence`` (each record has one writer, the node itself). It answers "who is in
this network" and keeps an index per network and per node.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .entry import Attachment

__all__ = ["NodeState", "NodeRecord", "NodeBook", "AttachmentBook", "Addr"]

Addr = tuple[str, int]


class NodeState(Enum):
    ALIVE = "alive"
    FAILED = "failed"
    LEFT = "left"


@dataclass(slots=True)
class NodeRecord:
    name: str
    state: NodeState
    incarnation: int = 0


class NodeBook:
    """Node states and addresses."""

    __slots__ = ("_nodes", "_addrs", "_alive")

    def __init__(self) -> None:
        self._nodes: dict[str, NodeRecord] = {}
        self._addrs: dict[str, Addr] = {}
        self._alive = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, name: str) -> NodeRecord | None:
        return self._nodes.get(name)

    def state(self, name: str) -> NodeState | None:
        rec = self._nodes.get(name)
        return None if rec is None else rec.state

    def addr(self, name: str) -> Addr | None:
        return self._addrs.get(name)

    def learn_addr(self, name: str, addr: Addr) -> None:
        """Remember ``addr`` for ``name`` unless a member event already told us one."""
        self._addrs.setdefault(name, addr)

    @property
    def alive_count(self) -> int:
        return self._alive

    def _set(self, rec: NodeRecord) -> None:
        prev = self._nodes.get(rec.name)
        self._alive += (rec.state is NodeState.ALIVE) - (prev is not None and prev.state is NodeState.ALIVE)
        self._nodes[rec.name] = rec

    def set_alive(self, name: str, addr: Addr | None, incarnation: int) -> None:
        self._set(NodeRecord(name, NodeState.ALIVE, incarnation))
        if addr is not None:
            self._addrs[name] = addr

    def set_failed(self, name: str, incarnation: int) -> None:
        self._set(NodeRecord(name, NodeState.FAILED, incarnation))

    def set_left(self, name: str) -> None:
        rec = self._nodes.get(name)
        self._set(NodeRecord(name, NodeState.LEFT, rec.incarnation if rec else 0))

    def forget(self, name: str) -> None:
        rec = self._nodes.pop(name, None)
        if rec is not None and rec.state is NodeState.ALIVE:
            self._alive -= 1
        self._addrs.pop(name, None)

    def names(self, state: NodeState | None = None) -> list[str]:
        return sorted(n for n, r in self._nodes.items() if state is None or r.state is state)


class AttachmentBook:
    """Every known attachment record, indexed by network and by node."""

    __slots__ = ("_recs", "_by_net", "_by_node")

    def __init__(self) -> None:
        self._recs: dict[tuple[str, str], Attachment] = {}
        self._by_net: dict[str, set[str]] = {}
        self._by_node: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._recs)

    def get(self, node: str, network: str) -> Attachment | None:
        return self._recs.get((node, network))

    def put(self, att: Attachment) -> Attachment | None:
        """Store ``att`` unconditionally; return the record it replaced."""
        key = (att.node, att.network)
        prev = self._recs.get(key)
        self._recs[key] = att
        self._by_net.setdefault(att.network, set()).add(att.node)
        self._by_node.setdefault(att.node, set()).add(att.network)
        return prev

    def remove(self, node: str, network: str) -> Attachment | None:
        prev = self._recs.pop((node, network), None)
        if prev is not None:
            nodes = self._by_net[network]
            nodes.discard(node)
            if not nodes:
                del self._by_net[network]
            nets = self._by_node[node]
            nets.discard(network)
            if not nets:
                del self._by_node[node]
        return prev

    def of_network(self, network: str) -> list[Attachment]:
        """Records of ``network`` (joins and leaves), sorted by node."""
        return [self._recs[(n, network)] for n in sorted(self._by_net.get(network, ()))]

    def of_node(self, node: str) -> list[Attachment]:
        """Records of ``node``, sorted by network."""
        return [self._recs[(node, n)] for n in sorted(self._by_node.get(node, ()))]

    def members(self, network: str) -> list[str]:
        """Nodes with a join (not leave) record for ``network``, sorted."""
        return sorted(n for n in self._by_net.get(network, ()) if not self._recs[(n, network)].leaving)

    def all(self) -> list[Attachment]:
        return [self._recs[k] for k in sorted(self._recs)]
