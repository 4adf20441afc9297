"""RFC 6455 conformance of the frame layer, one test per Autobahn|Testsuite case family (1-7, 9, 10).

They run against the echo server on the real frame layer (tests/autobahn/echo_server.py),
as the full suite does (docs/conformance.md), so CI fails when the layer breaks a rule the
suite checks. Each test names the cases it stands for.
"""

import asyncio
import os
import struct

import pytest

from aether_tornado.ws.frames import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT

from .autobahn import echo_server
from .wsclient import RawSocket


@pytest.fixture
async def echo():
    server, port = await echo_server.start()

    async def connect() -> RawSocket:
        return await RawSocket.open(port, "/")

    yield connect
    server.close()


async def echoed(raw: RawSocket, opcode: int, payload: bytes) -> None:
    assert await raw.read_frame() == (opcode, payload)


async def failed(raw: RawSocket, code: int = 1002, echoes: tuple[tuple[int, bytes], ...] = ()) -> None:
    """The echoes of what came before the violation, then the close frame, then the end."""
    for expected in echoes:
        assert await raw.read_frame() == expected
    assert await raw.closed_cleanly() == code


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
async def test_a_payload_of_every_length_is_echoed_even_fed_byte_by_byte(echo, opcode):
    """1.1.1-1.1.8, 1.2.1-1.2.8: lengths around each encoding boundary, also fed byte by byte."""
    raw = await echo()
    for length in (0, 125, 126, 127, 128, 65535, 65536):
        payload = b"*" * length if opcode == TEXT else os.urandom(length)
        raw.send_frame(opcode, payload)
        await echoed(raw, opcode, payload)
    payload = b"\xfe" * 200 if opcode == BINARY else b"x" * 200
    frame = RawSocket.frame(opcode, payload)
    for n in range(len(frame)):
        raw.writer.write(frame[n : n + 1])
        await raw.writer.drain()
    await echoed(raw, opcode, payload)


async def test_pings_are_answered_with_their_payload_pongs_ignored_and_long_pings_fail(echo):
    """2.1-2.11: pings answered with their payload, unsolicited pongs ignored, long pings fail."""
    raw = await echo()
    for payload in (b"", b"Hello, world!", bytes(range(256))[:125], b"\x00\xff\xfe\xfd"):
        raw.send_frame(PING, payload)
        assert await raw.read_frame() == (PONG, payload)
    raw.send_frame(PONG, b"unsolicited")
    raw.writer.write(RawSocket.frame(PING, b"ten") * 10)
    for _ in range(10):
        assert await raw.read_frame() == (PONG, b"ten")
    raw.send_frame(PING, b"x" * 126)
    await failed(raw)


@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
async def test_reserved_bits_fail_after_what_came_before(echo, rsv):
    """3.1-3.7: any reserved bit fails the connection; the message before it is echoed first."""
    raw = await echo()
    bad = bytearray(RawSocket.frame(TEXT if rsv < 5 else PING, b"bad"))
    bad[0] |= rsv << 4
    raw.writer.write(RawSocket.frame(TEXT, b"before") + bytes(bad) + RawSocket.frame(PING, b""))
    await failed(raw, echoes=((TEXT, b"before"),))


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
async def test_reserved_opcodes_fail_after_what_came_before(echo, opcode):
    """4.1.1-4.2.5: the message before it is echoed first."""
    raw = await echo()
    raw.writer.write(RawSocket.frame(TEXT, b"before") + RawSocket.frame(opcode, b"x") + RawSocket.frame(PING, b""))
    await failed(raw, echoes=((TEXT, b"before"),))


async def test_fragments_make_one_message_with_control_frames_between_them(echo):
    """5.3-5.9, 5.15-5.20: fragments make one message, control frames may come between them."""
    raw = await echo()
    raw.send_frame(TEXT, b"frag", fin=False)
    raw.send_frame(PING, b"between")
    raw.send_frame(CONTINUATION, b"men", fin=False)
    raw.send_frame(PONG, b"")
    raw.send_frame(CONTINUATION, b"ted")
    assert await raw.read_frame() == (PONG, b"between")
    await echoed(raw, TEXT, b"fragmented")
    raw.send_frame(BINARY, b"\x00", fin=False)
    raw.send_frame(CONTINUATION, b"\x01")
    await echoed(raw, BINARY, b"\x00\x01")


@pytest.mark.parametrize(
    "frames_sent",
    [
        [(PING, b"a", False), (CONTINUATION, b"b", True)],  # 5.1: a fragmented ping
        [(PONG, b"a", False), (CONTINUATION, b"b", True)],  # 5.2: a fragmented pong
        [(CONTINUATION, b"orphan", True)],  # 5.9-5.14: a continuation of nothing
        [(TEXT, b"a", False), (TEXT, b"b", True)],  # 5.18: a new message inside a fragmented one
    ],
)
async def test_fragments_out_of_order_fail(echo, frames_sent):
    """5.1, 5.2, 5.9-5.14, 5.18."""
    raw = await echo()
    for opcode, payload, fin in frames_sent:
        raw.send_frame(opcode, payload, fin)
    await failed(raw)


