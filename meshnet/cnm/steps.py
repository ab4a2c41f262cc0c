"""CNM operations as ordered steps with undo actions, and the pure driver that runs them.

Theory of operation. A CNM operation (create an endpoint, join a sandbox, ...) touches several owners in
turn: IPAM, NetworkDB, the local sandbox state and the dataplane. libnetwork runs them in a fixed order
and registers a rollback for each; meshnet makes that order a *value*: an ``Operation`` is a tuple of
``Step``s, each with the action that does it and the actions that undo it. ``Operation.start()`` gives a
``Run``, a small state machine the runtime drives without knowing what the steps mean::

    run = op.start()
    while (action := run.next()) is not None:
        try:
            result = await execute(action)      # the runtime's executor: IPAM, NetworkDB, dataplane
        except Exception as exc:
            run.failed(exc)                    # from now on next() returns the undo actions
        else:
            run.done(result)
    if run.error is not None:
        raise run.error                        # everything done so far was undone (best effort)
    return run.result

Rules:

- Steps run in order; ``done(result)`` records the result under the step's name (later steps read it:
  an action may be a function of the results so far, resolved when the step is reached).
- On the first failure the completed steps' undo actions run, last step first, each step's own undo
  tuple in its order, then the operation's ``final_undo`` (the controller puts ``sandboxes.json`` and
  one ``Reconcile`` there, so the kernel is re-derived from the fully reverted state). A failed step
  itself is assumed to have had no effect: executors make their actions atomic, except ``Reconcile``,
  whose partial effects that final reconcile repairs. Undo actions are resolved when they are reached,
  so they see the state as already reverted. An undo that fails is recorded in
  ``undo_errors`` and the rollback goes on: the runtime logs them; the slow reconcile repairs the
  dataplane.
- A ``best_effort`` step (cleanup after the point of no return, e.g. leaving a NetworkDB network after
  the last endpoint is gone) does not roll anything back when it fails: the failure is kept in
  ``warnings`` and the run goes on.
- ``Local`` actions (the controller's own state, and checks) run inside ``next()``; the runtime never
  sees them. Results of the executed ``Put*``/``Delete*`` actions are mirrored into the controller's
  tables at once (the NetworkDB watch later replays the same values, a no-op).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshnet.cnm.records import EndpointRecord, NetworkRecord

__all__ = [
    "Action",
    "Local",
    "IpamCreateNetwork",
    "IpamDeleteNetwork",
    "AttachNetwork",
    "DetachNetwork",
    "AllocateAddress",
    "ReleaseAddress",
    "PutNetwork",
    "DeleteNetwork",
    "PutEndpoint",
    "DeleteEndpoint",
    "PersistSandboxes",
    "Reconcile",
    "Step",
    "Operation",
    "Run",
]


# --- actions the runtime executes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpamCreateNetwork:
    """``IpamService.create_network(network, subnets=..., ipv6=...)``; result: its ``NetConfig`` (the
    step reads ``.vni`` and ``.subnets[i].subnet``/``.gateway``). ``gateway`` is the user's gateway for
    the subnet containing it (None: IPAM's default, the first usable address)."""

    network: str
    subnets: tuple[str, ...]
    gateway: str | None = None
    ipv6: bool = False


@dataclass(frozen=True, slots=True)
class IpamDeleteNetwork:
    """``IpamService.delete_network(network)``; may raise ``ipam.InUse`` (addresses still held)."""

    network: str


@dataclass(frozen=True, slots=True)
class AttachNetwork:
    """Before the first local endpoint of ``network``: ``IpamService.attach(network)`` and NetworkDB
    ``join_network(network)`` (waiting for its ``NetworkSynced`` within a bound is best: the step after
    it re-checks the endpoint name against what the sync brought). Idempotent."""

    network: str


@dataclass(frozen=True, slots=True)
class DetachNetwork:
    """After the last local endpoint of ``network`` is gone: NetworkDB ``leave_network(network)``
    (a no-op when not joined). Only emitted when no local endpoint of it remains."""

    network: str


@dataclass(frozen=True, slots=True)
class AllocateAddress:
    """``IpamService.allocate(network, tag=tag, preferred=preferred, ipv6=ipv6)``; result: the address
    (``"10.0.1.5"``; a ``/prefix`` suffix is accepted and dropped)."""

    network: str
    tag: str
    preferred: str | None = None
    ipv6: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseAddress:
    """``IpamService.release(network, address, tag=tag)``."""

    network: str
    address: str
    tag: str


@dataclass(frozen=True, slots=True)
class PutNetwork:
    """NetworkDB put: table ``networks``, network ``""``, key ``record.id``, ``encode_network(record)``."""

    record: NetworkRecord


@dataclass(frozen=True, slots=True)
class DeleteNetwork:
    """NetworkDB delete: table ``networks``, network ``""``, key ``network`` (missing is success)."""

    network: str


@dataclass(frozen=True, slots=True)
class PutEndpoint:
    """NetworkDB put: table ``endpoint_table``, network ``record.network``, key ``record.id``,
    ``encode_endpoint(record)``."""

    record: EndpointRecord


@dataclass(frozen=True, slots=True)
class DeleteEndpoint:
    """NetworkDB delete: table ``endpoint_table``, network ``network``, key ``endpoint`` (missing is
    success)."""

    network: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class PersistSandboxes:
    """Write ``data`` to ``STATE_DIR/sandboxes.json`` atomically (temp file, fsync, rename)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Make the dataplane match the controller's state (``Controller.host_view()``, then
    ``meshnet.overlay``) at least for ``namespaces`` (a full reconcile is fine too): observe them, plan
    with ``scope=namespaces``, apply. Raise on a refused apply (the step fails and is rolled back)."""

    namespaces: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Local:
    """A change of (or a check against) the controller's own state, run by ``Run`` itself."""

    what: str
    fn: Callable[[], Any] = field(compare=False)


Action = (
    IpamCreateNetwork
    | IpamDeleteNetwork
    | AttachNetwork
    | DetachNetwork
    | AllocateAddress
    | ReleaseAddress
    | PutNetwork
    | DeleteNetwork
    | PutEndpoint
    | DeleteEndpoint
    | PersistSandboxes
    | Reconcile
    | Local
)

#: A step's action, or a function of the results so far giving it (None: nothing to do).
Thunk = Callable[[Mapping[str, Any]], "Action | None"]
ActionLike = Action | Thunk | None


@dataclass(frozen=True, slots=True)
class Step:
    """One step: ``do`` and the ``undo`` actions that revert it (run in their order)."""

    name: str
    do: ActionLike
    undo: tuple[ActionLike, ...] = ()
    #: A failure is noted in ``Run.warnings`` instead of rolling back (module docstring).
    best_effort: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    """An ordered list of steps and how to read the result from the step results."""

    kind: str
    steps: tuple[Step, ...]
    result: Callable[[Mapping[str, Any]], Any] = field(default=lambda ctx: None, compare=False)
    #: Called with every external action the runtime reported done (the controller mirrors puts/deletes).
    on_done: Callable[[Action, Any], None] = field(default=lambda a, r: None, compare=False)
    #: Run at the very end of every rollback, after all the steps' undos (e.g. one final reconcile).
    final_undo: tuple[ActionLike, ...] = ()

    def start(self) -> Run:
        """A fresh run of this operation (module docstring)."""
        return Run(self)

    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)


