"""Manager-free IPAM: addresses and VNIs allocated by block ownership, never duplicated (ipam.md).

``Ipam`` (``core.py``) is the pure core of one node; ``space`` tiles subnets, the VNI range and the
default pool into fixed blocks; ``records``/``messages`` are its NetworkDB values and direct messages;
``state`` the durable state and the write-ahead outbox; ``view`` the monotone ownership view;
``owner``/``requester``/``reclaim`` the roles. See each module's theory of operation.
"""

from .config import IpamConfig, fast
from .core import BlockInfo, Ipam
from .durable import Summary, summarize
from .errors import Conflict, Exhausted, InUse, IpamError, OwnerInfo, ReclaimRefused, Unknown, Unreachable
from .events import (
    Alarm,
    Allocated,
    IpamEvent,
    LeaveCompleted,
    NetworkCreated,
    OperationFailed,
    OpId,
    Reclaimed,
)
from .records import TABLE_BLOCK, TABLE_NETCFG, TABLE_NODE, TABLE_RETIRED, Holder
from .space import GLOBAL_SCOPE, POOL_SPACE, VNI_SPACE, GlobalConfig, NetConfig, Space, SpaceId, SubnetConfig
from .state import BlockState, Identity, Persist, SendMessage, TableWrite

__all__ = [
    "Ipam",
    "BlockInfo",
    "IpamConfig",
    "fast",
    "Summary",
    "summarize",
    "IpamError",
    "Exhausted",
    "Unreachable",
    "Unknown",
    "InUse",
    "Conflict",
    "ReclaimRefused",
    "OwnerInfo",
    "OpId",
    "Allocated",
    "NetworkCreated",
    "Reclaimed",
    "LeaveCompleted",
    "OperationFailed",
    "Alarm",
    "IpamEvent",
    "TABLE_BLOCK",
    "TABLE_NETCFG",
    "TABLE_NODE",
    "TABLE_RETIRED",
    "Holder",
    "GLOBAL_SCOPE",
    "VNI_SPACE",
    "POOL_SPACE",
    "GlobalConfig",
    "NetConfig",
    "Space",
    "SpaceId",
    "SubnetConfig",
    "BlockState",
    "Identity",
    "Persist",
    "TableWrite",
    "SendMessage",
]
