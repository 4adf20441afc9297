"""docs/protocol.md, sections 2 and 3: stamping, and who receives each target."""

import asyncio
import re
from functools import partial

import pytest

from aether_tornado.core import router as router_module

from .conftest import ws_url
from .wsclient import Client, errors_of

SENT_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def url(spread_url):
    """Every test here runs with one process, and with clients spread over two."""
    return spread_url


async def room(url, group_id, *client_ids):
    """Connect clients to one group and drain presence, so each next frame is a message."""
    clients = [await Client.joined(url(group_id, client_id)) for client_id in client_ids]
    for index, client in enumerate(clients):
        for later in client_ids[index:]:
            await client.recv_where(event="join", client_id=later)
    return clients


async def test_group_reaches_every_member_including_sender_and_no_other_group(url):
    alice, bob = await room(url, "g_r", "c_alice", "c_bob")
    (outsider,) = await room(url, "g_other", "c_out")
    await alice.send(msg_type="msg", target="group", msg="Hello team!", payload={"n": 1}, sent_at="1999")
    for receiver in (alice, bob):
        message = await receiver.recv()
        assert message == {
            "version": "3",
            "msg_type": "msg",
            "target": "group",
            "from_id": "c_alice",
            "to_id": None,
            "group_id": "g_r",
            "cmd": None,
            "msg": "Hello team!",
            "payload": {"n": 1},
            "sent_at": message["sent_at"],
        }
        assert SENT_AT.fullmatch(message["sent_at"]) and message["sent_at"] != "1999"
    await outsider.nothing_within(0.2)


async def test_direct_reaches_every_connection_of_the_recipient_in_any_group(url):
    (alice,) = await room(url, "g_a", "c_alice")
    (bob_1,) = await room(url, "g_b", "c_bob")
    (bob_2,) = await room(url, "g_c", "c_bob")
    (carol,) = await room(url, "g_b2", "c_carol")
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="Private")
    for receiver in (bob_1, bob_2):
        message = await receiver.recv()
        assert (message["target"], message["from_id"], message["to_id"], message["group_id"]) == (
            "direct",
            "c_alice",
            "c_bob",
            "g_a",
        )
    await alice.nothing_within(0.1)
    await carol.nothing_within(0.1)


async def test_direct_to_nobody_is_recipient_offline(url):
    (alice,) = await room(url, "g_a", "c_alice")
    await alice.send(msg_type="msg", target="direct", to_id="c_ghost", msg="anyone?")
    code, errors = errors_of(await alice.recv())
    assert code == "recipient_offline" and errors == [{"field": "to_id", "problem": "has no open connection"}]


async def test_an_error_comes_back_before_the_answers_to_later_messages(url):
    """The recipient_offline check waits for Redis's count; the sender's next messages wait for it."""
    alice, bob = await room(url, "g_a", "c_alice", "c_bob")
    await alice.send(msg_type="msg", target="direct", to_id="c_ghost", msg="anyone?")
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="then bob")
    await alice.send(msg_type="msg", target="echo", msg="then me")
    code, _ = errors_of(await alice.recv())
    assert code == "recipient_offline"
    assert (await alice.recv())["msg"] == "then me"
    assert (await bob.recv())["msg"] == "then bob"


async def test_broadcast_reaches_everybody(url):
    alice, bob = await room(url, "g_1", "c_alice", "c_bob")
    (carol,) = await room(url, "g_2", "c_carol")
    await alice.send(msg_type="cmd", target="broadcast", cmd="MAINTENANCE_WARNING")
    for receiver in (alice, bob, carol):
        message = await receiver.recv()
        assert (message["target"], message["cmd"], message["from_id"], message["group_id"]) == (
            "broadcast",
            "MAINTENANCE_WARNING",
            "c_alice",
            "g_1",
        )


async def test_broadcast_can_be_forbidden(start_server):
    server = await start_server(allow_client_broadcast=False)
    alice = await Client.joined(f"ws://127.0.0.1:{server.port}/v3/ws/group/g_1/client/c_alice")
    await alice.recv_where(event="join")
    await alice.send(msg_type="msg", target="broadcast", msg="all")
    code, errors = errors_of(await alice.recv())
    assert code == "forbidden" and errors[0]["field"] == "target"


