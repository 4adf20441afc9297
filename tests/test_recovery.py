"""Recovery after a reconnect: what a client missed, exactly once and in order, or a clear no.

Clients here speak the wire contract of docs/protocol.md by hand (the Python and browser
clients have their own tests): they connect with ``?recover=``, keep the last position of each
stream, lose their TCP connection without a close, and present those positions again.
"""

import asyncio
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from aether_tornado.history import Appended
from aether_tornado.history.memory import MemoryHistory
from aether_tornado.v3.channels import Position
from aether_tornado.v3.schema import FIELDS
from aether_tornado.ws.frames import TEXT, FrameReader

from .conftest import ws_url
from .timing import scaled
from .wsclient import TIMEOUT, Client, RawSocket, upgrade_request

STREAM_OF_TARGET = {"group": "group", "direct": "client", "broadcast": "broadcast"}
# Settings that let one test sender go as fast as a test needs.
UNLIMITED = {
    "rate_limit": 100_000,
    "rate_burst": 100_000,
    "frame_rate": 100_000,
    "frame_burst": 100_000,
    "byte_rate": 1e9,
    "byte_burst": 10_000_000,
    "broadcast_rate": 100_000,
    "broadcast_burst": 100_000,
    "record_byte_rate": 1e12,
    "record_byte_burst": 10**12,
}

MakeUrl = Callable[[str, str], str]


def flags(settings: dict[str, Any]) -> list[str]:
    return [item for name, value in settings.items() for item in (f"--{name.replace('_', '-')}", str(value))]


@pytest.fixture(params=["memory", "redis", "redis cluster"])
async def servers(request, start_server) -> Callable[..., Awaitable[tuple[MakeUrl, MakeUrl]]]:
    """Start, with the given settings, one process in memory or two on Redis; URL makers of both.

    In memory both makers point at the one process; on Redis (or a Redis Cluster) at two
    different ones, so a client can come back to another process than the one it left.
    """

    async def start(**settings: Any) -> tuple[MakeUrl, MakeUrl]:
        if request.param == "memory":
            server = await start_server(**settings)
            one = lambda group_id, client_id: ws_url(server, group_id, client_id)  # noqa: E731
            return one, one
        start_process = request.getfixturevalue(
            "start_process" if request.param == "redis" else "start_cluster_process"
        )
        first, second = await start_process(*flags(settings)), await start_process(*flags(settings))
        return first.url, second.url

    return start


class Recovering:
    """A client that opts in, keeps each stream's last position and its proof, and presents them
    when it returns."""

    def __init__(self, group_id: str, client_id: str, token: str | None = None) -> None:
        self.group_id, self.client_id, self.token = group_id, client_id, token
        self.positions: dict[str, str] = {}
        self.proof: str | None = None
        self.client: Client | None = None
        self.snapshot: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []

    def query(self) -> str:
        positions = ",".join(f"{stream}:{position}" for stream, position in self.positions.items())
        proof = f"&proof={self.proof}" if self.proof else ""
        return f"?recover={positions}{proof}" + (f"&token={self.token}" if self.token else "")

    async def connect(self, make_url: MakeUrl) -> dict[str, Any]:
        """Connect (again); returns the snapshot's recovery report, having taken its positions."""
        self.client = await Client.connect(make_url(self.group_id, self.client_id) + self.query())
        self.snapshot = await self.client.recv()
        assert self.snapshot["payload"]["event"] == "snapshot", self.snapshot
        recovery = self.snapshot["payload"]["recovery"]
        self.proof = recovery["proof"]
        for stream, state in recovery["streams"].items():
            if not state["recovered"]:  # a fresh start: from the stream's present position
                self.positions.pop(stream, None)
                if state["position"] is not None:
                    self.positions[stream] = state["position"]
        return recovery

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.client is not None
        message = await self.client.recv(timeout)
        if "position" in message:
            self.positions[STREAM_OF_TARGET[message["target"]]] = message["position"]
        self.received.append(message)
        return message

    async def messages_until(self, last: str, timeout: float = 10.0) -> list[str]:
        """The ``msg`` of every message (not presence) up to the one whose msg is ``last``."""
        texts: list[str] = []

        async def collect() -> None:
            while True:
                message = await self.recv()
                if message["msg_type"] == "msg":
                    texts.append(message["msg"])
                    if message["msg"] == last:
                        return

        await asyncio.wait_for(collect(), timeout)
        return texts

    def drop(self) -> None:
        """Lose the TCP connection without a close frame: a reset, as a network change does."""
        assert self.client is not None
        stream = self.client.conn.stream
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.close()


