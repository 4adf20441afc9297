"""Whether this process reaches Redis: one state, read by the node and heard by every backend.

The bridge's supervisor owns the connections and moves the state forward: ``subscribed`` once
it has subscribed, ``restored`` once the node has resynced on top of that (presence put back,
the recovery secret shared). Any backend whose call fails moves it back with ``lost``, and
every listener hears that at once: the bridge drops its connections and reconnects, presence
answers from this process's own leases. So no backend goes on with Redis that another has
given up on, and ``up`` is never true while one of them still works alone.
"""

import enum
from collections.abc import Callable

OnLost = Callable[[BaseException], None]


class LinkState(enum.Enum):
    DOWN = "down"  # no connections: each backend answers from this process alone
    SYNCING = "syncing"  # connected and subscribed; the node is putting its state back
    UP = "up"  # every backend works across processes


class Link:
    def __init__(self) -> None:
        # Plain fields, read on every publish; ``state`` names the pair.
        self.connected = False  # the bridge's connections are there to use, resynced or not yet
        self.up = False  # every backend works across processes
        self._listeners: list[OnLost] = []
        self._on_restored: list[Callable[[], None]] = []

    @property
    def state(self) -> LinkState:
        return LinkState.UP if self.up else LinkState.SYNCING if self.connected else LinkState.DOWN

    def when_lost(self, listener: OnLost) -> None:
        """Have ``listener`` hear every loss; it is told of each failed call, so it must not mind twice."""
        self._listeners.append(listener)

    def when_restored(self, listener: Callable[[], None]) -> None:
        """Have ``listener`` hear each time every backend works across processes again."""
        self._on_restored.append(listener)

    def subscribed(self) -> None:
        self.connected, self.up = True, False

    def restored(self) -> None:
        self.up = self.connected  # not if lost meanwhile
        if self.up:
            for listener in self._on_restored:
                listener()

    def closed(self) -> None:
        """Down for good, by choice: nobody needs telling."""
        self.connected = self.up = False

    def lost(self, error: BaseException) -> None:
        self.connected = self.up = False
        for listener in self._listeners:
            listener(error)
