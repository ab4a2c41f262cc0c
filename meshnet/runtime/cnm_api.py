"""HTTP routes of the ``cnm`` service (docs/agent-services.md section 4).

    POST   /v1/networks            {name, subnet?: str|[str], gateway?, ipv6?, mtu?, vxlan_port?, labels?,
                                    internal?, attachable?, encrypted?}             -> 201 network
    GET    /v1/networks            -> {networks: [...]}  (duplicate names flagged ``duplicate_name``)
    GET    /v1/networks/{id|name}  -> network + endpoints (as this host sees them) + peers
    DELETE /v1/networks/{id|name}  -> 200 network; 409 in_use while endpoints exist anywhere
    POST   /v1/endpoints           {network, name, ip?, aliases?, service?}         -> 201 endpoint
    GET    /v1/endpoints[?network=]  GET|DELETE /v1/endpoints/{id|name}
    POST   /v1/sandboxes           {name, netns?}                                   -> 201 sandbox
    GET    /v1/sandboxes           GET|DELETE /v1/sandboxes/{id|name}
    POST   /v1/sandboxes/{id|name}/join {endpoint}   POST .../leave {endpoint}       -> 200 sandbox
    POST   /v1/attach              {network, sandbox, name?, ip?, aliases?, service?} -> 201 {sandbox, endpoint}

Errors are ``{code, message}``: 400 ``bad_request`` (malformed JSON or field) / ``invalid`` /
``not_supported``, 404 ``not_found``, 405, 409 ``exists`` / ``in_use`` / ``not_local`` / ``not_joined`` /
``ambiguous``, IPAM's own (``ipam_svc.ipam_api_error``), 500 ``dataplane``, 503 ``leaving``. A refused
request changes nothing (the service's steps roll back).
"""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from meshnet.cnm.records import EndpointRecord, NetworkRecord
from meshnet.core.errors import ApiError
from meshnet.runtime.cnm_model import NAME_RULE, SandboxInfo, valid_name

__all__ = ["handle", "network_json", "endpoint_json", "sandbox_json"]

_NETWORK_FIELDS = {
    "name",
    "subnet",
    "gateway",
    "ipv6",
    "mtu",
    "vxlan_port",
    "labels",
    "internal",
    "attachable",
    "encrypted",
}


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
    sb = svc._sandboxes.get(ep.sandbox) if ep.host == svc.me else None
    sep = sb.endpoint(ep.id) if sb is not None else None
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
        "ifname": sep.ifname if sep is not None else None,
        "service": ep.service,
        "local": ep.host == svc.me,
    }


def sandbox_json(sb: SandboxInfo) -> dict[str, Any]:
    return {
        "id": sb.id,
        "name": sb.name,
        "netns": sb.netns,
        "netns_path": sb.netns_path,
        "created": sb.created,
        "endpoints": [
            {
                "id": ep.id,
                "name": ep.name,
                "network": ep.network,
                "network_name": ep.network_name,
                "ifname": ep.ifname,
                "mac": ep.mac,
                "ipv4": ep.ipv4,
                "ipv6": ep.ipv6,
                "aliases": list(ep.aliases),
                "service": ep.service,
            }
            for ep in sb.endpoints
        ],
    }


# -- request bodies --


def _body(request: Any) -> dict[str, Any]:
    try:
        obj = json.loads(request.body) if request.body.strip() else {}
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    return obj


