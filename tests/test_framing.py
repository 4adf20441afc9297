"""The server's frame layer on the wire: split, batched, fragmented, malformed, closed, flooded."""

import asyncio
import gc
import socket
import struct

import orjson
import tornado.web
from tornado.http1connection import HTTP1ServerConnection
from tornado.httputil import HTTPServerRequest

from aether_tornado.ws import frames
from aether_tornado.ws.frames import CLOSE, PING, PONG, TEXT

from .conftest import ws_url
from .timing import scaled
from .wsclient import TIMEOUT, Client, RawSocket, upgrade_request

PATH = "/v3/ws/group/g_wire/client/c_wire"


def echo(text: str) -> bytes:
    return orjson.dumps({"msg_type": "msg", "target": "echo", "msg": text})


async def opened(server, path: str = PATH) -> RawSocket:
    raw = await RawSocket.open(server.port, path)
    assert (await raw.read_frame())[0] == TEXT  # the snapshot
    assert (await raw.read_frame())[0] == TEXT  # the client's own join
    return raw


async def replies(raw: RawSocket, count: int) -> list[str]:
    texts = []
    for _ in range(count):
        opcode, payload = await raw.read_frame()
        assert opcode == TEXT
        texts.append(orjson.loads(payload)["msg"])
    return texts


async def test_many_frames_in_one_write_are_handled_in_order(server):
    raw = await opened(server)
    for n in range(200):  # more than one turn's worth of frames
        raw.send_frame(TEXT, echo(f"m{n}"))  # buffered: one write on the wire
    assert await replies(raw, 200) == [f"m{n}" for n in range(200)]


async def test_a_handshake_leaves_nothing_for_the_cycle_collector(server):
    """The handler, its request and Tornado's connection go at the hand-over, by reference
    counting: left in a cycle, each would cost a collection that also goes over every live
    connection (bench/RESULTS.md, "Garbage collection")."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage, to be looked at
    try:
        sockets = [await opened(server, f"/v3/ws/group/g_gc/client/c_{n}") for n in range(10)]
        gc.collect()
        kinds = (tornado.web.RequestHandler, HTTPServerRequest, HTTP1ServerConnection)
        left = [type(thing).__name__ for thing in gc.garbage if isinstance(thing, kinds)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
    sockets[-1].send_frame(TEXT, echo("still here"))  # the last one: the others hear its join
    assert await replies(sockets[-1], 1) == ["still here"]


async def test_a_connection_is_in_its_group_when_its_101_arrives(server):
    """A client that sees another's connection open may send to the group that instant (a page
    with two clients, say): the server registers a connection before its 101 goes out, and the
    message, recorded before the newcomer's history is read, is not skipped as recovered."""
    sender = await opened(server, "/v3/ws/group/g_open/client/c_sender")
    loop = asyncio.get_running_loop()
    frames_of_b: asyncio.Queue[bytes] = asyncio.Queue()

    class Receiver(asyncio.Protocol):
        members_at_101: list[str] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # Asking to recover, with no position yet: as the browser module connects.
            transport.write(upgrade_request(server.port, "/v3/ws/group/g_open/client/c_receiver?recover="))

        def data_received(self, data: bytes) -> None:
            if self.members_at_101 is None:  # the 101: what the server holds, in this very turn
                self.members_at_101 = sorted(conn.client_id for conn in server.node.hub.group("g_open"))
                sender.send_frame(TEXT, orjson.dumps({"msg_type": "msg", "target": "group", "msg": "at once"}))
            frames_of_b.put_nowait(data)

    transport, receiver = await loop.create_connection(Receiver, "127.0.0.1", server.port)
    try:
        received = b""
        async with asyncio.timeout(scaled(TIMEOUT)):
            while b"at once" not in received:
                received += await frames_of_b.get()
        assert receiver.members_at_101 == ["c_receiver", "c_sender"]
    finally:
        transport.close()


async def test_a_frame_split_across_reads_is_reassembled(server):
    raw = await opened(server)
    frame = RawSocket.frame(TEXT, echo("slowly"))
    for part in (frame[:1], frame[1:5], frame[5:]):
        raw.writer.write(part)
        await raw.writer.drain()
        await asyncio.sleep(0.02)  # nothing to await: give each part time to arrive alone
    assert await replies(raw, 1) == ["slowly"]


