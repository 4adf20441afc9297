"""History in Redis: a stream and a counter per channel, shared by every process.

Keys: ``{prefix}:history:{<channel>}`` (a Redis stream whose entry IDs are the offsets, each
with its time ``t`` in microseconds, ``c`` the bytes recorded in the stream before it, and its
message ``m``) and ``{prefix}:history:{<channel>}:meta`` (a hash: ``epoch``, the last
``offset``, the ``bytes`` recorded, ``replid``, the replication ID of the master that counted,
and two age marks); the braces keep both in one Redis Cluster slot, with the channel and, for a
client's stream, that client's presence index. A counter another master kept starts a new epoch:
after a failover the promoted replica may lack the last few messages, and counting on from its
copy would reuse their offsets.

The scripts beside this file run on the bridge's publishing connection: an append records and
publishes in one step, in the order of every other publish of this process, and its reply says
where the message was recorded. A recovery first probes each stream (its top, and the bytes
missed, from the counters: no script reads more than one message), then reads only the streams
that fit the budget, in pages of plain ``XRANGE``s.
"""

import asyncio
import functools
import hashlib
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..bridge import BridgeDown
from ..bridge.order import Sender
from ..presence.redis import client_index_key
from ..redis.link import Link
from ..redis.resp import OnReply, ReplyError
from ..v3.channels import Channel, Position
from . import Appended, Entry, OnAppended, Page, Probe, Recovery, replay_plan

SCRIPTS = {name: (Path(__file__).parent / "lua" / f"{name}.lua").read_bytes() for name in ("append", "probe", "latest")}
# The most bytes one read of a recovery asks Redis for: a longer replay is read in pages.
PAGE_BYTES = 1 << 20
# Where the secret of recovery proofs is kept: the channel names the shard, the key the value.
SECRET_CHANNEL = Channel("recovery")


class ShardCommands(Protocol):
    """What history needs of Redis: the publishing connection on each channel's shard, and the link.

    Commands run there in the order of the process's publishes, so a script that records and
    publishes a message is ordered among them like a plain publish. The Redis bridge is one.
    """

    node_id: str
    link: Link  # told when Redis refuses what it must take: reconnecting loads the scripts again

    @property
    def publish_command(self) -> bytes:
        """``PUBLISH``, or ``SPUBLISH`` on a cluster."""

    def channel_key(self, channel: Channel) -> str:
        """The Redis name of ``channel``, whose hash tag its keys share."""

    def envelope_head(self, channel: Channel, sender: Sender | None = None) -> bytes:
        """What precedes a message published on ``channel``."""

    def holds(self, channel: Channel) -> bool:
        """Whether this process receives ``channel``."""

    def replication_id(self, channel: Channel) -> bytes:
        """The replication ID of the master that holds ``channel``. Raises BridgeDown."""

    def call_then(self, channel: Channel, on_reply: OnReply, *args: str | bytes) -> None:
        """Run a command on ``channel``'s shard, in the order of its publishes. Raises BridgeDown."""

    def call(self, channel: Channel, *args: str | bytes) -> asyncio.Future[Any]:
        """Like ``call_then``; the future gets the reply, a ReplyError, or BridgeDown."""

    def command(self, channel: Channel, *args: str | bytes) -> None:
        """A command whose reply nobody needs; dropped while Redis is down."""


def _sha(body: bytes) -> bytes:
    return hashlib.sha1(body).hexdigest().encode()


