"""``meshnetctl``: talk to the local meshnet agent over its unix-socket API.

    meshnetctl [--api PATH] members [--json]
    meshnetctl [--api PATH] info [--json]
    meshnetctl [--api PATH] leave
    meshnetctl [--api PATH] db join NETWORK [--no-wait]       join a NetworkDB network (waits for its sync)
    meshnetctl [--api PATH] db leave NETWORK
    meshnetctl [--api PATH] db put NETWORK TABLE KEY VALUE [--b64] [--create | --update]
    meshnetctl [--api PATH] db get NETWORK TABLE KEY [--hidden]
    meshnetctl [--api PATH] db rm NETWORK TABLE KEY
    meshnetctl [--api PATH] db ls NETWORK TABLE [--live]     key, value, owner, ltime, deleted, hidden
    meshnetctl [--api PATH] db peers NETWORK
    meshnetctl [--api PATH] db networks
    meshnetctl [--api PATH] db stats [NETWORK]

Every command takes ``--json`` (the API's JSON). The global network (id ``""``) is written ``-``.
``db put`` stores VALUE as UTF-8 text, or with ``--b64`` decodes it from base64; ``db ls`` shows
tombstones and hidden entries (owner failed) too, flagged, unless ``--live``; values that are not
printable text are shown as ``b64:...``.

The API path is ``--api``, else ``$MESHNET_API``, else ``/run/meshnet/agent.sock``. Exit codes: 0 ok;
1 not found (no such entry, network not joined), a conflict, the agent unreachable or failing; 2 bad
usage, including arguments the agent refuses as invalid (a key or value over its limit).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import quote

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


def call(path: str, method: str, target: str, *, body: Any = None, timeout: float = TIMEOUT) -> Any:
    """One API request (``body``: sent as JSON); the decoded JSON body. Raises AgentUnreachable or
    AgentError."""
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
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {target} HTTP/1.1\r\nHost: meshnet\r\nContent-Length: {len(payload)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        request = (head + "Connection: close\r\n\r\n").encode() + payload
        chunks: list[bytes] = []
        try:
            sock.sendall(request)
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


# -- NetworkDB --

GLOBAL_SPELLING = "-"  # same as meshnet.runtime.db_api.GLOBAL_SPELLING (no trio here)
LS_VALUE_WIDTH = 48


def _seg(text: str) -> str:
    return quote(text or GLOBAL_SPELLING, safe="")


def _net_label(network: str) -> str:
    return GLOBAL_SPELLING if network == "" else network


def _value_text(entry: dict[str, Any], width: int | None = None) -> str:
    text = entry.get("value")
    if text is None or not (text.isprintable() or text == ""):
        text = "b64:" + entry.get("value_b64", "")
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def format_entries(entries: list[dict[str, Any]]) -> str:
    """``db ls``: KEY VALUE OWNER LTIME DELETED HIDDEN, sorted by key."""
    rows = [("KEY", "VALUE", "OWNER", "LTIME", "DELETED", "HIDDEN")]
    for e in sorted(entries, key=lambda e: e["key"]):
        rows.append(
            (
                e["key"],
                _value_text(e, LS_VALUE_WIDTH),
                e["owner"],
                str(e["ltime"]),
                "yes" if e["deleted"] else "no",
                "yes" if e.get("hidden") else "no",
            )
        )
    return _table(rows)


def format_entry(e: dict[str, Any]) -> str:
    lines = [
        f"network:  {_net_label(e['network'])}",
        f"table:    {e['table']}",
        f"key:      {e['key']}",
        f"value:    {_value_text(e)}",
        f"owner:    {e['owner']}",
        f"ltime:    {e['ltime']}",
    ]
    if e.get("deleted"):
        lines.append("deleted:  yes")
    if e.get("hidden"):
        lines.append("hidden:   yes (its owner is failed)")
    return "\n".join(lines)


def format_peers(peers: list[dict[str, Any]]) -> str:
    rows = [("NAME", "ADDRESS", "STATE")]
    for p in sorted(peers, key=lambda p: p["name"]):
        addr = p.get("addr")
        host = f"[{addr}]" if addr and ":" in addr else addr
        rows.append((p["name"], f"{host}:{p['port']}" if addr else "-", str(p.get("state"))))
    return _table(rows)


def _flatten(stats: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for k, v in sorted(stats.items()):
        if isinstance(v, dict):
            lines += _flatten(v, f"{prefix}{k}.")
        else:
            lines.append(f"{prefix}{k}: {v}")
    return lines


def format_db_stats(body: dict[str, Any]) -> str:
    if "node" not in body:  # one network
        body = dict(body)
        body["network"] = _net_label(body.get("network", ""))
        return "\n".join(_flatten(body))
    lines = [f"cluster id: {body.get('cluster_id') or '-'}", "node:"]
    lines += [f"  {line}" for line in _flatten(body["node"])]
    lines.append("agent:")
    lines += [f"  {line}" for line in _flatten(body.get("agent", {}))]
    for net in body.get("networks", []):
        lines.append(f"network {_net_label(net.get('network', ''))}:")
        lines += [f"  {line}" for line in _flatten({k: v for k, v in net.items() if k != "network"})]
    return "\n".join(lines)


def format_networks(networks: list[dict[str, Any]]) -> str:
    rows = [("NETWORK", "ENTRIES", "PEERS", "SYNCED", "QUEUE")]
    for n in networks:
        rows.append(
            (
                _net_label(n["network"]),
                str(n.get("entries", 0)),
                str(n.get("peers", 0)),
                "yes" if n.get("synced") else "no",
                str(n.get("queue_len", 0)),
            )
        )
    return _table(rows)


def _db(path: str, args: argparse.Namespace) -> None:
    cmd = args.db_command
    out: str
    if cmd == "join":
        target = f"/v1/db/networks/{_seg(args.network)}" + ("?wait=false" if args.no_wait else "")
        body = call(path, "POST", target)
        label = _net_label(body["network"])
        if body.get("already"):
            out = f"already joined network {label}"
        elif body.get("synced"):
            failed = f", {len(body['failed'])} did not answer" if body.get("failed") else ""
            out = f"joined network {label} (synced with {len(body.get('peers', []))} peers{failed})"
        else:
            out = f"joined network {label} (its sync is still running)"
    elif cmd == "leave":
        body = call(path, "DELETE", f"/v1/db/networks/{_seg(args.network)}")
        out = f"left network {_net_label(body['network'])}"
    elif cmd == "put":
        if args.b64:
            try:
                raw = base64.b64decode(args.value, validate=True)
            except (binascii.Error, ValueError):
                raise UsageError(f"--b64 value {args.value[:20]!r} is not valid base64") from None
            payload = {"value_b64": base64.b64encode(raw).decode()}
        else:
            payload = {"value": args.value}
        mode = "?mode=create" if args.create else "?mode=update" if args.update else ""
        target = f"/v1/db/{_seg(args.network)}/{_seg(args.table)}/{_seg(args.key)}{mode}"
        body = call(path, "PUT", target, body=payload)
        out = f"{body['table']}/{body['key']} in network {_net_label(body['network'])}: owner {body['owner']}, ltime {body['ltime']}"
    elif cmd == "get":
        query = "?hidden=true" if args.hidden else ""
        body = call(path, "GET", f"/v1/db/{_seg(args.network)}/{_seg(args.table)}/{_seg(args.key)}{query}")
        out = format_entry(body)
    elif cmd == "rm":
        body = call(path, "DELETE", f"/v1/db/{_seg(args.network)}/{_seg(args.table)}/{_seg(args.key)}")
        out = f"deleted {body['table']}/{body['key']} in network {_net_label(body['network'])} (tombstone ltime {body['ltime']})"
    elif cmd == "ls":
        query = "" if args.live else "?deleted=true&hidden=true"
        body = call(path, "GET", f"/v1/db/{_seg(args.network)}/{_seg(args.table)}/{query}")
        out = format_entries(body["entries"])
    elif cmd == "peers":
        body = call(path, "GET", f"/v1/db/{_seg(args.network)}/peers")
        out = format_peers(body["peers"])
    elif cmd == "networks":
        body = call(path, "GET", "/v1/db/networks")
        out = format_networks(body["networks"])
    else:  # stats
        query = f"?network={_seg(args.network)}" if args.network is not None else ""
        body = call(path, "GET", f"/v1/db/stats{query}")
        out = format_db_stats(body)
    print(json.dumps(body, indent=2) if args.json else out)


class UsageError(Exception):
    """A usage error found after parsing (exit code 2)."""


#: Modules that add subcommands: each has ``register(sub)``, which adds its parsers to the subparsers
#: action ``sub`` and gives every leaf parser ``set_defaults(handler=fn)``; ``fn(api_path, args)`` prints
#: its output and raises ``UsageError``/``AgentError``/``AgentUnreachable`` like the built-in commands.
#: A module that does not exist (yet) is skipped.
COMMAND_MODULES = ("meshnet.ctl_ipam", "meshnet.ctl_cnm", "meshnet.ctl_service")


def _register_modules(sub: Any) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)


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

    db = sub.add_parser(
        "db",
        help="NetworkDB: join/leave networks, put/get/rm/ls entries, peers, stats",
        description="NetworkDB diagnostics. The global network is written '-'.",
    )
    dsub = db.add_subparsers(dest="db_command", metavar="DBCOMMAND", parser_class=_Parser)
    dsub.required = True

    def add(name: str, help: str, *positional: str) -> argparse.ArgumentParser:
        p = dsub.add_parser(name, help=help)
        for arg in positional:
            p.add_argument(arg.lower(), metavar=arg)
        p.add_argument("--json", action="store_true", help="print the API's JSON")
        return p

    join = add("join", "join a network and wait for its sync", "NETWORK")
    join.add_argument("--no-wait", action="store_true", help="return at once, without waiting for the sync")
    add("leave", "leave a network (its entries of this node are removed cluster-wide)", "NETWORK")
    put = add(
        "put", "create or update an entry (this node becomes its owner)", "NETWORK", "TABLE", "KEY", "VALUE"
    )
    put.add_argument("--b64", action="store_true", help="VALUE is base64 (for binary values)")
    how = put.add_mutually_exclusive_group()
    how.add_argument("--create", action="store_true", help="fail if the entry exists")
    how.add_argument("--update", action="store_true", help="fail if the entry does not exist")
    get = add("get", "show one live entry", "NETWORK", "TABLE", "KEY")
    get.add_argument("--hidden", action="store_true", help="also an entry whose owner is failed")
    add("rm", "delete an entry (a tombstone)", "NETWORK", "TABLE", "KEY")
    ls = add("ls", "list a table: key, value, owner, ltime, deleted, hidden", "NETWORK", "TABLE")
    ls.add_argument("--live", action="store_true", help="only what readers see (no tombstones, no hidden)")
    add("peers", "the network's peers as this node sees them", "NETWORK")
    add("networks", "networks this node has joined")
    stats = add("stats", "NetworkDB counters (node-wide, or of one network)")
    stats.add_argument("network", metavar="NETWORK", nargs="?", help="one network's stats")
    _register_modules(sub)
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
        elif args.command == "db":
            _db(path, args)
        elif getattr(args, "handler", None) is not None:
            args.handler(path, args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except AgentUnreachable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except AgentError as exc:
        print(f"{PROG}: error: the agent answered {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
        return 2 if exc.status in (400, 413) else 1
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this copy's: the subcommand modules raise meshnet.ctl's
    # exception classes, which are not __main__'s.
    from meshnet.ctl import main as _main

    sys.exit(_main())