async def sender(make_url: MakeUrl, group_id: str, client_id: str) -> Client:
    return await Client.joined(make_url(group_id, client_id))


async def send_cycle(client: Client, to_id: str, numbers: range) -> None:
    """Messages numbered ``numbers``, to the group, to ``to_id`` and to everybody in turn."""
    for number in numbers:
        target = ("group", "direct", "broadcast")[number % 3]
        fields = {"to_id": to_id} if target == "direct" else {}
        await client.send(msg_type="msg", target=target, msg=str(number), **fields)


async def own_copy(client: Client, number: int | str) -> None:
    """Wait for the sender's own copy of a group or broadcast message: it is recorded by then."""
    await client.recv_where(msg_type="msg", msg=str(number), timeout=10)


def numbered(first: int, last: int) -> list[str]:
    return [str(number) for number in range(first, last + 1)]


@pytest.mark.parametrize("back_to", ["the same process", "another process"])
async def test_a_dropped_client_gets_what_it_missed_once_in_order_then_the_live_stream(servers, back_to):
    first, second = await servers(**UNLIMITED)
    away = Recovering("g_r", "c_away")
    recovery = await away.connect(first)
    assert recovery["recovered"] is False  # nothing to recover from on a first connection
    assert set(away.positions) == {"group", "client", "broadcast"}
    talker = await sender(second, "g_r", "c_talk")
    await send_cycle(talker, "c_away", range(0, 9))
    assert await away.messages_until("8") == numbered(0, 8)

    away.drop()
    await send_cycle(talker, "c_away", range(9, 300))
    await own_copy(talker, 299)
    # Back while the sender goes on: the seam falls somewhere in there.
    going_on = asyncio.create_task(send_cycle(talker, "c_away", range(300, 600)))
    recovery = await away.connect(first if back_to == "the same process" else second)
    assert recovery["recovered"] is True
    assert all(state["recovered"] for state in recovery["streams"].values())
    assert await away.messages_until("599") == numbered(9, 599)
    await going_on
    assert all("position" in message for message in away.received if message["msg_type"] == "msg")


async def test_a_client_that_does_not_ask_sees_only_the_ten_keys(servers):
    first, _ = await servers()
    plain = await Client.joined(first("g_p", "c_plain"))
    assert "recovery" not in plain.snapshot["payload"]
    recovering = Recovering("g_p", "c_rec")
    await recovering.connect(first)
    await plain.recv_where(event="join", client_id="c_rec")
    await recovering.client.send(msg_type="msg", target="group", msg="hi")
    seen = await plain.recv_where(msg="hi")
    assert set(seen) == set(FIELDS)
    with_position = await recovering.client.recv_where(msg="hi")
    assert set(with_position) == {*FIELDS, "position"}
    epoch, offset = recovering.positions["group"].split(":")  # from the snapshot: the next one follows
    assert with_position["position"] == f"{epoch}:{int(offset) + 1}"


async def test_missed_messages_older_than_the_window_are_not_recovered(servers):
    first, second = await servers(history_seconds=1)
    away = Recovering("g_old", "c_away")
    await away.connect(first)
    talker = await sender(second, "g_old", "c_talk")
    away.drop()
    await talker.send(msg_type="msg", target="group", msg="while away")
    await own_copy(talker, "while away")
    await asyncio.sleep(1.2)  # the window passes: time itself is what is tested
    recovery = await away.connect(second)
    assert recovery["recovered"] is False
    assert recovery["streams"]["group"]["recovered"] is False
    assert recovery["streams"]["client"]["recovered"] is True  # nothing was missed there
    await talker.send(msg_type="msg", target="group", msg="live")
    assert await away.messages_until("live") == ["live"]  # the old one is not replayed


