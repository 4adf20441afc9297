"""Message history: each stream's recent messages, for clients that recover after a reconnect.

A stream is the history of a bridge channel: ``group:{id}``, ``client:{id}`` (the direct
messages to a client, in whatever group) and ``broadcast``. Each recorded message takes the
next offset of its stream, 1, 2, 3 and so on without a gap, so a client that presents the
last offset it saw can be given exactly what followed, or be told that some of it is gone.
Each stream also has an epoch, a word chosen when its counter is created: when the counter
is lost (Redis restarted or flushed, the stream unused for longer than the window) offsets
start again under a new epoch, and a position from before is never trusted.

Guarantees: a recorded message can be recovered until its stream holds ``size`` newer ones
or it is ``seconds`` old. A stream's counter and epoch live while the stream is published to
or kept (``keep``, for every stream a process has connections on), and ``seconds`` longer. A
direct message to a client that is neither present anywhere nor has a live stream is not
recorded: nobody could recover it, and invented client_ids cost no storage. What one
recovery replays, all streams together, fits its byte budget, and finding out costs the store
no more than reading what is replayed.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from ..bridge.order import Sender
from ..v3.channels import REPLAY_ORDER, Channel, Position


class Entry(NamedTuple):
    """One recorded message: its offset, when it was recorded (seconds), and its JSON."""

    offset: int
    time: float
    payload: bytes


class Appended(NamedTuple):
    """Where a message was recorded (None: only published, to a client nobody knows), and how
    many other processes it was sent to."""

    position: Position | None
    receivers: int


class Probe(NamedTuple):
    """A stream's state for a client, found without reading what it missed.

    ``missed_bytes`` is what the missed messages weigh together, or None when they cannot all
    be replayed: no position presented, another epoch, trimmed, or older than the window.
    """

    top: Position
    read_at: float
    missed_bytes: int | None


class Recovery(NamedTuple):
    """A stream's answer to a client: its latest position, what the client missed, when it was read.

    ``missed`` is None when the client cannot be given all it missed: see Probe, and a stream
    whose replay did not fit the budget left by the streams replayed before it.
    """

    top: Position
    missed: tuple[Entry, ...] | None
    read_at: float


class Page(NamedTuple):
    """Some of a stream's latest messages, oldest first; ``more`` when older ones are left."""

    messages: list[tuple[Position, bytes]]
    more: bool


# Called once a message is recorded, with where, or with the exception that kept it out.
OnAppended = Callable[[Appended | Exception], None]


def replay_cost(missed_bytes: int, count: int, top: Position) -> int:
    """The most bytes ``count`` missed messages take on the wire: each message with its position
    key (``,"position":"epoch:offset"``) in a frame with a header of at most 10 bytes."""
    return missed_bytes + count * (25 + len(top.epoch) + len(str(top.offset)))


def replay_plan(probes: Sequence[Probe], since: Sequence[Position | None], budget: int) -> list[bool]:
    """Which streams to replay: those whose missed messages can be, in REPLAY_ORDER, while
    their frames fit what is left of ``budget``."""
    plan = [False] * len(probes)
    for index in (index for index in REPLAY_ORDER if index < len(probes)):
        probe, presented = probes[index], since[index]
        if probe.missed_bytes is None or presented is None:
            continue
        cost = replay_cost(probe.missed_bytes, probe.top.offset - presented.offset, probe.top)
        if cost <= budget:
            plan[index] = True
            budget -= cost
    return plan


class History(Protocol):
    # Whether this process's own recorded messages come back to it through the bridge, to be
    # delivered from there with everyone else's in the order recorded (Redis); if not, the node
    # delivers them itself once appended (memory).
    echoes: bool

    def append(
        self,
        stream: Channel,
        payload: bytes,
        then: OnAppended,
        sender: Sender | None = None,
        recipient: str | None = None,
    ) -> None:
        """Record ``payload`` and send it to the other processes subscribed to the stream's channel,
        in one step: a message recorded is published with its position, never one without the
        other, and in the order of the sender's other publishes.

        ``then`` is called once, in the order of appends, maybe before this returns (memory).
        ``sender`` is the sending connection's, if a connection sent it. ``recipient`` is the
        client_id of a direct message: it is recorded only if that client is present anywhere
        or its stream is live, else only sent (``Appended`` without a position). Raises
        BridgeDown when the store is known to be unreachable.
        """

    async def recover(self, wanted: Sequence[tuple[Channel, Position | None]], budget: int) -> list[Recovery]:
        """For each (stream, last position seen): what followed, oldest first. The messages
        replayed, all streams together, take at most ``budget`` bytes on the wire."""

    async def latest(self, stream: Channel, limit: int, max_bytes: int, before: Position | None = None) -> Page:
        """Up to ``limit`` of a stream's last messages within the window, before ``before`` if
        given, of at most ``max_bytes`` together (one message always)."""

    async def remove(self, stream: Channel) -> None:
        """Drop a stream's messages and keep its counter: what follows is numbered on, so a client
        that missed nothing still recovers, and one that missed a removed message is told it did
        not. Raises BridgeDown when the store is known to be unreachable."""

    async def keep(self, streams: Iterable[Channel]) -> None:
        """Keep these streams' counters while connections use them, published to or not."""

    async def share_secret(self, mine: bytes) -> bytes:
        """The secret every process signs recovery proofs with: the one in the store, or ``mine``
        put there if it has none."""
