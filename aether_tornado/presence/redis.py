"""Presence in Redis, shared by every process, with a local view for Redis outages.

Keys: ``{prefix}:presence:leases`` (sorted set of "group client key" scored by expiry in
ms, Redis's own clock), ``{prefix}:presence:group:{group}`` (hash client -> live leases)
and ``{prefix}:presence:client:{client}`` (the client's live leases in every group). The
Lua scripts beside this file make join, leave and expiry atomic, so each presence span
starts and ends exactly once however many processes race. The scripts build group and
client keys from their arguments: a standalone Redis, not Redis Cluster.

While Redis is unreachable, answers come from this process's own leases; ``on_lost``
tells the bridge, whose reconnection calls ``resync``, which puts them back into Redis,
silently, as the protocol asks.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import Lease
from .memory import MemoryPresence

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).parent / "lua"
# Leases per refresh call, per expiry pass and per pipeline of leaves, so one script or one
# round trip never blocks Redis for long.
BATCH = 1000
# Leases that ended during an outage, kept to be dropped from Redis after it; past this many
# the rest are left to expire there (their clients leave with reason timeout, once).
MAX_BACKLOG = 100_000


class RedisPresence:
    def __init__(
        self, redis: Redis, prefix: str, lease_seconds: float, on_lost: Callable[[BaseException], None] | None = None
    ) -> None:
        self._redis = redis
        self._on_lost = on_lost
        self._leases_key = f"{prefix}:presence:leases"
        self._group_prefix = f"{prefix}:presence:group:"
        self._client_prefix = f"{prefix}:presence:client:"
        self._lease_ms = int(lease_seconds * 1000)
        self._local = MemoryPresence(lease_seconds)
        self._left_while_down: set[Lease] = set()
        # Held while resync runs: joins and leaves wait, so none is decided twice or lost.
        self._resyncing = asyncio.Lock()
        self.down = False
        self._join, self._leave, self._refresh, self._expire = (
            redis.register_script((SCRIPTS / f"{name}.lua").read_text())
            for name in ("join", "leave", "refresh", "expire")
        )

    async def join(self, lease: Lease) -> bool:
        await self._after_resync()
        first_here = await self._local.join(lease)
        if self.down:
            return first_here
        try:
            return bool(
                await self._join(keys=self._keys(lease), args=[_member(lease), lease.client_id, self._lease_ms])
            )
        except (RedisError, OSError) as error:
            self._lost(error)
            return first_here

    async def leave(self, lease: Lease) -> bool:
        await self._after_resync()
        last_here = await self._local.leave(lease)
        if not self.down:
            try:
                return bool(await self._leave(keys=self._keys(lease), args=[_member(lease), lease.client_id]))
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
            ended = []
            while True:
                reaped, *flat = await self._expire(
                    keys=[self._leases_key], args=[self._group_prefix, BATCH, self._client_prefix]
                )
                ended += [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]
                if reaped < BATCH:
                    return ended
        except (RedisError, OSError) as error:
            self._lost(error)
            return []

    async def members(self, group_id: str) -> list[str]:
        if not self.down:
            try:
                return sorted(client.decode() for client in await self._redis.hkeys(self._group_prefix + group_id))
            except (RedisError, OSError) as error:
                self._lost(error)
        return await self._local.members(group_id)

    async def present_anywhere(self, client_id: str) -> bool:
        if not self.down:
            try:
                return bool(await self._redis.exists(self._client_prefix + client_id))
            except (RedisError, OSError) as error:
                self._lost(error)
        return await self._local.present_anywhere(client_id)

    async def resync(self) -> None:
        """After an outage: drop leases that ended meanwhile, put back this process's open ones.

        Nothing is announced: the node sends fresh snapshots instead. Redis may have
        restarted empty, so this runs after every reconnection, noticed here or not.
        """
        async with self._resyncing:
            # Connections pooled before an outage are dead even if Redis is back: drop them all.
            await self._redis.connection_pool.disconnect(inuse_connections=False)
            while self._left_while_down:
                batch = [self._left_while_down.pop() for _ in range(min(BATCH, len(self._left_while_down)))]
                pipeline = self._redis.pipeline(transaction=False)
                for lease in batch:
                    await self._leave(keys=self._keys(lease), args=[_member(lease), lease.client_id], client=pipeline)
                try:
                    await pipeline.execute()
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

    async def _after_resync(self) -> None:
        if self._resyncing.locked():
            async with self._resyncing:
                pass

    async def _refresh_in_redis(self, leases: list[Lease]) -> list[Lease]:
        back = []
        for start in range(0, len(leases), BATCH):
            batch = leases[start : start + BATCH]
            keys = [self._leases_key, *(self._group_prefix + lease.group_id for lease in batch)]
            args: list[str | int] = [self._lease_ms, self._client_prefix]
            for lease in batch:
                args += [_member(lease), lease.client_id]
            back += [batch[index - 1] for index in await self._refresh(keys=keys, args=args)]
        return back

    def _keys(self, lease: Lease) -> list[str]:
        return [self._leases_key, self._group_prefix + lease.group_id, self._client_prefix + lease.client_id]

    def mark_down(self) -> None:
        """The bridge lost Redis: answer locally until ``resync``, and so use no connection from before."""
        if not self.down:
            log.warning("presence falls back to this process's own leases: Redis was lost")
        self.down = True

    def _lost(self, error: BaseException) -> None:
        """Answer locally from now on, until ``resync`` after Redis is reached again."""
        if self.down:
            return
        self.down = True
        log.warning("presence falls back to this process's own leases: %s", error)
        if self._on_lost is not None:
            self._on_lost(error)


def _member(lease: Lease) -> str:
    # Vision IDs and lease keys hold no spaces, so the member splits back unambiguously.
    return f"{lease.group_id} {lease.client_id} {lease.key}"
