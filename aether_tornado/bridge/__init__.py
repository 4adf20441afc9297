"""The cross-process transport between server processes.

Guarantee: at most once. A message published while the transport is down is lost for
the other processes (local delivery never depends on it). Messages one process publishes
arrive at each subscribing process in the order they were published, across channels
too (one subscriber connection per process, every publish of a process in order on one
connection): the node relies on this for order per sender and receiver. On several shards
(``sharded``) that order holds per shard, and per sender (see order.py) once the sender waits
for its messages to one shard to be taken before it sends to another.
"""

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from ..redis.link import Link
from ..v3.channels import Channel, Position
from .order import Sender

# Called with (channel, payload, published_at, position, own) for every message another process
# published, and every recorded one (own: this process published it); published_at is the
# publisher's wall clock, for latency metrics; position is a recorded message's in its
# channel's history (history/), else None.
OnMessage = Callable[[Channel, bytes, float, Position | None, bool], None]
# Called each time the transport (re)connects, after it has resubscribed.
OnUp = Callable[[], Coroutine[Any, Any, None]]
# The channels this process needs now: the hub's own list, the source of truth.
Wanted = Callable[[], Iterable[Channel]]

# A process that reconnected after an outage asks every process to resend snapshots.
RESYNC_CHANNEL = Channel("resync")
# Operators' orders to every process (disconnect a client), as JSON objects.
CONTROL_CHANNEL = Channel("control")


class BridgeDown(Exception):
    """The transport is unreachable; only local delivery happened."""


class Bridge(Protocol):
    # Whether other processes can be reached now: the process's one view, which the bridge's
    # supervisor keeps and presence shares (a memory bridge's is always up).
    link: Link

    @property
    def sharded(self) -> bool:
        """Whether channels are spread over several shards (a Redis Cluster)."""

    @property
    def backlog_bytes(self) -> int:
        """Bytes sent that the transport has not taken yet: bounded, past the bound it counts as down."""

    async def start(self, on_message: OnMessage, wanted: Wanted, on_up: OnUp) -> None:
        """Begin delivering other processes' messages to ``on_message``.

        Returns once the first attempt to reach the others has settled (connected and ``on_up``
        done, or failed), within a few seconds at most: a process that listens only then takes
        no client it could not yet serve across processes, nor recover.
        """

    def send(self, channel: Channel, payload: bytes, sender: Sender | None = None) -> None:
        """Send ``payload`` to the other processes subscribed to ``channel``, without waiting.

        ``sender`` is the sending connection's, if a connection sent it. Raises BridgeDown
        when the transport is known to be unreachable.
        """

    def publish(self, channel: Channel, payload: bytes, sender: Sender | None = None) -> asyncio.Future[int]:
        """Like ``send``; the future tells how many processes other than this one received it.

        Raises BridgeDown when the transport is known to be unreachable; the future fails with
        BridgeDown when it turns out to be. ``send`` and ``publish`` share one order.
        """

    async def subscribe(self, channel: Channel) -> None:
        """Receive ``channel`` from now on; called when the hub gets its first member."""

    async def synced(self) -> None:
        """Return once every subscription asked for so far is in effect. Raises BridgeDown."""

    def shard_of(self, channel: Channel) -> int:
        """Which shard of Redis carries ``channel``: publishes keep their order within a shard only."""

    def holds(self, channel: Channel) -> bool:
        """Whether this process is subscribed to ``channel``."""

    def after_pushes(self, channel: Channel, then: Callable[[], None]) -> None:
        """Call ``then`` once what was published to this process on ``channel`` so far is delivered (or lost)."""

    async def unsubscribe(self, channel: Channel) -> None:
        """Stop receiving ``channel``; called when the hub loses its last member."""

    async def close(self) -> None:
        """Stop; no message is delivered after this returns."""