async def test_a_trimmed_stream_is_not_recovered_and_the_others_are(servers):
    first, second = await servers(history_size=5, **UNLIMITED)
    away = Recovering("g_trim", "c_away")
    await away.connect(first)
    talker = await sender(second, "g_trim", "c_talk")
    away.drop()
    for number in range(10):
        await talker.send(msg_type="msg", target="group", msg=str(number))
    await talker.send(msg_type="msg", target="direct", to_id="c_away", msg="direct")
    await own_copy(talker, 9)
    recovery = await away.connect(first)
    assert recovery["streams"]["group"]["recovered"] is False
    assert recovery["streams"]["client"]["recovered"] is True
    assert recovery["recovered"] is False
    assert await away.messages_until("direct") == ["direct"]


async def test_thousands_of_missed_messages_come_back_in_order(servers):
    first, second = await servers(history_size=5000, **UNLIMITED)
    away = Recovering("g_many", "c_away")
    await away.connect(first)
    talker = await sender(second, "g_many", "c_talk")
    away.drop()
    for number in range(3000):
        await talker.send(msg_type="msg", target="group", msg=str(number))
    await own_copy(talker, 2999)
    recovery = await away.connect(second)
    assert recovery["recovered"] is True
    assert await away.messages_until("2999", timeout=20) == numbered(0, 2999)


async def test_a_reconnect_storm_recovers_every_client(servers):
    first, second = await servers(**UNLIMITED)
    clients = [Recovering("g_storm", f"c_s{number}") for number in range(100)]
    for number, client in enumerate(clients):
        await client.connect(first if number % 2 else second)
    talker = await sender(first, "g_storm", "c_talk")
    for client in clients:
        client.drop()
    for number in range(30):
        await talker.send(msg_type="msg", target="group", msg=str(number))
    await own_copy(talker, 29)
    reports = await asyncio.gather(*(client.connect(second if n % 2 else first) for n, client in enumerate(clients)))
    assert all(report["recovered"] for report in reports), [r for r in reports if not r["recovered"]][:3]
    for client in clients:
        texts = await client.messages_until("29")
        assert texts == numbered(0, 29), client.client_id


async def test_a_position_the_server_never_gave_is_refused_before_the_upgrade(server):
    for query, problem in (
        ("?recover=group:abc", "not stream:epoch:offset"),
        ("?recover=lobby:abc:1", "not a stream"),
        ("?recover=group:a:1,group:a:2", "given twice"),
        ("?recover=group:a%7B:1", "not stream:epoch:offset"),
    ):
        response = await AsyncHTTPClient().fetch(
            ws_url(server, "g_q", "c_q").replace("ws:", "http:") + query,
            headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
            raise_error=False,
        )  # fmt: skip
        body = orjson.loads(response.body)
        assert (response.code, body["code"], body["field"]) == (400, "invalid_position", "recover"), query
        assert problem in body["msg"]


async def test_an_unknown_epoch_is_not_recovered(servers):
    first, _ = await servers()
    stranger = Recovering("g_e", "c_e")
    stranger.positions = {"group": "zz9:5", "client": "zz9:1", "broadcast": "zz9:7"}
    recovery = await stranger.connect(first)
    assert recovery["recovered"] is False
    assert not any(state["recovered"] for state in recovery["streams"].values())
    assert all(not position.startswith("zz9") for position in stranger.positions.values())


async def test_with_history_off_recovery_is_reported_impossible(start_server):
    server = await start_server(history_size=0)
    away = Recovering("g_off", "c_off")
    recovery = await away.connect(lambda group_id, client_id: ws_url(server, group_id, client_id))
    assert recovery == {
        "recovered": False,
        "streams": {stream: {"position": None, "recovered": False} for stream in ("group", "client", "broadcast")},
        "proof": None,
    }
    await away.client.send(msg_type="msg", target="group", msg="plain")
    assert "position" not in await away.client.recv_where(msg="plain")


