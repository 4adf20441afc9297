"""The V3 handshake at ``/v3/ws/group/{group_id}/client/{client_id}``: its checks and the upgrade.

A connection whose first bytes are ``GET /v3/ws/`` never reaches Tornado (accept.py sends it
here): its request head is read by a ws/upgrade.py reader and decided below, in the order and
with the answers the protocol gives (docs/protocol.md, section 1): the host, the path and
its IDs, the origin, the token, a ban, the recovery positions, the upgrade itself, then
capacity. Every refusal is JSON, as the API's are, and logged as Tornado logs a request; an
accepted socket becomes a ClientSession at once, on the transport it was accepted on.

A handshake can also come on a connection Tornado already serves: a proxy such as nginx
sends its next request on a connection it keeps alive. Tornado routes it to ``KeptAlive``,
which decides the same way, then takes the socket from Tornado.
"""

import asyncio
import errno
import logging
import math
import re
import socket
import sys
from typing import NamedTuple
from urllib.parse import urlsplit

import orjson
import tornado.web
from tornado.escape import parse_qs_bytes, url_unescape
from tornado.netutil import is_valid_ip

from ..core.node import Node
from ..core.session import ClientSession, Handshake
from ..v3.channels import STREAMS, Position
from ..v3.errors import (
    BANNED,
    FORBIDDEN_ORIGIN,
    INVALID_ID,
    INVALID_POSITION,
    NOT_WEBSOCKET,
    OVER_CAPACITY,
    UNAUTHORIZED,
)
from ..v3.ids import id_problem
from ..v3.schema import VisionId
from ..ws.upgrade import Head, Refusal, UpgradeReader, handshake_response, upgrade_problem
from ..ws.websocket import Flusher, Limits, WebSocketProtocol
from .auth import AuthError, key_access, verify_token
from .headers import DEFAULT_HEADERS, log_answer, misdirected, not_found
from .tornado_internals import take_socket

log = logging.getLogger(__name__)

# What a connection's first bytes are when it is a V3 handshake.
PREFIX = b"GET /v3/ws/"
_PATH = re.compile(r"/v3/ws/group/([^/]+)/client/([^/]+)")
# An operator's watcher of a group (hub.Connection.watching), and the client_id its logs show.
_WATCH_PATH = re.compile(r"/v3/ws/watch/group/([^/]+)")
WATCHER = "operator"
# Control characters in a query argument become spaces, as Tornado's get_query_argument does.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")
_SECURE_HEADERS = tuple(DEFAULT_HEADERS.items())
_OVER_CAPACITY = "The server is at its connection limit; retry later."
# The most of a User-Agent header a connection keeps for the operator's view.
MAX_USER_AGENT = 200


class Admitted(NamedTuple):
    """A handshake that passed every check, and the key its 101 answers."""

    handshake: Handshake
    key: str


