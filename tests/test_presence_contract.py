"""The presence contract, run against every backend."""

import asyncio
import signal
import time

import pytest
from redis.asyncio import Redis, RedisCluster

from aether_tornado.presence import Joined, Lease
from aether_tornado.presence.memory import MemoryPresence
from aether_tornado.presence.redis import RedisPresence

from .timing import scaled


class ManualClock:
    """Memory presence's clock: time moves only when a test moves it, so no margin can be missed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


class RedisClock:
    """Redis presence keeps time by Redis's own clock: time moves by waiting for it.

    The lease is long enough that what must still be alive has half a lease of margin
    (0.5 s) against a slow machine, and waiting never ends early.
    """

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def redis_client(request, kind: str) -> tuple[Redis | RedisCluster, str]:
    """A client of a private Redis, or of the shared cluster, and the prefix to use there."""
    if kind == "redis":
        return Redis.from_url(request.getfixturevalue("redis_server").url, socket_timeout=5), "test"
    cluster = request.getfixturevalue("redis_cluster")
    return RedisCluster.from_url(cluster.url, socket_timeout=5), request.getfixturevalue("cluster_prefix")


@pytest.fixture(params=["memory", "redis", "redis cluster"])
async def backend(request):
    """(presence, clock, lease seconds) for each implementation."""
    if request.param == "memory":
        clock = ManualClock()
        yield MemoryPresence(10, clock), clock, 10
        return
    redis, prefix = redis_client(request, request.param)
    yield RedisPresence(redis, prefix, scaled(1.0)), RedisClock(), scaled(1.0)
    await redis.aclose()


@pytest.fixture
def presence(backend):
    return backend[0]


async def test_join_is_true_once_per_span_and_leave_on_the_last_lease(presence):
    tab1, tab2 = Lease("g", "c", "n:1"), Lease("g", "c", "n:2")
    assert (await presence.join(tab1)).first is True
    assert (await presence.join(tab2)).first is False
    assert await presence.leave(tab1) is False
    assert await presence.leave(tab1) is False  # a second leave of the same lease is a no-op
    assert await presence.leave(tab2) is True
    assert await presence.members("g") == []
    assert (await presence.join(tab1)).first is True  # a new span


async def test_join_tells_who_is_present_right_after_itself_included(presence):
    assert await presence.join(Lease("g", "b", "n:1")) == Joined(True, ["b"])
    assert await presence.join(Lease("g", "a", "n:2")) == Joined(True, ["a", "b"])
    assert await presence.join(Lease("g", "b", "n:3")) == Joined(False, ["a", "b"])
    assert await presence.join(Lease("other", "c", "n:4")) == Joined(True, ["c"])


async def test_joins_at_once_each_tell_their_own_span_and_members(presence):
    """A burst of handshakes: joins of one loop iteration are taken together (over 50 in one
    group: more than one script call), each told apart."""
    leases = [Lease(f"g{n % 3}", f"c{n:03}", f"n:{n}") for n in range(160)] + [Lease("g0", "c000", "n:again")]
    joined = await asyncio.gather(*map(presence.join, leases))
    assert [answer.first for answer in joined] == [True] * 160 + [False]
    for lease, answer in zip(leases, joined, strict=True):
        assert lease.client_id in answer.members and answer.members == sorted(answer.members)
        assert all(int(member[1:]) % 3 == int(lease.group_id[1:]) for member in answer.members)
    assert joined[-1].members == [f"c{n:03}" for n in range(0, 160, 3)]


async def test_groups_are_separate_and_members_sorted(presence):
    for client_id in ["b", "a", "C"]:
        await presence.join(Lease("g1", client_id, f"n:{client_id}"))
    await presence.join(Lease("g2", "z", "n:z"))
    assert await presence.members("g1") == ["C", "a", "b"]
    assert await presence.members("g2") == ["z"]
    assert await presence.members("nobody") == []


async def test_unrefreshed_leases_expire_once(backend):
    presence, clock, lease = backend
    kept, dropped = Lease("g", "kept", "n:1"), Lease("g", "dropped", "n:2")
    await presence.join(kept)
    await presence.join(dropped)
    for _ in range(3):
        await clock.advance(lease / 2)
        assert await presence.refresh([kept]) == []
    assert await presence.expire() == [("g", "dropped")]
    assert await presence.expire() == []
    assert await presence.members("g") == ["kept"]
    assert await presence.leave(dropped) is False  # its leave was already reported by expire


async def test_a_client_stays_while_one_of_its_leases_lives(backend):
    presence, clock, lease = backend
    old, fresh = Lease("g", "c", "n:old"), Lease("g", "c", "n:fresh")
    await presence.join(old)
    await clock.advance(lease * 0.55)
    await presence.join(fresh)
    await clock.advance(lease * 0.5)
    assert await presence.expire() == []  # old expired, but fresh holds the client
    assert await presence.members("g") == ["c"]
    await clock.advance(lease * 0.55)
    assert await presence.expire() == [("g", "c")]


async def test_refresh_of_an_expired_lease_makes_the_client_present_again(backend):
    presence, clock, lease = backend
    lease_of_c = Lease("g", "c", "n:1")
    await presence.join(lease_of_c)
    await clock.advance(lease * 1.05)
    assert await presence.expire() == [("g", "c")]
    assert await presence.refresh([lease_of_c]) == [lease_of_c]
    assert await presence.members("g") == ["c"]


async def test_resync_without_an_outage_changes_nothing(presence):
    await presence.join(Lease("g", "c", "n:1"))
    await presence.resync()
    assert await presence.members("g") == ["c"]
    assert not presence.down


@pytest.mark.parametrize("kind", ["redis", "redis cluster"])
async def test_redis_presence_is_shared_and_expiry_reported_by_one_process_only(request, kind):
    redis, prefix = redis_client(request, kind)
    first, second, third = (RedisPresence(redis, prefix, 0.3) for _ in range(3))
    assert (await first.join(Lease("g", "c", "a:1"))).first is True
    assert (await second.join(Lease("g", "c", "b:1"))).first is False  # another process, same client
    assert await third.members("g") == ["c"]
    await asyncio.sleep(0.35)  # both processes "died": nobody refreshed; waiting never ends early
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
    assert await here.join(Lease("g", "new", "a:3")) == Joined(True, ["new", "stays"])  # its own only
    assert await here.members("g") == ["new", "stays"]
    assert here.down
    redis_server.start()  # empty: every process puts its own leases back
    await elsewhere.resync()
    await here.resync()
    assert not here.down
    assert await here.members("g") == ["new", "remote", "stays"]
    await redis.aclose()


async def test_leases_that_end_during_an_outage_are_bounded_and_dropped_in_batches(redis_server, monkeypatch):
    from aether_tornado.presence import redis as redis_presence

    monkeypatch.setattr(redis_presence, "MAX_BACKLOG", 2500)
    redis = Redis.from_url(redis_server.url, socket_connect_timeout=1, socket_timeout=0.5)
    here, elsewhere = RedisPresence(redis, "test", 30), RedisPresence(redis, "test", 30)
    leases = [Lease("g", f"c{n:04d}", f"a:{n}") for n in range(3000)]
    for lease in leases:
        await here.join(lease)
    await elsewhere.join(Lease("g", "remote", "b:1"))
    redis_server.process.send_signal(signal.SIGSTOP)  # away, but keeping what it holds
    try:
        for lease in leases:
            assert await here.leave(lease) is True  # decided locally once the first call timed out
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert here.down and here.backlog == 2500  # the bound: the last 500 are left to expire in Redis
    await here.resync()
    assert here.backlog == 0
    members = await elsewhere.members("g")
    assert len(members) == 501 and "remote" in members  # 2,500 dropped in three round trips
    await redis.aclose()


async def test_a_client_is_present_anywhere_while_it_holds_a_lease_in_any_group(backend):
    presence, clock, lease = backend
    first, second = Lease("g1", "c", "n:1"), Lease("g2", "c", "n:2")
    assert await presence.present_anywhere("c") is False
    await presence.join(first)
    await presence.join(second)
    await presence.leave(first)
    assert await presence.present_anywhere("c") is True
    await presence.leave(second)
    assert await presence.present_anywhere("c") is False
    await presence.join(first)
    await clock.advance(lease * 1.05)
    assert await presence.expire() == [("g1", "c")]
    assert await presence.present_anywhere("c") is False
    await presence.refresh([first])  # re-created after it was reaped
    assert await presence.present_anywhere("c") is True


async def test_a_resync_cut_short_by_another_outage_keeps_what_it_had_left_to_drop(redis_server):
    redis = Redis.from_url(redis_server.url, socket_connect_timeout=1, socket_timeout=scaled(0.5))
    here, elsewhere = RedisPresence(redis, "test", 30), RedisPresence(redis, "test", 30)
    leases = [Lease("g", f"c{n:02d}", f"a:{n}") for n in range(50)]
    for lease in leases:
        await here.join(lease)
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        for lease in leases:
            assert await here.leave(lease) is True  # decided locally once the first call timed out
        assert here.down and here.backlog == 50
        with pytest.raises(ConnectionError):
            await here.resync()  # Redis is away again: the resync stops part way, as an outage
        assert here.down and here.backlog == 50  # and forgets none of what it had to drop
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await here.resync()
    assert not here.down and here.backlog == 0
    assert await elsewhere.members("g") == []
    await redis.aclose()


async def test_bans_are_kept_read_and_lifted(presence):
    now = time.time()
    await presence.ban("c_banned", now + 60)
    await presence.ban("c_banned", now + 30)  # a shorter one does not cut a longer one short
    await presence.ban("c_gone", now - 1)  # over already
    (banned,) = await presence.bans(10)
    assert banned[0] == "c_banned" and abs(banned[1] - (now + 60)) < 0.01
    await presence.unban("c_banned")
    assert await presence.bans(10) == []
