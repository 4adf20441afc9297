"""Bad input never crashes or wedges the server, and the departed leave no trace."""

import asyncio
import os
import random
import socket
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

from aether_tornado import app
from aether_tornado.app import FILES_RESERVED

from .processes import ServerProcess
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
    server = await start_server(
        rate_limit=100000, rate_burst=100000, frame_rate=100000, frame_burst=100000, byte_rate=1e9, byte_burst=10**9
    )
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_out_of_descriptors_the_server_pauses_accepting_logs_once_and_recovers():
    server = ServerProcess("--max-connections", "5", open_files=FILES_RESERVED + 10)
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(FILES_RESERVED + 40)]
        server.wait_for_log("cannot accept connections")
        before = cpu_seconds(server.process.pid)
        await asyncio.sleep(1)  # what it does meanwhile is the point: nothing to await
        assert cpu_seconds(server.process.pid) - before < 0.5  # paused, not spinning on EMFILE
        for sock in silent:
            sock.close()
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{server.port}/healthz", request_timeout=10)
        assert response.code == 200
        server.wait_for_log("accepting connections again")
        assert len(server.lines("cannot accept connections")) == 1
        assert not server.lines("Traceback")
    finally:
        server.kill()


async def test_silent_http_connections_past_the_bound_are_closed_at_once():
    server = ServerProcess("--max-http-connections", "20")
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert extra.recv(1) == b""  # closed by the server, not left to hold a descriptor
        server.wait_for_log("20 HTTP connections open: closing new ones")
        for sock in silent:
            sock.close()
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{server.port}/healthz", request_timeout=10)
        assert response.code == 200
        server.wait_for_log("HTTP connections below the bound again")
    finally:
        server.kill()
