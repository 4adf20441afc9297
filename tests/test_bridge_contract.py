"""The bridge contract: the memory bridge of a lone process, and the Redis bridge between processes."""

import asyncio
import signal
import time

import pytest

from aether_tornado.bridge import BridgeDown
from aether_tornado.bridge.memory import MemoryBridge
from aether_tornado.bridge.redis import RedisBridge
from aether_tornado.bridge.resp import Address

from .bridges import Process, redis_bridge, stop, until
from .processes import RedisServer


@pytest.fixture
async def redis_processes(redis_server):
    """Two processes, each with its own Redis client, as two real processes would have."""
    processes = [Process(redis_bridge(redis_server, f"node{n:08d}")) for n in range(2)]
    for process in processes:
        await process.start()
        await process.wait_up()
    yield processes
    for process in processes:
        await stop(process)


@pytest.fixture(params=["memory", "redis"])
async def lone_process(request):
    if request.param == "memory":
        process = Process(MemoryBridge())
        await process.start()
        yield process
        return
    process = Process(redis_bridge(request.getfixturevalue("redis_server")))
    await process.start()
    await process.wait_up()
    yield process
    await stop(process)


async def test_a_lone_process_reaches_nobody(lone_process):
    await lone_process.subscribe("group:g")
    assert await lone_process.bridge.publish("group:g", b"x") == 0
    assert await lone_process.bridge.publish("client:c", b"x") == 0
    assert lone_process.received.empty()


async def test_subscribers_get_each_message_once_and_the_publisher_skips_its_own(redis_processes):
    a, b = redis_processes
    await a.subscribe("group:g")
    await b.subscribe("group:g")
    assert await b.bridge.publish("group:g", b'{"n": 1}') == 1  # a, not b itself
    assert await a.next() == ("group:g", b'{"n": 1}')
    await b.bridge.publish("broadcast", b"unsubscribed")
    assert await b.bridge.publish("group:g", b"marker") == 1
    assert await a.next() == ("group:g", b"marker")
    assert b.received.empty()


async def test_order_is_kept_per_publisher_across_channels_and_send_or_publish(redis_processes):
    a, b = redis_processes
    await a.subscribe("client:c")
    await a.subscribe("group:g")
    for n in range(500):
        channel = "client:c" if n % 3 else "group:g"
        if n % 2:
            b.bridge.send(channel, str(n).encode())
        else:
            await b.bridge.publish(channel, str(n).encode())
    assert [int((await a.next())[1]) for _ in range(500)] == list(range(500))


async def test_unsubscribe_stops_delivery(redis_processes):
    a, b = redis_processes
    await a.subscribe("group:g")
    await a.subscribe("group:h")
    await a.unsubscribe("group:g")
    assert await b.bridge.publish("group:g", b"gone") == 0
    await b.bridge.publish("group:h", b"kept")
    assert await a.next() == ("group:h", b"kept")


async def test_after_redis_restarts_the_bridge_resubscribes_from_the_hub(redis_server, redis_processes):
    a, b = redis_processes
    await a.subscribe("group:before")
    redis_server.kill()
    with pytest.raises(BridgeDown):
        for _ in range(50):  # the first publish after the crash may still be in flight
            await b.bridge.publish("group:before", b"lost")
    a.channels.add("group:meanwhile")  # joined while Redis was away
    await a.bridge.subscribe("group:meanwhile")
    redis_server.start()
    await a.wait_up()
    await b.wait_up()
    assert a.bridge.up and b.bridge.up
    await b.bridge.publish("group:before", b"1")
    await b.bridge.publish("group:meanwhile", b"2")
    assert [await a.next(), await a.next()] == [("group:before", b"1"), ("group:meanwhile", b"2")]


async def test_redis_unreachable_at_start_then_found(redis_server):
    redis_server.kill()
    process = Process(redis_bridge(redis_server))
    await process.start()
    assert not process.bridge.up
    with pytest.raises(BridgeDown):
        await process.bridge.publish("group:g", b"x")
    redis_server.start()
    await process.wait_up()
    assert await process.bridge.publish("group:g", b"x") == 0
    await stop(process)


@pytest.mark.parametrize(("bound", "value"), [("MAX_OUTBOX", 5), ("MAX_BACKLOG_BYTES", 4000)])
async def test_a_backlog_past_its_bound_counts_as_redis_down(redis_processes, monkeypatch, bound, value):
    from aether_tornado.bridge import redis as redis_bridge

    a, b = redis_processes
    await a.subscribe("group:g")
    monkeypatch.setattr(redis_bridge, bound, value)
    with pytest.raises(BridgeDown):
        for _ in range(100):  # sent in one go: no reply can come back, nothing is written yet
            b.bridge.send("group:g", b"x" * 1000)
    assert not b.bridge.up and b.bridge.backlog_bytes == 0  # what waited was dropped: at most once
    monkeypatch.setattr(redis_bridge, bound, 10**9)
    await b.wait_up()  # reconnected by itself
    await b.bridge.publish("group:g", b"after")
    while (await a.next())[1] != b"after":  # some of the first copies may have left before the bound
        pass


@pytest.fixture
def quick_pings(monkeypatch):
    from aether_tornado.bridge import redis as redis_module

    monkeypatch.setattr(redis_module, "HEALTH_INTERVAL", 0.1)


async def test_a_redis_that_stops_answering_is_noticed_and_rejoined(quick_pings, redis_server, redis_processes):
    a, b = redis_processes
    await a.subscribe("group:g")
    redis_server.process.send_signal(signal.SIGSTOP)  # its sockets stay open: only pings can tell
    try:
        await until(lambda: not a.bridge.up and not b.bridge.up)
        with pytest.raises(BridgeDown):
            b.bridge.send("group:g", b"lost")
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await a.wait_up()
    await b.wait_up()
    assert await b.bridge.publish("group:g", b"back") == 1
    assert await a.next() == ("group:g", b"back")


async def test_a_direct_publish_waits_at_most_a_second_for_a_frozen_redis(redis_server, redis_processes):
    a, b = redis_processes
    await a.subscribe("client:c")
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(BridgeDown):
            await asyncio.wait_for(b.bridge.publish("client:c", b"to a frozen Redis"), 5)
        waited = time.monotonic() - started
        assert waited < 2, f"waited {waited:.2f} s"  # the contract's 1 s, with room for a busy machine
        assert not b.bridge.up
        await until(lambda: not a.bridge.up)  # the idle one notices by its pings
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await a.wait_up()
    await b.wait_up()
    assert await b.bridge.publish("client:c", b"back") == 1


async def test_a_wrong_password_keeps_the_bridge_down_and_logs_why(caplog):
    server = RedisServer(password="right")
    process = Process(RedisBridge(Address.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0"), "test", "node0"))
    try:
        await process.start()
        await until(lambda: "WRONGPASS" in caplog.text)
        assert not process.bridge.up
        assert "Redis bridge down" in caplog.text
    finally:
        await stop(process)
        server.kill()
