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
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    FORBIDDEN_ORIGIN,
    INVALID_ID,
    NOT_FOUND,
    OVER_CAPACITY,
    RATE_LIMITED,
    REASON_BACKLOG,
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


class ClientSocket(JSONErrorMixin, tornado.websocket.WebSocketHandler):
    """One client's WebSocket at ``/v3/ws/group/{group_id}/client/{client_id}``."""

    def initialize(self, node: Node) -> None:
        self.node = node
        self.config = node.settings

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
        self._held: list[bytes] | None = []
        self._held_bytes = 0
        self.set_nodelay(True)
        self._attached = asyncio.ensure_future(self.node.attach(self))
        await self._attached

    def on_message(self, frame: str | bytes) -> Awaitable[None] | None:
        now = time.monotonic()
        self.last_seen = now
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
        """Write a ready frame; a client whose unsent output would pass the cap is closed with 1013."""
        if self._held is None:
            self._write(frame)
        elif self._held_bytes + len(frame) > self.config.outbound_buffer_bytes:
            self._held, self._held_bytes = [], 0
            self.close(CLOSE_TRY_AGAIN_LATER, REASON_BACKLOG)
        else:
            self._held.append(frame)
            self._held_bytes += len(frame)

    def release(self, first: bytes) -> None:
        held, self._held = self._held or [], None
        self._write(first)
        for frame in held:
            self._write(frame)

    def _write(self, frame: bytes) -> None:
        protocol = self.ws_connection
        if protocol is None or protocol.is_closing():
            return
        stream = protocol.stream
        # IOStream has no public count of unsent bytes; _write_buffer is what it holds.
        if len(stream._write_buffer) + len(frame) > self.config.outbound_buffer_bytes:
            log.warning(
                "closing %s/%s: outbound buffer full", self.group_id, self.client_id, extra={"conn": self.lease_key}
            )
            self.close(CLOSE_TRY_AGAIN_LATER, REASON_BACKLOG)
            return
        with contextlib.suppress(StreamClosedError):
            stream.write(frame)

    def on_close(self) -> None:
        if hasattr(self, "_attached"):
            self.node.spawn(self._detach())

    async def _detach(self) -> None:
        with contextlib.suppress(Exception):  # a failed attach was logged by Tornado already
            await self._attached
        await self.node.detach(self)
