"""docs/protocol.md, section 1: connecting, and every reason a handshake is refused."""

import asyncio

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from aether_tornado import app
from aether_tornado.app import FILES_RESERVED

from .conftest import ws_url
from .processes import ServerProcess
from .timing import scaled, until
from .wsclient import Client, RawSocket, upgrade_request

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def handshake(port: int, path: str, **headers: str) -> tuple[int, dict]:
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}{path}", headers={**UPGRADE, **headers}, raise_error=False, request_timeout=scaled(5)
    )
    return response.code, orjson.loads(response.body) if response.body else {}


async def test_snapshot_first_then_own_join(url):
    client = await Client.connect(url("g_room", "c_alice"))
    snapshot = await client.recv()
    assert snapshot == {
        "version": "3",
        "msg_type": "presence",
        "target": "echo",
        "from_id": None,
        "to_id": None,
        "group_id": "g_room",
        "cmd": None,
        "msg": None,
        "payload": {"event": "snapshot", "clients": ["c_alice"]},
        "sent_at": snapshot["sent_at"],
    }
    join = await client.recv()
    assert join["target"] == "group" and join["from_id"] == "c_alice"
    assert join["payload"] == {"event": "join", "client_id": "c_alice"}


@pytest.mark.parametrize(
    ("group_id", "client_id", "field", "why"),
    [
        ("12345", "c_ok", "group_id", "all digits"),
        ("g_ok", "0", "client_id", "all digits"),
        ("g_ok", "a" * 65, "client_id", "at most 64"),
        ("g.ok", "c_ok", "group_id", "only A-Z"),
        ("g_ok", "c%20x", "client_id", "only A-Z"),
        ("g_ok", "a%2Fb", "client_id", "only A-Z"),
        ("g_ok", "%FF%FE", "client_id", "only A-Z"),
        ("g.bad", "c.bad", "group_id", "only A-Z"),
    ],
)
async def test_invalid_id_is_refused_with_400(server, group_id, client_id, field, why):
    status, body = await handshake(server.port, f"/v3/ws/group/{group_id}/client/{client_id}")
    assert status == 400
    assert body["code"] == "invalid_id" and body["field"] == field
    assert why in body["msg"] and body["msg"].startswith(field)


@pytest.mark.parametrize("client_id", ["a" * 64, "-", "_", "0a", "A-Z_09"])
async def test_edge_ids_are_accepted(url, client_id):
    client = await Client.joined(url("g_edge", client_id))
    assert client.snapshot["payload"]["clients"] == [client_id]


@pytest.mark.parametrize(
    "path",
    ["/v3/ws/group//client/c_ok", "/v3/ws/group/g_ok/client/c_ok/extra", "/v3/ws/group/g_ok/client/", "/v3/ws/x"],
)
async def test_paths_that_do_not_match_are_404(server, path):
    status, body = await handshake(server.port, path)
    assert status == 404 and body["code"] == "not_found"


async def test_origin_rules(start_server):
    server = await start_server(allowed_origins=("https://app.example.com",))
    path = "/v3/ws/group/g_o/client/c_o"
    status, body = await handshake(server.port, path, Origin="https://evil.example.com")
    assert status == 403
    assert body == {"code": "forbidden_origin", "field": None, "msg": body["msg"]}
    assert "evil.example.com" in body["msg"]
    for origin in (f"http://127.0.0.1:{server.port}", "https://app.example.com"):
        client = await Client.joined(ws_url(server, "g_o", "c_o"), headers={"Origin": origin})
        client.close()
    # No Origin at all: a non-browser client.
    await Client.joined(ws_url(server, "g_o", "c_no_origin"))


async def test_connection_limit_is_503_until_a_slot_frees(start_server):
    server = await start_server(max_connections=2)
    first = await Client.joined(ws_url(server, "g_cap", "c_1"))
    second = await Client.joined(ws_url(server, "g_cap", "c_2"))
    status, body = await handshake(server.port, "/v3/ws/group/g_cap/client/c_3")
    assert status == 503 and body["code"] == "over_capacity" and body["field"] is None
    first.close()
    await second.recv_where(event="leave", client_id="c_1")  # the server has let go of it
    third = await Client.joined(ws_url(server, "g_cap", "c_3"))
    assert third.snapshot["payload"]["clients"] == ["c_2", "c_3"]


