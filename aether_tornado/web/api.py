"""The HTTP side: the backend API (docs/protocol.md, "The HTTP API"), health, metrics and the index page."""

import functools
import math
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from ..bridge import BridgeDown
from ..core.inventory import MAX_LISTED, Wanted
from ..core.node import Node
from ..presence.bans import MAX_BAN_SECONDS
from ..v3.channels import Position
from ..v3.errors import (
    CLOSE_BANNED,
    FINAL_CLOSE_CODES,
    FORBIDDEN,
    HISTORY_OFF,
    INVALID_ID,
    INVALID_JSON,
    INVALID_LIMIT,
    INVALID_MESSAGE,
    INVALID_POSITION,
    REASON_BANNED,
    RECIPIENT_OFFLINE,
    UNAUTHORIZED,
    UNAVAILABLE,
    ProtocolError,
)
from ..v3.ids import id_problem, is_id_prefix
from ..v3.schema import decode
from .auth import key_access
from .headers import SecureHandler, page_policy

# Messages GET /v3/groups/{id}/history returns without a limit, and groups GET /v3/groups.
DEFAULT_LIMIT = 100
# Groups GET /v3/groups may list at once.
MAX_GROUPS = 1000
# Bytes of messages one page of GET /v3/groups/{id}/history holds at most (one message always).
HISTORY_PAGE_BYTES = 1 << 20
# What POST /v3/clients/{id}/disconnect closes with unless told: an application's close code.
DISCONNECT_CODE, DISCONNECT_REASON = 4001, "disconnected by the server"
# A close frame's reason is at most 123 bytes of UTF-8.
MAX_REASON_BYTES = 123
# An API error's HTTP status, by protocol error code; any other code is a 400.
STATUS_OF = {RECIPIENT_OFFLINE: 404, UNAVAILABLE: 503, UNAUTHORIZED: 401, FORBIDDEN: 403}


class JSONHandler(SecureHandler):
    def initialize(self, node: Node) -> None:
        self.node = node

    def reply(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))

    def fail(self, problem: ProtocolError) -> None:
        self.node.metrics.errors.inc(problem.code)
        self.reply(
            STATUS_OF.get(problem.code, 400), {"code": problem.code, "msg": problem.msg, "errors": problem.problems}
        )


class BackendHandler(JSONHandler):
    """A ``/v3/`` route for backends: needs ``Authorization: Bearer <api key>`` when one is set.

    The read-only key (``api_read_key``) opens what only reads (GET); what changes something
    (POST, DELETE) needs the full key.
    """

    # What the request may do: everything on an API without a key (``open``), or what its key opens.
    access: str = "open"

    def prepare(self) -> None:
        super().prepare()
        settings = self.node.settings
        if settings.api_key is None or self._finished:
            return
        authorization = self.request.headers.get("Authorization", "")
        bearer, _, presented = authorization.partition(" ")
        access = key_access(settings.api_key, settings.api_read_key, presented if bearer == "Bearer" else "")
        if access is None:
            self.fail(ProtocolError(UNAUTHORIZED, "A valid 'Authorization: Bearer <api key>' header is required."))
            return
        self.access = access
        if access == "read" and self.request.method not in ("GET", "HEAD"):
            self.fail(
                ProtocolError(
                    FORBIDDEN,
                    "This key only reads: publishing, disconnecting and removing history need the full API key.",
                )
            )

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """An ID in the path, decoded: undecodable bytes become U+FFFD, which the ID check refuses."""
        return value.decode("utf-8", "replace")

    def id_refused(self, field: str, value: str) -> bool:
        """Answer 400 ``invalid_id`` unless ``value`` is a Vision ID; whether it did."""
        problem = _invalid_id(field, value)
        if problem is not None:
            self.fail(problem)
        return problem is not None

    def refuse_query(self, problems: list[dict[str, str]]) -> None:
        """Answer 400 naming every bad query argument: ``invalid_limit`` when the first is the
        limit, ``invalid_id`` for an ID or a prefix of one."""
        text = "; ".join(f"{item['field']} {item['problem']}" for item in problems)
        code = INVALID_LIMIT if problems[0]["field"] == "limit" else INVALID_ID
        self.fail(ProtocolError(code, text, problems))

    def json_refused(self) -> bool:
        """Answer 415 unless the body is JSON: a page on another site can POST text/plain without
        asking; it cannot send JSON unasked."""
        media_type = self.request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type == "application/json":
            return False
        self.reply(
            415, {"code": "unsupported_media_type", "msg": "Send the body as Content-Type: application/json.",
                  "errors": []}
        )  # fmt: skip
        return True


