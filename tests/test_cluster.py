"""Several processes on one Redis act as one server, through crashes and Redis outages."""

import asyncio
import functools
import signal
import struct
import time

import orjson
import redis
import redis.asyncio
from redis.crc import key_slot
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from aether_tornado.app import PRESENCE_CONNECTIONS
from aether_tornado.presence.redis import BUCKETS

from .conftest import ws_url
from .httpapi import get, health, publish
from .timing import scaled, until, until_answer
from .wsclient import Client, errors_of


async def joined_all(clients, *client_ids):
    for client in clients:
        for client_id in client_ids:
            await client.recv_where(event="join", client_id=client_id)


async def test_a_killed_process_s_clients_leave_by_timeout_announced_once(start_process):
    first, second, third = [await start_process("--lease-seconds", "1") for _ in range(3)]
    watcher = await Client.joined(first.url("g_k", "c_watch"))
    other = await Client.joined(third.url("g_k", "c_other"))
    victims = [await Client.joined(second.url("g_k", client_id)) for client_id in ("c_v1", "c_v2")]
    await joined_all([watcher, other], "c_other", "c_v1", "c_v2")
    second.kill()
    for victim in victims:
        assert await victim.closed() == (None, None)  # its server vanished without a close frame
    for client in (watcher, other):
        leaves = [await client.recv_where(event="leave", timeout=5) for _ in range(2)]
        assert {(leave["payload"]["client_id"], leave["payload"]["reason"]) for leave in leaves} == {
            ("c_v1", "timeout"),
            ("c_v2", "timeout"),
        }
    await watcher.nothing_within(1.0)  # one announcement, not one per surviving process
    await watcher.send(msg_type="presence", target="echo")
    assert (await watcher.recv())["payload"]["clients"] == ["c_other", "c_watch"]


async def test_redis_restart_under_traffic(redis_server, start_process):
    first, second = await start_process(), await start_process()
    alice = await Client.joined(first.url("g_r", "c_alice"))
    bob = await Client.joined(first.url("g_r", "c_bob"))
    carol = await Client.joined(second.url("g_r", "c_carol"))
    await joined_all([alice, bob], "c_bob", "c_carol")
    await joined_all([carol], "c_carol")

    redis_server.kill()
    await first.logged("Redis bridge down", timeout=10)
    assert (await health(first))["status"] == "degraded"
    for n in range(20):  # local delivery never stops
        await alice.send(msg_type="msg", target="group", payload={"n": n})
        assert (await bob.recv_where(msg_type="msg"))["payload"] == {"n": n}
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="local")
    assert (await bob.recv_where(msg_type="msg"))["msg"] == "local"
    await alice.send(msg_type="msg", target="direct", to_id="c_carol", msg="elsewhere")
    code, _ = errors_of(await alice.recv_where(cmd="ERROR"))
    assert code == "unavailable"
    status, body = await publish(first, {"msg_type": "msg", "target": "direct", "to_id": "c_carol"})
    assert (status, body["code"]) == (503, "unavailable")
    status, _ = await publish(first, {"msg_type": "msg", "target": "group", "group_id": "g_r", "msg": "api, locally"})
    assert status == 202
    assert (await bob.recv_where(msg_type="msg"))["msg"] == "api, locally"

    redis_server.start()
    for process in (first, second):
        await process.logged("Redis bridge up", timeout=15, count=2)
    snapshot = await carol.recv_where(event="snapshot", clients=["c_alice", "c_bob", "c_carol"], timeout=10)
    assert snapshot["target"] == "echo"
    await alice.send(msg_type="msg", target="group", msg="back")
    assert (await carol.recv_where(msg="back"))["from_id"] == "c_alice"
    status, _ = await publish(second, {"msg_type": "msg", "target": "direct", "to_id": "c_alice", "msg": "via api"})
    assert status == 202
    assert (await alice.recv_where(msg="via api"))["target"] == "direct"
    assert (await health(first))["status"] == "ok"
    for process in (first, second):
        assert len(process.lines("Redis bridge down")) == 1, "".join(process.log)  # no storm


async def test_a_process_takes_clients_only_once_it_reaches_redis(redis_server, start_process):
    """A process that listened before its Redis link was ready would tell a client that came at
    once (a reconnection after a restart) that it could not recover, and serve it alone."""
    pausing = redis.Redis.from_url(redis_server.url)
    pausing.execute_command("CLIENT", "PAUSE", 1800, "ALL")  # Redis answers nothing for 1.8 s
    process = await start_process()
    assert len(process.lines("Redis bridge up")) == 1, "".join(process.log)
    assert (await health(process))["status"] == "ok"
    pausing.close()


