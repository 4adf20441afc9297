"""Recovery and history within bounds, and only for whom they are meant.

A handshake that recovers costs Redis no more than what it replays, and what it replays fits
the connection's outbound buffer; a direct message to a client nobody knows costs Redis
nothing; recording costs a connection from a byte budget; and a client recovers only what it
could have received live, shown by the proof the server gave it.
"""

import asyncio
import base64
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import orjson
import pytest
from redis.asyncio import Redis
from tornado.httpclient import AsyncHTTPClient

from aether_tornado.history.proof import Proofs
from aether_tornado.v3.channels import Position
from aether_tornado.ws.frames import FrameReader

from .conftest import ws_url
from .processes import RedisLatency
from .test_recovery import UNLIMITED, MakeUrl, Recovering, flags, sender
from .timing import scaled
from .wsclient import TIMEOUT, Client, errors_of, upgrade_request

BIG = "x" * 60_000


async def send_big(client: Client, group_id: str, count: int, **fields: Any) -> None:
    """``count`` messages of about 60 kB to the group (or as ``fields`` say). The sender reads its
    own copies as it goes, a few messages behind at most, so that it never fills its own buffer."""
    own_copies = fields.get("target", "group") != "direct"
    seen = 0
    for n in range(count):
        await client.send(**{"msg_type": "msg", "target": "group", "msg": BIG, "payload": {"n": n}, **fields})
        while own_copies and seen < n - 8:
            if (await client.recv(timeout=30))["msg_type"] == "msg":
                seen += 1
    while own_copies and seen < count:
        if (await client.recv(timeout=30))["msg_type"] == "msg":
            seen += 1


async def settled(client: Client) -> None:
    """Until the server has handled everything ``client`` sent: it answers an echo after that."""
    await client.send(msg_type="msg", target="echo", msg="settled?")
    await client.recv_where(msg="settled?", timeout=30)


async def history_page(port: int, group_id: str, query: str) -> tuple[dict[str, Any], int]:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/v3/groups/{group_id}/history{query}")
    return orjson.loads(response.body), len(response.body)


async def test_recovering_from_a_stream_of_big_messages_keeps_redis_answering(redis_server, start_process):
    process = await start_process(*flags(UNLIMITED))
    # Sixteen members that will come back at once: eight from before the first message (they
    # miss all 1,000), eight from after it (999).
    early = [Recovering("g_big", f"c_early{n}") for n in range(8)]
    for client in early:
        await client.connect(process.url)
        client.drop()
    filler = await sender(process.url, "g_big", "c_filler")
    await send_big(filler, "g_big", 1)
    late = [Recovering("g_big", f"c_late{n}") for n in range(8)]
    for client in late:
        await client.connect(process.url)
        client.drop()
    await send_big(filler, "g_big", 999)
    redis = Redis.from_url(redis_server.url)
    try:
        assert await redis.xlen("aether:history:{group:g_big}") == 1000
        # Every command over the issue's bound, in microseconds. A page takes about 3 ms here; the
        # slow log's clock also runs while Redis waits for a core, which on 2 cores, beside the
        # server and this test under coverage, once made a 3 ms page 13 ms: hence not 10 ms.
        await redis.config_set("slowlog-log-slower-than", round(scaled(20) * 1000))
        await redis.slowlog_reset()
        latency = RedisLatency(redis_server.port)
        try:
            reports = await asyncio.gather(*(client.connect(process.url) for client in early + late))
            # The history route pages too: all 1,000 messages, a megabyte at a time.
            pages, query = [], "?limit=1000"
            while True:
                page, size = await history_page(process.port, "g_big", query)
                pages.append((len(page["messages"]), size))
                if not page["more"]:
                    break
                query = f"?limit=1000&before={page['messages'][0]['position']}"
        finally:
            longest_ms, pings = await asyncio.to_thread(latency.stop)
        slow = await redis.slowlog_get()
    finally:
        await redis.aclose()
    assert all(report["streams"]["group"]["recovered"] is False for report in reports)  # over the buffer
    assert all(report["streams"]["client"]["recovered"] for report in reports)  # nothing missed there
    print(f"PING during 16 recoveries and {len(pages)} history pages: at most {longest_ms} ms ({pings} pings)")
    assert longest_ms <= scaled(20) and pings > 0  # the issue's bound, scaled like every other
    assert slow == [], slow
    assert sum(count for count, _ in pages) == 1000
    assert all(size <= (1 << 20) + 61_000 for _, size in pages)
    assert process.lines("Redis bridge down") == []


