"""``meshnet-agent``: run the meshnet agent on this host.

    meshnet-agent run --name NAME --bind IP:PORT [--advertise IP:PORT] [--join IP:PORT]...
                      [--keyring FILE] [--dataplane kernel|none] [--data-addr IP] [--netns-prefix P]
                      [--api PATH] [--config FILE]
                      [--profile lan|wan|local] [--tag k=v]... [--state-dir DIR] [--log-level LEVEL]

Settings come from a TOML file (``--config FILE``, else ``/etc/meshnet/agent.toml`` if it exists) and
from flags; flags win. Every setting is checked before anything starts: a bad flag or config value is
one line on stderr naming the fix, and exit code 2. SIGTERM/SIGINT leave the cluster gracefully and
exit 0. Logs go to stderr, one line per membership event. The agent runs NetworkDB beside the gossip
layer in every mode, ``--dataplane none`` included.

``--dataplane kernel`` (the default; needs root) runs the CNM service with the kernel dataplane: the VXLAN
overlay in namespaces named ``{--netns-prefix}ov-VNI`` and sandboxes ``{--netns-prefix}sb-NAME`` (default
prefix ``mn-``), the tunnel endpoint ``--data-addr`` (default the advertise IP); ``--dataplane none`` runs
the same control plane on an in-memory dataplane. Config keys ``data_addr`` and ``netns_prefix``.

``--state-dir`` (default ``/var/lib/meshnet/NAME``) keeps what a restart needs: the NetworkDB Lamport
high-water mark, the cluster id, the joined networks and this node's own entries
(``meshnet/runtime/state.py``). Restarted with the same directory the agent re-asserts the entries it
owns; restarted with an empty one, its old entries are deleted cluster-wide. One agent per directory
(it is locked); tests and throwaway clusters pass a temporary directory. If the directory cannot be
written while running, the agent stops with exit code 1.

The config file uses the flag names (``state_dir`` for ``--state-dir``, ``join`` a list, ``tags`` a
table) plus optional ``[gossip]`` and ``[networkdb]`` tables overriding fields of the chosen profile
(``meshnet/gossip/config.py``, ``meshnet/networkdb/config.py``), e.g.::

    name = "host-a"
    bind = "10.0.0.5:7946"
    join = ["10.0.0.6:7946"]
    profile = "lan"
    [tags]
    role = "web"
    [gossip]
    probe_interval = 0.5
    [networkdb]
    gossip_interval = 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import re
import socket
import sys
import tomllib
from collections.abc import Sequence
from typing import Any, NoReturn

from meshnet.core.errors import ConfigError
from meshnet.gossip import config as gossip_config
from meshnet.networkdb import config as networkdb_config

__all__ = ["main", "build_settings", "parse_addr", "DEFAULT_CONFIG_PATH"]

DEFAULT_CONFIG_PATH = "/etc/meshnet/agent.toml"
DEFAULT_PORT = 7946
PROFILES = {"lan": gossip_config.lan, "wan": gossip_config.wan, "local": gossip_config.local}
NETWORKDB_PROFILES = {
    "lan": networkdb_config.lan,
    "wan": networkdb_config.wan,
    "local": networkdb_config.local,
}
DEFAULT_STATE_ROOT = "/var/lib/meshnet"  # same as meshnet.runtime.state.DEFAULT_STATE_ROOT
LOG_LEVELS = ("debug", "info", "warning", "error")
CONFIG_KEYS = {
    "name",
    "bind",
    "advertise",
    "join",
    "keyring",
    "dataplane",
    "data_addr",
    "netns_prefix",
    "api",
    "profile",
    "tags",
    "state_dir",
    "log_level",
    "gossip",
    "networkdb",
    "ipam",
    "dns",
}
PROG = "meshnet-agent"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Run the meshnet agent (gossip membership and NetworkDB; overlay to come)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    run = sub.add_parser(
        "run",
        help="run the agent in the foreground",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--name", help="node name, unique in the cluster (default: hostname)")
    run.add_argument("--bind", metavar="IP:PORT", help="UDP+TCP gossip address (port 0: any free port)")
    run.add_argument("--advertise", metavar="IP:PORT", help="address peers use to reach us (default: --bind)")
    run.add_argument(
        "--join",
        metavar="IP:PORT",
        action="append",
        help="a seed to join; repeat for more; retried until one answers",
    )
    run.add_argument(
        "--keyring", metavar="FILE", help="serf keyring file: JSON list of base64 keys, primary first"
    )
    run.add_argument(
        "--dataplane",
        choices=("kernel", "none"),
        help="kernel: program the VXLAN overlay (root); none: control plane only (default: kernel)",
    )
    run.add_argument(
        "--data-addr",
        metavar="IP",
        help="VXLAN tunnel endpoint address of this host (default: the advertise IP)",
    )
    run.add_argument(
        "--netns-prefix",
        metavar="P",
        help="prefix of the namespaces this agent creates, P + ov-VNI and P + sb-NAME (default: mn-)",
    )
    run.add_argument(
        "--api", metavar="PATH", help="unix socket of the local API (default: /run/meshnet/agent.sock)"
    )
    run.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} if it exists)"
    )
    run.add_argument("--profile", choices=tuple(PROFILES), help="gossip timing preset (default: lan)")
    run.add_argument(
        "--tag", metavar="K=V", action="append", help="a serf tag advertised in node meta; repeat for more"
    )
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"directory for persisted state, created if missing (default: {DEFAULT_STATE_ROOT}/NAME)",
    )
    run.add_argument("--log-level", choices=LOG_LEVELS, help="stderr log level (default: info)")
    return parser


def parse_addr(
    text: str, what: str, *, default_port: int = DEFAULT_PORT, allow_port_zero: bool = False
) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` to (ip, port); ConfigError naming the expected form."""
    raw = str(text).strip()
    form = f"{what} {text!r} is not IP:PORT (e.g. 10.0.0.5:{DEFAULT_PORT} or [fd00::5]:{DEFAULT_PORT})"
    if raw.startswith("["):
        host, close, rest = raw[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ConfigError(form)
        port_text = rest[1:]
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    else:
        host, port_text = raw, ""  # bare IPv4, or bare IPv6 without a port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(form) from None
    if port_text == "":
        port = default_port
    elif port_text.isdigit() and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ConfigError(f"{what} {text!r} has a bad port; use 1..65535")
    if port == 0 and not allow_port_zero:
        raise ConfigError(f"{what} {text!r} needs a real port; use 1..65535")
    return (str(ip), port)


def _parse_tags(items: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"tag {item!r} is not KEY=VALUE; use e.g. --tag role=web")
        tags[key.strip()] = value
    return tags


def _load_config_file(path: str | None) -> tuple[dict[str, Any], str | None]:
    explicit = path is not None
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return {}, None
        path = DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        hint = "fix --config" if explicit else "create it"
        raise ConfigError(f"config file {path} does not exist; {hint}") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}; fix its permissions or pass --config"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}; fix the file") from None
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(CONFIG_KEYS))}"
        )
    return data, path


