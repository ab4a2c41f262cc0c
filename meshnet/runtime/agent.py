"""What ``meshnet-agent run`` runs: one node with NetworkDB, its API, and graceful leave on SIGTERM/SIGINT.

The first SIGTERM or SIGINT starts a graceful leave (bounded by ``leave_timeout``), then the agent
stops; a second signal during the leave stops it at once. ``POST /v1/leave`` does the same through
the API. If the state directory cannot be written the node stops itself and ``serve_agent`` raises
``StateWriteError``.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from meshnet.gossip.config import GossipConfig
from meshnet.runtime.db import DbSettings, StateWriteError
from meshnet.runtime.node import Addr, Node

__all__ = ["AgentSettings", "serve_agent"]

log = logging.getLogger("meshnet.agent")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything ``serve_agent`` needs, already validated by the CLI."""

    config: GossipConfig
    name: str
    bind: Addr
    advertise: Addr | None = None
    seeds: Sequence[Addr] = ()
    meta: bytes = b""
    keyring: Any = None
    api_path: str | None = None
    #: NetworkDB beside the gossip core (None: gossip only).
    networkdb: DbSettings | None = None
    #: Agent services (``meshnet/runtime/service.py``), in call order; need ``networkdb``.
    services: Sequence[Any] = ()


async def serve_agent(settings: AgentSettings, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the agent until it left (signal or API) or is cancelled.

    Raises ConfigError before anything is started when an address or the API path cannot be bound.
    """
    node = Node(
        settings.config,
        name=settings.name,
        bind=settings.bind,
        advertise=settings.advertise,
        seeds=settings.seeds,
        meta=settings.meta,
        keyring=settings.keyring,
        networkdb=settings.networkdb,
        services=settings.services,
    )
    # Receive signals before binding, so a SIGTERM during start-up is a leave, not a traceback.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(functools.partial(node.run, api_path=settings.api_path))
            nursery.start_soon(_handle_signals, signals, node, nursery)
            if settings.api_path:
                log.info("API on unix socket %s", settings.api_path)
            task_status.started(bound)
            await node.wait_stopped()
            nursery.cancel_scope.cancel()
    if node.fatal is not None:
        raise StateWriteError(node.fatal)


async def _handle_signals(signals: Any, node: Node, nursery: trio.Nursery) -> None:
    async for signum in signals:
        sig = signal.Signals(signum).name
        if not node.is_leaving:
            log.info("received %s: leaving gracefully (send it again to stop at once)", sig)
            nursery.start_soon(_leave_then_stop, node)
        else:
            log.warning("received %s again: stopping without waiting for the leave", sig)
            node.stop()


async def _leave_then_stop(node: Node) -> None:
    await node.leave()
    node.stop()