async def test_fragments_with_a_ping_between_make_one_message(server):
    raw = await opened(server)
    body = echo("in three parts")
    raw.send_frame(TEXT, body[:10], fin=False)
    raw.send_frame(PING, b"are you there")
    raw.send_frame(0x0, body[10:20], fin=False)
    raw.send_frame(0x0, body[20:])
    assert await raw.read_frame() == (PONG, b"are you there")
    assert await replies(raw, 1) == ["in three parts"]


# The hand-over from Tornado: no frame is lost, whenever it is sent.


async def test_a_frame_in_the_same_packet_as_the_handshake_is_answered(server):
    raw = await RawSocket.open(server.port, PATH, with_request=RawSocket.frame(TEXT, echo("early")))
    assert [orjson.loads(payload)["payload"] for _, payload in [await raw.read_frame(), await raw.read_frame()]] == [
        {"event": "snapshot", "clients": ["c_wire"]},
        {"event": "join", "client_id": "c_wire"},
    ]
    assert await replies(raw, 1) == ["early"]


def first_frame_answered(port: int, path: str, opcode: int) -> bool:
    """Send one frame the instant the 101 has arrived; True if its answer comes.

    A blocking socket in a thread of its own, so the client acts while the server's loop is
    still busy with the hand-over, as a client in another process would.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(upgrade_request(port, path))
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096) or b"<closed>"
        sock.sendall(RawSocket.frame(opcode, echo("first") if opcode == TEXT else b"first"))
        answer = b'"msg":"first"' if opcode == TEXT else frames.build(PONG, b"first")
        try:
            while answer not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                data += chunk
        except TimeoutError:
            return False
        return True


def answered_in_thread(port: int, path: str, opcode: int):
    return asyncio.to_thread(first_frame_answered, port, path, opcode)


async def test_a_frame_sent_the_instant_the_101_arrives_is_answered(server):
    for n in range(60):
        assert await answered_in_thread(server.port, f"/v3/ws/group/g_fast/client/c_{n}", PING), n
        assert await answered_in_thread(server.port, f"/v3/ws/group/g_fast/client/d_{n}", TEXT), n


async def test_first_frames_of_many_simultaneous_handshakes_are_answered(server):
    paths = [f"/v3/ws/group/g_rush/client/c_{n}" for n in range(40)]
    answered = await asyncio.gather(*(answered_in_thread(server.port, path, PING) for path in paths))
    assert all(answered)


async def test_after_a_1009_close_the_next_connection_s_first_frame_is_answered(server):
    for n in range(10):
        big = await opened(server, f"/v3/ws/group/g_big/client/c_big{n}")
        big.send_frame(TEXT, b"x" * 70_000)
        assert await big.closed_cleanly() == 1009
        big.close()
        assert await answered_in_thread(server.port, f"/v3/ws/group/g_big/client/c_next{n}", TEXT)


# Failing a connection (RFC 6455 section 7.1.7): what was queued, the close frame, then the end.


async def test_a_frame_over_the_limit_gets_1009_before_the_end_even_while_the_peer_sends(server):
    raw = await opened(server)
    raw.writer.write(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 10_000_000) + b"\x00" * 4 + b"x" * 1_000_000)
    assert await raw.closed_cleanly() == 1009


async def test_what_was_queued_is_written_before_a_protocol_error_fails_the_connection(server):
    for bad in (bytes([0xC1, 0x80]) + b"\0" * 4, bytes([0x83, 0x80]) + b"\0" * 4, bytes([0x80, 0x80]) + b"\0" * 4):
        raw = await opened(server)
        raw.writer.write(RawSocket.frame(TEXT, echo("before")) + bad)
        assert await replies(raw, 1) == ["before"]
        assert await raw.closed_cleanly() == 1002
        raw.close()


async def test_invalid_utf8_fails_with_1007_at_the_fragment_that_holds_it(server):
    raw = await opened(server)
    raw.send_frame(TEXT, b'{"msg": "\xce\xba\xff', fin=False)  # the final fragment never comes
    assert await raw.closed_cleanly() == 1007


async def test_the_peers_close_is_answered_with_its_code_when_registered(server):
    cases = [(struct.pack("!H", code), code) for code in (1000, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999)]
    cases += [(struct.pack("!H", code), 1002) for code in (999, 1004, 1005, 1006, 1015, 2000, 5000)]
    cases += [(b"", 1000), (b"\x03", 1002), (struct.pack("!H", 1000) + b"\xce\xba\xed\xa0\x80", 1007)]
    for sent, answered in cases:
        raw = await opened(server)
        raw.send_frame(CLOSE, sent)
        assert await raw.closed_cleanly() == answered, sent
        raw.close()


async def test_a_peer_that_floods_pings_without_reading_is_closed_1013(start_server):
    lifted = {"control_rate": 1e9, "control_burst": 10**9, "frame_rate": 1e9, "frame_burst": 10**9, "byte_rate": 1e12}
    server = await start_server(outbound_buffer_bytes=64 * 1024, **lifted)  # only the cap can stop this peer
    raw = await RawSocket.open(server.port, PATH, recv_buffer=4096)
    ping = RawSocket.frame(PING, b"p" * 125)
    for _ in range(2000):  # far more pongs than the kernel and the cap can hold
        raw.writer.write(ping * 100)
        try:
            await asyncio.wait_for(raw.writer.drain(), scaled(2))
        except TimeoutError:
            break  # the server stopped reading us: it has given up on this peer
    seen = []
    while (frame := await raw.read_frame(timeout=10))[0] != CLOSE:
        seen.append(frame[0])
    assert struct.unpack("!H", frame[1][:2])[0] == 1013
    assert PONG in seen


# The frame budget: every frame costs, so no frame kind is free to flood with.


async def flooded(start_server, frame: bytes, **limits) -> int:
    server = await start_server(**limits)
    raw = await opened(server)
    raw.writer.write(frame * 5000)
    return await raw.closed_cleanly()


async def test_pings_past_the_control_budget_close_1008(start_server):
    assert await flooded(start_server, RawSocket.frame(PING, b"x"), control_rate=10, control_burst=50) == 1008


async def test_unsolicited_pongs_past_the_control_budget_close_1008(start_server):
    assert await flooded(start_server, RawSocket.frame(PONG, b""), control_rate=10, control_burst=50) == 1008


async def test_frames_past_the_frame_budget_close_1008(start_server):
    frame = RawSocket.frame(TEXT, echo("x"))
    assert await flooded(start_server, frame, frame_rate=10, frame_burst=100, rate_strikes=10**6) == 1008


async def test_a_message_of_too_many_fragments_closes_1008(start_server):
    server = await start_server(max_fragments=8)
    raw = await opened(server)
    raw.send_frame(TEXT, b"", fin=False)
    for _ in range(100):
        raw.send_frame(0x0, b"", fin=False)
    assert await raw.closed_cleanly() == 1008


async def test_the_budget_refills_for_a_client_within_it(start_server):
    server = await start_server(control_rate=50, control_burst=5)
    raw = await opened(server)
    for n in range(12):
        raw.send_frame(PING, b"%d" % n)
        assert await raw.read_frame() == (PONG, b"%d" % n)
        await asyncio.sleep(0.03)  # the budget's own refill time: more than 1/50 s
    raw.send_frame(TEXT, echo("still open"))
    assert await replies(raw, 1) == ["still open"]


async def test_others_are_served_while_one_connection_floods(start_server):
    server = await start_server(
        control_rate=1e9, control_burst=10**9, frame_rate=1e9, frame_burst=10**9, byte_rate=1e12
    )
    flooder = await opened(server)
    other = await Client.joined(ws_url(server, "g_calm", "c_calm"))
    flood = RawSocket.frame(PONG, b"") * 200_000  # answered by nothing: only reading it costs

    async def keep_flooding():
        for _ in range(1000):  # more than any machine reads while 20 echoes go by: it is cancelled first
            flooder.writer.write(flood)
            await flooder.writer.drain()

    flooding = asyncio.create_task(keep_flooding())
    await other.recv_where(event="join")
    for n in range(20):
        await other.send(msg_type="msg", target="echo", msg=f"n{n}")
        assert (await other.recv(timeout=2))["msg"] == f"n{n}"
    assert not flooding.done(), "the flood ended before the other client was served"
    flooding.cancel()
