"""What a channel is, the stream its history keeps, and a position in that stream: one place.

A message travels between processes on a channel: ``group:{group_id}``, ``client:{client_id}``
(the direct messages to a client, in whatever group) or ``broadcast``; the bridge also carries
channels of its own that no client receives and no history keeps. Each client channel is a
stream a client can recover (``Stream``), and a position in it is an epoch and an offset
(history/ says how they are kept), written ``epoch:offset`` on the wire.
"""

import enum
from typing import NamedTuple, NewType

from .schema import WSMessageV3

# A bridge channel's name. Typed so that a group_id or client_id is never taken for one.
Channel = NewType("Channel", str)

BROADCAST_CHANNEL = Channel("broadcast")


def group_channel(group_id: str) -> Channel:
    return Channel("group:" + group_id)


def client_channel(client_id: str) -> Channel:
    return Channel("client:" + client_id)


class Stream(enum.IntEnum):
    """The streams of one connection, in the order its positions are kept and presented."""

    GROUP = 0
    CLIENT = 1
    BROADCAST = 2

    @property
    def label(self) -> str:
        """Its name in ``?recover=`` and in the snapshot's recovery report."""
        return self.name.lower()


# The streams' labels, in Stream order.
STREAMS = tuple(stream.label for stream in Stream)
# Which streams a recovery replays first when they do not all fit its budget: the client's own
# direct messages, then its group's, then the broadcasts.
REPLAY_ORDER = (Stream.CLIENT, Stream.GROUP, Stream.BROADCAST)


def streams_of(group_id: str, client_id: str) -> tuple[Channel, Channel, Channel]:
    """The channels of a connection's streams, in Stream order."""
    return group_channel(group_id), client_channel(client_id), BROADCAST_CHANNEL


def split(channel: Channel) -> tuple[Stream | None, str]:
    """A channel's stream and the group or client it names ("" for broadcast); no stream for
    the bridge's own channels."""
    kind, _, name = channel.partition(":")
    if kind == "group":
        return Stream.GROUP, name
    if kind == "client":
        return Stream.CLIENT, name
    return (Stream.BROADCAST if channel == BROADCAST_CHANNEL else None), name


def channel_of(message: WSMessageV3, group_id: str | None) -> Channel | None:
    """The channel that carries a message sent in ``group_id``; None for one that stays in its process."""
    if message.msg_type in ("heartbeat", "presence"):
        return None
    if message.target == "group" and group_id is not None:
        return group_channel(group_id)
    if message.target == "direct" and message.to_id is not None:
        return client_channel(message.to_id)
    if message.target == "broadcast":
        return BROADCAST_CHANNEL
    return None


# An epoch is made of these, so a position "epoch:offset" splits at its last colon.
EPOCH_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
MAX_EPOCH = 32


class Position(NamedTuple):
    """Where a message is in its stream."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> "Position":
        """``epoch:offset`` as a client presents it; ValueError for anything else."""
        epoch, _, offset = text.partition(":")
        if not (0 < len(epoch) <= MAX_EPOCH and EPOCH_ALPHABET.issuperset(epoch)):
            raise ValueError("an epoch is 1 to 32 letters and digits")
        if not (offset.isascii() and offset.isdigit() and len(offset) <= 18):
            raise ValueError("an offset is a whole number")
        return cls(epoch, int(offset))

    def at_or_after(self, floor: "Position | None") -> bool:
        """Whether a client that has received the stream since ``floor`` may have got here."""
        return floor is not None and self.epoch == floor.epoch and self.offset >= floor.offset
