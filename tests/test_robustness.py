"""Bad input never crashes or wedges the server, and the departed leave no trace."""

import asyncio
import os
import random

from aether_tornado import app

from .wsclient import Client, RawSocket, errors_of

GARBAGE = [
    "",
    "{",
    "null",
    "[]",
    '{"msg_type": "msg"}',
    '{"msg_type": "msg", "target": "direct", "to_id": "nobody_here"}',
    '{"msg_type": "cmd", "target": "group", "cmd": "' + "x" * 200 + '"}',
    '{"a": ' * 2000 + "1" + "}" * 2000,
    '{"msg_type": "msg", "target": "echo", "payload": ' + "[" * 5000 + "]" * 5000 + "}",
    "\ud7ff\ue000 \u2028",
    '{"msg_type": "msg", "target": "group", "group_id": "g_elsewhere"}',
]


async def test_thousands_of_garbage_frames_and_abrupt_disconnects(start_server):
    server = await start_server(rate_limit=100000, rate_burst=100000, frame_rate=100000, frame_burst=100000)
    rng = random.Random(7)
    path = "/v3/ws/group/g_junk/client/{}"
    await Client.joined(f"ws://127.0.0.1:{server.port}" + path.format("c_watch"))

    # A well-behaved library's garbage: every frame answered, never a crash.
    noisy = await Client.joined(f"ws://127.0.0.1:{server.port}" + path.format("c_noisy"))
    for n in range(3000):
        if n % 7 == 0:
            await noisy.send_raw(os.urandom(rng.randint(1, 300)), binary=True)
        else:
            await noisy.send_raw(rng.choice(GARBAGE))
    codes = set()
    for _ in range(3000):
        message = await noisy.recv_where(cmd="ERROR")
        codes.add(errors_of(message)[0])
    assert codes >= {"invalid_json", "invalid_message", "unsupported_frame", "forbidden", "recipient_offline"}
    noisy.close()

    # Raw sockets that break the protocol or vanish mid-frame.
    for n in range(60):
        raw = await RawSocket.open(server.port, path.format(f"c_raw{n}"))
        kind = n % 4
        if kind == 0:
            raw.send_frame(0x1, b"\xff\xfe invalid utf-8")
        elif kind == 1:
            raw.writer.write(b"\x81\xfe\xff")  # a header cut short
        elif kind == 2:
            raw.send_frame(0x1, b'{"msg_type": "msg", "target": "group"}', fin=False)
        else:
            raw.send_frame(0x3, b"reserved opcode")
        await raw.writer.drain()
        raw.close()

    # Handshakes abandoned halfway.
    for _ in range(30):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /v3/ws/group/g_junk/client/c_half HTTP/1.1\r\nHost: x\r\n")
        writer.close()

    fresh = await Client.joined(f"ws://127.0.0.1:{server.port}" + path.format("c_fresh"))
    await fresh.send(msg_type="msg", target="echo", msg="hello")
    assert (await fresh.recv_where(msg="hello"))["from_id"] == "c_fresh"
    await fresh.send(msg_type="presence", target="echo")
    snapshot = await fresh.recv_where(event="snapshot")
    assert snapshot["payload"]["clients"] == ["c_fresh", "c_watch"]
    assert len(server.node.hub) == 2


async def test_a_connection_that_never_sends_a_request_is_closed(start_server, monkeypatch):
    """Each silent connection holds a descriptor: it may not hold one for long."""
    monkeypatch.setattr(app, "HTTP_IDLE_TIMEOUT", 0.3)
    server = await start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
