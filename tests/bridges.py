"""A bridge with what a node gives it, for tests that drive bridges without a server."""

import asyncio
import time

from aether_tornado.bridge.redis import RedisBridge
from aether_tornado.redis.resp import Address

from .timing import scaled

TIMEOUT = 5.0


class Process:
    """One bridge with what a node gives it: a channel list (the hub's) and callbacks."""

    def __init__(self, bridge) -> None:
        self.bridge = bridge
        self.channels: set[str] = set()
        self.received: asyncio.Queue = asyncio.Queue()
        self.ups: asyncio.Queue = asyncio.Queue()

    async def start(self) -> None:
        await self.bridge.start(self._on_message, lambda: self.channels, self._on_up)

    def _on_message(self, channel: str, payload: bytes, published_at: float, position: object, own: bool) -> None:
        assert position is None  # bridges alone record nothing
        assert published_at <= time.time()
        self.received.put_nowait((channel, payload))

    async def _on_up(self) -> None:
        self.ups.put_nowait(True)

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        await self.bridge.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        await self.bridge.unsubscribe(channel)

    async def next(self) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.received.get(), scaled(TIMEOUT))

    async def wait_up(self) -> None:
        await asyncio.wait_for(self.ups.get(), scaled(TIMEOUT * 2))


def redis_bridge(
    redis_server, node_id: str = "node00000000", url: str | None = None, prefix: str = "test", cluster: bool = False
) -> RedisBridge:
    """A bridge to ``redis_server`` (or ``url``); with ``cluster``, to the cluster that node is part of."""
    return RedisBridge(Address.from_url(url or redis_server.url), prefix, node_id, cluster=cluster)


async def stop(process: Process) -> None:
    await asyncio.wait_for(process.bridge.close(), scaled(TIMEOUT))