class Publish(BackendHandler):
    """``POST /v3/publish``: one WS_Message_V3 to a group, a client or everybody."""

    async def post(self) -> None:
        if self.json_refused():
            return None
        try:
            sent_at = await self.node.router.publish(decode(self.request.body))
        except ProtocolError as problem:
            return self.fail(problem)
        self.reply(202, {"status": "accepted", "sent_at": sent_at})


class ClientDisconnect(BackendHandler):
    """``POST /v3/clients/{client_id}/disconnect``: close all its connections, on every process.

    The body is a JSON object, ``{}`` or with ``code`` (4000 to 4999), ``reason`` and
    ``ban_seconds`` (its handshakes refused that long, everywhere; the code then a final one).
    """

    async def post(self, client_id: str) -> None:
        if self.json_refused():
            return None
        try:
            order = _disconnect_order(client_id, self.request.body)
            await self.node.disconnect(client_id, order.code, order.reason, order.ban_seconds)
        except ProtocolError as problem:
            return self.fail(problem)
        self.reply(
            202,
            {
                "status": "accepted",
                "client_id": client_id,
                "code": order.code,
                "reason": order.reason,
                "ban_seconds": order.ban_seconds,
            },
        )


class ClientBan(BackendHandler):
    """``GET /v3/clients/{client_id}/ban``: the seconds left of its ban (0: none);
    ``DELETE``: lift it on every process."""

    def get(self, client_id: str) -> None:
        if not self.id_refused("client_id", client_id):
            self.reply(200, {"client_id": client_id, "banned_for": math.ceil(self.node.bans.remaining(client_id))})

    async def delete(self, client_id: str) -> None:
        if self.id_refused("client_id", client_id):
            return None
        try:
            lifted = await self.node.lift_ban(client_id)
        except ProtocolError as problem:
            return self.fail(problem)
        self.reply(200, {"status": "lifted", "client_id": client_id, "was_banned": lifted})


def _invalid_id(field: str, value: str) -> ProtocolError | None:
    """``invalid_id`` naming ``field``, unless ``value`` is a Vision ID."""
    why = id_problem(value)
    if why is None:
        return None
    problem = [{"field": field, "problem": f"not a Vision ID: {why}"}]
    return ProtocolError(INVALID_ID, f"{field} is not a Vision ID: {why}", problem)


def _whole_number(text: str, most: int) -> bool:
    """Whether a query argument is a whole number from 1 to ``most``."""
    return text.isascii() and text.isdigit() and 1 <= int(text) <= most


class DisconnectOrder(NamedTuple):
    code: int
    reason: str
    ban_seconds: int


def _disconnect_order(client_id: str, body: bytes) -> DisconnectOrder:
    """What a disconnect asks for. Raises ProtocolError with every problem."""
    if (problem := _invalid_id("client_id", client_id)) is not None:
        raise problem
    try:
        order = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise ProtocolError(INVALID_JSON, "The body is not valid JSON.") from None
    if not isinstance(order, dict):
        raise ProtocolError(INVALID_JSON, "The body must be a JSON object.")
    ban_seconds = order.pop("ban_seconds", 0)
    banning = type(ban_seconds) is int and ban_seconds > 0
    code = order.pop("code", CLOSE_BANNED if banning else DISCONNECT_CODE)
    reason = order.pop("reason", REASON_BANNED if banning else DISCONNECT_REASON)
    problems = [{"field": key, "problem": "unknown key"} for key in sorted(order)]
    if type(code) is not int or not 4000 <= code <= 4999:
        problems.append({"field": "code", "problem": "must be an integer from 4000 to 4999"})
    elif banning and code not in FINAL_CLOSE_CODES:
        problems.append({"field": "code", "problem": "must be from 4400 to 4499 with a ban, so clients do not retry"})
    if not isinstance(reason, str) or len(reason.encode()) > MAX_REASON_BYTES:
        problems.append({"field": "reason", "problem": f"must be a string of at most {MAX_REASON_BYTES} bytes"})
    if type(ban_seconds) is not int or not 0 <= ban_seconds <= MAX_BAN_SECONDS:
        problems.append({"field": "ban_seconds", "problem": f"must be a whole number from 0 to {MAX_BAN_SECONDS}"})
    if problems:
        text = "; ".join(f"{item['field']} {item['problem']}" for item in problems)
        raise ProtocolError(INVALID_MESSAGE, text, problems)
    return DisconnectOrder(code, reason, ban_seconds)


