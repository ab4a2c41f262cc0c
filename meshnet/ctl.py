"""``meshnetctl``: talk to the local meshnet agent over its unix-socket API.

    meshnetctl [--api PATH] members [--json]
    meshnetctl [--api PATH] info [--json]
    meshnetctl [--api PATH] leave

The API path is ``--api``, else ``$MESHNET_API``, else ``/run/meshnet/agent.sock``. Exit codes: 0 ok,
1 the agent is unreachable or answered an error, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["main", "AgentUnreachable", "AgentError", "call", "format_members"]

DEFAULT_API_PATH = "/run/meshnet/agent.sock"  # same as meshnet.runtime.api.DEFAULT_API_PATH (no trio here)
PROG = "meshnetctl"
TIMEOUT = 30.0  # a leave may take the agent's leave_timeout


class AgentUnreachable(Exception):
    """No agent answers at the API path."""


class AgentError(Exception):
    """The agent answered with an error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def call(path: str, method: str, target: str, *, timeout: float = TIMEOUT) -> Any:
    """One API request; the decoded JSON body. Raises AgentUnreachable or AgentError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise AgentUnreachable(
                f"no meshnet agent is running at {path}; start meshnet-agent, or point elsewhere with --api PATH or MESHNET_API=PATH"
            ) from exc
        except PermissionError as exc:
            raise AgentUnreachable(
                f"permission denied on {path}; run meshnetctl as the agent's user (e.g. root)"
            ) from exc
        except OSError as exc:
            raise AgentUnreachable(f"cannot connect to the agent at {path}: {exc.strerror or exc}") from exc
        request = (
            f"{method} {target} HTTP/1.1\r\nHost: meshnet\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        chunks: list[bytes] = []
        try:
            sock.sendall(request.encode())
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError as exc:
            raise AgentUnreachable(f"the agent at {path} did not answer within {timeout:.0f}s") from exc
        except OSError as exc:
            raise AgentUnreachable(
                f"the agent at {path} closed the connection: {exc.strerror or exc}"
            ) from exc
    finally:
        sock.close()
    status, body = _parse_response(b"".join(chunks), path)
    if status >= 400:
        if isinstance(body, dict):
            raise AgentError(status, str(body.get("code", "error")), str(body.get("message", "")))
        raise AgentError(status, "error", "unexpected error body")
    return body


def _parse_response(data: bytes, path: str) -> tuple[int, Any]:
    head, sep, body = data.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise AgentUnreachable(f"the process at {path} does not speak the meshnet API (bad HTTP response)")
    try:
        return int(parts[1]), json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise AgentUnreachable(f"the agent at {path} sent a body that is not JSON") from exc


def _tags_text(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def format_members(members: list[dict[str, Any]]) -> str:
    """A ``serf members``-like table: name, address, state, incarnation, tags."""
    rows = [("NAME", "ADDRESS", "STATE", "INCARNATION", "TAGS")]
    for m in sorted(members, key=lambda m: m["name"]):
        host = f"[{m['addr']}]" if ":" in m["addr"] else m["addr"]
        rows.append(
            (
                m["name"],
                f"{host}:{m['port']}",
                m["state"],
                str(m["incarnation"]),
                _tags_text(m.get("tags", {})),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(widths[i]) if i < 4 else c for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def format_info(info: dict[str, Any]) -> str:
    counts = info.get("members", {})
    lines = [
        f"name:          {info['name']}",
        f"address:       {info['addr']}:{info['port']} (bound {info.get('bind', '?')})",
        f"version:       {info.get('version', '?')}",
        f"incarnation:   {info.get('incarnation')}",
        f"health score:  {info.get('health_score')} (0 is healthy)",
        f"joined:        {'yes' if info.get('joined') else 'no'}",
        f"leaving:       {'yes' if info.get('leaving') else 'no'}",
        f"uptime:        {info.get('uptime_seconds', 0):.0f}s",
        "members:       " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"tags:          {_tags_text(info.get('tags', {})) or '-'}",
    ]
    for section, stats in sorted(info.get("stats", {}).items()):
        lines.append(f"{section} stats:")
        lines += [f"  {k}: {v}" for k, v in sorted(stats.items())]
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Control the local meshnet agent.")
    parser.add_argument(
        "--api", metavar="PATH", help=f"agent API socket (default: $MESHNET_API or {DEFAULT_API_PATH})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    members = sub.add_parser("members", help="list the cluster's members as this agent sees them")
    members.add_argument("--json", action="store_true", help="print the API's JSON")
    info = sub.add_parser("info", help="this agent: name, address, health, stats")
    info.add_argument("--json", action="store_true", help="print the API's JSON")
    sub.add_parser("leave", help="leave the cluster gracefully and stop the agent")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    path = args.api or os.environ.get("MESHNET_API") or DEFAULT_API_PATH
    try:
        if args.command == "members":
            body = call(path, "GET", "/v1/members")
            print(json.dumps(body, indent=2) if args.json else format_members(body["members"]))
        elif args.command == "info":
            body = call(path, "GET", "/v1/agent")
            print(json.dumps(body, indent=2) if args.json else format_info(body))
        elif args.command == "leave":
            body = call(path, "POST", "/v1/leave")
            how = "broadcast drained" if body.get("drained") else "broadcast not confirmed before the timeout"
            print(f"agent left the cluster ({how}) and is stopping")
    except AgentUnreachable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except AgentError as exc:
        print(f"{PROG}: error: the agent answered {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
