"""Events a ``Swim`` core emits (past tense, drained with ``Swim.next_event()``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Member",
    "MemberJoined",
    "MemberUpdated",
    "MemberSuspected",
    "MemberFailed",
    "MemberLeft",
    "MemberReaped",
    "UserMessageReceived",
    "MessageRejected",
    "NameConflict",
    "JoinCompleted",
    "JoinFailed",
    "LeaveCompleted",
    "MemberEvent",
]


@dataclass(frozen=True, slots=True)
class Member:
    """A snapshot of one member as this node sees it. ``state``: alive, suspect, dead, left."""

    name: str
    addr: str
    port: int
    meta: bytes
    incarnation: int
    state: str
    vsn: bytes
    state_changed_at: float


@dataclass(frozen=True, slots=True)
class MemberJoined:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """Meta (tags) or address of an alive member changed."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    member: Member
    from_node: str


@dataclass(frozen=True, slots=True)
class MemberFailed:
    member: Member
    from_node: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """A dead or left member was forgotten."""

    name: str


@dataclass(frozen=True, slots=True)
class UserMessageReceived:
    """Delegate bytes from a peer (UDP user message, piggybacked, or TCP user message)."""

    src: tuple[str, int]
    payload: bytes


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """Remote input that was dropped and counted (decode error, bad CRC, decrypt failure...)."""

    src: tuple[str, int]
    reason: str


@dataclass(frozen=True, slots=True)
class NameConflict:
    """Another address claims a member's name (memberlist's Conflict delegate)."""

    existing: Member
    other_addr: str
    other_port: int


@dataclass(frozen=True, slots=True)
class JoinCompleted:
    """A join push-pull with ``seed`` succeeded."""

    seed: tuple[str, int]
    members: int


@dataclass(frozen=True, slots=True)
class JoinFailed:
    seed: tuple[str, int]
    reason: str


@dataclass(frozen=True, slots=True)
class LeaveCompleted:
    """The leave broadcast drained (or timed out): the shell may stop."""

    drained: bool


MemberEvent = (
    MemberJoined
    | MemberUpdated
    | MemberSuspected
    | MemberFailed
    | MemberLeft
    | MemberReaped
    | UserMessageReceived
    | MessageRejected
    | NameConflict
    | JoinCompleted
    | JoinFailed
    | LeaveCompleted
)
