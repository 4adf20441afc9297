"""The cross-process transport between server processes.

Guarantee: at most once. A message published while the transport is down is lost for
the other processes (local delivery never depends on it). Messages from one process on
one channel arrive at each subscriber in the order they were published.
"""

from collections.abc import Callable
from typing import Protocol

# Called with (channel, data) for every message another process published.
OnMessage = Callable[[str, bytes], None]


def group_channel(group_id: str) -> str:
    return "group:" + group_id


def client_channel(client_id: str) -> str:
    return "client:" + client_id


BROADCAST_CHANNEL = "broadcast"


class Bridge(Protocol):
    async def start(self, on_message: OnMessage) -> None:
        """Begin delivering other processes' messages to ``on_message``."""

    async def publish(self, channel: str, data: bytes) -> int:
        """Send ``data`` to the other processes subscribed to ``channel``.

        Returns how many processes other than this one received it (0 when there
        are none, or when the transport is down).
        """

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel`` from now on; called when the hub gets its first member."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; called when the hub loses its last member."""

    async def close(self) -> None:
        """Stop; no message is delivered after this returns."""
