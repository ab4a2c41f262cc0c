"""The Container Network Model (libnetwork's CNM), peer to peer: networks, endpoints and sandboxes.

``records`` holds the NetworkDB values every host reads (the cross-host contract,
``docs/agent-services.md``); the controller core and its ordering/rollback live beside it.
"""

from .records import (
    TABLE_ENDPOINTS,
    TABLE_NETWORKS,
    EndpointRecord,
    NetworkRecord,
    SubnetRecord,
    decode_endpoint,
    decode_network,
    encode_endpoint,
    encode_network,
    mac_from_ip,
)

__all__ = [
    "TABLE_NETWORKS",
    "TABLE_ENDPOINTS",
    "SubnetRecord",
    "NetworkRecord",
    "EndpointRecord",
    "encode_network",
    "decode_network",
    "encode_endpoint",
    "decode_endpoint",
    "mac_from_ip",
]
