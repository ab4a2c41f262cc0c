"""Serf tags in node meta, as the agent's CLI and API need them.

The codec is ``meshnet.gossip.serf`` (``ff`` + msgpack map, memberlist-wire.md section 10.1). This adds
what a shell needs around it: a size check that names the fix for local tags, and a decoder that
never raises on a peer's meta (undecodable meta is shown as ``{"meta": "<hex>"}``).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshnet.core.errors import ConfigError, DecodeError
from meshnet.gossip import serf

__all__ = ["encode_tags", "decode_tags"]


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """Node meta for our own ``tags``; ConfigError when they do not fit memberlist's meta limit."""
    meta = serf.encode_tags(tags)
    if len(meta) > serf.MAX_META_BYTES:
        raise ConfigError(
            f"tags encode to {len(meta)} bytes, over the {serf.MAX_META_BYTES}-byte node meta limit; "
            "use fewer or shorter tags"
        )
    return meta


def decode_tags(meta: bytes | None) -> dict[str, str]:
    """A peer's tags, sorted by key; never raises."""
    try:
        tags = serf.decode_tags(meta)
    except (DecodeError, ValueError):
        return {"meta": (meta or b"").hex()}
    return dict(sorted(tags.items()))