async def test_valid_utf8_in_any_split_is_echoed(echo):
    """6.1-6.2, 6.5-6.7, 6.22-6.23: valid text of every sequence length, split at every byte."""
    raw = await echo()
    text = "κόσμε 𝄞 \U0010ffff \ufeff \u0000".encode()
    raw.send_frame(TEXT, text)
    await echoed(raw, TEXT, text)
    for cut in range(1, len(text)):
        raw.send_frame(TEXT, text[:cut], fin=False)
        raw.send_frame(CONTINUATION, text[cut:])
        await echoed(raw, TEXT, text)


@pytest.mark.parametrize(
    "invalid",
    [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xff"],
)
async def test_invalid_utf8_fails_1007(echo, invalid):
    """6.3, 6.8-6.21: invalid sequences, overlong forms, surrogates, code points past U+10FFFF."""
    raw = await echo()
    raw.send_frame(TEXT, invalid)
    await failed(raw, 1007)


async def test_invalid_utf8_fails_as_it_arrives_inside_a_fragment_and_inside_a_frame(echo):
    """6.4.1-6.4.4: the connection fails when the invalid bytes arrive, not when the message ends."""
    raw = await echo()
    raw.send_frame(TEXT, "κόσμε".encode(), fin=False)
    raw.send_frame(CONTINUATION, b"\xf4\x90\x80\x80", fin=False)  # the rest never comes
    await failed(raw, 1007)
    raw = await echo()
    frame = RawSocket.frame(TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"x" * 100)
    raw.writer.write(frame[:20])  # the payload's first bytes, the invalid ones among them
    await failed(raw, 1007)


async def test_a_close_is_answered_and_nothing_is_read_or_sent_after_it(echo):
    """7.1.1-7.1.6, 7.3.1-7.3.6: the close is answered, nothing is read or sent after it."""
    raw = await echo()
    raw.send_frame(TEXT, b"last")
    raw.send_frame(CLOSE, struct.pack("!H", 1000) + b"bye")
    raw.send_frame(TEXT, b"after the close")
    raw.send_frame(PING, b"after the close")
    await echoed(raw, TEXT, b"last")
    assert await raw.closed_cleanly() == 1000
    raw = await echo()
    raw.send_frame(CLOSE, struct.pack("!H", 1000) + b"r" * 123)  # the longest reason
    assert await raw.closed_cleanly() == 1000


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        (b"", 1000),  # 7.3.1
        (b"\x03", 1002),  # 7.3.2
        *((struct.pack("!H", code), code) for code in (1000, 1001, 1002, 1003, 1007, 1010, 1011, 3000, 4999)),  # 7.7
        *((struct.pack("!H", code), 1002) for code in (0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999)),  # 7.9
        (struct.pack("!H", 5000), 1002),  # 7.13.1
        (struct.pack("!H", 65535), 1002),  # 7.13.2
        (struct.pack("!H", 1000) + b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80", 1007),  # 7.5.1
    ],
)
async def test_a_close_code_and_reason_are_answered_or_failed_as_registered(echo, payload, answer):
    raw = await echo()
    raw.send_frame(CLOSE, payload)
    assert await raw.closed_cleanly() == answer


async def test_a_close_payload_over_125_bytes_fails(echo):
    """7.3.6: a close payload over 125 bytes."""
    raw = await echo()
    raw.send_frame(CLOSE, struct.pack("!H", 1000) + b"r" * 124)
    await failed(raw)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
async def test_a_mebibyte_message_is_echoed_whole_and_from_small_fragments(echo, opcode):
    """9.1-9.4: a 1 MiB message in one frame, and in 1,024 fragments of 1 KiB."""
    raw = await echo()
    payload = b"y" * (1 << 20)
    raw.send_frame(opcode, payload)
    assert await raw.read_frame(timeout=10) == (opcode, payload)
    for n in range(1024):
        raw.send_frame(opcode if n == 0 else CONTINUATION, payload[n * 1024 : (n + 1) * 1024], fin=n == 1023)
    assert await raw.read_frame(timeout=10) == (opcode, payload)


async def test_a_thousand_messages_in_one_write_are_echoed_in_order(echo):
    """9.7-9.8: a thousand small messages written at once, echoed in order."""
    raw = await echo()
    raw.writer.write(b"".join(RawSocket.frame(TEXT, b"%d" % n) for n in range(1000)))
    for n in range(1000):
        await echoed(raw, TEXT, b"%d" % n)


async def test_a_message_the_peer_fragmented_is_echoed_whole(echo):
    """10.1.1: 65,536 bytes of text in frames of 1,300."""
    raw = await echo()
    payload = b"*" * 65536
    chunks = [payload[n : n + 1300] for n in range(0, len(payload), 1300)]
    for n, chunk in enumerate(chunks):
        raw.send_frame(TEXT if n == 0 else CONTINUATION, chunk, fin=n == len(chunks) - 1)
    assert await raw.read_frame() == (TEXT, payload)


async def test_the_server_is_not_stalled_by_a_slowly_arriving_message(echo):
    """9.5-9.6 in spirit: a message arriving in small pieces while another socket is served."""
    slow, quick = await echo(), await echo()
    frame = RawSocket.frame(TEXT, b"z" * 10_000)
    for n in range(0, len(frame), 1000):
        slow.writer.write(frame[n : n + 1000])
        await slow.writer.drain()
        quick.send_frame(TEXT, b"%d" % n)
        await echoed(quick, TEXT, b"%d" % n)
    await echoed(slow, TEXT, b"z" * 10_000)
    await asyncio.sleep(0)
