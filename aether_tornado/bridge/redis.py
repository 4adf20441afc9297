"""The bridge over Redis pub/sub: a publisher and a subscriber connection per process, supervised.

Channels are ``{prefix}:group:{id}``, ``{prefix}:client:{id}``, ``{prefix}:broadcast`` and
``{prefix}:resync``. Every published payload starts with the publisher's node id and the
time it was published, for the latency metric; a recorded message's position comes next, as
``@epoch:offset `` (see history/), then the message. A process skips its own copies of what
it did not record (it delivered those itself), and delivers its own recorded messages from
here, among everyone's, in the order Redis recorded them.

The publishing connection also runs what must keep the order of publishes: the history's
scripts, loaded on each connection.
"""

import asyncio
import collections
import functools
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import RESYNC_CHANNEL, BridgeDown, OnMessage, OnUp, Wanted
from .resp import Address, OnReply, ReplyError, RespConnection, connect

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
# Reconnection attempts come at most this far apart, so delivery across processes is back
# within about a second of Redis.
BACKOFF_MAX = 1.0
CONNECT_TIMEOUT = 2.0
# A connection with commands waiting and no reply for REPLY_DEADLINE means Redis hangs
# (frozen, or gone without the socket saying so): it counts as down, and a sender waiting
# for a direct message's count gets `unavailable` instead of waiting on. Checked every
# WATCH_INTERVAL; both connections are pinged every HEALTH_INTERVAL, so an idle one is
# checked too.
REPLY_DEADLINE = 0.9
WATCH_INTERVAL = 0.1
HEALTH_INTERVAL = 1.0
_STAMP = struct.Struct("!d")
# Publishes sent and not yet answered, and bytes of them not yet taken by the socket, at most:
# past either, Redis cannot keep up with the load, and the bridge counts it as down.
MAX_OUTBOX = 100_000
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
_PUBLISH = b"PUBLISH"
_SUBSCRIBE = b"SUBSCRIBE"
_UNSUBSCRIBE = b"UNSUBSCRIBE"
_PING = b"PING"


