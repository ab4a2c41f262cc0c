"""Network operations of the CNM controller (pure): create and delete, as ordered steps with undo.

Theory of operation (libnetwork.md 1.2-1.3). Create validates the request (``validation``), refuses a
name this host already sees, draws the id, then runs IPAM (VNI, subnets, gateways) and puts the
``networks`` entry built from what IPAM returned; undo deletes the entry, then the IPAM network.
Delete refuses while endpoints exist; the host first joins the network's NetworkDB network so it sees
every host's endpoints, checks again, deletes the record, then IPAM (which refuses too while addresses are
held anywhere), then leaves the NetworkDB network if no local endpoint needs it (best effort, never
rolled back).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InUse, InvalidRequest, NameConflict, NotSupported
from .records import NetworkRecord, SubnetRecord
from .state import ControllerState
from .steps import (
    AttachNetwork,
    DeleteNetwork,
    IpamCreateNetwork,
    IpamDeleteNetwork,
    Local,
    Operation,
    PutNetwork,
    Step,
)
from .validation import (
    MAX_VXLAN_PORT,
    MIN_VXLAN_PORT,
    need_bool,
    need_int,
    need_name,
    parse_gateway,
    parse_subnets,
    request_fields,
)

__all__ = ["NetworkOps"]


class NetworkOps(ControllerState):
    """``create_network`` and ``delete_network`` (module docstring)."""

    def create_network(
        self,
        *,
        name: object,
        subnet: object = None,
        gateway: object = None,
        ipv6: object = False,
        mtu: object = 0,
        vxlan_port: object = 4789,
        labels: object = None,
        internal: object = False,
        attachable: object = True,
        encrypted: object = False,
        driver: object = "overlay",
        now: float,
    ) -> Operation:
        """``POST /v1/networks``. Result: the ``NetworkRecord``."""
        name = need_name(name, "network name")
        if need_bool(encrypted, "encrypted"):
            raise NotSupported("encrypted networks are not supported yet")
        if driver != "overlay":
            raise NotSupported(f"driver {driver!r} is not supported; meshnet networks use the overlay driver")
        subnets = parse_subnets(subnet)
        gw = parse_gateway(gateway, subnets)
        ipv6 = need_bool(ipv6, "ipv6")
        mtu = need_int(mtu, "mtu", 68, 65535, zero_ok=True)
        port = need_int(vxlan_port, "vxlan_port", MIN_VXLAN_PORT, MAX_VXLAN_PORT)
        labels = {} if labels is None else labels
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidRequest("labels must be an object of string values")
        internal = need_bool(internal, "internal")
        attachable = need_bool(attachable, "attachable")
        taken = [n for n in self._networks.values() if n.name == name]
        if taken:
            raise NameConflict(f"network name {name!r} is taken (network {taken[0].id})")
        net_id = self._new_id(lambda i: i in self._networks)
        subnet_texts = tuple(str(s) for s in subnets)

        def record(ctx: Mapping[str, Any]) -> PutNetwork:
            cfg = ctx["ipam_create"]
            vni = getattr(cfg, "vni", None)
            if not isinstance(vni, int) or not 1 <= vni < 2**24:
                raise InvalidRequest(f"IPAM gave network {net_id} no usable VNI ({vni!r})")
            subs = tuple(SubnetRecord(str(s.subnet), str(s.gateway)) for s in cfg.subnets)
            return PutNetwork(
                NetworkRecord(
                    id=net_id,
                    name=name,
                    vni=vni,
                    subnets=subs,
                    mtu=mtu,
                    vxlan_port=port,
                    labels=dict(labels),
                    internal=internal,
                    attachable=attachable,
                    creator=self.config.host,
                    created=float(now),
                )
            )

        steps = [
            Step(
                "ipam_create", IpamCreateNetwork(net_id, subnet_texts, gw, ipv6), (IpamDeleteNetwork(net_id),)
            ),
            Step("put_network", record, (DeleteNetwork(net_id),)),
        ]
        return self._op("network_create", steps, lambda ctx: self._networks[net_id])

    def create_network_from(self, body: Mapping[str, Any], *, now: float) -> Operation:
        """``create_network`` from the API's JSON object; unknown fields are refused."""
        allowed = {
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
            "driver",
        }
        return self.create_network(**request_fields(body, allowed, "network", ("name",)), now=now)

    def delete_network(self, ref: str) -> Operation:
        """``DELETE /v1/networks/{id|name}``: ``InUse`` while endpoints exist. The host joins the network's
        NetworkDB network first to see every host's endpoints, checks again, deletes the record, then
        IPAM (which refuses too while addresses are held), then leaves. Result: the deleted record."""
        net = self.network(ref)
        self._check_unused(net)
        steps = [
            Step("attach_network", AttachNetwork(net.id), (self._detach_if_unused(net.id),)),
            Step("check_unused", Local(f"network {net.name} unused", lambda: self._check_unused(net))),
            Step("delete_network", DeleteNetwork(net.id), (PutNetwork(net),)),
            Step("ipam_delete", IpamDeleteNetwork(net.id)),
            Step("detach_network", self._detach_if_unused(net.id), best_effort=True),
        ]
        return self._op("network_delete", steps, lambda ctx: net)

    def _check_unused(self, net: NetworkRecord) -> None:
        eps = self.endpoints(net.id)
        if eps:
            hosts = sorted({ep.host for ep in eps})
            raise InUse(
                f"network {net.name} ({net.id}) still has {len(eps)} endpoint(s) on {', '.join(hosts)}; "
                "delete them first"
            )
