"""The IPAM service's HTTP routes (``/v1/ipam``) and the JSON shapes and error mapping they share.

Theory of operation: ``IpamService.handle_api`` hands every ``/v1/ipam...`` request to
``handle_ipam_api``, which validates the JSON body (``_body``/``_field``: 400 ``bad_request``), calls the
service's operations (the same ones ``CnmService`` calls) and shapes the answer (``netcfg_json``,
``_block_json``; identities shown as their hosts through ``svc.host_of``). The core's typed failures
and bad local input become ``ApiError``s through ``ipam_api_error`` (docs/agent-services.md section 1),
which ``cnm_svc`` and ``cnm_api`` use as well.

API (``/v1/ipam``, JSON; errors ``{code, message}`` as ``ipam_api_error`` maps them):

    GET  /v1/ipam[?network=NET]            {node (host), identity, blocks: [{network, space, block,
                                           first, last, owner (host), owner_identity, epoch, state,
                                           free, owner_state}]}; NET ``-``: the global spaces (vni,
                                           pool); without it: every space known here
    POST /v1/ipam/reclaim {node: NAME | [NAME...], force?: bool}     NAME: a host or an identity
                                           {targets (identities), hosts, blocks, abandoned, force}
                                           once the reclaim ended
    GET  /v1/ipam/networks/NET             the network's IPAM config (subnets, gateway, VNI, creator)
    For tests and benchmarks (CnmService calls the methods below instead):
    POST /v1/ipam/networks {id, subnets?: [CIDR], ipv6?}        201 config (a pool subnet if none given)
    POST /v1/ipam/attach {network}                              join and attach a network created elsewhere
    POST /v1/ipam/allocate {network, tag, preferred?, ipv6?}    {network, address, tag, owner (host),
                                                                 owner_identity}
    POST /v1/ipam/release {network, address, tag}               {released: bool}
    POST /v1/ipam/latency/reset                                 forget ``stats()["latency_ms"]``
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from meshnet.core.errors import ApiError, LocalProtocolError
from meshnet.ipam import (
    Conflict,
    Exhausted,
    InUse,
    IpamError,
    NetConfig,
    ReclaimRefused,
    Unknown,
    Unreachable,
)
from meshnet.runtime.ipam_wire import identity_host

__all__ = ["handle_ipam_api", "ipam_api_error", "netcfg_json"]


def ipam_api_error(err: Exception) -> ApiError:
    """The HTTP error of an IPAM failure (docs/agent-services.md section 1)."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, Exhausted):
        return ApiError(507, "exhausted", err.message)
    if isinstance(err, Unreachable):
        return ApiError(503, "unreachable", err.message)
    if isinstance(err, Unknown):
        return ApiError(503, "unknown", err.message)
    if isinstance(err, InUse):
        return ApiError(409, "in_use", err.message)
    if isinstance(err, Conflict):
        return ApiError(409, "conflict", err.message)
    if isinstance(err, ReclaimRefused):
        return ApiError(409, "reclaim_refused", err.message)
    if isinstance(err, IpamError):
        return ApiError(409, err.code, err.message)
    if isinstance(err, LocalProtocolError | ValueError):
        return ApiError(400, "invalid", str(err))
    return ApiError(500, "internal", f"{type(err).__name__}: {err}")


def netcfg_json(c: NetConfig) -> dict[str, Any]:
    return {
        "network": c.network,
        "subnets": [
            {"subnet": s.subnet, "ip_range": s.ip_range, "gateway": s.gateway, "aux": list(s.aux)}
            for s in c.subnets
        ],
        "vni": c.vni,
        "creator": c.creator,
        "cluster_id": c.cluster_id,
        "pool_subnet": c.pool_subnet,
    }


def _block_json(b: Any, host_of: Callable[[str], str] = identity_host) -> dict[str, Any]:
    return {
        "network": b.network,
        "space": b.space,
        "block": b.block,
        "first": b.first,
        "last": b.last,
        "owner": host_of(b.owner) if b.owner else "",
        "owner_identity": b.owner,
        "epoch": b.epoch,
        "state": b.state,
        "free": b.free,
        "owner_state": b.owner_state,
    }


def _body(request: Any) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        obj = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_request", "body must be a JSON object") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    return obj


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, "bad_request", f"body needs {name!r}")
        return None
    value = body[name]
    if not isinstance(value, kind) or (kind is str and not value):
        raise ApiError(400, "bad_request", f"{name!r} has the wrong type or is empty")
    return value


