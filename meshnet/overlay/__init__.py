"""The overlay reconciler (pure): a host's view of the CNM tables in, dataplane plans out.

Usage (the ``cnm`` service, on every change and on the slow timer)::

    d = desired(view)                            # HostView: networks, endpoints, local sandboxes
    snap = dataplane.observe(d.scope(existing))  # existing: names under /run/netns (stale ones go)
    ops = plan(d, snap)                          # () when the kernel already matches
    dataplane.apply(ops)                         # DataplaneError: re-observe and re-plan

``view`` (names, ``HostView``, ``LocalSandbox``), ``desired`` (``DesiredState``) and ``plan`` have the rules;
docs/agent-services.md section 3 the names. Pure: no kernel, clock or randomness.
"""

from .desired import DesiredOverlay, DesiredPort, DesiredState, bridge_mac, desired
from .plan import plan
from .view import (
    BRIDGE,
    VXLAN,
    VXLAN_OVERHEAD,
    HostView,
    LocalSandbox,
    is_managed_netns,
    overlay_netns,
    sandbox_netns,
    veth_name,
)

__all__ = [
    "BRIDGE",
    "VXLAN",
    "VXLAN_OVERHEAD",
    "HostView",
    "LocalSandbox",
    "DesiredOverlay",
    "DesiredPort",
    "DesiredState",
    "bridge_mac",
    "desired",
    "plan",
    "is_managed_netns",
    "overlay_netns",
    "sandbox_netns",
    "veth_name",
]
