"""Bad input never crashes or wedges the server, and the departed leave no trace."""

import asyncio
import os
import random
import socket
from pathlib import Path

import pytest
import redis.asyncio
from tornado.httpclient import AsyncHTTPClient

from aether_tornado import app
from aether_tornado.app import FILES_RESERVED

from .conftest import ws_url
from .processes import ServerProcess
from .timing import scaled, until
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
    assert await asyncio.wait_for(reader.read(), scaled(5)) == b""
    writer.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_out_of_descriptors_the_server_pauses_accepting_logs_once_and_recovers():
    server = await ServerProcess.launch("--max-connections", "5", open_files=FILES_RESERVED + 10)
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(FILES_RESERVED + 40)]
        await server.logged("cannot accept connections")
        before = cpu_seconds(server.process.pid)
        await asyncio.sleep(1)  # what it does meanwhile is the point: nothing to await
        assert cpu_seconds(server.process.pid) - before < 0.5  # paused, not spinning on EMFILE
        for sock in silent:
            sock.close()
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{server.port}/healthz", request_timeout=scaled(10))
        assert response.code == 200
        await server.logged("accepting connections again")
        assert len(server.lines("cannot accept connections")) == 1
        assert not server.lines("Traceback")
    finally:
        await server.stopped()


async def test_silent_http_connections_past_the_bound_are_closed_at_once():
    server = await ServerProcess.launch("--max-http-connections", "20")
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert extra.recv(1) == b""  # closed by the server, not left to hold a descriptor
        await server.logged("20 HTTP connections open: closing new ones")
        for sock in silent:
            sock.close()
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{server.port}/healthz", request_timeout=scaled(10))
        assert response.code == 200
        await server.logged("HTTP connections below the bound again")
    finally:
        await server.stopped()


@pytest.mark.expect_errors("routing a message of g_bug/c_bug failed")
async def test_a_bug_while_routing_closes_that_connection_1011_and_no_other(server, monkeypatch):
    client = await Client.joined(ws_url(server, "g_bug", "c_bug"))
    other = await Client.joined(ws_url(server, "g_bug", "c_other"))
    receive = server.node.router.receive

    def broken(conn, message):
        if conn.client_id == "c_bug":
            raise RuntimeError("a bug in routing")
        return receive(conn, message)

    monkeypatch.setattr(server.node.router, "receive", broken)
    await client.send(msg_type="msg", target="group", msg="boom")
    assert await client.closed() == (1011, "internal error")
    await other.send(msg_type="msg", target="echo", msg="still served")
    assert (await other.recv_where(msg="still served"))["target"] == "echo"


@pytest.mark.expect_errors("attaching g_att/c_att failed")
async def test_a_bug_while_attaching_closes_the_new_connection_1011(server, monkeypatch):
    join = server.node.presence.join

    async def broken(lease):
        if lease.client_id == "c_att":
            raise RuntimeError("a bug in presence")
        return await join(lease)

    monkeypatch.setattr(server.node.presence, "join", broken)
    client = await Client.connect(ws_url(server, "g_att", "c_att"))
    assert await client.closed() == (1011, "internal error")
    assert (await Client.joined(ws_url(server, "g_att", "c_fine"))).snapshot["payload"]["clients"] == ["c_fine"]


@pytest.mark.expect_errors("_expire_leases failed; retrying")
async def test_a_housekeeping_step_that_fails_is_logged_once_and_again_when_it_works(start_server, monkeypatch, caplog):
    server = await start_server(lease_seconds=1)  # expiry every 0.1 s
    expire = server.node.presence.expire
    failures = 3

    async def failing_a_few_times():
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("the store said no")
        return await expire()

    monkeypatch.setattr(server.node.presence, "expire", failing_a_few_times)
    await until(lambda: "_expire_leases works again" in caplog.text)
    assert caplog.text.count("_expire_leases failed; retrying") == 1  # once per episode, not per failure


async def test_output_held_for_a_joining_client_is_bounded_like_its_socket(redis_server, start_server):
    """Until its snapshot is out, what a client is sent waits in its session: past the outbound
    buffer it is closed 1013, as a socket that does not read is, instead of held without end."""
    server = await start_server(redis_url=redis_server.url, history_size=0, outbound_buffer_bytes=100_000)
    sender = await Client.joined(ws_url(server, "g_held", "c_sender"))
    pausing = redis.asyncio.Redis.from_url(redis_server.url)
    await pausing.execute_command("CLIENT", "PAUSE", int(scaled(3000)), "WRITE")  # its join waits for Redis
    try:
        joiner = await Client.connect(ws_url(server, "g_held", "c_joiner"))
        for _ in range(4):
            await sender.send(msg_type="msg", target="group", msg="x" * 40_000)
        assert await joiner.closed() == (1013, "outbound buffer full")
    finally:
        await pausing.execute_command("CLIENT", "UNPAUSE")
        await pausing.aclose()
