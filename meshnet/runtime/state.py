"""The agent's state directory: what a restart needs to keep this node's NetworkDB identity.

Theory of operation. NetworkDB's owner-authority rule (``meshnet/networkdb/store.py``, rule 4) makes a
node the only writer of its own records, and its README lists what the shell must keep for a restart
with state: the Lamport high-water mark, the cluster id, and the node's own entries and attachments.
A restart with this directory re-joins the networks and re-creates the entries at fresh ltimes above the
high-water mark (so they win over their pre-crash copies); a restart with an empty directory holds
nothing, and the core then deletes the old copies cluster-wide.

Layout (format 1), in a directory of mode 0700:

- ``lock``: ``flock``ed by the running agent; a second agent on the same directory is refused.
- ``node.json``: ``{"format", "name", "cluster_id", "high_water", "networks"}``. Replaced atomically
  (write a temporary file, fsync, rename, fsync the directory) whenever one of them changes; the
  high-water mark *synchronously, before* the outputs of the step that raised it are sent.
- ``entries.snap``: the node's own live entries at the last compaction, one JSON object per line
  (``{"n": network, "t": table, "k": key, "v": base64 value}``) after a header line; replaced atomically.
- ``entries.log``: changes since, appended and fsynced in groups (``{"op": "put", ...}`` /
  ``{"op": "del", "n", "t", "k"}``). Compaction writes a new snapshot and empties the log; the agent
  compacts at start and when the log outgrows the snapshot.

A torn last line of the log (a crash in the middle of an append) is ignored; any other damage refuses
the start with a message naming the file. The directory belongs to one node name: starting another name
on it is refused (its entries are that node's).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshnet.core.errors import ConfigError

__all__ = ["StateDir", "LoadedState", "Slot", "encode_put", "encode_del", "DEFAULT_STATE_ROOT"]

log = logging.getLogger("meshnet.state")

#: Default parent of the state directory: ``/var/lib/meshnet/NAME``.
DEFAULT_STATE_ROOT = "/var/lib/meshnet"
FORMAT = 1
NODE_FILE = "node.json"
SNAP_FILE = "entries.snap"
LOG_FILE = "entries.log"
LOCK_FILE = "lock"

#: (network, table, key), as NetworkDB names a slot.
Slot = tuple[str, str, str]


@dataclass(slots=True)
class LoadedState:
    """What a state directory held at start."""

    name: str | None = None
    cluster_id: str | None = None
    high_water: int = 0
    networks: list[str] = field(default_factory=list)
    entries: dict[Slot, bytes] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return self.name is None and not self.entries


def encode_put(slot: Slot, value: bytes) -> bytes:
    n, t, k = slot
    line = {"op": "put", "n": n, "t": t, "k": k, "v": base64.b64encode(value).decode("ascii")}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def encode_del(slot: Slot) -> bytes:
    n, t, k = slot
    return json.dumps({"op": "del", "n": n, "t": t, "k": k}, separators=(",", ":")).encode() + b"\n"


def fsync_dir(path: str) -> None:
    """fsync a directory, so a rename or unlink in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(directory: str, name: str, data: bytes) -> None:
    """Write ``directory/name`` so that a crash leaves either the old or the new content."""
    final = os.path.join(directory, name)
    tmp = final + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(directory)