class RedisHistory:
    echoes = True  # recorded messages come back on the subscriber, in the order Redis recorded them
    # What the bridge loads on each connection, so that EVALSHA finds them after a Redis restart.
    scripts = tuple(SCRIPTS.values())

    def __init__(
        self, redis: ShardCommands, prefix: str, size: int, seconds: float, keep_seconds: float, entry_bytes: int
    ) -> None:
        """``entry_bytes``: the most one recorded message may weigh, which sizes a page of reads."""
        self._redis = redis
        self._redis_prefix = prefix
        self._prefix = f"{prefix}:history:"
        self._size = str(size).encode()
        self._seconds = seconds
        self._window = str(seconds).encode()
        self._ttl = str(max(1, round(seconds * 1000))).encode()  # milliseconds, for PEXPIRE
        self._keep_ttl = str(max(1, round(keep_seconds * 1000))).encode()
        self._per_page = max(1, PAGE_BYTES // entry_bytes)
        self._append, self._probe, self._latest = (_sha(SCRIPTS[name]) for name in ("append", "probe", "latest"))
        # A new counter's epoch: this process's id and a number, never the same twice.
        self._epochs = (f"{redis.node_id}{number:x}".encode() for number in itertools.count(1))

    def _keys(self, stream: Channel) -> tuple[str, str]:
        key = f"{self._prefix}{{{stream}}}"
        return key, key + ":meta"

    def append(
        self,
        stream: Channel,
        payload: bytes,
        then: OnAppended,
        sender: Sender | None = None,
        recipient: str | None = None,
    ) -> None:
        redis = self._redis
        subscribed_here = redis.holds(stream)
        stream_key, meta_key = self._keys(stream)
        redis.call_then(
            stream,
            functools.partial(self._appended, then, subscribed_here),
            b"EVALSHA",
            self._append,
            b"3",
            stream_key,
            meta_key,
            meta_key if recipient is None else client_index_key(self._redis_prefix, recipient),
            redis.channel_key(stream),
            redis.envelope_head(stream, sender),
            payload,
            self._size,
            self._ttl,
            self._keep_ttl,
            next(self._epochs),
            redis.publish_command,
            redis.replication_id(stream),
            self._window,
        )

    def _appended(self, then: OnAppended, subscribed_here: bool, reply: Any) -> None:
        if isinstance(reply, Exception):
            if isinstance(reply, ReplyError):
                self._redis.link.lost(reply)  # a script flushed, say: reconnecting loads them again
            then(reply)
            return
        epoch, offset, receivers = reply
        position = Position(epoch.decode(), offset) if epoch else None
        then(Appended(position, max(0, receivers - subscribed_here)))

    async def recover(self, wanted: Sequence[tuple[Channel, Position | None]], budget: int) -> list[Recovery]:
        since = [position for _, position in wanted]
        calls = [
            self._redis.call(
                stream,
                b"EVALSHA",
                self._probe,
                b"2",
                *self._keys(stream),
                position.epoch if position else b"",
                str(position.offset if position else 0),
                self._window,
                self._keep_ttl,
                next(self._epochs),
                self._redis.replication_id(stream),
            )
            for stream, position in wanted
        ]
        probes = [_probe(reply) for reply in await asyncio.gather(*map(self._reply, calls))]  # one round trip
        plan = replay_plan(probes, since, budget)
        reads = [
            self._read(stream, probe, presented) if planned and presented is not None else _nothing()
            for (stream, presented), probe, planned in zip(wanted, probes, plan, strict=True)
        ]
        missed = await asyncio.gather(*reads)
        return [Recovery(probe.top, entries, probe.read_at) for probe, entries in zip(probes, missed, strict=True)]

    async def _read(self, stream: Channel, probe: Probe, since: Position) -> tuple[Entry, ...] | None:
        """The messages after ``since`` up to the probe's top, in pages of at most PAGE_BYTES;
        None if some were trimmed since the probe."""
        first, last = since.offset + 1, probe.top.offset
        assert probe.missed_bytes is not None
        if first > last:
            return ()
        per_page = last - first + 1 if probe.missed_bytes <= PAGE_BYTES else self._per_page
        key = self._keys(stream)[0]
        pages = [
            self._reply(self._redis.call(stream, b"XRANGE", key, f"{start}-0", f"{min(start + per_page - 1, last)}-0"))
            for start in range(first, last + 1, per_page)
        ]
        entries = tuple(_entry(entry) for page in await asyncio.gather(*pages) for entry in page)
        if len(entries) != last - first + 1 or entries[0].offset != first:
            return None
        return entries

    async def _reply(self, call: asyncio.Future[Any]) -> Any:
        """A command's reply; BridgeDown, after reconnecting, if Redis refused it (a script flushed, say)."""
        try:
            return await call
        except ReplyError as error:
            self._redis.link.lost(error)
            raise BridgeDown(str(error)) from None

    async def latest(self, stream: Channel, limit: int, max_bytes: int, before: Position | None = None) -> Page:
        reply = await self._reply(
            self._redis.call(
                stream,
                b"EVALSHA",
                self._latest,
                b"2",
                *self._keys(stream),
                str(limit),
                str(max_bytes),
                str(min(limit, self._per_page)),
                str(before.offset) if before else b"",
                before.epoch if before else b"",
                self._window,
            )
        )
        if not reply:
            return Page([], False)
        epoch, more, entries = reply[0].decode(), reply[1], [_entry(entry) for entry in reversed(reply[2])]
        return Page([(Position(epoch, entry.offset), entry.payload) for entry in entries], bool(more))

    async def remove(self, stream: Channel) -> None:
        await self._reply(self._redis.call(stream, b"DEL", self._keys(stream)[0]))

    async def keep(self, streams: Iterable[Channel]) -> None:
        for stream in streams:
            self._redis.command(stream, b"PEXPIRE", self._keys(stream)[1], self._keep_ttl)

    async def share_secret(self, mine: bytes) -> bytes:
        key = self._redis.channel_key(SECRET_CHANNEL) + ":secret"
        theirs = await self._reply(self._redis.call(SECRET_CHANNEL, b"SET", key, mine, b"NX", b"GET"))
        return mine if theirs is None else theirs


async def _nothing() -> None:
    return None


def _entry(entry: list[Any]) -> Entry:
    """``[b"17-0", [b"t", micros, b"c", bytes before, b"m", message]]`` as an Entry."""
    entry_id, fields = entry
    return Entry(int(entry_id.partition(b"-")[0]), int(fields[1]) / 1e6, fields[-1])


def _probe(reply: list[Any]) -> Probe:
    epoch, top, read_at, missed_bytes = reply
    return Probe(Position(epoch.decode(), top), int(read_at) / 1e6, None if missed_bytes < 0 else missed_bytes)