async def test_redis_unreachable_at_start(redis_server, start_process):
    redis_server.kill()
    lone = await start_process(ready="Redis bridge down")
    assert (await health(lone))["status"] == "degraded"
    alice = await Client.joined(lone.url("g_u", "c_alice"))
    bob = await Client.joined(lone.url("g_u", "c_bob"))
    assert bob.snapshot["payload"]["clients"] == ["c_alice", "c_bob"]
    await alice.send(msg_type="msg", target="group", msg="served locally")
    assert (await bob.recv_where(msg_type="msg"))["msg"] == "served locally"
    # The operator's view: this process alone, as it knows itself.
    (itself,) = (await get(lone, "/v3/processes"))["processes"]
    assert (itself["bridge"], itself["connections"]) == ("down", 2)
    assert (await get(lone, "/v3/groups"))["groups"] == [{"group_id": "g_u", "clients": 2}]
    redis_server.start()
    await lone.logged("presence back in Redis", timeout=15)
    # Up once the whole resync is done: presence put back, the process announced.
    await until_answer(lambda: health(lone), lambda answer: answer["status"] == "ok")
    other = await start_process()
    carol = await Client.joined(other.url("g_u", "c_carol"))
    assert carol.snapshot["payload"]["clients"] == ["c_alice", "c_bob", "c_carol"]
    await alice.send(msg_type="msg", target="group", msg="across")
    assert (await carol.recv_where(msg="across"))["from_id"] == "c_alice"
    view = await until_answer(lambda: get(other, "/v3/processes"), lambda view: len(view["processes"]) == 2)
    assert sorted(process["connections"] for process in view["processes"]) == [1, 2]
    # Announced again as soon as it was back, with its bridge up, as its /healthz says.
    assert [process["bridge"] for process in view["processes"]] == ["up", "up"]
    assert (await get(other, "/v3/groups"))["groups"] == [{"group_id": "g_u", "clients": 3}]


async def test_a_new_process_does_not_disturb_existing_clients(start_process):
    first = await start_process()
    alice = await Client.joined(first.url("g_n", "c_alice"))
    await alice.recv_where(event="join", client_id="c_alice")
    second = await start_process()
    await Client.joined(second.url("g_n", "c_bob"))
    assert (await alice.recv())["payload"] == {"event": "join", "client_id": "c_bob"}  # no resync snapshot


async def test_redis_sends_a_group_message_only_to_processes_with_members(redis_server, start_process):
    first, second, third = await start_process(), await start_process(), await start_process()
    await Client.joined(second.url("g_other", "c_x"))
    await Client.joined(third.url("g_other", "c_y"))
    sender = await Client.joined(first.url("g_one", "c_sender"))
    store = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    assert store.pubsub_numsub("aether:{group:g_one}") == [(b"aether:{group:g_one}", 1)]
    assert store.pubsub_numsub("aether:{group:g_other}") == [(b"aether:{group:g_other}", 2)]

    watch = store.pubsub()
    watch.subscribe("aether:{group:g_one}")
    assert watch.get_message(timeout=5)["type"] == "subscribe"

    async def publishes_for_one_message(tag: str) -> int:
        """How many times Redis carried the message: a marker sent after it comes after them all."""
        await sender.send(msg_type="msg", target="group", msg=tag)
        await sender.send(msg_type="msg", target="group", msg=f"after {tag}")  # one connection, in order
        copies = 0
        while f"after {tag}".encode() not in (data := (await asyncio.to_thread(watch.get_message, True, 5))["data"]):
            copies += f'"msg":"{tag}"'.encode() in data
        return copies

    assert await publishes_for_one_message("small group") == 1
    members = [await Client.joined(first.url("g_one", f"c_m{n}")) for n in range(20)]
    await sender.recv_where(event="join", client_id="c_m19")
    assert await publishes_for_one_message("large group") == 1
    watch.unsubscribe()
    while (await asyncio.to_thread(watch.get_message, False, 5))["type"] != "unsubscribe":
        pass
    assert store.pubsub_numsub("aether:{group:g_one}") == [(b"aether:{group:g_one}", 1)]  # 21 members, one process
    watch.close()
    assert (await members[-1].recv_where(msg="large group"))["from_id"] == "c_sender"
    store.close()


