"""A Python asyncio client for the Aether V3 protocol, with the browser client's rules.

    async with AetherClient("ws://127.0.0.1:8888", "g_demo", "c_script") as client:
        client.send_group("Hello team!")
        async for message in client:
            print(message)

It reconnects with capped exponential backoff and full jitter, stops for good when the
server refuses the handshake for a reason a retry cannot fix (a bad ID, a bad token, a
forbidden origin, a ban) or closes the connection with a final code (4400 to 4499, an
operator's ban among them: ``Disconnected``), sends a heartbeat every 30 s, keeps the presence roster, and queues
messages while reconnecting, up to a bound.

It recovers what it missed while away (``recover=True``, the default): it keeps the
position of the last group, direct and broadcast message, and the server's proof that they
are its own, and presents them when it reconnects, so the application sees every message
once and in order, the missed ones (marked ``"recovered": True``) before the new ones. When
that is impossible, ``on_recovery`` gets the snapshot's report with ``recovered`` false:
reload the state.

With a ``token_provider`` (an async function that returns a fresh token), it asks for one
before connecting without a token, when the server closes the connection because the token
expired (close code 3000), and once when a handshake is refused as unauthorized; it then
reconnects at once and recovers, so nothing is missed.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast
from urllib.parse import quote

import orjson
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketError, websocket_connect

from ..v3.errors import CLOSE_TOKEN_EXPIRED, FINAL_CLOSE_CODES
from ..v3.ids import id_problem

log = logging.getLogger(__name__)

# Handshake refusals that no retry can fix.
FINAL_REFUSALS = {"invalid_id", "unauthorized", "forbidden_origin", "banned"}
# The stream a recorded message belongs to, by its target.
STREAM_OF_TARGET = {"group": "group", "direct": "client", "broadcast": "broadcast"}


class Refused(Exception):
    """The server refused the handshake for a reason a retry cannot fix."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg


