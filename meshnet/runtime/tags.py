"""Serf tags in memberlist node meta, for the agent's CLI and API.

Serf (protocol >= 3) stores a member's tags in its node meta as the byte ``ff`` followed by a msgpack
``map[string]string`` written with the old raw-string family (memberlist-wire.md section 10.1). Meta
without the ``ff`` prefix is a plain role string (serf protocol < 3), shown as the tag ``role``. Meta is
at most 512 bytes.

This is the shell's stop-gap until ``meshnet.gossip.serf`` carries the codec; it only builds the meta the
agent advertises and renders what peers advertise, so it never raises on remote input.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgpack

from meshnet.core.errors import ConfigError

__all__ = ["TAG_MAGIC", "META_MAX_BYTES", "encode_tags", "decode_tags"]

TAG_MAGIC = 0xFF
META_MAX_BYTES = 512


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """Node meta for ``tags``, byte-compatible with serf (keys sorted so the bytes are stable)."""
    body = msgpack.packb({k: tags[k] for k in sorted(tags)}, use_bin_type=False)
    meta = bytes([TAG_MAGIC]) + body
    if len(meta) > META_MAX_BYTES:
        raise ConfigError(
            f"tags encode to {len(meta)} bytes, over the {META_MAX_BYTES}-byte node meta limit; use fewer or shorter tags"
        )
    return meta


def decode_tags(meta: bytes) -> dict[str, str]:
    """Tags from a peer's node meta; never raises (undecodable meta is shown as ``{"meta": hex}``)."""
    if not meta:
        return {}
    if meta[0] != TAG_MAGIC:
        return {"role": meta.decode("utf-8", "replace")}
    try:
        raw = msgpack.unpackb(meta[1:], raw=True, strict_map_key=False)
    except Exception:  # remote bytes: any msgpack failure means "not tags"
        return {"meta": meta.hex()}
    if not isinstance(raw, dict):
        return {"meta": meta.hex()}
    tags: dict[str, str] = {}
    for key, value in raw.items():
        tags[_text(key)] = _text(value)
    return dict(sorted(tags.items()))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
