"""HTTP routes of the ``cnm`` service (docs/agent-services.md section 4).

    POST   /v1/networks            {name, subnet?: str|[str], gateway?, ipv6?, mtu?, vxlan_port?, labels?,
                                    internal?, attachable?, encrypted?}             -> 201 network
    GET    /v1/networks            -> {networks: [...]}  (names two networks share: ``duplicate_name``)
    GET    /v1/networks/{id|name}  -> network + ``endpoints`` (as this host sees them) + ``peers``
    DELETE /v1/networks/{id|name}  -> 200 network; 409 in_use while endpoints exist anywhere
    POST   /v1/endpoints           {network, name, ip?, aliases?, service?}         -> 201 endpoint
    GET    /v1/endpoints[?network=]  GET|DELETE /v1/endpoints/{id|name}
    POST   /v1/sandboxes           {name, netns?}                                   -> 201 sandbox
    GET    /v1/sandboxes           GET|DELETE /v1/sandboxes/{id|name}
    POST   /v1/sandboxes/{id|name}/join {endpoint}   POST .../leave {endpoint}       -> 200 sandbox
    POST   /v1/attach              {network, sandbox, name?, ip?, aliases?, service?} -> 201 {sandbox, endpoint}

Request bodies are validated by the controller (``meshnet.cnm.controller``, ``*_from``). Errors are
``{code, message}``: the controller's (400 ``invalid``/``not_supported``, 404 ``not_found``, 409
``conflict``/``in_use``/``not_local``), 400 ``bad_request`` for a body that is not a JSON object, IPAM's
(``ipam_svc.ipam_api_error``), 500 ``dataplane``, 503 ``leaving``. A refused request changes nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from meshnet.cnm.controller import AttachResult
from meshnet.cnm.errors import CnmError
from meshnet.cnm.records import EndpointRecord, NetworkRecord
from meshnet.cnm.sandboxes import Sandbox
from meshnet.core.errors import ApiError

__all__ = ["handle", "network_json", "endpoint_json", "sandbox_json"]


def _response(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    from meshnet.runtime.api import Response

    return Response(status, body, headers or {})


def network_json(net: NetworkRecord, *, duplicate: bool = False) -> dict[str, Any]:
    return {
        "id": net.id,
        "name": net.name,
        "driver": net.driver,
        "vni": net.vni,
        "subnets": [{"subnet": s.subnet, "gateway": s.gateway} for s in net.subnets],
        "mtu": net.mtu,
        "vxlan_port": net.vxlan_port,
        "labels": dict(net.labels),
        "internal": net.internal,
        "attachable": net.attachable,
        "creator": net.creator,
        "created": net.created,
        "duplicate_name": duplicate,
    }


def endpoint_json(svc: Any, ep: EndpointRecord) -> dict[str, Any]:
    local = ep.host == svc.ctl.config.host
    sb = svc.ctl.sandbox_of(ep.id) if local else None
    return {
        "id": ep.id,
        "name": ep.name,
        "network": ep.network,
        "host": ep.host,
        "vtep": ep.vtep,
        "mac": ep.mac,
        "ipv4": ep.ipv4,
        "ipv6": ep.ipv6,
        "aliases": list(ep.aliases),
        "sandbox": ep.sandbox,
        "sandbox_name": sb.name if sb is not None else None,
        "ifname": sb.ifname_of(ep.id) if sb is not None else None,
        "service": ep.service,
        "local": local,
    }


def sandbox_json(svc: Any, sb: Sandbox) -> dict[str, Any]:
    names = {n.id: n.name for n in svc.ctl.networks()}
    local = {e.id: e for e in svc.ctl.local_endpoints()} if sb.interfaces else {}
    endpoints = []
    for ep_id, ifname in sb.interfaces:
        rec = local.get(ep_id)
        item: dict[str, Any] = {"id": ep_id, "ifname": ifname}
        if rec is not None:
            item.update(
                name=rec.name,
                network=rec.network,
                network_name=names.get(rec.network),
                mac=rec.mac,
                ipv4=rec.ipv4,
                ipv6=rec.ipv6,
                aliases=list(rec.aliases),
                service=rec.service,
            )
        endpoints.append(item)
    return {
        "id": sb.id,
        "name": sb.name,
        "netns": sb.netns,
        "netns_path": sb.netns if sb.netns.startswith("/") else f"/run/netns/{sb.netns}",
        "managed": sb.managed,
        "created": sb.created,
        "endpoints": endpoints,
    }


def _body(request: Any) -> dict[str, Any]:
    try:
        obj = json.loads(request.body) if request.body.strip() else {}
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    return obj


def _method_not_allowed(path: str, allowed: str) -> Any:
    return _response(
        405, {"code": "method_not_allowed", "message": f"{path} accepts {allowed}"}, {"Allow": allowed}
    )


def _segments(path: str) -> list[str]:
    try:
        return [unquote(s, errors="strict") for s in path.strip("/").split("/")[1:]]
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "path segments must be percent-encoded UTF-8") from None


async def handle(svc: Any, request: Any) -> Any:
    """Route one request under the service's prefixes; ApiError for errors."""
    if svc.ctl is None:
        raise ApiError(503, "not_ready", "the agent is starting; try again")
    try:
        return await _route(svc, request)
    except CnmError as exc:  # a read's lookup
        raise ApiError(exc.status, exc.code, str(exc)) from None