class Processes(BackendHandler):
    """``GET /v3/processes``: every process that is up, with its connections, bridge and rates,
    and what the request's key opens (``access``: ``open`` without an API key, ``full``, ``read``)."""

    async def get(self) -> None:
        settings = self.node.settings
        redis = "none" if settings.redis_url is None else "cluster" if settings.redis_cluster else "standalone"
        self.reply(
            200,
            {
                "processes": await self.node.processes(),
                "redis": redis,
                "answered_by": self.node.node_id,
                "access": self.access,
            },
        )


class Groups(BackendHandler):
    """``GET /v3/groups?prefix=&limit=``: groups with anyone present, cluster-wide, by group_id.

    Up to ``limit`` (100 unless told, at most 1000) of the groups whose id starts with
    ``prefix``, each with how many clients are present; ``more`` says whether others match.
    """

    async def get(self) -> None:
        prefix = self.get_query_argument("prefix", "", strip=False)
        limit = self.get_query_argument("limit", str(DEFAULT_LIMIT))
        problems = []
        if not is_id_prefix(prefix):
            problems.append({"field": "prefix", "problem": "may contain only A-Z a-z 0-9 _ - (up to 64)"})
        if not _whole_number(limit, MAX_GROUPS):
            problems.append({"field": "limit", "problem": f"required to be a whole number from 1 to {MAX_GROUPS}"})
        if problems:
            return self.refuse_query(problems)
        most = int(limit)
        found, total = await self.node.groups(prefix, most + 1)  # one more tells if there are more
        groups = [{"group_id": group_id, "clients": clients} for group_id, clients in found[:most]]
        self.reply(200, {"groups": groups, "total": total, "more": len(found) > most})


class Connections(BackendHandler):
    """``GET /v3/connections?group_id=&client_id=&limit=``: open connections, cluster-wide, each
    described by its process; of a group, of a client, or all, up to ``limit`` (100 unless told,
    at most 1000). ``missing`` names processes that did not answer in time."""

    async def get(self) -> None:
        problems = []
        ids = {name: self.get_query_argument(name, None) for name in ("group_id", "client_id")}
        for name, value in ids.items():
            if value is not None and (problem := _invalid_id(name, value)) is not None:
                problems += problem.problems
        limit = self.get_query_argument("limit", str(DEFAULT_LIMIT))
        if not _whole_number(limit, MAX_LISTED):
            problems.append({"field": "limit", "problem": f"required to be a whole number from 1 to {MAX_LISTED}"})
        if problems:
            return self.refuse_query(problems)
        listing = await self.node.inventory.gather(Wanted(ids["group_id"], ids["client_id"], int(limit)))
        self.reply(200, {"connections": listing.connections, "more": listing.more, "missing": listing.missing})


class GroupPresence(BackendHandler):
    """``GET /v3/groups/{group_id}/presence``: who is in a group, cluster-wide."""

    async def get(self, group_id: str) -> None:
        if self.id_refused("group_id", group_id):
            return None
        self.reply(200, {"group_id": group_id, "clients": await self.node.members(group_id)})


