"""The backend HTTP API, health and metrics (docs/protocol.md, "The HTTP API")."""

import asyncio

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from .conftest import ws_url
from .httpapi import fetch_with, http
from .timing import scaled
from .wsclient import Client


async def member(server, group_id: str, client_id: str) -> Client:
    client = await Client.joined(ws_url(server, group_id, client_id))
    await client.recv_where(event="join", client_id=client_id)
    return client


async def test_publish_to_a_group_direct_and_broadcast(server):
    alice = await member(server, "g_api", "c_alice")
    bob = await member(server, "g_other", "c_bob")
    status, body = await http(
        server, "POST", "/v3/publish", {"msg_type": "cmd", "target": "group", "group_id": "g_api", "cmd": "RELOAD"}
    )
    assert status == 202 and body["status"] == "accepted" and body["sent_at"].endswith("Z")
    message = await alice.recv()
    assert (message["cmd"], message["from_id"], message["group_id"], message["sent_at"]) == (
        "RELOAD",
        None,
        "g_api",
        body["sent_at"],
    )
    status, _ = await http(
        server, "POST", "/v3/publish", {"msg_type": "msg", "target": "direct", "to_id": "c_bob", "from_id": "billing"}
    )
    assert status == 202
    message = await bob.recv()
    assert (message["target"], message["from_id"], message["group_id"]) == ("direct", "billing", None)
    status, _ = await http(server, "POST", "/v3/publish", {"msg_type": "msg", "target": "broadcast", "msg": "all"})
    assert status == 202
    assert (await alice.recv())["msg"] == (await bob.recv())["msg"] == "all"


@pytest.mark.parametrize(
    ("body", "code", "fields"),
    [
        (b"not json", "invalid_json", []),
        ({"msg_type": "msg", "target": "group"}, "invalid_message", ["group_id"]),
        ({"msg_type": "msg", "target": "echo"}, "invalid_message", ["target"]),
        ({"msg_type": "heartbeat", "target": "echo"}, "invalid_message", ["target"]),
        ({"msg_type": "msg", "target": "direct"}, "invalid_message", ["to_id"]),
        ({"msg_type": "msg", "target": "group", "group_id": "1", "extra": 1}, "invalid_message", ["group_id", "extra"]),
    ],
)
async def test_publish_refuses_bad_messages_with_400(server, body, code, fields):
    status, answer = await http(server, "POST", "/v3/publish", body)
    assert status == 400 and answer["code"] == code and answer["msg"]
    assert [error["field"] for error in answer["errors"]] == fields


async def test_publish_direct_to_nobody_is_404(server):
    status, body = await http(server, "POST", "/v3/publish", {"msg_type": "msg", "target": "direct", "to_id": "c_none"})
    assert status == 404 and body["code"] == "recipient_offline"


async def test_a_body_over_the_message_limit_is_refused(start_server):
    server = await start_server(max_message_bytes=1000)
    body = {"msg_type": "msg", "target": "broadcast", "msg": "x" * 2000}
    status, _ = await http(server, "POST", "/v3/publish", body)
    assert status == 400  # Tornado refuses the body before any handler sees it


