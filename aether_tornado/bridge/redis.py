"""The bridge over Redis pub/sub: one subscriber connection per process, supervised.

Channels are ``{prefix}:group:{id}``, ``{prefix}:client:{id}``, ``{prefix}:broadcast`` and
``{prefix}:resync``. Every published payload starts with the publisher's node id, so a
process skips its own copies (it has delivered them locally already), and the time it
was published, for the latency metric.
"""

import asyncio
import contextlib
import logging
import random
import struct
import time

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from . import RESYNC_CHANNEL, BridgeDown, OnMessage, OnUp, Wanted

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
_STAMP = struct.Struct("!d")
# Publishes waiting for Redis, at most; a pipeline round trip normally drains them all.
MAX_OUTBOX = 100_000
# How long one read waits before checking the state again (and letting health checks run).
READ_TIMEOUT = 1.0


class RedisBridge:
    def __init__(self, redis: Redis, prefix: str, node_id: str) -> None:
        self._redis = redis
        self._prefix = prefix + ":"
        self._prefix_bytes = self._prefix.encode()
        self._origin = node_id.encode()
        self._pubsub: PubSub | None = None
        self._subscribed: set[str] = set()
        # Subscription changes not yet sent: channel -> wanted; the last change wins.
        self._changes: dict[str, bool] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        # Publishes not yet sent: (channel key, envelope, future for the receiver count or None).
        self._outbox: list[tuple[str, bytes, asyncio.Future | None]] = []
        self._sender: asyncio.Task | None = None
        self._overloaded = False
        self._reported_up: bool | None = None
        self.up = False

    async def start(self, on_message: OnMessage, wanted: Wanted, on_up: OnUp) -> None:
        self._on_message, self._wanted, self._on_up = on_message, wanted, on_up
        self._task = asyncio.create_task(self._supervise(), name="redis bridge")

    def send(self, channel: str, payload: bytes) -> None:
        if not self.up:
            raise BridgeDown
        self._queue(channel, payload, None)

    async def publish(self, channel: str, payload: bytes) -> int:
        if not self.up:
            raise BridgeDown
        answer = asyncio.get_running_loop().create_future()
        self._queue(channel, payload, answer)
        receivers = await answer
        # Our own subscriber counts too when we hold the channel; never below zero, since a
        # subscription change may be on its way.
        return max(0, receivers - (channel in self._subscribed))

    def _queue(self, channel: str, payload: bytes, answer: asyncio.Future | None) -> None:
        """Every publish goes through one queue, in order, sent as pipelines by one task.

        A Redis too slow for the load would let the queue grow without end: past
        ``MAX_OUTBOX`` publishes are refused (at most once) until it drains.
        """
        if len(self._outbox) >= MAX_OUTBOX:
            if not self._overloaded:
                log.warning("Redis cannot keep up: %d publishes wait; dropping new ones", len(self._outbox))
            self._overloaded = True
            raise BridgeDown
        self._overloaded = False
        self._outbox.append((self._prefix + channel, self._origin + _STAMP.pack(time.time()) + payload, answer))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_outbox(), name="redis publish")

    async def _send_outbox(self) -> None:
        """Send what queued up while the previous pipeline was in flight: one round trip each."""
        while self._outbox:
            batch, self._outbox = self._outbox, []
            pipeline = self._redis.pipeline(transaction=False)
            for key, envelope, _ in batch:
                pipeline.publish(key, envelope)
            try:
                counts = await pipeline.execute()
            except Exception as error:  # redis-py may raise more than RedisError on a dead connection
                self._lost(error)
                for _, _, answer in batch:
                    if answer is not None and not answer.done():
                        answer.set_exception(BridgeDown())
                continue
            for (_, _, answer), count in zip(batch, counts, strict=True):
                if answer is not None and not answer.done():
                    answer.set_result(count)

    async def subscribe(self, channel: str) -> None:
        self._changes[channel] = True
        await self._apply_changes()

    async def unsubscribe(self, channel: str) -> None:
        self._changes[channel] = False
        await self._apply_changes()

    def mark_lost(self, error: BaseException) -> None:
        """Another user of Redis lost it: reconnect, resubscribe and resync presence."""
        self._lost(error)

    async def close(self) -> None:
        """Stop reading and close the Redis client (presence is done with it by now)."""
        for task in (self._task, self._sender):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.up = False
        await self._drop_pubsub()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def _apply_changes(self) -> None:
        """Send pending subscription changes in the order the hub made them."""
        async with self._lock:
            changes, self._changes = self._changes, {}
            if not self.up or self._pubsub is None:
                return  # the next connection subscribes from the hub's own list
            add = [channel for channel, on in changes.items() if on and channel not in self._subscribed]
            drop = [channel for channel, on in changes.items() if not on and channel in self._subscribed]
            try:
                if add:
                    await self._pubsub.subscribe(*(self._prefix + channel for channel in add))
                    self._subscribed.update(add)
                if drop:
                    await self._pubsub.unsubscribe(*(self._prefix + channel for channel in drop))
                    self._subscribed.difference_update(drop)
            except Exception as error:  # redis-py may raise more than RedisError on a dead connection
                self._lost(error)

    async def _supervise(self) -> None:
        """Connect, resubscribe, read; on any failure back off (capped, full jitter) and retry."""
        delay = BACKOFF_FIRST
        while True:
            on_up = None
            try:
                await self._connect()
                delay = BACKOFF_FIRST
                # Read while the node resyncs, so Redis never queues up messages for us.
                on_up = asyncio.create_task(self._on_up(), name="bridge up")
                on_up.add_done_callback(self._check_on_up)
                await self._read()
            except (RedisError, OSError) as error:
                self._lost(error)
            except Exception:
                log.exception("Redis bridge failed; reconnecting")
                self.up = False
            if on_up is not None:
                on_up.cancel()
            await self._drop_pubsub()
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, BACKOFF_MAX)

    def _check_on_up(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, RedisError | OSError):
                log.error("resync after connecting failed", exc_info=error)
            self._lost(error)

    async def _connect(self) -> None:
        async with self._lock:
            # Connections pooled before an outage are dead even if Redis is back: drop them all.
            await self._redis.connection_pool.disconnect(inuse_connections=False)
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            channels = {RESYNC_CHANNEL, *self._wanted()}
            await pubsub.subscribe(*(self._prefix + channel for channel in channels))
            self._subscribed = channels
            self.up = True
        self._report(True, f"subscribed to {len(channels)} channels")

    async def _read(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        origin = len(self._origin)
        skip = origin + _STAMP.size
        while self.up:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_TIMEOUT)
            if message is None or message["type"] != "message":
                continue
            data = message["data"]
            if data[:origin] == self._origin:
                continue
            channel = message["channel"][len(self._prefix_bytes) :].decode()
            try:
                self._on_message(channel, data[skip:], _STAMP.unpack_from(data, origin)[0])
            except Exception:
                log.exception("delivering a message from channel %s failed", channel)
        raise RedisConnectionError("a publish or subscribe on another connection failed")

    def _lost(self, error: BaseException) -> None:
        self.up = False
        self._report(False, str(error) or type(error).__name__)

    def _report(self, up: bool, detail: str) -> None:
        """One log line per change of state, not one per failed attempt."""
        if up != self._reported_up:
            self._reported_up = up
            if up:
                log.info("Redis bridge up: %s", detail)
            else:
                log.warning("Redis bridge down, serving local connections only: %s", detail)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
