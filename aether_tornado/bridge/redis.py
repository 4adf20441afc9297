"""The bridge over Redis pub/sub: a publisher and a subscriber connection per process, supervised.

Channels are ``{prefix}:group:{id}``, ``{prefix}:client:{id}``, ``{prefix}:broadcast`` and
``{prefix}:resync``. Every published payload starts with the publisher's node id, so a
process skips its own copies (it has delivered them locally already), and the time it
was published, for the latency metric.
"""

import asyncio
import functools
import logging
import random
import struct
import time
from collections.abc import Callable

from . import RESYNC_CHANNEL, BridgeDown, OnMessage, OnUp, Wanted
from .resp import Address, ReplyError, RespConnection, connect

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
    def __init__(self, address: Address, prefix: str, node_id: str, on_down: Callable[[], None] | None = None) -> None:
        """``on_down`` is told each time Redis is lost, so presence stops using it too."""
        self._address = address
        self._on_down = on_down
        self._prefix = prefix + ":"
        self._prefix_length = len(self._prefix.encode())
        self._origin = node_id.encode()
        self._publisher: RespConnection | None = None
        self._subscriber: RespConnection | None = None
        # The channels subscribed on the current subscriber connection.
        self._subscribed: set[str] = set()
        self._pong: asyncio.Future | None = None  # the first pong of a connection, awaited
        self._pong_due: float | None = None  # when the watched subscriber's pong is overdue
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
        return self._origin + _STAMP.pack(time.time()) + payload

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
        self._publisher = await connect(self._address, CONNECT_TIMEOUT)
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
                    subscriber.command(_PING)

    async def _ping_subscriber(self, subscriber: RespConnection) -> None:
        """A subscriber's pong arrives as a push, after everything sent before the ping."""
        self._pong = pong = asyncio.get_running_loop().create_future()
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
            if data.startswith(self._origin):
                return
            name = channel[self._prefix_length :].decode()
            origin = len(self._origin)
            try:
                self._on_message(name, data[origin + _STAMP.size :], _STAMP.unpack_from(data, origin)[0])
            except Exception:
                log.exception("delivering a message from channel %s failed", name)
        elif kind == b"pong":
            self._pong_due = None
            if self._pong is not None and not self._pong.done():
                self._pong.set_result(None)

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
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([connection.closed for connection in connections], timeout=CONNECT_TIMEOUT)


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