async def test_api_key_guards_every_v3_route_but_not_health_or_metrics(start_server):
    server = await start_server(api_key="s3cret-of-16-chars")
    message = {"msg_type": "msg", "target": "broadcast"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-of-16-chars"}):
        status, body = await http(server, "POST", "/v3/publish", message, **headers)
        assert status == 401 and body["code"] == "unauthorized"
        for route in ("/v3/groups/g_x/presence", "/v3/groups/g_x/history", "/v3/groups", "/v3/processes"):
            status, body = await http(server, "GET", route, **headers)
            assert status == 401
        status, body = await http(server, "POST", "/v3/clients/c_x/disconnect", {}, **headers)
        assert status == 401 and body["code"] == "unauthorized"
    assert (await http(server, "POST", "/v3/publish", message, Authorization="Bearer s3cret-of-16-chars"))[0] == 202
    assert (await http(server, "GET", "/v3/groups/g_x/presence", Authorization="Bearer s3cret-of-16-chars"))[0] == 200
    assert (await http(server, "GET", "/v3/groups/g_x/history", Authorization="Bearer s3cret-of-16-chars"))[0] == 200
    assert (await http(server, "GET", "/v3/processes", Authorization="Bearer s3cret-of-16-chars"))[0] == 200
    assert (await http(server, "GET", "/healthz"))[0] == 200
    assert (await http(server, "GET", "/metrics"))[0] == 200


KEY, READ_KEY = "s3cret-of-16-chars", "r3ad-only-of-16-chars"


async def test_the_read_only_key_reads_everything_and_changes_nothing(start_server):
    full, read = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {READ_KEY}"}
    server = await start_server(api_key=full["Authorization"][7:], api_read_key=read["Authorization"][7:])
    bob = await member(server, "g_ro", "c_bob")
    await bob.send(msg_type="msg", target="group", msg="kept")
    await bob.recv_where(msg="kept")
    for route in ("/v3/groups/g_ro/presence", "/v3/groups", "/v3/processes"):
        assert (await http(server, "GET", route, **read))[0] == 200, route
    assert (await http(server, "GET", "/v3/processes", **read))[1]["access"] == "read"
    assert (await http(server, "GET", "/v3/processes", **full))[1]["access"] == "full"
    status, body = await http(server, "GET", "/v3/groups/g_ro/history", **read)
    assert status == 200 and [message["msg"] for message in body["messages"]] == ["kept"]
    message = {"msg_type": "msg", "target": "group", "group_id": "g_ro", "msg": "not with this key"}
    for method, route, body in (
        ("POST", "/v3/publish", message),
        ("POST", "/v3/clients/c_bob/disconnect", {}),
        ("DELETE", "/v3/groups/g_ro/history", None),
    ):
        status, answer = await http(server, method, route, body, **read)
        assert status == 403 and answer["code"] == "forbidden" and "full API key" in answer["msg"], route
    assert len((await http(server, "GET", "/v3/groups/g_ro/history", **read))[1]["messages"]) == 1
    assert (await http(server, "DELETE", "/v3/groups/g_ro/history", **full)) == (
        200,
        {"status": "removed", "group_id": "g_ro"},
    )
    assert (await http(server, "GET", "/v3/groups/g_ro/history", **read))[1]["messages"] == []
    assert (await http(server, "POST", "/v3/publish", message, **full))[0] == 202
    assert (await bob.recv_where(msg="not with this key"))["from_id"] is None


async def test_removing_history_is_refused_with_history_off_or_a_bad_id(start_server):
    server = await start_server(history_size=0)
    status, body = await http(server, "DELETE", "/v3/groups/g_off/history")
    assert status == 404 and body["code"] == "history_off"
    status, body = await http(server, "DELETE", "/v3/groups/123/history")
    assert status == 400 and body["code"] == "invalid_id"


async def test_a_payload_too_deep_to_encode_is_a_400_not_a_500(server):
    deep = b'{"a":' * 300 + b"{}" + b"}" * 300
    status, body = await http(
        server, "POST", "/v3/publish", b'{"msg_type": "msg", "target": "broadcast", "payload": ' + deep + b"}"
    )
    assert status == 400 and body["code"] == "invalid_message" and body["errors"][0]["field"] == "payload"


async def test_publish_takes_only_json_so_no_page_of_another_site_can_send_unasked(server):
    for content_type in (None, "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded"):
        headers = {} if content_type is None else {"Content-Type": content_type}
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{server.port}/v3/publish",
            method="POST",
            body=orjson.dumps({"msg_type": "msg", "target": "broadcast"}),
            headers=headers,
            raise_error=False,
            request_timeout=scaled(5),
        )
        assert response.code == 415, content_type
        assert orjson.loads(response.body)["code"] == "unsupported_media_type"
    status, _ = await http(server, "POST", "/v3/publish", {"msg_type": "msg", "target": "broadcast"},
                           **{"Content-Type": "application/json; charset=utf-8"})  # fmt: skip
    assert status == 202


async def test_group_presence(server):
    await member(server, "g_pres", "c_b")
    await member(server, "g_pres", "c_A")
    assert await http(server, "GET", "/v3/groups/g_pres/presence") == (
        200,
        {"group_id": "g_pres", "clients": ["c_A", "c_b"]},
    )
    assert await http(server, "GET", "/v3/groups/g_empty/presence") == (200, {"group_id": "g_empty", "clients": []})
    status, body = await http(server, "GET", "/v3/groups/123/presence")
    assert status == 400 and body["code"] == "invalid_id" and body["errors"][0]["field"] == "group_id"