def read_replay(sock: socket.socket, client: Recovering) -> tuple[dict[str, Any], int]:
    """The snapshot's recovery report, and how many bytes of frames the replay after it took.

    The report says which streams were replayed and up to where: exactly that many frames are read.
    """
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    reader = FrameReader(from_client=False)
    frames: list[int] = []

    def frame() -> dict[str, Any]:
        while (event := reader.next()) is None:
            reader.feed(sock.recv(1 << 16))
        frames.append(reader.frame_size)
        return orjson.loads(event[1])

    report = frame()["payload"]["recovery"]
    frames.clear()
    for stream, state in report["streams"].items():
        if state["recovered"]:
            for _ in range(int(state["position"].split(":")[1]) - int(client.positions[stream].split(":")[1])):
                frame()
    return report, sum(frames)


def silent_socket(port: int, client: Recovering) -> socket.socket:
    """A recovering client that presents its positions, then never reads a byte, not even the 101."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.settimeout(scaled(TIMEOUT))
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade_request(port, f"/v3/ws/group/{client.group_id}/client/{client.client_id}{client.query()}"))
    return sock


async def test_forty_silent_recovering_sockets_hold_no_more_than_their_outbound_buffers(start_server):
    cap = 1 << 20
    server = await start_server(outbound_buffer_bytes=cap, close_timeout=0.5, **UNLIMITED)
    url = lambda group_id, client_id: ws_url(server, group_id, client_id)  # noqa: E731
    clients = [Recovering("g_silent", f"c_s{n}") for n in range(40)]
    for client in clients:
        await client.connect(url)
        client.drop()
    talker = await sender(url, "g_silent", "c_talk")
    # Each of them missed about 0.9 MB in each stream: 2.7 MB in all, past its buffer.
    await send_big(talker, "g_silent", 15)
    await send_big(talker, "g_silent", 15, target="broadcast")
    for client in clients:
        await send_big(talker, "g_silent", 15, target="direct", to_id=client.client_id)
    await settled(talker)
    silent = [silent_socket(server.port, client) for client in clients]
    recoveries = server.node.metrics.recoveries.values
    async with asyncio.timeout(scaled(10)):
        while sum(recoveries.values()) < 80:  # each has had its snapshot and replay
            await asyncio.sleep(0.01)  # nothing reaches the silent clients: the server's count is watched
    conns = [conn for conn in server.node.hub.all() if conn.client_id.startswith("c_s")]
    assert len(conns) == 40
    queued = [conn.queued_bytes for conn in conns]
    assert max(queued) <= cap
    # What each was sent: the direct messages it missed (0.9 MB) fit, the rest did not.
    replays = [await asyncio.to_thread(read_replay, sock, client) for sock, client in zip(silent, clients, strict=True)]
    print(
        f"40 silent recovering sockets: {sum(queued) / 1e6:.1f} MB queued in the server (at most {max(queued)} "
        f"bytes each), replays of at most {max(size for _, size in replays)} bytes"
    )
    assert all(size <= cap for _, size in replays)
    assert all(report["streams"]["client"]["recovered"] for report, _ in replays)
    # More comes live: each passes its buffer (once the kernel's are full too) and is closed as a slow consumer.
    await send_big(talker, "g_silent", 100)
    async with asyncio.timeout(scaled(10)):
        while any(conn.client_id.startswith("c_s") for conn in server.node.hub.all()):
            await asyncio.sleep(0.05)  # the hub announces nothing: its state is watched
    for sock in silent:
        sock.close()


async def test_a_replay_goes_out_within_the_outbound_buffer_the_direct_messages_first(start_server):
    server = await start_server(outbound_buffer_bytes=1 << 20, **UNLIMITED)
    url = lambda group_id, client_id: ws_url(server, group_id, client_id)  # noqa: E731
    away = Recovering("g_budget", "c_away")
    await away.connect(url)
    away.drop()
    talker = await sender(url, "g_budget", "c_talk")
    await send_big(talker, "g_budget", 10)  # 0.6 MB in the group
    await send_big(talker, "g_budget", 10, target="direct", to_id="c_away")  # and 0.6 MB to the client
    await settled(talker)
    report = await away.connect(url)
    assert report["streams"]["client"]["recovered"] is True
    assert report["streams"]["group"]["recovered"] is False  # 1.2 MB do not fit: the group is left out
    assert report["recovered"] is False
    texts = []
    while len(texts) < 10:
        message = await away.recv()
        if message["msg_type"] == "msg":
            assert message["target"] == "direct"
            texts.append(message["payload"]["n"])
    assert texts == list(range(10))


@pytest.fixture(params=["memory", "redis"])
async def one_server(request, start_server) -> AsyncIterator[tuple[MakeUrl, Callable[[], Awaitable[int]]]]:
    """A URL maker and a count of history's streams, on one process in memory or on Redis."""
    if request.param == "memory":
        server = await start_server()

        async def streams_in_memory() -> int:
            return len(server.node.history)

        yield (lambda group_id, client_id: ws_url(server, group_id, client_id)), streams_in_memory
        return
    redis_server = request.getfixturevalue("redis_server")
    process = await request.getfixturevalue("start_process")()
    redis = Redis.from_url(redis_server.url)

    async def history_keys() -> int:
        return len(await redis.keys("aether:history:*"))

    yield process.url, history_keys
    await redis.aclose()


