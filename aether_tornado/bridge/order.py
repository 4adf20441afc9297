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

import asyncio
import collections
import logging
import struct
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

MARK = struct.Struct("!QQ")  # the sending connection's number in its process, and its run
UNMARKED = MARK.pack(0, 0)  # not from a connection: a presence event
# Senders whose latest run is remembered: past this many all are forgotten, which costs
# each of them one more wait, never the order.
MAX_SENDERS = 100_000

# Send a ping on a shard's subscriber, written after everything read so far, and call the
# callback once its pong is read.
Ping = Callable[[int, Callable[[], None]], None]


class Sender:
    """The sending half for one sender (a connection, or the backend API): the one gate its
    messages pass, and the mark that tells receivers which run each belongs to.

    Messages for one shard may be in flight together; one for another shard waits until every
    one in flight has landed (Redis has taken it), and opens a new run. A message that stays
    in its process (shard None) never waits.
    """

    __slots__ = ("_flight_shard", "_waiters", "in_flight", "number", "run", "shard")

    def __init__(self, number: int) -> None:
        self.number = number
        self.shard: int | None = None  # of the last message marked
        self.run = 0
        self.in_flight = 0
        self._flight_shard: int | None = None
        self._waiters: list[asyncio.Future[None]] | None = None  # made when one waits: most never do

    def turn(self, shard: int | None) -> "asyncio.Future[None] | None":
        """None when a message for ``shard`` may go now; else a future, done once every
        message in flight has landed."""
        if not self.in_flight or shard is None or shard == self._flight_shard:
            return None
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        return waiter

    def track(self, landing: "asyncio.Future[Any]", shard: int | None) -> None:
        """A message for ``shard`` is in flight until ``landing`` is done. Call before adding
        callbacks of your own to ``landing``: they see it landed."""
        self.in_flight += 1
        if shard is not None:
            self._flight_shard = shard
        landing.add_done_callback(self._landed)

    def _landed(self, _: "asyncio.Future[Any]") -> None:
        self.in_flight -= 1
        if not self.in_flight:
            waiters, self._waiters = self._waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(None)

    def mark(self, shard: int) -> bytes:
        if shard != self.shard:
            if self.shard is not None:
                self.run += 1
            self.shard = shard
        return MARK.pack(self.number, self.run)


class _Waiting:
    __slots__ = ("deliver", "pongs_due", "run", "sender")

    def __init__(self, sender: bytes | None, run: int, deliver: Callable[[], None]) -> None:
        self.sender, self.run, self.deliver = sender, run, deliver
        self.pongs_due = 0  # from the other shards, pinged when it was read


class Reorder:
    """The receiving half for one set of shard connections: holds what must wait, delivers the rest.

    Each message that must wait pings the other shards as it is read, so waits overlap: what
    arrives within one round trip is released within about one round trip.
    """

    def __init__(self, shards: int, ping: Ping) -> None:
        self._ping = ping
        self._queues: list[collections.deque[_Waiting] | None] = [None] * shards  # None: flowing
        self._runs: dict[bytes, int] = {}  # the latest run read of each sender
        self._held: dict[bytes, collections.Counter[int]] = {}  # each sender's waiting messages, by run

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
        if queue is None and not needs_pongs and (sender is None or sender not in self._held):
            _safely(deliver)
            return
        waiting = _Waiting(sender, run, deliver)
        if needs_pongs:
            others = [index for index in range(len(self._queues)) if index != shard]
            waiting.pongs_due = len(others)
            for other in others:
                self._ping(other, _Barrier(self, shard, waiting))
        if queue is None:
            queue = self._queues[shard] = collections.deque()
        queue.append(waiting)
        if sender is not None:
            self._held.setdefault(sender, collections.Counter())[run] += 1
        if len(queue) == 1:
            self._release({shard})

    def after_read(self, shard: int, callbacks: Iterable[Callable[[], None]]) -> None:
        """Callbacks waiting for a pong: after what was read before it is delivered.

        Those that wait go in first: a barrier among the callbacks may release the queue.
        """
        barriers = []
        for then in callbacks:
            queue = self._queues[shard]
            if isinstance(then, _Barrier):
                barriers.append(then)
            elif queue is None:
                _safely(then)
            else:
                queue.append(_Waiting(None, 0, then))
        for barrier in barriers:
            barrier()

    def flush(self) -> None:
        """The connections are gone and no pong will come: deliver what waits, in every sender's order."""
        for queue in self._queues:
            for waiting in queue or ():
                waiting.pongs_due = 0
        self._release(set(range(len(self._queues))))

    def _release(self, shards: set[int]) -> None:
        """Deliver from the heads of these shards' queues what may go now; a delivery may free others."""
        while shards:
            shard = shards.pop()
            queue = self._queues[shard]
            while queue:
                head = queue[0]
                if head.pongs_due or self._earlier_waits(head):
                    break
                queue.popleft()
                if head.sender is not None:
                    self._unhold(head)
                    shards.update(index for index, other in enumerate(self._queues) if other and index != shard)
                _safely(head.deliver)
            if queue is not None and not queue:
                self._queues[shard] = None

    def _earlier_waits(self, head: _Waiting) -> bool:
        held = self._held.get(head.sender) if head.sender is not None else None
        return held is not None and min(held) < head.run

    def _unhold(self, waiting: _Waiting) -> None:
        assert waiting.sender is not None
        held = self._held[waiting.sender]
        held[waiting.run] -= 1
        if not held[waiting.run]:
            del held[waiting.run]
            if not held:
                del self._held[waiting.sender]

    def _ponged(self, shard: int, waiting: _Waiting) -> None:
        if waiting.pongs_due:
            waiting.pongs_due -= 1
            if not waiting.pongs_due:
                self._release({shard})


class _Barrier:
    """A pong a waiting message needs: called when read, not queued behind what waits."""

    __slots__ = ("_reorder", "_shard", "_waiting")

    def __init__(self, reorder: Reorder, shard: int, waiting: _Waiting) -> None:
        self._reorder, self._shard, self._waiting = reorder, shard, waiting

    def __call__(self) -> None:
        self._reorder._ponged(self._shard, self._waiting)


def _safely(call: Callable[[], None]) -> None:
    """One failing delivery must not stop those behind it."""
    try:
        call()
    except Exception:
        log.exception("a delivery from Redis failed")
