"""Fixtures: in-process servers on free ports, with settings per test."""

import asyncio
import concurrent.futures
import itertools
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

from aether_tornado.app import Server
from aether_tornado.config import Settings

from .processes import LoggedProcess, RedisClusterServers, RedisServer, ServerProcess
from .timing import scaled

StartServer = Callable[..., Awaitable[Server]]

CHROMIUM = shutil.which("chromium")
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
# Browser tests are skipped on a developer's machine without Chromium; CI (CI=true) installs it and never skips.
CHROMIUM_MISSING = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true", reason="chromium is not installed (make test installs it)"
)


# Seconds a test may take before it fails (scaled): a hang is a failure, not a stuck run.
TEST_TIMEOUT = 120
# A line of a server's output that says something failed.
FAILURE = re.compile(r" ERROR |\"level\": ?\"error\"|^Traceback")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(scaled(TEST_TIMEOUT)))


@pytest.fixture(autouse=True)
def servers_log_no_failure(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test during which a server logged an error or a traceback it did not say it expects.

    A test that provokes one says so with ``@pytest.mark.expect_errors("regex", ...)``; each
    failure must match one of them. In-process servers log through ``logging``; server
    processes are stopped first, so what they log on the way out counts too.
    """
    LoggedProcess.started.clear()
    yield
    for process in LoggedProcess.started:
        if isinstance(process, ServerProcess):
            process.stop()
    failures = [
        f"{record.levelname} {record.name}: {record.getMessage()}"
        for phase in ("setup", "call", "teardown")
        for record in caplog.get_records(phase)  # type: ignore[arg-type]
        if record.levelno >= logging.ERROR
    ]
    for process in LoggedProcess.started:
        if isinstance(process, ServerProcess):
            failures += _failures(process.log)
    expected = [re.compile(pattern) for marker in request.node.iter_markers("expect_errors") for pattern in marker.args]
    unexpected = [failure for failure in failures if not any(pattern.search(failure) for pattern in expected)]
    if unexpected:
        pytest.fail("servers logged failures the test did not expect:\n" + "\n".join(unexpected[:10]), pytrace=False)


def _failures(log: list[str]) -> list[str]:
    """What a server's output says failed: each error line, or bare traceback, with its traceback."""
    failures: list[str] = []
    index = 0
    while index < len(log):
        line, index = log[index], index + 1
        if not FAILURE.search(line):
            continue
        told = [line]
        if not line.startswith("Traceback") and index < len(log) and log[index].startswith("Traceback"):
            told.append(log[index])
            index += 1
        if told[-1].startswith("Traceback"):  # its indented lines, then the exception's own
            while index < len(log) and log[index].startswith(" "):
                told.append(log[index])
                index += 1
            told += log[index : index + 1]
            index += 1
        failures.append("".join(told).rstrip())
    return failures


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
    page.set_default_timeout(scaled(10) * 1000)
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


def stop_all(processes: list[ServerProcess]) -> None:
    """Stop these servers together (SIGTERM), each in a thread."""
    with concurrent.futures.ThreadPoolExecutor() as threads:
        list(threads.map(ServerProcess.stop, processes))


class StartProcess:
    """Starts ``python -m aether_tornado`` processes with the same first flags; stops them all after.

    ``await start(...)`` in a test waits for the process in a thread, so the test's event loop
    goes on; ``start.now(...)`` in a plain fixture, which runs before the loop does.
    """

    def __init__(self, *flags: str) -> None:
        self.flags = flags
        self.processes: list[ServerProcess] = []

    async def __call__(self, *args: str, ready: str = "Redis bridge up") -> ServerProcess:
        return await asyncio.to_thread(self.now, *args, ready=ready)

    def now(self, *args: str, ready: str = "Redis bridge up") -> ServerProcess:
        process = ServerProcess(*self.flags, *args, ready=ready)
        self.processes.append(process)
        return process


@pytest.fixture
def start_process(redis_server: RedisServer) -> Iterator[StartProcess]:
    """Start processes on the test's Redis; all are stopped after."""
    start = StartProcess("--redis-url", redis_server.url)
    yield start
    stop_all(start.processes)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster (three masters, three replicas) shared by the tests that do not break it."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def start_cluster_process(redis_cluster: RedisClusterServers) -> Iterator[StartProcess]:
    """Like ``start_process``, on the shared cluster, under a prefix of the test's own."""
    prefix = f"t{next(_prefixes)}"  # not the fixture: a test may use both
    start = StartProcess("--redis-url", redis_cluster.url, "--redis-cluster", "true", "--redis-prefix", prefix)
    yield start
    stop_all(start.processes)


_prefixes = itertools.count()


@pytest.fixture(params=["on Redis", "on a Redis Cluster"])
def start_bridged_process(request: pytest.FixtureRequest) -> StartProcess:
    """``start_process`` on the test's Redis, or ``start_cluster_process`` on the shared cluster."""
    return request.getfixturevalue("start_process" if request.param == "on Redis" else "start_cluster_process")


@pytest.fixture
def cluster_prefix() -> str:
    """A key and channel prefix of the test's own on the shared cluster, which keeps its data."""
    return f"t{next(_prefixes)}"


@pytest.fixture(params=["one process", "two processes on Redis", "two processes on a Redis Cluster"])
def spread_url(request: pytest.FixtureRequest) -> Iterator[Callable[[str, str], str]]:
    """A URL maker that puts successive clients on alternating processes when there are two.

    A plain fixture: it starts the processes before the test's event loop runs, so waiting for
    them blocks nothing."""
    if request.param == "one process":
        server = request.getfixturevalue("server")
        yield lambda group_id, client_id: ws_url(server, group_id, client_id)
        return
    if request.param.endswith("on Redis"):
        bridged: tuple[str, ...] = ("--redis-url", request.getfixturevalue("redis_server").url)
    else:
        cluster_url = request.getfixturevalue("redis_cluster").url
        bridged = ("--redis-url", cluster_url, "--redis-cluster", "true", "--redis-prefix", f"t{next(_prefixes)}")
    processes = [ServerProcess(*bridged, ready="Redis bridge up") for _ in range(2)]
    alternate = itertools.cycle(processes)
    yield lambda group_id, client_id: next(alternate).url(group_id, client_id)
    stop_all(processes)
