"""Tornado handlers: handshake checks, frames in and out. No routing decisions here."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from urllib.parse import urlsplit

import orjson
import tornado.web
import tornado.websocket
from tornado.iostream import StreamClosedError

from .auth import AuthError, verify_token
from .errors import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    FORBIDDEN_ORIGIN,
    INVALID_ID,
    NOT_FOUND,
    OVER_CAPACITY,
    RATE_LIMITED,
    REASON_BACKLOG,
    REASON_PING,
    REASON_RATE,
    UNAUTHORIZED,
    UNSUPPORTED_FRAME,
    ProtocolError,
)
from .ids import id_problem
from .limits import TokenBucket
from .node import Node
from .schema import WSMessageV3, decode

log = logging.getLogger(__name__)


class JSONErrorMixin:
    """Refusals as ``{"code", "field", "msg"}`` JSON, never Tornado's HTML pages."""

    def refuse(self, status: int, code: str, msg: str, field: str | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"code": code, "field": field, "msg": msg}))


class NotFound(JSONErrorMixin, tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.refuse(404, NOT_FOUND, f"No route for {self.request.path}.")


class Flusher:
    """Writes every connection's queued frames in one pass, at most once per ``interval``.

    A fan-out queues one frame on each receiver. An idle server writes at the next loop
    iteration; a busy one waits until ``interval`` after its last pass, so the frames that
    meet on one socket meanwhile leave in one ``send`` call: the system call per frame is
    what a fan-out costs most (see bench/RESULTS.md).
    """

    def __init__(self, interval: float = 0.001) -> None:
        self._interval = interval
        self._dirty: list[ClientSocket] = []
        self._last = 0.0

    def mark(self, conn: "ClientSocket") -> None:
        if not self._dirty:
            loop = asyncio.get_running_loop()
            wait = self._last + self._interval - loop.time()
            if wait > 0:
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        self._last = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.write_queued()


class ClientSocket(JSONErrorMixin, tornado.websocket.WebSocketHandler):
    """One client's WebSocket at ``/v3/ws/group/{group_id}/client/{client_id}``."""

    def initialize(self, node: Node, flusher: Flusher) -> None:
        self.node = node
        self.config = node.settings
        self._flusher = flusher
        self._out: list[bytes] = []
        self._out_bytes = 0

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # Undecodable bytes become U+FFFD, which the ID check then refuses with 400.
        return value.decode("utf-8", "replace")

    async def get(self, group_id: str, client_id: str) -> None:
        for field, value in (("group_id", group_id), ("client_id", client_id)):
            why = id_problem(value)
            if why is not None:
                return self.refuse(400, INVALID_ID, f"{field} is not a Vision ID: {why}", field)
        return await self._checked_get(group_id, client_id)

    def refuse(self, status: int, code: str, msg: str, field: str | None = None) -> None:
        self.node.metrics.errors.inc(code)
        super().refuse(status, code, msg, field)

    async def _checked_get(self, group_id: str, client_id: str) -> None:
        origin = self.request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin):
            return self.refuse(403, FORBIDDEN_ORIGIN, f"Origin {origin} is not allowed to connect.")
        self.may_broadcast = True
        if self.config.jwt_secret is not None:
            try:
                grant = verify_token(
                    self.config.jwt_secret, self.get_query_argument("token", None), group_id, client_id
                )
            except AuthError as error:
                return self.refuse(401, UNAUTHORIZED, str(error))
            self.may_broadcast = grant.may_broadcast
        if self.node.sockets >= self.config.max_connections:
            log.warning("refused %s/%s: at the connection limit", group_id, client_id)
            return self.refuse(503, OVER_CAPACITY, "The server is at its connection limit; retry later.")
        self.group_id = group_id
        self.client_id = client_id
        # The slot is taken before the upgrade, so simultaneous handshakes cannot overshoot;
        # WebSocketHandler.get returns when the connection has ended.
        self.node.sockets += 1
        try:
            await super().get(group_id, client_id)
        finally:
            self.node.sockets -= 1

    def check_origin(self, origin: str) -> bool:
        return True  # get() has already checked it, answering in JSON

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.config.allowed_origins
        if "*" in allowed or origin.rstrip("/").lower() in allowed:  # Settings stores them so
            return True
        return urlsplit(origin).netloc.lower() == self.request.host.lower()

    async def open(self, group_id: str, client_id: str) -> None:
        now = time.monotonic()
        self.lease_key = self.node.new_lease_key()
        self.last_seen = now
        self._bucket = TokenBucket(self.config.rate_limit, self.config.rate_burst, now)
        self._strikes = 0
        self._unanswered_ping = False
        self._held: list[bytes] | None = []
        self._held_bytes = 0
        self.set_nodelay(True)
        self._attached = asyncio.ensure_future(self.node.attach(self))
        await self._attached

    def keepalive(self) -> None:
        if self._unanswered_ping:
            log.debug("closing %s/%s: no answer to a ping", self.group_id, self.client_id)
            self.close(CLOSE_NORMAL, REASON_PING)
            return
        self._unanswered_ping = True
        with contextlib.suppress(tornado.websocket.WebSocketClosedError, StreamClosedError):
            self.ping()

    def on_pong(self, data: bytes) -> None:
        self._unanswered_ping = False

    def on_message(self, frame: str | bytes) -> Awaitable[None] | None:
        now = time.monotonic()
        self.last_seen = now
        self._unanswered_ping = False  # any frame shows the peer is alive
        if not self._bucket.take(now):
            return self._rate_limited()
        self._strikes = 0
        if isinstance(frame, bytes):
            return self._reply(ProtocolError(UNSUPPORTED_FRAME, "Binary frames are not supported; send JSON text."))
        try:
            message = decode(frame)
        except ProtocolError as problem:
            return self._reply(problem)
        return self._route(message)

    async def _route(self, message: WSMessageV3) -> None:
        try:
            await self.node.receive(self, message)
        except ProtocolError as problem:
            self._reply(problem)

    def _rate_limited(self) -> None:
        if self._strikes >= self.config.rate_strikes:
            log.warning(
                "closing %s/%s: still sending after %d rate_limited replies",
                self.group_id,
                self.client_id,
                self._strikes,
                extra={"conn": self.lease_key},
            )
            self.close(CLOSE_POLICY_VIOLATION, REASON_RATE)
            return
        self._strikes += 1
        rate = self.config.rate_limit
        self._reply(ProtocolError(RATE_LIMITED, f"Too many messages: at most {rate:g} a second; this one was dropped."))

    def _reply(self, problem: ProtocolError) -> None:
        log.debug(
            "%s/%s: %s: %s", self.group_id, self.client_id, problem.code, problem.msg, extra={"conn": self.lease_key}
        )
        self.node.metrics.errors.inc(problem.code)
        self.send(self.node.error_frame(self, problem))

    def send(self, frame: bytes) -> None:
        """Queue a ready frame for this iteration's flush; past the outbound cap, close with 1013."""
        if self._held is not None:
            self._held.append(frame)
            self._held_bytes += len(frame)
            if self._held_bytes > self.config.outbound_buffer_bytes:
                self._overflow()
            return
        protocol = self.ws_connection
        if protocol is None or protocol.is_closing():
            return
        # IOStream has no public count of unsent bytes; _write_buffer is what it holds.
        if self._out_bytes + len(frame) + len(protocol.stream._write_buffer) > self.config.outbound_buffer_bytes:
            self._overflow()
            return
        if not self._out:
            self._flusher.mark(self)
        self._out.append(frame)
        self._out_bytes += len(frame)

    def release(self, first: bytes) -> None:
        held, self._held = self._held or [], None
        self.send(first)
        for frame in held:
            self.send(frame)

    def write_queued(self) -> None:
        """Write the queued frames: straight to the socket when nothing waits before them."""
        out, self._out, self._out_bytes = self._out, [], 0
        protocol = self.ws_connection
        if not out or protocol is None or protocol.is_closing():
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        stream = protocol.stream
        if not stream._write_buffer:
            try:
                sent = stream.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return  # the connection is gone; Tornado notices on its next read
            if sent == len(data):
                return
            data = data[sent:]
        with contextlib.suppress(StreamClosedError):
            stream.write(data)  # IOStream waits for the socket to take the rest

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.write_queued()  # frames queued before the close frame go first
        super().close(code, reason)

    def _overflow(self) -> None:
        self._held, self._held_bytes, self._out, self._out_bytes = [], 0, [], 0
        fields = {"conn": self.lease_key}
        log.warning("closing %s/%s: outbound buffer full", self.group_id, self.client_id, extra=fields)
        self.close(CLOSE_TRY_AGAIN_LATER, REASON_BACKLOG)

    def on_close(self) -> None:
        if hasattr(self, "_attached"):
            self.node.spawn(self._detach())

    async def _detach(self) -> None:
        with contextlib.suppress(Exception):  # a failed attach was logged by Tornado already
            await self._attached
        await self.node.detach(self)