class StateDir:
    """An open, locked state directory. ``open`` raises ConfigError naming the fix."""

    def __init__(self, path: str, name: str, lock_fd: int) -> None:
        self.path = path
        self.name = name
        self._lock_fd = lock_fd
        self._log_fd: int | None = None
        #: Lines in the log since the last compaction.
        self.log_lines = 0
        #: Entries in the last snapshot.
        self.snapshot_entries = 0

    # -- open, load, close --

    @classmethod
    def open(cls, path: str, name: str) -> StateDir:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create state directory {path}: {exc.strerror}; pass another --state-dir"
            ) from None
        if not os.path.isdir(path):
            raise ConfigError(f"--state-dir {path} is not a directory; pass another --state-dir")
        try:
            fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open {os.path.join(path, LOCK_FILE)}: {exc.strerror}; check the permissions "
                "of --state-dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(
                    f"another agent is using the state directory {path}; stop it or pass another --state-dir"
                ) from None
            raise ConfigError(f"cannot lock state directory {path}: {exc.strerror}") from None
        return cls(path, name, fd)

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def load(self) -> LoadedState:
        """Read what the directory holds (nothing for a new one). Raises ConfigError on damage or
        when it belongs to another node name."""
        out = LoadedState()
        node_path = os.path.join(self.path, NODE_FILE)
        try:
            with open(node_path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise ConfigError(f"cannot read {node_path}: {exc.strerror}") from None
        if raw is not None:
            try:
                node = json.loads(raw)
                if not isinstance(node, dict) or node.get("format") != FORMAT:
                    raise ValueError(
                        f"unknown format {node.get('format') if isinstance(node, dict) else '?'}"
                    )
                out.name = str(node["name"])
                out.cluster_id = node.get("cluster_id") or None
                out.high_water = int(node.get("high_water", 0))
                out.networks = [str(n) for n in node.get("networks", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{node_path} is damaged ({exc}); restore it, or start with an empty --state-dir "
                    "(this node's entries are then deleted cluster-wide)"
                ) from None
            if out.name != self.name:
                raise ConfigError(
                    f"state directory {self.path} belongs to node {out.name!r}, not {self.name!r}; "
                    f"pass --name {out.name} or another --state-dir"
                )
        self._read_snapshot(out.entries)
        self._replay_log(out.entries)
        return out

    def _read_snapshot(self, entries: dict[Slot, bytes]) -> None:
        path = os.path.join(self.path, SNAP_FILE)
        try:
            with open(path, "rb") as fh:
                lines = fh.read().split(b"\n")
        except FileNotFoundError:
            return
        if lines and lines[-1] == b"":
            lines.pop()
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
                if i == 0:
                    if obj.get("format") != FORMAT:
                        raise ValueError("unknown format")
                    continue
                entries[(obj["n"], obj["t"], obj["k"])] = base64.b64decode(obj["v"], validate=True)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{path} line {i + 1} is damaged ({exc}); restore it or empty --state-dir"
                ) from None
        self.snapshot_entries = len(entries)

    def _replay_log(self, entries: dict[Slot, bytes]) -> None:
        path = os.path.join(self.path, LOG_FILE)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
                slot = (obj["n"], obj["t"], obj["k"])
                if obj["op"] == "put":
                    entries[slot] = base64.b64decode(obj["v"], validate=True)
                elif obj["op"] == "del":
                    entries.pop(slot, None)
                else:
                    raise ValueError(f"unknown op {obj['op']!r}")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{path} line {i + 1} is damaged ({exc}); restore it or empty --state-dir"
                ) from None
        if torn:
            log.warning(
                "ignoring a torn last line in %s (%d bytes): a crash during an append", path, len(torn)
            )
        self.log_lines = len(lines)

    # -- writes --

    def save_node(self, *, cluster_id: str, high_water: int, networks: Iterable[str]) -> None:
        """Replace ``node.json`` atomically and durably (raises OSError)."""
        body = {
            "format": FORMAT,
            "name": self.name,
            "cluster_id": cluster_id,
            "high_water": int(high_water),
            "networks": sorted(networks),
        }
        replace_atomically(self.path, NODE_FILE, json.dumps(body, indent=1).encode() + b"\n")

    def append(self, lines: list[bytes]) -> None:
        """Append encoded lines to the log and fsync (raises OSError). One caller at a time."""
        if self._log_fd is None:
            self._log_fd = os.open(
                os.path.join(self.path, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
        data = memoryview(b"".join(lines))
        while data:
            data = data[os.write(self._log_fd, data) :]
        os.fsync(self._log_fd)
        self.log_lines += len(lines)

    def compact(self, entries: Mapping[Slot, bytes]) -> None:
        """Write ``entries`` as the new snapshot and empty the log (raises OSError). One caller at a time.

        The snapshot replaces the old one atomically before the log is emptied, so a crash in between
        replays an already-included log over the new snapshot, which is harmless (puts and deletes of
        the same final state)."""
        header = json.dumps({"format": FORMAT, "name": self.name}).encode() + b"\n"
        parts = [header]
        for (n, t, k), v in entries.items():
            obj = {"n": n, "t": t, "k": k, "v": base64.b64encode(v).decode("ascii")}
            parts.append(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        replace_atomically(self.path, SNAP_FILE, b"".join(parts))
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, LOG_FILE))
        fsync_dir(self.path)
        self.log_lines = 0
        self.snapshot_entries = len(entries)
