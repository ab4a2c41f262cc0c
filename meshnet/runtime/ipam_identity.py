"""The IPAM service's identity boundary: hosts (gossip names) outside, IPAM identities inside the core.

Identities (ipam.md 3.10). The IPAM identity is one agent life, not the host: its name is
``HOST~xxxxxxxx`` (``HOST`` = the gossip name ``--name``, ``x`` = the low 32 bits of the random
incarnation in hex) and its ``host`` is the gossip name. A state directory resumes the identity, its
beliefs and allocations at once (``Ipam.restore``). ``leave`` (the agent's graceful leave: SIGTERM,
``meshnetctl leave``) is the core's: blocks go to heirs and the identity is retired; a restart with that
state directory keeps the retired state aside (``ipam.retired-N``) and starts a new identity of the same
host; so does a restart with an empty directory. The boundary translates:

- *Who runs where.* Each agent writes ``ipam.identity`` (scope ``""``, key = its host, value = its
  identity name); NetworkDB's owner authority makes a restarted host's value beat its previous life's.
  ``ipam.node`` records (accepted only when their ``host`` is the NetworkDB owner) and the writers of
  accepted records add identities of a host; a name's own ``HOST~`` prefix stands in until then.
- *Records.* NetworkDB names the writing host; an ``ipam.*`` key names the writing identity. A record
  reaches the core (with ``owner`` = that identity) only if the identity is of that host; else it is
  counted (``foreign_records``) and dropped.
- *Verdicts.* A host's current identity shares the host's gossip verdict; its other identities are
  superseded and told ``left`` (the host runs a newer identity, so they are gone: the core's
  ``_superseded`` and retired-owner reclaim rely on them not being alive). Before the host announced
  its identity, the only one known of it (or a legacy identity named as its host) counts as current;
  with several, a live host's identities are told ``failed``.
- *Predecessors.* After a restart without the state directory NetworkDB deletes this host's previous
  entries, its identities' ``ipam.node`` records included, so the core would never learn (and adopt)
  them. Every name of this host's form met in a record (writer, grant target, reclaimer, origin of a
  copy, retired subject, the previous ``ipam.identity`` value) is therefore handed to the core as a node
  record of this host; the core then retires it and takes its blocks back (predecessor adoption; the
  peers using a network reclaim its blocks there).
- *Operator.* ``reclaim`` takes a host (its identities that are not running: all if the host is not
  alive, else the superseded ones) or an exact identity; listings and allocation answers give
  ``owner`` as the host and ``owner_identity``; error messages name hosts in their reclaim commands.

``IdentityBoundary`` is a mixin of ``IpamService`` (``meshnet/runtime/ipam_svc.py``): it uses the
service's ``core``, ``node``, ``counters`` and identity maps, and runs only inside the service's inputs
(the inbox task or an operation's task), never in a hook.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Any

from meshnet.core.errors import DecodeError
from meshnet.ipam import TABLE_BLOCK, TABLE_NODE, TABLE_RETIRED
from meshnet.ipam.records import (
    NodeRecord,
    decode_block,
    decode_node,
    encode_node,
    parse_block_key,
    parse_writer_key,
)
from meshnet.runtime.ipam_wire import identity_host

__all__ = ["IdentityBoundary"]

log = logging.getLogger("meshnet.ipam")


class IdentityBoundary:
    """Host <-> identity translation for ``IpamService`` (see the module docstring)."""

    def host_of(self, ident: str) -> str:
        """The host (gossip name) of an IPAM identity: its verified node record's, else its name's."""
        return self._host_by_ident.get(ident) or identity_host(ident)

    def _learn(self, ident: str, host: str) -> bool:
        """Record that ``ident`` is an identity of ``host``; True if that is news."""
        old = self._host_by_ident.get(ident)
        if old == host:
            return False
        if old is not None:
            self._idents.get(old, set()).discard(ident)
        self._host_by_ident[ident] = host
        self._idents.setdefault(host, set()).add(ident)
        return True

    def _on_record(self, e: Any, now: float) -> None:
        """An ``ipam.*`` entry: NetworkDB names its writer host (``e.owner``), the key its writer identity.
        Passed to the core only if that identity is the host's (node record, else the name); the core
        then checks the key against the identity as ``owner``."""
        core = self.core
        assert core is not None
        try:
            if e.table == TABLE_NODE:
                writer = e.key
            elif e.table == TABLE_BLOCK:
                writer = parse_block_key(e.key)[2]
            else:
                writer = parse_writer_key(e.key)[1]
        except DecodeError:
            core.handle_record(e.table, e.network, e.key, e.value, now=now)  # counted by the core
            return
        if e.table == TABLE_NODE:
            try:
                host = decode_node(e.value).host
            except DecodeError:
                core.handle_record(e.table, e.network, e.key, e.value, now=now)
                return
            if host != e.owner:
                self.counters["foreign_records"] += 1
                return
            self._noded.add(writer)
        elif self.host_of(writer) != e.owner:
            self.counters["foreign_records"] += 1
            return
        if self._learn(writer, e.owner):
            self._reconcile(e.owner, now)
        self._spot_predecessors(e, writer, now)
        core.handle_record(e.table, e.network, e.key, e.value, owner=writer, now=now)

    def _spot_predecessors(self, e: Any, writer: str, now: float) -> None:
        """Names of earlier identities of this host in a record (writer, grant target, reclaimer,
        origin of a copy, retired subject) that no node record told the core about: after a restart
        without the state directory NetworkDB deletes this host's previous entries (owner authority),
        its node records included, so the core would never adopt them. Tell it (host = this host)."""
        core = self.core
        assert core is not None
        names = [writer]
        if e.table == TABLE_BLOCK:
            with contextlib.suppress(DecodeError):
                r = decode_block(e.value)
                names += [r.to, r.by, r.origin]
        elif e.table == TABLE_RETIRED:
            names.append(parse_writer_key(e.key)[0])
        me = self.node.name
        for n in names:
            if not n or n == core.name or n in self._predecessors or identity_host(n) != me:
                continue
            self._predecessors.add(n)
            if n in self._noded:
                continue  # its node record reached the core
            self._noded.add(n)
            self.counters["predecessors_found"] += 1
            self._learn(n, me)
            log.info("IPAM: %s is an earlier identity of this host; adopting its blocks", n)
            core.handle_record(TABLE_NODE, "", n, encode_node(NodeRecord(me, 0, "")), owner=n, now=now)

    def _on_identity(self, e: Any, now: float) -> None:
        """``ipam.identity``: a host's current IPAM identity (written by the host itself)."""
        core = self.core
        assert core is not None
        try:
            ident = e.value.decode()
        except UnicodeDecodeError:
            ident = ""
        if e.key != e.owner or not ident or self.host_of(ident) != e.key:
            self.counters["foreign_records"] += 1
            return
        if e.key == self.node.name:
            if ident != core.name and ident not in self._predecessors and ident not in self._noded:
                # this host's previous life (NetworkDB re-asserts ours over it)
                self._predecessors.add(ident)
                self._noded.add(ident)
                self.counters["predecessors_found"] += 1
                self._learn(ident, e.key)
                core.handle_record(
                    TABLE_NODE, "", ident, encode_node(NodeRecord(e.key, 0, "")), owner=ident, now=now
                )
            return
        self._learn(ident, e.key)
        self._current[e.key] = ident
        self._reconcile(e.key, now)

    def _verdict(self, host: str, state: str, now: float) -> None:
        """A gossip verdict (alive | failed | left) about ``host``."""
        self._gossip[host] = state
        self._reconcile(host, now)

    def _reconcile(self, host: str, now: float) -> None:
        """Tell the core about the identities of ``host``: its current one (``ipam.identity``) shares
        the host's gossip verdict; the others are superseded (the host runs a newer identity, so they
        are gone: ``left``). Until the host announced its current one, the only identity known of it
        (or a legacy identity named as its host) counts as current; with several, a live host's
        identities count as failed (the core neither sends them work nor picks them as heirs). This
        host's earlier identities are left to adoption."""
        core = self.core
        if core is None or host == self.node.name:
            return
        verdict = self._gossip.get(host)
        if verdict is None:
            return
        idents = self._idents.get(host, set())
        cur = self._current.get(host)
        if cur is None and idents:
            # not announced (yet): a legacy identity named as its host, or the only one known
            cur = host if host in idents else (next(iter(idents)) if len(idents) == 1 else None)
        for ident in sorted(idents):
            if ident == cur:
                want = verdict
            elif cur is not None:
                want = "left"
            else:
                want = "failed" if verdict == "alive" else verdict
            if self._told.get(ident) == want:
                continue
            self._told[ident] = want
            if want == "alive":
                core.node_alive(ident, now=now)
            elif want == "failed":
                core.node_failed(ident, now=now)
            else:
                core.node_left(ident, now=now)

    def _on_messages(self, node: str, src: str, dst: str, payloads: list[bytes], now: float) -> None:
        """IPAM messages from host ``node``: for this identity, from an identity of that host."""
        core = self.core
        assert core is not None
        if dst != core.name:
            self.counters["misaddressed_messages"] += len(payloads)
            return
        if self.host_of(src) != node:
            self.counters["foreign_messages"] += len(payloads)
            return
        self.counters["messages_received"] += len(payloads)
        for p in payloads:
            core.receive_message(src, p, now=now)

    def _reclaim_targets(self, names: Sequence[str]) -> list[str]:
        out: list[str] = []
        me = self.node.name
        for n in names:
            idents = self._idents.get(n)
            if not idents:
                out.append(n)  # an identity name (or unknown: the core says so)
                continue
            cur = self.core.name if n == me else self._current.get(n)
            running = n == me or self._gossip.get(n) == "alive"
            gone = sorted(i for i in idents if i != cur or not running)
            out.extend(gone or [cur or n])  # nothing gone: the core refuses the live identity
        return list(dict.fromkeys(out))

    def _readable(self, text: str) -> str:
        """A core message with the reclaim commands naming hosts (a host reclaims its gone identities)."""

        def hosts(m: re.Match[str]) -> str:
            names = dict.fromkeys(self.host_of(x) for x in m.group(1).split())
            return f"`meshnetctl ipam reclaim {' '.join(names)}`"

        return re.sub(r"`meshnetctl ipam reclaim ([^`]*)`", hosts, text)
