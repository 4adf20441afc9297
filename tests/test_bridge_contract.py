"""The bridge contract: the memory bridge of a lone process, and the Redis bridge between processes."""

import asyncio
import signal
import time

import pytest

from aether_tornado.bridge import BridgeDown
from aether_tornado.bridge.memory import MemoryBridge
from aether_tornado.bridge.order import Sender
from aether_tornado.bridge.redis import RedisBridge
from aether_tornado.redis.resp import Address

from .bridges import Process, redis_bridge, stop
from .processes import RedisServer
from .timing import scaled, until


def bridges_on(request, kind: str, count: int) -> list[Process]:
    """``count`` processes with bridges to a private Redis, or to the shared cluster under a prefix of their own."""
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        return [Process(redis_bridge(server, f"node{n:08d}")) for n in range(count)]
    cluster, prefix = request.getfixturevalue("redis_cluster"), request.getfixturevalue("cluster_prefix")
    return [
        Process(redis_bridge(None, f"node{n:08d}", url=cluster.url, prefix=prefix, cluster=True)) for n in range(count)
    ]


async def started(processes: list[Process]) -> list[Process]:
    for process in processes:
        await process.start()
        await process.wait_up()
    return processes


@pytest.fixture
async def redis_processes(request):
    """Two processes on one private Redis, each with its own connections, as two real processes would have."""
    processes = await started(bridges_on(request, "redis", 2))
    yield processes
    for process in processes:
        await stop(process)


@pytest.fixture(params=["redis", "redis cluster"])
async def bridged_processes(request):
    """Two processes on one Redis, or on a Redis Cluster."""
    processes = await started(bridges_on(request, request.param, 2))
    yield processes
    for process in processes:
        await stop(process)


@pytest.fixture(params=["memory", "redis", "redis cluster"])
async def lone_process(request):
    if request.param == "memory":
        process = Process(MemoryBridge())
        await process.start()
        yield process
        return
    (process,) = await started(bridges_on(request, request.param, 1))
    yield process
    await stop(process)


async def test_a_lone_process_reaches_nobody(lone_process):
    await lone_process.subscribe("group:g")
    assert await lone_process.bridge.publish("group:g", b"x") == 0
    assert await lone_process.bridge.publish("client:c", b"x") == 0
    assert lone_process.received.empty()


async def test_subscribers_get_each_message_once_and_the_publisher_skips_its_own(bridged_processes):
    a, b = bridged_processes
    await a.subscribe("group:g")
    await b.subscribe("group:g")
    assert await b.bridge.publish("group:g", b'{"n": 1}') == 1  # a, not b itself
    assert await a.next() == ("group:g", b'{"n": 1}')
    await b.bridge.publish("broadcast", b"unsubscribed")
    assert await b.bridge.publish("group:g", b"marker") == 1
    assert await a.next() == ("group:g", b"marker")
    assert b.received.empty()


async def test_order_is_kept_per_publisher_across_channels_and_send_or_publish(bridged_processes):
    """On a cluster, client:c and group:g live on one shard: the order of one shard's channels."""
    a, b = bridged_processes
    await a.subscribe("client:c")
    await a.subscribe("group:g")
    for n in range(500):
        channel = "client:c" if n % 3 else "group:g"
        if n % 2:
            b.bridge.send(channel, str(n).encode())
        else:
            await b.bridge.publish(channel, str(n).encode())
    assert [int((await a.next())[1]) for _ in range(500)] == list(range(500))


async def test_order_across_shards_is_kept_for_a_sender_that_waits_at_each_switch(bridged_processes):
    """On a cluster group:g, client:c2 and group:h live on three shards."""
    a, b = bridged_processes
    channels = ["group:g", "client:c2", "group:h"]
    for channel in channels:
        await a.subscribe(channel)
    sender = Sender(1)
    for n in range(300):
        await b.bridge.publish(channels[n % 3], str(n).encode(), sender)  # taken before the next is sent
    assert [int((await a.next())[1]) for _ in range(300)] == list(range(300))


async def test_unsubscribe_stops_delivery(bridged_processes):
    a, b = bridged_processes
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
    assert a.bridge.link.connected and b.bridge.link.connected
    await b.bridge.publish("group:before", b"1")
    await b.bridge.publish("group:meanwhile", b"2")
    assert [await a.next(), await a.next()] == [("group:before", b"1"), ("group:meanwhile", b"2")]


async def test_redis_unreachable_at_start_then_found(redis_server):
    redis_server.kill()
    process = Process(redis_bridge(redis_server))
    await process.start()
    assert not process.bridge.link.connected
    with pytest.raises(BridgeDown):
        await process.bridge.publish("group:g", b"x")
    redis_server.start()
    await process.wait_up()
    assert await process.bridge.publish("group:g", b"x") == 0
    await stop(process)


@pytest.mark.parametrize(("bound", "value"), [("MAX_OUTBOX", 5), ("MAX_BACKLOG_BYTES", 4000)])
async def test_a_backlog_past_its_bound_counts_as_redis_down(bridged_processes, monkeypatch, bound, value):
    from aether_tornado.bridge import redis as redis_bridge

    a, b = bridged_processes
    await a.subscribe("group:g")
    monkeypatch.setattr(redis_bridge, bound, value)
    with pytest.raises(BridgeDown):
        for _ in range(100):  # sent in one go: no reply can come back, nothing is written yet
            b.bridge.send("group:g", b"x" * 1000)
    assert not b.bridge.link.connected and b.bridge.backlog_bytes == 0  # what waited was dropped: at most once
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
        await until(lambda: not a.bridge.link.connected and not b.bridge.link.connected)
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
            await asyncio.wait_for(b.bridge.publish("client:c", b"to a frozen Redis"), scaled(5))
        waited = time.monotonic() - started
        assert waited < scaled(2), f"waited {waited:.2f} s"  # the contract's 1 s, with room for a busy machine
        assert not b.bridge.link.connected
        await until(lambda: not a.bridge.link.connected)  # the idle one notices by its pings
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
        assert not process.bridge.link.connected
        assert "Redis bridge down" in caplog.text
    finally:
        await stop(process)
        server.kill()


async def test_a_channel_left_and_taken_again_at_once_keeps_the_bridge_up(bridged_processes):
    """The last member of a group leaves and a new one comes in the same instant: the channel is
    unsubscribed and subscribed again before Redis confirms the unsubscription. That
    confirmation is the bridge's own doing, not a cluster moving the channel away."""
    a, b = bridged_processes
    await a.subscribe("group:again")
    await a.bridge.synced()
    for _ in range(5):
        await a.unsubscribe("group:again")
        await a.subscribe("group:again")  # sent before the unsubscription's confirmation comes back
    await a.bridge.synced()
    assert a.bridge.link.connected and a.ups.empty()  # never down, so never up again
    assert await b.bridge.publish("group:again", b"still here") == 1
    assert await a.next() == ("group:again", b"still here")
