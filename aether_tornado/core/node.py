"""The node: one process's life, the one place that ties the hub, the backends and the router.

It starts and stops the process's part of the cluster, attaches and detaches connections (a
recovering one's snapshot and replay included), announces the process to the operator's view,
and runs the housekeeping: leases, the idle sweep, pings. Who gets a message is the router's
(router.py); the node hands it what the bridge brings and the joins and leaves it decides.
"""

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import orjson

from .. import __version__
from ..bridge import CONTROL_CHANNEL, RESYNC_CHANNEL, Bridge, BridgeDown
from ..bridge.order import Sender
from ..config import Settings
from ..history import History, Page, Recovery
from ..history.proof import Proofs
from ..metrics import Metrics, Recent
from ..presence import Lease, Presence
from ..presence.bans import MAX_BANS, Bans, TooManyBans
from ..v3 import messages
from ..v3.channels import (
    BROADCAST_CHANNEL,
    Channel,
    Position,
    Stream,
    client_channel,
    group_channel,
    split,
    streams_of,
)
from ..v3.errors import (
    OVER_CAPACITY,
    REASON_IDLE,
    REASON_SHUTDOWN,
    RECIPIENT_OFFLINE,
    UNAVAILABLE,
    ProtocolError,
)
from ..v3.schema import utc_timestamp
from ..ws.frames import CloseCode
from . import recovery
from .hub import Added, Connection, Hub
from .inventory import Inventory
from .router import Router, frame_of, lease_of

log = logging.getLogger(__name__)

# How long a connecting client's recovery may wait for Redis before it is told it did not recover.
RECOVERY_DEADLINE = 2.0
# Bytes of the outbound buffer kept for a snapshot's recovery report (positions and proof).
REPORT_BYTES = 1024
# How often, at most, a process announces itself for the operator's view (and its rates are
# read); an announcement holds for three times that: a process that died drops out after it.
ANNOUNCE_SECONDS = 5.0


