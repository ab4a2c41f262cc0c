"""The local HTTP API over a unix socket: routes, errors as JSON, robustness, socket mode."""

from __future__ import annotations

import json
import os
import stat

import pytest
import trio

from meshnet.core.errors import ApiError, ConfigError
from meshnet.gossip.config import local
from meshnet.runtime import Node
from meshnet.runtime.api import open_api_socket, parse_head
from tests.shell.helpers import fake_factory, http_raw, running, split_response, wait_until


def make_node(**kw) -> Node:
    return Node(
        local(), name="api-node", bind=("127.0.0.45", 0), swim_factory=fake_factory(), meta=b"\xff\x80", **kw
    )


def get(target: str, method: str = "GET") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()


async def request(path: str, data: bytes) -> tuple[int, dict, object]:
    status, headers, body = split_response(await http_raw(path, data))
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    return status, headers, json.loads(body)


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "run" / "a.sock")  # the directory is created by the agent


async def test_members_and_agent(sock_path):
    node = make_node()
    async with running(node, api_path=sock_path):
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
        status, _, body = await request(sock_path, get("/v1/members"))
        assert status == 200
        assert body["members"][0] == {
            "name": "api-node",
            "addr": "127.0.0.45",
            "port": node.bound_addr[1],
            "state": "alive",
            "incarnation": 1,
            "tags": {},
        }
        assert body["members"][1]["tags"] == {"role": "web"}
        assert body["members"][1]["state"] == "suspect"
        status, _, info = await request(sock_path, get("/v1/agent?verbose=1"))
        assert status == 200
        assert info["name"] == "api-node" and info["port"] == node.bound_addr[1]
        assert info["health_score"] == 0
        assert info["members"]["alive"] == 1 and info["members"]["suspect"] == 1
        assert info["stats"]["gossip"] == {"fake_counter": 7}
        assert "udp_received" in info["stats"]["runtime"]
    assert not os.path.exists(sock_path)  # removed at shutdown


async def test_errors_are_json_with_fitting_status(sock_path):
    node = make_node()
    async with running(node, api_path=sock_path):
        status, _, body = await request(sock_path, get("/v1/nope"))
        assert status == 404 and body["code"] == "not_found" and "/v1/members" in body["message"]
        status, headers, body = await request(sock_path, get("/v1/members", "DELETE"))
        assert status == 405 and headers["allow"] == "GET" and body["code"] == "method_not_allowed"
        status, _, body = await request(sock_path, get("/v1/leave"))
        assert status == 405


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/members\r\n\r\n", 400),
        (b"GET /v1/members HTTP/2.0\r\n\r\n", 505),
        (b"GET v1/members HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/members HTTP/1.1\r\nNoColonHere\r\n\r\n", 400),
        (b"GET /v1/members HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        (b"GET /v1/members HTTP/1.1\r\n folded\r\n\r\n", 400),
        (b"GET /v1/members HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /v1/members HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /v1/leave HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST /v1/leave HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /v1/members HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 400),  # body cut short by EOF
        (b"GET /\xff\xfe HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/members HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(200)) + b"\n\n", 400),  # a TLS hello
    ],
)
async def test_malformed_requests_get_400_family_and_the_node_survives(sock_path, raw, status):
    node = make_node()
    async with running(node, api_path=sock_path):
        with trio.fail_after(5):
            stream = await trio.open_unix_socket(sock_path)
            async with stream:
                await stream.send_all(raw)
                await stream.send_eof()
                out = b""
                while chunk := await stream.receive_some(65536):
                    out += chunk
        got, _, body = split_response(out)
        assert got == status
        err = json.loads(body)
        assert set(err) == {"code", "message"} and err["message"]
        # ... and the next request is served.
        assert (await request(sock_path, get("/v1/members")))[0] == 200


async def test_clients_that_hang_up_or_stall_do_not_hurt(sock_path, monkeypatch):
    from meshnet.runtime import api

    monkeypatch.setattr(api, "REQUEST_TIMEOUT", 0.2)
    node = make_node()
    async with running(node, api_path=sock_path):
        assert await http_raw(sock_path, b"") == b""  # connect, close
        assert await http_raw(sock_path, b"GET /v1/mem") != b""  # half a head then EOF: 400
        stream = await trio.open_unix_socket(sock_path)
        async with stream:
            await stream.send_all(b"GET /v1/members HTTP/1.1\r\n")  # then stall
            with trio.fail_after(3):
                out = await stream.receive_some(65536)
        assert split_response(out)[0] == 408
        assert (await request(sock_path, get("/v1/members")))[0] == 200


async def test_post_leave_leaves_then_stops_the_node(sock_path):
    node = make_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: node.run(api_path=sock_path, task_status=task_status))
        status, _, body = await request(sock_path, get("/v1/leave", "POST"))
        assert status == 200 and body == {"left": True, "drained": True}
        with trio.fail_after(3):
            await node.wait_stopped()
    assert node.swim.left


async def test_stale_socket_is_replaced_and_a_live_one_refused(sock_path):
    os.makedirs(os.path.dirname(sock_path))
    stale = trio.socket.socket(trio.socket.AF_UNIX)
    await stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens: a crashed agent's leftover
    node = make_node()
    async with running(node, api_path=sock_path):
        assert (await request(sock_path, get("/v1/members")))[0] == 200
        with pytest.raises(ConfigError, match="another agent is serving"):
            await open_api_socket(sock_path)
        await wait_until(lambda: os.path.exists(sock_path), 1, "socket still there")
        assert (await request(sock_path, get("/v1/members")))[0] == 200


async def test_a_regular_file_at_the_api_path_is_refused(tmp_path):
    path = tmp_path / "notasocket"
    path.write_text("x")
    with pytest.raises(ConfigError, match="not a socket"):
        await open_api_socket(str(path))


def test_parse_head_accepts_lenient_but_valid_heads():
    method, target, headers = parse_head(b"GET /v1/agent?x=1 HTTP/1.0\nHost:  a \nX-A: 1\nx-a: 2")
    assert (method, target) == ("GET", "/v1/agent?x=1")
    assert headers == {"host": "a", "x-a": "1, 2"}
    with pytest.raises(ApiError) as info:
        parse_head(b"GET /a HTTP/1.1\r\n\r\nX: y")
    assert info.value.status == 400


def test_tags_decode_never_raises_and_encode_names_the_limit():
    from meshnet.runtime.tags import decode_tags, encode_tags

    assert decode_tags(encode_tags({"role": "web", "dc": "lab"})) == {"dc": "lab", "role": "web"}
    assert decode_tags(b"\xff\xc1") == {"meta": "ffc1"}
    assert decode_tags(b"\xff\x92\x01\x02") == {"meta": "ff920102"}
    assert decode_tags(b"db") == {"role": "db"}
    with pytest.raises(ConfigError, match="fewer or shorter tags"):
        encode_tags({"k": "v" * 600})
