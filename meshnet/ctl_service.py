"""``meshnetctl service`` and ``meshnetctl dns``: services for DNS discovery and the sandbox resolvers.

    meshnetctl service create NAME --network NET [--endpoint EP]... [--port NAME:PORT/PROTO]...
                              [--alias A]... [--json]
    meshnetctl service ls [--network NET] [--json]
    meshnetctl service inspect NAME|ID [--network NET] [--json]
    meshnetctl service rm NAME|ID [--network NET]
    meshnetctl dns [--json]                       every local sandbox's resolver: address, scope, counters

A service lives on one network. Its tasks are the endpoints given with ``--endpoint`` (ids or names on that
network) plus every endpoint created with ``service`` set to the service's name; each endpoint's host
publishes its task. In every sandbox attached to the network, ``NAME`` and its aliases resolve to all task
addresses (shuffled), ``tasks.NAME`` too, and ``_PORTNAME._PROTO.NAME`` answers SRV records per task
(``--port http:80/tcp``). Create and remove on a host that has an endpoint on the network. Exit codes as
``meshnetctl`` documents (0 ok, 1 not found / conflict / unreachable, 2 usage).
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from meshnet.ctl import _table, call

__all__ = ["register", "format_services", "format_dns"]


def format_services(services: list[dict[str, Any]]) -> str:
    """``service ls``: NAME NETWORK TASKS PORTS ALIASES ID."""
    if not services:
        return "no services"
    rows = [("NAME", "NETWORK", "TASKS", "PORTS", "ALIASES", "ID")]
    for s in services:
        tasks = ",".join(f"{t['name']}@{t['host']}" for t in s["tasks"]) or "-"
        rows.append(
            (
                s["name"],
                s.get("network_name") or s["network"],
                tasks,
                ",".join(s["ports"]) or "-",
                ",".join(s["aliases"]) or "-",
                s["id"],
            )
        )
    return _table(rows)


def _format_one(s: dict[str, Any]) -> str:
    lines = [
        f"name:      {s['name']}",
        f"id:        {s['id']}",
        f"network:   {s.get('network_name') or '?'} ({s['network']})",
        f"aliases:   {', '.join(s['aliases']) or '-'}",
        f"ports:     {', '.join(s['ports']) or '-'}",
        f"endpoints: {', '.join(s['endpoints']) or '-'}",
        f"creator:   {s['creator'] or '-'}",
        "tasks:",
    ]
    for t in s.get("tasks", []):
        addrs = " ".join(a for a in (t["ipv4"], t["ipv6"]) if a)
        lines.append(f"  {t['name']:<20} {addrs:<30} host {t['host']}  endpoint {t['endpoint']}")
    if not s.get("tasks"):
        lines.append("  (none visible)")
    return "\n".join(lines)


def format_dns(body: dict[str, Any]) -> str:
    """``dns``: SANDBOX LISTENING SCOPE QUERIES ANSWERED FORWARDED REFUSED ERROR, then the upstreams."""
    rows = [("SANDBOX", "LISTENING", "SCOPE", "QUERIES", "ANSWERED", "FORWARDED", "REFUSED", "ERROR")]
    for b in body["sandboxes"]:
        st = b["stats"]
        refused = st["refused_over_limit"] + st["refused_no_upstream"] + st["refused_policy"]
        rows.append(
            (
                b["name"],
                b["listening"] or "-",
                ",".join(n["name"] or n["id"] for n in b["scope"]) or "-",
                str(st["queries"]),
                str(st["answered"]),
                str(st["forwarded"]),
                str(refused),
                b["error"] or "-",
            )
        )
    ups = ", ".join(f"{u['address']}:{u['port']}" for u in body["upstreams"]) or "none"
    return (
        _table(rows) + f"\nupstreams: {ups}" + ("" if body["servers"] else " (servers off: --dataplane none)")
    )


def _q(args: argparse.Namespace) -> str:
    return f"?network={quote(args.network, safe='')}" if getattr(args, "network", None) else ""


def _create(path: str, args: argparse.Namespace) -> None:
    body = {
        "name": args.name,
        "network": args.network,
        "endpoints": args.endpoint or [],
        "ports": args.port or [],
        "aliases": args.alias or [],
    }
    out = call(path, "POST", "/v1/services", body=body)
    print(json.dumps(out, indent=2) if args.json else out["id"])


def _ls(path: str, args: argparse.Namespace) -> None:
    out = call(path, "GET", f"/v1/services{_q(args)}")
    print(json.dumps(out, indent=2) if args.json else format_services(out["services"]))


def _inspect(path: str, args: argparse.Namespace) -> None:
    out = call(path, "GET", f"/v1/services/{quote(args.service, safe='')}{_q(args)}")
    print(json.dumps(out, indent=2) if args.json else _format_one(out))


def _rm(path: str, args: argparse.Namespace) -> None:
    out = call(path, "DELETE", f"/v1/services/{quote(args.service, safe='')}{_q(args)}")
    print(json.dumps(out, indent=2) if args.json else out["deleted"])


def _dns(path: str, args: argparse.Namespace) -> None:
    out = call(path, "GET", "/v1/dns")
    print(json.dumps(out, indent=2) if args.json else format_dns(out))


def register(sub: Any) -> None:
    """Add ``service`` and ``dns`` to meshnetctl's subcommands."""
    svc = sub.add_parser(
        "service",
        help="services for DNS discovery: create, ls, inspect, rm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ssub = svc.add_subparsers(dest="service_command", metavar="SERVICECOMMAND", parser_class=type(svc))
    ssub.required = True
    create = ssub.add_parser("create", help="create a service on a network")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--network", required=True, metavar="NET", help="network id or name")
    create.add_argument(
        "--endpoint", action="append", metavar="EP", help="a task endpoint (id or name); repeat"
    )
    create.add_argument(
        "--port", action="append", metavar="NAME:PORT/PROTO", help="an SRV port, e.g. http:80/tcp"
    )
    create.add_argument("--alias", action="append", metavar="A", help="another name of the service; repeat")
    create.set_defaults(handler=_create)
    ls = ssub.add_parser("ls", help="list services as this agent sees them")
    ls.add_argument("--network", metavar="NET", help="only this network (id or name)")
    ls.set_defaults(handler=_ls)
    inspect = ssub.add_parser("inspect", help="one service with its tasks")
    rm = ssub.add_parser("rm", help="remove a service (its names go at once everywhere)")
    for p in (inspect, rm):
        p.add_argument("service", metavar="NAME|ID")
        p.add_argument("--network", metavar="NET", help="the network, when the name exists on several")
    inspect.set_defaults(handler=_inspect)
    rm.set_defaults(handler=_rm)
    for p in (create, ls, inspect, rm):
        p.add_argument("--json", action="store_true", help="print the API's JSON")
    dns = sub.add_parser("dns", help="the sandbox resolvers of this agent: address, scope, counters")
    dns.add_argument("--json", action="store_true", help="print the API's JSON")
    dns.set_defaults(handler=_dns)
