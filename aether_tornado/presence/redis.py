"""Presence in Redis, shared by every process, with a local view for Redis outages.

Groups are spread over ``BUCKETS`` buckets by their hash slot. A bucket has a lease index,
``{prefix}:presence:{pN}:leases`` (sorted set of "group client key" scored by expiry in ms,
Redis's own clock), and each of its groups a hash ``{prefix}:presence:{pN}:group:{group}``
(client -> live leases), listed in the bucket's set ``{prefix}:presence:{pN}:groups`` while
anyone is present. The Lua scripts beside this file make join, leave and expiry atomic
per bucket, so each presence span starts and ends exactly once however many processes race
(the joins of one loop iteration, a burst of handshakes, go together: one call on one Redis,
one per bucket on a cluster);
the braces put a bucket on one shard of a Redis Cluster, and the buckets spread over the
shards. ``{prefix}:presence:{client:<id>}`` (the client's leases in every group, scored by
expiry on the processes' clocks) answers whether a client is present anywhere. On one Redis
the join script writes it too; on a cluster it is written apart, since it lives on the
client's own shard.

Each process announces itself in ``{prefix}:presence:{processes}:announced`` (node_id ->
JSON), with ``...:until`` saying when each announcement runs out: a process that died drops
out of the operator's view by itself.

Presence shares the process's link (redis/link.py) with the bridge: a call that fails here
tells the bridge, and the bridge's losses reach here. While Redis is lost, answers come from
this process's own leases (``down``), until the bridge's reconnection calls ``resync``, which
puts them back into Redis, silently, as the protocol asks.
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from ..redis.link import Link
from . import Joined, Lease
from .bans import MAX_BAN_SECONDS
from .batch import IterationBatch
from .memory import MemoryPresence

log = logging.getLogger(__name__)
T = TypeVar("T")

SCRIPTS = Path(__file__).parent / "lua"
# Leases per refresh call, per expiry pass and per pipeline of leaves, so one script or one
# round trip never blocks Redis for long.
BATCH = 1000
# Leases that ended during an outage, kept to be dropped from Redis after it; past this many
# the rest are left to expire there (their clients leave with reason timeout, once).
MAX_BACKLOG = 100_000
# Joins per script call: each reads its group's members, which may be many.
JOINS_PER_CALL = 50
# Buckets of groups: every expiry pass visits each one, and they spread over a cluster's shards.
BUCKETS = 16
# Scripts run at once by one batch (a cluster cannot pipeline them), within the connection pool.
PARALLEL = 16


class RedisPresence:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        prefix: str,
        lease_seconds: float,
        link: Link | None = None,
        max_calls: int = 32,
    ) -> None:
        """At most ``max_calls`` calls wait for Redis at once: a cluster client refuses, rather
        than waits, when its connections to a node are all busy."""
        self._redis = redis
        # A script's keys must share a slot on a cluster; one Redis takes any together.
        self._cluster = isinstance(redis, RedisCluster)
        self._calls = asyncio.Semaphore(max_calls)
        self._initializing = asyncio.Lock()
        self._initialized = False
        self._link = link or Link()
        self._link.when_lost(self._fall_back)
        self._redis_prefix = prefix
        self._prefix = f"{prefix}:presence:"
        self._lease_ms = int(lease_seconds * 1000)
        self._local = MemoryPresence(lease_seconds)
        self._left_while_down: set[Lease] = set()
        # The joins of one loop iteration: their scripts, and their clients' indexes, together.
        self._join_together = IterationBatch(self._join_leases)
        self._hold_together = IterationBatch(self._hold_leases)
        # Held while resync runs: joins and leaves wait, so none is decided twice or lost.
        self._resyncing = asyncio.Lock()
        self.down = False
        self._join, self._leave, self._refresh, self._expire, self._groups, self._announce, self._announced = (
            redis.register_script((SCRIPTS / f"{name}.lua").read_text())
            for name in ("join", "leave", "refresh", "expire", "groups", "announce", "announced")
        )

    async def join(self, lease: Lease) -> Joined:
        await self._after_resync()
        here = await self._local.join(lease)
        if self.down:
            return here
        try:
            together: list[Awaitable[Any]] = [self._join_together(lease)]
            if self._cluster:  # the client's index is on the client's own shard: apart
                together.append(self._hold_together(lease))
            joined: Joined
            joined, *_ = await asyncio.gather(*together)
            return joined
        except (RedisError, OSError) as error:
            self._lost(error)
            return here

    async def leave(self, lease: Lease) -> bool:
        await self._after_resync()
        last_here = await self._local.leave(lease)
        if not self.down:
            try:
                return bool(await self._drop(lease))
            except (RedisError, OSError) as error:
                self._lost(error)
        if len(self._left_while_down) < MAX_BACKLOG:
            self._left_while_down.add(lease)
        return last_here

    @property
    def backlog(self) -> int:
        return len(self._left_while_down)

    async def refresh(self, leases: list[Lease]) -> list[Lease]:
        back = await self._local.refresh(leases)
        if self.down:
            return back
        try:
            return await self._refresh_in_redis(leases)
        except (RedisError, OSError) as error:
            self._lost(error)
            return back

    async def expire(self) -> list[tuple[str, str]]:
        if self.down:
            return await self._local.expire()
        try:
            return [pair for pairs in await asyncio.gather(*map(self._expire_bucket, range(BUCKETS))) for pair in pairs]
        except (RedisError, OSError) as error:
            self._lost(error)
            return []

    async def members(self, group_id: str) -> list[str]:
        if not self.down:
            try:
                clients = cast(
                    list[bytes], await self._bounded(functools.partial(self._redis.hkeys, self._group_key(group_id)))
                )
                return sorted(client.decode() for client in clients)
            except (RedisError, OSError) as error:
                self._lost(error)
        return await self._local.members(group_id)

    async def present_anywhere(self, client_id: str) -> bool:
        if not self.down:
            try:
                count = functools.partial(self._redis.zcount, self._client_key(client_id), _now_ms(), "+inf")
                return bool(await self._bounded(count))
            except (RedisError, OSError) as error:
                self._lost(error)
        return await self._local.present_anywhere(client_id)

    async def groups(self, prefix: str, limit: int) -> tuple[list[tuple[str, int]], int]:
        if not self.down:
            try:
                found = await asyncio.gather(
                    *(
                        self._bounded(
                            functools.partial(
                                self._groups,
                                keys=[self._groups_key(bucket)],
                                args=[self._group_key_prefix(bucket), f"{prefix}*", limit],
                            )
                        )
                        for bucket in range(BUCKETS)
                    )
                )
                pairs = [(flat[i].decode(), flat[i + 1]) for _, *flat in found for i in range(0, len(flat), 2)]
                return sorted(pairs)[:limit], sum(total for total, *_ in found)
            except (RedisError, OSError) as error:
                self._lost(error)
        return await self._local.groups(prefix, limit)

    async def announce(self, node_id: str, announcement: bytes, seconds: float) -> list[str]:
        here = await self._local.announce(node_id, announcement, seconds)
        if self.down:
            return here
        try:
            up = await self._bounded(
                functools.partial(
                    self._announce, keys=self._process_keys(), args=[node_id, announcement, int(seconds * 1000)]
                )
            )
            return [node.decode() for node in up]
        except (RedisError, OSError) as error:
            self._lost(error)
            return here

    async def withdraw(self, node_id: str) -> None:
        await self._local.withdraw(node_id)
        if self.down:
            return
        info, up = self._process_keys()
        with contextlib.suppress(RedisError, OSError):  # the announcement runs out by itself
            pipeline = self._redis.pipeline(transaction=False)
            pipeline.hdel(info, node_id)
            pipeline.zrem(up, node_id)
            await self._bounded(pipeline.execute)

    async def processes(self) -> list[bytes]:
        if not self.down:
            try:
                return await self._bounded(functools.partial(self._announced, keys=self._process_keys()))
            except (RedisError, OSError) as error:
                self._lost(error)
        return await self._local.processes()

    async def ban(self, client_id: str, until: float) -> None:
        if self.down:
            raise ConnectionError("Redis is unreachable: a ban could not reach the other processes")
        pipeline = self._redis.pipeline(transaction=False)
        pipeline.zremrangebyscore(self._bans_key(), "-inf", _now_ms())
        pipeline.zadd(self._bans_key(), {client_id: int(until * 1000)}, gt=True)  # a longer ban stays
        pipeline.pexpire(self._bans_key(), int(MAX_BAN_SECONDS * 1000))  # past every ban in it
        try:
            await self._bounded(pipeline.execute)
        except (RedisError, OSError) as error:
            self._lost(error)
            raise ConnectionError(f"a ban could not be kept in Redis: {error}") from error

    async def unban(self, client_id: str) -> None:
        if self.down:
            raise ConnectionError("Redis is unreachable: lifting a ban could not reach the other processes")
        try:
            await self._bounded(functools.partial(self._redis.zrem, self._bans_key(), client_id))
        except (RedisError, OSError) as error:
            self._lost(error)
            raise ConnectionError(f"a ban could not be lifted in Redis: {error}") from error

    async def bans(self, most: int) -> list[tuple[str, float]]:
        if self.down:
            raise ConnectionError("Redis is unreachable: the bans in force cannot be read")
        try:
            found = await self._bounded(
                functools.partial(
                    self._redis.zrangebyscore, self._bans_key(), _now_ms(), "+inf", 0, most, withscores=True
                )
            )
        except (RedisError, OSError) as error:
            self._lost(error)
            raise ConnectionError(f"the bans in force could not be read: {error}") from error
        return [(client_id.decode(), until / 1000) for client_id, until in cast(list[tuple[bytes, float]], found)]

    async def resync(self) -> None:
        """After an outage: drop leases that ended meanwhile, put back this process's open ones.

        Nothing is announced: the node sends fresh snapshots instead. Redis may have
        restarted empty, so this runs after every reconnection, noticed here or not. Redis
        failing meanwhile (another outage, a cluster failing over) raises ConnectionError: an
        outage, to be retried once Redis is back, like any the bridge sees.
        """
        try:
            await self._resync()
        except RedisError as error:
            raise ConnectionError(f"presence could not be put back in Redis: {error}") from error

    async def _resync(self) -> None:
        async with self._resyncing:
            await self._forget_connections()
            while self._left_while_down:
                batch = [self._left_while_down.pop() for _ in range(min(BATCH, len(self._left_while_down)))]
                try:
                    await _at_most(PARALLEL, [functools.partial(self._drop, lease) for lease in batch])
                except BaseException:
                    self._left_while_down.update(batch)
                    raise
            leases = self._local.leases()
            await self._refresh_in_redis(leases)
            if self.down:
                log.info("presence back in Redis: %d leases put back", len(leases))
            self.down = False

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def _forget_connections(self) -> None:
        """Connections pooled before an outage are dead even if Redis is back: drop them all.

        A cluster client also forgets the cluster's shape, which a failover changed, and reads
        it again on its next call.
        """
        if isinstance(self._redis, Redis):
            await self._redis.connection_pool.disconnect(inuse_connections=False)
        else:
            await self._redis.aclose()
        self._initialized = False

    async def _after_resync(self) -> None:
        if self._resyncing.locked():
            async with self._resyncing:
                pass

    async def _refresh_in_redis(self, leases: list[Lease]) -> list[Lease]:
        by_bucket: dict[int, list[Lease]] = {}
        for lease in leases:
            by_bucket.setdefault(_bucket(lease.group_id), []).append(lease)
        batches = [
            bucket_leases[start : start + BATCH]
            for bucket_leases in by_bucket.values()
            for start in range(0, len(bucket_leases), BATCH)
        ]
        backs = await asyncio.gather(*map(self._refresh_batch, batches), self._hold_client(leases))
        return [lease for back in cast(list[list[Lease]], backs[:-1]) for lease in back]

    async def _refresh_batch(self, batch: list[Lease]) -> list[Lease]:
        """Extend leases of one bucket; those that made their client present again."""
        args: list[str | int] = [self._lease_ms]
        for lease in batch:
            args += [_member(lease), lease.client_id]
        bucket = _bucket(batch[0].group_id)
        keys = [
            self._leases_key(bucket),
            self._groups_key(bucket),
            *(self._group_key_prefix(bucket) + lease.group_id for lease in batch),  # one bucket
        ]
        back = await self._bounded(functools.partial(self._refresh, keys=keys, args=args))
        return [batch[index - 1] for index in back]

    async def _expire_bucket(self, bucket: int) -> list[tuple[str, str]]:
        ended = []
        while True:
            reaped, *flat = await self._bounded(
                functools.partial(
                    self._expire,
                    keys=[self._leases_key(bucket), self._groups_key(bucket)],
                    args=[self._group_key_prefix(bucket), BATCH],
                )
            )
            ended += [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]
            if reaped < BATCH:
                return ended

    async def _drop(self, lease: Lease) -> int:
        """Drop a lease in its bucket and in its client's index; 1 if it was the client's last in the group."""
        left: int
        left, _ = await asyncio.gather(
            self._bounded(
                functools.partial(
                    self._leave, keys=self._keys(lease), args=[_member(lease), lease.client_id, lease.group_id]
                )
            ),
            self._bounded(functools.partial(self._redis.zrem, self._client_key(lease.client_id), lease.key)),
        )
        return left

    async def _join_leases(self, leases: list[Lease]) -> list[Joined]:
        """Take leases, in order, a few at a time in one script call (each reads its group's
        members): on one Redis whatever their buckets, on a cluster those of one bucket, the
        buckets at once. What each join tells, in order."""
        together: dict[int, list[int]] = {}
        for index, lease in enumerate(leases):
            together.setdefault(_bucket(lease.group_id) if self._cluster else 0, []).append(index)
        joined: list[Joined | None] = [None] * len(leases)

        async def take(indexes: list[int]) -> None:
            for start in range(0, len(indexes), JOINS_PER_CALL):
                batch = indexes[start : start + JOINS_PER_CALL]
                answers = await self._join_batch([leases[index] for index in batch])
                for index, (first, *members) in zip(batch, answers, strict=True):
                    joined[index] = Joined(bool(first), sorted(member.decode() for member in members))

        await asyncio.gather(*map(take, together.values()))
        return cast(list[Joined], joined)

    async def _join_batch(self, batch: list[Lease]) -> list[list[Any]]:
        """One join script call; on one Redis it puts the leases in their clients' indexes too."""
        with_index = not self._cluster
        keys: list[str] = []
        args: list[str | int] = [self._lease_ms, 4 if with_index else 3, _now_ms() + self._lease_ms]
        for lease in batch:
            bucket = _bucket(lease.group_id)
            keys += [
                self._leases_key(bucket),
                self._groups_key(bucket),
                self._group_key_prefix(bucket) + lease.group_id,
            ]
            if with_index:
                keys.append(self._client_key(lease.client_id))
            args += [_member(lease), lease.client_id, lease.group_id, lease.key]
        return await self._bounded(functools.partial(self._join, keys=keys, args=args))

    async def _hold_leases(self, leases: list[Lease]) -> list[None]:
        await self._hold_client(leases, prune=False)
        return [None] * len(leases)

    async def _hold_client(self, leases: list[Lease], prune: bool = True) -> None:
        """Put leases in their clients' indexes, which say whether a client is present anywhere.

        Leases that ran out there (their process died) are dropped on each refresh, not on
        each join: a burst of joins pays a third fewer commands.
        """
        now = _now_ms()
        pipeline = self._redis.pipeline(transaction=False)
        for lease in leases:
            key = self._client_key(lease.client_id)
            if prune:
                pipeline.zremrangebyscore(key, "-inf", now)
            pipeline.zadd(key, {lease.key: now + self._lease_ms})
            pipeline.pexpire(key, self._lease_ms)
        await self._bounded(pipeline.execute)

    async def _bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._calls:
            if not self._initialized:
                # redis-py's cluster client breaks when its first calls run at once: one goes first.
                async with self._initializing:
                    if not self._initialized:
                        await self._redis.initialize()
                        self._initialized = True
            return await call()

    def _keys(self, lease: Lease) -> list[str]:
        bucket = _bucket(lease.group_id)
        return [self._leases_key(bucket), self._group_key(lease.group_id), self._groups_key(bucket)]

    def _process_keys(self) -> list[str]:
        """The processes' announcements and their expiries: one slot, so one shard, for all."""
        return [f"{self._prefix}{{processes}}:announced", f"{self._prefix}{{processes}}:until"]

    def _bans_key(self) -> str:
        """Banned client_ids scored by when each ban ends (ms since the epoch): one key, one shard."""
        return f"{self._prefix}{{bans}}"

    def _groups_key(self, bucket: int) -> str:
        return f"{self._prefix}{{p{bucket}}}:groups"

    def _leases_key(self, bucket: int) -> str:
        return f"{self._prefix}{{p{bucket}}}:leases"

    def _group_key_prefix(self, bucket: int) -> str:
        return f"{self._prefix}{{p{bucket}}}:group:"

    def _group_key(self, group_id: str) -> str:
        return self._group_key_prefix(_bucket(group_id)) + group_id

    def _client_key(self, client_id: str) -> str:
        return client_index_key(self._redis_prefix, client_id)

    def _lost(self, error: BaseException) -> None:
        """A call here failed: the whole link is lost, for the bridge too."""
        self._link.lost(error)

    def _fall_back(self, error: BaseException) -> None:
        """Redis was lost (here, or by the bridge): answer locally until ``resync``, using no
        connection from before; a cluster's shape may have changed, so it is read again first."""
        self._initialized = False
        if not self.down:
            log.warning("presence falls back to this process's own leases: %s", error)
        self.down = True


async def _at_most(limit: int, calls: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the calls with at most ``limit`` at once; their results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await call()

    return await asyncio.gather(*map(one, calls))


def client_index_key(prefix: str, client_id: str) -> str:
    """The key of a client's leases in every group: it shares its hash tag, so its slot, with the
    client's bridge channel and history stream."""
    return f"{prefix}:presence:{{client:{client_id}}}"


def _bucket(group_id: str) -> int:
    return key_slot(group_id.encode()) % BUCKETS


def _now_ms() -> int:
    return int(time.time() * 1000)


def _member(lease: Lease) -> str:
    # Vision IDs and lease keys hold no spaces, so the member splits back unambiguously.
    return f"{lease.group_id} {lease.client_id} {lease.key}"
