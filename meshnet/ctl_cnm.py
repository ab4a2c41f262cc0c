"""``meshnetctl`` subcommands of the CNM (networks, endpoints, sandboxes, attach); registered by ``meshnet/ctl.py``.

    meshnetctl network create NAME [--subnet CIDR]... [--gateway IP] [--ipv6] [--mtu N] [--vxlan-port N]
                              [--label K=V]... [--internal] [--not-attachable]
    meshnetctl network ls | inspect NETWORK | rm NETWORK
    meshnetctl endpoint create --network NET NAME [--ip IP] [--alias A]... [--service S]
    meshnetctl endpoint ls [--network NET] | inspect ENDPOINT | rm ENDPOINT
    meshnetctl sandbox create NAME [--netns PATH] | ls | inspect SANDBOX | rm SANDBOX
    meshnetctl sandbox join SANDBOX ENDPOINT | leave SANDBOX ENDPOINT
    meshnetctl attach --network NET --sandbox NAME [--name EP] [--alias A]... [--ip IP] [--service S]

Networks, endpoints and sandboxes are named by id or name. Every command takes ``--json`` (the API's
JSON); the default is a table or a short line. Exit codes (``meshnet/ctl.py``): 0 ok; 1 not found, a
conflict (exists, in use), the agent unreachable or failing; 2 bad usage, including what the agent
refuses as invalid (400).
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from meshnet.ctl import UsageError, call

__all__ = ["register", "format_networks", "format_endpoints", "format_sandboxes"]


def _seg(text: str) -> str:
    return quote(text, safe="")


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def format_networks(networks: list[dict[str, Any]]) -> str:
    """``network ls``: ID (12), NAME (``*`` when another network has the name), VNI, SUBNETS, CREATOR."""
    rows = [("ID", "NAME", "VNI", "SUBNETS", "CREATOR")]
    for n in networks:
        name = n["name"] + (" *" if n.get("duplicate_name") else "")
        subnets = ",".join(s["subnet"] for s in n.get("subnets", [])) or "-"
        rows.append((n["id"][:12], name, str(n["vni"]), subnets, n.get("creator") or "-"))
    out = _table(rows)
    if any(n.get("duplicate_name") for n in networks):
        out += "\n* two networks share this name (created concurrently); names resolve to the oldest"
    return out


def format_endpoints(endpoints: list[dict[str, Any]]) -> str:
    """``endpoint ls``: ID, NAME, NETWORK, HOST, IPV4, MAC, SANDBOX."""
    rows = [("ID", "NAME", "NETWORK", "HOST", "IPV4", "MAC", "SANDBOX")]
    for e in endpoints:
        sandbox = e.get("sandbox_name") or (e["sandbox"][:12] if e.get("sandbox") else "-")
        rows.append(
            (e["id"][:12], e["name"], e["network"][:12], e["host"], e.get("ipv4") or "-", e["mac"], sandbox)
        )
    return _table(rows)


def format_sandboxes(sandboxes: list[dict[str, Any]]) -> str:
    """``sandbox ls``: ID, NAME, NETNS, ENDPOINTS (``ifname=name@network ip``)."""
    rows = [("ID", "NAME", "NETNS", "ENDPOINTS")]
    for s in sandboxes:
        eps = ", ".join(
            f"{e['ifname']}={e.get('name', e['id'][:12])}@{e.get('network_name') or e.get('network', '?')[:12]}"
            f" {e.get('ipv4') or e.get('ipv6') or '-'}"
            for e in s.get("endpoints", [])
        )
        rows.append((s["id"][:12], s["name"], s["netns"], eps or "-"))
    return _table(rows)


def _detail(obj: dict[str, Any]) -> str:
    lines = []
    for k, v in obj.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f"{k}:")
            for item in v:
                lines.append(
                    "  - " + ", ".join(f"{ik}={iv}" for ik, iv in item.items() if iv not in (None, [], ""))
                )
        elif isinstance(v, list | dict):
            lines.append(f"{k}: {json.dumps(v) if v else '-'}")
        else:
            lines.append(f"{k}: {'-' if v is None or v == '' else v}")
    return "\n".join(lines)


def _labels(items: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"label {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def _print(args: argparse.Namespace, body: Any, text: str) -> None:
    print(json.dumps(body, indent=2) if args.json else text)


def _network(path: str, args: argparse.Namespace) -> None:
    cmd = args.network_command
    if cmd == "create":
        payload: dict[str, Any] = {"name": args.name}
        if args.subnet:
            payload["subnet"] = args.subnet
        for key in ("gateway", "mtu", "vxlan_port"):
            if getattr(args, key) is not None:
                payload[key] = getattr(args, key)
        if args.ipv6:
            payload["ipv6"] = True
        if args.label:
            payload["labels"] = _labels(args.label)
        if args.internal:
            payload["internal"] = True
        if args.not_attachable:
            payload["attachable"] = False
        if args.encrypted:
            payload["encrypted"] = True
        body = call(path, "POST", "/v1/networks", body=payload)
        subnets = ", ".join(s["subnet"] for s in body["subnets"])
        _print(args, body, f"{body['id']}  network {body['name']} (VNI {body['vni']}, {subnets})")
    elif cmd == "ls":
        body = call(path, "GET", "/v1/networks")
        _print(args, body, format_networks(body["networks"]))
    elif cmd == "inspect":
        body = call(path, "GET", f"/v1/networks/{_seg(args.network)}")
        text = {k: v for k, v in body.items() if k != "endpoints"}
        out = _detail(text)
        if body.get("endpoints"):
            out += "\nendpoints:\n" + "\n".join(
                "  " + line for line in format_endpoints(body["endpoints"]).split("\n")
            )
        _print(args, body, out)
    else:  # rm
        body = call(path, "DELETE", f"/v1/networks/{_seg(args.network)}")
        _print(args, body, f"removed network {body['name']} ({body['id']})")


def _endpoint(path: str, args: argparse.Namespace) -> None:
    cmd = args.endpoint_command
    if cmd == "create":
        payload: dict[str, Any] = {"network": args.network, "name": args.name}
        if args.ip:
            payload["ip"] = args.ip
        if args.alias:
            payload["aliases"] = args.alias
        if args.service:
            payload["service"] = args.service
        body = call(path, "POST", "/v1/endpoints", body=payload)
        _print(
            args,
            body,
            f"{body['id']}  endpoint {body['name']} {body.get('ipv4') or body.get('ipv6')} {body['mac']}",
        )
    elif cmd == "ls":
        target = "/v1/endpoints" + (f"?network={_seg(args.network)}" if args.network else "")
        body = call(path, "GET", target)
        _print(args, body, format_endpoints(body["endpoints"]))
    elif cmd == "inspect":
        body = call(path, "GET", f"/v1/endpoints/{_seg(args.endpoint)}")
        _print(args, body, _detail(body))
    else:  # rm
        body = call(path, "DELETE", f"/v1/endpoints/{_seg(args.endpoint)}")
        _print(args, body, f"removed endpoint {body['name']} ({body['id']})")


def _sandbox(path: str, args: argparse.Namespace) -> None:
    cmd = args.sandbox_command
    if cmd == "create":
        payload: dict[str, Any] = {"name": args.name}
        if args.netns:
            payload["netns"] = args.netns
        body = call(path, "POST", "/v1/sandboxes", body=payload)
        _print(args, body, f"{body['id']}  sandbox {body['name']} ({body['netns']})")
    elif cmd == "ls":
        body = call(path, "GET", "/v1/sandboxes")
        _print(args, body, format_sandboxes(body["sandboxes"]))
    elif cmd == "inspect":
        body = call(path, "GET", f"/v1/sandboxes/{_seg(args.sandbox)}")
        _print(args, body, _detail(body))
    elif cmd in ("join", "leave"):
        body = call(
            path, "POST", f"/v1/sandboxes/{_seg(args.sandbox)}/{cmd}", body={"endpoint": args.endpoint}
        )
        verb = "joined" if cmd == "join" else "left"
        _print(args, body, f"endpoint {args.endpoint} {verb} sandbox {body['name']}")
    else:  # rm
        body = call(path, "DELETE", f"/v1/sandboxes/{_seg(args.sandbox)}")
        _print(args, body, f"removed sandbox {body['name']} and its {len(body['endpoints'])} endpoints")


def _attach(path: str, args: argparse.Namespace) -> None:
    payload: dict[str, Any] = {"network": args.network, "sandbox": args.sandbox}
    if args.name:
        payload["name"] = args.name
    if args.ip:
        payload["ip"] = args.ip
    if args.alias:
        payload["aliases"] = args.alias
    if args.service:
        payload["service"] = args.service
    body = call(path, "POST", "/v1/attach", body=payload)
    ep, sb = body["endpoint"], body["sandbox"]
    _print(
        args,
        body,
        f"{ep['name']} attached to {args.network} in sandbox {sb['name']} ({sb['netns']}): "
        f"{ep.get('ifname') or '?'} {ep.get('ipv4') or ep.get('ipv6')} {ep['mac']}",
    )


def register(sub: Any) -> None:
    """Add ``network``, ``endpoint``, ``sandbox`` and ``attach`` to ``meshnetctl``'s subparsers."""

    def leaf(parent: Any, name: str, help: str, handler: Any, *positional: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help)
        for arg in positional:
            p.add_argument(arg.lower(), metavar=arg)
        p.add_argument("--json", action="store_true", help="print the API's JSON")
        p.set_defaults(handler=handler)
        return p

    net = sub.add_parser("network", help="networks: create, ls, inspect, rm")
    nsub = net.add_subparsers(dest="network_command", metavar="COMMAND", parser_class=type(net))
    nsub.required = True
    create = leaf(nsub, "create", "create an overlay network (cluster-wide)", _network, "NAME")
    create.add_argument(
        "--subnet", action="append", metavar="CIDR", help="a subnet; repeat for more (default: from the pool)"
    )
    create.add_argument("--gateway", metavar="IP", help="the subnet's gateway (default: its first address)")
    create.add_argument("--ipv6", action="store_true", help="also an IPv6 subnet")
    create.add_argument("--mtu", type=int, help="overlay MTU (default: underlay MTU - 50)")
    create.add_argument("--vxlan-port", type=int, dest="vxlan_port", help="VXLAN UDP port (default: 4789)")
    create.add_argument("--label", action="append", metavar="K=V", help="a label; repeat for more")
    create.add_argument("--internal", action="store_true", help="no external connectivity")
    create.add_argument("--not-attachable", action="store_true", help="not attachable")
    create.add_argument("--encrypted", action="store_true", help="(refused: not supported yet)")
    leaf(nsub, "ls", "list networks", _network)
    leaf(nsub, "inspect", "a network, its endpoints as this host sees them, its peers", _network, "NETWORK")
    leaf(nsub, "rm", "remove a network without endpoints", _network, "NETWORK")

    ep = sub.add_parser("endpoint", help="endpoints: create, ls, inspect, rm")
    esub = ep.add_subparsers(dest="endpoint_command", metavar="COMMAND", parser_class=type(ep))
    esub.required = True
    create = leaf(
        esub, "create", "create an endpoint on this host (an address, not yet joined)", _endpoint, "NAME"
    )
    create.add_argument("--network", required=True, help="network id or name")
    create.add_argument("--ip", help="the address to use (default: the next free one)")
    create.add_argument("--alias", action="append", help="a DNS alias; repeat for more")
    create.add_argument("--service", help="service this endpoint is a task of")
    ls = leaf(esub, "ls", "endpoints of the networks this host has joined", _endpoint)
    ls.add_argument("--network", help="only this network")
    leaf(esub, "inspect", "one endpoint", _endpoint, "ENDPOINT")
    leaf(esub, "rm", "remove a local endpoint that is not joined", _endpoint, "ENDPOINT")

    sb = sub.add_parser(
        "sandbox", help="sandboxes (container namespaces): create, ls, inspect, rm, join, leave"
    )
    ssub = sb.add_subparsers(dest="sandbox_command", metavar="COMMAND", parser_class=type(sb))
    ssub.required = True
    create = leaf(ssub, "create", "a sandbox: a new namespace, or an existing one by path", _sandbox, "NAME")
    create.add_argument(
        "--netns", metavar="PATH", help="an existing namespace (/run/netns/X, /proc/PID/ns/net)"
    )
    leaf(ssub, "ls", "sandboxes on this host", _sandbox)
    leaf(ssub, "inspect", "one sandbox", _sandbox, "SANDBOX")
    leaf(ssub, "rm", "remove a sandbox: its endpoints leave and are removed", _sandbox, "SANDBOX")
    leaf(ssub, "join", "plug an endpoint into a sandbox", _sandbox, "SANDBOX", "ENDPOINT")
    leaf(ssub, "leave", "unplug an endpoint from a sandbox", _sandbox, "SANDBOX", "ENDPOINT")

    at = leaf(sub, "attach", "one step: sandbox (if missing), endpoint, join", _attach)
    at.add_argument("--network", required=True, help="network id or name")
    at.add_argument("--sandbox", required=True, help="sandbox name (created if missing)")
    at.add_argument("--name", help="endpoint name (default: the sandbox name)")
    at.add_argument("--alias", action="append", help="a DNS alias; repeat for more")
    at.add_argument("--ip", help="the address to use")
    at.add_argument("--service", help="service this endpoint is a task of")