async def test_after_redis_lost_everything_a_client_is_told_it_did_not_recover(redis_server, start_process):
    process = await start_process()
    away = Recovering("g_lost", "c_away")
    await away.connect(process.url)
    talker = await Client.joined(process.url("g_lost", "c_talk"))
    await talker.send(msg_type="msg", target="group", msg="before")
    assert await away.messages_until("before") == ["before"]
    before = dict(away.positions)
    away.drop()
    redis_server.kill()
    redis_server.start()  # empty: nothing was saved
    await process.logged("Redis bridge up", count=2)
    recovery = await away.connect(process.url)
    assert recovery["recovered"] is False
    assert not any(state["recovered"] for state in recovery["streams"].values())
    assert all(away.positions[stream].split(":")[0] != before[stream].split(":")[0] for stream in before)
    await talker.send(msg_type="msg", target="group", msg="after")
    assert await away.messages_until("after") == ["after"]


async def test_messages_a_backend_published_are_recovered_too(servers):
    first, second = await servers()
    away = Recovering("g_api", "c_away")
    await away.connect(first)
    away.drop()
    port = int(second("g", "c").split(":")[2].split("/")[0])
    for fields in (
        {"target": "group", "group_id": "g_api", "msg": "to the group"},
        {"target": "direct", "to_id": "c_away", "msg": "to you"},
        {"target": "broadcast", "msg": "to all"},
    ):
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/v3/publish",
            method="POST",
            body=orjson.dumps({"msg_type": "msg", **fields}),
            headers={"Content-Type": "application/json"},
            raise_error=False,
        )
        # A direct message to nobody connected is still recorded: the client may come back for it.
        assert response.code == (404 if fields["target"] == "direct" else 202)
    recovery = await away.connect(second)
    assert recovery["recovered"] is True
    assert await away.messages_until("to all") == ["to the group", "to you", "to all"]


async def test_removed_history_is_not_recovered_and_what_follows_is_numbered_on(servers):
    first, second = await servers()
    away, current = Recovering("g_rm", "c_away"), Recovering("g_rm", "c_current")
    await away.connect(first)
    await current.connect(second)
    talker = await sender(second, "g_rm", "c_talk")
    away.drop()
    await talker.send(msg_type="msg", target="group", msg="removed")
    await own_copy(talker, "removed")
    assert await current.messages_until("removed") == ["removed"]
    port = int(second("g", "c").split(":")[2].split("/")[0])
    url = f"http://127.0.0.1:{port}/v3/groups/g_rm/history"
    removed = await AsyncHTTPClient().fetch(url, method="DELETE", request_timeout=scaled(5))
    assert orjson.loads(removed.body) == {"status": "removed", "group_id": "g_rm"}
    assert orjson.loads((await AsyncHTTPClient().fetch(url)).body)["messages"] == []
    recovery = await away.connect(first)  # it missed a message that is gone
    assert recovery["streams"]["group"]["recovered"] is False and recovery["recovered"] is False
    assert current.client is not None
    current.client.close()
    recovery = await current.connect(first)  # it missed nothing: the counter was kept
    assert recovery["streams"]["group"]["recovered"] is True
    before = int(current.positions["group"].split(":")[1])
    await talker.send(msg_type="msg", target="group", msg="after")
    assert await current.messages_until("after") == ["after"]
    assert int(current.positions["group"].split(":")[1]) == before + 1


def two_recorded(now: list[float]) -> tuple[MemoryHistory, list[Appended]]:
    """A memory history on a clock the test moves (``now[0]``), with two messages in ``group:g``."""
    history = MemoryHistory(size=3, seconds=10, keep_seconds=60, present=lambda client_id: False, clock=lambda: now[0])
    appended: list[Appended] = []
    for text in (b'{"n":1}', b'{"n":2}'):
        history.append("group:g", text, appended.append)
    return history, appended


