"""Fixtures: in-process servers on free ports, with settings per test."""

import asyncio
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

from aether_tornado.app import Server
from aether_tornado.config import Settings

from .processes import RedisClusterServers, RedisServer, ServerProcess

StartServer = Callable[..., Awaitable[Server]]

CHROMIUM = shutil.which("chromium")
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
# Browser tests are skipped on a developer's machine without Chromium; CI (CI=true) installs it and never skips.
CHROMIUM_MISSING = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true", reason="chromium is not installed (make test installs it)"
)


def ws_url(server: Server, group_id: str, client_id: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v3/ws/group/{group_id}/client/{client_id}"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """In-process servers run on uvloop, as ``python -m aether_tornado`` does."""
    return {"uvloop": uvloop.new_event_loop}


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


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's headless Chromium, driven by Playwright."""
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS)
        yield browser
        await browser.close()


async def evaluate(page: Any, script: str, *arg: Any, timeout: float = 10) -> Any:
    """``page.evaluate`` within ``timeout`` seconds: Playwright gives a page's script all the
    time it takes, and one that awaits an event that never comes would hang the suite."""
    return await asyncio.wait_for(page.evaluate(script, *arg), timeout)


async def watched_page(browser: Any, **options: Any) -> Any:
    """A new page whose Content-Security-Policy violations are collected in ``csp_violations``:
    a page's own inline code must run under its strict policy."""
    page = await browser.new_page(**options)
    page.set_default_timeout(10_000)
    page.csp_violations = []
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and page.csp_violations.append(message.text),
    )
    return page


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port; tests may kill and restart it."""
    redis = RedisServer()
    yield redis
    redis.kill()


@pytest.fixture
def start_process(redis_server: RedisServer) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m aether_tornado`` processes on the test's Redis; all are stopped after."""
    processes: list[ServerProcess] = []

    def start(*args: str, ready: str = "Redis bridge up") -> ServerProcess:
        process = ServerProcess("--redis-url", redis_server.url, *args, ready=ready)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster (three masters, three replicas) shared by the tests that do not break it."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def start_cluster_process(redis_cluster: RedisClusterServers) -> Iterator[Callable[..., ServerProcess]]:
    """Like ``start_process``, on the shared cluster, under a prefix of the test's own."""
    processes: list[ServerProcess] = []
    prefix = f"t{next(_prefixes)}"  # not the fixture: a test may use both

    def start(*args: str) -> ServerProcess:
        cluster = ("--redis-url", redis_cluster.url, "--redis-cluster", "true", "--redis-prefix", prefix)
        process = ServerProcess(*cluster, *args, ready="Redis bridge up")
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


_prefixes = itertools.count()


@pytest.fixture(params=["on Redis", "on a Redis Cluster"])
def start_bridged_process(request: pytest.FixtureRequest) -> Callable[..., ServerProcess]:
    """``start_process`` on the test's Redis, or ``start_cluster_process`` on the shared cluster."""
    return request.getfixturevalue("start_process" if request.param == "on Redis" else "start_cluster_process")


@pytest.fixture
def cluster_prefix() -> str:
    """A key and channel prefix of the test's own on the shared cluster, which keeps its data."""
    return f"t{next(_prefixes)}"


@pytest.fixture(params=["one process", "two processes on Redis", "two processes on a Redis Cluster"])
def spread_url(request: pytest.FixtureRequest) -> Callable[[str, str], str]:
    """A URL maker that puts successive clients on alternating processes when there are two."""
    if request.param == "one process":
        server = request.getfixturevalue("server")
        return lambda group_id, client_id: ws_url(server, group_id, client_id)
    start = request.getfixturevalue("start_process" if request.param.endswith("on Redis") else "start_cluster_process")
    processes = itertools.cycle([start(), start()])
    return lambda group_id, client_id: next(processes).url(group_id, client_id)