class GroupHistory(BackendHandler):
    """``GET /v3/groups/{group_id}/history?limit=N&before=POSITION``: a group's recent messages, oldest first.

    Each message is as a recovering client gets it, with its ``position``. ``limit`` defaults
    to 100 and may be up to ``history_size``; a page holds at most HISTORY_PAGE_BYTES of
    messages, and ``more`` says whether older ones are left: ask again with ``before`` set to
    the first message's position. ``DELETE`` removes the group's recorded messages.
    """

    async def get(self, group_id: str) -> None:
        if not self._history_of(group_id):
            return None
        size = self.node.settings.history_size
        text = self.get_query_argument("limit", str(min(DEFAULT_LIMIT, size)))
        if not _whole_number(text, size):
            required = f"required to be a whole number from 1 to {size}"
            return self.fail(
                ProtocolError(INVALID_LIMIT, f"limit is {required}.", [{"field": "limit", "problem": required}])
            )
        before = None
        if (cursor := self.get_query_argument("before", None)) is not None:
            try:
                before = Position.parse(cursor)
            except ValueError as error:
                problem = [{"field": "before", "problem": f"not a position: {error}"}]
                return self.fail(ProtocolError(INVALID_POSITION, f"before is not a position: {error}", problem))
        try:
            page = await self.node.group_history(group_id, int(text), HISTORY_PAGE_BYTES, before)
        except BridgeDown:
            return self.fail(ProtocolError(UNAVAILABLE, "Redis cannot be reached now; retry later."))
        assert page is not None  # history is on: history_size is not 0
        messages = b",".join(
            b'%s,"position":"%s"}' % (payload[:-1], str(position).encode()) for position, payload in page.messages
        )
        self.set_header("Content-Type", "application/json")
        more = b"true" if page.more else b"false"
        self.finish(b'{"group_id":%s,"messages":[%s],"more":%s}' % (orjson.dumps(group_id), messages, more))

    async def delete(self, group_id: str) -> None:
        if not self._history_of(group_id):
            return None
        try:
            await self.node.remove_group_history(group_id)
        except BridgeDown:
            return self.fail(ProtocolError(UNAVAILABLE, "Redis cannot be reached now; retry later."))
        self.reply(200, {"status": "removed", "group_id": group_id})

    def _history_of(self, group_id: str) -> bool:
        """Whether ``group_id`` names a group whose history may be kept; if not, say why."""
        if self.id_refused("group_id", group_id):
            return False
        if not self.node.settings.history_size:
            self.reply(404, {"code": HISTORY_OFF, "msg": "History is turned off (history_size 0).", "errors": []})
            return False
        return True


class Health(JSONHandler):
    """``GET /healthz``: this process's own state and its bridge's; ``degraded`` while Redis is away."""

    def get(self) -> None:
        bridge = self.node.bridge_state
        self.reply(
            200,
            {
                "status": "degraded" if bridge == "down" else "ok",
                "node_id": self.node.node_id,
                "connections": self.node.connection_count,
                "bridge": bridge,
            },
        )


class Metrics(JSONHandler):
    """``GET /metrics``: Prometheus text format."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.node.metrics.render())


PACKAGE = Path(__file__).parent.parent
# Files shipped with the package: name -> (path in the package, content type).
ASSETS: dict[str, tuple[str, str]] = {
    "index": ("pages/index.html", "text/html; charset=utf-8"),
    "console": ("pages/console.html", "text/html; charset=utf-8"),
    "operator": ("pages/operator.html", "text/html; charset=utf-8"),
    "aether-v3.js": ("static/aether-v3.js", "text/javascript; charset=utf-8"),
    "aether-v3.d.ts": ("static/aether-v3.d.ts", "text/plain; charset=utf-8"),
    "favicon": ("static/favicon.svg", "image/svg+xml"),
}


@functools.cache
def _asset(name: str) -> bytes:
    return (PACKAGE / ASSETS[name][0]).read_bytes()


class Asset(SecureHandler):
    """The pages, the browser client and its types: public, like any page. The operator's page
    holds nothing itself: what it shows comes from routes that need the API key.

    The asset is named by the route (``name=``) or by the path (``/v3/client/{name}``). The
    client and its types may be loaded by pages of ``allowed_origins`` (a module script from
    another origin needs CORS), the origins that may connect.
    """

    def initialize(self, name: str | None = None, allowed_origins: tuple[str, ...] = ()) -> None:
        self.name = name
        self.allowed_origins = allowed_origins

    def get(self, name: str | None = None) -> None:
        name = self.name or name
        assert name is not None  # the routes give one or the other
        self.set_header("Content-Type", ASSETS[name][1])
        self.set_header("Cache-Control", "no-cache")
        origin = self.request.headers.get("Origin")
        if self.allowed_origins:
            self.set_header("Vary", "Origin")
            if origin and ("*" in self.allowed_origins or origin.rstrip("/").lower() in self.allowed_origins):
                self.set_header("Access-Control-Allow-Origin", origin)
        if ASSETS[name][1].startswith("text/html"):
            self.set_header("Content-Security-Policy", page_policy(_asset(name)))
        self.finish(_asset(name))