async def test_a_process_allowed_few_open_files_holds_what_fits_and_refuses_the_rest_with_503():
    server = await ServerProcess.launch("--max-connections", "1000", open_files=FILES_RESERVED + 10)
    try:
        assert server.lines("max_connections lowered from 1000 to 10")
        clients = [await Client.joined(server.url("g_fd", f"c_{n}")) for n in range(10)]
        status, body = await handshake(server.port, "/v3/ws/group/g_fd/client/c_more")
        assert (status, body["code"]) == (503, "over_capacity")
        clients[0].close()
        await clients[1].recv_where(event="leave", client_id="c_0")
        await Client.joined(server.url("g_fd", "c_more"))
    finally:
        await server.stopped()


async def test_simultaneous_handshakes_cannot_overshoot_the_limit(start_server):
    server = await start_server(max_connections=2)

    async def attempt(n: int) -> Client | None:
        try:
            return await Client.connect(ws_url(server, "g_rush", f"c_{n}"))
        except HTTPClientError as refusal:
            assert refusal.code == 503 and orjson.loads(refusal.response.body)["code"] == "over_capacity"
            return None

    clients = await asyncio.gather(*(attempt(n) for n in range(30)))
    assert sum(client is not None for client in clients) == 2


async def test_origins_in_settings_match_whatever_their_case_or_slash(start_server):
    server = await start_server(allowed_origins=("https://App.Example.com/",))
    await Client.joined(ws_url(server, "g_o", "c_o"), headers={"Origin": "https://app.example.com"})
    anyone = await start_server(allowed_origins=("*",))
    await Client.joined(ws_url(anyone, "g_o", "c_o"), headers={"Origin": "https://elsewhere.example"})


async def test_token_is_ignored_without_authentication(url):
    client = await Client.joined(url("g_t", "c_t") + "?token=whatever")
    assert client.snapshot["payload"]["clients"] == ["c_t"]


async def test_one_client_may_hold_several_connections(url):
    watcher = await Client.joined(url("g_multi", "c_watch"))
    tab1 = await Client.joined(url("g_multi", "c_tabs"))
    await watcher.recv_where(event="join", client_id="c_tabs")
    tab2 = await Client.joined(url("g_multi", "c_tabs"))
    assert tab2.snapshot["payload"]["clients"] == ["c_tabs", "c_watch"]
    elsewhere = await Client.joined(url("g_other", "c_tabs"))
    assert elsewhere.snapshot["payload"]["clients"] == ["c_tabs"]
    tab1.close()
    await tab1.closed()
    # Still present through tab2: the group hears no leave, and no second join ever came.
    await watcher.send(msg_type="msg", target="group", msg="marker")
    message = await watcher.recv()
    assert message["msg"] == "marker", message
    tab2.close()
    leave = await watcher.recv_where(event="leave")
    assert leave["payload"] == {"event": "leave", "client_id": "c_tabs", "reason": "closed"}


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({"Sec-WebSocket-Version": "8"}, 426, "Only WebSocket version 13"),
        ({"Sec-WebSocket-Key": ""}, 400, "Sec-WebSocket-Key is missing"),
        ({"Upgrade": "h2c"}, 400, "send an upgrade request"),
    ],
)
async def test_a_request_that_is_no_websocket_upgrade_we_take_is_refused_with_why(server, headers, status, says):
    code, body = await handshake(server.port, "/v3/ws/group/g_up/client/c_up", **headers)
    assert (code, body["code"]) == (status, "not_websocket") and says in body["msg"]


async def read_answer(raw: RawSocket) -> bytes:
    """Everything the server sends until it closes."""
    return await asyncio.wait_for(raw.reader.read(), scaled(5))


