"""Reading a state directory (ipam.md 3.4, 3.10): what a node durably believes, as pure functions.

Theory of operation. The durable map (``state.py`` lists its keys) stores a block's state only once it
changed; a block of a space this identity created that has no record is believed at epoch 1 (genesis,
implied by the persisted ``NetConfig``/``GlobalConfig``). ``summarize`` applies that rule once, and both
the restart path (``Ipam.restore``) and the test harness's invariant checks use it, so what the checks call
a believer is exactly what a restarted node would resume believing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .config import IpamConfig
from .space import GlobalConfig, NetConfig, Space, SpaceId
from .state import BlockState, Identity, RemoteHolding

__all__ = ["Summary", "summarize", "spaces_of"]


def spaces_of(
    config: IpamConfig, global_cfg: GlobalConfig | None, netcfgs: Mapping[str, NetConfig]
) -> dict[SpaceId, Space]:
    """Every space the configs define (the global ones first, then networks in id order)."""
    out: dict[SpaceId, Space] = {}
    if global_cfg is not None:
        for sp in _global_spaces(config, global_cfg):
            out[sp.id] = sp
    for net in sorted(netcfgs):
        for sp in _net_spaces(config, netcfgs[net]):
            out[sp.id] = sp
    return out


@lru_cache(maxsize=4096)
def _global_spaces(config: IpamConfig, g: GlobalConfig) -> tuple[Space, ...]:
    return (Space.for_vni(g), Space.for_pool(g, config))


@lru_cache(maxsize=4096)
def _net_spaces(config: IpamConfig, c: NetConfig) -> tuple[Space, ...]:
    return tuple(Space.for_subnet(c.network, sub, c.creator, config) for sub in c.subnets)


@dataclass
class Summary:
    """What a state directory says: identity, spaces, every block state (genesis ones included) and the
    addresses held by proxy."""

    identity: Identity | None
    spaces: dict[SpaceId, Space] = field(default_factory=dict)
    blocks: dict[tuple[SpaceId, int], BlockState] = field(default_factory=dict)
    remote: dict[tuple[SpaceId, int], RemoteHolding] = field(default_factory=dict)

    def believed(self) -> dict[tuple[SpaceId, int], BlockState]:
        """Blocks this identity believes (none if it is retired or fenced)."""
        ident = self.identity
        if ident is None or ident.retired or ident.fenced:
            return {}
        return {key: b for key, b in self.blocks.items() if b.believe}


def summarize(records: Mapping[tuple[Any, ...], Any], config: IpamConfig) -> Summary:
    """Read a durable record map (see ``state.py`` for the keys)."""
    ident = records.get(("ident",))
    g = records.get(("global",))
    netcfgs = {k[1]: v for k, v in records.items() if k[0] == "netcfg"}
    spaces = spaces_of(config, g, netcfgs)
    s = Summary(ident, spaces)
    if ident is not None:
        for sp in spaces.values():
            if sp.creator == ident.name:
                for k in range(sp.nblocks):
                    s.blocks[(sp.id, k)] = BlockState(hw=1, believe=True)
    for key, v in records.items():
        if key[0] == "block":
            s.blocks[(SpaceId(key[1], key[2]), key[3])] = v
        elif key[0] == "remote":
            s.remote[(SpaceId(key[1], key[2]), key[3])] = v
    return s
