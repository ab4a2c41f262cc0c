"""Typed CNM errors: local bad input, raised before anything changes.

Every error carries the HTTP ``status`` and stable ``code`` the agent's API answers with, so the runtime
maps them in one line: ``ApiError(err.status, err.code, str(err))``. The message names the object and the
fix. Remote input never raises these (bad records are counted and dropped, ``Controller.stats``).
"""

from __future__ import annotations

from meshnet.core.errors import ConfigError, LocalProtocolError

__all__ = [
    "CnmError",
    "InvalidRequest",
    "NotSupported",
    "NotFound",
    "NameConflict",
    "InUse",
    "NotLocal",
    "BadSandboxState",
]


class CnmError(LocalProtocolError):
    """A CNM request was refused; nothing changed. ``status``/``code`` are the API's answer."""

    status = 400
    code = "invalid"


class InvalidRequest(CnmError):
    """A malformed or inconsistent field (400 ``invalid``)."""


class NotSupported(CnmError):
    """A valid request for something meshnet does not do yet, e.g. ``encrypted`` (400 ``not_supported``)."""

    code = "not_supported"


class NotFound(CnmError):
    """No network, endpoint or sandbox by that id or name (404 ``not_found``)."""

    status = 404
    code = "not_found"


class NameConflict(CnmError):
    """The name is taken (409 ``conflict``)."""

    status = 409
    code = "conflict"


class InUse(CnmError):
    """The object is still used: a network with endpoints, a joined endpoint (409 ``in_use``)."""

    status = 409
    code = "in_use"


class NotLocal(CnmError):
    """The endpoint lives on another host; only its host may change it (409 ``not_local``)."""

    status = 409
    code = "not_local"


class BadSandboxState(ConfigError):
    """``sandboxes.json`` could not be read back; the message says what is wrong with it."""