async def test_recipient_offline_is_decided_cluster_wide(start_bridged_process):
    first, second = await start_bridged_process(), await start_bridged_process()
    alice = await Client.joined(first.url("g_d", "c_alice"))
    watcher = await Client.joined(first.url("g_elsewhere", "c_watch"))
    bob = await Client.joined(second.url("g_elsewhere", "c_bob"))
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="found you")
    assert (await bob.recv_where(msg="found you"))["group_id"] == "g_d"
    bob.close()
    # The leave is published after bob's process let go of bob's channel.
    await watcher.recv_where(event="leave", client_id="c_bob")
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="still there?")
    code, errors = errors_of(await alice.recv_where(cmd="ERROR"))
    assert code == "recipient_offline" and errors[0]["field"] == "to_id"


async def test_the_backend_api_reaches_clients_on_every_process(start_bridged_process):
    first, second = await start_bridged_process(), await start_bridged_process()
    alice = await Client.joined(first.url("g_backend", "c_alice"))
    bob = await Client.joined(second.url("g_backend", "c_bob"))
    await alice.recv_where(event="join", client_id="c_bob")
    await bob.recv_where(event="join", client_id="c_bob")
    group = {"msg_type": "msg", "target": "group", "group_id": "g_backend", "msg": "to the group"}
    assert (await publish(first, group))[0] == 202
    assert (await publish(first, {"msg_type": "msg", "target": "direct", "to_id": "c_bob", "msg": "to bob"}))[0] == 202
    assert (await publish(first, {"msg_type": "msg", "target": "broadcast", "msg": "to all"}))[0] == 202
    # One request after another, to the group's, bob's and everybody's shards: in order.
    assert [(await bob.recv())["msg"] for _ in range(3)] == ["to the group", "to bob", "to all"]
    assert (await alice.recv_where(msg="to all"))["target"] == "broadcast"
    status, body = await publish(second, {"msg_type": "msg", "target": "direct", "to_id": "c_nobody"})
    assert status == 404 and body["code"] == "recipient_offline"
    presence = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{second.port}/v3/groups/g_backend/presence")
    assert orjson.loads(presence.body)["clients"] == ["c_alice", "c_bob"]
    assert (await health(first))["bridge"] == "up"


async def test_a_disconnect_reaches_the_client_on_any_process(start_bridged_process):
    first, second = await start_bridged_process(), await start_bridged_process()
    tabs = [await Client.joined(process.url("g_kick", "c_far")) for process in (first, second)]
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{first.port}/v3/clients/c_far/disconnect",
        method="POST",
        body=orjson.dumps({"code": 4100, "reason": "maintenance"}),
        headers={"Content-Type": "application/json"},
        request_timeout=scaled(5),
    )
    assert response.code == 202
    for tab in tabs:  # the one on this process, and the one on the other
        assert await tab.closed() == (4100, "maintenance")


async def test_a_ban_holds_on_every_process_and_on_one_started_after_it(start_bridged_process):
    first, second = await start_bridged_process(), await start_bridged_process()
    tab = await Client.joined(second.url("g_ban", "c_banned"))
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{first.port}/v3/clients/c_banned/disconnect",
        method="POST",
        body=orjson.dumps({"ban_seconds": 600}),
        headers={"Content-Type": "application/json"},
        request_timeout=scaled(5),
    )
    assert response.code == 202
    assert await tab.closed() == (4403, "banned by the server")
    third = await start_bridged_process()
    for process in (first, second, third):
        try:
            await Client.connect(process.url("g_ban", "c_banned"))
        except HTTPClientError as refused:
            assert refused.code == 403 and orjson.loads(refused.response.body)["code"] == "banned"
        else:
            raise AssertionError(f"a banned client connected to {process.port}")
    # Lifted on one process, it is lifted on all, and on one started after.
    lifted = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{third.port}/v3/clients/c_banned/ban", method="DELETE", request_timeout=scaled(5)
    )
    assert orjson.loads(lifted.body)["was_banned"] is True
    for process in (first, second, third, await start_bridged_process()):
        ban = functools.partial(get, process, "/v3/clients/c_banned/ban")
        await until_answer(ban, lambda answer: answer["banned_for"] == 0)
        await Client.joined(process.url("g_ban", "c_banned"))


