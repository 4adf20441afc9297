"""Presence of a process that serves alone: leases in a dict, expiry by the monotonic clock."""

import time
from collections.abc import Callable

from . import Joined, Lease


class MemoryPresence:
    def __init__(self, lease_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` tells the time in seconds; tests pass one they move by hand."""
        self._lease_seconds = lease_seconds
        self._clock = clock
        # group_id -> client_id -> lease key -> expiry (monotonic seconds)
        self._groups: dict[str, dict[str, dict[str, float]]] = {}
        # client_id -> how many groups it is present in
        self._groups_of: dict[str, int] = {}
        # node_id -> (announcement, when it runs out): this process's own
        self._announced: dict[str, tuple[bytes, float]] = {}
        self._banned: dict[str, float] = {}  # client_id -> until, seconds since the epoch

    async def join(self, lease: Lease) -> Joined:
        first = self._put(lease, self._clock() + self._lease_seconds)
        return Joined(first, sorted(self._groups[lease.group_id]))

    async def leave(self, lease: Lease) -> bool:
        clients = self._groups.get(lease.group_id, {})
        keys = clients.get(lease.client_id)
        if keys is None or keys.pop(lease.key, None) is None:
            return False
        if keys:
            return False
        self._absent(clients, lease.client_id)
        if not clients:
            del self._groups[lease.group_id]
        return True

    async def refresh(self, leases: list[Lease]) -> list[Lease]:
        expiry = self._clock() + self._lease_seconds
        return [lease for lease in leases if self._put(lease, expiry)]

    async def expire(self) -> list[tuple[str, str]]:
        now = self._clock()
        ended = []
        for group_id, clients in list(self._groups.items()):
            for client_id, keys in list(clients.items()):
                for key, expiry in list(keys.items()):
                    if expiry <= now:
                        del keys[key]
                if not keys:
                    self._absent(clients, client_id)
                    ended.append((group_id, client_id))
            if not clients:
                del self._groups[group_id]
        return ended

    async def present_anywhere(self, client_id: str) -> bool:
        return client_id in self._groups_of

    async def members(self, group_id: str) -> list[str]:
        return sorted(self._groups.get(group_id, ()))

    async def groups(self, prefix: str, limit: int) -> tuple[list[tuple[str, int]], int]:
        found = sorted(
            (group_id, len(clients)) for group_id, clients in self._groups.items() if group_id.startswith(prefix)
        )
        return found[:limit], len(self._groups)

    async def announce(self, node_id: str, announcement: bytes, seconds: float) -> list[str]:
        self._announced[node_id] = (announcement, self._clock() + seconds)
        return [node_id]

    async def withdraw(self, node_id: str) -> None:
        self._announced.pop(node_id, None)

    async def processes(self) -> list[bytes]:
        now = self._clock()
        return [announcement for announcement, until in self._announced.values() if until > now]

    async def ban(self, client_id: str, until: float) -> None:
        self._banned[client_id] = max(until, self._banned.get(client_id, 0.0))

    async def unban(self, client_id: str) -> None:
        self._banned.pop(client_id, None)

    async def bans(self, most: int) -> list[tuple[str, float]]:
        now = time.time()
        self._banned = {client_id: until for client_id, until in self._banned.items() if until > now}
        return list(self._banned.items())[:most]

    down = False  # nothing is shared, so nothing can be away
    backlog = 0

    async def resync(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def leases(self) -> list[Lease]:
        return [
            Lease(group_id, client_id, key)
            for group_id, clients in self._groups.items()
            for client_id, keys in clients.items()
            for key in keys
        ]

    def _put(self, lease: Lease, expiry: float) -> bool:
        """Set a lease's expiry; True when its client was not present before."""
        clients = self._groups.setdefault(lease.group_id, {})
        keys = clients.get(lease.client_id)
        if keys is None:
            clients[lease.client_id] = {lease.key: expiry}
            self._groups_of[lease.client_id] = self._groups_of.get(lease.client_id, 0) + 1
            return True
        keys[lease.key] = expiry
        return False

    def _absent(self, clients: dict[str, dict[str, float]], client_id: str) -> None:
        """A client's presence in one group ended."""
        del clients[client_id]
        if self._groups_of[client_id] == 1:
            del self._groups_of[client_id]
        else:
            self._groups_of[client_id] -= 1
