"""Tornado handlers for the WebSocket endpoint: the handshake's checks and the upgrade."""

import asyncio
import base64
import errno
import hashlib
import logging
import os
import socket
from urllib.parse import urlsplit

import orjson
import tornado.web

from .auth import AuthError, verify_token
from .connection import ClientConnection, Flusher
from .errors import (
    FORBIDDEN_ORIGIN,
    INVALID_ID,
    NOT_FOUND,
    NOT_WEBSOCKET,
    OVER_CAPACITY,
    UNAUTHORIZED,
)
from .ids import id_problem
from .node import Node

log = logging.getLogger(__name__)

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


class JSONErrorMixin:
    """Refusals as ``{"code", "field", "msg"}`` JSON, never Tornado's HTML pages."""

    def refuse(self, status: int, code: str, msg: str, field: str | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"code": code, "field": field, "msg": msg}))


class NotFound(JSONErrorMixin, tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.refuse(404, NOT_FOUND, f"No route for {self.request.path}.")


class ClientSocket(JSONErrorMixin, tornado.web.RequestHandler):
    """The handshake at ``/v3/ws/group/{group_id}/client/{client_id}``, then the socket moves on.

    Every refusal is answered before the upgrade, in JSON; an accepted socket leaves Tornado
    for a ClientConnection on the same event loop.
    """

    def initialize(self, node: Node, flusher: Flusher) -> None:
        self.node = node
        self.config = node.settings
        self._flusher = flusher

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # Undecodable bytes become U+FFFD, which the ID check then refuses with 400.
        return value.decode("utf-8", "replace")

    def refuse(self, status: int, code: str, msg: str, field: str | None = None) -> None:
        self.node.metrics.errors.inc(code)
        super().refuse(status, code, msg, field)

    async def get(self, group_id: str, client_id: str) -> None:
        for field, value in (("group_id", group_id), ("client_id", client_id)):
            why = id_problem(value)
            if why is not None:
                return self.refuse(400, INVALID_ID, f"{field} is not a Vision ID: {why}", field)
        origin = self.request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin):
            return self.refuse(403, FORBIDDEN_ORIGIN, f"Origin {origin} is not allowed to connect.")
        may_broadcast = True
        if self.config.jwt_secret is not None:
            try:
                grant = verify_token(
                    self.config.jwt_secret, self.get_query_argument("token", None), group_id, client_id
                )
            except AuthError as error:
                return self.refuse(401, UNAUTHORIZED, str(error))
            may_broadcast = grant.may_broadcast
        key = self._websocket_key()
        if key is None:
            return None
        if self.node.sockets >= self.config.max_connections:
            log.warning("refused %s/%s: at the connection limit", group_id, client_id)
            return self.refuse(503, OVER_CAPACITY, "The server is at its connection limit; retry later.")
        try:
            # The socket's own descriptor, for the protocol; Tornado closes its one.
            descriptor = os.dup(self.request.connection.stream.socket.fileno())
        except OSError as error:
            if error.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            log.warning("refused %s/%s: out of file descriptors (%s)", group_id, client_id, error.strerror)
            return self.refuse(503, OVER_CAPACITY, "The server is at its connection limit; retry later.")
        await self._upgrade(key, (group_id, client_id, may_broadcast), descriptor)
        return None

    def _websocket_key(self) -> str | None:
        """The client's Sec-WebSocket-Key, or None after answering a request that is no upgrade."""
        headers = self.request.headers
        upgrade = headers.get("Upgrade", "").lower() == "websocket"
        connection = "upgrade" in (part.strip().lower() for part in headers.get("Connection", "").split(","))
        if not upgrade or not connection:
            self.refuse(400, NOT_WEBSOCKET, "This is a WebSocket endpoint: send an upgrade request.")
            return None
        if headers.get("Sec-WebSocket-Version") != "13":
            self.set_header("Sec-WebSocket-Version", "13")
            self.refuse(426, NOT_WEBSOCKET, "Only WebSocket version 13 is supported.")
            return None
        key = headers.get("Sec-WebSocket-Key")
        if not key:
            self.refuse(400, NOT_WEBSOCKET, "Sec-WebSocket-Key is missing.")
            return None
        return key

    async def _upgrade(self, key: str, handshake: tuple[str, str, bool], descriptor: int) -> None:
        accept = base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest()).decode()
        response = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
        self.node.sockets += 1  # taken before any await: simultaneous handshakes cannot overshoot
        sock = socket.socket(fileno=descriptor)
        conn = ClientConnection(self.node, self._flusher, handshake, response)
        stream = self.detach()
        try:
            # Tornado may already hold what the client sent after its request; it goes first.
            conn.feed_early(bytes(stream._read_buffer))
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, sock=sock)
        except BaseException:
            if not conn.made:  # otherwise connection_lost gives the slot back
                self.node.sockets -= 1
                sock.close()
            raise
        finally:
            stream.close()  # closes Tornado's descriptor; the socket lives on in ours

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.config.allowed_origins
        if "*" in allowed or origin.rstrip("/").lower() in allowed:  # Settings stores them so
            return True
        return urlsplit(origin).netloc.lower() == self.request.host.lower()
