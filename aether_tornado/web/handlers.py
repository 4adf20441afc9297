"""Tornado handlers for the WebSocket endpoint: the handshake's checks and the upgrade."""

import errno
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

from ..core.node import Node
from ..core.session import ClientSession, Handshake
from ..v3.channels import STREAMS, Position
from ..v3.errors import (
    FORBIDDEN_ORIGIN,
    INVALID_ID,
    INVALID_POSITION,
    NOT_FOUND,
    NOT_WEBSOCKET,
    OVER_CAPACITY,
    UNAUTHORIZED,
)
from ..v3.ids import id_problem
from ..v3.schema import VisionId
from ..ws.websocket import Flusher, Limits, State, handshake_response, serve_socket, upgrade_problem
from .auth import AuthError, verify_token
from .headers import SecureHandler
from .tornado_internals import take_socket

log = logging.getLogger(__name__)

# JSONErrorMixin calls a RequestHandler's methods; it derives from one for the type checker only.
if TYPE_CHECKING:
    import tornado.web

    _Handler = tornado.web.RequestHandler
else:
    _Handler = object


class JSONErrorMixin(_Handler):
    """Refusals as ``{"code", "field", "msg"}`` JSON, never Tornado's HTML pages."""

    def refuse(self, status: int, code: str, msg: str, field: str | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"code": code, "field": field, "msg": msg}))


class NotFound(JSONErrorMixin, SecureHandler):
    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            self.refuse(404, NOT_FOUND, f"No route for {self.request.path}.")


class ClientSocket(JSONErrorMixin, SecureHandler):
    """The handshake at ``/v3/ws/group/{group_id}/client/{client_id}``, then the socket moves on.

    Every refusal is answered before the upgrade, in JSON; an accepted socket leaves Tornado
    for a ClientSession on the same event loop.
    """

    def initialize(self, node: Node, flusher: Flusher, limits: Limits) -> None:
        self.node = node
        self.config = node.settings
        self._flusher = flusher
        self._limits = limits

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
        may_broadcast, expires = True, None
        if self.config.jwt_secret is not None:
            try:
                grant = verify_token(self.config.jwt_secret, self._token(), group_id, client_id)
            except AuthError as error:
                return self.refuse(401, UNAUTHORIZED, str(error))
            may_broadcast, expires = grant.may_broadcast, grant.expires
        try:
            since = recover_positions(self.get_query_argument("recover", None))
        except ValueError as error:
            return self.refuse(400, INVALID_POSITION, f"recover: {error}", "recover")
        key = self._websocket_key()
        if key is None:
            return None
        if self.node.sockets >= self.config.max_connections:
            log.warning("refused %s/%s: at the connection limit", group_id, client_id)
            return self.refuse(503, OVER_CAPACITY, "The server is at its connection limit; retry later.")
        try:
            sock, early = take_socket(self)
        except OSError as error:
            if error.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            log.warning("refused %s/%s: out of file descriptors (%s)", group_id, client_id, error.strerror)
            return self.refuse(503, OVER_CAPACITY, "The server is at its connection limit; retry later.")
        response = handshake_response(key)
        proof = self.get_query_argument("proof", None) if since is not None else None
        handshake = Handshake(VisionId(group_id), VisionId(client_id), may_broadcast, since, proof, expires)
        conn = ClientSession(self.node, self._flusher, self._limits, handshake, response, early)
        self.node.sockets += 1  # taken before any await: simultaneous handshakes cannot overshoot
        try:
            await serve_socket(sock, conn.socket)
        except BaseException:
            if conn.socket.state is State.CONNECTING:  # otherwise the connection gives the slot back when it is lost
                self.node.sockets -= 1
            raise
        return None

    def _token(self) -> str | None:
        """``?token=`` (browsers cannot set a WebSocket's headers), else ``Authorization: Bearer``."""
        token = self.get_query_argument("token", None)
        if token is None:
            scheme, _, credentials = self.request.headers.get("Authorization", "").partition(" ")
            token = credentials.strip() if scheme.lower() == "bearer" else None
        return token

    def _websocket_key(self) -> str | None:
        """The client's Sec-WebSocket-Key, or None after answering a request that is no upgrade."""
        problem = upgrade_problem(self.request.headers)
        if problem is not None:
            status, msg = problem
            if status == 426:
                self.set_header("Sec-WebSocket-Version", "13")
            self.refuse(status, NOT_WEBSOCKET, msg)
            return None
        return self.request.headers["Sec-WebSocket-Key"]

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.config.allowed_origins
        if "*" in allowed or origin.rstrip("/").lower() in allowed:  # Settings stores them so
            return True
        return urlsplit(origin).netloc.lower() == self.request.host.lower()


def recover_positions(value: str | None) -> tuple[Position | None, ...] | None:
    """``?recover=`` as positions by stream: None without it, no positions when empty.

    The value lists ``stream:epoch:offset`` items, comma-separated, a stream at most once,
    such as ``group:k3J9x:42,client:a1b2:7``. Raises ValueError with what is wrong.
    """
    if value is None:
        return None
    since: list[Position | None] = [None] * len(STREAMS)
    for item in filter(None, value.split(",")):
        stream, _, position = item.partition(":")
        if stream not in STREAMS:
            raise ValueError(f"{stream[:16]!r} is not a stream; positions are group:, client: or broadcast:")
        index = STREAMS.index(stream)
        if since[index] is not None:
            raise ValueError(f"{stream} is given twice")
        try:
            since[index] = Position.parse(position)
        except ValueError as error:
            raise ValueError(f"{item[:80]!r} is not stream:epoch:offset: {error}") from None
    return tuple(since)
