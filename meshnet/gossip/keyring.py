"""AES-GCM keyring and payload encryption, compatible with memberlist 0.2.2 and serf 0.9.4.

Theory of operation. A sealed payload is ``vsn:u8 | nonce:12 | AES-GCM(plaintext) ‖ tag:16``; the key
size (16, 24 or 32 bytes) picks AES-128/192/256. Version 0 PKCS#7-pads the plaintext to a multiple of
16 bytes before sealing (always 1..16 pad bytes); version 1 does not pad. UDP packets use an empty AAD,
TCP streams the five ``0a|len`` header bytes. Senders seal with the keyring's primary key; receivers
try every installed key, primary first.

The ``Keyring`` follows memberlist/serf: keys are unique, the primary comes first, installing a key
appends it, ``use`` makes an installed key primary, and the primary cannot be removed. The serf
keyring file is a JSON list of base64 keys, primary first. Nonces are always supplied by the caller
(drawn from its injected rng), so this module is deterministic.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from meshnet.core.errors import ConfigError, DecodeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "Keyring",
    "encrypt",
    "decrypt_payload",
    "encrypted_length",
    "load_keyring_file",
    "save_keyring_file",
    "KEY_SIZES",
    "NONCE_SIZE",
    "TAG_SIZE",
    "MAX_ENCRYPTION_VERSION",
]

KEY_SIZES = (16, 24, 32)
NONCE_SIZE = 12
TAG_SIZE = 16
_BLOCK = 16
MAX_ENCRYPTION_VERSION = 1


def _aesgcm(key: bytes) -> AESGCM:
    """An AES-GCM object for ``key``. ``cryptography`` (about 7.5 MB of RSS) is imported here, on first
    use, so a process that never builds a ``Keyring`` or seals a payload never loads it; an agent without
    a keyring drops encrypted packets in ``packet.py`` before anything here is called."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise ConfigError(f"an encryption key must be bytes, not {type(key).__name__}")
    if len(key) not in KEY_SIZES:
        raise ConfigError(
            f"encryption key is {len(key)} bytes; it must be 16, 24 or 32 bytes "
            "(generate one with `serf keygen` or 32 random bytes, base64-encoded)"
        )
    return bytes(key)


