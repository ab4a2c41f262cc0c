"""The NetworkDB routes of the agent's API (``/v1/db/...``), in the spirit of libnetwork's diagnostic server.

Routes (path segments are percent-decoded; the global network ``""`` is spelled ``-``):

    GET    /v1/db/stats[?network=NET]            node-wide stats (core, per network, agent) or one network's
    GET    /v1/db/networks                       joined networks with their stats
    POST   /v1/db/networks/NET[?wait=false]      join; waits (up to JOIN_WAIT_MAX) for the join sync
    DELETE /v1/db/networks/NET                   leave (not the global network)
    GET    /v1/db/networks/NET                   one network's stats
    GET    /v1/db/NET/peers                      peers of NET: name, addr, port, state
    GET    /v1/db/NET/TABLE[?deleted=1&hidden=1] list: key, value, owner, ltime, deleted, hidden, seen_at
    GET    /v1/db/NET/TABLE/KEY[?hidden=1]       one live entry
    PUT    /v1/db/NET/TABLE/KEY[?mode=create|update]   body {"value": TEXT} or {"value_b64": BASE64}
    POST   /v1/db/NET/TABLE                      batch put, all or nothing: body {"entries": [{"key": KEY,
                                                 "value": TEXT | "value_b64": BASE64}, ...]} (at most
                                                 MAX_BATCH); answers {"written": N, "ltimes": [...]}
    DELETE /v1/db/NET/TABLE/KEY                  write a tombstone

``GET /v1/db/NET/TABLE/`` (trailing slash) also lists, for a table named ``peers`` or a network named
``networks`` or ``stats``. A network whose id is literally ``-`` cannot be addressed (network ids are
hex in practice).

Values: responses carry ``value_b64`` (always) and ``value`` (the bytes as UTF-8 text, or null when they
are not valid UTF-8). Entries also carry ``seen_at``: when this agent's view got that version, in
CLOCK_MONOTONIC seconds (comparable between agents on one host; ``now`` in a list is the same clock).

Errors: ``{"code", "message"}``; 400 ``bad_request`` (malformed body/query) or ``invalid`` (the core
refused: names too long or empty, ...), 413 ``too_large`` (value over ``max_value_bytes``, with the
core's message), 404 ``not_joined`` / ``not_found`` / ``no_networkdb``, 409 ``exists`` (``mode=create``),
503 ``leaving`` / ``not_persisted`` / ``stopped``. A refused request changes nothing. A write is answered
once the state directory holds it.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from meshnet.core.errors import ApiError, LocalProtocolError
from meshnet.networkdb import GLOBAL_NETWORK, Entry
from meshnet.runtime.db import StateWriteError

__all__ = ["handle", "GLOBAL_SPELLING", "JOIN_WAIT_MAX", "MAX_BATCH", "entry_json"]

#: How the global network ``""`` is written in URLs and on the command line.
GLOBAL_SPELLING = "-"
#: An API join waits at most this long for the join sync (the CLI's own timeout is 30 s).
JOIN_WAIT_MAX = 20.0
_MODES = ("put", "create", "update")
#: Entries in one batch put.
MAX_BATCH = 1000


def _network(segment: str) -> str:
    return GLOBAL_NETWORK if segment == GLOBAL_SPELLING else segment


def _segments(path: str) -> list[str]:
    rest = path[len("/v1/db") :]
    if not rest or rest == "/":
        return []
    try:
        return [unquote(s, errors="strict") for s in rest[1:].split("/")]
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "path segments must be percent-encoded UTF-8") from None


def _query(target: str) -> dict[str, str]:
    query = urlsplit(target).query
    try:
        pairs = parse_qs(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "query must be percent-encoded UTF-8") from None
    return {k: v[-1] for k, v in pairs.items()}


def _flag(query: dict[str, str], name: str, default: bool = False) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ApiError(400, "bad_request", f"query parameter {name}={raw!r} must be true or false")


def _text(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def entry_json(e: Entry, db: Any, now: float | None = None) -> dict[str, Any]:
    """One entry as the API shows it."""
    out: dict[str, Any] = {
        "network": e.network,
        "table": e.table,
        "key": e.key,
        "value": _text(e.value),
        "value_b64": base64.b64encode(e.value).decode("ascii"),
        "owner": e.owner,
        "ltime": e.ltime,
        "deleted": e.deleted,
        "hidden": e.hidden,
        "seen_at": db.seen_at(e.slot, e.ltime, e.owner) if db is not None else None,
    }
    if e.deleted and now is not None:
        out["reap_in_seconds"] = round(e.remaining_reap(now=now), 3)
    return out


def _response(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    from meshnet.runtime.api import Response

    return Response(status, body, headers or {})


def _method_not_allowed(path: str, allowed: str) -> Any:
    return _response(
        405,
        {"code": "method_not_allowed", "message": f"{path} accepts {allowed}"},
        {"Allow": allowed},
    )


async def handle(node: Any, request: Any) -> Any:
    """Route one ``/v1/db`` request. Raises ApiError for errors; returns a Response."""
    db = node.db
    if db is None:
        raise ApiError(404, "no_networkdb", "this agent does not run NetworkDB")
    if node.fatal is not None:
        raise ApiError(503, "stopped", f"the agent is stopping: {node.fatal}")
    segs = _segments(request.path)
    query = _query(request.target)
    method = request.method
    n = len(segs)
    if n == 1 and segs[0] == "stats":
        return _only(method, "GET", request) or _stats(db, query)
    if n == 1 and segs[0] == "networks":
        return _only(method, "GET", request) or _networks(db)
    if n == 2 and segs[0] == "networks":
        net = _network(segs[1])
        if method == "POST":
            return await _join(node, db, net, query)
        if method == "DELETE":
            return _leave(node, db, net)
        if method == "GET":
            return _response(200, db.core.stats(net))
        return _method_not_allowed(request.path, "GET, POST, DELETE")
    if n == 2 and segs[1] == "peers":
        return _only(method, "GET", request) or _peers(node, db, _network(segs[0]))
    if n == 2 and method == "POST":
        return await _put_batch(node, db, _network(segs[0]), segs[1], request.body)
    if n == 2 or (n == 3 and segs[2] == ""):
        if n == 2 and method not in ("GET", "POST"):
            return _method_not_allowed(request.path, "GET, POST")
        return _only(method, "GET", request) or _list(db, _network(segs[0]), segs[1], query)
    if n == 3:
        net, table, key = _network(segs[0]), segs[1], segs[2]
        if method == "GET":
            return _get(db, net, table, key, query)
        if method == "PUT":
            return await _put(node, db, net, table, key, query, request.body)
        if method == "DELETE":
            return await _delete(node, db, net, table, key)
        return _method_not_allowed(request.path, "GET, PUT, DELETE")
    raise ApiError(
        404,
        "not_found",
        f"no such endpoint {request.path}; NetworkDB routes: /v1/db/stats, /v1/db/networks[/NET], "
        "/v1/db/NET/peers, /v1/db/NET/TABLE[/KEY] (the global network is '-')",
    )


def _only(method: str, allowed: str, request: Any) -> Any:
    return None if method == allowed else _method_not_allowed(request.path, allowed)


def _require_joined(db: Any, net: str) -> None:
    if net not in db.core.networks():
        label = GLOBAL_SPELLING if net == GLOBAL_NETWORK else net
        raise ApiError(404, "not_joined", f"this node has not joined network {label!r}; join it first")


def _writable(node: Any) -> None:
    if node.is_leaving:
        raise ApiError(503, "leaving", "the agent is leaving the cluster; NetworkDB accepts no more changes")


def _stats(db: Any, query: dict[str, str]) -> Any:
    if "network" in query:
        return _response(200, db.core.stats(_network(query["network"])))
    core = db.core
    return _response(
        200,
        {
            "node": core.stats(),
            "networks": [core.stats(n) for n in core.networks()],
            "agent": db.agent_stats(),
            "cluster_id": core.cluster_id,
        },
    )


def _networks(db: Any) -> Any:
    return _response(200, {"networks": [db.core.stats(n) for n in db.core.networks()]})


async def _join(node: Any, db: Any, net: str, query: dict[str, str]) -> Any:
    _writable(node)
    wait_for_sync = _flag(query, "wait", True)
    core = db.core
    if net in core.networks():
        stats = core.stats(net)
        return _response(
            200,
            {"network": net, "joined": True, "already": True, "synced": stats.get("synced", False),
             "peers": core.peers(net), "failed": []},
        )  # fmt: skip
    wait = db.expect_sync(net)
    try:
        node.db_input(lambda now: core.join_network(net, now=now))
    except LocalProtocolError as exc:
        db.forget_sync(net, wait)
        raise ApiError(400, "invalid", str(exc)) from None
    if node.fatal is not None:
        raise ApiError(503, "stopped", f"the agent is stopping: {node.fatal}")
    if wait_for_sync:
        with trio.move_on_after(min(JOIN_WAIT_MAX, core.config.bulk_sync_timeout + 1.0)):
            await wait.done.wait()
    synced = wait.done.is_set()
    if not synced:
        db.forget_sync(net, wait)
    return _response(
        200,
        {"network": net, "joined": True, "already": False, "synced": synced,
         "peers": list(wait.peers) if synced else core.peers(net), "failed": list(wait.failed)},
    )  # fmt: skip


def _leave(node: Any, db: Any, net: str) -> Any:
    _writable(node)
    if net == GLOBAL_NETWORK:
        raise ApiError(
            400, "invalid", "the global network ('-') cannot be left: every node holds the global tables"
        )
    _require_joined(db, net)
    node.db_input(lambda now: db.core.leave_network(net, now=now))
    if node.fatal is not None:
        raise ApiError(503, "stopped", f"the agent is stopping: {node.fatal}")
    return _response(200, {"network": net, "left": True})


def _peers(node: Any, db: Any, net: str) -> Any:
    members = {m.name: m for m in node.members()}
    peers = []
    for name in db.core.peers(net):
        m = members.get(name)
        peers.append(
            {
                "name": name,
                "addr": m.addr if m is not None else None,
                "port": m.port if m is not None else None,
                "state": db.core.node_state(name),
            }
        )
    return _response(200, {"network": net, "joined": net in db.core.networks(), "peers": peers})


def _list(db: Any, net: str, table: str, query: dict[str, str]) -> Any:
    _require_joined(db, net)
    hidden = _flag(query, "hidden")
    deleted = _flag(query, "deleted")
    now = trio.current_time()
    entries = db.core.walk_table(table, net, include_hidden=hidden, include_deleted=deleted)
    return _response(
        200,
        {
            "network": net,
            "table": table,
            "now": time.monotonic(),
            "entries": [entry_json(e, db, now) for e in entries],
        },
    )


def _not_found(db: Any, net: str, table: str, key: str) -> ApiError:
    hidden = db.core.get_entry(table, net, key, include_hidden=True)
    if hidden is not None:
        return ApiError(
            404,
            "not_found",
            f"entry {table}/{key} is hidden: its owner {hidden.owner} is failed (add ?hidden=true to read it)",
        )
    return ApiError(404, "not_found", f"no entry {table}/{key} in this node's view")


def _get(db: Any, net: str, table: str, key: str, query: dict[str, str]) -> Any:
    _require_joined(db, net)
    e = db.core.get_entry(table, net, key, include_hidden=_flag(query, "hidden"))
    if e is None:
        raise _not_found(db, net, table, key)
    return _response(200, entry_json(e, db))


def _value_from_body(body: bytes) -> bytes:
    try:
        obj = json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"body is not JSON: {exc}") from None
    return _value_from_obj(obj)


def _value_from_obj(obj: Any, extra: frozenset[str] = frozenset()) -> bytes:
    if not isinstance(obj, dict):
        raise ApiError(
            400, "bad_request", 'body must be a JSON object: {"value": TEXT} or {"value_b64": BASE64}'
        )
    unknown = sorted(set(obj) - {"value", "value_b64"} - extra)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown body field {unknown[0]!r}; use value or value_b64")
    if ("value" in obj) == ("value_b64" in obj):
        raise ApiError(400, "bad_request", "give exactly one of value (text) and value_b64 (base64)")
    if "value" in obj:
        if not isinstance(obj["value"], str):
            raise ApiError(400, "bad_request", "value must be a string (use value_b64 for bytes)")
        return obj["value"].encode("utf-8", errors="surrogatepass")
    raw = obj["value_b64"]
    if not isinstance(raw, str):
        raise ApiError(400, "bad_request", "value_b64 must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", "value_b64 is not valid base64") from None


async def _durable(node: Any, db: Any, e: Entry) -> Any:
    try:
        await db.wait_durable(db.journal_seq)
    except StateWriteError as exc:
        raise ApiError(
            503,
            "not_persisted",
            f"applied and sent, but not yet in the state directory ({exc}); the agent keeps retrying",
        ) from None
    return _response(200, entry_json(e, db, trio.current_time()))


async def _put(node: Any, db: Any, net: str, table: str, key: str, query: dict[str, str], body: bytes) -> Any:
    _writable(node)
    mode = query.get("mode", "put")
    if mode not in _MODES:
        raise ApiError(400, "bad_request", f"mode={mode!r}; use put (default), create or update")
    value = _value_from_body(body)
    _require_joined(db, net)
    core = db.core
    cur = core.get_entry(table, net, key, include_hidden=True)
    if mode == "create" and cur is not None:
        raise ApiError(
            409, "exists", f"entry {table}/{key} exists, owned by {cur.owner}; use mode=update or put"
        )
    if mode == "update" and cur is None:
        raise ApiError(404, "not_found", f"no entry {table}/{key} to update; use mode=create or put")
    write = {"put": core.put_entry, "create": core.create_entry, "update": core.update_entry}[mode]
    try:
        e = node.db_input(lambda now: write(table, net, key, value, now=now))
    except LocalProtocolError as exc:
        if len(value) > core.config.max_value_bytes:
            raise ApiError(413, "too_large", str(exc)) from None
        raise ApiError(400, "invalid", str(exc)) from None
    if node.fatal is not None:
        raise ApiError(503, "stopped", f"the agent is stopping: {node.fatal}")
    return await _durable(node, db, e)


async def _put_batch(node: Any, db: Any, net: str, table: str, body: bytes) -> Any:
    """Several puts of one table in one core input and one durable journal wait (all or nothing)."""
    _writable(node)
    try:
        obj = json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"entries"} or not isinstance(obj["entries"], list):
        raise ApiError(400, "bad_request", 'body must be {"entries": [{"key": KEY, "value": TEXT}, ...]}')
    raw = obj["entries"]
    if not 1 <= len(raw) <= MAX_BATCH:
        raise ApiError(400, "bad_request", f"a batch holds 1..{MAX_BATCH} entries, got {len(raw)}")
    items: list[tuple[str, bytes]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise ApiError(400, "bad_request", f"entries[{i}]: expected an object with a string key")
        items.append((item["key"], _value_from_obj(item, frozenset({"key"}))))
    _require_joined(db, net)
    core = db.core
    try:
        written = node.db_input(lambda now: core.put_entries(table, net, items, now=now))
    except LocalProtocolError as exc:
        if any(len(v) > core.config.max_value_bytes for _, v in items):
            raise ApiError(413, "too_large", str(exc)) from None
        raise ApiError(400, "invalid", str(exc)) from None
    if node.fatal is not None:
        raise ApiError(503, "stopped", f"the agent is stopping: {node.fatal}")
    try:
        await db.wait_durable(db.journal_seq)
    except StateWriteError as exc:
        raise ApiError(
            503,
            "not_persisted",
            f"applied and sent, but not yet in the state directory ({exc}); the agent keeps retrying",
        ) from None
    return _response(200, {"written": len(written), "ltimes": [e.ltime for e in written]})


async def _delete(node: Any, db: Any, net: str, table: str, key: str) -> Any:
    _writable(node)
    _require_joined(db, net)
    core = db.core
    if core.get_entry(table, net, key, include_hidden=True) is None:
        raise ApiError(404, "not_found", f"no entry {table}/{key} to delete")
    try:
        e = node.db_input(lambda now: core.delete_entry(table, net, key, now=now))
    except LocalProtocolError as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    if node.fatal is not None:
        raise ApiError(503, "stopped", f"the agent is stopping: {node.fatal}")
    return await _durable(node, db, e)