class Node:
    def __init__(
        self,
        settings: Settings,
        node_id: str,
        hub: Hub,
        bridge: Bridge,
        presence: Presence,
        history: History | None = None,
    ) -> None:
        """Without ``history``, nothing is recorded and no client recovers."""
        self.settings = settings
        self.node_id = node_id
        self.hub = hub
        self.bridge = bridge
        self.presence = presence
        self.history = history
        self._lease_numbers = itertools.count(1)
        self._sender_numbers = itertools.count(1)  # 0 marks what no connection sent
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[None]] = set()
        self._detached = asyncio.Event()
        self._bridge_was_up = False
        # The other processes, by node_id: when each was last seen announced. After Redis comes
        # back (``_restored_at``), one not announced again may not have put its leases back.
        self._peers: dict[str, float] = {}
        self._restored_at: float | None = None
        secret = settings.recovery_secret
        self.proofs = Proofs(None if secret is None else secret.encode())
        self.bans = Bans()  # every handshake checks them: an operator's bans, held here too
        # WebSockets this process holds or is opening: what the connection limit counts.
        self.sockets = 0
        self.started_at = utc_timestamp()
        self._announce_every = min(ANNOUNCE_SECONDS, settings.lease_seconds / 3)
        # How long an announcement holds: a process not seen announced for that long is gone.
        self._announcement_life = 3 * self._announce_every
        self._recent = Recent()  # the last minutes of rates, for the operator's chart
        self.metrics = Metrics(
            connections=lambda: len(hub),
            bridge_up=lambda: float(bridge.link.up),
            bridge_backlog=lambda: float(bridge.backlog_bytes),
            presence_backlog=lambda: float(presence.backlog),
        )
        self.router = Router(
            settings, hub, bridge, presence, history, self.metrics, self.new_sender(), self.spawn, self._peers_missing
        )
        self.inventory = Inventory(node_id, hub, bridge, self._processes_up)
        bridge.link.when_restored(self._announce_restored)

    @property
    def connection_count(self) -> int:
        return len(self.hub)

    @property
    def bridge_state(self) -> str:
        """``memory`` when serving alone, else whether Redis is ``up`` (reached, and the node's
        state put back there) or ``down``."""
        if self.settings.redis_url is None:
            return "memory"
        return "up" if self.bridge.link.up else "down"

    def new_lease_key(self) -> str:
        """A lease key unique across the cluster: this node's id and a counter."""
        return f"{self.node_id}:{next(self._lease_numbers)}"

    def new_sender(self) -> Sender:
        """A connection's mark on what it sends, which keeps its order across a cluster's shards."""
        return Sender(next(self._sender_numbers))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def start(self) -> None:
        await self.bridge.start(self._on_bridge_message, self._wanted_channels, self._on_bridge_up)
        idle_sweep = min(self.settings.idle_timeout / 4, 5.0)
        refresh = self.settings.lease_seconds / 3
        # Expiry runs often, so a dead process's clients leave close to the lease time, not later.
        expiry = min(self.settings.lease_seconds / 10, 5.0)
        self._tasks = [
            asyncio.create_task(self._every(idle_sweep, self._close_idle), name="idle sweep"),
            *(
                [asyncio.create_task(self._every(self.settings.ping_interval, self._ping), name="pings")]
                if self.settings.ping_interval
                else []
            ),
            asyncio.create_task(self._every(refresh, self._refresh_leases), name="lease refresh"),
            asyncio.create_task(self._every(expiry, self._expire_leases), name="lease expiry"),
            asyncio.create_task(self._every(self._announce_every, self._announce), name="announce"),
        ]
        self.spawn(self._announce())

    async def stop(self) -> None:
        """Close every connection with 1001 and wait, up to the shutdown timeout, for them to go."""
        for conn in tuple(self.hub.all()):
            conn.close(CloseCode.GOING_AWAY, REASON_SHUTDOWN)
        deadline = time.monotonic() + self.settings.shutdown_timeout
        while (self.connection_count or self._spawned) and time.monotonic() < deadline:
            self._detached.clear()
            try:
                await asyncio.wait_for(self._detached.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.presence.withdraw(self.node_id)
        await self.bridge.close()
        await self.presence.close()

    # The operator's view.

    def announcement(self) -> dict[str, Any]:
        """What this process tells the others about itself; the rates are those of the last interval."""
        return {
            "node_id": self.node_id,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.started_at,
            "announced_at": utc_timestamp(),
            "connections": len(self.hub),
            "clients": len(self.hub.clients()),
            "groups": len(self.hub.groups()),
            "bridge": self.bridge_state,
            "bridge_backlog_bytes": self.bridge.backlog_bytes,
            "per_second": self.metrics.rates.per_second,
            "recent": self._recent.as_dict(),
        }

    async def members(self, group_id: str) -> list[str]:
        """Who is present in a group, cluster-wide, sorted."""
        return await self.presence.members(group_id)

    async def groups(self, prefix: str, limit: int) -> tuple[list[tuple[str, int]], int]:
        """Up to ``limit`` groups whose id starts with ``prefix``, each with how many are present; and
        how many groups have anyone present in all."""
        return await self.presence.groups(prefix, limit)

    async def group_history(self, group_id: str, limit: int, max_bytes: int, before: Position | None) -> Page | None:
        """A page of a group's recorded messages (see History.latest); None with history off.
        Raises BridgeDown while Redis cannot be reached."""
        if self.history is None:
            return None
        return await self.history.latest(group_channel(group_id), limit, max_bytes, before)

    async def remove_group_history(self, group_id: str) -> None:
        """Drop a group's recorded messages (DELETE /v3/groups/{id}/history); nothing with history
        off. Raises BridgeDown while Redis cannot be reached."""
        if self.history is not None:
            await self.history.remove(group_channel(group_id))
            log.info("history of group %s removed by an operator", group_id)

    async def processes(self) -> list[dict[str, Any]]:
        """Every process that is up, as it last announced itself (this one as it is now), by node_id."""
        found = {self.node_id: self.announcement()}
        for announcement in await self.presence.processes():
            process = orjson.loads(announcement)
            found.setdefault(process["node_id"], process)
        return sorted(found.values(), key=lambda process: process["node_id"])

    async def _announce(self) -> None:
        self._recent.add(len(self.hub), self.metrics.rates.read())
        up = await self.presence.announce(self.node_id, orjson.dumps(self.announcement()), self._announcement_life)
        now = time.monotonic()
        self._peers.update(dict.fromkeys(up, now))
        if not self.presence.down:  # while Redis is away, nobody is seen: nobody is forgotten
            self._peers = {node: seen for node, seen in self._peers.items() if seen > now - self._announcement_life}

    def _announce_restored(self) -> None:
        """Redis is back and this process's state with it: say so now, not at the next interval."""
        self.spawn(self._announce())

    async def _processes_up(self) -> list[str]:
        """The node_ids of the processes announced as up (only this one while Redis is away)."""
        return [orjson.loads(announcement)["node_id"] for announcement in await self.presence.processes()]

    async def _peers_missing(self) -> bool:
        """Whether, shortly after Redis came back, a process this one knew has not announced itself
        again: it may hold clients whose leases it has not put back yet."""
        if self._restored_at is None or time.monotonic() - self._restored_at > self._announcement_life:
            return False
        return bool(self._peers.keys() - set(await self._processes_up()) - {self.node_id})

    # Connections coming and going.

    def attach(self, conn: Connection) -> asyncio.Task[None]:
        """Register a new connection now; the task sends its snapshot, then its join to the group.

        Called in the same callback that writes the 101: once the client sees its connection
        open, messages to its group reach it (held back until its snapshot is out), even one
        sent that instant by another client that saw it open.
        """
        return asyncio.ensure_future(self._attach(conn, self.hub.add(conn)))

    async def _attach(self, conn: Connection, added: Added) -> None:
        """The connection joins its channels before its lease is taken, which reads presence in
        the same step; what arrives meanwhile is held back, so no event between snapshot and
        join is lost."""
        if added.first_in_group:
            await self.bridge.subscribe(group_channel(conn.group_id))
        if added.first_of_client:
            await self.bridge.subscribe(client_channel(conn.client_id))
        if (added.first_in_group or added.first_of_client) and self.history is not None and self.history.echoes:
            # Recorded messages reach this process's connections through these subscriptions only.
            with contextlib.suppress(BridgeDown, TimeoutError):
                await self.bridge.synced()
        if conn.watching:  # no lease: it sees who is present, and nobody sees it
            conn.release(frame_of(messages.snapshot(conn.group_id, await self.presence.members(conn.group_id))))
            log.debug("watching %s", conn.group_id, extra=_log_fields(conn))
            return
        # The snapshot is who was present once the lease was taken: every change after that
        # reaches the connection as an event, held back until the snapshot is out.
        joined = await self.presence.join(lease_of(conn))
        if conn.since is None:
            conn.release(frame_of(messages.snapshot(conn.group_id, joined.members)))
        else:
            self._release_recovered(conn, joined.members, *await self._recover(conn, conn.since, joined.members))
        if joined.first:
            self.router.to_group(conn.group_id, messages.joined(conn.group_id, conn.client_id))
        log.debug("open %s/%s", conn.group_id, conn.client_id, extra=_log_fields(conn))

    async def _recover(
        self, conn: Connection, presented: Sequence[Position | None], members: list[str]
    ) -> tuple[list[Position | None], list[Position | None], list[Recovery] | None]:
        """Read what ``conn`` missed since the positions it presented that its proof vouches for.

        Returns those positions (None where the proof does not vouch: the client cannot show it
        received the stream from there), the floors of its proof, and each stream's recovery
        (None when history is off or Redis could not be reached in time). What is replayed fits
        the outbound buffer beside the snapshot and what was held back so far.
        """
        floors: list[Position | None] = [None] * len(Stream)
        if conn.proof is not None:
            floors = self.proofs.floors(conn.proof, conn.group_id, conn.client_id, len(Stream)) or floors
        since = recovery.vouched(presented, floors)
        if self.history is None:
            return since, floors, None
        budget = (
            self.settings.outbound_buffer_bytes
            - len(frame_of(messages.snapshot(conn.group_id, members)))
            - REPORT_BYTES
            - conn.held_bytes
        )
        streams = streams_of(conn.group_id, conn.client_id)
        try:
            async with asyncio.timeout(RECOVERY_DEADLINE):
                await self.bridge.synced()
                recoveries = await self.history.recover(list(zip(streams, since, strict=True)), max(0, budget))
        except (BridgeDown, TimeoutError):
            log.debug("%s/%s could not recover: Redis is unreachable", conn.group_id, conn.client_id)
            return since, floors, None
        return since, floors, recoveries

    def _release_recovered(
        self,
        conn: Connection,
        members: list[str],
        since: list[Position | None],
        floors: list[Position | None],
        recoveries: list[Recovery] | None,
    ) -> None:
        """Send ``conn`` its snapshot with the recovery report, what it missed, and then what
        came live meanwhile (see recovery.plan).

        The connection is in the hub already and its channels subscribed: what is published
        after the history is read reaches it live, and what it gets twice at the seam it skips
        by position.
        """
        if recoveries is None:
            self.metrics.recoveries.inc("not_recovered")
            snapshot = frame_of(messages.snapshot(conn.group_id, members, recovery.NOT_RECOVERED))
            conn.release_recovered(snapshot, [], [None] * len(Stream))
            return
        # What came live meanwhile may have grown since the history was read: the replay must
        # fit beside it now.
        room = self.settings.outbound_buffer_bytes - conn.held_bytes - REPORT_BYTES
        room -= len(frame_of(messages.snapshot(conn.group_id, members)))
        replay = recovery.plan(recoveries, since, room, conn.first_held)
        self.metrics.recoveries.inc("recovered" if replay.complete else "not_recovered")
        proof = self.proofs.issue(conn.group_id, conn.client_id, replay.floors(floors))
        snapshot = frame_of(messages.snapshot(conn.group_id, members, replay.report(proof)))
        conn.release_recovered(snapshot, replay.missed, replay.replayed)

    async def detach(self, conn: Connection) -> None:
        """Forget a closed connection; the group hears ``leave`` if it was the client's last."""
        removed = self.hub.remove(conn)
        try:
            if removed.last_in_group:
                await self.bridge.unsubscribe(group_channel(conn.group_id))
            if removed.last_of_client:
                await self.bridge.unsubscribe(client_channel(conn.client_id))
            if not conn.watching and await self.presence.leave(lease_of(conn)):
                self.router.to_group(conn.group_id, messages.left(conn.group_id, conn.client_id, "closed"))
        finally:
            self._detached.set()
        log.debug("closed %s/%s", conn.group_id, conn.client_id, extra=_log_fields(conn))

    async def disconnect(self, client_id: str, code: int, reason: str, ban_seconds: float = 0) -> None:
        """Close every connection of ``client_id`` on every process (POST /v3/clients/{id}/disconnect),
        and with ``ban_seconds`` refuse its handshakes on every process for that long.

        Raises ProtocolError: ``recipient_offline`` when, without a ban, it has no connection
        anywhere; ``unavailable`` when a ban cannot reach the other processes (Redis is away),
        or ``over_capacity`` when MAX_BANS are in force: no ban is then taken.
        """
        local = list(self.hub.client(client_id))
        until = None
        if ban_seconds:
            until = time.time() + ban_seconds
            if not self.bans.has_room(client_id):
                raise ProtocolError(OVER_CAPACITY, f"No more bans can be taken: {MAX_BANS} are in force.")
            try:
                await self.presence.ban(client_id, until)
                self.bans.add(client_id, until)
            except ConnectionError:
                raise ProtocolError(
                    UNAVAILABLE, "Redis cannot be reached now, so a ban would hold on one process only; retry later."
                ) from None
        elif not local and not await self.presence.present_anywhere(client_id):
            problem = [{"field": "client_id", "problem": "has no open connection"}]
            raise ProtocolError(RECIPIENT_OFFLINE, f"{client_id} has no open connection.", problem)
        for conn in local:
            conn.close(code, reason)
        order = orjson.dumps({"disconnect": client_id, "code": code, "reason": reason, "until": until})
        with contextlib.suppress(BridgeDown):  # at most once, as any message across an outage
            await self.bridge.publish(CONTROL_CHANNEL, order)

    async def lift_ban(self, client_id: str) -> bool:
        """End ``client_id``'s ban on every process (DELETE /v3/clients/{id}/ban); whether one was
        in force here. Raises ProtocolError ``unavailable`` while Redis cannot be reached."""
        try:
            await self.presence.unban(client_id)
        except ConnectionError:
            raise ProtocolError(
                UNAVAILABLE, "Redis cannot be reached now, so the ban would end on one process only; retry later."
            ) from None
        lifted = self.bans.lift(client_id)
        with contextlib.suppress(BridgeDown):  # the others read the store again after an outage
            await self.bridge.publish(CONTROL_CHANNEL, orjson.dumps({"unban": client_id}))
        log.info("ban of %s lifted by an operator", client_id)
        return lifted

    def _obey(self, payload: bytes) -> None:
        """An order another process published on the control channel: a disconnect (with a ban,
        maybe), a ban lifted, or a question about connections (or its answer) for the operator's
        view."""
        try:
            order = orjson.loads(payload)
            if "ask" in order or "answer" in order:
                self.inventory.obey(order)
                return
            if "unban" in order:
                self.bans.lift(order["unban"])
                return
            client_id, code, reason, until = order["disconnect"], order["code"], order["reason"], order.get("until")
            if until is not None:
                self.bans.add(client_id, float(until))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, TooManyBans):
            log.warning("an order on the control channel was not understood: %r", payload[:200])
            return
        for conn in list(self.hub.client(client_id)):
            conn.close(code, reason)
        log.info("disconnected %s on an operator's order (%d %s)", client_id, code, reason)

    async def _load_bans(self) -> None:
        """Hold the bans the store holds: those ordered, or lifted, while this process was away.
        While it cannot be read, the bans held here stay."""
        with contextlib.suppress(ConnectionError):
            self.bans.replace(await self.presence.bans(MAX_BANS))

    def _on_bridge_message(
        self, channel: Channel, payload: bytes, published_at: float, position: Position | None, own: bool
    ) -> None:
        stream, name = split(channel)
        if stream is not None:
            self.router.deliver_published(channel, stream, name, payload, position, own)
            self.metrics.bridge_latency.observe(max(0.0, time.time() - published_at))
        elif channel == RESYNC_CHANNEL:
            self.spawn(self._send_snapshots())
        elif channel == CONTROL_CHANNEL:
            self._obey(payload)
        else:
            log.warning("message on unknown bridge channel %s dropped", channel)

    def _wanted_channels(self) -> list[Channel]:
        """The bridge channels the hub needs now: resubscribed from here after a reconnect."""
        return [
            BROADCAST_CHANNEL,
            *(group_channel(group_id) for group_id in self.hub.groups()),
            *(client_channel(client_id) for client_id in self.hub.clients()),
        ]

    async def _on_bridge_up(self) -> None:
        """After (re)connecting: re-register presence silently, then have everyone resync.

        A clean start (first connection, no clients yet) has no snapshots to repair, and a
        resync notice would send every client of every other process a needless one. The
        announcement once the bridge is up again (``_announce_restored``) tells the others that
        this process's leases are back, with its bridge up.
        """
        clean_start = not self._bridge_was_up and not len(self.hub)
        if self._bridge_was_up:  # the others seen before may be putting themselves back too
            self._restored_at = time.monotonic()
            self._peers = dict.fromkeys(self._peers, self._restored_at)
        self._bridge_was_up = True
        self.router.forget_echoes()
        if self.history is not None and self.settings.recovery_secret is None:
            self.proofs.secret = await self.history.share_secret(self.proofs.secret)
        if not clean_start or self.presence.down:
            await self.presence.resync()
        await self._load_bans()
        if clean_start:
            return
        with contextlib.suppress(BridgeDown):
            self.bridge.send(RESYNC_CHANNEL, b"")
        await self._send_snapshots()

    async def _send_snapshots(self) -> None:
        for group_id in list(self.hub.groups()):
            frame = frame_of(messages.snapshot(group_id, await self.presence.members(group_id)))
            self.metrics.deliveries.inc(amount=self.hub.deliver(self.hub.group(group_id), frame))

    def _leases(self) -> list[Lease]:
        return [lease_of(conn) for conn in self.hub.all() if not conn.watching]

    # Housekeeping.

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` every ``seconds``; a failure is logged once until a step succeeds."""
        failing = False
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception:
                if not failing:
                    log.exception("%s failed; retrying every %.1f s", step.__name__, seconds)
                failing = True
            else:
                if failing:
                    log.warning("%s works again", step.__name__)
                failing = False

    async def _close_idle(self) -> None:
        cutoff = time.monotonic() - self.settings.idle_timeout
        for conn in tuple(self.hub.all()):
            if conn.last_seen < cutoff:
                log.debug("idle %s/%s", conn.group_id, conn.client_id, extra=_log_fields(conn))
                conn.close(CloseCode.GOING_AWAY, REASON_IDLE)

    async def _ping(self) -> None:
        """One sweep for every connection, instead of a ping task per connection (2 KB each)."""
        for conn in tuple(self.hub.all()):
            conn.keepalive()

    async def _refresh_leases(self) -> None:
        await self.router.refresh(self._leases())
        if self.history is not None:
            await self.history.keep(self._wanted_channels())

    async def _expire_leases(self) -> None:
        """Announce clients whose leases ran out: those of a process that died, cluster-wide."""
        for group_id, client_id in await self.presence.expire():
            self.router.to_group(group_id, messages.left(group_id, client_id, "timeout"))


def _log_fields(conn: Connection) -> dict[str, str]:
    """What identifies a connection in a log line: its id (the lease key), group and client."""
    return {"conn": conn.lease_key, "group_id": conn.group_id, "client_id": conn.client_id}