@pytest.mark.parametrize("body", [b"Content-Length: 2\r\n\r\nxx", b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"])
async def test_an_upgrade_request_with_a_body_is_refused(server, body):
    raw = await RawSocket.connected(server.port)
    raw.writer.write(upgrade_request(server.port, "/v3/ws/group/g_up/client/c_up")[:-2] + body)
    head, _, answer = (await read_answer(raw)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert orjson.loads(answer) == {"code": "not_websocket", "field": None, "msg": "An upgrade request has no body."}


@pytest.mark.parametrize("pieces", [[1, 5, 40], [3], [11, 1]])
async def test_a_handshake_that_arrives_in_pieces_is_served(server, pieces):
    """The first bytes decide where a connection goes: a client that sends them a few at a time is waited for."""
    raw = await RawSocket.connected(server.port)
    request = upgrade_request(server.port, "/v3/ws/group/g_slow/client/c_slow")
    start = 0
    for size in pieces:
        raw.writer.write(request[start : start + size])
        await raw.writer.drain()
        await asyncio.sleep(0.02)  # lets the server look at what came so far: the point of the test
        start += size
    raw.writer.write(request[start:])
    response = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), scaled(5))
    assert response.startswith(b"HTTP/1.1 101")
    snapshot = orjson.loads((await raw.read_frame())[1])
    assert snapshot["payload"] == {"event": "snapshot", "clients": ["c_slow"]}


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /v3/ws/group/g/client/c HTTP/9\r\n\r\n",
        b"GET /v3/ws/group/g/client/c HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /v3/ws/group/g/client/c HTTP/1.1\r\nX: " + b"y" * 70_000 + b"\r\n\r\n",
    ],
)
async def test_a_request_head_that_is_no_http_or_too_large_is_answered_400_and_closed(server, request_head):
    raw = await RawSocket.connected(server.port)
    raw.writer.write(request_head)
    answer = await read_answer(raw)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and answer.endswith(
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    fresh = await Client.joined(f"ws://127.0.0.1:{server.port}/v3/ws/group/g_after/client/c_after")
    fresh.close()


async def test_a_refused_client_gets_its_whole_answer_even_with_frames_sent_after_its_request(server):
    """Closing with the client's bytes unread would reset the connection: the answer goes first, then the end."""
    raw = await RawSocket.connected(server.port)
    frame = RawSocket.frame(0x1, b"x" * 100_000)
    raw.writer.write(upgrade_request(server.port, "/v3/ws/group/12345/client/c_early") + frame)
    answer = await read_answer(raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request") and b"X-Content-Type-Options: nosniff" in head
    assert orjson.loads(body)["code"] == "invalid_id"


async def test_a_connection_that_stops_within_its_request_head_is_closed(start_server, monkeypatch):
    monkeypatch.setattr(app, "HTTP_IDLE_TIMEOUT", 0.3)
    server = await start_server()
    for first in (b"GET /v3", b"GET /v3/ws/group/g/client/c HTTP/1.1\r\nHost: x\r\n"):
        raw = await RawSocket.connected(server.port)
        raw.writer.write(first)
        assert await read_answer(raw) == b""
    await until(lambda: server.acceptor.open_connections == 0)


async def read_response(raw: RawSocket) -> tuple[bytes, bytes]:
    """One HTTP response with a Content-Length: its head and its body."""
    head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), scaled(5))
    length = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return head, await asyncio.wait_for(raw.reader.readexactly(int(length.split(b":")[1])), scaled(5))


async def test_a_handshake_on_a_connection_kept_alive_after_another_request_is_served(server):
    """A proxy (nginx with upstream keepalive) sends a handshake on a connection that served the API before."""
    raw = await RawSocket.connected(server.port)
    raw.writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), scaled(5))
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    await asyncio.wait_for(raw.reader.readexactly(length), scaled(5))
    raw.writer.write(upgrade_request(server.port, "/v3/ws/group/12345/client/c_kept"))
    refused = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), scaled(5))
    assert refused.startswith(b"HTTP/1.1 400 ") and b"X-Frame-Options: DENY" in refused
    length = int(next(line for line in refused.split(b"\r\n") if line.startswith(b"Content-Length")).split(b":")[1])
    assert orjson.loads(await raw.reader.readexactly(length))["code"] == "invalid_id"
    raw.writer.write(upgrade_request(server.port, "/v3/ws/group/g_kept/client/c_kept"))
    response = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), scaled(5))
    assert response.startswith(b"HTTP/1.1 101")
    snapshot = orjson.loads((await raw.read_frame())[1])
    assert snapshot["payload"] == {"event": "snapshot", "clients": ["c_kept"]}
