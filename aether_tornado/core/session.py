"""One client's V3 session: what the node knows as a connection, holding its WebSocket.

The socket (ws/websocket.py) handles frames and tells the session, its delegate, what happens;
the session turns each message into a ``WSMessageV3`` for the node, answers what the node
refuses, and holds the message rate limit. Every answer to the client (an echo, an error, a
heartbeat's reply) comes in the order of the messages it answers, after the copies of the
client's earlier messages: its messages in flight and its answers wait in one queue, in the
order sent. What is sent before the snapshot is held back here until it is out.
"""

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NamedTuple

from ..config import Settings
from ..v3.channels import STREAMS, Position, Stream
from ..v3.errors import (
    CLOSE_TOKEN_EXPIRED,
    RATE_LIMITED,
    REASON_INTERNAL,
    REASON_RATE,
    REASON_TOKEN_EXPIRED,
    UNSUPPORTED_FRAME,
    ProtocolError,
)
from ..v3.schema import VisionId, WSMessageV3, decode
from ..ws.frames import BINARY, CloseCode
from ..ws.limits import TokenBucket
from ..ws.websocket import Flusher, Limits, State, WebSocketProtocol
from .hub import Positioned
from .node import Node

log = logging.getLogger(__name__)

# Messages of one client in flight and answers waiting for them, at once; past this many, its
# next messages wait.
MAX_IN_FLIGHT = 64


class Handshake(NamedTuple):
    """What the handshake settled: who connects, whether it may broadcast, what it recovers
    from, and until when it may stay.

    ``since`` is None for a client that does not recover, else its last position per stream
    (channels.Stream), None where it has none; ``proof`` is the recovery proof it presents
    with them (history/proof.py). ``expires`` is its token's expiry (seconds since the epoch).
    """

    group_id: VisionId
    client_id: VisionId
    may_broadcast: bool
    since: tuple[Position | None, ...] | None = None
    proof: str | None = None
    expires: float | None = None
    watching: bool = False  # an operator's watcher (hub.Connection.watching)
    address: str = ""  # the client's IP address, a proxy's X-Real-Ip if it sent one
    user_agent: str = ""


def socket_limits(settings: Settings) -> Limits:
    """What a client's socket lets it send and be sent, from the settings: one value for all."""
    return Limits(
        max_message_bytes=settings.max_message_bytes,
        max_fragments=settings.max_fragments,
        frame_rate=settings.frame_rate,
        frame_burst=settings.frame_burst,
        byte_rate=settings.byte_rate,
        byte_burst=settings.byte_burst,
        control_rate=settings.control_rate,
        control_burst=settings.control_burst,
        outbound_buffer_bytes=settings.outbound_buffer_bytes,
        close_timeout=settings.close_timeout,
    )


