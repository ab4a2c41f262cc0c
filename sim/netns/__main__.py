"""Command line of the netns harness (root only)::

    python -m sim.netns up --hosts N [--dataplane auto|kernel|none] [--profile local|lan|wan]
    python -m sim.netns container NAME --host H --network NET [--alias A]... [--ip IP] [--subnet CIDR]
    python -m sim.netns rm NAME                      # delete a container (its sandbox) through its host
    python -m sim.netns exec NAME -- CMD [ARG...]    # NAME: a container, a host (h2) or the underlay (mnu)
    python -m sim.netns ctl H -- MESHNETCTL-ARGS...  # meshnetctl --api RUN/H.sock ...
    python -m sim.netns status [--json]
    python -m sim.netns down                         # removes everything, also after a crashed run

Every command takes ``--prefix P`` (namespace names ``Pmnu``, ``Ph1``..) and ``--run-dir DIR`` (default
/run/meshnet-netns) to address a separate harness. Exit codes: 0 ok, 1 failure, 2 bad usage; ``exec``
returns the command's own exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from meshnet import ctl
from sim.netns.harness import DEFAULT_RUN_DIR, Harness, HarnessError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.netns",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prefix", default="", help="namespace name prefix (default: none)")
    parser.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR), help=f"default {DEFAULT_RUN_DIR}")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create the underlay and N hosts, each running meshnet-agent")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--dataplane", choices=("auto", "kernel", "none"), default="auto")
    up.add_argument("--profile", choices=("local", "lan", "wan"), default="local")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for convergence")
    c = sub.add_parser("container", help="attach a new container to a network (created on first use)")
    c.add_argument("name")
    c.add_argument("--host", required=True)
    c.add_argument("--network", required=True)
    c.add_argument("--alias", action="append", default=[])
    c.add_argument("--ip")
    c.add_argument("--subnet", help="subnet when the network is created here (default: the IPAM pool)")
    rm = sub.add_parser("rm", help="remove a container")
    rm.add_argument("name")
    ex = sub.add_parser("exec", help="run a command in a container's (or host's) namespace")
    ex.add_argument("name")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ct = sub.add_parser("ctl", help="meshnetctl against a host's agent")
    ct.add_argument("host")
    ct.add_argument("argv", nargs=argparse.REMAINDER)
    status = sub.add_parser("status", help="hosts, agents, networks, containers, namespaces")
    status.add_argument("--json", action="store_true")
    sub.add_parser("down", help="stop every agent, delete every namespace and file of the harness")
    return parser


def _strip_dashes(argv: list[str]) -> list[str]:
    return argv[1:] if argv[:1] == ["--"] else argv


def print_status(h: Harness) -> None:
    st = h.status()
    if not st["hosts"] and not st["netns"]:
        print(f"no harness in {st['run_dir']} (prefix {st['prefix']!r})")
        return
    print(f"underlay {st['underlay']}  dataplane {st['dataplane']}  run dir {st['run_dir']}")
    print(f"{'HOST':6} {'ADDRESS':12} {'PID':>8} {'AGENT':8} ALIVE MEMBERS")
    for host, rec in st["hosts"].items():
        agent = "running" if rec["running"] else "DOWN"
        print(f"{host:6} {rec['addr']:12} {rec['pid']:>8} {agent:8} {','.join(rec['alive_members'])}")
    if st["containers"]:
        print(f"\n{'CONTAINER':14} {'HOST':6} {'NETWORK':12} {'IP':16} NETNS")
        for name, rec in sorted(st["containers"].items()):
            ip = rec["ip"] or "-"
            print(f"{name:14} {rec['host']:6} {rec['network']:12} {ip:16} {rec['netns']}")
    print(f"\nnamespaces: {' '.join(st['netns'])}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        h = Harness(
            prefix=args.prefix,
            run_dir=args.run_dir,
            dataplane=getattr(args, "dataplane", "auto"),
            profile=getattr(args, "profile", "local"),
            log=lambda msg: print(msg, file=sys.stderr),
        )
        if args.command == "up":
            h.up(args.hosts, timeout=args.timeout)
            print_status(h)
        elif args.command == "container":
            rec = h.container(
                args.name,
                host=args.host,
                network=args.network,
                aliases=args.alias,
                ip=args.ip,
                subnet=args.subnet,
            )
            print(f"{args.name} on {rec['host']} in {rec['network']}: ip {rec['ip']}, netns {rec['netns']}")
        elif args.command == "rm":
            h.remove_container(args.name)
        elif args.command == "exec":
            cmd = _strip_dashes(args.argv)
            if not cmd:
                print("exec: give a command after --", file=sys.stderr)
                return 2
            full = h.exec_argv(args.name, cmd)
            sys.stdout.flush()
            os.execvp(full[0], full)
        elif args.command == "ctl":
            return ctl.main(["--api", h.api(args.host), *_strip_dashes(args.argv)])
        elif args.command == "status":
            if args.json:
                print(json.dumps(h.status(), indent=1, sort_keys=True))
            else:
                print_status(h)
        elif args.command == "down":
            report = h.down()
            print(
                f"stopped {len(report['stopped'])} and killed {len(report['killed'])} processes, "
                f"deleted {len(report['netns'])} namespaces, removed {len(report['files'])} files"
            )
        return 0
    except HarnessError as err:
        print(f"sim.netns {args.command}: {err}", file=sys.stderr)
        return 1
    except (ctl.AgentUnreachable, ctl.AgentError) as err:
        print(f"sim.netns {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
