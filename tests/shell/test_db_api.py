"""The NetworkDB routes of the agent API (``/v1/db/...``) and ``meshnetctl db``, on real nodes over loopback.

Two nodes with NetworkDB and an API socket each (``a`` founds the cluster, ``b`` joins it). Errors are
JSON ``{code, message}`` with fitting statuses, and a refused request changes nothing.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
import trio

from meshnet import ctl
from tests.shell.helpers import http_raw, split_response, wait_until
from tests.shell.ndb_helpers import DbCluster, api_request


async def two_nodes(nursery, tmp_path) -> tuple[DbCluster, str, str]:
    cluster = DbCluster(nursery, tmp_path)
    await cluster.start("a", "127.0.8.11", api=True)
    await cluster.start("b", "127.0.8.12", join="a", api=True)
    await wait_until(lambda: cluster.states("a").get("b") == "alive", 10, "b alive at a")
    return cluster, cluster.api("a"), cluster.api("b")


async def test_join_put_get_list_delete_leave(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster, a, b = await two_nodes(nursery, tmp_path)
        status, body = await api_request(a, "POST", "/v1/db/networks/ov")
        assert status == 200 and body == {
            "network": "ov", "joined": True, "already": False, "synced": True, "peers": [], "failed": []
        }  # fmt: skip
        await wait_until(lambda: cluster.db("b").peers("ov") == ["a"], 5, "a's attachment to ov at b")
        status, body = await api_request(b, "POST", "/v1/db/networks/ov")
        assert status == 200 and body["synced"] and body["peers"] == ["a"]
        status, body = await api_request(b, "POST", "/v1/db/networks/ov")
        assert status == 200 and body["already"] is True

        status, e = await api_request(a, "PUT", "/v1/db/ov/endpoints/ep%2F1", {"value": "10.0.0.1"})
        assert status == 200
        assert (e["key"], e["value"], e["owner"], e["deleted"]) == ("ep/1", "10.0.0.1", "a", False)
        assert e["value_b64"] == base64.b64encode(b"10.0.0.1").decode() and e["seen_at"] is not None
        status, e = await api_request(a, "PUT", "/v1/db/ov/endpoints/bin", {"value_b64": "AP8="})
        assert status == 200 and e["value"] is None and e["value_b64"] == "AP8="
        status, e = await api_request(a, "PUT", "/v1/db/-/services/web", {"value": "vip"})
        assert status == 200 and e["network"] == ""

        async def at_b(target: str) -> int:
            return (await api_request(b, "GET", target))[0]

        for target in ("/v1/db/ov/endpoints/ep%2F1", "/v1/db/ov/endpoints/bin", "/v1/db/-/services/web"):
            await wait_until_async(lambda t=target: at_b(t), 200, f"{target} at b")
        status, e = await api_request(b, "GET", "/v1/db/ov/endpoints/ep%2F1")
        assert e["owner"] == "a" and e["value"] == "10.0.0.1" and e["seen_at"] is not None

        status, listing = await api_request(b, "GET", "/v1/db/ov/endpoints")
        assert status == 200 and [x["key"] for x in listing["entries"]] == ["bin", "ep/1"]
        assert {"key", "value", "value_b64", "owner", "ltime", "deleted", "hidden", "seen_at"} <= set(
            listing["entries"][0]
        )
        assert isinstance(listing["now"], float)

        status, tomb = await api_request(b, "DELETE", "/v1/db/ov/endpoints/bin")
        assert status == 200 and tomb["deleted"] is True and tomb["owner"] == "b"
        status, listing = await api_request(b, "GET", "/v1/db/ov/endpoints")
        assert [x["key"] for x in listing["entries"]] == ["ep/1"]
        status, listing = await api_request(b, "GET", "/v1/db/ov/endpoints?deleted=true")
        assert [(x["key"], x["deleted"]) for x in listing["entries"]] == [("bin", True), ("ep/1", False)]
        assert listing["entries"][0]["reap_in_seconds"] > 0

        status, peers = await api_request(a, "GET", "/v1/db/ov/peers")
        assert status == 200 and peers["joined"] is True
        assert peers["peers"] == [
            {"name": "b", "addr": "127.0.8.12", "port": cluster.ports["b"], "state": "alive"}
        ]
        status, nets = await api_request(a, "GET", "/v1/db/networks")
        assert [n["network"] for n in nets["networks"]] == ["", "ov"]

        await wait_until_async(lambda: _status(a, "/v1/db/ov/endpoints/bin"), 404, "b's delete at a")
        status, stats = await api_request(a, "GET", "/v1/db/stats")
        assert status == 200 and stats["cluster_id"] == cluster.db("a").cluster_id
        assert stats["node"]["networks"] == 2 and stats["agent"]["owned_entries"] == 2
        status, one = await api_request(a, "GET", "/v1/db/stats?network=ov")
        assert one["network"] == "ov" and one["joined"] and "max_len_seen" in one["queue"]
        status, glob = await api_request(a, "GET", "/v1/db/stats?network=-")
        assert glob["network"] == ""

        status, body = await api_request(b, "DELETE", "/v1/db/networks/ov")
        assert status == 200 and body == {"network": "ov", "left": True}
        await wait_until(lambda: cluster.db("a").peers("ov") == [], 5, "b gone from ov at a")
        status, err = await api_request(b, "GET", "/v1/db/ov/endpoints")
        assert status == 404 and err["code"] == "not_joined"
        nursery.cancel_scope.cancel()


async def wait_until_async(probe, want, what: str, timeout: float = 5.0) -> None:
    with trio.move_on_after(timeout):
        while await probe() != want:
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_writes_answer_only_once_durable_and_modes(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster, a, _ = await two_nodes(nursery, tmp_path)
        status, _ = await api_request(a, "PUT", "/v1/db/-/t/k?mode=create", {"value": "v1"})
        assert status == 200
        # The journal line is on disk when the answer arrives.
        with open(os.path.join(cluster.state_dir("a"), "entries.log"), "rb") as fh:
            assert b'"k":"k"' in fh.read()
        status, err = await api_request(a, "PUT", "/v1/db/-/t/k?mode=create", {"value": "v2"})
        assert status == 409 and err["code"] == "exists"
        status, err = await api_request(a, "PUT", "/v1/db/-/t/nope?mode=update", {"value": "v"})
        assert status == 404 and err["code"] == "not_found"
        status, e = await api_request(a, "PUT", "/v1/db/-/t/k?mode=update", {"value": "v3"})
        assert status == 200 and e["value"] == "v3"
        status, e = await api_request(a, "GET", "/v1/db/-/t/k")
        assert e["value"] == "v3"
        # A value at the core's limit fits the API's body limit in base64; a larger body does not.
        big = base64.b64encode(b"\xab" * 65536).decode()
        status, e = await api_request(a, "PUT", "/v1/db/-/t/big", {"value_b64": big})
        assert status == 200 and e["value_b64"] == big
        raw = await http_raw(a, b"PUT /v1/db/-/t/k HTTP/1.1\r\nContent-Length: 300000\r\n\r\n")
        assert split_response(raw)[0] == 413
        nursery.cancel_scope.cancel()


async def test_batch_put_writes_every_entry_once_durable(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster, a, b = await two_nodes(nursery, tmp_path)
        items = [{"key": f"k{i}", "value": f"v{i}"} for i in range(5)] + [{"key": "bin", "value_b64": "AP8="}]
        status, body = await api_request(a, "POST", "/v1/db/-/t", {"entries": items})
        assert status == 200 and body["written"] == 6
        assert body["ltimes"] == sorted(body["ltimes"]) and len(set(body["ltimes"])) == 6
        with open(os.path.join(cluster.state_dir("a"), "entries.log"), "rb") as fh:
            log = fh.read()
        assert all(f'"k":"k{i}"'.encode() in log for i in range(5))
        status, e = await api_request(a, "GET", "/v1/db/-/t/bin")
        assert e["value_b64"] == "AP8=" and e["owner"] == "a"

        async def at_b() -> int:
            return len((await api_request(b, "GET", "/v1/db/-/t"))[1]["entries"])

        await wait_until_async(at_b, 6, "the batch at b")
        nursery.cancel_scope.cancel()


BAD = [
    ("PUT", "/v1/db/-/t/k", b"not json", 400, "bad_request"),
    ("PUT", "/v1/db/-/t/k", b"[1]", 400, "bad_request"),
    ("PUT", "/v1/db/-/t/k", b'{"value": "a", "value_b64": "YQ=="}', 400, "bad_request"),
    ("PUT", "/v1/db/-/t/k", b'{"valu": "a"}', 400, "bad_request"),
    ("PUT", "/v1/db/-/t/k", b'{"value": 5}', 400, "bad_request"),
    ("PUT", "/v1/db/-/t/k", b'{"value_b64": "**"}', 400, "bad_request"),
    ("PUT", "/v1/db/-/t/k?mode=upsert", b'{"value": "a"}', 400, "bad_request"),
    ("PUT", "/v1/db/-/t/" + "k" * 600, b'{"value": "a"}', 400, "invalid"),
    ("PUT", "/v1/db/-/" + "t" * 200 + "/k", b'{"value": "a"}', 400, "invalid"),
    ("PUT", "/v1/db/-/t/k", json.dumps({"value": "x" * 70000}).encode(), 413, "too_large"),
    ("PUT", "/v1/db/ov/t/k", b'{"value": "a"}', 404, "not_joined"),
    ("GET", "/v1/db/-/t/missing", b"", 404, "not_found"),
    ("DELETE", "/v1/db/-/t/missing", b"", 404, "not_found"),
    ("DELETE", "/v1/db/networks/-", b"", 400, "invalid"),
    ("DELETE", "/v1/db/networks/never", b"", 404, "not_joined"),
    ("GET", "/v1/db/-/t?deleted=maybe", b"", 400, "bad_request"),
    ("GET", "/v1/db/-/t/%ff", b"", 400, "bad_request"),
    ("POST", "/v1/db/-/t", b'{"entries": []}', 400, "bad_request"),
    ("POST", "/v1/db/-/t", b'{"entries": [{"key": "a", "value": "1"}], "x": 1}', 400, "bad_request"),
    ("POST", "/v1/db/-/t", b'{"entries": [{"value": "1"}]}', 400, "bad_request"),
    ("POST", "/v1/db/-/t", b'{"entries": [{"key": "a", "value": "1", "owner": "b"}]}', 400, "bad_request"),
    # all or nothing: a later bad item (a repeated key, an empty key, a value over the limit) writes none
    (
        "POST",
        "/v1/db/-/t",
        b'{"entries": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]}',
        400,
        "invalid",
    ),
    (
        "POST",
        "/v1/db/-/t",
        b'{"entries": [{"key": "a", "value": "1"}, {"key": "", "value": "2"}]}',
        400,
        "invalid",
    ),
    (
        "POST",
        "/v1/db/-/t",
        json.dumps({"entries": [{"key": "a", "value": "1"}, {"key": "b", "value": "x" * 70000}]}).encode(),
        413,
        "too_large",
    ),
    ("POST", "/v1/db/ov/t", b'{"entries": [{"key": "a", "value": "1"}]}', 404, "not_joined"),
    ("PUT", "/v1/db/-/t", b"", 405, "method_not_allowed"),
    ("GET", "/v1/db/a/b/c/d", b"", 404, "not_found"),
    ("POST", "/v1/db/-/t/k", b"", 405, "method_not_allowed"),
    ("PUT", "/v1/db/stats", b"", 405, "method_not_allowed"),
    ("PATCH", "/v1/db/networks/ov", b"", 405, "method_not_allowed"),
]


@pytest.mark.parametrize("method, target, body, status, code", BAD)
async def test_bad_requests_are_json_errors_and_change_nothing(tmp_path, method, target, body, status, code):
    async with trio.open_nursery() as nursery:
        cluster = DbCluster(nursery, tmp_path)
        node = await cluster.start("a", "127.0.8.13", api=True)
        before = (
            node.db.core.stats(),
            node.db.journal_seq,
            node.db.core.walk_table("t", "", include_deleted=True),
        )
        got, err = await api_request(cluster.api("a"), method, target, raw=body)
        assert (got, err["code"]) == (status, code), err
        assert err["message"]
        if code == "too_large":
            assert "the limit is 65536" in err["message"]  # the core's message
        after = (
            node.db.core.stats(),
            node.db.journal_seq,
            node.db.core.walk_table("t", "", include_deleted=True),
        )
        assert after == before
        nursery.cancel_scope.cancel()


async def test_hidden_entries_need_an_explicit_read(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster, a, b = await two_nodes(nursery, tmp_path)
        status, _ = await api_request(b, "PUT", "/v1/db/-/svc/x", {"value": "1"})
        await wait_until_async(lambda: _status(a, "/v1/db/-/svc/x"), 200, "x at a")
        cluster.kill("b")
        await wait_until_async(lambda: _status(a, "/v1/db/-/svc/x"), 404, "x hidden at a", timeout=10)
        status, err = await api_request(a, "GET", "/v1/db/-/svc/x")
        assert "hidden" in err["message"] and "?hidden=true" in err["message"]
        status, e = await api_request(a, "GET", "/v1/db/-/svc/x?hidden=true")
        assert status == 200 and e["hidden"] is True and e["owner"] == "b"
        status, listing = await api_request(a, "GET", "/v1/db/-/svc?hidden=1")
        assert [(x["key"], x["hidden"]) for x in listing["entries"]] == [("x", True)]
        nursery.cancel_scope.cancel()


async def _status(path: str, target: str) -> int:
    return (await api_request(path, "GET", target))[0]


async def test_an_agent_without_networkdb_says_so(tmp_path):
    from meshnet.gossip.config import local
    from meshnet.runtime import Node
    from tests.shell.helpers import fake_factory, running

    path = str(tmp_path / "x.sock")
    node = Node(local(), name="plain", bind=("127.0.8.14", 0), swim_factory=fake_factory())
    async with running(node, api_path=path):
        status, err = await api_request(path, "GET", "/v1/db/stats")
        assert status == 404 and err["code"] == "no_networkdb"


async def test_meshnetctl_db_commands_and_exit_codes(tmp_path, capsys):
    async with trio.open_nursery() as nursery:
        cluster, a, b = await two_nodes(nursery, tmp_path)

        async def run(path: str, *argv: str) -> tuple[int, str, str]:
            rc = await trio.to_thread.run_sync(ctl.main, ["--api", path, "db", *argv])
            out = capsys.readouterr()
            return rc, out.out, out.err

        rc, out, _ = await run(a, "join", "ov")
        assert rc == 0 and out.strip() == "joined network ov (synced with 0 peers)"
        await wait_until(lambda: cluster.db("b").peers("ov") == ["a"], 5, "a's attachment to ov at b")
        rc, out, _ = await run(b, "join", "ov")
        assert rc == 0 and "synced with 1 peers" in out
        rc, out, _ = await run(a, "put", "ov", "endpoints", "ep1", "10.0.0.1")
        assert rc == 0 and out.startswith("endpoints/ep1 in network ov: owner a, ltime ")
        rc, _, _ = await run(a, "put", "ov", "endpoints", "raw", "AAEC", "--b64")
        assert rc == 0
        rc, _, _ = await run(a, "put", "-", "services", "web", "vip", "--create")
        assert rc == 0
        await wait_until_async(lambda: _status(b, "/v1/db/ov/endpoints/raw"), 200, "raw at b")

        rc, out, _ = await run(b, "ls", "ov", "endpoints")
        lines = out.splitlines()
        assert lines[0].split() == ["KEY", "VALUE", "OWNER", "LTIME", "DELETED", "HIDDEN"]
        assert lines[1].split()[:3] == ["ep1", "10.0.0.1", "a"] and lines[2].split()[:3] == [
            "raw",
            "b64:AAEC",
            "a",
        ]
        rc, out, _ = await run(b, "ls", "ov", "endpoints", "--json")
        assert rc == 0 and [e["key"] for e in json.loads(out)["entries"]] == ["ep1", "raw"]
        rc, out, _ = await run(b, "get", "ov", "endpoints", "ep1")
        assert rc == 0 and "value:    10.0.0.1" in out and "owner:    a" in out
        rc, out, _ = await run(b, "rm", "ov", "endpoints", "ep1")
        assert rc == 0 and out.startswith("deleted endpoints/ep1 in network ov")
        rc, out, _ = await run(b, "ls", "ov", "endpoints")
        assert any(line.split()[0] == "ep1" and line.split()[4] == "yes" for line in out.splitlines()[1:])
        rc, out, _ = await run(b, "ls", "ov", "endpoints", "--live")
        assert [line.split()[0] for line in out.splitlines()[1:]] == ["raw"]
        rc, out, _ = await run(a, "peers", "ov")
        assert out.splitlines()[1].split() == ["b", f"127.0.8.12:{cluster.ports['b']}", "alive"]
        rc, out, _ = await run(a, "networks")
        assert [line.split()[0] for line in out.splitlines()[1:]] == ["-", "ov"]
        rc, out, _ = await run(a, "stats")
        assert rc == 0 and out.startswith("cluster id: ") and "network ov:" in out
        rc, out, _ = await run(a, "stats", "ov", "--json")
        assert rc == 0 and json.loads(out)["network"] == "ov"

        # Exit codes: 1 for not found / not joined / conflicts, 2 for usage (including refused input).
        assert (await run(b, "get", "ov", "endpoints", "ep1"))[0] == 1
        assert (await run(b, "get", "nope", "t", "k"))[0] == 1
        assert (await run(a, "put", "-", "services", "web", "x", "--create"))[0] == 1
        rc, _, err = await run(a, "put", "-", "t", "k", "x" * 70000)
        assert rc == 2 and "65536" in err and len(err.strip().splitlines()) == 1
        assert (await run(a, "put", "-", "t", "k", "**", "--b64"))[0] == 2
        assert (await run(a, "leave", "-"))[0] == 2
        rc, out, _ = await run(b, "leave", "ov")
        assert rc == 0 and out.strip() == "left network ov"
        nursery.cancel_scope.cancel()


def test_meshnetctl_db_usage_errors_exit_2(capsys):
    for argv in (
        ["db"],
        ["db", "put", "n", "t", "k"],
        ["db", "frob"],
        ["db", "put", "n", "t", "k", "v", "--create", "--update"],
    ):
        with pytest.raises(SystemExit) as exc:
            ctl.main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_meshnetctl_db_with_no_agent_is_exit_1(tmp_path, capsys):
    assert ctl.main(["--api", str(tmp_path / "none.sock"), "db", "stats"]) == 1
    assert "no meshnet agent" in capsys.readouterr().err
