"""What a client that recovers is sent: which of its positions count, and how the streams read
from history merge into one replay. Pure: no I/O, no clock; the node reads and sends.

A recovering client presents a position per stream (channels.Stream) and a proof of where it
first received each. A position its proof vouches for is read from; the answers of the three
streams are then merged, oldest first, into what fits beside the snapshot, and the snapshot's
report says, per stream, where the client is and whether what it missed follows.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..history import Recovery
from ..v3.channels import REPLAY_ORDER, STREAMS, Position, Stream
from .hub import Positioned

# The report of a client whose history could not be read at all: no stream is recovered, and
# no position is given since no message will carry one.
_NOWHERE = {"position": None, "recovered": False}
NOT_RECOVERED: dict[str, Any] = {"recovered": False, "streams": dict.fromkeys(STREAMS, _NOWHERE), "proof": None}


def vouched(presented: Sequence[Position | None], floors: Sequence[Position | None]) -> list[Position | None]:
    """The presented positions that the proof's floors vouch for: the client received the stream
    from its floor on, so it may have got that far. None for the others."""
    return [
        position if position is not None and position.at_or_after(floor) else None
        for position, floor in zip(presented, floors, strict=True)
    ]


class Replay(NamedTuple):
    """What follows a recovering client's snapshot, and what the snapshot says of it."""

    tops: list[Position]  # each stream's position, as the snapshot gives it
    recovered: list[bool]  # per stream: whether what the client missed there follows
    missed: list[Positioned]  # the streams' missed messages, merged oldest first
    replayed: list[Position | None]  # where each replayed stream's missed messages end

    @property
    def complete(self) -> bool:
        return all(self.recovered)

    def floors(self, presented: Sequence[Position | None]) -> list[Position | None]:
        """The floors of the client's next proof: a stream replayed keeps the one it showed; any
        other starts where it is now."""
        return [floor if done else top for floor, done, top in zip(presented, self.recovered, self.tops, strict=True)]

    def report(self, proof: str) -> dict[str, Any]:
        """The snapshot's ``recovery``: whether every stream was recovered, where each is, the proof."""
        return {
            "recovered": self.complete,
            "streams": {
                name: {"position": str(top), "recovered": done}
                for name, top, done in zip(STREAMS, self.tops, self.recovered, strict=True)
            },
            "proof": proof,
        }


def plan(
    recoveries: Sequence[Recovery],
    since: Sequence[Position | None],
    room: int,
    first_held: Callable[[Stream], Positioned | None],
) -> Replay:
    """Merge what each stream's history answered into one replay of at most ``room`` bytes.

    ``since`` is where the client was in each stream (None: not read from); ``first_held``
    gives the first recorded message of a stream that came live while the history was read.

    The streams may be read at different moments (on different shards of a cluster). What was
    recorded after the first read comes live, in the order it arrives, not replayed: replaying
    a later message of one stream before an earlier one of another that comes live would break
    a sender's order. A stream whose missed messages do not fit is dropped, last in
    REPLAY_ORDER first. A stream not replayed skips nothing: what came live since the
    connection joined is all it has of it, so its position is the one before the first of those.
    """
    cut = min(recovery.read_at for recovery in recoveries)
    kept: list[list[tuple[float, Positioned]] | None] = [
        None
        if recovery.missed is None or position is None
        else [
            (entry.time, Positioned(stream, recovery.top.epoch, entry.offset, entry.payload))
            for entry in recovery.missed
            if entry.time <= cut
        ]
        for stream, recovery, position in zip(Stream, recoveries, since, strict=True)
    ]
    for dropped in reversed(REPLAY_ORDER):
        if sum(len(message.frame) for missed in kept if missed for _, message in missed) <= room:
            break
        if kept[dropped]:
            kept[dropped] = None
    tops: list[Position] = []
    replayed: list[Position | None] = []
    for stream, recovery, missed in zip(Stream, recoveries, kept, strict=True):
        if missed is None:
            first = first_held(stream)
            if first is not None and first.epoch == recovery.top.epoch:
                tops.append(Position(first.epoch, min(recovery.top.offset, first.offset - 1)))
            else:
                tops.append(recovery.top)
            replayed.append(None)
        else:
            position = since[stream]
            assert position is not None  # kept only where the client presented one
            tops.append(Position(recovery.top.epoch, missed[-1][1].offset if missed else position.offset))
            replayed.append(tops[-1])
    merged = sorted(
        ((time, index, message) for index, stream in enumerate(kept) for time, message in stream or ()),
        key=lambda item: item[:2],
    )
    return Replay(tops, [missed is not None for missed in kept], [message for *_, message in merged], replayed)
