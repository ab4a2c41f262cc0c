"""The one drive step shared by the trio runtime and the virtual-time simulator.

A core (``Swim``, NetworkDB and friends) has the aioquic shape: inputs are method calls with a
keyword-only ``now``; outputs are drained. ``drain`` collects everything a core wants done after an
input; ``fire_due`` runs the core's timers when its deadline has passed. The runtime calls these from
trio tasks against the real clock; ``sim`` calls them from its event heap against virtual time. No
protocol decision lives here.

A *rider* is a core that travels on the gossip core's user messages instead of owning sockets
(NetworkDB, ``meshnet/networkdb/README.md``): it consumes the gossip core's events and hands its own
outputs to the gossip core's ``send_user``/``send_user_to``. ``drain_stacked`` shuttles between the two
until neither has anything left (feeding a rider gossip events can make it send, and its sends can make
the gossip core emit events), then drains the gossip core's datagrams and streams and both cores' events.
The rider's events come back separately (``Outputs.rider_events``) so the shell can act on them, e.g.
persist a Lamport high-water mark, *before* it sends the step's datagrams. ``fire_due_stacked`` is
``fire_due`` for the pair; the deadline reported is the earlier of the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Core", "Rider", "Outputs", "drain", "fire_due", "drain_stacked", "fire_due_stacked"]

#: Shuttle rounds between a gossip core and its rider per step. Each round hands the rider's outputs to
#: the gossip core and feeds its events back; two or three rounds drain a step in practice. Anything
#: left after the bound goes out with the next step.
MAX_STACK_ROUNDS = 64


class Core(Protocol):
    def handle_timer(self, *, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def datagrams_to_send(self) -> list[tuple[tuple[str, int], bytes]]: ...
    def streams_to_open(self) -> list[Any]: ...
    def next_event(self) -> Any | None: ...


class Rider(Protocol):
    """A core riding on a gossip core's user messages (``NetworkDB``)."""

    def handle_gossip_event(self, event: Any, *, now: float) -> None: ...
    def flush_to(self, gossip: Any, *, now: float) -> None: ...
    def handle_timer(self, *, now: float) -> None: ...
    def next_event(self) -> Any | None: ...
    def next_deadline(self) -> float | None: ...


@dataclass(slots=True)
class Outputs:
    """What a core (or a gossip core and its rider) asked for after one step."""

    datagrams: list[tuple[tuple[str, int], bytes]] = field(default_factory=list)
    streams: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    deadline: float | None = None
    #: Events of the rider (``drain_stacked`` only), in the order it emitted them.
    rider_events: list[Any] = field(default_factory=list)


class _Drop:
    """A gossip-core stand-in that drops what a muted rider sends."""

    def send_user(self, payload: bytes, *, now: float) -> None:
        pass

    def send_user_to(
        self, addr: Any, payload: bytes, *, reliable: bool = False, compress: bool | None = None, now: float
    ) -> None:
        pass


_DROP = _Drop()


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


def drain_stacked(core: Core, rider: Rider, *, now: float, mute_rider: bool = False) -> Outputs:
    """Drain a gossip core and its rider after an input to either.

    Until a round produces no gossip events: hand the rider's outputs to the gossip core, then feed
    every gossip event to the rider. ``mute_rider`` drops the rider's outputs instead (the gossip core
    accepts no more user messages, e.g. once it is leaving). Returns the gossip core's datagrams and
    streams, its events (``events``), the rider's events (``rider_events``) and the earlier deadline.
    """
    events: list[Any] = []
    for _ in range(MAX_STACK_ROUNDS):
        rider.flush_to(_DROP if mute_rider else core, now=now)
        fed = len(events)
        while (ev := core.next_event()) is not None:
            events.append(ev)
            rider.handle_gossip_event(ev, now=now)
        if len(events) == fed:
            break
    rider_events: list[Any] = []
    while (ev := rider.next_event()) is not None:
        rider_events.append(ev)
    deadlines = [d for d in (core.next_deadline(), rider.next_deadline()) if d is not None]
    return Outputs(
        datagrams=core.datagrams_to_send(),
        streams=core.streams_to_open(),
        events=events,
        deadline=min(deadlines) if deadlines else None,
        rider_events=rider_events,
    )


def fire_due_stacked(core: Core, rider: Rider, now: float, *, mute_rider: bool = False) -> Outputs:
    """Run the timers of whichever of the two is due at ``now``, then ``drain_stacked``."""
    for c in (core, rider):
        deadline = c.next_deadline()
        if deadline is not None and deadline <= now:
            c.handle_timer(now=now)
    return drain_stacked(core, rider, now=now, mute_rider=mute_rider)