class Handshakes:
    """Serves V3 handshakes on connections handed over by the acceptor; counts those under way."""

    def __init__(self, node: Node, flusher: Flusher, limits: Limits, hosts: frozenset[str], timeout: float) -> None:
        """``hosts``: the names the server answers for; ``timeout``: how long a request head may take."""
        self.node = node
        self.settings = node.settings
        self._flusher = flusher
        self._limits = limits
        self._hosts = hosts
        self._timeout = timeout
        self.under_way = 0  # connections from their hand-over until upgraded or closed

    def serve(self, sock: socket.socket) -> None:
        """Read the handshake of an accepted (non-blocking) connection, then serve it."""
        self.under_way += 1
        self.node.spawn(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        reader = UpgradeReader(self.decide, self._timeout, self._ended)
        if not await _hand_over(sock, reader):
            self._ended()

    def _ended(self) -> None:
        self.under_way -= 1

    def decide(self, head: Head, early: bytes) -> WebSocketProtocol | Refusal:
        """The socket of an accepted handshake, or the refusal to answer (logged here)."""
        admitted = self.admit(head)
        if isinstance(admitted, Refusal):
            _log_refusal(head, admitted)
            return admitted
        return self.open(admitted, early)

    def open(self, admitted: Admitted, early: bytes) -> WebSocketProtocol:
        """The socket of an admitted handshake, its 101 to go first; ``early`` came after the request."""
        response = handshake_response(admitted.key)
        conn = ClientSession(self.node, self._flusher, self._limits, admitted.handshake, response, early)
        self.node.sockets += 1  # the session gives the slot back when its socket is lost
        return conn.socket

    def admit(self, head: Head) -> Admitted | Refusal:
        """Check a handshake, in the protocol's order."""
        wrong_host = misdirected(head.headers.get("Host", ""), self._hosts)
        if wrong_host is not None:
            return _refusal(421, wrong_host)
        watching = False
        if (match := _PATH.fullmatch(head.path)) is not None:
            group_id, client_id = (_path_argument(value) for value in match.groups())
        elif (match := _WATCH_PATH.fullmatch(head.path)) is not None:
            group_id, client_id, watching = _path_argument(match[1]), WATCHER, True
        else:
            return _refusal(404, not_found(head.path))
        query = parse_qs_bytes(head.query, keep_blank_values=True)
        for field, value in (("group_id", group_id), ("client_id", client_id)):
            why = id_problem(value)
            if why is not None:
                return self.refuse(400, INVALID_ID, f"{field} is not a Vision ID: {why}", field)
        origin = head.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, head):
            return self.refuse(403, FORBIDDEN_ORIGIN, f"Origin {origin} is not allowed to connect.")
        if watching:
            return self._admit_watcher(head, query, VisionId(group_id))
        may_broadcast, expires = True, None
        if self.settings.jwt_secret is not None:
            try:
                grant = verify_token(self.settings.jwt_secret, _token(head, query), group_id, client_id)
            except AuthError as error:
                return self.refuse(401, UNAUTHORIZED, str(error))
            may_broadcast, expires = grant.may_broadcast, grant.expires
        if banned := self.node.bans.remaining(client_id):
            seconds = math.ceil(banned)
            msg = f"{client_id} is banned by an operator for {seconds} more seconds."
            return self.refuse(403, BANNED, msg, headers=(("Retry-After", str(seconds)),))
        try:
            since = recover_positions(_query_argument(query, "recover"))
        except ValueError as error:
            return self.refuse(400, INVALID_POSITION, f"recover: {error}", "recover")
        proof = _query_argument(query, "proof") if since is not None else None
        handshake = Handshake(
            VisionId(group_id), VisionId(client_id), may_broadcast, since, proof, expires, False, *_origin_of(head)
        )
        return self._upgrade(head, handshake)

    def _admit_watcher(self, head: Head, query: dict[str, list[bytes]], group_id: VisionId) -> Admitted | Refusal:
        """An operator's watcher: its API key (or the read-only key) instead of a token."""
        api_key = self.settings.api_key
        if (
            api_key is not None
            and key_access(api_key, self.settings.api_read_key, _query_argument(query, "key") or "") is None
        ):
            return self.refuse(401, UNAUTHORIZED, "Watching a group needs the API key (or the read-only key) as ?key=.")
        address, user_agent = _origin_of(head)
        handshake = Handshake(group_id, VisionId(WATCHER), False, watching=True, address=address, user_agent=user_agent)
        return self._upgrade(head, handshake)

    def _upgrade(self, head: Head, handshake: Handshake) -> Admitted | Refusal:
        """The last checks, common to clients and watchers: the upgrade itself, then capacity."""
        problem = upgrade_problem(head.headers)
        if problem is not None:
            status, msg = problem
            version = (("Sec-WebSocket-Version", "13"),) if status == 426 else ()
            return self.refuse(status, NOT_WEBSOCKET, msg, headers=version)
        if self.node.sockets >= self.settings.max_connections:
            log.warning("refused %s/%s: at the connection limit", handshake.group_id, handshake.client_id)
            return self.refuse(503, OVER_CAPACITY, _OVER_CAPACITY)
        return Admitted(handshake, head.headers["Sec-WebSocket-Key"])

    def refuse(
        self, status: int, code: str, msg: str, field: str | None = None, headers: tuple[tuple[str, str], ...] = ()
    ) -> Refusal:
        self.node.metrics.errors.inc(code)
        return _refusal(status, {"code": code, "field": field, "msg": msg}, headers)

    def _origin_allowed(self, origin: str, head: Head) -> bool:
        allowed = self.settings.allowed_origins
        if "*" in allowed or origin.rstrip("/").lower() in allowed:  # Settings stores them so
            return True
        return urlsplit(origin).netloc.lower() == (head.headers.get("Host") or "127.0.0.1").lower()


