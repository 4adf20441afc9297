"""The bridge over Redis pub/sub: a publisher and a subscriber connection per shard, supervised.

One Redis is one shard. A Redis Cluster (``cluster=True``) is one shard per master: a channel
lives on the master of its slot, published with ``SPUBLISH`` and received with ``SSUBSCRIBE``
there, so each message is handled by one shard only and reaches only the processes
subscribed to it.

Channels are ``{prefix}:{group:<id>}``, ``{prefix}:{client:<id>}``, ``{prefix}:{broadcast}``
and ``{prefix}:{resync}``: the braces are the hash tag a stream's history keys share (see
history/), so a script that records and publishes runs on one shard. Every published payload
starts with the publisher's node id and the time it was published, for the latency metric; on
a cluster the sending connection's mark follows (see order.py, which keeps a sender's order
across shards); a recorded message's position comes next, as ``@epoch:offset ``, then the
message. A process skips its own copies of what it did not record (it delivered those
itself), and delivers its own recorded messages from here, among everyone's, in the order
Redis recorded them.

The publishing connections also run what must keep the order of publishes: the history's
scripts, loaded on each connection. Any change of the cluster's shape (a connection lost, a
``MOVED`` answer, a slot taken from a subscription) is handled as an outage: every connection
is dropped and made again from the topology as it is then.
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

from ..redis.link import Link
from ..redis.resp import Address, OnReply, ReplyError, RespConnection, connect
from ..redis.topology import Topology, alone, discover
from ..v3.channels import Channel, Position
from . import CONTROL_CHANNEL, RESYNC_CHANNEL, BridgeDown, OnMessage, OnUp, Wanted
from .order import MARK, UNMARKED, Reorder, Sender

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
# Reconnection attempts come at most this far apart, so delivery across processes is back
# within about a second of Redis.
BACKOFF_MAX = 1.0
CONNECT_TIMEOUT = 2.0
# ``start`` waits this long at most for the first attempt to connect and resync to settle.
FIRST_ATTEMPT_DEADLINE = 5.0
# A connection with commands waiting and no reply for REPLY_DEADLINE means Redis hangs
# (frozen, or gone without the socket saying so): it counts as down, and a sender waiting
# for a direct message's count gets `unavailable` instead of waiting on. Checked every
# WATCH_INTERVAL; every connection is pinged every HEALTH_INTERVAL, so an idle one is
# checked too.
REPLY_DEADLINE = 0.9
WATCH_INTERVAL = 0.1
HEALTH_INTERVAL = 1.0
_STAMP = struct.Struct("!d")
# Publishes sent and not yet answered, and bytes of them not yet taken by the socket, at most
# (per shard): past either, Redis cannot keep up with the load, and the bridge counts it as down.
MAX_OUTBOX = 100_000
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
_PING = b"PING"


class _Commands:
    """The pub/sub commands of one Redis, or the sharded ones of a cluster."""

    def __init__(self, cluster: bool) -> None:
        self.publish, self.subscribe, self.unsubscribe = (
            (b"SPUBLISH", b"SSUBSCRIBE", b"SUNSUBSCRIBE") if cluster else (b"PUBLISH", b"SUBSCRIBE", b"UNSUBSCRIBE")
        )
        self.message, self.unsubscribed = (b"smessage", b"sunsubscribe") if cluster else (b"message", b"unsubscribe")


class _Shard:
    """One Redis (one master of a cluster): its two connections and what rides on them."""

    def __init__(self, index: int, publisher: RespConnection, subscriber: RespConnection) -> None:
        self.index = index  # in the topology's list of shards
        self.publisher, self.subscriber = publisher, subscriber
        self.replication_id = b""  # the master's: a replica that takes over gets a new one
        # The channels subscribed on this shard's subscriber, and how many unsubscriptions of each
        # Redis has still to confirm: a confirmation of one not asked for means the channel moved.
        self.subscribed: set[Channel] = set()
        self.unsubscribing: collections.Counter[Channel] = collections.Counter()
        # One entry per ping sent on the subscriber, in order: what to call once its pong is
        # in, or None for the health check's, whose pong is overdue at ``pong_due``.
        self.pongs: collections.deque[list[Callable[[], None]] | None] = collections.deque()
        self.pong_due: float | None = None
        # The waiters of the last ping, which more may join while it is the last command queued
        # and not yet written: (batches written, commands queued) just after it was queued.
        self.sharing: list[Callable[[], None]] | None = None
        self.sharing_mark = (-1, -1)

    @property
    def connections(self) -> tuple[RespConnection, RespConnection]:
        return self.publisher, self.subscriber


class RedisBridge:
    def __init__(
        self,
        address: Address,
        prefix: str,
        node_id: str,
        link: Link | None = None,
        scripts: Sequence[bytes] = (),
        cluster: bool = False,
    ) -> None:
        """``link`` is the process's one view of Redis, which the bridge's supervisor keeps
        (presence shares it). With ``cluster``, ``address`` is any node of a Redis Cluster,
        whose masters are found from it.
        """
        self._address = address
        self.link = link or Link()
        self.link.when_lost(self._drop)
        self._scripts = scripts
        self._cluster = cluster
        self._commands = _Commands(cluster)
        self._prefix = prefix + ":"
        self._prefix_length = len(self._prefix.encode())
        self.node_id = node_id
        self._origin = node_id.encode()
        self._mark_start = len(self._origin) + _STAMP.size
        self._payload_start = self._mark_start + (MARK.size if cluster else 0)
        self._reorder: Reorder | None = None  # on a cluster, while connected
        self._topology = alone(address)
        self._known: list[Address] = [address]  # nodes to ask for the topology, the seed first
        self._shards: list[_Shard] = []
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None  # settled: up and resynced, or failed
        self._reported_up: bool | None = None

    async def start(self, on_message: OnMessage, wanted: Wanted, on_up: OnUp) -> None:
        self._on_message, self._wanted, self._on_up = on_message, wanted, on_up
        self._first_attempt = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(), name="redis bridge")
        await asyncio.wait((self._first_attempt,), timeout=FIRST_ATTEMPT_DEADLINE)

    # Publishing

    def channel_key(self, channel: Channel) -> str:
        """The Redis name of a bridge channel: its name in braces, the hash tag of its stream."""
        return f"{self._prefix}{{{channel}}}"

    @property
    def sharded(self) -> bool:
        return self._cluster

    def send(self, channel: Channel, payload: bytes, sender: Sender | None = None) -> None:
        publisher = self._ready_publisher(channel)
        envelope = self.envelope_head(channel, sender) + payload
        if self._cluster:  # a MOVED answer means the cluster changed shape: reconnect
            publisher.call_then(self._check, self._commands.publish, self.channel_key(channel), envelope)
        else:
            publisher.command(self._commands.publish, self.channel_key(channel), envelope)

    def publish(self, channel: Channel, payload: bytes, sender: Sender | None = None) -> asyncio.Future[int]:
        publisher = self._ready_publisher(channel)
        receivers = asyncio.get_running_loop().create_future()
        # Our own subscriber counts too when we hold the channel.
        count = functools.partial(self._count_others, receivers, self.holds(channel))
        envelope = self.envelope_head(channel, sender) + payload
        publisher.call_then(count, self._commands.publish, self.channel_key(channel), envelope)
        return receivers

    def envelope_head(self, channel: Channel, sender: Sender | None = None) -> bytes:
        """What precedes a message published on ``channel``: this process's id, the time, and
        on a cluster the sending connection's mark."""
        head = self._origin + _STAMP.pack(time.time())
        if not self._cluster:
            return head
        return head + (UNMARKED if sender is None else sender.mark(self.shard_of(channel)))

    @property
    def publish_command(self) -> bytes:
        """``PUBLISH``, or ``SPUBLISH`` on a cluster: for scripts that publish."""
        return self._commands.publish

    def call_then(self, channel: Channel, on_reply: OnReply, *args: str | bytes) -> None:
        """Run a command on ``channel``'s shard, in the order of its publishes. Raises BridgeDown."""
        self._ready_publisher(channel).call_then(on_reply, *args)

    def call(self, channel: Channel, *args: str | bytes) -> asyncio.Future[Any]:
        """Like ``call_then``; the future gets the reply, a ReplyError, or BridgeDown."""
        reply = asyncio.get_running_loop().create_future()
        self.call_then(channel, functools.partial(_settle_or_down, reply), *args)
        return reply

    def replication_id(self, channel: Channel) -> bytes:
        """The replication ID of the master that holds ``channel``, as read on connecting. Raises BridgeDown."""
        shard = self._shard_for(channel)
        if shard is None:
            raise BridgeDown
        return shard.replication_id

    def command(self, channel: Channel, *args: str | bytes) -> None:
        """Run a command whose reply nobody needs on ``channel``'s shard; dropped while Redis is down."""
        shard = self._shard_for(channel)
        if self.link.connected and shard is not None:
            shard.publisher.command(*args)

    def _ready_publisher(self, channel: Channel) -> RespConnection:
        """The publisher of ``channel``'s shard, if Redis is up and keeping up.

        A Redis too slow for the load would let what waits for it grow without end: past
        ``MAX_OUTBOX`` publishes or ``MAX_BACKLOG_BYTES`` it counts as down (what waited is
        dropped, at most once) and the supervisor reconnects.
        """
        shard = self._shard_for(channel)
        if not self.link.connected or shard is None:
            raise BridgeDown
        publisher = shard.publisher
        if publisher.unanswered >= MAX_OUTBOX or publisher.unsent_bytes >= MAX_BACKLOG_BYTES:
            self.link.lost(
                OverflowError(
                    f"Redis cannot keep up: {publisher.unanswered} publishes, {publisher.unsent_bytes} bytes wait"
                )
            )
            raise BridgeDown
        return publisher

    def _check(self, reply: Any) -> None:
        if isinstance(reply, ReplyError):
            self.link.lost(reply)

    def _count_others(self, receivers: asyncio.Future[int], subscribed_here: bool, reply: int | Exception) -> None:
        """Settle a publish: the receiving processes other than this one (never below zero, since a
        subscription change may be on its way), or BridgeDown."""
        if receivers.done():
            return
        if isinstance(reply, Exception):
            self._check(reply)
            receivers.set_exception(BridgeDown())
        else:
            receivers.set_result(max(0, reply - subscribed_here))

    @property
    def backlog_bytes(self) -> int:
        return sum(shard.publisher.unsent_bytes for shard in self._shards)

    # Subscribing

    def shard_of(self, channel: Channel) -> int:
        """The index of the shard that holds ``channel``: the same for all of one shard's channels."""
        return 0 if len(self._shards) <= 1 else self._topology.shard_of(self.channel_key(channel))

    def _shard_for(self, channel: Channel) -> _Shard | None:
        """The shard that holds ``channel``; None while there are no connections."""
        shards = self._shards
        if len(shards) == 1:
            return shards[0]
        return shards[self._topology.shard_of(self.channel_key(channel))] if shards else None

    def holds(self, channel: Channel) -> bool:
        """Whether this process's subscriber is on ``channel``, so counts it among a publish's receivers."""
        shard = self._shard_for(channel)
        return shard is not None and channel in shard.subscribed

    async def subscribe(self, channel: Channel) -> None:
        """Sent at once, in the hub's order; while down, the next connection subscribes from the hub."""
        shard = self._shard_for(channel)
        if shard is not None and channel not in shard.subscribed:
            shard.subscribed.add(channel)
            shard.subscriber.command(self._commands.subscribe, self.channel_key(channel))

    async def unsubscribe(self, channel: Channel) -> None:
        shard = self._shard_for(channel)
        if shard is not None and channel in shard.subscribed:
            shard.subscribed.discard(channel)
            shard.unsubscribing[channel] += 1
            shard.subscriber.command(self._commands.unsubscribe, self.channel_key(channel))

    async def synced(self) -> None:
        """Return once Redis has taken every subscription asked for so far. Raises BridgeDown.

        After this, whatever is published to those channels reaches this process.
        """
        if not self.link.connected or not self._shards:
            raise BridgeDown
        loop = asyncio.get_running_loop()
        pongs: list[asyncio.Future[None]] = []
        for shard in self._shards:
            pong = loop.create_future()
            self._after_pushes(shard, functools.partial(_resolve, pong))
            pongs.append(pong)
        closed = [shard.subscriber.closed for shard in self._shards]
        waiting: asyncio.Future[Any] = asyncio.gather(*pongs)
        done, _ = await asyncio.wait((waiting, *closed), timeout=REPLY_DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            # Not cancelled: a cancelled gather keeps its CancelledError as an exception nobody
            # reads. The pongs still come, or the subscriber's loss answers them.
            raise BridgeDown

    def after_pushes(self, channel: Channel, then: Callable[[], None]) -> None:
        """Call ``then`` once every message Redis has published to this process on ``channel``'s
        shard so far is delivered; or once the subscriber is lost, since nothing more will come."""
        shard = self._shard_for(channel)
        if shard is None:
            then()
        else:
            self._after_pushes(shard, then)

    def _after_pushes(self, shard: _Shard, then: Callable[[], None]) -> None:
        """One ping on the subscriber serves every caller while it is the last command queued and
        not yet written: written after a caller came, and after what the caller sent before (a
        subscription), its pong follows whatever Redis had sent this process by then."""
        subscriber = shard.subscriber
        if shard.sharing is not None and shard.sharing_mark == (subscriber.flushes, subscriber.queued):
            shard.sharing.append(then)
            return
        shard.sharing = [then]
        shard.pongs.append(shard.sharing)
        subscriber.command(_PING)
        shard.sharing_mark = (subscriber.flushes, subscriber.queued)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.link.closed()
        await self._disconnect()

    # Supervision

    async def _supervise(self) -> None:
        """Connect, resubscribe, watch; on any failure back off (capped, full jitter) and retry."""
        delay = BACKOFF_FIRST
        while True:
            on_up: asyncio.Task[None] | None = None
            try:
                await self._connect()
                delay = BACKOFF_FIRST
                # Keep reading while the node resyncs, so Redis never queues up messages for us.
                on_up = asyncio.create_task(self._on_up(), name="bridge up")
                on_up.add_done_callback(self._check_on_up)
                await self._watch()
            except (OSError, ReplyError, TimeoutError, ValueError) as error:
                self.link.lost(error)
            except Exception as error:
                log.exception("Redis bridge failed; reconnecting")
                self.link.lost(error)
            finally:
                if on_up is not None:
                    on_up.cancel()
            await self._disconnect()
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self) -> None:
        if self._cluster:
            self._topology = await self._discover()
            self._known = [self._address, *(node for node in self._topology.shards if node != self._address)]
        shards: list[_Shard] = []
        try:
            for index, address in enumerate(self._topology.shards):
                shards.append(await self._connect_shard(index, address))
        except BaseException:
            for shard in shards:
                for connection in shard.connections:
                    connection.close()
            raise
        # From here the hub's changes reach the shards; what it wants now is subscribed at once.
        self._shards = shards
        if self._cluster:
            self._reorder = Reorder(len(shards), lambda index, then: self._after_pushes(shards[index], then))
        channels = {RESYNC_CHANNEL, CONTROL_CHANNEL, *self._wanted()}
        for channel in channels:
            holder = self._shard_for(channel)
            assert holder is not None
            holder.subscribed.add(channel)
        for shard in shards:
            if not self._cluster and shard.subscribed:
                shard.subscriber.command(self._commands.subscribe, *map(self.channel_key, shard.subscribed))
            elif self._cluster:  # one SSUBSCRIBE may name channels of one slot only
                for channel in shard.subscribed:
                    shard.subscriber.command(self._commands.subscribe, self.channel_key(channel))
        # Redis answers in order: each pong says every channel of its shard is subscribed.
        for shard in shards:
            await _ping(shard)
        self.link.subscribed()
        spread = f" on {len(self._shards)} shards" if self._cluster else ""
        self._report(True, f"subscribed to {len(channels)} channels{spread}")

    async def _discover(self) -> Topology:
        """The cluster's shape, from the first node that answers: the seed, then the masters last seen."""
        failure: BaseException = OSError("no cluster node to ask")
        for node in self._known:
            try:
                connection = await connect(node, CONNECT_TIMEOUT)
            except (OSError, ReplyError, TimeoutError) as error:
                failure = error
                continue
            try:
                return await asyncio.wait_for(discover(connection, self._address), CONNECT_TIMEOUT)
            except (OSError, ReplyError, TimeoutError, ValueError) as error:
                failure = error
            finally:
                connection.close()
        raise failure

    async def _connect_shard(self, index: int, address: Address) -> _Shard:
        publisher = await connect(address, CONNECT_TIMEOUT)
        try:
            subscriber = await connect(address, CONNECT_TIMEOUT)
        except BaseException:
            publisher.close()
            raise
        shard = _Shard(index, publisher, subscriber)
        subscriber.listen(functools.partial(self._on_push, shard))
        try:
            for script in self._scripts:
                await asyncio.wait_for(publisher.call(b"SCRIPT", b"LOAD", script), CONNECT_TIMEOUT)
            replication = await asyncio.wait_for(publisher.call(b"INFO", b"replication"), CONNECT_TIMEOUT)
            shard.replication_id = _field(replication, b"master_replid")
        except BaseException:
            publisher.close()
            subscriber.close()
            raise
        return shard

    async def _watch(self) -> None:
        """Raise once any connection is gone, or has left a command unanswered for REPLY_DEADLINE."""
        loop = asyncio.get_running_loop()
        shards = list(self._shards)
        silences = [_Silence(shard.publisher, loop.time()) for shard in shards]
        closed = [connection.closed for shard in shards for connection in shard.connections]
        next_ping = loop.time() + HEALTH_INTERVAL
        while True:
            gone, _ = await asyncio.wait(closed, timeout=WATCH_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
            if gone:
                raise gone.pop().result()
            now = loop.time()
            for shard, silence in zip(shards, silences, strict=True):
                if silence.longer_than(REPLY_DEADLINE, now) or (shard.pong_due is not None and now > shard.pong_due):
                    raise TimeoutError(f"Redis answered nothing for {REPLY_DEADLINE:g} s")
            if now >= next_ping:
                next_ping = now + HEALTH_INTERVAL
                for shard in shards:
                    # Its answer, or its absence, is watched above; it also tells a failover that
                    # left this connection open (a master that became a replica, then master again).
                    shard.publisher.call_then(functools.partial(self._check_master, shard), b"INFO", b"replication")
                    if shard.pong_due is None:
                        shard.pong_due = now + REPLY_DEADLINE
                        shard.pongs.append(None)
                        shard.subscriber.command(_PING)

    def _on_push(self, shard: _Shard, reply: Any) -> None:
        """``reply`` is as hiredis read it: a list (``[b"message", channel, data]``, a subscription's
        confirmation, a subscriber's pong), a plain ``b"PONG"``, or a ReplyError."""
        if isinstance(reply, ReplyError):  # a subscription refused: the cluster changed under us
            self.link.lost(reply)
            return
        # A subscriber with no channel (a cluster's shard may hold none of ours) answers a ping plainly.
        kind = reply[0] if isinstance(reply, list) else reply.lower()
        if kind == self._commands.message:
            _, channel, data = reply
            start, position = self._payload_start, None
            own = data.startswith(self._origin)
            if data.startswith(b"@", start):  # recorded: "@epoch:offset " comes before the message
                end = data.index(b" ", start)
                epoch, _, offset = data[start + 1 : end].decode().rpartition(":")
                position, start = Position(epoch, int(offset)), end + 1
            elif own:
                return  # delivered here already (recorded ones are delivered from here)
            name = Channel(channel[self._prefix_length + 1 : -1].decode())
            published_at = _STAMP.unpack_from(data, len(self._origin))[0]
            if self._reorder is None:
                self._deliver(name, data[start:], published_at, position, own)
                return
            number, run = MARK.unpack_from(data, self._mark_start)
            sender = data[: len(self._origin)] + data[self._mark_start : self._mark_start + 8] if number else None
            deliver = functools.partial(self._deliver, name, data[start:], published_at, position, own)
            self._reorder.arrive(shard.index, sender, run, deliver)
        elif kind == b"pong" and shard.pongs:
            waiting = shard.pongs.popleft()
            if waiting is None:
                shard.pong_due = None
            elif self._reorder is None:
                _call_all(waiting)
            else:
                self._reorder.after_read(shard.index, waiting)
        elif kind == self._commands.unsubscribed and reply[1] is not None:
            name = Channel(reply[1][self._prefix_length + 1 : -1].decode())
            if shard.unsubscribing[name]:  # asked for, maybe subscribed again since
                shard.unsubscribing[name] -= 1
                if not shard.unsubscribing[name]:
                    del shard.unsubscribing[name]
            elif name in shard.subscribed:  # not asked for: the cluster moved the channel's slot
                self.link.lost(ConnectionError(f"the cluster moved channel {name} to another shard"))

    def _check_master(self, shard: _Shard, reply: Any) -> None:
        if isinstance(reply, bytes) and _field(reply, b"master_replid") != shard.replication_id:
            self.link.lost(ConnectionError("a master's replication ID changed: it failed over"))

    def _deliver(
        self, name: Channel, payload: bytes, published_at: float, position: Position | None, own: bool
    ) -> None:
        try:
            self._on_message(name, payload, published_at, position, own)
        except Exception:
            log.exception("delivering a message from channel %s failed", name)

    def _check_on_up(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            if not isinstance(error, OSError | ReplyError | TimeoutError):
                log.error("resync after connecting failed", exc_info=error)
            self.link.lost(error)
        elif not task.cancelled():
            self.link.restored()
            self._settle_first_attempt()

    def _settle_first_attempt(self) -> None:
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)

    def _drop(self, error: BaseException) -> None:
        """Redis was lost, here or by another backend: down until the supervisor has
        reconnected, which dropping the connections wakes.

        They are aborted, not closed: a close would wait to write what a frozen Redis does not
        read, and what waits for a reply would wait with it; aborted, it is told at once.
        """
        log.debug("Redis bridge: %r", error)  # every failed attempt, where _report logs the first
        self._report(False, str(error) or type(error).__name__)
        self._settle_first_attempt()
        for shard in self._shards:
            for connection in shard.connections:
                connection.abort()

    def _report(self, up: bool, detail: str) -> None:
        """One log line per change of state, not one per failed attempt."""
        if up != self._reported_up:
            self._reported_up = up
            if up:
                log.info("Redis bridge up: %s", detail)
            else:
                log.warning("Redis bridge down, serving local connections only: %s", detail)

    async def _disconnect(self) -> None:
        shards, self._shards = self._shards, []
        connections = [connection for shard in shards for connection in shard.connections]
        for connection in connections:
            connection.close()
        reorder, self._reorder = self._reorder, None
        if reorder is not None:  # what was read is delivered, at most once
            reorder.flush()
        for shard in shards:  # nothing more comes from a lost subscriber: its waiters go on
            for waiting in shard.pongs:
                _call_all(waiting or ())
        if connections:
            await asyncio.wait([connection.closed for connection in connections], timeout=CONNECT_TIMEOUT)


async def _ping(shard: _Shard) -> None:
    """A subscriber's pong arrives as a push, after everything sent before the ping."""
    pong = asyncio.get_running_loop().create_future()
    shard.pongs.append([functools.partial(_resolve, pong)])
    shard.subscriber.command(_PING)
    done, _ = await asyncio.wait(
        (pong, shard.subscriber.closed), timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    if shard.subscriber.closed in done:
        raise shard.subscriber.closed.result()
    if not done:
        raise TimeoutError("Redis did not answer a ping")


def _field(info: bytes, name: bytes) -> bytes:
    """One field of an INFO reply; empty if the server does not give it (then history keeps its
    epochs across a failover, as it cannot tell one)."""
    for line in info.splitlines():
        key, _, value = line.partition(b":")
        if key == name:
            return value.strip()
    return b""


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _call_all(callbacks: Iterable[Callable[[], None]]) -> None:
    for then in callbacks:
        try:
            then()
        except Exception:
            log.exception("a callback waiting for Redis failed")


def _settle_or_down(reply: asyncio.Future[Any], result: Any) -> None:
    if reply.done():
        return
    if isinstance(result, ReplyError):
        reply.set_exception(result)
    elif isinstance(result, Exception):
        reply.set_exception(BridgeDown(str(result)))
    else:
        reply.set_result(result)


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