def _only(obj: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ApiError(
            400, "bad_request", f"unknown field {unknown[0]!r}; known: {', '.join(sorted(allowed))}"
        )


def _str(obj: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise ApiError(400, "bad_request", f"field {key!r} is required")
        return None
    if not isinstance(v, str) or not v:
        raise ApiError(400, "bad_request", f"field {key!r} must be a non-empty string")
    return v


def _bool(obj: dict[str, Any], key: str, default: bool) -> bool:
    v = obj.get(key, default)
    if not isinstance(v, bool):
        raise ApiError(400, "bad_request", f"field {key!r} must be true or false")
    return v


def _int(obj: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    v = obj.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not (v == default or low <= v <= high):
        raise ApiError(400, "bad_request", f"field {key!r} must be an integer in {low}..{high}")
    return v


def _strings(obj: dict[str, Any], key: str) -> list[str]:
    v = obj.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ApiError(400, "bad_request", f"field {key!r} must be a list of non-empty strings")
    return list(v)


def _ip(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ApiError(400, "invalid", f"{what} {text!r} is not an IP address") from None


def _name(text: str | None, what: str) -> str | None:
    if text is not None and not valid_name(text):
        raise ApiError(400, "invalid", f"{what} {text!r}: {NAME_RULE}")
    return text


# -- routes --


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
    segs = _segments(request.path)  # ["networks", ...]
    method = request.method
    kind = segs[0]
    rest = segs[1:]
    if kind == "attach" and not rest:
        if method != "POST":
            return _method_not_allowed(request.path, "POST")
        return await _attach(svc, _body(request))
    if kind == "networks":
        if not rest:
            if method == "GET":
                return _list_networks(svc)
            if method == "POST":
                return await _create_network(svc, _body(request))
            return _method_not_allowed(request.path, "GET, POST")
        if len(rest) == 1:
            if method == "GET":
                return _inspect_network(svc, rest[0])
            if method == "DELETE":
                return _response(200, network_json(await svc.delete_network(rest[0])))
            return _method_not_allowed(request.path, "GET, DELETE")
    if kind == "endpoints":
        if not rest:
            if method == "GET":
                query = {k: v[-1] for k, v in parse_qs(urlsplit(request.target).query).items()}
                net = svc.network(query["network"]).id if query.get("network") else None
                eps = svc.endpoints(net)
                return _response(200, {"endpoints": [endpoint_json(svc, ep) for ep in eps]})
            if method == "POST":
                return await _create_endpoint(svc, _body(request))
            return _method_not_allowed(request.path, "GET, POST")
        if len(rest) == 1:
            if method == "GET":
                return _response(200, endpoint_json(svc, svc.endpoint(rest[0])))
            if method == "DELETE":
                return _response(200, endpoint_json(svc, await svc.delete_endpoint(rest[0])))
            return _method_not_allowed(request.path, "GET, DELETE")
    if kind == "sandboxes":
        if not rest:
            if method == "GET":
                return _response(200, {"sandboxes": [sandbox_json(sb) for sb in svc.sandboxes()]})
            if method == "POST":
                body = _body(request)
                _only(body, {"name", "netns"})
                name = _str(body, "name", required=True)
                sb = await svc.create_sandbox(name, netns=_str(body, "netns"))
                return _response(201, sandbox_json(sb))
            return _method_not_allowed(request.path, "GET, POST")
        if len(rest) == 1:
            if method == "GET":
                return _response(200, sandbox_json(svc.sandbox(rest[0])))
            if method == "DELETE":
                return _response(200, sandbox_json(await svc.delete_sandbox(rest[0])))
            return _method_not_allowed(request.path, "GET, DELETE")
        if len(rest) == 2 and rest[1] in ("join", "leave"):
            if method != "POST":
                return _method_not_allowed(request.path, "POST")
            body = _body(request)
            _only(body, {"endpoint"})
            ep = _str(body, "endpoint", required=True)
            fn = svc.join_endpoint if rest[1] == "join" else svc.leave_endpoint
            return _response(200, sandbox_json(await fn(rest[0], ep)))
    raise ApiError(404, "not_found", f"no such endpoint {request.path}; see docs/agent-services.md section 4")


def _list_networks(svc: Any) -> Any:
    nets = svc.networks()
    counts: dict[str, int] = {}
    for n in nets:
        counts[n.name] = counts.get(n.name, 0) + 1
    return _response(200, {"networks": [network_json(n, duplicate=counts[n.name] > 1) for n in nets]})


def _inspect_network(svc: Any, ref: str) -> Any:
    net = svc.network(ref)
    core = svc._core()
    joined = net.id in core.networks()
    body = network_json(net, duplicate=sum(1 for n in svc.networks() if n.name == net.name) > 1)
    body["joined"] = joined
    body["endpoints"] = [endpoint_json(svc, ep) for ep in svc.endpoints(net.id)] if joined else []
    body["peers"] = list(core.peers(net.id)) if joined else []
    return _response(200, body)


async def _create_network(svc: Any, body: dict[str, Any]) -> Any:
    _only(body, _NETWORK_FIELDS)
    if body.get("encrypted"):
        raise ApiError(400, "not_supported", "encrypted networks are not supported yet")
    _bool(body, "encrypted", False)
    name = _name(_str(body, "name", required=True), "network name")
    subnets = _strings(body, "subnet")
    for s in subnets:
        try:
            ipaddress.ip_network(s, strict=True)
        except ValueError as exc:
            raise ApiError(400, "invalid", f"subnet {s!r}: {exc}") from None
    gateway = _ip(_str(body, "gateway"), "gateway")
    if gateway is not None and not subnets:
        raise ApiError(400, "invalid", "a gateway needs a subnet; give subnet too")
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ApiError(400, "bad_request", "field 'labels' must map strings to strings")
    net = await svc.create_network(
        name,
        subnets=subnets,
        gateway=gateway,
        ipv6=_bool(body, "ipv6", False),
        mtu=_int(body, "mtu", 0, 576, 65535),
        vxlan_port=_int(body, "vxlan_port", 4789, 1024, 49151),
        labels=labels,
        internal=_bool(body, "internal", False),
        attachable=_bool(body, "attachable", True),
        created=time.time(),
    )
    return _response(201, network_json(net))


def _endpoint_args(body: dict[str, Any]) -> dict[str, Any]:
    aliases = _strings(body, "aliases")
    for a in aliases:
        _name(a, "alias")
    return {
        "ip": _ip(_str(body, "ip"), "ip"),
        "aliases": aliases,
        "service": _str(body, "service") or "",
    }


async def _create_endpoint(svc: Any, body: dict[str, Any]) -> Any:
    _only(body, {"network", "name", "ip", "aliases", "service"})
    network = _str(body, "network", required=True)
    name = _name(_str(body, "name", required=True), "endpoint name")
    ep = await svc.create_endpoint(network, name, **_endpoint_args(body))
    return _response(201, endpoint_json(svc, ep))


async def _attach(svc: Any, body: dict[str, Any]) -> Any:
    _only(body, {"network", "sandbox", "name", "ip", "aliases", "service"})
    network = _str(body, "network", required=True)
    sandbox = _str(body, "sandbox", required=True)
    name = _name(_str(body, "name"), "endpoint name")
    sb, ep = await svc.attach_container(network, sandbox, name=name, **_endpoint_args(body))
    return _response(201, {"sandbox": sandbox_json(sb), "endpoint": endpoint_json(svc, ep)})