async def test_direct_messages_to_invented_client_ids_cost_no_storage(one_server):
    url, history_keys = one_server
    client = await Client.joined(url("g_inv", "c_sender"))
    await client.send(msg_type="msg", target="group", msg="first")  # the group's stream exists
    await client.recv_where(msg="first")
    before = await history_keys()
    for _ in range(1000):
        to_id = f"c_{secrets.token_hex(8)}"
        await client.send(msg_type="msg", target="direct", to_id=to_id, msg="0123456789")
    refusals = [errors_of(await client.recv_where(cmd="ERROR"))[0] for _ in range(1000)]
    assert set(refusals) == {"recipient_offline"}
    assert await history_keys() == before


async def test_a_direct_message_to_a_client_that_just_left_is_kept_for_its_return(one_server):
    url, _ = one_server
    away = Recovering("g_kept", "c_away")
    await away.connect(url)
    away.drop()
    talker = await Client.joined(url("g_kept", "c_talk"))
    async with asyncio.timeout(scaled(5)):  # its connection closes on the server's side a moment later
        while True:
            await talker.send(msg_type="msg", target="direct", to_id="c_away", msg="for later")
            answer = await talker.recv_where(cmd="ERROR")
            if errors_of(answer)[0] == "recipient_offline":
                break
    report = await away.connect(url)
    assert report["streams"]["client"]["recovered"] is True
    assert "for later" in await away.messages_until("for later")


async def test_recording_past_a_connection_s_byte_budget_is_rate_limited(start_server):
    server = await start_server(record_byte_rate=1000, record_byte_burst=100_000)
    client = await Client.joined(ws_url(server, "g_rec", "c_rec"))
    await client.send(msg_type="msg", target="group", msg=BIG)
    assert (await client.recv_where(msg_type="msg"))["msg"] == BIG
    await client.send(msg_type="msg", target="group", msg=BIG)
    code, _ = errors_of(await client.recv_where(cmd="ERROR"))
    assert code == "rate_limited"
    await client.send(msg_type="msg", target="echo", msg="still open")  # echoes are not recorded
    assert (await client.recv_where(msg="still open"))["target"] == "echo"


