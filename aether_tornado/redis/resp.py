"""Redis spoken directly for the bridge's hot path: RESP through hiredis, nothing per command.

The bridge sends and receives one Redis message per WebSocket message. redis-py costs, for
each of them, a pipeline object on the way out and a timeout, a health check and a dict on
the way in. Here a publish is one packed command written to the socket, and a received
message one list handed to a callback. Presence keeps redis-py: its calls are rare.
"""

import asyncio
import collections
import functools
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

import attrs
import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

log = logging.getLogger(__name__)

# A reply that arrives without a command waiting for it (subscribe confirmations, messages).
OnPush = Callable[[Any], None]
# Called with a command's reply, a ReplyError, or ConnectionClosed if the reply never came.
OnReply = Callable[[Any], None]


class ReplyError(Exception):
    """Redis answered a command with an error."""


class ConnectionClosed(ConnectionError):
    """The connection to Redis closed before the reply came."""


@attrs.frozen
class Address:
    """Where Redis listens and how to log in, from the same URL redis-py takes."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> "Address":
        """``redis://``, ``rediss://`` (TLS; ``ssl_ca_certs`` and ``ssl_cert_reqs=none`` honoured) or ``unix://``.

        The database number does not matter here: pub/sub channels are shared by all databases.
        Raises ValueError for a URL redis-py would refuse.
        """
        options = parse_url(url)
        tls = None
        if options.get("connection_class") is SSLConnection:
            tls = ssl.create_default_context(cafile=cast(str | None, options.get("ssl_ca_certs")))
            if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        return cls(
            host=options.get("host", "localhost"),
            port=options.get("port", 6379),
            path=options.get("path"),
            username=options.get("username"),
            password=options.get("password"),
            tls=tls,
        )


async def connect(address: Address, timeout: float) -> "RespConnection":
    """Open a connection and log in; raises OSError, ReplyError or TimeoutError."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if address.path is not None:
            _, connection = await loop.create_unix_connection(RespConnection, address.path)
        else:
            _, connection = await loop.create_connection(RespConnection, address.host, address.port, ssl=address.tls)
        try:
            if address.password is not None:
                login = (address.username, address.password) if address.username else (address.password,)
                await connection.call(b"AUTH", *login)
        except BaseException:
            connection.close()
            raise
    return connection


class RespConnection(asyncio.Protocol):
    """One connection: commands written in order, replies matched to them in order.

    Commands issued in one pass of the event loop leave in one write. After ``listen``
    every reply goes to the callback instead (a subscriber's messages and confirmations).
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._outgoing_bytes = 0
        # One entry per command sent and not yet answered: what to call with its reply, if anything.
        self._waiting: collections.deque[OnReply | None] = collections.deque()
        self._on_push: OnPush | None = None
        self.replies = 0  # replies read so far: a watcher tells a hung Redis from an idle one
        self.flushes = 0  # batches of commands handed to the socket so far: one a loop pass at most
        self.queued = 0  # commands queued so far
        # Resolves, with the ConnectionClosed that ended it, once the connection is gone.
        self.closed: asyncio.Future[ConnectionClosed] = self._loop.create_future()

    @property
    def unanswered(self) -> int:
        return len(self._waiting)

    @property
    def unsent_bytes(self) -> int:
        """Commands this process holds because the socket has not taken them yet."""
        buffered = self._transport.get_write_buffer_size() if self._transport is not None else 0
        return self._outgoing_bytes + buffered

    def listen(self, on_push: OnPush) -> None:
        self._on_push = on_push

    def command(self, *args: str | bytes) -> None:
        """Send a command whose reply nobody waits for; on a closed connection it is dropped."""
        if self._send(args) and self._on_push is None:
            self._waiting.append(None)

    def call(self, *args: str | bytes) -> asyncio.Future[Any]:
        """Send a command; the future gets its reply, or fails with ReplyError or ConnectionClosed."""
        reply = self._loop.create_future()
        self.call_then(functools.partial(_settle, reply), *args)
        return reply

    def call_then(self, on_reply: OnReply, *args: str | bytes) -> None:
        """Send a command; ``on_reply`` is called as soon as its reply is read, without a future."""
        if self._send(args):
            self._waiting.append(on_reply)
        else:
            on_reply(ConnectionClosed("the connection to Redis is closed"))

    def close(self) -> None:
        """Close; what was not written yet never will be."""
        self._outgoing, self._outgoing_bytes = [], 0
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, with whatever the socket has not taken; ``connection_lost``
        tells every waiting command."""
        self._outgoing, self._outgoing_bytes = [], 0
        if self._transport is not None:
            self._transport.abort()

    def _send(self, args: tuple[str | bytes, ...]) -> bool:
        if self._transport is None or self._transport.is_closing():
            return False
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        packed = hiredis.pack_command(args)  # type: ignore[arg-type]  # hiredis's stub takes a one-item tuple
        self.queued += 1
        self._outgoing.append(packed)
        self._outgoing_bytes += len(packed)
        return True

    def _flush(self) -> None:
        self.flushes += 1
        outgoing, self._outgoing, self._outgoing_bytes = self._outgoing, [], 0
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(outgoing))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses, but alike

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                self.replies += 1
                if self._on_push is not None:
                    self._on_push(reply)
                elif not self._waiting:
                    raise hiredis.ProtocolError(f"a reply nobody asked for: {reply!r:.80}")
                elif (on_reply := self._waiting.popleft()) is not None:
                    on_reply(reply)
                elif isinstance(reply, ReplyError):
                    log.warning("Redis refused a command: %s", reply)
        except hiredis.ProtocolError as error:
            log.error("closing a Redis connection that broke the protocol: %s", error)
            assert self._transport is not None
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        closed = ConnectionClosed(str(exc) if exc else "the connection to Redis closed")
        waiting, self._waiting = self._waiting, collections.deque()
        for on_reply in waiting:
            if on_reply is not None:
                on_reply(closed)
        if not self.closed.done():
            self.closed.set_result(closed)


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