async def _route(svc: Any, request: Any) -> Any:
    segs = _segments(request.path)  # ["networks", ...]
    method = request.method
    kind, rest = segs[0], segs[1:]
    ctl = svc.ctl
    now = time.time()
    if kind == "attach" and not rest:
        if method != "POST":
            return _method_not_allowed(request.path, "POST")
        body = _body(request)
        res: AttachResult = await svc.execute(lambda c: c.attach_from(body, now=now))
        return _response(
            201, {"sandbox": sandbox_json(svc, res.sandbox), "endpoint": endpoint_json(svc, res.endpoint)}
        )
    if kind == "networks":
        if not rest:
            if method == "GET":
                dups = ctl.duplicate_network_names()
                nets = ctl.networks()
                return _response(200, {"networks": [network_json(n, duplicate=n.name in dups) for n in nets]})
            if method == "POST":
                body = _body(request)
                net = await svc.execute(lambda c: c.create_network_from(body, now=now))
                return _response(201, network_json(net))
            return _method_not_allowed(request.path, "GET, POST")
        if len(rest) == 1:
            if method == "GET":
                return _inspect_network(svc, rest[0])
            if method == "DELETE":
                net = await svc.execute(lambda c: c.delete_network(rest[0]))
                return _response(200, network_json(net))
            return _method_not_allowed(request.path, "GET, DELETE")
    if kind == "endpoints":
        if not rest:
            if method == "GET":
                query = {k: v[-1] for k, v in parse_qs(urlsplit(request.target).query).items()}
                net = ctl.network(query["network"]).id if query.get("network") else None
                return _response(200, {"endpoints": [endpoint_json(svc, ep) for ep in ctl.endpoints(net)]})
            if method == "POST":
                body = _body(request)
                ep = await svc.execute(lambda c: c.create_endpoint_from(body))
                return _response(201, endpoint_json(svc, ep))
            return _method_not_allowed(request.path, "GET, POST")
        if len(rest) == 1:
            if method == "GET":
                return _response(200, endpoint_json(svc, ctl.endpoint(rest[0])))
            if method == "DELETE":
                ep = await svc.execute(lambda c: c.delete_endpoint(rest[0]))
                return _response(200, endpoint_json(svc, ep))
            return _method_not_allowed(request.path, "GET, DELETE")
    if kind == "sandboxes":
        if not rest:
            if method == "GET":
                return _response(200, {"sandboxes": [sandbox_json(svc, sb) for sb in ctl.sandboxes()]})
            if method == "POST":
                body = _body(request)
                netns = body.get("netns")
                if isinstance(netns, str) and netns.startswith("/") and not os.path.exists(netns):
                    raise ApiError(
                        400, "invalid", f"netns {netns} does not exist; give an existing namespace path"
                    )
                sb = await svc.execute(lambda c: c.create_sandbox_from(body, now=now))
                return _response(201, sandbox_json(svc, sb))
            return _method_not_allowed(request.path, "GET, POST")
        if len(rest) == 1:
            if method == "GET":
                return _response(200, sandbox_json(svc, ctl.sandbox(rest[0])))
            if method == "DELETE":
                before = sandbox_json(svc, ctl.sandbox(rest[0]))
                await svc.execute(lambda c: c.delete_sandbox(rest[0]))
                return _response(200, before)
            return _method_not_allowed(request.path, "GET, DELETE")
        if len(rest) == 2 and rest[1] in ("join", "leave"):
            if method != "POST":
                return _method_not_allowed(request.path, "POST")
            body = _body(request)
            unknown = sorted(set(body) - {"endpoint"})
            if unknown or not isinstance(body.get("endpoint"), str) or not body["endpoint"]:
                raise ApiError(400, "invalid", 'the body must be {"endpoint": ID_OR_NAME}')
            if rest[1] == "join":
                sb = await svc.execute(lambda c: c.join(rest[0], body["endpoint"]))
            else:
                sb = await svc.execute(lambda c: c.leave(rest[0], body["endpoint"]))
            return _response(200, sandbox_json(svc, sb))
    raise ApiError(404, "not_found", f"no such endpoint {request.path}; see docs/agent-services.md section 4")


def _inspect_network(svc: Any, ref: str) -> Any:
    ctl = svc.ctl
    net = ctl.network(ref)
    core = svc.node.db.core
    joined = net.id in core.networks()
    body = network_json(net, duplicate=net.name in ctl.duplicate_network_names())
    body["joined"] = joined
    body["endpoints"] = [endpoint_json(svc, ep) for ep in ctl.endpoints(net.id)]
    body["peers"] = list(core.peers(net.id)) if joined else []
    return _response(200, body)
