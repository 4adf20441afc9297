"""docs/protocol.md, section 1: connecting, and every reason a handshake is refused."""

import asyncio

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from aether_tornado.app import FILES_RESERVED

from .conftest import ws_url
from .processes import ServerProcess
from .timing import scaled
from .wsclient import Client

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
