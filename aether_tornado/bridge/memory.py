"""The bridge of a process that serves alone: there is nobody else to reach."""

from . import OnMessage


class MemoryBridge:
    async def start(self, on_message: OnMessage) -> None:
        pass

    async def publish(self, channel: str, data: bytes) -> int:
        return 0

    async def subscribe(self, channel: str) -> None:
        pass

    async def unsubscribe(self, channel: str) -> None:
        pass

    async def close(self) -> None:
        pass