async def test_connections_are_gathered_from_every_process_and_a_silent_one_is_named(start_bridged_process):
    first, second = await start_bridged_process(), await start_bridged_process()
    for process, client_id in ((first, "c_one"), (second, "c_two")):
        await Client.joined(process.url("g_inv", client_id))
    await until_answer(lambda: get(first, "/v3/processes"), lambda body: len(body["processes"]) == 2, timeout=10)
    listing = await get(first, "/v3/connections?group_id=g_inv")
    assert [(item["client_id"], item["node_id"]) for item in listing["connections"]] == [
        ("c_one", (await health(first))["node_id"]),
        ("c_two", (await health(second))["node_id"]),
    ]
    assert listing["missing"] == []
    silent = (await health(second))["node_id"]
    second.process.send_signal(signal.SIGSTOP)  # announced as up, but answers nothing
    try:
        started = time.monotonic()
        listing = await get(first, "/v3/connections?group_id=g_inv")
        assert time.monotonic() - started < scaled(3)  # waited a moment, not for ever
        assert [item["client_id"] for item in listing["connections"]] == ["c_one"]
        assert listing["missing"] == [silent]
    finally:
        second.process.send_signal(signal.SIGCONT)


async def test_an_order_on_the_control_channel_that_is_not_understood_is_logged_and_ignored(
    redis_server, start_process
):
    process = await start_process()
    client = await Client.joined(process.url("g_ctl", "c_ctl"))
    store = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        # As another process publishes: its 12-character node id and the time, then the order.
        head = b"testtesttest" + struct.pack("!d", time.time())
        for garbage in (b"not json", b'{"disconnect": "c_ctl"}', b"[1, 2]"):
            assert await store.publish("aether:{control}", head + garbage) == 1
    finally:
        await store.aclose()
    await process.logged("an order on the control channel was not understood", count=3)
    assert (await publish(process, {"msg_type": "msg", "target": "group", "group_id": "g_ctl", "msg": "on"}))[0] == 202
    assert (await client.recv_where(msg="on"))["msg"] == "on"  # nobody was disconnected by it


async def test_a_burst_of_handshakes_opens_a_bounded_number_of_redis_connections(redis_server, start_process):
    process = await start_process()
    clients = await asyncio.gather(*(Client.joined(process.url("g_burst", f"c_{n}")) for n in range(150)))
    store = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        # presence's pool, the bridge's publisher and subscriber, and this probe
        assert len(store.client_list()) <= PRESENCE_CONNECTIONS + 3
    finally:
        store.close()
        for client in clients:
            client.close()


async def test_a_frozen_redis_holds_no_sender_for_more_than_a_second(redis_server, start_process):
    first, second = await start_process(), await start_process()
    alice = await Client.joined(first.url("g_f", "c_alice"))
    bob = await Client.joined(first.url("g_f", "c_bob"))
    carol = await Client.joined(second.url("g_f", "c_carol"))
    await joined_all([alice, bob], "c_bob", "c_carol")
    redis_server.process.send_signal(signal.SIGSTOP)  # its sockets stay open: it just never answers
    try:
        started = time.monotonic()
        await alice.send(msg_type="msg", target="direct", to_id="c_carol", msg="to the other process")
        await alice.send(msg_type="heartbeat", target="echo")
        await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="local, sent after")
        code, _ = errors_of(await alice.recv_where(cmd="ERROR"))
        assert code == "unavailable"
        assert (await alice.recv_where(msg_type="heartbeat"))["target"] == "echo"
        assert (await bob.recv_where(msg_type="msg"))["msg"] == "local, sent after"
        waited = time.monotonic() - started
        assert waited < scaled(3), f"held for {waited:.2f} s"  # one Redis deadline each for the count and the lease
        await first.logged("Redis bridge down", timeout=5)
        assert (await health(first))["status"] == "degraded"
        await second.logged("Redis bridge down", timeout=5)  # the idle one notices by its pings
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await first.logged("Redis bridge up", timeout=10, count=2)
    await second.logged("Redis bridge up", timeout=10, count=2)
    await alice.send(msg_type="msg", target="direct", to_id="c_carol", msg="back")
    assert (await carol.recv_where(msg="back"))["from_id"] == "c_alice"