async def test_healthz_alone(server):
    status, body = await http(server, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok" and body["bridge"] == "memory" and body["connections"] == 0


async def test_metrics_count_connections_messages_and_errors(server):
    alice = await member(server, "g_m", "c_alice")
    await alice.send(msg_type="msg", target="group", msg="one")
    await alice.recv_where(msg="one")
    await alice.send_raw("garbage")
    await alice.recv_where(cmd="ERROR")
    status, text = await http(server, "GET", "/metrics")
    assert status == 200
    lines = set(text.splitlines())
    assert "aether_connections 1" in lines
    assert 'aether_messages_in_total{msg_type="msg",target="group"} 1' in lines
    assert 'aether_messages_out_total{msg_type="msg",target="group"} 1' in lines
    assert 'aether_errors_total{code="invalid_json"} 1' in lines
    assert "# TYPE aether_bridge_delivery_seconds histogram" in lines
    assert {"aether_bridge_backlog_bytes 0", "aether_presence_backlog_leases 0"} <= lines


async def test_every_answer_carries_security_headers_and_pages_a_strict_policy(server):
    fetch = AsyncHTTPClient().fetch
    base = f"http://127.0.0.1:{server.port}"
    for path in ("/", "/v3/console", "/v3/client/aether-v3.js", "/healthz", "/nowhere", "/v3/ws/group/1/client/c"):
        response = await fetch(base + path, raise_error=False)
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert response.headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"], path
    page = await fetch(base + "/v3/console")
    policy = page.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in policy and "script-src 'self' 'sha256-" in policy and "connect-src 'self'" in policy


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    """A process that records in memory, or one that records in Redis."""
    if request.param == "memory":
        return request.getfixturevalue("server")
    return request.getfixturevalue("start_process").now()


async def test_group_history_is_the_latest_messages_oldest_first_with_positions(backend):
    for number in range(5):
        message = {"msg_type": "msg", "target": "group", "group_id": "g_h", "msg": str(number)}
        assert (await http(backend, "POST", "/v3/publish", message))[0] == 202
    await http(backend, "POST", "/v3/publish", {"msg_type": "msg", "target": "group", "group_id": "g_other"})
    status, body = await http(backend, "GET", "/v3/groups/g_h/history?limit=3")
    assert status == 200 and body["group_id"] == "g_h"
    assert [message["msg"] for message in body["messages"]] == ["2", "3", "4"]
    offsets = [int(message["position"].rsplit(":", 1)[1]) for message in body["messages"]]
    assert offsets == [3, 4, 5]
    assert all(message["group_id"] == "g_h" and message["sent_at"] for message in body["messages"])
    status, body = await http(backend, "GET", "/v3/groups/g_h/history")
    assert len(body["messages"]) == 5
    assert await http(backend, "GET", "/v3/groups/g_empty/history") == (
        200,
        {"group_id": "g_empty", "messages": [], "more": False},
    )


@pytest.mark.parametrize("limit", ["0", "-1", "x", "1001", "1.5"])
async def test_a_history_limit_out_of_range_is_a_400(server, limit):
    status, body = await http(server, "GET", f"/v3/groups/g_h/history?limit={limit}")
    assert (status, body["code"], body["errors"][0]["field"]) == (400, "invalid_limit", "limit")


async def test_group_history_refuses_a_bad_id_and_says_when_history_is_off(start_server):
    server = await start_server(history_size=0)
    assert (await http(server, "GET", "/v3/groups/123/history"))[1]["code"] == "invalid_id"
    status, body = await http(server, "GET", "/v3/groups/g_h/history")
    assert (status, body["code"]) == (404, "history_off")


async def test_the_browser_client_is_served_with_cors_to_the_allowed_origins_only(start_server):
    server = await start_server(allowed_origins=("https://app.example.com",))
    for asset in ("aether-v3.js", "aether-v3.d.ts"):
        allowed = await fetch_with(server, f"/v3/client/{asset}", Origin="https://app.example.com")
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert allowed.headers["Vary"] == "Origin"
        other = await fetch_with(server, f"/v3/client/{asset}", Origin="https://evil.example.net")
        assert "Access-Control-Allow-Origin" not in other.headers
    alone = await start_server()
    assert "Access-Control-Allow-Origin" not in (await fetch_with(alone, "/v3/client/aether-v3.js")).headers


async def test_disconnect_closes_every_connection_of_a_client_with_the_code_and_reason_given(server):
    watcher = await Client.joined(ws_url(server, "g_ops", "c_watch"))
    tabs = [await Client.joined(ws_url(server, group, "c_kick")) for group in ("g_ops", "g_other")]
    await watcher.recv_where(event="join", client_id="c_kick")
    order = {"code": 4003, "reason": "kicked by ops"}
    status, body = await http(server, "POST", "/v3/clients/c_kick/disconnect", order)
    assert (status, body) == (202, {"status": "accepted", "client_id": "c_kick", **order, "ban_seconds": 0})
    for tab in tabs:
        assert await tab.closed() == (4003, "kicked by ops")
    leave = await watcher.recv_where(event="leave", client_id="c_kick")
    assert leave["payload"]["reason"] == "closed"
    await watcher.nothing_within(0.3)  # once
    status, body = await http(server, "POST", "/v3/clients/c_kick/disconnect", {})
    assert status == 404 and body["code"] == "recipient_offline"


async def test_a_disconnect_without_a_code_closes_with_4001(server):
    tab = await Client.joined(ws_url(server, "g_ops", "c_default"))
    assert (await http(server, "POST", "/v3/clients/c_default/disconnect", {}))[0] == 202
    assert await tab.closed() == (4001, "disconnected by the server")


async def handshake_refusal(server, group_id: str, client_id: str) -> HTTPResponse:
    """The answer to a WebSocket handshake the server must refuse."""
    with pytest.raises(HTTPClientError) as refused:
        await Client.connect(ws_url(server, group_id, client_id))
    assert refused.value.response is not None
    return refused.value.response


async def test_a_ban_closes_for_good_and_refuses_the_client_s_handshakes_until_it_ends(server):
    watcher = await member(server, "g_ban", "c_watch")
    tab = await member(server, "g_ban", "c_banned")
    await watcher.recv_where(event="join", client_id="c_banned")
    status, body = await http(server, "POST", "/v3/clients/c_banned/disconnect", {"ban_seconds": 1})
    assert (status, body) == (
        202,
        {"status": "accepted", "client_id": "c_banned", "code": 4403, "reason": "banned by the server",
         "ban_seconds": 1},
    )  # fmt: skip
    assert await tab.closed() == (4403, "banned by the server")
    assert (await watcher.recv_where(event="leave", client_id="c_banned"))["payload"]["reason"] == "closed"
    refused = await handshake_refusal(server, "g_other", "c_banned")
    assert refused.code == 403 and refused.headers["Retry-After"] == "1"
    answer = orjson.loads(refused.body)
    assert answer["code"] == "banned" and "c_banned is banned" in answer["msg"]
    await Client.joined(ws_url(server, "g_ban", "c_other"))  # nobody else is
    await asyncio.sleep(1.1)  # the ban's end is what is tested
    await Client.joined(ws_url(server, "g_ban", "c_banned"))


async def test_a_client_with_no_connection_can_be_banned_ahead(server):
    order = {"ban_seconds": 60, "code": 4499, "reason": "spam"}
    assert (await http(server, "POST", "/v3/clients/c_later/disconnect", order))[0] == 202
    refused = await handshake_refusal(server, "g_x", "c_later")
    assert refused.code == 403 and orjson.loads(refused.body)["code"] == "banned"


async def test_a_ban_is_read_and_lifted_early(start_server):
    server = await start_server(api_key=KEY, api_read_key=READ_KEY)
    full, read = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {READ_KEY}"}
    assert (await http(server, "POST", "/v3/clients/c_early/disconnect", {"ban_seconds": 600}, **full))[0] == 202
    assert await http(server, "GET", "/v3/clients/c_early/ban", **read) == (
        200,
        {"client_id": "c_early", "banned_for": 600},
    )
    status, body = await http(server, "DELETE", "/v3/clients/c_early/ban", **read)
    assert status == 403 and body["code"] == "forbidden"  # lifting one changes something
    assert await http(server, "DELETE", "/v3/clients/c_early/ban", **full) == (
        200,
        {"status": "lifted", "client_id": "c_early", "was_banned": True},
    )
    assert (await http(server, "GET", "/v3/clients/c_early/ban", **read))[1]["banned_for"] == 0
    await Client.joined(ws_url(server, "g_x", "c_early"))  # welcome again
    again = await http(server, "DELETE", "/v3/clients/c_early/ban", **full)
    assert again == (200, {"status": "lifted", "client_id": "c_early", "was_banned": False})
    status, body = await http(server, "GET", "/v3/clients/123/ban", **read)
    assert status == 400 and body["code"] == "invalid_id"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"ban_seconds": -1}, ["ban_seconds"]),
        ({"ban_seconds": 1.5}, ["ban_seconds"]),
        ({"ban_seconds": "60"}, ["ban_seconds"]),
        ({"ban_seconds": 30 * 24 * 3600 + 1}, ["ban_seconds"]),
        ({"ban_seconds": 60, "code": 4001}, ["code"]),  # a ban must close with a code clients keep out on
    ],
)
async def test_a_bad_ban_is_a_400_naming_the_problem(server, body, fields):
    status, answer = await http(server, "POST", "/v3/clients/c_x/disconnect", body)
    assert status == 400 and [problem["field"] for problem in answer["errors"]] == fields