def _typed(path: str, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"config file {path}: {key} must be {what}")
    return value


def _gossip_overrides(path: str, table: Any) -> dict[str, Any]:
    return _overrides(path, table, "gossip", gossip_config.GossipConfig, "meshnet/gossip/config.py")


def _overrides(path: str, table: Any, section: str, cls: type, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table of {cls.__name__} fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    overrides: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"config file {path}: unknown [{section}] field {key!r}; see {source}")
        default = getattr(cls(), key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        if not ok:
            raise ConfigError(f"config file {path}: [{section}] {key} must be a {type(default).__name__}")
        overrides[key] = value
    return overrides


def build_settings(args: argparse.Namespace) -> tuple[Any, str, str]:
    """Validate flags + config file into (AgentSettings, log level, state dir). Raises ConfigError."""
    from meshnet.runtime.agent import AgentSettings
    from meshnet.runtime.api import DEFAULT_API_PATH
    from meshnet.runtime.db import DbSettings
    from meshnet.runtime.tags import encode_tags

    file, path = _load_config_file(args.config)
    where = path or "config"

    def pick(flag: Any, key: str, kind: type | tuple[type, ...] = str, what: str = "a string") -> Any:
        if flag is not None:
            return flag
        if key in file:
            return _typed(where, key, file[key], kind, what)
        return None

    dataplane = pick(args.dataplane, "dataplane") or "kernel"  # CNM
    if dataplane not in ("kernel", "none"):
        raise ConfigError(f"dataplane {dataplane!r} is unknown; use --dataplane kernel or none")
    if dataplane == "kernel" and os.geteuid() != 0:
        raise ConfigError(
            "--dataplane kernel needs root (it creates namespaces and links); run as root or pass --dataplane none"
        )

    profile = pick(args.profile, "profile") or "lan"
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r} is unknown; use --profile lan, wan or local")
    config = PROFILES[profile]()
    if "gossip" in file:
        config = config.with_(**_gossip_overrides(where, file["gossip"]))
    ndb_config = NETWORKDB_PROFILES[profile]()
    if "networkdb" in file:
        overrides = _overrides(
            where,
            file["networkdb"],
            "networkdb",
            networkdb_config.NetworkDBConfig,
            "meshnet/networkdb/config.py",
        )
        ndb_config = ndb_config.with_(**overrides)

    log_level = pick(args.log_level, "log_level") or "info"
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log level {log_level!r} is unknown; use one of {', '.join(LOG_LEVELS)}")

    name = pick(args.name, "name") or socket.gethostname()
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"node name {name!r} must be non-empty without spaces; pass --name")

    bind_text = pick(args.bind, "bind")
    if bind_text is None:
        raise ConfigError("no gossip address; pass --bind IP:PORT (e.g. --bind 10.0.0.5:7946)")
    bind = parse_addr(bind_text, "--bind", allow_port_zero=True)
    advertise_text = pick(args.advertise, "advertise")
    advertise = (
        parse_addr(advertise_text, "--advertise", default_port=bind[1], allow_port_zero=True)
        if advertise_text
        else None
    )
    if advertise is None and ipaddress.ip_address(bind[0]).is_unspecified:
        raise ConfigError(f"--bind {bind[0]} cannot be advertised to peers; pass --advertise IP:PORT")

    joins = args.join if args.join is not None else file.get("join", [])
    if isinstance(joins, str):
        joins = [joins]
    if not isinstance(joins, list) or not all(isinstance(j, str) for j in joins):
        raise ConfigError(f'{where}: join must be a list of "IP:PORT" strings')
    seeds = [parse_addr(j, "--join") for j in joins]

    tags: dict[str, str] = {}
    if "tags" in file and args.tag is None:
        table = file["tags"]
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise ConfigError(f'{where}: [tags] must be a table of strings, e.g. role = "web"')
        tags = dict(table)
    if args.tag is not None:
        tags = _parse_tags(args.tag)
    meta = encode_tags(tags)

    keyring = None
    keyring_path = pick(args.keyring, "keyring")
    if keyring_path:
        keyring = _load_keyring(keyring_path)

    api_path = pick(args.api, "api") or DEFAULT_API_PATH

    state_dir = pick(args.state_dir, "state_dir") or os.path.join(DEFAULT_STATE_ROOT, name)
    if os.path.exists(state_dir) and not os.path.isdir(state_dir):
        raise ConfigError(f"--state-dir {state_dir} exists and is not a directory; pass another --state-dir")

    from meshnet.ipam.config import IpamConfig  # IPAM (issue 4)
    from meshnet.runtime.ipam_svc import IpamService  # IPAM (issue 4)

    # IPAM: [ipam] overrides fields of meshnet/ipam/config.py. The local profile (agents on one host) waits
    # 3 s, not 30, for its heirs' records at a graceful leave (grants are final; relays deliver the rest).
    ipam_config = IpamConfig(leave_wait=3.0) if profile == "local" else IpamConfig()
    if "ipam" in file:
        ipam_config = ipam_config.with_(
            **_overrides(where, file["ipam"], "ipam", IpamConfig, "meshnet/ipam/config.py")
        )
    services: list[Any] = [IpamService(ipam_config)]  # IPAM first: CNM uses it
    services.append(_cnm_service(file, where, args, dataplane, advertise or bind))  # CNM after IPAM
    from meshnet.runtime.dns_svc import DnsService, dns_config_from_toml  # DNS (issue 6)

    dns_config = dns_config_from_toml(file.get("dns"), where, start_servers=dataplane == "kernel")
    services.append(DnsService(dns_config))  # DNS after CNM: resolvers for its sandboxes

    settings = AgentSettings(
        config=config,
        name=name,
        bind=bind,
        advertise=advertise,
        seeds=seeds,
        meta=meta,
        keyring=keyring,
        api_path=api_path,
        networkdb=DbSettings(config=ndb_config, state_dir=state_dir),
        services=services,
    )
    return settings, log_level, state_dir


