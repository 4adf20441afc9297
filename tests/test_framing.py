"""Client frames as the wire may carry them: split, batched, fragmented, or malformed."""

import asyncio
import struct

import orjson

from .wsclient import RawSocket

PATH = "/v3/ws/group/g_wire/client/c_wire"


def echo(text: str) -> bytes:
    return orjson.dumps({"msg_type": "msg", "target": "echo", "msg": text})


async def opened(server) -> RawSocket:
    raw = await RawSocket.open(server.port, PATH)
    assert (await raw.read_frame())[0] == 0x1  # the snapshot
    assert (await raw.read_frame())[0] == 0x1  # the client's own join
    return raw


async def replies(raw: RawSocket, count: int) -> list[str]:
    texts = []
    for _ in range(count):
        opcode, payload = await asyncio.wait_for(raw.read_frame(), 5)
        assert opcode == 0x1
        texts.append(orjson.loads(payload)["msg"])
    return texts


async def test_many_frames_in_one_write_are_handled_in_order(server):
    raw = await opened(server)
    for n in range(50):
        raw.send_frame(0x1, echo(f"m{n}"))  # buffered: one write on the wire
    assert await replies(raw, 50) == [f"m{n}" for n in range(50)]


async def test_a_frame_split_across_reads_is_reassembled(server):
    raw = await opened(server)
    frame = RawSocket.frame(0x1, echo("slowly"))
    for part in (frame[:1], frame[1:5], frame[5:]):
        raw.writer.write(part)
        await raw.writer.drain()
        await asyncio.sleep(0.02)  # nothing to await: give each part time to arrive alone
    assert await replies(raw, 1) == ["slowly"]


async def test_fragments_with_a_ping_between_make_one_message(server):
    raw = await opened(server)
    body = echo("in three parts")
    raw.send_frame(0x1, body[:10], fin=False)
    raw.send_frame(0x9, b"are you there", fin=True)
    raw.send_frame(0x0, body[10:20], fin=False)
    raw.send_frame(0x0, body[20:], fin=True)
    opcode, payload = await raw.read_frame()
    assert (opcode, payload) == (0xA, b"are you there")
    assert await replies(raw, 1) == ["in three parts"]


async def test_a_frame_over_the_limit_closes_1009_before_its_payload_arrives(server):
    raw = await opened(server)
    raw.writer.write(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 10_000_000) + b"\x00\x00\x00\x00")
    _, code = await raw.close_code()
    assert code == 1009


async def test_reserved_bits_or_a_fragmented_ping_fail_the_connection(server):
    for frame in (bytes([0xC1, 0x80]) + b"\x00" * 4, bytes([0x09, 0x80]) + b"\x00" * 4):
        raw = await opened(server)
        raw.writer.write(frame)
        assert await raw.at_eof()


async def test_a_peer_that_floods_pings_without_reading_is_closed_1013(start_server):
    server = await start_server(outbound_buffer_bytes=64 * 1024)
    raw = await RawSocket.open(server.port, PATH, recv_buffer=4096)
    ping = RawSocket.frame(0x9, b"p" * 125)
    for _ in range(2000):  # far more pongs than the kernel and the cap can hold
        raw.writer.write(ping * 100)
        try:
            await asyncio.wait_for(raw.writer.drain(), 2)
        except TimeoutError:
            break  # the server stopped reading us: it has given up on this peer
    frames = []
    while True:
        opcode, payload = await asyncio.wait_for(raw.read_frame(), 10)
        if opcode == 0x8:
            assert struct.unpack("!H", payload[:2])[0] == 1013
            break
        frames.append(opcode)
    assert 0xA in frames


async def test_the_peers_close_is_answered_with_a_valid_code(server):
    for sent, answered in ((struct.pack("!H", 1000), 1000), (struct.pack("!H", 1005), 1002), (b"", 1000)):
        raw = await opened(server)
        raw.send_frame(0x8, sent)
        assert (await raw.close_code())[1] == answered
    raw = await opened(server)
    raw.send_frame(0x8, b"\x03")  # a one-byte close payload is malformed
    assert await raw.at_eof()