class Keyring:
    """An ordered set of AES keys; ``keys[0]`` is the primary, used for sending."""

    __slots__ = ("_keys", "_ciphers")

    def __init__(self, keys: Iterable[bytes]) -> None:
        """Build a keyring from ``keys``, primary first; duplicates are dropped. Needs one key."""
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        for k in keys:
            self._add(_check_key(k))
        if not self._keys:
            raise ConfigError("a keyring needs at least one key (the primary)")

    def _add(self, key: bytes) -> None:
        if key not in self._ciphers:
            self._keys.append(key)
            self._ciphers[key] = _aesgcm(key)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every installed key, primary first."""
        return tuple(self._keys)

    @property
    def primary(self) -> bytes:
        """The key used to encrypt outgoing traffic."""
        return self._keys[0]

    def install(self, key: bytes) -> None:
        """Add ``key`` for decryption (not primary). Installing an installed key does nothing."""
        self._add(_check_key(key))

    def use(self, key: bytes) -> None:
        """Make an installed ``key`` the primary."""
        key = _check_key(key)
        if key not in self._ciphers:
            raise ConfigError("that key is not in the keyring; install it first, then use it")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        """Uninstall ``key``. The primary cannot be removed: ``use`` another key first."""
        key = _check_key(key)
        if key == self._keys[0]:
            raise ConfigError("removing the primary key is not allowed; `use` another key first")
        if key not in self._ciphers:
            raise ConfigError("that key is not in the keyring")
        self._keys.remove(key)
        del self._ciphers[key]

    def cipher(self, key: bytes) -> AESGCM:
        """The AES-GCM object for an installed key (cached)."""
        return self._ciphers[key]

    def __contains__(self, key: object) -> bool:
        return key in self._ciphers

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyring) and self._keys == other._keys

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:  # never print key material
        return f"Keyring({len(self._keys)} keys)"


def encrypted_length(vsn: int, plain_len: int) -> int:
    """Size of a sealed payload (version byte, nonce, ciphertext, tag) for ``plain_len`` bytes."""
    if vsn == 0:
        plain_len += _BLOCK - plain_len % _BLOCK
    return 1 + NONCE_SIZE + plain_len + TAG_SIZE


def encrypt(vsn: int, key: bytes, plaintext: bytes, aad: bytes, nonce: bytes, *,
            cipher: AESGCM | None = None) -> bytes:  # fmt: skip
    """Seal ``plaintext`` as ``vsn | nonce | ct+tag`` (memberlist's encryptPayload).

    ``vsn`` 0 PKCS#7-pads to 16 bytes first; 1 does not pad. ``nonce`` must be 12 bytes and must
    never repeat under one key: draw it from a good random source.
    """
    if vsn not in (0, 1):
        raise ValueError(f"encryption version must be 0 or 1, got {vsn}")
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    plaintext = bytes(plaintext)
    if vsn == 0:
        pad = _BLOCK - len(plaintext) % _BLOCK
        plaintext += bytes((pad,)) * pad
    aead = cipher if cipher is not None else _aesgcm(_check_key(key))
    return bytes((vsn,)) + bytes(nonce) + aead.encrypt(bytes(nonce), plaintext, bytes(aad) or None)


def decrypt_payload(keyring: Keyring, data: bytes, aad: bytes) -> bytes:
    """Open a sealed payload by trying every key of ``keyring``, primary first.

    Raises ``DecodeError`` for an empty or too-short payload, an unknown version, bad version-0
    padding, or when no key authenticates it.
    """
    data = bytes(data)
    if not data:
        raise DecodeError("cannot decrypt an empty payload")
    vsn = data[0]
    if vsn > MAX_ENCRYPTION_VERSION:
        raise DecodeError(f"unsupported encryption version {vsn}")
    if len(data) < encrypted_length(vsn, 0):
        raise DecodeError(f"payload of {len(data)} bytes is too small to decrypt")
    from cryptography.exceptions import InvalidTag  # loaded already: the keyring built its ciphers

    nonce = data[1 : 1 + NONCE_SIZE]
    sealed = data[1 + NONCE_SIZE :]
    aad_or_none = bytes(aad) or None
    for key in keyring.keys:
        try:
            plain = keyring.cipher(key).decrypt(nonce, sealed, aad_or_none)
        except InvalidTag:
            continue
        if vsn == 0:
            pad = plain[-1] if plain else 0
            if not 1 <= pad <= _BLOCK or pad > len(plain):
                raise DecodeError("bad PKCS#7 padding in an encryption-version-0 payload")
            plain = plain[:-pad]
        return plain
    raise DecodeError("no installed key could decrypt the message")


# --- serf keyring file -------------------------------------------------------------------------------


def load_keyring_file(path: str | os.PathLike[str]) -> Keyring:
    """Read serf's keyring file: a JSON list of base64 keys, primary first."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read keyring file {p}: {exc.strerror or exc}; check the path and its permissions"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"keyring file {p} is not UTF-8 text; it must be a JSON list of base64 keys"
        ) from exc
    try:
        encoded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"keyring file {p} is not valid JSON ({exc.msg} at line {exc.lineno}); "
            'it must look like ["<base64 key>", ...]'
        ) from exc
    if not isinstance(encoded, list) or not all(isinstance(k, str) for k in encoded):
        raise ConfigError(
            f'keyring file {p} must be a JSON list of base64 strings, like ["<base64 key>", ...]'
        )
    if not encoded:
        raise ConfigError(f"no keys present in keyring file {p}; add at least one base64 key (the primary)")
    keys = []
    for i, k in enumerate(encoded):
        try:
            key = base64.b64decode(k.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise ConfigError(
                f"keyring file {p}: key #{i + 1} is not valid standard base64 ({exc}); "
                "regenerate it with `serf keygen`"
            ) from exc
        if len(key) not in KEY_SIZES:
            raise ConfigError(
                f"keyring file {p}: key #{i + 1} decodes to {len(key)} bytes; a key must be 16, 24 or "
                "32 bytes (regenerate it with `serf keygen`)"
            )
        keys.append(key)
    return Keyring(keys)


def save_keyring_file(path: str | os.PathLike[str], keyring: Keyring) -> None:
    """Write ``keyring`` in serf's format (indented JSON list of base64 keys), mode 0600, atomically."""
    p = Path(path)
    body = json.dumps([base64.b64encode(k).decode("ascii") for k in keyring.keys], indent=2)
    tmp = p.with_name(p.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, p)
    except OSError as exc:
        raise ConfigError(
            f"cannot write keyring file {p}: {exc.strerror or exc}; check the directory exists and is writable"
        ) from exc
