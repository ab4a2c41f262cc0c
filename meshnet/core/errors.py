"""The meshnet error hierarchy (DESIGN.md "Errors").

Remote input never raises out of a core: a core raises ``RemoteProtocolError`` (or ``DecodeError``)
internally, catches it at its ``receive_*`` entry point, counts it and drops the input. Local misuse
(API, CLI, config) raises ``LocalProtocolError`` or ``ConfigError`` straight to the caller, with a
message that names the fix.
"""

from __future__ import annotations

__all__ = [
    "MeshnetError",
    "ConfigError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "DecodeError",
    "ApiError",
]


class MeshnetError(Exception):
    """Root of every error meshnet raises on purpose."""


class ConfigError(MeshnetError, ValueError):
    """Bad configuration given locally. The message says what to change."""


class ProtocolError(MeshnetError):
    """Abstract: a protocol rule was broken. Raise a subclass, never this class."""

    def __init__(self, *args: object) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract: raise LocalProtocolError or RemoteProtocolError")
        super().__init__(*args)


class LocalProtocolError(ProtocolError):
    """The local caller misused a core (wrong state, bad argument)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something that breaks the protocol. Counted and dropped at the core's edge."""


class DecodeError(RemoteProtocolError, ValueError):
    """Bytes from the wire could not be decoded."""


class ApiError(MeshnetError):
    """What the local control API answers: an HTTP status, a stable machine code and a message naming the fix."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