async def test_memory_history_forgets_a_stream_nobody_used_for_its_keep_time():
    now = [1000.0]
    history, appended = two_recorded(now)
    position = appended[-1].position
    assert [
        entry.offset for entry in (await history.recover([("group:g", Position(position.epoch, 0))], 99))[0].missed
    ] == [1, 2]
    now[0] += 50
    await history.keep(["group:g"])  # a connection is still on it
    now[0] += 50
    (kept,) = await history.recover([("group:g", position)], 99)
    assert kept.top == position and kept.missed == ()  # nothing missed, though the messages aged out
    now[0] += 61
    await history.keep([])
    assert len(history) == 0
    (fresh,) = await history.recover([("group:g", position)], 99)
    assert fresh.missed is None and fresh.top.epoch != position.epoch and fresh.top.offset == 0


async def test_memory_history_does_not_recover_what_aged_out_of_its_ring():
    now = [1000.0]
    history, appended = two_recorded(now)
    first = appended[0].position
    now[0] += 11
    await history.keep(["group:g"])  # the window passed: both messages are dropped from the ring
    (aged,) = await history.recover([("group:g", first)], 99)
    assert aged.missed is None  # the second one was missed and is gone: not "nothing missed"


class Newcomer(asyncio.Protocol):
    """A client that asks to recover with no position yet; the instant its 101 arrives, the
    sender speaks to the group."""

    def __init__(self, port: int, client_id: str, sender: RawSocket, said: str) -> None:
        self.port, self.client_id, self.sender, self.said = port, client_id, sender, said
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(upgrade_request(self.port, f"/v3/ws/group/g_seam/client/{self.client_id}?recover="))

    def data_received(self, data: bytes) -> None:
        if not self.opened:
            self.opened = True
            message = {"msg_type": "msg", "target": "group", "msg": self.said}
            self.sender.send_frame(TEXT, orjson.dumps(message))
        self.received.put_nowait(data)


async def test_a_message_recorded_while_a_newcomer_joins_reaches_it(start_process):
    """A message sent to a group the instant a newcomer's connection opens may be recorded before
    the newcomer's history is read. It must still come to it live, not be skipped as if it had
    been replayed, and the snapshot's position must be the one just before it, so that a
    client that skips what it had already takes it."""
    server = await start_process()
    sender = await RawSocket.open(server.port, "/v3/ws/group/g_seam/client/c_sender")
    loop = asyncio.get_running_loop()
    for n in range(10):
        said = f"at once {n}"
        transport, newcomer = await loop.create_connection(
            lambda: Newcomer(server.port, f"c_new{n}", sender, said),  # noqa: B023 (called at once)
            "127.0.0.1",
            server.port,
        )
        try:
            got = b""
            async with asyncio.timeout(scaled(TIMEOUT)):
                while said.encode() not in got:
                    got += await newcomer.received.get()
        finally:
            transport.close()
        reader = FrameReader(from_client=False)
        reader.feed(got.partition(b"\r\n\r\n")[2])
        messages = [orjson.loads(payload) for _, payload in iter(reader.next, None)]
        snapshot, message = messages[0], next(message for message in messages if message["msg"] == said)
        before = Position.parse(snapshot["payload"]["recovery"]["streams"]["group"]["position"])
        assert Position.parse(message["position"]) == Position(before.epoch, before.offset + 1)


async def test_a_client_that_comes_back_while_redis_is_frozen_is_told_it_did_not_recover(redis_server, start_process):
    process = await start_process()
    away = Recovering("g_ice", "c_away")
    await away.connect(process.url)
    away.drop()
    redis_server.process.send_signal(signal.SIGSTOP)  # its sockets stay open: it just never answers
    try:
        recovery = await away.connect(process.url)
        assert recovery["recovered"] is False and recovery["proof"] is None
        assert all(state == {"position": None, "recovered": False} for state in recovery["streams"].values())
        talker = await Client.joined(process.url("g_ice", "c_talk"))
        await talker.send(msg_type="msg", target="group", msg="served locally")
        assert await away.messages_until("served locally") == ["served locally"]
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
