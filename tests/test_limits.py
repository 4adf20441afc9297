"""docs/protocol.md, section 5, limits: frame size, rate, outbound buffer, idle time, dead peers."""

import asyncio
import time

import orjson

from .conftest import ws_url
from .timing import scaled
from .wsclient import Client, RawSocket, errors_of


def message_of_size(size: int) -> str:
    """A valid echo message whose JSON is exactly ``size`` bytes."""
    empty = len(orjson.dumps({"msg_type": "msg", "target": "echo", "msg": ""}))
    return orjson.dumps({"msg_type": "msg", "target": "echo", "msg": "x" * (size - empty)}).decode()


async def test_frame_of_exactly_the_limit_passes_and_one_more_byte_closes_1009(url):
    client = await Client.joined(url("g_big", "c_big"))
    await client.recv_where(event="join")
    await client.send_raw(message_of_size(65536))
    assert len((await client.recv())["msg"]) > 65000
    await client.send_raw(message_of_size(65537))
    assert await client.closed() == (1009, "message too big")


async def test_flooding_client_is_rate_limited_then_closed_1008(start_server):
    # A token every 10 s (scaled): however slow the machine, none comes back during the test.
    server = await start_server(rate_limit=1 / scaled(10), rate_burst=5, rate_strikes=3)
    client = await Client.joined(ws_url(server, "g_flood", "c_flood"))
    await client.recv_where(event="join")
    for n in range(5):
        await client.send(msg_type="msg", target="echo", payload={"n": n})
        assert (await client.recv())["payload"] == {"n": n}
    for _ in range(3):
        await client.send(msg_type="msg", target="echo")
        code, errors = errors_of(await client.recv())
        assert code == "rate_limited" and errors == []
    await client.send(msg_type="msg", target="echo")
    assert await client.closed() == (1008, "rate limit exceeded")


async def test_rate_limit_refills(start_server):
    # A token every second (scaled): the second message, sent at once, finds none.
    server = await start_server(rate_limit=1 / scaled(1), rate_burst=1, rate_strikes=100)
    client = await Client.joined(ws_url(server, "g_refill", "c_r"))
    await client.recv_where(event="join")
    await client.send(msg_type="msg", target="echo", msg="first")
    await client.send(msg_type="msg", target="echo", msg="too soon")
    assert (await client.recv())["msg"] == "first"
    assert errors_of(await client.recv())[0] == "rate_limited"
    await asyncio.sleep(scaled(1.2))  # a token's worth of time: what is tested is the refill
    await client.send(msg_type="msg", target="echo", msg="later")
    assert (await client.recv())["msg"] == "later"


async def test_a_client_that_stops_reading_is_closed_1013_and_others_keep_receiving(start_server):
    server = await start_server(
        outbound_buffer_bytes=256 * 1024,
        rate_limit=100000,
        rate_burst=100000,
        byte_rate=1e12,
        record_byte_rate=1e12,
        record_byte_burst=10**12,
    )
    sender = await Client.joined(ws_url(server, "g_slow", "c_sender"))
    fast = await Client.joined(ws_url(server, "g_slow", "c_fast"))
    slow = await RawSocket.open(server.port, "/v3/ws/group/g_slow/client/c_slow", recv_buffer=4096)
    await fast.recv_where(event="join", client_id="c_slow")
    total = 2000
    body = "y" * 4000

    async def send_all():
        for n in range(total):
            await sender.send(msg_type="msg", target="group", msg=body, payload={"n": n})

    async def receive_all(client):
        received = []
        while len(received) < total:
            message = await client.recv()
            if message["msg_type"] == "msg":
                received.append(message["payload"]["n"])
        return received

    # The sender reads its own copies too: it is a well-behaved client.
    _, received, _ = await asyncio.wait_for(
        asyncio.gather(send_all(), receive_all(fast), receive_all(sender)), scaled(60)
    )
    assert received == list(range(total))
    frames, code = await slow.close_code(timeout=10)
    assert code == 1013
    assert frames < total
    slow.close()
    leave = await fast.recv_where(event="leave", client_id="c_slow")
    assert leave["payload"]["reason"] == "closed"


async def test_idle_connection_is_closed_1001_while_a_heartbeating_one_stays(start_server):
    server = await start_server(idle_timeout=0.6)
    idle = await Client.joined(ws_url(server, "g_idle", "c_idle"))
    alive = await Client.joined(ws_url(server, "g_idle", "c_alive"))

    async def heartbeat():
        for _ in range(8):
            await alive.send(msg_type="heartbeat", target="echo")
            await asyncio.sleep(0.15)

    beating = asyncio.create_task(heartbeat())
    assert await idle.closed(timeout=3) == (1001, "idle timeout")
    await beating
    await alive.send(msg_type="msg", target="echo", msg="still open")
    assert (await alive.recv_where(msg="still open"))["target"] == "echo"


async def test_a_peer_that_never_answers_pings_is_dropped(start_server):
    server = await start_server(ping_interval=0.2, close_timeout=0.3)
    watcher = await Client.joined(ws_url(server, "g_ping", "c_watch"))
    dead = await RawSocket.open(server.port, "/v3/ws/group/g_ping/client/c_dead")
    await watcher.recv_where(event="join", client_id="c_dead")
    # A close frame after the missed pong; the peer never answers it and is dropped.
    leave = await watcher.recv_where(event="leave", client_id="c_dead", timeout=3)
    assert leave["payload"]["reason"] == "closed"
    dead.close()
    await watcher.send(msg_type="msg", target="echo", msg="alive")
    assert (await watcher.recv_where(msg="alive"))["msg"] == "alive"


async def test_a_client_is_read_no_faster_than_its_byte_budget(start_server):
    server = await start_server(byte_rate=100_000, byte_burst=20_000)
    client = await Client.joined(ws_url(server, "g_bytes", "c_bytes"))
    await client.recv_where(event="join")
    started = time.monotonic()
    for n in range(6):  # 120 KB: 20 KB at once, the other 100 KB at 100 KB a second
        await client.send(msg_type="msg", target="echo", msg="b" * 20_000, payload={"n": n})
    for n in range(6):
        assert (await client.recv())["payload"] == {"n": n}  # all of it, nothing dropped: only slowed
    assert time.monotonic() - started >= 0.7  # waiting is the budget's whole point; it never ends early


async def test_client_broadcasts_have_a_smaller_budget_of_their_own(start_server):
    server = await start_server(broadcast_rate=1, broadcast_burst=3)
    sender = await Client.joined(ws_url(server, "g_b1", "c_loud"))
    other = await Client.joined(ws_url(server, "g_b2", "c_other"))
    await sender.recv_where(event="join")
    for n in range(4):
        await sender.send(msg_type="msg", target="broadcast", payload={"n": n})
    for n in range(3):
        assert (await other.recv_where(msg_type="msg"))["payload"] == {"n": n}
    received = [await sender.recv_where(msg_type="msg") for _ in range(3)]
    assert [message["payload"]["n"] for message in received] == [0, 1, 2]
    code, errors = errors_of(await sender.recv_where(cmd="ERROR"))
    assert code == "rate_limited" and errors == []
    await sender.send(msg_type="msg", target="group", msg="groups are not broadcasts")
    assert (await sender.recv_where(msg_type="msg"))["msg"] == "groups are not broadcasts"
