"""The meshnet error hierarchy (DESIGN.md "Errors").

Remote input never raises out of a core: a core raises ``RemoteProtocolError`` (or ``DecodeError``)
internally, catches it at its ``receive_*`` entry point, counts it and drops the input. Local misuse
(API, CLI, config) raises ``LocalProtocolError`` or ``ConfigError`` straight to the caller, with a
message that names the fix.
"""

from __future__ import annotations

import errno as _errno
import os as _os

__all__ = [
    "MeshnetError",
    "ConfigError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "DecodeError",
    "DataplaneError",
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


class DataplaneError(MeshnetError):
    """The kernel (or ``MemoryDataplane``, which answers as the kernel would) refused a dataplane op.

    ``op`` is the refused op (a ``meshnet.dataplane.ops`` value, or None when no single op is to blame),
    ``errno`` the kernel's error number, ``index`` the op's position in the plan when known. Classify with
    ``is_not_found()``/``is_exists()`` rather than comparing numbers. After a failed ``apply`` re-observe and
    re-plan; never retry the same plan blindly.
    """

    def __init__(self, op: object, errno: int, message: str = "", *, index: int | None = None) -> None:
        self.op = op
        self.errno = errno
        self.index = index
        self.message = message or _os.strerror(errno)
        where = f" (plan op {index})" if index is not None else ""
        super().__init__(f"{op!r}{where}: [errno {errno}] {self.message}")

    def is_not_found(self) -> bool:
        """The object (namespace, device, entry) the op needs does not exist."""
        return self.errno in (_errno.ENOENT, _errno.ENODEV, _errno.ESRCH, _errno.ENXIO)

    def is_exists(self) -> bool:
        """The object exists already, or clashes with one that does (the kernel's EEXIST)."""
        return self.errno == _errno.EEXIST


class ApiError(MeshnetError):
    """What the local control API answers: an HTTP status, a stable machine code and a message naming the fix."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