async def handle_ipam_api(svc: Any, request: Any) -> Any:
    """Answer one ``/v1/ipam`` request for the ``IpamService`` ``svc`` (raises ApiError)."""
    from meshnet.runtime.api import Response

    svc._require()
    path, method = request.path.rstrip("/") or "/", request.method
    try:
        if path == "/v1/ipam":
            if method != "GET":
                raise ApiError(405, "method_not_allowed", "/v1/ipam accepts GET")
            query = {k: v[-1] for k, v in parse_qs(urlsplit(request.target).query).items()}
            network = query.get("network")
            if network == "-":
                network = ""  # the global spaces (vni, pool), as meshnetctl spells them
            known = svc.core.global_config() if network == "" else svc.core.netcfg(network or "")
            if network is not None and known is None:
                raise ApiError(404, "not_found", f"network {network or '-'} is not known here (yet)")
            rows = [_block_json(b, svc.host_of) for b in svc.core.listing(network)]
            return Response(200, {"node": svc.node.name, "identity": svc.core.name, "blocks": rows})
        if method != "POST" and path != "/v1/ipam/networks" and not path.startswith("/v1/ipam/networks/"):
            raise ApiError(405, "method_not_allowed", f"{path} accepts POST")
        if path == "/v1/ipam/reclaim":
            body = _body(request)
            raw = _field(body, "node", (str, list))
            nodes = [raw] if isinstance(raw, str) else raw
            if not nodes or not all(isinstance(n, str) and n for n in nodes):
                raise ApiError(400, "bad_request", "'node' must be a name or a list of names")
            force = bool(_field(body, "force", bool, required=False))
            ev = await svc.reclaim(nodes, force=force)
            return Response(
                200,
                {
                    "targets": list(ev.targets),
                    "hosts": sorted({svc.host_of(t) for t in ev.targets}),
                    "blocks": ev.blocks,
                    "abandoned": ev.abandoned,
                    "force": force,
                },
            )
        if path == "/v1/ipam/allocate":
            body = _body(request)
            ev = await svc.allocate_event(
                _field(body, "network", str),
                tag=_field(body, "tag", str),
                preferred=_field(body, "preferred", str, required=False),
                ipv6=bool(_field(body, "ipv6", bool, required=False)),
            )
            return Response(
                200,
                {
                    "network": ev.network,
                    "address": ev.value,
                    "tag": ev.tag,
                    "owner": svc.host_of(ev.owner),
                    "owner_identity": ev.owner,
                },
            )
        if path == "/v1/ipam/release":
            body = _body(request)
            network, address, tag = (
                _field(body, "network", str),
                _field(body, "address", str),
                _field(body, "tag", str),
            )
            svc._require()
            held = svc._step(lambda now: svc.core.release(network, address, tag=tag, now=now))
            return Response(200, {"released": bool(held)})
        if path == "/v1/ipam/latency/reset":
            svc.reset_latency()
            return Response(200, {"reset": True})
        if path == "/v1/ipam/attach":
            body = _body(request)
            network = _field(body, "network", str)
            await svc.attach_network(network)
            c = svc.core.netcfg(network)
            return Response(200, {"network": network, "netcfg": netcfg_json(c) if c else None})
        if path == "/v1/ipam/networks" and method == "POST":
            body = _body(request)
            subnets = _field(body, "subnets", list, required=False) or []
            if not all(isinstance(s, str) for s in subnets):
                raise ApiError(400, "bad_request", "'subnets' must be a list of CIDR strings")
            c = await svc.create_network(
                _field(body, "id", str),
                subnets=subnets,
                ipv6=bool(_field(body, "ipv6", bool, required=False)),
            )
            return Response(201, netcfg_json(c))
        if path.startswith("/v1/ipam/networks/") and method == "GET":
            network = path[len("/v1/ipam/networks/") :]
            c = svc.core.netcfg(network)
            if c is None:
                raise ApiError(404, "not_found", f"network {network} is not known here")
            return Response(200, netcfg_json(c))
        raise ApiError(404, "not_found", f"no such endpoint {method} {path}")
    except (IpamError, LocalProtocolError) as exc:
        raise ipam_api_error(exc) from None
