"""The agent's local control API: HTTP/1.1 + JSON on a unix socket (mode 0600).

Theory of operation: one request per connection. The server reads the head (at most 16 KiB, ended by
an empty line), then a ``Content-Length`` body (at most 256 KiB), all within ``REQUEST_TIMEOUT``; it
answers with ``Connection: close`` and closes. There is no keep-alive, no chunked request bodies (501)
and no pipelining, which keeps the parser small enough to read whole: ``parse_head`` is a pure
function over bytes that raises ``ApiError`` for anything malformed, so a bad request gets a 4xx JSON
error and never reaches a handler, let alone crashes the agent. h11 would buy keep-alive and chunked
bodies, which a local CLI does not need.

Routes (``ROUTES``): ``GET /v1/members``, ``GET /v1/agent``, ``POST /v1/leave``, and NetworkDB's
``/v1/db/...`` (``db_api.py``). Errors are ``{"code": ..., "message": ...}`` with the status of the
``ApiError``.

The socket is created under a 0177 umask and then chmod'ed 0600, so it is never reachable by other users,
not even for an instant. A stale socket file (nobody answers) is replaced; a live one is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import trio

import meshnet
from meshnet.core.errors import ApiError, ConfigError
from meshnet.runtime.tags import decode_tags

__all__ = [
    "DEFAULT_API_PATH",
    "Request",
    "Response",
    "parse_head",
    "read_request",
    "render_response",
    "handle_request",
    "open_api_socket",
    "serve_api",
]

log = logging.getLogger("meshnet.api")

DEFAULT_API_PATH = "/run/meshnet/agent.sock"
MAX_HEAD_BYTES = 16 * 1024
#: A NetworkDB value of max_value_bytes (64 KiB) in base64 inside JSON fits with room to spare.
MAX_BODY_BYTES = 256 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _standard_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    #: Runs after the response was written (e.g. stop the agent after a leave).
    after: Callable[[], None] | None = None


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, headers with lower-case names) from a request head without its blank line.

    Raises ApiError 400 for anything malformed, 505 for a version other than HTTP/1.0 or 1.1.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "request head must be ASCII") from None
    lines = text.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    request_line = lines[0]
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise ApiError(400, "bad_request", "request line must be 'METHOD /path HTTP/1.1'")
    method, target, version = parts
    if not _TOKEN.match(method.encode()):
        raise ApiError(400, "bad_request", "bad method in request line")
    if not version.startswith("HTTP/"):
        raise ApiError(400, "bad_request", "request line must end with HTTP/1.1")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise ApiError(505, "http_version_not_supported", f"{version} is not supported; use HTTP/1.1")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise ApiError(400, "bad_request", "request target must be an absolute path such as /v1/members")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            raise ApiError(400, "bad_request", "empty line inside the request head")
        if line[0] in " \t":
            raise ApiError(400, "bad_request", "obsolete header line folding is not accepted")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name.encode()):
            raise ApiError(400, "bad_request", f"malformed header line {line[:40]!r}")
        if any(c < " " and c != "\t" or c == "\x7f" for c in value):
            raise ApiError(400, "bad_request", f"control character in header {name}")
        key = name.lower()
        value = value.strip(" \t")
        if key == "content-length" and key in headers and headers[key] != value:
            raise ApiError(400, "bad_request", "conflicting Content-Length headers")
        headers[key] = f"{headers[key]}, {value}" if key in headers and key != "content-length" else value
    return method, target, headers


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise ApiError(
            501, "not_implemented", "chunked request bodies are not supported; send Content-Length"
        )
    raw = headers.get("content-length")
    if raw is None:
        return 0
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(400, "bad_request", "Content-Length must be a decimal number")
    length = int(raw)
    if length > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    return length


async def read_request(stream: trio.abc.ReceiveStream) -> Request | None:
    """Read one request from ``stream``; None if the client closed before sending anything.

    Raises ApiError for a malformed, oversized or truncated request.
    """
    buf = bytearray()
    while True:
        # The head ends at the first empty line, CRLF or (leniently) bare LF.
        ends = [(i, n) for i, n in ((buf.find(b"\r\n\r\n"), 4), (buf.find(b"\n\n"), 2)) if i >= 0]
        if ends:
            end, sep = min(ends)
            break
        if len(buf) > MAX_HEAD_BYTES:
            raise ApiError(431, "head_too_large", f"request head over {MAX_HEAD_BYTES} bytes")
        chunk = await stream.receive_some(MAX_HEAD_BYTES)
        if not chunk:
            if not buf.strip():
                return None
            raise ApiError(400, "bad_request", "connection closed in the middle of the request head")
        buf += chunk
    if end > MAX_HEAD_BYTES:
        raise ApiError(431, "head_too_large", f"request head over {MAX_HEAD_BYTES} bytes")
    head = bytes(buf[:end]).lstrip(b"\r\n")  # RFC 9112 2.2: ignore empty lines before the request line
    body = bytearray(buf[end + sep :])
    method, target, headers = parse_head(head)
    length = _content_length(headers)
    while len(body) < length:
        chunk = await stream.receive_some(length - len(body))
        if not chunk:
            raise ApiError(400, "bad_request", "connection closed before the whole body arrived")
        body += chunk
    if len(body) > length:
        raise ApiError(400, "bad_request", "data after the request body; send one request per connection")
    path = target.split("?", 1)[0]
    return Request(method=method, target=target, path=path, headers=headers, body=bytes(body))


def render_response(response: Response) -> bytes:
    """The bytes of a JSON response with Content-Length and ``Connection: close``."""
    body = (json.dumps(response.body, indent=None, sort_keys=False) + "\n").encode()
    reason = _REASONS.get(response.status) or _standard_reason(response.status)
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"Server: meshnet-agent/{meshnet.__version__}",
    ]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error_body(err: ApiError) -> dict[str, str]:
    return {"code": err.code, "message": err.message}


# -- what the API exposes of a node --


def member_json(member: Any) -> dict[str, Any]:
    return {
        "name": member.name,
        "addr": member.addr,
        "port": member.port,
        "state": member.state,
        "incarnation": member.incarnation,
        "tags": decode_tags(member.meta),
    }


#: Big optional dependencies, imported only where the configuration needs them (bench/README.md, gossip section): a
#: keyring loads cryptography, the DNS reference path dnspython, --dataplane kernel pyroute2, IPAM netaddr.
OPTIONAL_MODULES = ("cryptography", "dns.message", "pyroute2", "netaddr")


def loaded_optional_modules() -> list[str]:
    """Which of ``OPTIONAL_MODULES`` this process has imported (a debug aid for memory budgets)."""
    return [name for name in OPTIONAL_MODULES if name in sys.modules]


def agent_json(node: Any) -> dict[str, Any]:
    members = node.members()
    counts: dict[str, int] = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
    me = None
    for m in members:
        counts[m.state] = counts.get(m.state, 0) + 1
        if m.name == node.name:
            me = m
    addr = node.advertise_addr or ("", 0)
    bound = node.bound_addr or ("", 0)
    uptime = trio.current_time() - node.started_at if node.started_at is not None else 0.0
    return {
        "name": node.name,
        "addr": addr[0],
        "port": addr[1],
        "bind": f"{bound[0]}:{bound[1]}",
        "version": meshnet.__version__,
        "health_score": node.health_score,
        "incarnation": me.incarnation if me is not None else None,
        "tags": decode_tags(me.meta) if me is not None else decode_tags(node.meta),
        "joined": node.is_joined,
        "leaving": node.is_leaving,
        "uptime_seconds": round(uptime, 3),
        "members": counts,
        "stats": {"gossip": node.gossip_stats(), "runtime": dict(node.stats)},
        "networkdb": node.db is not None,
        "services": {svc.name: svc.stats() for svc in getattr(node, "services", ())},
        "debug": {"optional_modules_loaded": loaded_optional_modules()},
    }


async def _get_members(node: Any, request: Request) -> Response:
    return Response(200, {"members": [member_json(m) for m in node.members()]})


async def _get_agent(node: Any, request: Request) -> Response:
    return Response(200, agent_json(node))


async def _post_leave(node: Any, request: Request) -> Response:
    drained = await node.leave()
    return Response(200, {"left": True, "drained": drained}, after=node.stop)


Handler = Callable[[Any, Request], Awaitable[Response]]
ROUTES: dict[str, dict[str, Handler]] = {
    "/v1/members": {"GET": _get_members},
    "/v1/agent": {"GET": _get_agent},
    "/v1/leave": {"POST": _post_leave},
}


async def handle_request(node: Any, request: Request) -> Response:
    """Route one parsed request; ApiError becomes its JSON error, any other exception a 500."""
    try:
        methods = ROUTES.get(request.path)
        if methods is None and (request.path == "/v1/db" or request.path.startswith("/v1/db/")):
            from meshnet.runtime import db_api

            return await db_api.handle(node, request)
        if methods is None:
            for svc in getattr(node, "services", ()):
                for prefix in svc.api_prefixes:
                    if request.path == prefix or request.path.startswith(prefix + "/"):
                        return await svc.handle_api(node, request)
        if methods is None:
            known = ", ".join(f"{m} {p}" for p, ms in ROUTES.items() for m in ms)
            extra = "".join(f", {p}/..." for svc in getattr(node, "services", ()) for p in svc.api_prefixes)
            raise ApiError(
                404, "not_found", f"no such endpoint {request.path}; known: {known}, /v1/db/...{extra}"
            )
        handler = methods.get(request.method)
        if handler is None:
            allowed = ", ".join(methods)
            resp = Response(
                405,
                {"code": "method_not_allowed", "message": f"{request.path} accepts {allowed}"},
                headers={"Allow": allowed},
            )
            return resp
        return await handler(node, request)
    except ApiError as err:
        return Response(err.status, error_body(err))
    except Exception:
        log.exception("API handler for %s %s failed", request.method, request.path)
        return Response(500, {"code": "internal", "message": "internal error; see the agent's log"})


async def _serve_connection(stream: trio.SocketStream, node: Any) -> None:
    async with stream:
        response: Response | None = None
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                request = await read_request(stream)
            if request is None:
                return
            response = await handle_request(node, request)
        except ApiError as err:
            response = Response(err.status, error_body(err))
        except trio.TooSlowError:
            response = Response(
                408, {"code": "timeout", "message": f"request not complete in {REQUEST_TIMEOUT}s"}
            )
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await stream.send_all(render_response(response))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if response.after is not None:
                response.after()


async def open_api_socket(path: str) -> trio.socket.SocketType:
    """A listening unix socket at ``path`` with mode 0600, its directory created if missing.

    Raises ConfigError (naming the fix) when the path is held by a live agent or is not a socket.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create API directory {directory}: {exc.strerror}; pass --api PATH"
        ) from exc
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"API path {path} exists and is not a socket; remove it or pass --api PATH")
        probe = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            with trio.move_on_after(1.0):
                await probe.connect(path)
                raise ConfigError(f"another agent is serving the API at {path}; stop it or pass --api PATH")
        except OSError:
            pass  # nobody listens: a stale socket from a crashed agent
        finally:
            probe.close()
        os.unlink(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind API socket {path}: {exc.strerror or exc}; pass --api PATH") from exc
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(32)
    return sock


async def serve_api(
    sock: trio.socket.SocketType,
    node: Any,
    path: str | None = None,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on a listening socket from ``open_api_socket`` until cancelled; unlink it at exit."""
    ino = os.stat(path).st_ino if path is not None else None
    try:
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
            task_status.started()
            while True:
                try:
                    conn, _ = await sock.accept()
                except OSError as exc:
                    log.warning("API accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                await limiter.acquire_on_behalf_of(conn)
                nursery.start_soon(_serve_limited, limiter, conn, node)
    finally:
        sock.close()
        if path is not None:
            # Remove the file only if it is still ours (another agent may have replaced a stale one).
            try:
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
            except OSError:
                pass


async def _serve_limited(limiter: trio.CapacityLimiter, conn: trio.socket.SocketType, node: Any) -> None:
    try:
        await _serve_connection(trio.SocketStream(conn), node)
    finally:
        limiter.release_on_behalf_of(conn)