async def test_echo_returns_to_the_sending_connection_only(url):
    first, other = await room(url, "g_e", "c_same", "c_other")
    (second,) = await room(url, "g_e2", "c_same")
    await first.send(msg_type="msg", target="echo", msg="Ping!")
    message = await first.recv()
    assert (message["target"], message["msg"], message["from_id"]) == ("echo", "Ping!", "c_same")
    await second.nothing_within(0.1)
    await other.nothing_within(0.1)


async def test_command_keeps_cmd_and_payload(url):
    alice, bob = await room(url, "g_c", "c_alice", "c_bob")
    await alice.send(msg_type="cmd", target="group", cmd="RELOAD_UI", payload={"force": True})
    message = await bob.recv()
    assert (message["msg_type"], message["cmd"], message["payload"]) == ("cmd", "RELOAD_UI", {"force": True})


async def test_own_ids_and_version_may_be_restated(url):
    (alice,) = await room(url, "g_own", "c_alice")
    await alice.send(version="3", msg_type="msg", target="echo", from_id="c_alice", group_id="g_own", to_id=None)
    assert (await alice.recv())["msg_type"] == "msg"


async def test_heartbeat_is_answered_to_sender(url):
    alice, bob = await room(url, "g_h", "c_alice", "c_bob")
    await alice.send(msg_type="heartbeat", target="echo", payload={"t": 12})
    answer = await alice.recv()
    assert (answer["msg_type"], answer["target"], answer["from_id"], answer["group_id"]) == (
        "heartbeat",
        "echo",
        None,
        "g_h",
    )
    assert answer["payload"] == {"t": 12} and SENT_AT.fullmatch(answer["sent_at"])
    await bob.nothing_within(0.1)


async def test_presence_query_is_answered_with_a_snapshot(url):
    alice, _ = await room(url, "g_p", "c_zed", "c_Alpha")
    await alice.send(msg_type="presence", target="echo")
    answer = await alice.recv()
    assert answer["payload"] == {"event": "snapshot", "clients": ["c_Alpha", "c_zed"]}
    assert answer["from_id"] is None and answer["target"] == "echo"


async def test_order_is_kept_per_sender_and_receiver_across_targets(url):
    """On a cluster, the channels of g_order, c_bob and broadcast live on three different shards."""
    alice, bob = await room(url, "g_order", "c_alice", "c_bob")
    targets = ["broadcast" if n % 30 == 2 else ["group", "direct"][n % 2] for n in range(300)]  # ten broadcasts
    for n, target in enumerate(targets):
        extra = {"to_id": "c_bob"} if target == "direct" else {}
        await alice.send(msg_type="msg", target=target, payload={"n": n}, **extra)
    received = [(await bob.recv())["payload"]["n"] for _ in range(300)]
    assert received == list(range(300))


async def test_fan_out_encodes_once_for_all_receivers(start_server, monkeypatch):
    server = await start_server()
    clients = await room(partial(ws_url, server), "g_f", *[f"c_{n}" for n in range(5)])
    calls = []
    original = router_module.encode
    monkeypatch.setattr(router_module, "encode", lambda message: calls.append(message) or original(message))
    await clients[0].send(msg_type="msg", target="group", msg="once")
    received = await asyncio.gather(*(client.recv() for client in clients))
    assert {message["msg"] for message in received} == {"once"}
    assert len(calls) == 1


async def test_a_refused_direct_message_s_error_comes_before_the_copy_of_a_later_group_message(url):
    """The copy is a delivery, not a reply: the sender's next message waits until the direct one is settled."""
    alice, bob = await room(url, "g_a", "c_alice", "c_bob")
    for n in range(20):
        await alice.send(msg_type="msg", target="direct", to_id="c_ghost", msg=f"anyone {n}?")
        await alice.send(msg_type="msg", target="group", msg=f"then the group {n}")
    for n in range(20):
        code, _ = errors_of(await alice.recv())
        assert code == "recipient_offline"
        assert (await alice.recv())["msg"] == f"then the group {n}"
        assert (await bob.recv())["msg"] == f"then the group {n}"


