"""The opening handshake (RFC 6455 section 4), read straight off a fresh connection.

An ``UpgradeReader`` is a connection's first protocol: it reads one HTTP request head, at most
``MAX_HEAD_BYTES`` of it within its time, and asks its ``decide`` what to do. A refusal is
answered and the connection closed after it; a yes is a ``WebSocketProtocol`` that takes the
transport over, with whatever the client sent after its request. No HTTP framework is in the
way: a handshake is parsed once, with Tornado's own parsing functions, and the socket stays
on the one transport it was accepted on.
"""

import asyncio
import base64
import hashlib
from collections.abc import Callable
from http.client import responses
from typing import NamedTuple, cast

from tornado.httputil import HTTPHeaders, HTTPInputError, parse_request_start_line

from .websocket import WebSocketProtocol

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
# The most a request head may weigh: Tornado's own bound for a request's headers.
MAX_HEAD_BYTES = 65536
# How long a refused client may take to close its side before its connection is dropped.
LINGER_SECONDS = 2.0


class Head(NamedTuple):
    """An HTTP request's head: its method, path and query (undecoded), its headers, and who sent
    it when (the peer's address, and the loop's time its connection was made)."""

    method: str
    path: str
    query: str
    headers: HTTPHeaders
    peer: str = ""
    started: float = 0.0


class Refusal(NamedTuple):
    """An HTTP answer that refuses the upgrade: its status, JSON body (or none) and extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


# What decides on a request head, given the bytes that came after it: a socket, or a refusal.
Decide = Callable[[Head, bytes], "WebSocketProtocol | Refusal"]


def upgrade_problem(headers: HTTPHeaders) -> tuple[int, str] | None:
    """Why a request is no WebSocket upgrade this server takes, as (HTTP status, sentence); None if it is."""
    upgrade = headers.get("Upgrade", "").lower() == "websocket"
    connection = "upgrade" in (part.strip().lower() for part in headers.get("Connection", "").split(","))
    if not upgrade or not connection:
        return 400, "This is a WebSocket endpoint: send an upgrade request."
    if headers.get("Sec-WebSocket-Version") != "13":
        return 426, "Only WebSocket version 13 is supported."
    if not headers.get("Sec-WebSocket-Key"):
        return 400, "Sec-WebSocket-Key is missing."
    if "Content-Length" in headers or "Transfer-Encoding" in headers:
        return 400, "An upgrade request has no body."
    return None


def handshake_response(key: str) -> bytes:
    """The 101 response that accepts a client's Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    digest = base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {digest}\r\n\r\n"
    ).encode()


def parse_head(data: bytes, peer: str = "", started: float = 0.0) -> Head:
    """A request head (without its blank line) as Tornado's HTTP/1 server parses it. Raises HTTPInputError."""
    text = data.decode("latin1").lstrip("\r\n")
    line, _, fields = text.partition("\n")
    start = parse_request_start_line(line.rstrip("\r"))
    path, _, query = start.path.partition("?")
    return Head(start.method, path, query, HTTPHeaders.parse(fields), peer, started)


def refusal_bytes(refusal: Refusal) -> bytes:
    """The whole HTTP answer of a refusal; the connection closes after it."""
    lines = [
        f"HTTP/1.1 {refusal.status} {responses.get(refusal.status, 'Unknown')}",
        *(["Content-Type: application/json"] if refusal.body else []),
        f"Content-Length: {len(refusal.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in refusal.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin1") + refusal.body


class UpgradeReader(asyncio.Protocol):
    """A fresh connection until its request head is read: then a WebSocket, or refused and closed.

    ``ended`` is called once, when the connection leaves this reader (upgraded or closed).
    """

    __slots__ = ("_decide", "_ended", "_head", "_lingering", "_started", "_timeout", "_timer", "_transport")

    def __init__(self, decide: Decide, timeout: float, ended: Callable[[], None]) -> None:
        self._decide = decide
        self._timeout = timeout
        self._ended: Callable[[], None] | None = ended
        self._head = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lingering = False  # refused: what the client still sends is discarded until it closes
        self._started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses, but alike
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self._timer = loop.call_later(self._timeout, self._transport.close)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        searched = max(0, len(self._head) - 3)
        self._head += data
        end = self._head.find(b"\r\n\r\n", searched)
        if end < 0 and len(self._head) <= MAX_HEAD_BYTES:
            return
        assert self._transport is not None  # data comes after connection_made
        peer = self._transport.get_extra_info("peername")
        try:
            if not 0 <= end <= MAX_HEAD_BYTES:
                raise HTTPInputError("the request head is too large")
            head = parse_head(bytes(self._head[:end]), peer[0] if peer else "", self._started)
        except HTTPInputError:
            self._refuse(Refusal(400, b""))  # as Tornado answers a request it cannot parse
            return
        early = bytes(self._head[end + 4 :])
        self._head = bytearray()
        decided = self._decide(head, early)
        if isinstance(decided, Refusal):
            self._refuse(decided)
            return
        self._end()
        self._transport.set_protocol(decided)
        decided.connection_made(self._transport)

    def eof_received(self) -> bool:
        return False  # closes the connection, whether a head was read or not

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _refuse(self, refusal: Refusal) -> None:
        """Answer, shut our side, and read on until the client closes: closing with its bytes
        unread would reset the connection, and the client could lose the answer."""
        assert self._transport is not None  # data comes after connection_made
        self._lingering = True
        self._transport.write(refusal_bytes(refusal))
        if self._transport.can_write_eof():
            self._transport.write_eof()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._transport.abort)

    def _end(self) -> None:
        """Upgraded or gone: the reader's timer and its place among the HTTP connections go."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ended is not None:
            ended, self._ended = self._ended, None
            ended()
