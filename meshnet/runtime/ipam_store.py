"""The IPAM service's state files: ``STATE_DIR/ipam/`` (snapshot + append-only log) and their loading.

Theory of operation (the write-ahead order of ``../shared/docs/ipam.md`` 3.6 rests on this file): the
core gates every output behind the ``Persist`` that justifies it, and the service's persister calls
``Ipam.persisted`` only after ``IpamStore.append`` returned. ``append`` writes the persists as frames
(``u32 length, u32 crc32, pickle of one Persist's records``) to ``ipam.log`` through an ``O_DSYNC``
descriptor, so each write is durable when it returns (the ``fdatasync`` guarantee, one system call per
batch); several persists queued behind a write in flight share the next one (group commit). When the log
outgrows the record map, ``compact`` replaces ``ipam.snap`` (pickle of the whole map) atomically
(temporary file, fsync, rename), then removes the log and fsyncs the directory; a new log's directory
entry is fsynced when it is created. ``load`` replays snapshot then log: a torn or corrupt *last* frame
(a crash during an append) is cut off, damage anywhere else refuses the start with a ConfigError
naming the file. ``move_aside`` keeps a retired identity's directory as ``ipam.retired-N``.
Blocking I/O: the service calls ``append``/``compact`` from a worker thread, one call at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from meshnet.core.errors import ConfigError
from meshnet.ipam import Persist
from meshnet.runtime.state import fsync_dir, replace_atomically

__all__ = ["IpamStore", "COMPACT_MIN_FRAMES", "STORE_FORMAT"]

log = logging.getLogger("meshnet.ipam")

#: Compact the log when it holds more frames than this (and more than the snapshot's records).
COMPACT_MIN_FRAMES = 2048
STORE_FORMAT = 1
_FRAME = struct.Struct(">II")


class IpamStore:
    """``STATE_DIR/ipam``: the durable record map (snapshot + append-only log). Not thread-safe: one
    caller at a time (the persister). ``records`` mirrors what is on disk."""

    SNAP = "ipam.snap"
    LOG = "ipam.log"

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: dict[tuple[Any, ...], Any] = {}
        self.log_frames = 0
        self._log_fd: int | None = None

    def load(self) -> dict[tuple[Any, ...], Any]:
        """Read the directory (created if missing); raises ConfigError naming the damaged file."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {self.path}: {exc.strerror}; check --state-dir") from None
        snap = os.path.join(self.path, self.SNAP)
        records: dict[tuple[Any, ...], Any] = {}
        try:
            with open(snap, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise ConfigError(f"cannot read {snap}: {exc.strerror}") from None
        if raw is not None:
            try:
                fmt, items = pickle.loads(raw)
                if fmt != STORE_FORMAT:
                    raise ValueError(f"unknown format {fmt!r}")
                records = dict(items)
            except Exception as exc:
                raise ConfigError(
                    f"{snap} is damaged ({exc}); restore it, or start with an empty --state-dir "
                    "(this node then takes a new IPAM identity)"
                ) from None
        logp = os.path.join(self.path, self.LOG)
        try:
            with open(logp, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise ConfigError(f"cannot read {logp}: {exc.strerror}") from None
        pos = frames = 0
        while pos < len(data):
            if pos + _FRAME.size > len(data):
                break  # torn header
            length, crc = _FRAME.unpack_from(data, pos)
            body = data[pos + _FRAME.size : pos + _FRAME.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                if pos + _FRAME.size + length >= len(data):
                    break  # a torn or corrupt last frame: a crash during the append
                raise ConfigError(f"{logp} is damaged at byte {pos}; restore it or empty --state-dir")
            try:
                items = pickle.loads(body)
            except Exception as exc:
                raise ConfigError(f"{logp} frame at byte {pos} is damaged ({exc})") from None
            for key, value in items:
                if value is None:
                    records.pop(key, None)
                else:
                    records[key] = value
            frames += 1
            pos += _FRAME.size + length
        if pos < len(data):
            log.warning("ignoring a torn last frame in %s (%d bytes)", logp, len(data) - pos)
            with open(logp, "r+b") as fh:
                fh.truncate(pos)
                os.fsync(fh.fileno())
        self.records = records
        self.log_frames = frames
        return dict(records)

    @staticmethod
    def encode(batch: Sequence[Persist]) -> bytes:
        """The log frames of the persists. The persister encodes in the trio thread, so the writer
        thread needs the interpreter lock only to start, after its one ``write`` and to return."""
        parts = []
        for p in batch:
            body = pickle.dumps(p.records, protocol=pickle.HIGHEST_PROTOCOL)
            parts.append(_FRAME.pack(len(body), zlib.crc32(body)) + body)
        return b"".join(parts)

    def append(self, batch: Sequence[Persist], data: bytes | None = None) -> None:
        """Append the persists as frames (``data``: their ``encode``, if done already), durably, before
        returning (raises OSError). Updates ``records`` only after.

        The log is opened ``O_DSYNC``: a ``write`` returns only once its data, and the file size that
        makes it readable, are on stable storage (the ``fdatasync`` guarantee), in one system call
        instead of a write and an fsync. A new log's directory entry is made durable when the log is
        created (after a compaction removed the previous one)."""
        if data is None:
            data = self.encode(batch)
        if self._log_fd is None:
            self._log_fd = os.open(
                os.path.join(self.path, self.LOG),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC,
                0o600,
            )
            fsync_dir(self.path)
        view = memoryview(data)
        while view:
            view = view[os.write(self._log_fd, view) :]
        self.log_frames += len(batch)
        for p in batch:
            for key, value in p.records:
                if value is None:
                    self.records.pop(key, None)
                else:
                    self.records[key] = value

    def wants_compaction(self) -> bool:
        return self.log_frames > max(COMPACT_MIN_FRAMES, len(self.records))

    def compact(self) -> None:
        """Write ``records`` as the snapshot (atomically), then empty the log (raises OSError)."""
        data = pickle.dumps((STORE_FORMAT, list(self.records.items())), protocol=pickle.HIGHEST_PROTOCOL)
        replace_atomically(self.path, self.SNAP, data)
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, self.LOG))
        fsync_dir(self.path)
        self.log_frames = 0

    def move_aside(self) -> str:
        """Rename the directory to ``ipam.retired-N`` and start an empty one; returns the new name."""
        self.close()
        n = 1
        while os.path.exists(f"{self.path}.retired-{n}"):
            n += 1
        aside = f"{self.path}.retired-{n}"
        os.rename(self.path, aside)
        os.makedirs(self.path, mode=0o700)
        self.records = {}
        self.log_frames = 0
        return aside

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
