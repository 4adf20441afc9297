"""Presence: which client_ids hold at least one open connection in a group, which processes
are up (each announces itself, for the operator's view), and which clients are banned.

Each open connection holds a lease, keyed by ``Lease.key``, refreshed while it is open.
Guarantee: ``join`` says ``first`` exactly once per presence span (the client's first
lease in the group) and ``leave`` or ``expire`` reports its end exactly once, however
many connections and processes take part.
"""

from typing import NamedTuple, Protocol


class Lease(NamedTuple):
    group_id: str
    client_id: str
    key: str


class Joined(NamedTuple):
    """What taking a lease tells: whether the client just became present, and who is present now."""

    first: bool
    members: list[str]


class Presence(Protocol):
    @property
    def backlog(self) -> int:
        """Leases that ended while Redis was away, waiting to be dropped there: bounded."""

    async def join(self, lease: Lease) -> Joined:
        """Take a lease: whether the client just became present in the group, and the group's
        present client_ids right after (itself included), sorted: a snapshot in the same step."""

    async def leave(self, lease: Lease) -> bool:
        """Drop a lease; True when it was the client's last one in the group."""

    async def refresh(self, leases: list[Lease]) -> list[Lease]:
        """Extend leases; return those that had expired and made their client present again."""

    async def expire(self) -> list[tuple[str, str]]:
        """Drop overdue leases; return each (group_id, client_id) whose presence ended."""

    async def present_anywhere(self, client_id: str) -> bool:
        """Whether the client holds a lease in any group, on any process."""

    async def members(self, group_id: str) -> list[str]:
        """The group's present client_ids, sorted in code point order."""

    async def groups(self, prefix: str, limit: int) -> tuple[list[tuple[str, int]], int]:
        """Up to ``limit`` groups whose id starts with ``prefix``, sorted, each with how many
        clients are present; and how many groups have anyone present in all."""

    async def announce(self, node_id: str, announcement: bytes, seconds: float) -> list[str]:
        """Tell every process that this one is up, and what it holds, for the next ``seconds``;
        return the node_ids of the processes up now (only this one while the store is away)."""

    async def withdraw(self, node_id: str) -> None:
        """Take back this process's announcement: it is stopping."""

    async def processes(self) -> list[bytes]:
        """The announcements of the processes that are up, in no particular order."""

    async def ban(self, client_id: str, until: float) -> None:
        """Keep, for every process, that ``client_id`` is banned until ``until`` (seconds since the
        epoch). Raises ConnectionError while the shared store is away."""

    async def unban(self, client_id: str) -> None:
        """End ``client_id``'s ban for every process. Raises ConnectionError while the shared
        store is away."""

    async def bans(self, most: int) -> list[tuple[str, float]]:
        """Up to ``most`` bans in force, each (client_id, until). Raises ConnectionError while the
        shared store is away."""

    @property
    def down(self) -> bool:
        """Whether answers come from this process's own leases only (the shared store is away)."""

    async def resync(self) -> None:
        """After the shared store's outage, put this process's leases back, silently."""

    async def close(self) -> None:
        """Release the shared store's connections; the leases stay until they expire."""
