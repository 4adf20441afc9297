"""The bridge of a process that serves alone: there is nobody else to reach."""

import asyncio
from collections.abc import Callable

from ..redis.link import Link
from ..v3.channels import Channel
from . import OnMessage, OnUp, Wanted
from .order import Sender


class MemoryBridge:
    sharded = False
    backlog_bytes = 0  # nothing leaves the process

    def __init__(self) -> None:
        self.link = Link()  # up from the start: there is nobody to lose
        self.link.subscribed()
        self.link.restored()

    async def start(self, on_message: OnMessage, wanted: Wanted, on_up: OnUp) -> None:
        pass

    def send(self, channel: Channel, payload: bytes, sender: Sender | None = None) -> None:
        pass

    def publish(self, channel: Channel, payload: bytes, sender: Sender | None = None) -> asyncio.Future[int]:
        nobody = asyncio.get_running_loop().create_future()
        nobody.set_result(0)
        return nobody

    async def subscribe(self, channel: Channel) -> None:
        pass

    async def synced(self) -> None:
        pass

    def shard_of(self, channel: Channel) -> int:
        return 0

    def holds(self, channel: Channel) -> bool:
        return False

    def after_pushes(self, channel: Channel, then: Callable[[], None]) -> None:
        then()

    async def unsubscribe(self, channel: Channel) -> None:
        pass

    async def close(self) -> None:
        pass
