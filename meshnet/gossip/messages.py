"""memberlist wire messages as values (memberlist-wire.md sections 3 and 4).

Each class is one message body; its ``TYPE`` is the first byte on the wire. Field names follow the
SWIM paper and memberlist, in snake case; the codec maps them to memberlist's Go field names.
Addresses are the raw 4- or 16-byte IP (``addr``/``target``/``source_addr``), as on the wire.
Framings (compound, compress, CRC, encryption) are not messages: ``codec`` applies and strips them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "MessageType",
    "NodeStateType",
    "Ping",
    "IndirectPingReq",
    "Ack",
    "Nack",
    "ErrResp",
    "Suspect",
    "Alive",
    "Dead",
    "PushNodeState",
    "PushPull",
    "UserMsg",
    "Message",
    "DEFAULT_VSN",
]


class MessageType(IntEnum):
    """First byte of every memberlist message. Append-only: never renumber."""

    PING = 0
    INDIRECT_PING = 1
    ACK_RESP = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK_RESP = 11
    HAS_CRC = 12
    ERR = 13
    # 244 is memberlist >= 0.3's hasLabel marker; serf 0.9.4 rejects it, and so do we.
    HAS_LABEL = 244


class NodeStateType(IntEnum):
    """memberlist's NodeStateType, as carried in push-pull node states."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


#: Vsn bytes [PMin, PMax, PCur, DMin, DMax, DCur] exactly as serf 0.9.4 sends them.
DEFAULT_VSN = bytes([1, 5, 2, 2, 5, 5])


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe. ``node`` is the target's name ('' = don't check)."""

    TYPE = MessageType.PING
    seq_no: int
    node: str = ""
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class IndirectPingReq:
    """Ask a peer to probe ``target:port`` (named ``node``) for us; ``nack`` asks for a nack."""

    TYPE = MessageType.INDIRECT_PING
    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    """Reply to a ping. ``payload`` is opaque (serf puts its coordinate there); None is msgpack nil."""

    TYPE = MessageType.ACK_RESP
    seq_no: int
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class Nack:
    """An indirect prober's 'I could not reach the target in time'."""

    TYPE = MessageType.NACK_RESP
    seq_no: int


@dataclass(frozen=True, slots=True)
class ErrResp:
    """Error reply on a TCP stream."""

    TYPE = MessageType.ERR
    error: str


@dataclass(frozen=True, slots=True)
class Suspect:
    """``from_node`` suspects ``node`` at ``incarnation``."""

    TYPE = MessageType.SUSPECT
    incarnation: int
    node: str
    from_node: str


@dataclass(frozen=True, slots=True)
class Alive:
    """``node`` is alive at ``incarnation`` with this address, meta and versions."""

    TYPE = MessageType.ALIVE
    incarnation: int
    node: str
    addr: bytes
    port: int
    meta: bytes | None = b""
    vsn: bytes = DEFAULT_VSN


@dataclass(frozen=True, slots=True)
class Dead:
    """``node`` is dead at ``incarnation``; ``from_node == node`` means a graceful leave."""

    TYPE = MessageType.DEAD
    incarnation: int
    node: str
    from_node: str


@dataclass(frozen=True, slots=True)
class PushNodeState:
    """One member as carried in a push-pull exchange."""

    name: str
    addr: bytes
    port: int
    meta: bytes | None
    incarnation: int
    state: int
    vsn: bytes = DEFAULT_VSN


@dataclass(frozen=True, slots=True)
class PushPull:
    """A whole push-pull frame: header, node states and the delegate's user state bytes."""

    TYPE = MessageType.PUSH_PULL
    join: bool
    states: tuple[PushNodeState, ...] = ()
    user_state: bytes = b""


@dataclass(frozen=True, slots=True)
class UserMsg:
    """Opaque delegate bytes (serf messages, NetworkDB traffic)."""

    TYPE = MessageType.USER
    payload: bytes = field(default=b"")


Message = Ping | IndirectPingReq | Ack | Nack | ErrResp | Suspect | Alive | Dead | PushPull | UserMsg
