"""The Container Network Model (libnetwork's CNM), peer to peer: networks, endpoints and sandboxes.

``records`` holds the NetworkDB values every host reads (the cross-host contract,
``docs/agent-services.md``); ``controller`` the pure controller core (validation, lookups, operations as
ordered steps with undo), ``steps`` the step values and their driver, ``sandboxes`` the local sandbox
state and its file, ``errors`` the typed refusals with their HTTP status.
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

# The controller imports meshnet.overlay, which imports .records: keep these after it.
from .controller import AttachResult, CnmConfig, Controller  # noqa: E402  isort: skip
from .errors import (  # noqa: E402  isort: skip
    BadSandboxState,
    CnmError,
    InUse,
    InvalidRequest,
    NameConflict,
    NotFound,
    NotLocal,
    NotSupported,
)
from .sandboxes import (  # noqa: E402  isort: skip
    SANDBOXES_FILE,
    Sandbox,
    SandboxState,
    decode_sandbox_state,
    decode_sandboxes,
    encode_sandboxes,
)
from .steps import (  # noqa: E402  isort: skip
    Action,
    AllocateAddress,
    AttachNetwork,
    DeleteEndpoint,
    DeleteNetwork,
    DetachNetwork,
    IpamCreateNetwork,
    IpamDeleteNetwork,
    Local,
    Operation,
    PersistSandboxes,
    PutEndpoint,
    PutNetwork,
    Reconcile,
    ReleaseAddress,
    Run,
    Step,
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
    "CnmConfig",
    "Controller",
    "AttachResult",
    "CnmError",
    "InvalidRequest",
    "NotSupported",
    "NotFound",
    "NameConflict",
    "InUse",
    "NotLocal",
    "BadSandboxState",
    "Sandbox",
    "SANDBOXES_FILE",
    "encode_sandboxes",
    "decode_sandboxes",
    "decode_sandbox_state",
    "SandboxState",
    "Action",
    "Local",
    "Step",
    "Operation",
    "Run",
    "IpamCreateNetwork",
    "IpamDeleteNetwork",
    "AttachNetwork",
    "DetachNetwork",
    "AllocateAddress",
    "ReleaseAddress",
    "PutNetwork",
    "DeleteNetwork",
    "PutEndpoint",
    "DeleteEndpoint",
    "PersistSandboxes",
    "Reconcile",
]
