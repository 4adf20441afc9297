"""A test client over a real socket, with a timeout on every wait."""

import asyncio
import base64
import os
import socket
from typing import Any

import orjson
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from aether_tornado.ws import frames

from .timing import scaled

# Seconds any wait of a client takes at most, unless told otherwise; every one is scaled (timing.py).
TIMEOUT = 5.0


class Client:
    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str, headers: dict[str, str] | None = None) -> "Client":
        request = HTTPRequest(url, headers=headers or {})
        conn = await asyncio.wait_for(websocket_connect(request), scaled(TIMEOUT))
        return cls(conn)

    @classmethod
    async def joined(cls, url: str, **kwargs: Any) -> "Client":
        """Connect and consume the snapshot and the client's own join event, if any."""
        client = await cls.connect(url, **kwargs)
        snapshot = await client.recv()
        assert snapshot["payload"]["event"] == "snapshot", snapshot
        client.snapshot = snapshot
        return client

    async def send(self, **fields: Any) -> None:
        await self.conn.write_message(orjson.dumps(fields).decode())

    async def send_raw(self, frame: str | bytes, binary: bool = False) -> None:
        await self.conn.write_message(frame, binary=binary)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.conn.read_message(), scaled(timeout))
        assert frame is not None, f"closed: {self.conn.close_code} {self.conn.close_reason}"
        return orjson.loads(frame)

    async def recv_where(self, timeout: float = TIMEOUT, **match: Any) -> dict[str, Any]:
        """Skip frames until one whose fields (or payload fields) equal ``match``."""

        async def find() -> dict[str, Any]:
            while True:
                message = await self.recv(timeout)
                fields = {**message, **(message.get("payload") or {})}
                if all(fields.get(key) == value for key, value in match.items()):
                    return message

        return await asyncio.wait_for(find(), scaled(timeout))

    async def closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
        """Read until the server closes; return its close code and reason."""

        async def drain() -> None:
            while await self.conn.read_message() is not None:
                pass

        await asyncio.wait_for(drain(), scaled(timeout))
        return self.conn.close_code, self.conn.close_reason

    async def nothing_within(self, seconds: float) -> None:
        """Assert that no frame arrives for ``seconds``."""
        try:
            frame = await asyncio.wait_for(self.conn.read_message(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame!r}")

    def close(self) -> None:
        self.conn.close()


def errors_of(message: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    assert message["cmd"] == "ERROR", message
    return message["payload"]["code"], message["payload"]["errors"]


class RawSocket:
    """A hand-made WebSocket client, for what a well-behaved library refuses to do.

    Frames are built and parsed by the server's own sans-I/O module; what it reads from the
    server is checked by the same rules, so a malformed server frame fails the test.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = frames.FrameReader(from_client=False)

    @classmethod
    async def open(cls, port: int, path: str, recv_buffer: int | None = None, with_request: bytes = b"") -> "RawSocket":
        """Connect and upgrade; ``with_request`` goes in the same write as the request (pipelined frames)."""
        raw = await cls.connected(port, recv_buffer)
        raw.writer.write(upgrade_request(port, path) + with_request)
        response = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), scaled(TIMEOUT))
        assert response.startswith(b"HTTP/1.1 101"), response
        return raw

    @classmethod
    async def connected(cls, port: int, recv_buffer: int | None = None) -> "RawSocket":
        """A TCP connection to the server, nothing sent yet."""
        sock = socket.socket()
        if recv_buffer:  # set before connecting, so the TCP window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), scaled(TIMEOUT))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(self.frame(opcode, payload, fin))

    @staticmethod
    def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
        """A masked client frame."""
        return frames.build(opcode, payload, fin, mask_key=os.urandom(4))

    async def read_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """One server frame as (opcode, payload); raises EOFError when the connection ends first."""

        async def read() -> tuple[int, bytes]:
            while (event := self.frames.next()) is None:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise EOFError("the server ended the connection")
                self.frames.feed(data)
            opcode, payload = event
            return opcode, payload.encode() if isinstance(payload, str) else payload

        return await asyncio.wait_for(read(), scaled(timeout))

    async def close_code(self, timeout: float = TIMEOUT) -> tuple[int, int]:
        """Read until the close frame; return (text frames read before it, close code)."""

        async def drain() -> tuple[int, int]:
            count = 0
            while True:
                opcode, payload = await self.read_frame(timeout)
                if opcode == frames.CLOSE:
                    return count, frames.close_code(payload)
                count += opcode == frames.TEXT

        return await asyncio.wait_for(drain(), scaled(timeout))

    async def closed_cleanly(self, timeout: float = TIMEOUT) -> int:
        """The server's close code, once its close frame and then the end of the TCP stream arrived.

        For a connection the server failed (it ends the stream after its close frame); after
        a close handshake it waits for ours. An abrupt drop fails: a reset, or the end of the
        stream without a close frame.
        """

        async def close_then_end() -> int:
            _, code = await self.close_code(timeout)
            assert await self.reader.read(1 << 16) == b"", "bytes after the close frame"
            return code

        return await asyncio.wait_for(close_then_end(), scaled(timeout))

    def close(self) -> None:
        self.writer.close()


def upgrade_request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