async def test_a_sender_gets_its_own_messages_and_the_answers_to_them_in_the_order_it_sent(url):
    """Its group messages are recorded in Redis and come back through it; answers must not overtake them."""
    (alice,) = await room(url, "g_self", "c_alice")
    expected: list[int | str] = []
    for n in range(200):
        kind = n % 4
        if kind == 0:
            await alice.send(msg_type="msg", target="group", msg=str(n))
        elif kind == 1:
            await alice.send(msg_type="msg", target="echo", msg=str(n))
        elif kind == 2:
            await alice.send(msg_type="heartbeat", target="echo", msg=str(n))
        else:
            await alice.send(msg_type="msg", target="group", to_id="c_x", msg=str(n))  # refused: to_id
        expected.append("ERROR" if kind == 3 else n)
    received = []
    for _ in range(200):
        message = await alice.recv()
        received.append("ERROR" if message["cmd"] == "ERROR" else int(message["msg"]))
    assert received == expected


async def test_a_direct_message_whose_answer_is_pending_does_not_hold_the_next_ones(start_server, monkeypatch):
    """Deciding recipient_offline waits for presence; the sender's next direct message goes meanwhile."""
    server = await start_server()
    alice, bob = await room(partial(ws_url, server), "g_held", "c_alice", "c_bob")
    asked, decided = asyncio.Event(), asyncio.Event()
    nobody_took = server.node.router.nobody_took

    async def slow_presence(to_id):
        asked.set()
        await decided.wait()
        return await nobody_took(to_id)

    monkeypatch.setattr(server.node.router, "nobody_took", slow_presence)
    await alice.send(msg_type="msg", target="direct", to_id="c_ghost", msg="anyone?")
    await asyncio.wait_for(asked.wait(), 5)
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="then bob")
    await alice.send(msg_type="msg", target="echo", msg="then me")
    assert (await bob.recv())["msg"] == "then bob"  # while the first one's answer is still pending
    decided.set()
    assert errors_of(await alice.recv())[0] == "recipient_offline"
    assert (await alice.recv())["msg"] == "then me"


async def test_pipelined_direct_messages_and_their_answers_keep_the_order_sent(url):
    """Direct messages are not held one by one for their answer; every answer still comes in
    the order of the messages, and a copy of a later message comes after them."""
    alice, bob = await room(url, "g_pipe", "c_alice", "c_bob")
    expected: list[str] = []
    for n in range(120):
        kind = n % 6
        if kind in (0, 1):
            await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg=f"bob {n}")
        elif kind == 2:
            await alice.send(msg_type="msg", target="direct", to_id="c_ghost", msg=f"ghost {n}")
            expected.append("recipient_offline")
        elif kind == 3:
            await alice.send_raw("{")
            expected.append("invalid_json")
        elif kind == 4:
            await alice.send(msg_type="msg", target="echo", msg=f"echo {n}")
            expected.append(f"echo {n}")
        else:
            await alice.send(msg_type="msg", target="group", msg=f"group {n}")
            expected.append(f"group {n}")
    received = []
    for _ in expected:
        message = await alice.recv()
        received.append(errors_of(message)[0] if message["cmd"] == "ERROR" else message["msg"])
    assert received == expected
    to_bob = [(await bob.recv())["msg"] for n in range(120) if n % 6 in (0, 1, 5)]
    assert to_bob == [f"bob {n}" if n % 6 != 5 else f"group {n}" for n in range(120) if n % 6 in (0, 1, 5)]


async def test_without_history_a_direct_message_reaches_a_client_on_the_same_process(start_server):
    server = await start_server(history_size=0)
    alice = await Client.joined(ws_url(server, "g_nh", "c_alice"))
    bob = await Client.joined(ws_url(server, "g_other", "c_bob"))
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="no history")
    message = await bob.recv_where(msg="no history")
    assert (message["from_id"], "position" in message) == ("c_alice", False)


async def test_without_history_a_direct_message_to_another_process_is_unavailable_while_redis_is_away(
    redis_server, start_process
):
    first, second = [await start_process("--history-size", "0") for _ in range(2)]
    alice = await Client.joined(first.url("g_nh", "c_alice"))
    await Client.joined(second.url("g_nh", "c_bob"))
    redis_server.kill()
    await first.logged("Redis bridge down")
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="?")
    assert errors_of(await alice.recv_where(cmd="ERROR"))[0] == "unavailable"