class KeptAlive(tornado.web.RequestHandler):
    """A handshake on a connection Tornado serves: decided as any other, then the socket taken over."""

    def initialize(self, handshakes: Handshakes) -> None:
        self.handshakes = handshakes

    async def get(self) -> None:
        request = self.request
        head = Head(request.method or "GET", request.path, request.query, request.headers, request.remote_ip or "")
        admitted = self.handshakes.admit(head)
        if isinstance(admitted, Refusal):
            return self._answer(admitted)
        try:
            sock, early = take_socket(self)
        except OSError as error:
            if error.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            log.warning("refused a handshake: out of file descriptors (%s)", error.strerror)
            return self._answer(self.handshakes.refuse(503, OVER_CAPACITY, _OVER_CAPACITY))
        if not await _hand_over(sock, self.handshakes.open(admitted, early)):
            self.handshakes.node.sockets -= 1  # the session never opened: its slot is free
        return None

    def _answer(self, refusal: Refusal) -> None:
        self.set_status(refusal.status)
        self.set_header("Content-Type", "application/json")
        for name, value in refusal.headers:
            self.set_header(name, value)
        self.finish(refusal.body)


async def _hand_over(sock: socket.socket, protocol: asyncio.Protocol) -> bool:
    """Serve an accepted socket with ``protocol``, writes sent without delay; False (and the
    socket closed) if the connection died before it had a transport."""
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock=sock)
    except OSError:
        sock.close()
        return False
    return True


def _log_refusal(head: Head, refusal: Refusal) -> None:
    """As Tornado's answers are logged (app.py)."""
    elapsed = 1000 * (asyncio.get_running_loop().time() - head.started)
    log_answer(refusal.status, head.method, head.path, _remote_ip(head), elapsed)


def _origin_of(head: Head) -> tuple[str, str]:
    """Where a connection comes from, for the operator's view: its address and its user agent
    (the agent cut to MAX_USER_AGENT characters; both shared by the many connections that send
    the same, as those behind one proxy or of one browser do)."""
    return sys.intern(_remote_ip(head)), sys.intern(head.headers.get("User-Agent", "")[:MAX_USER_AGENT])


def _remote_ip(head: Head) -> str:
    """The client's address as Tornado's ``xheaders`` gives it: a proxy's X-Real-Ip or X-Forwarded-For."""
    headers = head.headers
    if "X-Real-Ip" not in headers and "X-Forwarded-For" not in headers:
        return head.peer  # not through a proxy: nothing to parse or check
    forwarded = headers.get("X-Forwarded-For", head.peer).split(",")[-1].strip()
    ip = headers.get("X-Real-Ip", forwarded)
    return ip if is_valid_ip(ip) else head.peer


def _refusal(status: int, body: dict[str, object], headers: tuple[tuple[str, str], ...] = ()) -> Refusal:
    return Refusal(status, orjson.dumps(body), headers + _SECURE_HEADERS)


def _path_argument(value: str) -> str:
    """A path segment decoded: undecodable bytes become U+FFFD, which the ID check then refuses."""
    return url_unescape(value, encoding=None, plus=False).decode("utf-8", "replace")


def _query_argument(query: dict[str, list[bytes]], name: str) -> str | None:
    """The last value of a query argument, as Tornado's get_query_argument gives it."""
    values = query.get(name)
    if not values:
        return None
    return _CONTROL.sub(" ", values[-1].decode("utf-8", "replace")).strip()


def _token(head: Head, query: dict[str, list[bytes]]) -> str | None:
    """``?token=`` (browsers cannot set a WebSocket's headers), else ``Authorization: Bearer``."""
    token = _query_argument(query, "token")
    if token is None:
        scheme, _, credentials = head.headers.get("Authorization", "").partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else None
    return token


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
