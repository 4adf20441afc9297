"""The presence contract, run against every backend."""

import asyncio

import pytest
from redis.asyncio import Redis

from aether_tornado.presence import Lease
from aether_tornado.presence.memory import MemoryPresence
from aether_tornado.presence.redis import RedisPresence

LEASE = 0.3


@pytest.fixture(params=["memory", "redis"])
async def presence(request):
    if request.param == "memory":
        yield MemoryPresence(LEASE)
        return
    redis = Redis.from_url(request.getfixturevalue("redis_server").url, socket_timeout=5)
    yield RedisPresence(redis, "test", LEASE)
    await redis.aclose()


async def test_join_is_true_once_per_span_and_leave_on_the_last_lease(presence):
    tab1, tab2 = Lease("g", "c", "n:1"), Lease("g", "c", "n:2")
    assert await presence.join(tab1) is True
    assert await presence.join(tab2) is False
    assert await presence.leave(tab1) is False
    assert await presence.leave(tab1) is False  # a second leave of the same lease is a no-op
    assert await presence.leave(tab2) is True
    assert await presence.members("g") == []
    assert await presence.join(tab1) is True  # a new span


async def test_groups_are_separate_and_members_sorted(presence):
    for client_id in ["b", "a", "C"]:
        await presence.join(Lease("g1", client_id, f"n:{client_id}"))
    await presence.join(Lease("g2", "z", "n:z"))
    assert await presence.members("g1") == ["C", "a", "b"]
    assert await presence.members("g2") == ["z"]
    assert await presence.members("nobody") == []


async def test_unrefreshed_leases_expire_once(presence):
    kept, dropped = Lease("g", "kept", "n:1"), Lease("g", "dropped", "n:2")
    await presence.join(kept)
    await presence.join(dropped)
    for _ in range(4):
        await asyncio.sleep(LEASE / 3)
        assert await presence.refresh([kept]) == []
    assert await presence.expire() == [("g", "dropped")]
    assert await presence.expire() == []
    assert await presence.members("g") == ["kept"]
    assert await presence.leave(dropped) is False  # its leave was already reported by expire


async def test_a_client_stays_while_one_of_its_leases_lives(presence):
    old, fresh = Lease("g", "c", "n:old"), Lease("g", "c", "n:fresh")
    await presence.join(old)
    await asyncio.sleep(LEASE / 2)
    await presence.join(fresh)
    await asyncio.sleep(LEASE * 0.7)
    assert await presence.expire() == []  # old expired, but fresh holds the client
    assert await presence.members("g") == ["c"]


async def test_refresh_of_an_expired_lease_makes_the_client_present_again(presence):
    lease = Lease("g", "c", "n:1")
    await presence.join(lease)
    await asyncio.sleep(LEASE * 1.2)
    assert await presence.expire() == [("g", "c")]
    assert await presence.refresh([lease]) == [lease]
    assert await presence.members("g") == ["c"]


async def test_resync_without_an_outage_changes_nothing(presence):
    await presence.join(Lease("g", "c", "n:1"))
    await presence.resync()
    assert await presence.members("g") == ["c"]
    assert not presence.down


async def test_redis_presence_is_shared_and_expiry_reported_by_one_process_only(redis_server):
    redis = Redis.from_url(redis_server.url, socket_timeout=5)
    first, second, third = (RedisPresence(redis, "test", LEASE) for _ in range(3))
    assert await first.join(Lease("g", "c", "a:1")) is True
    assert await second.join(Lease("g", "c", "b:1")) is False  # another process, same client
    assert await third.members("g") == ["c"]
    await asyncio.sleep(LEASE * 1.2)  # both processes "died": nobody refreshed
    reports = await asyncio.gather(first.expire(), second.expire(), third.expire())
    assert sorted(map(len, reports)) == [0, 0, 1] and [("g", "c")] in reports
    await redis.aclose()


async def test_redis_presence_answers_locally_while_redis_is_down_and_resyncs(redis_server):
    redis = Redis.from_url(redis_server.url, socket_connect_timeout=1, socket_timeout=5)
    here, elsewhere = RedisPresence(redis, "test", 30), RedisPresence(redis, "test", 30)
    await elsewhere.join(Lease("g", "remote", "b:1"))
    goes = Lease("g", "goes", "a:2")
    await here.join(Lease("g", "stays", "a:1"))
    await here.join(goes)
    redis_server.kill()
    assert await here.leave(goes) is True  # decided from this process's own leases
    assert await here.join(Lease("g", "new", "a:3")) is True
    assert await here.members("g") == ["new", "stays"]
    assert here.down
    redis_server.start()  # empty: every process puts its own leases back
    await elsewhere.resync()
    await here.resync()
    assert not here.down
    assert await here.members("g") == ["new", "remote", "stays"]
    await redis.aclose()
