"""The CNM controller core (pure): validation, lookups and operations as ordered steps with undo.

Theory of operation. The controller holds what one host knows of the CNM: a mirror of the replicated
tables (``networks``; ``endpoint_table`` of the networks this host has joined in NetworkDB), fed by the
runtime from NetworkDB watch events (``apply_network_entry``/``apply_endpoint_entry``; a malformed value
is counted and dropped), and this host's sandboxes (its own state, saved in ``sandboxes.json``).

Every mutating request is a method that validates its input against that state (raising a
``meshnet.cnm.errors`` subclass and changing nothing on bad input) and returns an ``Operation``: the steps
in libnetwork's order with their undo actions (``meshnet.cnm.steps`` says how the runtime drives it). The
runtime must run one operation at a time (a lock): each was validated against the state its
predecessors left. The orders (libnetwork.md 1.2-1.6):

- network create: IPAM (VNI, subnets, gateways) -> ``networks`` entry.
- network delete: IPAM delete (refuses while addresses are held anywhere) -> ``networks`` entry deleted.
- endpoint create: attach to the network (IPAM + NetworkDB join) -> re-check the name against what the
  join synced -> allocate IPv4 / IPv6 -> ``endpoint_table`` entry (MAC from the IPv4 address) -> dataplane
  (the network's overlay namespace: a local address hides a remote record holding it, ``endpoint_ops``).
- endpoint delete: entry deleted -> dataplane (the overlay namespace: remote records the address hid) ->
  addresses released -> leave the NetworkDB network if it was the last.
- sandbox create: local state -> ``sandboxes.json`` -> dataplane (the namespace, ``lo`` up).
- join: local state (interface name) -> ``sandboxes.json`` -> dataplane (overlay namespace on the first
  join, veth, addresses) -> endpoint entry with its sandbox (libnetwork: driver Join before the table).
- leave: local state -> ``sandboxes.json`` -> dataplane (veth gone; the overlay namespace after the last
  leave) -> endpoint entry without sandbox.
- sandbox delete: leave every joined endpoint (last joined first), then the sandbox, then (by default,
  as ``docker rm`` does) delete the endpoints it had.
- attach: endpoint create, sandbox create if missing, join: one operation, all or nothing (the endpoint
  first, so peers program its record while this host creates and plugs the sandbox).

Ids are 24 lowercase hex characters from the injected ``random.Random``. Name lookups: an exact id
first, then the name; several networks with one name (created concurrently on two hosts) resolve to the
smallest ``(created, id)``.

Layout: this module only assembles ``Controller``; ``state`` holds the mirror, lookups, ids and step
helpers, ``validation`` the request checks, ``network_ops``/``endpoint_ops``/``sandbox_ops`` the
operations (each module says its part in detail).
"""

from __future__ import annotations

from .network_ops import NetworkOps
from .sandbox_ops import AttachResult, SandboxOps
from .state import CnmConfig
from .validation import MAX_VXLAN_PORT, MIN_VXLAN_PORT

__all__ = ["CnmConfig", "Controller", "AttachResult", "MIN_VXLAN_PORT", "MAX_VXLAN_PORT"]


class Controller(NetworkOps, SandboxOps):
    """One host's CNM state and the operations on it (module docstring).

    Assembled from cohesive parts: ``state`` (the mirror, lookups, ids, step helpers), ``network_ops``,
    ``endpoint_ops`` and ``sandbox_ops`` (which builds on ``endpoint_ops``); ``validation`` checks
    requests."""