async def test_recipient_offline_only_when_presence_agrees(redis_server, start_process):
    from redis.asyncio import Redis

    from aether_tornado.presence import Lease
    from aether_tornado.presence.redis import RedisPresence

    process = await start_process()
    alice = await Client.joined(process.url("g_dis", "c_alice"))
    store = Redis.from_url(redis_server.url, socket_timeout=5)
    # A client with a lease whose process holds no subscription: as right after a Redis restart,
    # before that process has resubscribed.
    elsewhere, ghost = RedisPresence(store, "aether", 30), Lease("g_other", "c_ghost", "ghost:1")
    await elsewhere.join(ghost)
    await alice.send(msg_type="msg", target="direct", to_id="c_ghost", msg="?")
    assert errors_of(await alice.recv_where(cmd="ERROR"))[0] == "unavailable"
    status, body = await publish(process, {"msg_type": "msg", "target": "direct", "to_id": "c_ghost"})
    assert (status, body["code"]) == (503, "unavailable")
    await elsewhere.leave(ghost)
    await alice.send(msg_type="msg", target="direct", to_id="c_ghost", msg="?")
    assert errors_of(await alice.recv_where(cmd="ERROR"))[0] == "recipient_offline"
    status, body = await publish(process, {"msg_type": "msg", "target": "direct", "to_id": "c_ghost"})
    assert (status, body["code"]) == (404, "recipient_offline")
    await store.aclose()


async def test_presence_follows_the_bridge_through_an_outage(redis_server, start_server):
    """Presence must not use a connection from before an outage it did not see itself."""
    server = await start_server(redis_url=redis_server.url)
    await until(lambda: server.node.bridge.link.up)
    client = await Client.joined(ws_url(server, "g_out", "c_out"))
    redis_server.kill()
    # Told by the bridge at once, before any presence call of its own (expiry runs every 5 s).
    await until(lambda: server.node.presence.down, timeout=2)
    redis_server.start()
    await until(lambda: server.node.bridge.link.up, timeout=10)  # the node's resync, presence's included, done
    assert not server.node.presence.down
    await client.send(msg_type="presence", target="echo")
    assert (await client.recv_where(event="snapshot"))["payload"]["clients"] == ["c_out"]
    assert server.node.bridge.link.up  # no second outage from a stale presence connection


async def test_every_process_shows_all_processes_and_groups_and_forgets_a_dead_one(start_bridged_process):
    first, second = [await start_bridged_process("--lease-seconds", "1.5") for _ in range(2)]
    ids = [(await health(process))["node_id"] for process in (first, second)]
    clients = [
        await Client.joined(process.url(group_id, client_id))
        for process, group_id, client_id in (
            (first, "g_ops", "c_a"),
            (first, "g_ops", "c_b"),
            (second, "g_ops", "c_c"),
            (second, "g_far", "c_d"),
        )
    ]
    await joined_all(clients[:1], "c_a", "c_b", "c_c")

    def held(view: dict) -> dict[str, tuple[int, int, str]]:
        return {item["node_id"]: (item["connections"], item["groups"], item["bridge"]) for item in view["processes"]}

    # Each process announces what it holds twice a lease: both views agree soon.
    for process in (first, second):
        await until_answer(
            lambda p=process: get(p, "/v3/processes"),
            lambda view: (
                held(view)
                == {
                    ids[0]: (2, 1, "up"),
                    ids[1]: (2, 2, "up"),
                }
            ),
        )
    assert (await get(second, "/v3/groups")) == {
        "groups": [{"group_id": "g_far", "clients": 1}, {"group_id": "g_ops", "clients": 3}],
        "total": 2,
        "more": False,
    }
    second.kill()
    # The dead process's announcement runs out, and its clients' leases: its groups go.
    await until_answer(lambda: get(first, "/v3/processes"), lambda view: held(view) == {ids[0]: (2, 1, "up")})
    await until_answer(
        lambda: get(first, "/v3/groups"), lambda view: view["groups"] == [{"group_id": "g_ops", "clients": 2}]
    )


async def test_a_group_a_process_of_an_older_version_left_in_the_index_is_dropped(redis_server, start_process):
    process = await start_process()
    member = await Client.joined(process.url("g_live", "c_live"))
    stale = redis.Redis.from_url(redis_server.url)
    index = f"aether:presence:{{p{key_slot(b'g_stale') % BUCKETS}}}:groups"
    stale.sadd(index, "g_stale")  # listed, but nobody's lease counts are there
    assert (await get(process, "/v3/groups?prefix=g_"))["groups"] == [{"group_id": "g_live", "clients": 1}]
    assert not stale.sismember(index, "g_stale")
    member.close()
