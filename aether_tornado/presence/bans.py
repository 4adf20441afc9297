"""Clients an operator has banned, and until when: what every handshake checks, in memory.

A ban is kept in presence's store (Redis, across processes) and here, where a handshake
reads it without a round trip. The process that takes or lifts a ban tells the others at once
on the control channel; a process that starts later, or missed an order during an outage,
takes every ban from the store when it (re)connects.
"""

import time
from collections.abc import Callable

# Bans held at once: an operator's key controls how many, but nothing grows without a bound.
MAX_BANS = 100_000
# The longest ban one order may give: 30 days.
MAX_BAN_SECONDS = 30 * 24 * 3600


class TooManyBans(Exception):
    """MAX_BANS are in force: a new one is refused until some end."""


class Bans:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._until: dict[str, float] = {}  # client_id -> end, seconds since the epoch
        self._clock = clock

    def __len__(self) -> int:
        return len(self._until)

    def has_room(self, client_id: str) -> bool:
        """Whether a ban of ``client_id`` can be taken now."""
        if client_id in self._until or len(self._until) < MAX_BANS:
            return True
        self._prune()
        return len(self._until) < MAX_BANS

    def add(self, client_id: str, until: float) -> None:
        """Ban ``client_id`` until ``until`` (or longer, if it already is). Raises TooManyBans."""
        if not self.has_room(client_id):
            raise TooManyBans(f"{MAX_BANS} bans are in force")
        self._until[client_id] = max(until, self._until.get(client_id, 0.0))

    def replace(self, bans: list[tuple[str, float]]) -> None:
        """Hold these bans (client_id, until) and no others: the store's, read after an outage,
        which may have lifted some meanwhile. The first MAX_BANS are kept."""
        self._until = dict(bans[:MAX_BANS])

    def lift(self, client_id: str) -> bool:
        """End ``client_id``'s ban now; whether one was in force."""
        return self._until.pop(client_id, 0.0) > self._clock()

    def remaining(self, client_id: str) -> float:
        """Seconds left of ``client_id``'s ban; 0 when it is not banned."""
        until = self._until.get(client_id)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[client_id]
            return 0.0
        return left

    def _prune(self) -> None:
        now = self._clock()
        self._until = {client_id: until for client_id, until in self._until.items() if until > now}