def _resolve(action: ActionLike, ctx: Mapping[str, Any]) -> Action | None:
    if action is None or isinstance(action, _ACTION_TYPES):
        return action  # type: ignore[return-value]
    return action(ctx)  # type: ignore[operator]


class Run:
    """Drives one ``Operation``: ``next`` / ``done`` / ``failed`` (module docstring)."""

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.ctx: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.undo_errors: list[tuple[Action, BaseException]] = []
        #: Failures of best-effort steps (the operation still succeeded).
        self.warnings: list[tuple[Action, BaseException]] = []
        self.result: Any = None
        self.finished = False
        #: Names of the steps completed (in order), for tests and logs.
        self.completed: list[str] = []
        self._index = 0
        self._done_steps: list[int] = []
        self._undo: list[ActionLike] = []
        self._pending: Action | None = None

    @property
    def undoing(self) -> bool:
        return self.error is not None

    def next(self) -> Action | None:
        """The next action for the runtime to execute, or None when the run has finished."""
        if self._pending is not None:
            raise RuntimeError("report done() or failed() for the previous action first")
        while not self.finished:
            if self.error is None:
                if self._index >= len(self.op.steps):
                    self._finish()
                    break
                step = self.op.steps[self._index]
                try:
                    action = _resolve(step.do, self.ctx)
                except Exception as exc:  # a step that cannot be built is a failed step
                    self._fail(exc)
                    continue
            else:
                if not self._undo:
                    self._finish()
                    break
                try:
                    action = _resolve(self._undo.pop(0), self.ctx)
                except Exception as exc:
                    self.undo_errors.append((Local("resolve undo", lambda: None), exc))
                    continue
            if action is None:
                self._complete(None)
                continue
            if isinstance(action, Local):
                try:
                    value = action.fn()
                except Exception as exc:
                    self._pending = action
                    self.failed(exc)
                    continue
                self._complete(value)
                continue
            self._pending = action
            return action
        return None

    def done(self, result: Any = None) -> None:
        """The action ``next`` returned succeeded with ``result``."""
        action = self._take()
        self.op.on_done(action, result)
        self._complete(result)

    def failed(self, error: BaseException) -> None:
        """The action ``next`` returned failed: roll back (or, while rolling back, note and go on)."""
        action = self._take()
        if self.error is not None:
            self.undo_errors.append((action, error))
        elif self.op.steps[self._index].best_effort:
            self.warnings.append((action, error))
            self._complete(None)
        else:
            self._fail(error)

    # --- internals ------------------------------------------------------------------------------

    def _take(self) -> Action:
        if self._pending is None:
            raise RuntimeError("no action is pending")
        action, self._pending = self._pending, None
        return action

    def _complete(self, value: Any) -> None:
        if self.error is None:
            step = self.op.steps[self._index]
            self.ctx[step.name] = value
            self.completed.append(step.name)
            self._done_steps.append(self._index)
            self._index += 1

    def _fail(self, error: BaseException) -> None:
        self.error = error
        for i in reversed(self._done_steps):
            self._undo.extend(self.op.steps[i].undo)
        self._undo.extend(self.op.final_undo)

    def _finish(self) -> None:
        self.finished = True
        if self.error is None:
            self.result = self.op.result(self.ctx)


_ACTION_TYPES = (
    IpamCreateNetwork,
    IpamDeleteNetwork,
    AttachNetwork,
    DetachNetwork,
    AllocateAddress,
    ReleaseAddress,
    PutNetwork,
    DeleteNetwork,
    PutEndpoint,
    DeleteEndpoint,
    PersistSandboxes,
    Reconcile,
    Local,
)
