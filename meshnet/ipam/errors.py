"""Typed IPAM errors (ipam.md 3.7): never a hang, never a guess.

Theory of operation: an allocation that cannot be served locally ends, within the allocation budget, in
exactly one of these, delivered as the ``error`` of an ``OperationFailed`` event (operations are
asynchronous; nothing here is raised out of ``receive_*``):

- ``Exhausted``: every block owned by a reachable node is full (each such owner said so, or the caller
  owns it and it is full).
- ``Unreachable``: free space exists, but only at owners that are failed, gone or not answering. It names
  them (blocks, free addresses, state) and says how to reclaim: ``meshnetctl ipam reclaim NODE``.
- ``Unknown``: the caller has not learned enough yet (network config or ownership not synced); retryable.
- ``InUse``: a static (preferred) address is held by another holder.
- ``Conflict``: this identity may not allocate (retired by a leave or reclaim, or its state directory was
  rolled back); the message says what to do.
- ``ReclaimRefused``: a reclaim's preconditions do not hold (target alive, a member failed or not
  answering); the message names the nodes.

Bad local input (a malformed address, an address outside the network) raises ``LocalProtocolError`` at the
call instead, and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnet.core.errors import MeshnetError

__all__ = [
    "IpamError",
    "Exhausted",
    "Unreachable",
    "Unknown",
    "InUse",
    "Conflict",
    "ReclaimRefused",
    "OwnerInfo",
]


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """An owner named by ``Unreachable``: how many blocks and free units it holds, and its state as the
    caller sees it ("failed", "left", "retired", "unknown", or "not answering" for an alive node that
    did not answer within the budget)."""

    node: str
    blocks: int
    free: int
    state: str


class IpamError(MeshnetError):
    """An IPAM operation could not be done. ``code`` is stable (``ipam.<code>`` in the API)."""

    code = "error"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Exhausted(IpamError):
    code = "exhausted"


class Unreachable(IpamError):
    code = "unreachable"
    retryable = True

    def __init__(self, message: str, owners: tuple[OwnerInfo, ...] = ()) -> None:
        super().__init__(message)
        self.owners = owners

    @classmethod
    def naming(cls, what: str, owners: list[OwnerInfo]) -> Unreachable:
        """The standard message: which owners hold the space, and the reclaim command."""
        parts = [f"{o.blocks} blocks, {o.free} free, held by {o.node} ({o.state})" for o in owners]
        cmds = " or ".join(
            f"`meshnetctl ipam reclaim {o.node}`" for o in owners if o.state != "not answering"
        )
        hint = f"; run {cmds} if it is gone for good" if cmds else "; retry when it answers"
        return cls(f"no reachable free space in {what}: " + "; ".join(parts) + hint, tuple(owners))


class Unknown(IpamError):
    code = "unknown"
    retryable = True


class InUse(IpamError):
    code = "in_use"


class Conflict(IpamError):
    code = "conflict"


class ReclaimRefused(IpamError):
    code = "reclaim_refused"
    retryable = True
