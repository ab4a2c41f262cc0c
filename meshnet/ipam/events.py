"""Events the IPAM core emits (past tense, drained with ``Ipam.next_event()``).

Every operation (``allocate``, ``create_network``, ``reclaim``, ``leave``) returns an ``OpId`` at once and
ends in exactly one event carrying that id: its result, or ``OperationFailed`` with a typed ``IpamError``
(ipam.md 3.7), within the operation's budget. Result events are released only after the durable state
they report is persisted (write-ahead, ``state.py``), so a reported allocation survives a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

from .errors import IpamError
from .space import NetConfig

__all__ = [
    "OpId",
    "Allocated",
    "NetworkCreated",
    "Reclaimed",
    "LeaveCompleted",
    "OperationFailed",
    "Alarm",
    "IpamEvent",
]

OpId = NewType("OpId", int)


@dataclass(frozen=True, slots=True)
class Allocated:
    """``value`` (an address, a VNI or a pool subnet) is held for ``tag``; ``owner`` is the block's
    believer that recorded it (this node, or the owner that allocated it by proxy)."""

    op: OpId
    network: str
    space: str
    value: str
    tag: str
    owner: str


@dataclass(frozen=True, slots=True)
class NetworkCreated:
    """A network exists: its immutable config (subnets, VNI); this node believes every block."""

    op: OpId
    netcfg: NetConfig


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """A reclaim ended: ``blocks`` now believed here, ``abandoned`` left to a concurrent winner or to a
    newer owner this node had not seen."""

    op: OpId
    targets: tuple[str, ...]
    blocks: int
    abandoned: int


@dataclass(frozen=True, slots=True)
class LeaveCompleted:
    """A graceful leave handed its blocks over; ``unconfirmed`` blocks (space#k) had no confirming record
    from their heir within the wait (relays will deliver them) or no heir at all (reclaim them)."""

    op: OpId
    handed: int
    unconfirmed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OperationFailed:
    """Operation ``op`` (``what``: allocate, create_network, reclaim, leave) failed with ``error``."""

    op: OpId
    what: str
    error: IpamError


@dataclass(frozen=True, slots=True)
class Alarm:
    """Something that must never happen was seen (conflicting netcfg, two held records at one epoch, a
    rolled-back state directory, this identity retired while running). Counted; the core stays safe."""

    code: str
    message: str


IpamEvent = Allocated | NetworkCreated | Reclaimed | LeaveCompleted | OperationFailed | Alarm