@pytest.mark.parametrize(
    ("path", "body", "code", "fields"),
    [
        ("/v3/clients/123/disconnect", {}, "invalid_id", ["client_id"]),
        ("/v3/clients/c_x/disconnect", b"{nope", "invalid_json", []),
        ("/v3/clients/c_x/disconnect", [], "invalid_json", []),
        ("/v3/clients/c_x/disconnect", {"code": 1000}, "invalid_message", ["code"]),
        ("/v3/clients/c_x/disconnect", {"code": True}, "invalid_message", ["code"]),
        ("/v3/clients/c_x/disconnect", {"reason": "x" * 124}, "invalid_message", ["reason"]),
        ("/v3/clients/c_x/disconnect", {"why": "?", "code": "4001"}, "invalid_message", ["why", "code"]),
    ],
)
async def test_a_bad_disconnect_is_a_400_naming_every_problem(server, path, body, code, fields):
    status, answer = await http(server, "POST", path, body)
    assert status == 400 and answer["code"] == code
    assert [problem["field"] for problem in answer["errors"]] == fields


async def test_a_disconnect_must_be_sent_as_json(server):
    status, body = await http(server, "POST", "/v3/clients/c_x/disconnect", b"{}", **{"Content-Type": "text/plain"})
    assert status == 415 and body["code"] == "unsupported_media_type"


