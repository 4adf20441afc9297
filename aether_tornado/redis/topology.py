"""Where each channel lives: one Redis, or the masters of a Redis Cluster and their slots.

A channel's slot is Redis Cluster's (CRC16 of its hash tag), so a channel and the history keys
of the same stream, which share the tag, live on one shard.
"""

import attrs
from redis.crc import key_slot

from .resp import Address, RespConnection

SLOTS = 16384


@attrs.frozen
class Topology:
    """The shards' addresses, and for each of the 16384 slots the index of its shard."""

    shards: tuple[Address, ...]
    slots: tuple[int, ...] | None = None  # None: one Redis holds everything

    def shard_of(self, name: str) -> int:
        if self.slots is None:
            return 0
        return self.slots[key_slot(name.encode())]


def alone(address: Address) -> Topology:
    return Topology((address,))


async def discover(connection: RespConnection, seed: Address) -> Topology:
    """The cluster's masters and slots, as the node behind ``connection`` sees them (CLUSTER SLOTS).

    Every shard is reached with the seed's credentials and TLS settings. Raises ValueError when
    some slot has no master (a cluster that is not ready, or failing over).
    """
    ranges = await connection.call(b"CLUSTER", b"SLOTS")
    shards: list[Address] = []
    slots = [-1] * SLOTS
    for first, last, master, *_replicas in ranges:
        host, port = master[0].decode() or seed.host, int(master[1])
        address = attrs.evolve(seed, host=host, port=port, path=None)
        if address not in shards:
            shards.append(address)
        index = shards.index(address)
        for slot in range(first, last + 1):
            slots[slot] = index
    if -1 in slots:
        raise ValueError(f"the cluster does not serve slot {slots.index(-1)} yet")
    return Topology(tuple(shards), tuple(slots))