def _cnm_service(
    file: dict[str, Any], where: str, args: argparse.Namespace, dataplane: str, addr: Any
) -> Any:
    """The CNM service: its dataplane (``NetlinkDataplane`` for kernel, ``MemoryDataplane`` for none), the
    VTEP address (``--data-addr``, default the advertise/bind IP) and the namespace prefix."""
    from meshnet.runtime.cnm_svc import CnmService

    data_text = args.data_addr if args.data_addr is not None else file.get("data_addr")
    data_addr = str(addr[0])
    if data_text is not None:
        data_text = _typed(where, "data_addr", data_text, str, "an IP address string")
        try:
            data_addr = str(ipaddress.ip_address(data_text))
        except ValueError:
            raise ConfigError(
                f"--data-addr {data_text!r} is not an IP address; e.g. --data-addr 10.0.0.5"
            ) from None
    if ipaddress.ip_address(data_addr).is_unspecified:
        raise ConfigError("the VTEP address cannot be unspecified; pass --data-addr IP")
    prefix = args.netns_prefix if args.netns_prefix is not None else file.get("netns_prefix", "mn-")
    prefix = _typed(where, "netns_prefix", prefix, str, "a string")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}", prefix):
        raise ConfigError(
            f"--netns-prefix {prefix!r} must be up to 16 letters, digits, '_', '.' or '-' (e.g. h1-)"
        )
    if dataplane == "kernel":
        from meshnet.dataplane.netlink import NetlinkDataplane

        dp: Any = NetlinkDataplane()
    else:
        from meshnet.dataplane import MemoryDataplane

        dp = MemoryDataplane()
    return CnmService(dp, data_addr=data_addr, netns_prefix=prefix)


def _load_keyring(path: str) -> Any:
    from meshnet.gossip.keyring import load_keyring_file

    # load_keyring_file raises ConfigError naming the file and the fix.
    return load_keyring_file(path)


def _fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        settings, log_level, state_dir = build_settings(args)
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create --state-dir {state_dir}: {exc.strerror}; pass another --state-dir"
            ) from None
    except ConfigError as exc:
        return _fail(str(exc))

    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
    )
    import trio

    from meshnet.runtime.agent import serve_agent
    from meshnet.runtime.db import StateWriteError

    try:
        trio.run(serve_agent, settings)
    except ConfigError as exc:
        return _fail(str(exc))
    except StateWriteError as exc:
        return _fail(f"stopped: {exc}", 1)
    except BaseExceptionGroup as group:
        # A bind failure surfaces from the agent's nursery wrapped in a group: report it as one line.
        leaves = _leaves(group)
        if leaves and all(isinstance(e, ConfigError) for e in leaves):
            return _fail(str(leaves[0]))
        if leaves and all(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 130
        raise
    except KeyboardInterrupt:
        return 130
    logging.getLogger("meshnet.agent").info("agent %s stopped", settings.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
