"""NetworkDB in the simulator: each node runs a ``NetworkDB`` riding its ``Swim`` core.

Theory of operation. ``NdbSim`` builds a ``Cluster`` whose ``rider_factory`` makes one NetworkDB per
core life, wired as ``meshnet/networkdb/README.md`` says, through the shared drive step
(``meshnet.core.drive.drain_stacked``/``fire_due_stacked``, see ``Cluster._step``): Swim's events go to
``handle_gossip_event`` (member events and ``UserMessageReceived``), NetworkDB's broadcasts and
messages go out through ``send_user``/``send_user_to``, and the node's timer is the earlier of the two
deadlines. Rider events are handled before the step's datagrams are sent.

State directory. ``SimNode.state`` outlives crashes and plays the agent's state directory:
``HighWaterRaised`` and ``ClusterIdSet`` are persisted there, and (``keep_state=True``, the agent's
behaviour) so are the networks the node joined and the entries it owns, which a restarted core
re-joins and re-creates right after construction, before any input, as the README requires.
``restart(..., wipe=True)`` is a restart with an empty state directory: the node's entries are then
deleted cluster-wide by owner authority.

API calls (``put``/``delete``/``join_network``/``leave_network``) go through ``Cluster.with_rider``
so their outputs are driven at the current virtual time. Reads return plain dicts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from meshnet.networkdb import NetworkDB
from meshnet.networkdb.events import ClusterIdSet, HighWaterRaised
from sim.cluster import Cluster, NodeRef, SimNode

__all__ = ["NdbSim"]

Slot = tuple[str, str, str]  # (network, table, key)


class NdbSim:
    """A ``Cluster`` of Swim + NetworkDB nodes and the state directories of its nodes."""

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        gossip_config: Any,
        ndb_config: Any,
        link: Any = "lan",
        keep_state: bool = True,
        **cluster_kwargs: Any,
    ) -> None:
        self.seed = seed
        self.ndb_config = ndb_config
        self.keep_state = keep_state
        self.c = Cluster(
            n,
            seed=seed,
            config=gossip_config,
            link=link,
            rider_factory=self._make_rider,
            **cluster_kwargs,
        )
        self.c.rider_listeners.append(self._persist)
        #: Extra ``fn(node, t_us, event)`` for NetworkDB events (after persistence).
        self.listeners: list[Callable[[SimNode, int, Any], None]] = []

    # -- wiring -----------------------------------------------------------------------------------

    def _make_rider(self, node: SimNode, now: float) -> NetworkDB:
        st = node.state
        db = NetworkDB(
            self.ndb_config,
            name=node.name,
            rng=random.Random(f"{self.seed}:{node.name}:db:{node.life}"),
            now=now,
            cluster_id=st.get("cluster_id"),
            high_water=st.get("high_water", 0),
        )
        if self.keep_state:
            for net in sorted(st.get("networks", ())):
                db.join_network(net, now=now)
            for (net, table, key), value in sorted(st.get("own", {}).items()):
                db.put_entry(table, net, key, value, now=now)
        return db

    def _persist(self, node: SimNode, t_us: int, ev: Any) -> None:
        if isinstance(ev, HighWaterRaised):
            node.state["high_water"] = max(node.state.get("high_water", 0), ev.high_water)
        elif isinstance(ev, ClusterIdSet):
            node.state["cluster_id"] = ev.cluster_id
        for fn in self.listeners:
            fn(node, t_us, ev)

    # -- API --------------------------------------------------------------------------------------

    def db(self, ref: NodeRef) -> NetworkDB:
        return self.c.node(ref).rider

    def join_network(self, ref: NodeRef, network: str) -> None:
        node = self.c.node(ref)
        node.state.setdefault("networks", set()).add(network)
        self.c.with_rider(node, lambda db, now: db.join_network(network, now=now))

    def leave_network(self, ref: NodeRef, network: str) -> None:
        node = self.c.node(ref)
        node.state.setdefault("networks", set()).discard(network)
        own = node.state.setdefault("own", {})
        for slot in [s for s in own if s[0] == network]:
            del own[slot]
        self.c.with_rider(node, lambda db, now: db.leave_network(network, now=now))

    def put(self, ref: NodeRef, network: str, table: str, key: str, value: bytes) -> Any:
        node = self.c.node(ref)
        node.state.setdefault("own", {})[(network, table, key)] = value
        return self.c.with_rider(node, lambda db, now: db.put_entry(table, network, key, value, now=now))

    def delete(self, ref: NodeRef, network: str, table: str, key: str) -> Any:
        node = self.c.node(ref)
        node.state.setdefault("own", {}).pop((network, table, key), None)
        return self.c.with_rider(node, lambda db, now: db.delete_entry(table, network, key, now=now))

    def restart(self, ref: NodeRef, seeds: Any = None, *, wipe: bool = False) -> SimNode:
        """Restart a crashed node (with its state directory, or an empty one when ``wipe``)."""
        node = self.c.node(ref)
        if wipe:
            node.state.clear()
        return self.c.restart(node, seeds)

    # -- reads ------------------------------------------------------------------------------------

    def view(self, ref: NodeRef, network: str, tables: tuple[str, ...]) -> dict[tuple[str, str], bytes]:
        """A node's visible entries of ``network``: {(table, key): value}."""
        db = self.db(ref)
        out: dict[tuple[str, str], bytes] = {}
        for table in tables:
            for e in db.walk_table(table, network):
                out[(table, e.key)] = e.value
        return out
