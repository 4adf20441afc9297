"""History for a process that serves alone: a bounded ring of recent messages per stream."""

import collections
import secrets
import time
from collections.abc import Callable, Iterable, Sequence

from ..bridge.order import Sender
from . import Appended, Entry, OnAppended, Position, Recovery


class _Stream:
    __slots__ = ("entries", "epoch", "expires", "top")

    def __init__(self, size: int) -> None:
        self.epoch = secrets.token_hex(4)
        self.top = 0
        self.entries: collections.deque[Entry] = collections.deque(maxlen=size)
        self.expires = 0.0


class MemoryHistory:
    echoes = False

    def __init__(self, size: int, seconds: float, keep_seconds: float, clock: Callable[[], float] = time.time) -> None:
        """``keep_seconds``: how long a stream's counter outlives its last use (``seconds`` or more)."""
        self._size = size
        self._seconds = seconds
        self._keep_seconds = keep_seconds
        self._clock = clock
        self._streams: dict[str, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def append(self, stream: str, payload: bytes, then: OnAppended, sender: Sender | None = None) -> None:
        now = self._clock()
        ring = self._stream(stream, now)
        ring.top += 1
        ring.entries.append(Entry(ring.top, now, payload))
        then(Appended(Position(ring.epoch, ring.top), 0))

    async def recover(self, wanted: Sequence[tuple[str, Position | None]], max_bytes: int) -> list[Recovery]:
        now = self._clock()
        return [self._recover(self._stream(stream, now), since, max_bytes, now) for stream, since in wanted]

    def _recover(self, ring: _Stream, since: Position | None, max_bytes: int, now: float) -> Recovery:
        top = Position(ring.epoch, ring.top)
        if since is None or since.epoch != ring.epoch or since.offset > ring.top:
            return Recovery(top, None, now)
        missed = ring.top - since.offset
        entries = tuple(ring.entries)[len(ring.entries) - missed :] if missed else ()
        if len(entries) < missed:
            return Recovery(top, None, now)  # trimmed
        if entries and (entries[0].time < now - self._seconds or sum(len(e.payload) for e in entries) > max_bytes):
            return Recovery(top, None, now)
        return Recovery(top, entries, now)

    async def latest(self, stream: str, limit: int) -> list[tuple[Position, bytes]]:
        ring = self._streams.get(stream)
        if ring is None:
            return []
        oldest = self._clock() - self._seconds
        recent = [entry for entry in ring.entries if entry.time >= oldest][-limit:]
        return [(Position(ring.epoch, entry.offset), entry.payload) for entry in recent]

    async def keep(self, streams: Iterable[str]) -> None:
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

    def _stream(self, stream: str, now: float) -> _Stream:
        ring = self._streams.get(stream)
        if ring is None or ring.expires < now:
            ring = self._streams[stream] = _Stream(self._size)
        ring.expires = now + self._keep_seconds
        return ring
