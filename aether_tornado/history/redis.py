"""History in Redis: a stream and a counter per channel, shared by every process.

Keys: ``{prefix}:history:{<channel>}`` (a Redis stream whose entry IDs are the offsets, each
with its time ``t`` in microseconds and its message ``m``) and
``{prefix}:history:{<channel>}:meta`` (a hash: ``epoch``, the last ``offset``, and ``replid``,
the replication ID of the master that counted); the braces keep both in one Redis Cluster slot.
A counter another master kept starts a new epoch: after a failover the promoted replica may
lack the last few messages, and counting on from its copy would reuse their offsets.

The scripts beside this file run on the bridge's publishing connection: an append records and
publishes in one step, in the order of every other publish of this process, and its reply says
where the message was recorded.
"""

import asyncio
import functools
import hashlib
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..bridge import BridgeDown
from ..bridge.order import Sender
from ..bridge.redis import RedisBridge
from ..bridge.resp import ReplyError
from . import Appended, Entry, OnAppended, Position, Recovery

SCRIPTS = {
    name: (Path(__file__).parent / "lua" / f"{name}.lua").read_bytes() for name in ("append", "recover", "latest")
}


def _sha(body: bytes) -> bytes:
    return hashlib.sha1(body).hexdigest().encode()


class RedisHistory:
    echoes = True  # recorded messages come back on the subscriber, in the order Redis recorded them
    # What the bridge loads on each connection, so that EVALSHA finds them after a Redis restart.
    scripts = tuple(SCRIPTS.values())

    def __init__(self, bridge: RedisBridge, prefix: str, size: int, seconds: float, keep_seconds: float) -> None:
        self._bridge = bridge
        self._prefix = f"{prefix}:history:"
        self._size = str(size).encode()
        self._seconds = seconds
        self._ttl = str(max(1, round(seconds * 1000))).encode()  # milliseconds, for PEXPIRE
        self._keep_ttl = str(max(1, round(keep_seconds * 1000))).encode()
        self._append, self._recover, self._latest = (_sha(SCRIPTS[name]) for name in ("append", "recover", "latest"))
        # A new counter's epoch: this process's id and a number, never the same twice.
        self._epochs = (f"{bridge.node_id}{number:x}".encode() for number in itertools.count(1))

    def _keys(self, stream: str) -> tuple[str, str]:
        key = f"{self._prefix}{{{stream}}}"
        return key, key + ":meta"

    def append(self, stream: str, payload: bytes, then: OnAppended, sender: Sender | None = None) -> None:
        bridge = self._bridge
        subscribed_here = bridge.holds(stream)
        bridge.call_then(
            stream,
            functools.partial(self._appended, then, subscribed_here),
            b"EVALSHA",
            self._append,
            b"2",
            *self._keys(stream),
            bridge.channel_key(stream),
            bridge.envelope_head(stream, sender),
            payload,
            self._size,
            self._ttl,
            self._keep_ttl,
            next(self._epochs),
            bridge.publish_command,
            bridge.replication_id(stream),
        )

    def _appended(self, then: OnAppended, subscribed_here: bool, reply: Any) -> None:
        if isinstance(reply, Exception):
            if isinstance(reply, ReplyError):
                self._bridge.mark_lost(reply)  # a script flushed, say: reconnecting loads them again
            then(reply)
            return
        epoch, offset, receivers = reply
        then(Appended(Position(epoch.decode(), offset), max(0, receivers - subscribed_here)))

    async def recover(self, wanted: Sequence[tuple[str, Position | None]], max_bytes: int) -> list[Recovery]:
        calls = [
            self._bridge.call(
                stream,
                b"EVALSHA",
                self._recover,
                b"2",
                *self._keys(stream),
                since.epoch if since else b"",
                str(since.offset if since else 0),
                str(self._seconds),
                str(max_bytes),
                self._keep_ttl,
                next(self._epochs),
                self._bridge.replication_id(stream),
            )
            for stream, since in wanted
        ]
        replies = await asyncio.gather(*(self._reply(call) for call in calls))  # sent together: one round trip
        return [_recovery(reply) for reply in replies]

    async def _reply(self, call: asyncio.Future) -> Any:
        """A script's reply; BridgeDown, after reconnecting, if Redis refused it (a script flushed, say)."""
        try:
            return await call
        except ReplyError as error:
            self._bridge.mark_lost(error)
            raise BridgeDown(str(error)) from None

    async def latest(self, stream: str, limit: int) -> list[tuple[Position, bytes]]:
        reply = await self._reply(
            self._bridge.call(stream, b"EVALSHA", self._latest, b"2", *self._keys(stream), str(limit))
        )
        if not reply:
            return []
        epoch, now, entries = reply[0].decode(), int(reply[1]) / 1e6, [_entry(entry) for entry in reversed(reply[2])]
        oldest = now - self._seconds
        return [(Position(epoch, entry.offset), entry.payload) for entry in entries if entry.time >= oldest]

    async def keep(self, streams: Iterable[str]) -> None:
        for stream in streams:
            self._bridge.command(stream, b"PEXPIRE", self._keys(stream)[1], self._keep_ttl)


def _entry(entry: list) -> Entry:
    """``[b"17-0", [b"t", micros, b"m", message]]`` as an Entry."""
    entry_id, fields = entry
    return Entry(int(entry_id.partition(b"-")[0]), int(fields[1]) / 1e6, fields[3])


def _recovery(reply: list) -> Recovery:
    top, read_at = Position(reply[0].decode(), reply[1]), int(reply[2]) / 1e6
    if len(reply) < 4:
        return Recovery(top, None, read_at)
    return Recovery(top, tuple(_entry(entry) for entry in reply[3]), read_at)
