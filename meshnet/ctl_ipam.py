"""``meshnetctl ipam``: the agent's manager-free IPAM (``/v1/ipam``, ``meshnet/runtime/ipam_svc.py``).

    meshnetctl ipam ls [NETWORK] [--blocks] [--json]   block ownership as this agent sees it
    meshnetctl ipam reclaim NODE... [--force] [--json] take the space of nodes that are gone for good

``ls`` shows, per space (a network's subnet; ``vni`` and ``pool`` of the global network ``-``), runs of
consecutive blocks with the same owner, epoch and state as one row (``--blocks``: one row per block),
with the free units summed. ``OWNER STATE`` is the owner as this agent sees it: ``self``, ``alive``,
``failed``, ``left``, ``retired`` or ``unknown``. ``OWNER`` is the owner's host (its agent's ``--name``),
``IDENTITY`` the IPAM identity on it (``HOST~`` + 8 hex digits: a new one after a graceful leave or a
restart without the state directory). ``reclaim NODE`` takes a host name (its identities that are not
running: all of them if the host is gone, else the ones it superseded) or an exact identity name.
``reclaim`` is never automatic: run it only for a node
that is gone for good (its containers dead); it waits for the other members' acknowledgements (up to the
IPAM reclaim budget, 30 s) and refuses while the node is alive or another member does not answer, unless
``--force``. Exit codes as ``meshnetctl`` documents (0 ok, 1 refused / unreachable / failing, 2 usage).
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from meshnet.ctl import _table, call

__all__ = ["register", "format_blocks", "runs"]

#: A reclaim waits for acknowledgements up to the IPAM reclaim budget (30 s by default).
RECLAIM_TIMEOUT = 60.0


def runs(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive blocks of one space with the same owner, owner state, epoch and state, merged."""
    out: list[dict[str, Any]] = []
    for b in blocks:
        ident = b.get("owner_identity", b["owner"])
        key = (b["network"], b["space"], b["owner"], ident, b["owner_state"], b["epoch"], b["state"])
        last = out[-1] if out else None
        if last is not None and last["_key"] == key and last["block_last"] + 1 == b["block"]:
            last["block_last"] = b["block"]
            last["last"] = b["last"]
            last["free"] += b["free"]
            continue
        out.append(dict(b, _key=key, block_last=b["block"]))
    return out


def format_blocks(blocks: list[dict[str, Any]], *, merge: bool = True) -> str:
    """``ipam ls``: NETWORK SPACE BLOCKS RANGE OWNER OWNER-STATE EPOCH STATE FREE IDENTITY."""
    if not blocks:
        return "no IPAM spaces known here"
    head = (
        "NETWORK",
        "SPACE",
        "BLOCKS",
        "RANGE",
        "OWNER",
        "OWNER STATE",
        "EPOCH",
        "STATE",
        "FREE",
        "IDENTITY",
    )
    rows = [head]
    items = runs(blocks) if merge else [dict(b, block_last=b["block"]) for b in blocks]
    for b in items:
        span = str(b["block"]) if b["block_last"] == b["block"] else f"{b['block']}-{b['block_last']}"
        rows.append(
            (
                b["network"] or "-",
                b["space"],
                span,
                f"{b['first']}-{b['last']}",
                b["owner"] or "-",
                b["owner_state"],
                str(b["epoch"]),
                b["state"],
                str(b["free"]),
                b.get("owner_identity") or "-",
            )
        )
    return _table(rows)


def _ls(path: str, args: argparse.Namespace) -> None:
    query = f"?network={quote(args.network, safe='')}" if args.network is not None else ""
    body = call(path, "GET", f"/v1/ipam{query}")
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(format_blocks(body["blocks"], merge=not args.blocks))


def _reclaim(path: str, args: argparse.Namespace) -> None:
    payload = {"node": args.node if len(args.node) > 1 else args.node[0], "force": args.force}
    body = call(path, "POST", "/v1/ipam/reclaim", body=payload, timeout=RECLAIM_TIMEOUT)
    if args.json:
        print(json.dumps(body, indent=2))
        return
    targets = ", ".join(body["targets"]) or "nobody"
    line = f"reclaimed {body['blocks']} blocks of {targets}"
    if body.get("hosts"):
        line += f" (host {', '.join(body['hosts'])})"
    if body["abandoned"]:
        line += f" ({body['abandoned']} left to a newer owner or a concurrent reclaimer)"
    if body.get("force"):
        line += " (forced)"
    print(line)


def register(sub: Any) -> None:
    """Add ``ipam ls`` and ``ipam reclaim`` to meshnetctl's subcommands."""
    ipam = sub.add_parser(
        "ipam",
        help="IPAM: block ownership, reclaim the space of a node gone for good",
        description="Manager-free IPAM (block ownership). The global network is written '-'.",
    )
    isub = ipam.add_subparsers(dest="ipam_command", metavar="IPAMCOMMAND", parser_class=sub._parser_class)
    isub.required = True
    ls = isub.add_parser("ls", help="blocks: owner, epoch, state and free addresses, as this agent sees them")
    ls.add_argument("network", metavar="NETWORK", nargs="?", help="one network id ('-': the global spaces)")
    ls.add_argument("--blocks", action="store_true", help="one row per block (no merging of runs)")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    ls.set_defaults(handler=_ls)
    rc = isub.add_parser(
        "reclaim",
        help="take the space of a node that is gone for good (never automatic)",
        description="Reclaim the blocks of NODE (failed, left or reaped, and gone for good: its containers "
        "are dead). Refused while NODE is alive or another member does not answer, unless --force.",
    )
    rc.add_argument(
        "node",
        metavar="NODE",
        nargs="+",
        help="a host (agent --name: its identities that are not running) or an IPAM identity (HOST~xxxxxxxx)",
    )
    rc.add_argument(
        "--force",
        action="store_true",
        help="skip the preconditions (NODE not alive, every other member answering): unsafe if NODE "
        "still runs behind a partition",
    )
    rc.add_argument("--json", action="store_true", help="print the API's JSON")
    rc.set_defaults(handler=_reclaim)
