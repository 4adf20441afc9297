"""A sender's order across the shards of a Redis Cluster.

Redis keeps the order of one shard's messages only, and a process reads each shard on a
connection of its own: a message that a client sent to a channel on shard B may be read
before the one it sent just before to shard A. The order is kept in two halves.

Sending: a connection's messages form runs, one per switch to another shard. Its process
sends a run's first message only once Redis has taken the run before (the connection waits
for its messages in flight), and marks every message with the connection's number and run.

Receiving: a message waits, with whatever is read behind it on its shard, (1) if it opens a
run newer than any of its sender's read here (or belongs to an older one, which only a
reordering brings), until every other shard has answered a ping sent when it was read, so
that whatever they published before it has been read too; and (2) while a message of an
earlier run of its sender still waits. Every wait is for an earlier publish or for a pong,
so waits never form a circle, and each lasts about one round trip to Redis.
"""

import collections
import logging
import struct
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

MARK = struct.Struct("!QI")  # the sending connection's number in its process, and its run
UNMARKED = MARK.pack(0, 0)  # not from a connection (a presence event, the backend API)
# Senders whose latest run is remembered: past this many all are forgotten, which costs
# each of them one more wait, never the order.
MAX_SENDERS = 100_000

# Send a ping on a shard's subscriber and call the callback once its pong is read.
Ping = Callable[[int, Callable[[], None]], None]


class Sender:
    """The sending half for one connection: which shard its last message went to, and its run."""

    __slots__ = ("number", "run", "shard")

    def __init__(self, number: int) -> None:
        self.number = number
        self.shard: int | None = None
        self.run = 0

    def mark(self, shard: int) -> bytes:
        if shard != self.shard:
            if self.shard is not None:
                self.run += 1
            self.shard = shard
        return MARK.pack(self.number, self.run)


class _Waiting:
    __slots__ = ("asked", "deliver", "needs_pongs", "run", "sender")

    def __init__(self, sender: bytes | None, run: int, needs_pongs: bool, deliver: Callable[[], None]) -> None:
        self.sender, self.run, self.needs_pongs, self.deliver = sender, run, needs_pongs, deliver
        self.asked = False  # whether the other shards were pinged for it


class Reorder:
    """The receiving half for one set of shard connections: holds what must wait, delivers the rest."""

    def __init__(self, shards: int, ping: Ping) -> None:
        self._ping = ping
        self._queues: list[collections.deque[_Waiting] | None] = [None] * shards  # None: flowing
        self._pongs_due = [0] * shards  # pongs the head of each queue still waits for
        self._runs: dict[bytes, int] = {}  # the latest run read of each sender
        self._held: dict[bytes, list[int]] = {}  # the runs of each sender's waiting messages

    def arrive(self, shard: int, sender: bytes | None, run: int, deliver: Callable[[], None]) -> None:
        """A message read from ``shard``; ``sender`` is None for one not from a connection."""
        needs_pongs = False
        if run and sender is not None:  # a first run has nothing before it
            latest = self._runs.get(sender)
            if latest is None or run > latest:
                if len(self._runs) >= MAX_SENDERS:
                    self._runs.clear()
                self._runs[sender] = run
            needs_pongs = run != latest
        queue = self._queues[shard]
        if queue is None and not needs_pongs and (sender is None or not self._held.get(sender)):
            _safely(deliver)
            return
        if queue is None:
            queue = self._queues[shard] = collections.deque()
        queue.append(_Waiting(sender, run, needs_pongs, deliver))
        if sender is not None:
            self._held.setdefault(sender, []).append(run)
        if len(queue) == 1:
            self._release({shard})

    def after_read(self, shard: int, callbacks: Iterable[Callable[[], None]]) -> None:
        """Callbacks waiting for a pong: after what was read before it is delivered."""
        queue = self._queues[shard]
        for then in callbacks:
            if isinstance(then, _Barrier) or queue is None:
                _safely(then)
            else:
                queue.append(_Waiting(None, 0, False, then))

    def flush(self) -> None:
        """The connections are gone: deliver what waits, in each shard's order."""
        queues, self._queues = self._queues, [None] * len(self._queues)
        self._held.clear()
        for queue in queues:
            for waiting in queue or ():
                _safely(waiting.deliver)

    def _release(self, shards: set[int]) -> None:
        """Deliver from the heads of these shards' queues what may go now; a delivery may free others."""
        while shards:
            shard = shards.pop()
            queue = self._queues[shard]
            while queue:
                head = queue[0]
                if head.needs_pongs and not head.asked:
                    self._ask_others(shard, head)
                if self._pongs_due[shard] or self._earlier_waits(head):
                    break
                queue.popleft()
                if head.sender is not None:
                    self._unhold(head)
                    shards.update(index for index, other in enumerate(self._queues) if other and index != shard)
                _safely(head.deliver)
            if queue is not None and not queue:
                self._queues[shard] = None

    def _ask_others(self, shard: int, head: _Waiting) -> None:
        head.asked = True
        others = [index for index in range(len(self._queues)) if index != shard]
        self._pongs_due[shard] = len(others)
        for other in others:
            self._ping(other, _Barrier(self, shard))

    def _earlier_waits(self, head: _Waiting) -> bool:
        return head.sender is not None and any(run < head.run for run in self._held.get(head.sender, ()))

    def _unhold(self, waiting: _Waiting) -> None:
        runs = self._held[waiting.sender]
        runs.remove(waiting.run)
        if not runs:
            del self._held[waiting.sender]

    def _ponged(self, shard: int) -> None:
        self._pongs_due[shard] -= 1
        if self._pongs_due[shard] == 0:
            self._release({shard})


class _Barrier:
    """A pong a waiting message needs: called when read, not queued behind what waits."""

    __slots__ = ("_reorder", "_shard")

    def __init__(self, reorder: Reorder, shard: int) -> None:
        self._reorder, self._shard = reorder, shard

    def __call__(self) -> None:
        self._reorder._ponged(self._shard)


def _safely(call: Callable[[], None]) -> None:
    """One failing delivery must not stop those behind it."""
    try:
        call()
    except Exception:
        log.exception("a delivery from Redis failed")
