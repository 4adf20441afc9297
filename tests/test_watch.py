"""An operator's watcher: a group's traffic and presence, without being a member of it."""

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from .conftest import ws_url
from .httpapi import http
from .timing import scaled, until
from .wsclient import Client, errors_of

KEY, READ_KEY = "s3cret-of-16-chars", "r3ad-only-of-16-chars"


def watch_url(port: int, group_id: str, key: str | None = None) -> str:
    return f"ws://127.0.0.1:{port}/v3/ws/watch/group/{group_id}" + (f"?key={key}" if key else "")


async def test_a_watcher_sees_the_group_s_traffic_and_presence_and_nobody_sees_it(server):
    alice = await Client.joined(ws_url(server, "g_w", "c_alice"))
    watcher = await Client.joined(watch_url(server.port, "g_w"))
    assert watcher.snapshot["payload"]["clients"] == ["c_alice"]
    bob = await Client.joined(ws_url(server, "g_w", "c_bob"))
    assert bob.snapshot["payload"]["clients"] == ["c_alice", "c_bob"]  # no watcher in a roster
    assert (await watcher.recv_where(event="join"))["payload"]["client_id"] == "c_bob"
    await alice.send(msg_type="msg", target="group", msg="to the group")
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="private")
    await alice.send(msg_type="msg", target="broadcast", msg="to all")
    seen = [(await watcher.recv())["msg"] for _ in range(2)]
    assert seen == ["to the group", "to all"]  # not the direct message
    assert (await bob.recv_where(msg="private"))["target"] == "direct"
    assert await http(server, "GET", "/v3/groups/g_w/presence") == (
        200,
        {"group_id": "g_w", "clients": ["c_alice", "c_bob"]},
    )
    await alice.recv_where(msg="to all")
    watcher.close()
    await until(lambda: server.node.connection_count == 2, timeout=5)
    await alice.nothing_within(0.3)  # the watcher's coming and going told nobody
    await bob.send(msg_type="msg", target="group", msg="after")
    assert (await alice.recv())["msg"] == "after"  # next, with no presence event before it


async def test_a_watcher_may_beat_and_ask_who_is_there_but_sends_nothing_on(server):
    member = await Client.joined(ws_url(server, "g_w", "c_member"))
    await member.recv_where(event="join", client_id="c_member")  # its own
    watcher = await Client.joined(watch_url(server.port, "g_w"))
    await watcher.send(msg_type="heartbeat", target="echo")
    assert (await watcher.recv())["msg_type"] == "heartbeat"
    await watcher.send(msg_type="presence", target="echo")
    assert (await watcher.recv())["payload"]["clients"] == ["c_member"]
    for target in ("group", "broadcast", "echo"):
        await watcher.send(msg_type="msg", target=target, msg="from the watcher")
        assert errors_of(await watcher.recv()) == ("forbidden", [])
    await watcher.send(msg_type="msg", target="direct", to_id="c_member", msg="from the watcher")
    assert errors_of(await watcher.recv())[0] == "forbidden"
    await member.nothing_within(0.3)


async def test_watching_needs_the_api_key_or_the_read_only_key_when_one_is_set(start_server):
    server = await start_server(api_key=KEY, api_read_key=READ_KEY)
    for key in (None, "wrong-key-of-16-chars", KEY[:-1]):
        with pytest.raises(HTTPClientError) as refused:
            await Client.connect(watch_url(server.port, "g_w", key))
        assert refused.value.code == 401
        assert orjson.loads(refused.value.response.body)["code"] == "unauthorized"
    for key in (KEY, READ_KEY):
        watcher = await Client.joined(watch_url(server.port, "g_w", key))
        assert watcher.snapshot["payload"]["clients"] == []


async def test_a_bad_group_id_or_path_is_refused_as_for_clients(server):
    for path, code in (("/v3/ws/watch/group/123", 400), ("/v3/ws/watch/group/g/x", 404), ("/v3/ws/watch/", 404)):
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{server.port}{path}", raise_error=False, request_timeout=scaled(5)
        )
        assert response.code == code, path


async def test_a_watcher_on_one_process_sees_what_is_sent_on_another(start_bridged_process):
    first, second = await start_bridged_process(), await start_bridged_process()
    watcher = await Client.joined(watch_url(first.port, "g_far"))
    talker = await Client.joined(second.url("g_far", "c_talk"))
    assert (await watcher.recv_where(event="join"))["payload"]["client_id"] == "c_talk"
    await talker.send(msg_type="msg", target="group", msg="from afar")
    assert (await watcher.recv_where(msg_type="msg"))["msg"] == "from afar"
    talker.close()
    leave = await watcher.recv_where(event="leave")
    assert leave["payload"]["client_id"] == "c_talk"
