"""The agent-service hooks (meshnet/runtime/service.py): order, events, writes from a task, API routing."""

from __future__ import annotations

from typing import Any

import trio

from meshnet.core.errors import ApiError
from meshnet.gossip import events as gev
from meshnet.networkdb import EntryCreated
from meshnet.runtime import Node
from meshnet.runtime.api import Response
from meshnet.runtime.db import DbSettings
from meshnet.runtime.service import BaseService
from tests.shell.ndb_helpers import FAST, NDB, api_request


class Recorder(BaseService):
    """Watches table ``t`` of network ``n``; copies every entry it sees into table ``copy`` (key: node name)."""

    api_prefixes = ("/v1/rec",)

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []
        self.seen: list[bytes] = []
        self.members: list[str] = []
        self.watch: Any = None
        self.node: Any = None
        self._wake_send, self._wake_recv = trio.open_memory_channel[bytes](100)

    def attach(self, node: Any) -> None:
        self.calls.append("attach")
        self.node = node
        assert node.db is not None and node.swim is not None
        self.watch = node.db.core.watch(table="t")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.calls.append("run")
        task_status.started()
        async for value in self._wake_recv:
            self.node.db_input(
                lambda now, v=value: self.node.db.core.put_entry("copy", "n", self.node.name, v, now=now)
            )

    def on_db_events(self, events: list[Any], now: float) -> None:
        for ev in events:
            if isinstance(ev, EntryCreated) and ev.watch_id == self.watch:
                self.seen.append(ev.value)
                self._wake_send.send_nowait(ev.value)

    def on_member_event(self, event: Any, now: float) -> None:
        if isinstance(event, gev.MemberJoined):
            self.members.append(event.member.name)

    async def handle_api(self, node: Any, request: Any) -> Any:
        if request.path == "/v1/rec/seen":
            return Response(200, {"seen": [v.decode() for v in self.seen]})
        raise ApiError(404, "not_found", f"no {request.path}")

    async def leave(self) -> None:
        self.calls.append("leave")
        assert not self.node.is_leaving  # services leave before the gossip leave starts

    def stats(self) -> dict[str, Any]:
        return {"seen": len(self.seen)}


async def test_services_see_events_write_from_tasks_answer_the_api_and_leave_first(tmp_path):
    a_svc, b_svc = Recorder("rec"), Recorder("rec")
    api_path = str(tmp_path / "a.sock")
    async with trio.open_nursery() as nursery:
        a = Node(FAST, name="a", bind=("127.0.8.41", 0), networkdb=DbSettings(config=NDB), services=[a_svc])
        await nursery.start(lambda task_status: a.run(api_path=api_path, task_status=task_status))
        b = Node(
            FAST,
            name="b",
            bind=("127.0.8.42", 0),
            seeds=[a.bound_addr],
            networkdb=DbSettings(config=NDB),
            services=[b_svc],
        )
        await nursery.start(b.run)
        assert a_svc.calls == ["attach", "run"]
        for node in (a, b):
            node.db_input(lambda now, n=node: n.db.core.join_network("n", now=now))
        with trio.fail_after(10):
            while "a" not in b_svc.members or "b" not in a_svc.members:
                await trio.sleep(0.05)
            a.db_input(lambda now: a.db.core.put_entry("t", "n", "x", b"hello", now=now))
            # b's service saw the remote entry in a hook and wrote a copy from its task; a sees that copy.
            while a.db.core.get_entry("copy", "n", "b") is None:
                await trio.sleep(0.05)
        assert b_svc.seen == [b"hello"] and a_svc.seen == [b"hello"]
        status, body = await api_request(api_path, "GET", "/v1/rec/seen")
        assert (status, body) == (200, {"seen": ["hello"]})
        status, body = await api_request(api_path, "GET", "/v1/rec/nope")
        assert status == 404 and body["code"] == "not_found"
        status, body = await api_request(api_path, "GET", "/v1/agent")
        assert body["services"] == {"rec": {"seen": 1}}
        await a.leave()
        assert a_svc.calls == ["attach", "run", "leave"]
        nursery.cancel_scope.cancel()