@pytest.mark.parametrize("with_tokens", [False, True])
async def test_a_first_time_member_recovers_nothing_from_before_it_joined(start_server, with_tokens):
    secret = "s" * 32
    server = await start_server(**({"jwt_secret": secret} if with_tokens else {}))

    def token(client_id: str) -> str | None:
        claims = {"sub": client_id, "group": "g_old", "exp": int(time.time()) + 60}
        return jwt.encode(claims, secret) if with_tokens else None

    url = lambda group_id, client_id: ws_url(server, group_id, client_id)  # noqa: E731
    member = await Client.joined(url("g_old", "c_member") + (f"?token={token('c_member')}" if with_tokens else ""))
    for n in range(20):
        await member.send(msg_type="msg", target="group", msg=f"before {n}")
    await member.recv_where(msg="before 19")
    newcomer = Recovering("g_old", "c_new", token("c_new"))
    await newcomer.connect(url)  # its first connection: a proof from here on
    epoch, offset = newcomer.positions["group"].split(":")
    newcomer.positions["group"] = f"{epoch}:{int(offset) - 20}"  # as if it had been there all along
    newcomer.drop()
    report = await newcomer.connect(url)
    assert report["streams"]["group"]["recovered"] is False
    await member.send(msg_type="msg", target="group", msg="after")
    assert await newcomer.messages_until("after") == ["after"]


async def test_without_the_proof_another_s_direct_messages_are_not_replayed(url):
    bob = Recovering("g_priv", "c_bob")
    await bob.connect(url)
    bob.drop()
    alice = await Client.joined(url("g_priv", "c_alice"))
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="only for bob")
    await alice.recv_where(cmd="ERROR")  # bob is away: recipient_offline, and recorded for him
    # Someone else connects as c_bob, takes the snapshot's positions and its own proof...
    mallory = Recovering("g_priv", "c_bob")
    await mallory.connect(url)
    epoch, offset = mallory.positions["client"].split(":")
    mallory.positions["client"] = f"{epoch}:{max(0, int(offset) - 1000)}"
    mallory.drop()
    # ...and presents an older position: nothing from before it came.
    report = await mallory.connect(url)
    assert report["streams"]["client"]["recovered"] is False
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="now")
    assert await mallory.messages_until("now") == ["now"]
    mallory.drop()
    # Presenting bob's positions without bob's proof: the same.
    stolen = Recovering("g_priv", "c_bob")
    stolen.positions = dict(bob.positions)
    assert (await stolen.connect(url))["streams"]["client"]["recovered"] is False
    stolen.drop()
    # Bob, back with his proof, gets what was sent to him while he was away.
    report = await bob.connect(url)
    assert report["streams"]["client"]["recovered"] is True
    assert await bob.messages_until("now") == ["only for bob", "now"]


async def test_a_proof_is_for_one_client_in_one_group(url):
    bob = Recovering("g_p1", "c_bob")
    await bob.connect(url)
    bob.drop()
    for group_id, client_id in (("g_p1", "c_eve"), ("g_p2", "c_bob")):
        other = Recovering(group_id, client_id)
        other.positions, other.proof = dict(bob.positions), bob.proof
        report = await other.connect(url)
        assert not any(state["recovered"] for state in report["streams"].values()), (group_id, client_id)
        other.drop()


def test_a_proof_that_is_too_long_tampered_with_or_of_another_shape_vouches_for_nothing():
    proofs = Proofs(b"s" * 32)
    floors = [Position("e1", 3), None, Position("e2", 0)]
    proof = proofs.issue("g", "c", floors)
    assert proofs.floors(proof, "g", "c", 3) == floors
    mac = proof.partition(".")[2]
    forged_body = base64.urlsafe_b64encode(b"e1:0,,e2:0").rstrip(b"=").decode()  # an earlier floor
    signed_shape = proofs.issue("g", "c", [Position("e1", 3)])  # one stream, not three
    signed_nonsense = proofs.issue("g", "c", [Position("not an epoch!", 1), None, None])
    for attempt in (proof + "x" * 600, f"{forged_body}.{mac}", signed_shape, signed_nonsense, "no dot", "é.é"):
        assert proofs.floors(attempt, "g", "c", 3) is None, attempt
    assert Proofs(b"t" * 32).floors(proof, "g", "c", 3) is None  # another secret