async def test_processes_shows_this_one_with_what_it_holds_and_its_rates(start_server):
    server = await start_server(lease_seconds=0.3)  # announces, and reads its rates, every 0.1 s
    clients = [
        await member(server, group, client) for group, client in (("g_a", "c_1"), ("g_a", "c_2"), ("g_b", "c_1"))
    ]
    for _ in range(20):
        await clients[0].send(msg_type="msg", target="echo", msg="hi")
    for _ in range(20):
        await clients[0].recv_where(target="echo")
    await clients[0].send(msg_type="msg", target="nowhere")
    await clients[0].recv_where(cmd="ERROR")

    async def rates() -> dict:
        status, body = await http(server, "GET", "/v3/processes")
        assert status == 200 and body["redis"] == "none" and body["access"] == "open"
        (process,) = body["processes"]
        recent = process["recent"]  # what the operator's chart starts from
        assert recent["every_seconds"] == 10 and recent["connections"][0] == 0  # the sample at start
        assert set(recent) == {"every_seconds", "connections", "messages_in", "messages_out", "deliveries", "errors"}
        assert process["node_id"] == body["answered_by"] == server.node.node_id
        assert (process["connections"], process["clients"], process["groups"]) == (3, 2, 2)
        assert process["bridge"] == "memory" and process["version"] and process["pid"] > 0
        return process["per_second"]

    first = await rates()
    async with asyncio.timeout(scaled(10)):  # the next interval: 5 s at most
        while first == (now := await rates()) or not now["messages_in"]:  # read after the messages came in
            await asyncio.sleep(0.05)
    assert now["messages_in"] > 0 and now["deliveries"] > 0 and now["errors"] > 0
    # The next interval had nothing: rates fall back to zero.
    async with asyncio.timeout(scaled(10)):
        while (await rates())["messages_in"]:
            await asyncio.sleep(0.05)