class ClientSession:
    """What the node knows as a connection (hub.Connection)."""

    __slots__ = (
        "_answers",
        "_attached",
        "_broadcast_budget",
        "_bucket",
        "_expires",
        "_expiry",
        "_held",
        "_held_bytes",
        "_queue",
        "_record_budget",
        "_routing",
        "_stalled",
        "_stalled_on_answers",
        "_strikes",
        "address",
        "client_id",
        "connected_at",
        "group_id",
        "last_seen",
        "lease_key",
        "may_broadcast",
        "node",
        "positions",
        "proof",
        "received",
        "received_bytes",
        "router",
        "send",
        "sender",
        "settings",
        "since",
        "socket",
        "user_agent",
        "watching",
    )

    # Queue one ready-made frame; never blocks, never raises (hub.Connection.send). Until the
    # snapshot is out it holds the frame back; then it is the socket's own ``send``.
    send: Callable[[bytes], None]

    def __init__(
        self,
        node: Node,
        flusher: Flusher,
        limits: Limits,
        handshake: Handshake,
        response: bytes,
        early: bytes,
    ) -> None:
        """``response`` is the 101 to send first.

        The handler counts it in ``node.sockets`` once it is served; ``on_lost`` gives the slot back.
        """
        self.settings = node.settings
        self.socket = WebSocketProtocol(limits, flusher, response, early, self)
        self._held: list[bytes | Positioned] | None = []  # sent before the snapshot, held back for it
        self._held_bytes = 0
        self.send = self._hold
        self.node = node
        self.router = node.router
        self.group_id, self.client_id, self.may_broadcast = (
            handshake.group_id,
            handshake.client_id,
            handshake.may_broadcast,
        )
        self.watching = handshake.watching
        self.address, self.user_agent = handshake.address, handshake.user_agent
        self.connected_at = time.time()
        self.received = self.received_bytes = 0
        self.since: Sequence[Position | None] | None = handshake.since
        self.proof = handshake.proof
        self._expires = handshake.expires
        self._expiry: asyncio.TimerHandle | None = None  # the close at the token's expiry, once open
        self.positions: list[Position | None] | None = None if handshake.since is None else [None] * len(STREAMS)
        self.lease_key = node.new_lease_key()
        self.sender = node.new_sender()
        now = time.monotonic()
        self.last_seen = now
        self._bucket = TokenBucket(self.settings.rate_limit, self.settings.rate_burst, now)
        # Made on first use: most connections never broadcast, and an idle one records nothing.
        self._broadcast_budget: TokenBucket | None = None
        self._record_budget: TokenBucket | None = None
        self._strikes = 0
        self._attached: asyncio.Task[None] | None = None
        # In the order sent: messages in flight (a future, and whether it gives an answer: a
        # direct message's) and answers to this client that wait for them. Made on first use.
        self._queue: collections.deque[bytes | tuple[asyncio.Future[Any], bool]] | None = None
        self._answers = 0  # answers in the queue, and messages in it whose answer may come
        self._routing = False  # a routing task holds the next messages
        self._stalled: WSMessageV3 | None = None  # waits for the answers queued, or for another shard
        self._stalled_on_answers = False

    # The connection's life: attached to the node as the 101 goes out, detached when the socket is gone.

    def on_open(self) -> None:
        if self._expires is not None:
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, self._expires - time.time()), self._token_expired
            )
        self._attached = self.node.attach(self)
        self._attached.add_done_callback(self._after_attach)

    def _token_expired(self) -> None:
        log.info("closing %s/%s: its token expired", self.group_id, self.client_id, extra={"conn": self.lease_key})
        self.close(CLOSE_TOKEN_EXPIRED, REASON_TOKEN_EXPIRED)

    def _after_attach(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("attaching %s/%s failed", self.group_id, self.client_id, exc_info=task.exception())
            self.close(CloseCode.INTERNAL_ERROR, REASON_INTERNAL)
            return
        self.socket.resume()

    def on_lost(self) -> None:
        if self._expiry is not None:  # a connection gone before its token is not kept until then
            self._expiry.cancel()
        self.node.sockets -= 1
        self.node.spawn(self._detach())

    async def _detach(self) -> None:
        try:
            with contextlib.suppress(Exception):  # a failed attach was logged already
                assert self._attached is not None  # on_open attached it before the socket could be lost
                await self._attached
        finally:
            await self.node.detach(self)

    # Messages

    def on_message(self, opcode: int, payload: bytes | str) -> None:
        now = time.monotonic()
        self.last_seen = now
        self.received += 1
        self.received_bytes += len(payload)
        if not self._bucket.take(now):
            return self._rate_limited()
        self._strikes = 0
        if opcode == BINARY:
            return self.refuse(ProtocolError(UNSUPPORTED_FRAME, "Binary frames are not supported; send JSON text."))
        try:
            message = decode(payload)
        except ProtocolError as problem:
            return self.refuse(problem)
        self._dispatch(message)
        return None

    def _dispatch(self, message: WSMessageV3) -> None:
        """Route a message now, or hold it (and what follows) until what it must come after is out.

        A message that reaches its own sender (to its group, to everybody, to itself) waits for
        the answers queued before it: its copy is a delivery, which would overtake them. On a
        cluster, one for another shard waits for those in flight (bridge/order.py).
        """
        if self._answers and (message.target in ("group", "broadcast") or message.to_id == self.client_id):
            self._stall(message, on_answers=True)  # _landed dispatches it once they are out
            return
        shard = self.router.shard_of(self, message)
        waiting = self.sender.turn(shard)
        if waiting is not None:
            self._stall(message, on_answers=False)
            waiting.add_done_callback(self._unstall)
            return
        self._route(message, shard)

    def _stall(self, message: WSMessageV3, on_answers: bool) -> None:
        self._stalled, self._stalled_on_answers = message, on_answers
        self.socket.holding = True

    def _unstall(self, _: object = None) -> None:
        """What a stalled message waited for is done: dispatch it again, and read on."""
        message, self._stalled = self._stalled, None
        assert message is not None  # one message stalls at a time, for one reason, reads held until it goes
        self._dispatch(message)  # the cluster may have changed shape meanwhile
        self._read_on_unless_held()

    def _route(self, message: WSMessageV3, shard: int | None) -> None:
        try:
            rest = self.router.receive(self, message)
            if rest is not None:
                self._finish(rest, shard, answers=message.target == "direct")
        except Exception as error:
            self._routing_failed(error)

    def _finish(
        self, rest: Coroutine[Any, Any, None] | asyncio.Future[Any], shard: int | None, answers: bool = False
    ) -> None:
        """Run what routing left to do, keeping the order of what this client is sent.

        A future is a message in flight: being recorded, or a direct message whose answer
        (``answers``: None, or the error that nobody took it) is being worked out. It passes the
        sender's gate (bridge/order.py) and joins the queue: the next messages need not wait
        for it, since Redis keeps the order of one shard's messages, but what answers them
        does. A coroutine (a heartbeat's lease, a presence query) runs as a Task, the next
        messages waiting for it.
        """
        if isinstance(rest, asyncio.Future):
            self.sender.track(rest, shard)
            self._enqueue((rest, answers))
            self._answers += answers
            rest.add_done_callback(self._landed)
            return
        self.socket.holding = self._routing = True
        self.node.spawn(self._finished(rest))

    async def _finished(self, rest: Coroutine[Any, Any, None]) -> None:
        try:
            await rest
        except Exception as error:
            self._routing_failed(error)
        finally:
            self._routing = False
            self._read_on_unless_held()

    def _enqueue(self, item: bytes | tuple[asyncio.Future[Any], bool]) -> None:
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.append(item)
        if len(self._queue) >= MAX_IN_FLIGHT:
            self.socket.holding = True

    def _landed(self, _: asyncio.Future[Any]) -> None:
        """A message in flight has landed: send what the queue holds up to the first still in flight."""
        queue = self._queue
        while queue:
            head = queue[0]
            if isinstance(head, bytes):
                self._answers -= 1
                self.send(head)
            else:
                landing, answers = head
                if not landing.done():
                    break
                if answers:
                    self._answers -= 1
                    problem = landing.result()
                    if problem is not None:  # nobody took the direct message: its answer's place is now
                        self.send(self._error_frame(problem))
            queue.popleft()
        if self._stalled is not None and self._stalled_on_answers and not self._answers:
            self._unstall()
        elif self.socket.holding:
            self._read_on_unless_held()

    def _read_on_unless_held(self) -> None:
        """Read the next messages, unless a routing task, a stalled message or a full queue holds them."""
        if self._routing or self._stalled or (self._queue is not None and len(self._queue) >= MAX_IN_FLIGHT):
            self.socket.holding = True
        else:
            self.socket.resume()

    def reply(self, frame: bytes) -> None:
        """Answer this client (an echo, an error, a heartbeat): after its messages in flight have landed."""
        if not self._queue:
            self.send(frame)
            return
        self._enqueue(frame)
        self._answers += 1

    def take_broadcast(self, now: float) -> bool:
        if self._broadcast_budget is None:
            self._broadcast_budget = TokenBucket(self.settings.broadcast_rate, self.settings.broadcast_burst, now)
        return self._broadcast_budget.take(now)

    def take_record(self, now: float, amount: int) -> bool:
        if self._record_budget is None:
            self._record_budget = TokenBucket(self.settings.record_byte_rate, self.settings.record_byte_burst, now)
        return self._record_budget.take(now, amount)

    def _routing_failed(self, error: Exception) -> None:
        if isinstance(error, ProtocolError):
            self.refuse(error)
            return
        log.error("routing a message of %s/%s failed", self.group_id, self.client_id, exc_info=error)
        self.close(CloseCode.INTERNAL_ERROR, REASON_INTERNAL)

    def _rate_limited(self) -> None:
        if self._strikes >= self.settings.rate_strikes:
            log.warning(
                "closing %s/%s: still sending after %d rate_limited replies",
                self.group_id,
                self.client_id,
                self._strikes,
                extra={"conn": self.lease_key},
            )
            self.close(CloseCode.POLICY_VIOLATION, REASON_RATE)
            return
        self._strikes += 1
        rate = self.settings.rate_limit
        self.refuse(ProtocolError(RATE_LIMITED, f"Too many messages: at most {rate:g} a second; this one was dropped."))

    # Recorded messages, for a client that recovers

    def _hold(self, frame: bytes) -> None:
        """``send`` until the snapshot is out: the frame waits for it."""
        if self.socket.state is State.OPEN:
            self._keep(frame, len(frame))

    def _keep(self, item: bytes | Positioned, size: int) -> None:
        assert self._held is not None  # held until the snapshot goes out
        self._held.append(item)
        self._held_bytes += size
        if self._held_bytes > self.settings.outbound_buffer_bytes:
            self._held, self._held_bytes, self.send = None, 0, self.socket.send
            self.socket.overflow()

    def send_at(self, message: Positioned) -> None:
        if self.socket.state is not State.OPEN:
            return
        if self._held is not None:
            self._keep(message, len(message.payload))  # sorted out by release_recovered
            return
        assert self.positions is not None
        last = self.positions[message.stream]
        if last is not None and last.epoch == message.epoch and message.offset <= last.offset:
            return  # recovered already, or the same message twice at the seam
        self.positions[message.stream] = Position(message.epoch, message.offset)
        self.send(message.frame)

    def first_held(self, stream: Stream) -> Positioned | None:
        held = self._held or ()
        return next((item for item in held if isinstance(item, Positioned) and item.stream == stream), None)

    @property
    def held_bytes(self) -> int:
        """Bytes held back until the snapshot goes out: they count against the outbound buffer."""
        return self._held_bytes

    @property
    def queued_bytes(self) -> int:
        """What this process holds for the client: held back, queued, and not yet taken by the socket."""
        return self._held_bytes + self.socket.queued_bytes

    def release(self, first: bytes) -> None:
        """Send ``first`` (the snapshot), then what was held back for it, then everything as it comes."""
        held = self._stop_holding()
        self.send(first)
        self._send_held(held)

    def release_recovered(
        self, first: bytes, missed: Sequence[Positioned], replayed: Sequence[Position | None]
    ) -> None:
        """The snapshot, what the client missed, then what came meanwhile that it has not had.

        ``replayed`` is where each stream's missed messages end: what came meanwhile up to there
        was among them. A stream not replayed (None) skips nothing. Everything goes out like any
        other output, within the outbound buffer: recovery sized the replay to fit beside what
        was held.
        """
        held = self._stop_holding()
        self.positions = list(replayed)
        self.send(first)
        for message in missed:
            self.send(message.frame)
        self._send_held(held)

    def _stop_holding(self) -> list[bytes | Positioned]:
        held, self._held, self._held_bytes = self._held or [], None, 0
        self.send = self.socket.send
        return held

    def _send_held(self, held: list[bytes | Positioned]) -> None:
        for item in held:
            if isinstance(item, Positioned):
                self.send_at(item)
            else:
                self.send(item)

    def close(self, code: int, reason: str) -> None:
        """Start a clean close with this code and reason."""
        self.socket.close(code, reason)

    def keepalive(self) -> None:
        self.socket.keepalive()

    def refuse(self, problem: ProtocolError) -> None:
        """Answer the client's message with an error frame; the connection stays open."""
        self.reply(self._error_frame(problem))

    def _error_frame(self, problem: ProtocolError) -> bytes:
        log.debug(
            "%s/%s: %s: %s", self.group_id, self.client_id, problem.code, problem.msg, extra={"conn": self.lease_key}
        )
        self.node.metrics.errors.inc(problem.code)
        return self.router.error_frame(self, problem)

    # What the protocol reports

    def on_failing(self, code: int, reason: str) -> None:
        log.info("closing %s/%s: %d %s", self.group_id, self.client_id, code, reason, extra={"conn": self.lease_key})

    def on_overflow(self) -> None:
        log.warning(
            "closing %s/%s: outbound buffer full", self.group_id, self.client_id, extra={"conn": self.lease_key}
        )
