"""The one drive step shared by the trio runtime and the virtual-time simulator.

A core (``Swim``, later NetworkDB and friends) has the aioquic shape: inputs are method calls with a
keyword-only ``now``; outputs are drained. ``drain`` collects everything a core wants done after an
input; ``fire_due`` runs the core's timers when its deadline has passed. The runtime calls these from
trio tasks against the real clock; ``sim`` calls them from its event heap against virtual time. No
protocol decision lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Core", "Outputs", "drain", "fire_due"]


class Core(Protocol):
    def handle_timer(self, *, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def datagrams_to_send(self) -> list[tuple[tuple[str, int], bytes]]: ...
    def streams_to_open(self) -> list[Any]: ...
    def next_event(self) -> Any | None: ...


@dataclass(slots=True)
class Outputs:
    """What a core asked for after one step."""

    datagrams: list[tuple[tuple[str, int], bytes]] = field(default_factory=list)
    streams: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    deadline: float | None = None


def drain(core: Core) -> Outputs:
    """Collect datagrams, streams to open and events; report the core's next deadline."""
    out = Outputs(datagrams=core.datagrams_to_send(), streams=core.streams_to_open())
    while (ev := core.next_event()) is not None:
        out.events.append(ev)
    out.deadline = core.next_deadline()
    return out


def fire_due(core: Core, now: float) -> Outputs:
    """Run the core's timers if its deadline is due at ``now``, then drain it."""
    deadline = core.next_deadline()
    if deadline is not None and deadline <= now:
        core.handle_timer(now=now)
    return drain(core)