async def test_groups_lists_groups_with_how_many_are_in_each(server):
    clients = [
        await member(server, group, client)
        for group, client in (("g_one", "c_1"), ("g_one", "c_2"), ("g_two", "c_1"), ("x_other", "c_3"))
    ]
    status, body = await http(server, "GET", "/v3/groups")
    assert status == 200
    assert body == {
        "groups": [
            {"group_id": "g_one", "clients": 2},
            {"group_id": "g_two", "clients": 1},
            {"group_id": "x_other", "clients": 1},
        ],
        "total": 3,
        "more": False,
    }
    assert (await http(server, "GET", "/v3/groups?prefix=g_&limit=1"))[1] == {
        "groups": [{"group_id": "g_one", "clients": 2}],
        "total": 3,
        "more": True,
    }
    clients[3].close()
    async with asyncio.timeout(scaled(5)):
        while (await http(server, "GET", "/v3/groups?prefix=x"))[1]["groups"]:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("query", "code", "fields"),
    [
        ("prefix=a.b", "invalid_id", ["prefix"]),
        (f"prefix={'a' * 65}", "invalid_id", ["prefix"]),
        ("limit=0", "invalid_limit", ["limit"]),
        ("limit=1001", "invalid_limit", ["limit"]),
        ("limit=x&prefix=%20", "invalid_id", ["prefix", "limit"]),
    ],
)
async def test_a_bad_groups_query_is_a_400_naming_every_problem(server, query, code, fields):
    status, answer = await http(server, "GET", f"/v3/groups?{query}")
    assert status == 400 and answer["code"] == code
    assert [problem["field"] for problem in answer["errors"]] == fields


async def test_connections_describes_each_connection_of_a_group_or_a_client(start_server):
    server = await start_server(api_key=KEY, api_read_key=READ_KEY)
    alice = await Client.joined(ws_url(server, "g_inv", "c_alice"), headers={"User-Agent": "test-agent/1"})
    await Client.joined(ws_url(server, "g_inv", "c_bob"), headers={"X-Real-Ip": "10.1.2.3"})  # behind a proxy
    await Client.joined(ws_url(server, "g_elsewhere", "c_alice"))
    await Client.joined(f"ws://127.0.0.1:{server.port}/v3/ws/watch/group/g_inv?key={READ_KEY}")
    await alice.send(msg_type="msg", target="group", msg="hi")
    await alice.recv_where(msg="hi")
    status, body = await http(server, "GET", "/v3/connections?group_id=g_inv", Authorization=f"Bearer {READ_KEY}")
    assert status == 200 and body["more"] is False and body["missing"] == []
    listed = body["connections"]
    assert [(item["client_id"], item["watching"]) for item in listed] == [
        (None, True),
        ("c_alice", False),
        ("c_bob", False),
    ]
    assert listed[2]["address"] == "10.1.2.3"
    first = listed[1]
    assert first["node_id"] == server.node.node_id and first["address"] == "127.0.0.1"
    assert first["user_agent"] == "test-agent/1" and first["messages_in"] == 1 and first["bytes_in"] > 0
    assert first["connected_at"].endswith("Z") and first["queued_bytes"] == 0 and first["recovers"] is False
    status, body = await http(server, "GET", "/v3/connections?client_id=c_alice", Authorization=f"Bearer {KEY}")
    assert [item["group_id"] for item in body["connections"]] == ["g_elsewhere", "g_inv"]
    status, body = await http(server, "GET", "/v3/connections?limit=2", Authorization=f"Bearer {KEY}")
    assert len(body["connections"]) == 2 and body["more"] is True
    status, body = await http(server, "GET", "/v3/connections?group_id=1&limit=0", Authorization=f"Bearer {KEY}")
    assert status == 400 and [error["field"] for error in body["errors"]] == ["group_id", "limit"]
