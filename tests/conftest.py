"""Fixtures: in-process servers on free ports, with settings per test."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from aether_tornado.app import Server
from aether_tornado.config import Settings

StartServer = Callable[..., Awaitable[Server]]


def ws_url(server: Server, group_id: str, client_id: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v3/ws/group/{group_id}/client/{client_id}"


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start servers with Settings overrides; all are shut down after the test."""
    servers: list[Server] = []

    async def start(**overrides: Any) -> Server:
        overrides.setdefault("shutdown_timeout", 0.5)
        server = Server(Settings(port=0, **overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
def url(server: Server) -> Callable[[str, str], str]:
    return lambda group_id, client_id: ws_url(server, group_id, client_id)