class RedisBridge:
    def __init__(
        self,
        address: Address,
        prefix: str,
        node_id: str,
        on_down: Callable[[], None] | None = None,
        scripts: Sequence[bytes] = (),
    ) -> None:
        """``on_down`` is told each time Redis is lost, so presence stops using it too."""
        self._address = address
        self._on_down = on_down
        self._scripts = scripts
        self._prefix = prefix + ":"
        self._prefix_length = len(self._prefix.encode())
        self.node_id = node_id
        self._origin = node_id.encode()
        self._payload_start = len(self._origin) + _STAMP.size
        self._publisher: RespConnection | None = None
        self._subscriber: RespConnection | None = None
        # The channels subscribed on the current subscriber connection.
        self._subscribed: set[str] = set()
        # One entry per ping sent on the subscriber, in order: what to call once its pong is in,
        # or None for the health check's, whose pong is overdue at ``_pong_due``.
        self._pongs: collections.deque[list[Callable[[], None]] | None] = collections.deque()
        self._pong_due: float | None = None
        self._sharing: list[Callable[[], None]] | None = None  # the waiters of this pass's ping
        self._task: asyncio.Task | None = None
        self._reported_up: bool | None = None
        self.up = False

    async def start(self, on_message: OnMessage, wanted: Wanted, on_up: OnUp) -> None:
        self._on_message, self._wanted, self._on_up = on_message, wanted, on_up
        self._task = asyncio.create_task(self._supervise(), name="redis bridge")

    def send(self, channel: str, payload: bytes) -> None:
        self._ready_publisher().command(_PUBLISH, self._prefix + channel, self._envelope(payload))

    def publish(self, channel: str, payload: bytes) -> asyncio.Future[int]:
        publisher = self._ready_publisher()
        receivers = asyncio.get_running_loop().create_future()
        # Our own subscriber counts too when we hold the channel.
        count = functools.partial(_count_others, receivers, channel in self._subscribed)
        publisher.call_then(count, _PUBLISH, self._prefix + channel, self._envelope(payload))
        return receivers

    def _envelope(self, payload: bytes) -> bytes:
        return self.envelope_head() + payload

    def envelope_head(self) -> bytes:
        """What precedes a published message: this process's id and the time."""
        return self._origin + _STAMP.pack(time.time())

    def channel_key(self, channel: str) -> str:
        return self._prefix + channel

    def holds(self, channel: str) -> bool:
        """Whether this process's subscriber is on ``channel``, so counts it among a publish's receivers."""
        return channel in self._subscribed

    def call_then(self, on_reply: OnReply, *args: str | bytes) -> None:
        """Run a command in the order of publishes; ``on_reply`` gets its reply. Raises BridgeDown."""
        self._ready_publisher().call_then(on_reply, *args)

    def call(self, *args: str | bytes) -> asyncio.Future[Any]:
        """Run a command in the order of publishes; its reply, or BridgeDown. Raises BridgeDown."""
        reply = asyncio.get_running_loop().create_future()
        self.call_then(functools.partial(_settle_or_down, reply), *args)
        return reply

    def command(self, *args: str | bytes) -> None:
        """Run a command whose reply nobody needs; dropped while Redis is down."""
        if self.up and self._publisher is not None:
            self._publisher.command(*args)

    async def synced(self) -> None:
        """Return once Redis has taken every subscription asked for so far. Raises BridgeDown.

        After this, whatever is published to those channels reaches this process.
        """
        subscriber = self._subscriber
        if not self.up or subscriber is None:
            raise BridgeDown
        pong = asyncio.get_running_loop().create_future()
        self.after_pushes(functools.partial(_resolve, pong))
        done, _ = await asyncio.wait(
            (pong, subscriber.closed), timeout=REPLY_DEADLINE, return_when=asyncio.FIRST_COMPLETED
        )
        if pong not in done:
            raise BridgeDown

    def after_pushes(self, then: Callable[[], None]) -> None:
        """Call ``then`` once every message Redis has published to this process so far is delivered.

        One ping on the subscriber serves every caller of one pass of the loop. If the
        subscriber is lost first, ``then`` is called then: nothing more will come.
        """
        subscriber = self._subscriber
        if subscriber is None:
            then()
            return
        if self._sharing is not None:
            self._sharing.append(then)
            return
        self._sharing = waiting = [then]
        self._pongs.append(waiting)
        subscriber.command(_PING)
        asyncio.get_running_loop().call_soon(self._stop_sharing)

    def _stop_sharing(self) -> None:
        self._sharing = None

    def _ready_publisher(self) -> RespConnection:
        """The publisher, if Redis is up and keeping up; every publish goes through it, in order.

        A Redis too slow for the load would let what waits for it grow without end: past
        ``MAX_OUTBOX`` publishes or ``MAX_BACKLOG_BYTES`` it counts as down (what waited is
        dropped, at most once) and the supervisor reconnects.
        """
        publisher = self._publisher
        if not self.up or publisher is None:
            raise BridgeDown
        if publisher.unanswered >= MAX_OUTBOX or publisher.unsent_bytes >= MAX_BACKLOG_BYTES:
            self._lost(
                OverflowError(
                    f"Redis cannot keep up: {publisher.unanswered} publishes, {publisher.unsent_bytes} bytes wait"
                )
            )
            raise BridgeDown
        return publisher

    @property
    def backlog_bytes(self) -> int:
        return self._publisher.unsent_bytes if self._publisher is not None else 0

    async def subscribe(self, channel: str) -> None:
        """Sent at once, in the hub's order; while down, the next connection subscribes from the hub."""
        if self._subscriber is not None and channel not in self._subscribed:
            self._subscribed.add(channel)
            self._subscriber.command(_SUBSCRIBE, self._prefix + channel)

    async def unsubscribe(self, channel: str) -> None:
        if self._subscriber is not None and channel in self._subscribed:
            self._subscribed.discard(channel)
            self._subscriber.command(_UNSUBSCRIBE, self._prefix + channel)

    def mark_lost(self, error: BaseException) -> None:
        """Another user of Redis lost it: reconnect, resubscribe and resync presence."""
        self._lost(error)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.up = False
        await self._disconnect()

    async def _supervise(self) -> None:
        """Connect, resubscribe, watch; on any failure back off (capped, full jitter) and retry."""
        delay = BACKOFF_FIRST
        while True:
            on_up = None
            try:
                await self._connect()
                delay = BACKOFF_FIRST
                # Keep reading while the node resyncs, so Redis never queues up messages for us.
                on_up = asyncio.create_task(self._on_up(), name="bridge up")
                on_up.add_done_callback(self._check_on_up)
                await self._watch()
            except (OSError, ReplyError, TimeoutError) as error:
                self._lost(error)
            except Exception as error:
                log.exception("Redis bridge failed; reconnecting")
                self._lost(error)
            finally:
                if on_up is not None:
                    on_up.cancel()
            await self._disconnect()
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self) -> None:
        self._pong_due = None
        self._publisher = publisher = await connect(self._address, CONNECT_TIMEOUT)
        for script in self._scripts:
            await asyncio.wait_for(publisher.call(b"SCRIPT", b"LOAD", script), CONNECT_TIMEOUT)
        self._subscriber = subscriber = await connect(self._address, CONNECT_TIMEOUT)
        subscriber.listen(self._on_push)
        channels = {RESYNC_CHANNEL, *self._wanted()}
        subscriber.command(_SUBSCRIBE, *(self._prefix + channel for channel in channels))
        self._subscribed = channels
        # Redis answers in order: the pong says every channel is subscribed.
        await self._ping_subscriber(subscriber)
        self.up = True
        self._report(True, f"subscribed to {len(channels)} channels")

    async def _watch(self) -> None:
        """Raise once either connection is gone, or has left a command unanswered for REPLY_DEADLINE."""
        publisher, subscriber = self._publisher, self._subscriber
        assert publisher is not None and subscriber is not None
        loop = asyncio.get_running_loop()
        silence = _Silence(publisher, loop.time())
        next_ping = loop.time() + HEALTH_INTERVAL
        while True:
            closed, _ = await asyncio.wait(
                (publisher.closed, subscriber.closed), timeout=WATCH_INTERVAL, return_when=asyncio.FIRST_COMPLETED
            )
            if closed:
                raise closed.pop().result()
            now = loop.time()
            if silence.longer_than(REPLY_DEADLINE, now) or (self._pong_due is not None and now > self._pong_due):
                raise TimeoutError(f"Redis answered nothing for {REPLY_DEADLINE:g} s")
            if now >= next_ping:
                next_ping = now + HEALTH_INTERVAL
                publisher.command(_PING)  # its answer, or its absence, is watched above
                if self._pong_due is None:
                    self._pong_due = now + REPLY_DEADLINE
                    self._pongs.append(None)
                    subscriber.command(_PING)

    async def _ping_subscriber(self, subscriber: RespConnection) -> None:
        """A subscriber's pong arrives as a push, after everything sent before the ping."""
        pong = asyncio.get_running_loop().create_future()
        self._pongs.append([functools.partial(_resolve, pong)])
        subscriber.command(_PING)
        done, _ = await asyncio.wait(
            (pong, subscriber.closed), timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if subscriber.closed in done:
            raise subscriber.closed.result()
        if not done:
            raise TimeoutError("Redis did not answer a ping")

    def _on_push(self, reply: list[bytes]) -> None:
        kind = reply[0]
        if kind == b"message":
            _, channel, data = reply
            start, position = self._payload_start, None
            if data.startswith(b"@", start):  # recorded: "@epoch:offset " comes before the message
                end = data.index(b" ", start)
                position, start = data[start + 1 : end].decode(), end + 1
            elif data.startswith(self._origin):
                return  # our own, delivered here already (our recorded ones are delivered from here)
            name = channel[self._prefix_length :].decode()
            try:
                self._on_message(name, data[start:], _STAMP.unpack_from(data, len(self._origin))[0], position)
            except Exception:
                log.exception("delivering a message from channel %s failed", name)
        elif kind == b"pong" and self._pongs:
            waiting = self._pongs.popleft()
            if waiting is None:
                self._pong_due = None
            else:
                _call_all(waiting)

    def _check_on_up(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, OSError | ReplyError | TimeoutError):
                log.error("resync after connecting failed", exc_info=error)
            self._lost(error)

    def _lost(self, error: BaseException) -> None:
        """Down until the supervisor has reconnected; closing the connections wakes it."""
        if self.up and self._on_down is not None:
            self._on_down()
        self.up = False
        self._report(False, str(error) or type(error).__name__)
        for connection in (self._publisher, self._subscriber):
            if connection is not None:
                connection.close()

    def _report(self, up: bool, detail: str) -> None:
        """One log line per change of state, not one per failed attempt."""
        if up != self._reported_up:
            self._reported_up = up
            if up:
                log.info("Redis bridge up: %s", detail)
            else:
                log.warning("Redis bridge down, serving local connections only: %s", detail)

    async def _disconnect(self) -> None:
        connections = [connection for connection in (self._publisher, self._subscriber) if connection is not None]
        self._publisher = self._subscriber = None
        self._subscribed = set()
        pongs, self._pongs, self._sharing = self._pongs, collections.deque(), None
        for waiting in pongs:
            _call_all(waiting or ())
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([connection.closed for connection in connections], timeout=CONNECT_TIMEOUT)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _call_all(callbacks: Iterable[Callable[[], None]]) -> None:
    for then in callbacks:
        try:
            then()
        except Exception:
            log.exception("a callback waiting for Redis failed")


def _settle_or_down(reply: asyncio.Future, result: Any) -> None:
    if reply.done():
        return
    if isinstance(result, ReplyError):
        reply.set_exception(result)
    elif isinstance(result, Exception):
        reply.set_exception(BridgeDown(str(result)))
    else:
        reply.set_result(result)


def _count_others(receivers: asyncio.Future[int], subscribed_here: bool, reply: int | Exception) -> None:
    """Settle a publish: the receiving processes other than this one (never below zero, since a
    subscription change may be on its way), or BridgeDown."""
    if receivers.done():
        return
    if isinstance(reply, Exception):
        receivers.set_exception(BridgeDown())
    else:
        receivers.set_result(max(0, reply - subscribed_here))


class _Silence:
    """How long a connection has had commands waiting with no reply read (not for a subscriber)."""

    def __init__(self, connection: RespConnection, now: float) -> None:
        self._connection = connection
        self._replies = connection.replies
        self._since = now

    def longer_than(self, seconds: float, now: float) -> bool:
        connection = self._connection
        if connection.replies != self._replies or not connection.unanswered:
            self._replies, self._since = connection.replies, now
            return False
        return now - self._since > seconds
