"""Local indices of open connections, by group and by client. No I/O, no policy.

``add`` and ``remove`` report whether a group or client index became non-empty or
empty, which is when the node subscribes to or unsubscribes from its bridge channel.
"""

from collections.abc import Collection, Iterable, Sequence
from typing import NamedTuple, Protocol

from ..bridge.order import Sender
from ..v3.channels import Position, Stream
from ..v3.schema import VisionId
from ..ws.frames import text_frame


class Positioned:
    """A recorded message as clients that recover get it: with its position, framed once for all.

    ``stream`` is the stream it was recorded in; the frame is the message with a last key,
    ``"position": "epoch:offset"``.
    """

    __slots__ = ("_frame", "epoch", "offset", "payload", "stream")

    def __init__(self, stream: Stream, epoch: str, offset: int, payload: bytes) -> None:
        self.stream, self.epoch, self.offset, self.payload = stream, epoch, offset, payload
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = text_frame(b'%s,"position":"%s:%d"}' % (self.payload[:-1], self.epoch.encode(), self.offset))
        return self._frame


class Connection(Protocol):
    """What the hub and the node need of one open WebSocket."""

    group_id: VisionId
    client_id: VisionId
    # An operator's watcher: it gets its group's traffic and presence, holds no lease, and is
    # indexed by its group only, so no roster, direct message or disconnect order finds it.
    watching: bool
    lease_key: str
    sender: Sender  # marks what it sends, for its order across a cluster's shards
    last_seen: float
    may_broadcast: bool
    # For a client that recovers: the last position it was sent per stream (channels.Stream),
    # those it presented on connecting, and the proof it presented with them. None for the others.
    positions: list[Position | None] | None
    since: Sequence[Position | None] | None
    proof: str | None
    # For the operator's view (inventory.py): where it came from, since when, what it sent.
    address: str
    user_agent: str
    connected_at: float  # seconds since the epoch
    received: int  # messages
    received_bytes: int

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be written to it."""

    @property
    def held_bytes(self) -> int:
        """Bytes held back until the snapshot goes out."""

    def take_broadcast(self, now: float) -> bool:
        """Whether one more broadcast fits this client's broadcast budget (and spend it)."""

    def take_record(self, now: float, amount: int) -> bool:
        """Whether ``amount`` more bytes of its messages may be recorded for recovery (and spend them)."""

    def send(self, frame: bytes) -> None:
        """Queue one ready-made WebSocket frame; never blocks, never raises.

        Frames sent before ``release`` are held back, so the snapshot comes first. A
        connection whose unsent output would pass its cap closes itself with 1013.
        """

    def reply(self, frame: bytes) -> None:
        """Send an answer to this client's own message, after its earlier messages reached it."""

    def send_at(self, message: Positioned) -> None:
        """Like ``send``, for a client that recovers: skipped if it had that position already."""

    def release(self, first: bytes) -> None:
        """Write ``first`` (the presence snapshot), then every frame held back so far."""

    def first_held(self, stream: Stream) -> Positioned | None:
        """The first recorded message of ``stream`` held back until ``release_recovered``, if any."""

    def release_recovered(
        self, first: bytes, missed: Sequence[Positioned], replayed: Sequence[Position | None]
    ) -> None:
        """Like ``release``, with what the client missed after ``first``; ``replayed`` is where
        each stream's missed messages end (None for a stream not replayed)."""

    def close(self, code: int, reason: str) -> None:
        """Start a clean close with this code and reason."""

    def keepalive(self) -> None:
        """Called every ping interval: drop a peer that left the last ping unanswered, ping it."""


class Added(NamedTuple):
    first_in_group: bool
    first_of_client: bool


class Removed(NamedTuple):
    last_in_group: bool
    last_of_client: bool


class Hub:
    def __init__(self) -> None:
        self._groups: dict[str, set[Connection]] = {}
        self._clients: dict[str, set[Connection]] = {}
        self._all: set[Connection] = set()

    def __len__(self) -> int:
        return len(self._all)

    def add(self, conn: Connection) -> Added:
        self._all.add(conn)
        return Added(
            _add(self._groups, conn.group_id, conn),
            not conn.watching and _add(self._clients, conn.client_id, conn),
        )

    def remove(self, conn: Connection) -> Removed:
        if conn not in self._all:
            return Removed(False, False)
        self._all.discard(conn)
        return Removed(
            _remove(self._groups, conn.group_id, conn),
            not conn.watching and _remove(self._clients, conn.client_id, conn),
        )

    def group(self, group_id: str) -> Collection[Connection]:
        return self._groups.get(group_id, ())

    def client(self, client_id: str) -> Collection[Connection]:
        return self._clients.get(client_id, ())

    def all(self) -> Collection[Connection]:
        return self._all

    def groups(self) -> Collection[str]:
        return self._groups.keys()

    def clients(self) -> Collection[str]:
        return self._clients.keys()

    @staticmethod
    def deliver(conns: Iterable[Connection], frame: bytes, positioned: Positioned | None = None) -> int:
        """Hand the same frame to every connection (a recorded message's ``positioned`` to those
        that recover); return how many got it."""
        count = 0
        if positioned is None:
            for conn in tuple(conns):
                conn.send(frame)
                count += 1
            return count
        for conn in tuple(conns):
            if conn.positions is None:
                conn.send(frame)
            else:
                conn.send_at(positioned)
            count += 1
        return count


def _add(index: dict[str, set[Connection]], key: str, conn: Connection) -> bool:
    members = index.get(key)
    if members is None:
        index[key] = {conn}
        return True
    members.add(conn)
    return False


def _remove(index: dict[str, set[Connection]], key: str, conn: Connection) -> bool:
    members = index[key]
    members.discard(conn)
    if members:
        return False
    del index[key]
    return True
