"""Agent services: what runs beside gossip and NetworkDB in one agent (IPAM, CNM/overlay, DNS).

Theory of operation. ``Node`` owns the sockets, the single timer and the NetworkDB shell; a *service*
is a higher layer that reads NetworkDB (watch events), writes it, and may run its own trio tasks
(reconcile loops, DNS servers). ``Node`` calls the hooks below in a fixed order; services are called in
the order they were given, so a later service may use an earlier one (CNM uses IPAM).

Hook order and rules:

1. ``attach(node)`` once in ``Node.run``, after the NetworkDB core exists and before any input and
   before any task starts. Register watches here (``node.db.core.watch(...)``) and keep their ids.
   May raise ``ConfigError`` (nothing is started then).
2. ``run(task_status=...)`` is started in the node's nursery right after every service attached and
   before the seeds are joined; call ``task_status.started()`` once ready. It runs until the node
   stops (cancellation). Exceptions other than cancellation stop the agent, so catch what you expect.
3. ``on_db_events(events, now)`` is called synchronously with *every* NetworkDB core event of one
   step (``EntryCreated/Updated/Deleted`` of every watch, ``RequestReceived``, ``ResponseReceived``,
   ``RequestTimedOut``, ``NetworkSynced`` ...), after ``DbShell.handle_events`` and before the step's
   datagrams are sent. Filter by your own watch ids. It must not feed inputs back into the node
   (no ``node.db_input`` here: that would re-enter the drive step); record what changed and wake your
   ``run`` task (e.g. set a ``trio.Event`` or ``send_nowait`` on a memory channel).
4. ``on_member_event(event, now)`` likewise for every gossip core event (``MemberJoined``,
   ``MemberFailed``, ``MemberLeft``, ``MemberReaped`` ...). Same rule: no inputs from here.
5. Writes go through ``node.db_input(lambda now: node.db.core.put_entry(...))`` from a task, never
   from a hook. ``db_input`` dispatches the step at once.
6. ``handle_api(node, request)`` answers requests whose path starts with one of ``api_prefixes``
   (e.g. ``("/v1/ipam",)``); raise ``meshnet.core.errors.ApiError`` for errors (JSON ``{code, message}``).
7. ``leave()`` is awaited by ``Node.leave()`` *before* the gossip leave, services in reverse order,
   so IPAM can hand its blocks over while the cluster still hears us. Bound it yourself.
8. ``stats()`` is shown under ``services.<name>`` in ``GET /v1/agent``.

``BaseService`` implements every hook as a no-op; subclass it and override what you need.
"""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["BaseService"]


class BaseService:
    """A service that does nothing; override the hooks you need (see the module docstring)."""

    #: Short name: the key in ``/v1/agent``'s ``services`` and in log lines.
    name: str = "service"
    #: API path prefixes this service answers (``/v1/ipam`` matches ``/v1/ipam`` and ``/v1/ipam/...``).
    api_prefixes: tuple[str, ...] = ()

    def attach(self, node: Any) -> None:
        """Called once before any input; register watches here."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Background work; the default only reports started and returns."""
        task_status.started()

    def on_db_events(self, events: list[Any], now: float) -> None:
        """Every NetworkDB event of one step (synchronous; do not feed inputs from here)."""

    def on_member_event(self, event: Any, now: float) -> None:
        """Every gossip core event (synchronous; do not feed inputs from here)."""

    async def handle_api(self, node: Any, request: Any) -> Any:
        """Answer a request under ``api_prefixes``; return ``meshnet.runtime.api.Response``."""
        from meshnet.core.errors import ApiError

        raise ApiError(404, "not_found", f"no such endpoint {request.path}")

    async def leave(self) -> None:
        """Graceful leave, before the gossip leave (bound the time yourself)."""

    def stats(self) -> dict[str, Any]:
        """Counters for ``GET /v1/agent``."""
        return {}