class Disconnected(Refused):
    """The server closed the connection with a final close code (4400 to 4499): no retry."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__("disconnected", f"closed for good by the server: {close_code} {reason}".rstrip())
        self.close_code = close_code
        self.reason = reason


class QueueFull(Exception):
    """Too many messages wait for the connection to come back."""


class Closed(Exception):
    """The client was closed, or stopped: nothing more will arrive."""


class AetherClient:
    def __init__(
        self,
        url: str,
        group_id: str,
        client_id: str,
        token: str | None = None,
        token_provider: Callable[[], Awaitable[str]] | None = None,
        heartbeat: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_queue: int = 100,
        max_inbox: int = 10_000,
        recover: bool = True,
        on_recovery: Callable[[dict[str, Any]], None] | None = None,
        fail_fast: bool = False,
    ) -> None:
        """``on_recovery`` is called after each reconnection that presented positions, with the
        snapshot's ``recovery`` report. With ``fail_fast`` (for a command line), a first
        connection that fails stops the client with its error instead of retrying."""
        for field, value in (("group_id", group_id), ("client_id", client_id)):
            why = id_problem(value)
            if why is not None:
                raise Refused("invalid_id", f"{field} is not a Vision ID: {why}")
        self._path = f"{url.rstrip('/')}/v3/ws/group/{quote(group_id)}/client/{quote(client_id)}"
        self._token, self._token_provider = token, token_provider
        self._token_wanted = token is None  # a fresh token is to be asked for before the next connection
        self.recover, self.on_recovery = recover, on_recovery
        self._fail_fast = fail_fast
        self.positions: dict[str, str] = {}  # stream -> "epoch:offset" of the last message received
        self.proof: str | None = None  # the server's proof that these positions are this client's own
        self._recovered_up_to: dict[str, int] = {}  # stream -> offset: missed up to it, now recovered
        self._presented = False
        self.group_id, self.client_id = group_id, client_id
        self.heartbeat_interval, self.backoff_initial, self.backoff_max = heartbeat, backoff_initial, backoff_max
        self.max_queue = max_queue
        self.roster: list[str] = []
        self.state = "idle"
        self._queue: list[dict[str, Any]] = []
        self._inbox: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue(max_inbox)
        self._conn: WebSocketClientConnection | None = None
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """The WebSocket URL, with the token and the positions to recover from."""
        query = []
        if self._token:
            query.append(f"token={quote(self._token)}")
        if self.recover:
            positions = ",".join(f"{stream}:{position}" for stream, position in self.positions.items())
            query.append(f"recover={quote(positions)}")
            if self.proof:
                query.append(f"proof={quote(self.proof)}")
        return self._path + (f"?{'&'.join(query)}" if query else "")

    async def __aenter__(self) -> "AetherClient":
        self.start()
        try:
            await self.wait_open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"aether client {self.client_id}")

    async def wait_open(self, timeout: float = 10.0) -> None:
        """Wait until connected; raise Refused if the server refused us for good."""
        opened = asyncio.create_task(self._opened.wait())
        started = cast(asyncio.Task[None], self._task)  # made by start(), which comes first
        done, _ = await asyncio.wait({opened, started}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if self._task in done:
            self._task.result()  # raises Refused
        if not self._opened.is_set():
            raise TimeoutError(f"not connected within {timeout} s")

    async def close(self) -> None:
        self.state = "closed"
        if self._conn is not None:
            self._conn.close(1000, "client closed")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Refused):
                await self._task
        self._deliver(Closed("the client is closed"))

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message from the server; raises Refused or Closed once the client has stopped."""
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[dict[str, Any]]:
        with contextlib.suppress(Closed):
            while True:
                yield await self.recv()

    # Sending.

    def send(self, message: dict[str, Any]) -> None:
        """Send any WS_Message_V3; queued while (re)connecting, up to ``max_queue``."""
        if self.state == "closed":
            raise RuntimeError("the client is closed")
        if self.state == "open" and self._conn is not None:
            with contextlib.suppress(WebSocketClosedError, StreamClosedError):
                written = self._conn.write_message(orjson.dumps(message).decode())
                written.add_done_callback(_seen)  # at most once: a write that fails is lost
                return
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{self.max_queue} messages already wait for the connection")
        self._queue.append(message)

    def send_group(self, msg: str | None = None, payload: dict[str, Any] | None = None) -> None:
        self.send(_compact(msg_type="msg", target="group", msg=msg, payload=payload))

    def send_direct(self, to_id: str, msg: str | None = None, payload: dict[str, Any] | None = None) -> None:
        self.send(_compact(msg_type="msg", target="direct", to_id=to_id, msg=msg, payload=payload))

    def broadcast(self, msg: str | None = None, payload: dict[str, Any] | None = None) -> None:
        self.send(_compact(msg_type="msg", target="broadcast", msg=msg, payload=payload))

    def echo(self, msg: str | None = None, payload: dict[str, Any] | None = None) -> None:
        self.send(_compact(msg_type="msg", target="echo", msg=msg, payload=payload))

    def command(self, cmd: str, target: str = "group", to_id: str | None = None, **fields: Any) -> None:
        self.send(_compact(msg_type="cmd", target=target, to_id=to_id, cmd=cmd, **fields))

    def heartbeat(self) -> None:
        self.send({"msg_type": "heartbeat", "target": "echo", "payload": {"t": time.time()}})

    def query_presence(self) -> None:
        self.send({"msg_type": "presence", "target": "echo"})

    # The connection, kept up.

    async def _run(self) -> None:
        attempt = 0
        try:
            while self.state != "closed":
                self.state = "reconnecting" if attempt else "connecting"
                fresh = self._token_provider is not None and self._token_wanted
                if fresh:
                    assert self._token_provider is not None  # fresh says there is one
                    self._token, self._token_wanted = await self._token_provider(), False
                self._presented = bool(self.positions)
                request = HTTPRequest(self.endpoint, connect_timeout=10, request_timeout=10)
                try:
                    self._conn = await websocket_connect(request)
                except HTTPClientError as error:
                    refusal = _refusal(error)
                    if refusal is not None and refusal.code == "unauthorized" and self._token_provider and not fresh:
                        self._token_wanted = True  # the token is stale: one fresh one is worth a try
                    elif refusal is not None:
                        raise self._stopped(refusal) from None
                except (OSError, StreamClosedError, WebSocketError) as error:
                    if self._fail_fast and not attempt:
                        raise
                    log.debug("connecting failed: %s", error)
                else:
                    opened = time.monotonic()
                    await self._serve(self._conn)
                    if (code := self._conn.close_code) in FINAL_CLOSE_CODES:  # "do not come back"
                        assert code is not None  # a range holds no None
                        raise self._stopped(Disconnected(code, self._conn.close_reason or ""))
                    self.state = "reconnecting"
                    if self._conn.close_code == CLOSE_TOKEN_EXPIRED and self._token_provider is not None:
                        self._token_wanted, attempt = True, 0  # a fresh token, and back at once
                        continue
                    if time.monotonic() - opened > self.backoff_max:  # it lasted: start backoff again
                        attempt = 0
                await asyncio.sleep(random.uniform(0, min(self.backoff_max, self.backoff_initial * 2**attempt)))
                attempt += 1
        except Exception as error:
            self.state = "closed"
            self._deliver(Closed(f"the client stopped: {error!r}"))
            raise

    def _stopped(self, why: Refused) -> Refused:
        """Stop for good, telling the reader why; what to raise."""
        self.state = "closed"
        self._deliver(why)
        return why

    async def _serve(self, conn: WebSocketClientConnection) -> None:
        self.state = "open"
        self._opened.set()
        queued, self._queue = self._queue, []
        for message in queued:
            self.send(message)
        beating = asyncio.create_task(self._beat())
        try:
            while (frame := await conn.read_message()) is not None:
                if isinstance(frame, str):
                    self._received(orjson.loads(frame))
        finally:
            beating.cancel()
            self._opened.clear()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            with contextlib.suppress(QueueFull, RuntimeError):  # closing, or about to reconnect
                self.heartbeat()

    def _received(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("position"), str) and not self._advance(message):
            return
        payload = message.get("payload") or {}
        if message.get("msg_type") == "presence":
            event = payload.get("event")
            if event == "snapshot" and "recovery" in payload:
                self._take_recovery(payload["recovery"])
            if event == "snapshot":
                self.roster = sorted(payload["clients"])
            elif event == "join" and payload["client_id"] not in self.roster:
                self.roster = sorted([*self.roster, payload["client_id"]])
            elif event == "leave":
                self.roster = [client for client in self.roster if client != payload["client_id"]]
        self._deliver(message)

    def _advance(self, message: dict[str, Any]) -> bool:
        """Keep a recorded message's position; False for one to skip.

        One after a gap (lost between the server's processes) or from another epoch means
        some were missed: reconnecting recovers them, or reports that it could not.
        """
        stream = STREAM_OF_TARGET.get(message.get("target", ""), "")
        epoch, offset = _split(message["position"])
        last = self.positions.get(stream)
        if last is not None:
            last_epoch, last_offset = _split(last)
            if epoch == last_epoch and offset <= last_offset:
                return False  # had it already
            if epoch != last_epoch or offset != last_offset + 1:
                if self._conn is not None:
                    self._conn.close(4000, "recovering missed messages")
                return False
        self.positions[stream] = message["position"]
        if offset <= self._recovered_up_to.get(stream, 0):
            message["recovered"] = True
        return True

    def _take_recovery(self, report: dict[str, Any]) -> None:
        """Streams not recovered start again from where they are now."""
        self._recovered_up_to = {}
        self.proof = report.get("proof")
        for stream, state in (report.get("streams") or {}).items():
            if state["recovered"]:
                if state["position"]:
                    self._recovered_up_to[stream] = _split(state["position"])[1]
            elif state["position"]:
                self.positions[stream] = state["position"]
            else:
                self.positions.pop(stream, None)
        if self._presented and self.on_recovery is not None:
            try:
                self.on_recovery(report)
            except Exception:
                log.exception("on_recovery failed")

    def _deliver(self, item: dict[str, Any] | BaseException) -> None:
        if self._inbox.full():  # a reader that fell behind loses the oldest, not the newest
            self._inbox.get_nowait()
        self._inbox.put_nowait(item)


def _refusal(error: HTTPClientError) -> Refused | None:
    with contextlib.suppress(Exception):
        body = orjson.loads(error.response.body)  # type: ignore[union-attr]  # no response: suppressed, as any failure
        if body.get("code") in FINAL_REFUSALS:
            return Refused(body["code"], body.get("msg", ""))
    return None


def _split(position: str) -> tuple[str, int]:
    epoch, _, offset = position.rpartition(":")
    return epoch, int(offset)


def _seen(future: asyncio.Future[None]) -> None:
    future.exception()


def _compact(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}
