"""History for a process that serves alone: a bounded ring of recent messages per stream."""

import collections
import secrets
import time
from collections.abc import Callable, Iterable, Sequence

from ..bridge.order import Sender
from ..v3.channels import Channel, Position
from . import Appended, Entry, OnAppended, Page, Probe, Recovery, replay_plan


class _Stream:
    __slots__ = ("entries", "epoch", "expires", "top")

    def __init__(self, size: int) -> None:
        self.epoch = secrets.token_hex(4)
        self.top = 0
        self.entries: collections.deque[Entry] = collections.deque(maxlen=size)
        self.expires = 0.0


class MemoryHistory:
    echoes = False

    def __init__(
        self,
        size: int,
        seconds: float,
        keep_seconds: float,
        present: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``keep_seconds``: how long a stream's counter outlives its last use (``seconds`` or more);
        ``present``: whether a client_id has a connection (this process is all there is)."""
        self._size = size
        self._seconds = seconds
        self._keep_seconds = keep_seconds
        self._present = present
        self._clock = clock
        self._streams: dict[Channel, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def append(
        self,
        stream: Channel,
        payload: bytes,
        then: OnAppended,
        sender: Sender | None = None,
        recipient: str | None = None,
    ) -> None:
        now = self._clock()
        if recipient is not None and not self._present(recipient) and self._live(stream, now) is None:
            then(Appended(None, 0))
            return
        ring = self._stream(stream, now)
        ring.top += 1
        ring.entries.append(Entry(ring.top, now, payload))
        then(Appended(Position(ring.epoch, ring.top), 0))

    async def recover(self, wanted: Sequence[tuple[Channel, Position | None]], budget: int) -> list[Recovery]:
        now = self._clock()
        rings = [self._stream(stream, now) for stream, _ in wanted]
        since = [position for _, position in wanted]
        probes = [self._probe(ring, position, now) for ring, position in zip(rings, since, strict=True)]
        plan = replay_plan(probes, since, budget)
        return [
            Recovery(probe.top, self._missed(ring, probe.top.offset - position.offset), now)
            if planned and position is not None
            else Recovery(probe.top, None, now)
            for ring, position, probe, planned in zip(rings, since, probes, plan, strict=True)
        ]

    def _probe(self, ring: _Stream, since: Position | None, now: float) -> Probe:
        top = Position(ring.epoch, ring.top)
        if since is None or since.epoch != ring.epoch or since.offset > ring.top:
            return Probe(top, now, None)
        if since.offset == ring.top:
            return Probe(top, now, 0)
        missed = self._missed(ring, ring.top - since.offset)
        if len(missed) < ring.top - since.offset or missed[0].time < now - self._seconds:
            return Probe(top, now, None)  # trimmed, or too old
        return Probe(top, now, sum(len(entry.payload) for entry in missed))

    @staticmethod
    def _missed(ring: _Stream, count: int) -> tuple[Entry, ...]:
        """The last ``count`` messages, or fewer if some were trimmed."""
        return tuple(ring.entries)[len(ring.entries) - count :] if count else ()

    async def latest(self, stream: Channel, limit: int, max_bytes: int, before: Position | None = None) -> Page:
        ring = self._live(stream, self._clock())
        if ring is None or (before is not None and before.epoch != ring.epoch):
            return Page([], False)
        oldest = self._clock() - self._seconds
        taken: list[Entry] = []
        size = 0
        for entry in reversed(ring.entries):
            if before is not None and entry.offset >= before.offset:
                continue
            if entry.time < oldest:
                break
            if len(taken) == limit or (taken and size + len(entry.payload) > max_bytes):
                return Page(_positioned(ring, taken), True)
            size += len(entry.payload)
            taken.append(entry)
        return Page(_positioned(ring, taken), False)

    async def remove(self, stream: Channel) -> None:
        ring = self._live(stream, self._clock())
        if ring is not None:
            ring.entries.clear()

    async def keep(self, streams: Iterable[Channel]) -> None:
        """Keep these streams; forget those nobody published to or kept for ``keep_seconds``, and old messages."""
        now = self._clock()
        for stream in streams:
            self._stream(stream, now)
        oldest = now - self._seconds
        for name, ring in list(self._streams.items()):
            if ring.expires < now:
                del self._streams[name]
                continue
            while ring.entries and ring.entries[0].time < oldest:
                ring.entries.popleft()

    async def share_secret(self, mine: bytes) -> bytes:
        return mine

    def _live(self, stream: Channel, now: float) -> _Stream | None:
        ring = self._streams.get(stream)
        return None if ring is None or ring.expires < now else ring

    def _stream(self, stream: Channel, now: float) -> _Stream:
        ring = self._live(stream, now)
        if ring is None:
            ring = self._streams[stream] = _Stream(self._size)
        ring.expires = now + self._keep_seconds
        return ring


def _positioned(ring: _Stream, newest_first: list[Entry]) -> list[tuple[Position, bytes]]:
    return [(Position(ring.epoch, entry.offset), entry.payload) for entry in reversed(newest_first)]
