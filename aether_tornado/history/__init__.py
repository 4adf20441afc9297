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
or kept (``keep``, for every stream a process has connections on), and ``seconds`` longer.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from ..bridge.order import Sender

# The streams of one connection, in the order positions are kept and presented.
STREAMS = ("group", "client", "broadcast")
# An epoch is made of these, so a position "epoch:offset" splits at its last colon.
EPOCH_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
MAX_EPOCH = 32


class Position(NamedTuple):
    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> "Position":
        """``epoch:offset`` as messages carry it; ValueError for anything else."""
        epoch, _, offset = text.partition(":")
        if not (0 < len(epoch) <= MAX_EPOCH and EPOCH_ALPHABET.issuperset(epoch)):
            raise ValueError("an epoch is 1 to 32 letters and digits")
        if not (offset.isascii() and offset.isdigit() and len(offset) <= 18):
            raise ValueError("an offset is a whole number")
        return cls(epoch, int(offset))


class Entry(NamedTuple):
    """One recorded message: its offset, when it was recorded (seconds), and its JSON."""

    offset: int
    time: float
    payload: bytes


class Appended(NamedTuple):
    """Where a message was recorded, and how many other processes it was sent to."""

    position: Position
    receivers: int


class Recovery(NamedTuple):
    """A stream's answer to a client: its latest position, what the client missed, when it was read.

    ``missed`` is None when the client cannot be given all it missed: no position presented,
    another epoch, messages trimmed or older than the window, or more than the byte limit.
    """

    top: Position
    missed: tuple[Entry, ...] | None
    read_at: float


# Called once a message is recorded, with where, or with the exception that kept it out.
OnAppended = Callable[[Appended | Exception], None]


class History(Protocol):
    # Whether this process's own recorded messages come back to it through the bridge, to be
    # delivered from there with everyone else's in the order recorded (Redis); if not, the node
    # delivers them itself once appended (memory).
    echoes: bool

    def append(self, stream: str, payload: bytes, then: OnAppended, sender: Sender | None = None) -> None:
        """Record ``payload`` and send it to the other processes subscribed to the stream's channel.

        ``then`` is called once, in the order of appends, maybe before this returns (memory).
        ``sender`` is the sending connection's, if a connection sent it. Raises BridgeDown when
        the store is known to be unreachable.
        """

    async def recover(self, wanted: Sequence[tuple[str, Position | None]], max_bytes: int) -> list[Recovery]:
        """For each (stream, last position seen): what followed, oldest first; at most ``max_bytes`` each."""

    async def latest(self, stream: str, limit: int) -> list[tuple[Position, bytes]]:
        """The last ``limit`` messages of a stream within the window, oldest first."""

    async def keep(self, streams: Iterable[str]) -> None:
        """Keep these streams' counters while connections use them, published to or not."""
