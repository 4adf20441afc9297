"""The node: the one place that ties the hub, the bridge and presence together.

It owns the routing policy (who gets a message), presence events, lease refresh, the
idle sweep and shutdown. Handlers hand it decoded messages and nothing else.
"""

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Sequence
from typing import Any, cast

import orjson

from .. import __version__
from ..bridge import CONTROL_CHANNEL, RESYNC_CHANNEL, Bridge, BridgeDown
from ..bridge.order import Sender
from ..config import Settings
from ..history import Appended, History, Page, Recovery
from ..history.proof import Proofs
from ..metrics import Metrics
from ..presence import Lease, Presence
from ..v3 import messages
from ..v3.channels import (
    BROADCAST_CHANNEL,
    Channel,
    Position,
    Stream,
    channel_of,
    client_channel,
    group_channel,
    split,
    streams_of,
)
from ..v3.errors import (
    FORBIDDEN,
    INVALID_MESSAGE,
    RATE_LIMITED,
    REASON_IDLE,
    REASON_SHUTDOWN,
    RECIPIENT_OFFLINE,
    UNAVAILABLE,
    ProtocolError,
)
from ..v3.schema import VisionId, WSMessageV3, encode, utc_timestamp
from ..ws.frames import CloseCode, text_frame
from . import recovery
from .hub import Added, Connection, Hub, Positioned

log = logging.getLogger(__name__)

# How long a presence query may take when deciding between recipient_offline and unavailable.
PRESENCE_DEADLINE = 1.0
# A client whose last connection just closed is unsubscribed a moment before its lease is
# dropped: a direct message that nobody took while presence still shows the client asks
# presence again after SETTLE_FIRST seconds, then twice as long each time, up to SETTLE_LAST.
SETTLE_FIRST = 0.002
SETTLE_LAST = 0.128
# How long a connecting client's recovery may wait for Redis before it is told it did not recover.
RECOVERY_DEADLINE = 2.0
# Bytes of the outbound buffer kept for a snapshot's recovery report (positions and proof).
REPORT_BYTES = 1024
# What recording a message costs from its sender's record budget besides its size: about what
# Redis keeps for a stream entry besides the message (49 bytes measured), so small ones count too.
RECORD_COST = 64
# How often, at most, a process announces itself for the operator's view (and its rates are
# read); an announcement holds for three times that: a process that died drops out after it.
ANNOUNCE_SECONDS = 5.0
# What is left of routing a message once it must wait for Redis, or None when it is done: a
# coroutine, or a future whose callbacks have done the work once it is settled.
Rest = Coroutine[Any, Any, None] | asyncio.Future[Any] | None


def frame_of(message: WSMessageV3) -> bytes:
    """Encode a message and frame it, once for all its receivers."""
    return text_frame(encode(message))


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
        # The backend API sends as one more connection: one message routed at a time, through
        # its sender's gate.
        self._api_sender = self.new_sender()
        self._api_turn = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[None]] = set()
        self._detached = asyncio.Event()
        self._bridge_was_up = False
        # This process's recorded messages on their way back from its subscriber, by (channel,
        # "epoch:offset"): the message, to deliver from here if the subscriber is lost before it
        # brings it (its reply came first), or None (it came back before its reply).
        self._echoes: dict[tuple[Channel, Position], bytes | None] = {}
        # The other processes, by node_id: when each was last seen announced. After Redis comes
        # back (``_restored_at``), one not announced again may not have put its leases back.
        self._peers: dict[str, float] = {}
        self._restored_at: float | None = None
        secret = settings.recovery_secret
        self.proofs = Proofs(None if secret is None else secret.encode())
        # WebSockets this process holds or is opening: what the connection limit counts.
        self.sockets = 0
        self.started_at = utc_timestamp()
        self._announce_every = min(ANNOUNCE_SECONDS, settings.lease_seconds / 3)
        # How long an announcement holds: a process not seen announced for that long is gone.
        self._announcement_life = 3 * self._announce_every
        self.metrics = Metrics(
            connections=lambda: len(hub),
            bridge_up=lambda: float(bridge.up),
            bridge_backlog=lambda: float(bridge.backlog_bytes),
            presence_backlog=lambda: float(presence.backlog),
        )

    @property
    def connection_count(self) -> int:
        return len(self.hub)

    @property
    def bridge_state(self) -> str:
        """``memory`` when serving alone, else whether the Redis bridge is ``up`` or ``down``."""
        if self.settings.redis_url is None:
            return "memory"
        return "up" if self.bridge.up and not self.presence.down else "down"

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

    async def processes(self) -> list[dict[str, Any]]:
        """Every process that is up, as it last announced itself (this one as it is now), by node_id."""
        found = {self.node_id: self.announcement()}
        for announcement in await self.presence.processes():
            process = orjson.loads(announcement)
            found.setdefault(process["node_id"], process)
        return sorted(found.values(), key=lambda process: process["node_id"])

    async def _announce(self) -> None:
        self.metrics.rates.read()
        up = await self.presence.announce(self.node_id, orjson.dumps(self.announcement()), self._announcement_life)
        now = time.monotonic()
        self._peers.update(dict.fromkeys(up, now))
        if not self.presence.down:  # while Redis is away, nobody is seen: nobody is forgotten
            self._peers = {node: seen for node, seen in self._peers.items() if seen > now - self._announcement_life}

    async def _peers_missing(self) -> bool:
        """Whether, shortly after Redis came back, a process this one knew has not announced itself
        again: it may hold clients whose leases it has not put back yet."""
        if self._restored_at is None or time.monotonic() - self._restored_at > self._announcement_life:
            return False
        up = {orjson.loads(announcement)["node_id"] for announcement in await self.presence.processes()}
        return bool(self._peers.keys() - up - {self.node_id})

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
        # The snapshot is who was present once the lease was taken: every change after that
        # reaches the connection as an event, held back until the snapshot is out.
        joined = await self.presence.join(_lease(conn))
        if conn.since is None:
            conn.release(frame_of(messages.snapshot(conn.group_id, joined.members)))
        else:
            self._release_recovered(conn, joined.members, *await self._recover(conn, conn.since, joined.members))
        if joined.first:
            self._to_group(conn.group_id, messages.joined(conn.group_id, conn.client_id))
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
            if await self.presence.leave(_lease(conn)):
                self._to_group(conn.group_id, messages.left(conn.group_id, conn.client_id, "closed"))
        finally:
            self._detached.set()
        log.debug("closed %s/%s", conn.group_id, conn.client_id, extra=_log_fields(conn))

    # Messages from clients.

    def receive(self, conn: Connection, message: WSMessageV3) -> Rest:
        """Route one valid message from ``conn``; problems come back as ProtocolError.

        What needs no answer from Redis is done here and now. The rest (a heartbeat's lease, a
        presence query, a direct message's receiver count) is returned, for the caller to run
        before the sender's next message.
        """
        _check_identity(conn, message)
        if message.target == "broadcast":
            self._check_broadcast(conn)
        self.metrics.messages_in.inc(message.msg_type, message.target)
        if message.msg_type == "heartbeat":
            return self._answer_heartbeat(conn, message)
        if message.msg_type == "presence":
            return self._answer_presence(conn)
        stamped = _stamped(message, conn.client_id, conn.group_id)
        if message.target == "echo":
            self._send_one(conn, stamped)
            return None
        payload = encode(stamped)
        if self.history is not None and not conn.record_budget.take(time.monotonic(), len(payload) + RECORD_COST):
            rate = self.settings.record_byte_rate
            raise ProtocolError(
                RATE_LIMITED,
                f"Too many bytes to record for recovery: at most {rate:g} a second; this message was dropped.",
            )
        receivers = self._route(stamped, payload, conn.sender)
        if receivers is None or message.target != "direct":
            return receivers  # in flight until recorded and delivered here
        assert message.to_id is not None  # the schema requires it for target 'direct'
        answered = asyncio.get_running_loop().create_future()
        receivers.add_done_callback(functools.partial(self._answer_unreached, conn, message.to_id, answered))
        return answered

    def shard_of(self, conn: Connection, message: WSMessageV3) -> int | None:
        """The Redis shard that carries ``message``, or None for one that stays in this process."""
        channel = channel_of(message, conn.group_id)
        return None if channel is None else self.bridge.shard_of(channel)

    def _answer_unreached(
        self, conn: Connection, to_id: str, answered: asyncio.Future[None], receivers: asyncio.Future[int]
    ) -> None:
        """Once the other processes' count is in: nothing, unavailable, or (after presence) an answer."""
        if receivers.exception() is None and receivers.result():
            answered.set_result(None)
        elif receivers.exception() is not None:
            conn.refuse(_unavailable(to_id))
            answered.set_result(None)
        else:
            self.spawn(self._answer_nobody_took(conn, to_id, answered))

    async def _answer_nobody_took(self, conn: Connection, to_id: str, answered: asyncio.Future[None]) -> None:
        try:
            conn.refuse(await self._nobody_took(to_id))
        finally:
            answered.set_result(None)

    async def _nobody_took(self, to_id: str) -> ProtocolError:
        """No process took a direct message: ``recipient_offline`` once presence agrees.

        The processes' subscriptions and presence are two views of where a client is. When a
        connection closes they disagree for an instant (its process unsubscribes, then drops
        the lease): that is waited out, asking presence again until SETTLE_LAST. A lease that
        stays without a subscription belongs to a process putting itself back after a Redis
        outage, and so may a client of a process that has not announced itself since Redis
        came back (it would have lost its leases with Redis): both are ``unavailable``, as is a
        presence that does not answer within PRESENCE_DEADLINE.
        """
        try:
            async with asyncio.timeout(PRESENCE_DEADLINE):
                wait = SETTLE_FIRST
                while await self.presence.present_anywhere(to_id):
                    if wait > SETTLE_LAST:
                        return _unavailable(to_id)
                    await asyncio.sleep(wait)
                    wait *= 2
                if await self._peers_missing():
                    return _unavailable(to_id)
        except TimeoutError:
            return _unavailable(to_id)
        return ProtocolError(
            RECIPIENT_OFFLINE,
            f"{to_id} has no open connection.",
            [{"field": "to_id", "problem": "has no open connection"}],
        )

    async def _answer_heartbeat(self, conn: Connection, message: WSMessageV3) -> None:
        await self._refresh([_lease(conn)])
        self._send_one(conn, messages.heartbeat_reply(conn.group_id, message))

    async def _answer_presence(self, conn: Connection) -> None:
        self._send_one(conn, messages.snapshot(conn.group_id, await self.presence.members(conn.group_id)))

    async def publish(self, message: WSMessageV3) -> str:
        """Route a backend's message (POST /v3/publish); returns its ``sent_at``.

        A trusted backend may speak as anyone: ``from_id`` and ``group_id`` are kept as given.
        """
        problems = []
        if message.target == "echo" or message.msg_type in ("heartbeat", "presence"):
            problems.append({"field": "target", "problem": "required to be 'group', 'direct' or 'broadcast'"})
        if message.target == "group" and message.group_id is None:
            problems.append({"field": "group_id", "problem": "required for target 'group'"})
        if problems:
            text = "; ".join(f"{item['field']} is {item['problem']}" for item in problems)
            raise ProtocolError(INVALID_MESSAGE, text, problems)
        self.metrics.messages_in.inc(message.msg_type, message.target)
        stamped = _stamped(message, message.from_id, message.group_id)
        receivers = await self._route_for_the_api(stamped, encode(stamped))
        if receivers is not None:
            with contextlib.suppress(BridgeDown):
                await receivers
        if receivers is not None and message.target == "direct":
            assert message.to_id is not None
            if receivers.exception() is not None:
                raise _unavailable(message.to_id)
            if not receivers.result():
                raise await self._nobody_took(message.to_id)
        assert stamped.sent_at is not None
        return stamped.sent_at

    async def disconnect(self, client_id: str, code: int, reason: str) -> None:
        """Close every connection of ``client_id`` on every process (POST /v3/clients/{id}/disconnect).

        Raises ProtocolError ``recipient_offline`` when it has none anywhere. The client may
        connect again: to keep it out, stop issuing it tokens.
        """
        local = list(self.hub.client(client_id))
        if not local and not await self.presence.present_anywhere(client_id):
            problem = [{"field": "client_id", "problem": "has no open connection"}]
            raise ProtocolError(RECIPIENT_OFFLINE, f"{client_id} has no open connection.", problem)
        for conn in local:
            conn.close(code, reason)
        order = orjson.dumps({"disconnect": client_id, "code": code, "reason": reason})
        with contextlib.suppress(BridgeDown):  # at most once, as any message across an outage
            await self.bridge.publish(CONTROL_CHANNEL, order)

    def _obey(self, payload: bytes) -> None:
        """An order another process published on the control channel."""
        try:
            order = orjson.loads(payload)
            client_id, code, reason = order["disconnect"], order["code"], order["reason"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("an order on the control channel was not understood: %r", payload[:200])
            return
        for conn in list(self.hub.client(client_id)):
            conn.close(code, reason)
        log.info("disconnected %s on an operator's order (%d %s)", client_id, code, reason)

    async def _route_for_the_api(self, message: WSMessageV3, payload: bytes) -> asyncio.Future[int] | None:
        """Route a backend's message as this process's one API sender, through the same gate as a
        connection's: a backend that waits for each answer sees its messages arrive in order, on a
        cluster too."""
        async with self._api_turn:
            channel = channel_of(message, message.group_id)
            shard = None if channel is None else self.bridge.shard_of(channel)
            waiting = self._api_sender.turn(shard)
            if waiting is not None:
                await waiting
            receivers = self._route(message, payload, self._api_sender)
            if receivers is not None:
                self._api_sender.track(receivers, shard)
        return receivers

    def _check_broadcast(self, conn: Connection) -> None:
        """A client broadcast reaches everybody: it needs the right, and has a budget of its own."""
        if not self.settings.allow_client_broadcast:
            why = "broadcast is disabled for clients"
        elif self.settings.broadcast_requires_grant and not conn.may_broadcast:
            why = "broadcast needs a token that grants it"
        elif not conn.broadcast_budget.take(time.monotonic()):
            rate = self.settings.broadcast_rate
            raise ProtocolError(RATE_LIMITED, f"Too many broadcasts: at most {rate:g} a second; this one was dropped.")
        else:
            return
        raise ProtocolError(FORBIDDEN, f"Not allowed: {why}.", [{"field": "target", "problem": why}])

    def error_frame(self, conn: Connection, problem: ProtocolError) -> bytes:
        return frame_of(messages.error(conn.group_id, problem))

    # Delivery: local sockets first, then one copy for the other processes.

    def _route(self, message: WSMessageV3, payload: bytes, sender: Sender | None) -> asyncio.Future[int] | None:
        """Deliver a stamped group, direct or broadcast message (``payload`` is it encoded); None once done.

        A direct message that no connection of this process took returns how many other
        processes received it, to be checked by the caller. A message being recorded returns
        a future that is done once it is (and delivered here), and so does, on a cluster, a
        connection's message until Redis has taken it. ``sender`` is the sending connection's.
        """
        if message.target == "direct":
            return self._to_client(message, payload, sender)
        channel = BROADCAST_CHANNEL if message.target == "broadcast" else group_channel(cast(str, message.group_id))
        if self.history is not None:
            recorded = self._record(channel, message, payload, sender)
            return None if recorded.done() else recorded
        return self._send(channel, self._local(channel), message, sender, payload)

    def _send_one(self, conn: Connection, message: WSMessageV3) -> None:
        conn.reply(frame_of(message))
        self.metrics.deliveries.inc()

    def _local(self, channel: Channel) -> Collection[Connection]:
        """This process's connections that receive what is published to ``channel``."""
        return self._members(*split(channel))

    def _members(self, stream: Stream | None, name: str) -> Collection[Connection]:
        """This process's connections that receive a stream: of one group, one client, or all."""
        if stream is Stream.GROUP:
            return self.hub.group(name)
        if stream is Stream.CLIENT:
            return self.hub.client(name)
        return self.hub.all()

    def _to_client(self, message: WSMessageV3, payload: bytes, sender: Sender | None) -> asyncio.Future[int] | None:
        to_id = cast(str, message.to_id)  # the schema requires it for target 'direct'
        channel = client_channel(to_id)
        local = self.hub.client(to_id)
        if self.history is not None:
            # Recorded for a client connected here; for another, only if it is known anywhere.
            recorded = self._record(channel, message, payload, sender, None if local else to_id)
            if recorded.done() and recorded.exception() is None and recorded.result():
                return None
            return recorded
        if local:
            return self._send(channel, local, message, sender, payload)
        try:
            return self.bridge.publish(channel, self._deliver(local, message, payload), sender)
        except BridgeDown:
            raise _unavailable(to_id) from None

    def _record(
        self,
        channel: Channel,
        message: WSMessageV3,
        payload: bytes,
        sender: Sender | None,
        recipient: str | None = None,
    ) -> asyncio.Future[int]:
        """Record a message in its channel's history, then deliver it here, with its position.

        The future gets how many connections here and processes elsewhere received it; for a
        direct message that reached nobody while Redis is away, it fails with BridgeDown. In
        memory it is done before this returns. Messages are delivered in the order recorded,
        and a sender's are recorded in the order it sent them. ``recipient``: see History.append.
        """
        assert self.history is not None
        self.metrics.messages_out.inc(message.msg_type, message.target)
        recorded: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        to_sender = message.target != "direct" or message.to_id == message.from_id
        then = functools.partial(self._recorded, channel, payload, to_sender, recorded)
        try:
            self.history.append(channel, payload, then, sender, recipient)
        except BridgeDown as error:
            then(error)
        return recorded

    def _recorded(
        self, channel: Channel, payload: bytes, to_sender: bool, recorded: asyncio.Future[int], outcome: object
    ) -> None:
        """Once a message is recorded, deliver it here (or let the bridge), then settle ``recorded``.

        In Redis, the message comes back on this process's subscriber, where it is delivered in
        the order recorded among everyone's: if the sender receives it (``to_sender``),
        ``recorded`` is settled once it has been delivered, so an answer to the sender (an echo,
        say) cannot overtake it. Should the subscriber be lost before it brings the message, it
        is delivered from here. Not recorded (Redis away, or a direct message to a client
        nobody knows), it is delivered here without a position.
        """
        assert self.history is not None
        stream, name = split(channel)
        local = self._members(stream, name)
        position = outcome.position if isinstance(outcome, Appended) else None
        if isinstance(outcome, Appended) and position is not None and self.history.echoes:
            receivers = len(local) + outcome.receivers
            key = (channel, position)
            if key in self._echoes:  # back before its reply: delivered already
                del self._echoes[key]
            elif self.bridge.holds(channel):
                self._echoes[key] = payload  # not back yet
                settle = recorded if to_sender else None
                self.bridge.after_pushes(channel, functools.partial(self._echoed, key, settle, receivers))
                if to_sender:
                    return
            recorded.set_result(receivers)
            return
        positioned = None if position is None else _positioned(channel, position, payload)
        count = self.hub.deliver(local, text_frame(payload), positioned)
        self.metrics.deliveries.inc(amount=count)
        if isinstance(outcome, Appended):
            recorded.set_result(count + outcome.receivers)
        elif count or stream is not Stream.CLIENT:
            recorded.set_result(count)
        else:
            recorded.set_exception(BridgeDown())

    def _echoed(self, key: tuple[Channel, Position], settle: asyncio.Future[int] | None, receivers: int) -> None:
        """Whatever the subscriber brought before this point has been delivered: a recorded message
        of this process's it did not bring (it was lost meanwhile) is delivered from here."""
        payload = self._echoes.pop(key, None)
        if payload is not None:
            channel, position = key
            count = self.hub.deliver(self._local(channel), text_frame(payload), _positioned(channel, position, payload))
            self.metrics.deliveries.inc(amount=count)
        if settle is not None:
            settle.set_result(receivers)

    def _to_group(self, group_id: str, message: WSMessageV3) -> None:
        self._send(group_channel(group_id), self.hub.group(group_id), message)

    def _send(
        self,
        channel: Channel,
        local: Iterable[Connection],
        message: WSMessageV3,
        sender: Sender | None = None,
        payload: bytes | None = None,
    ) -> asyncio.Future[int] | None:
        """Deliver to local receivers now, then one copy to the other processes, not waiting.

        On a cluster, a connection's message returns a future that gets the local receivers'
        count once Redis has taken it: the connection's next message to another shard waits.
        """
        receivers = tuple(local)
        payload = self._deliver(receivers, message, payload)
        with contextlib.suppress(BridgeDown):  # at most once: local receivers already have it
            if sender is None or not self.bridge.sharded:
                self.bridge.send(channel, payload)
                return None
            taken = asyncio.get_running_loop().create_future()
            published = self.bridge.publish(channel, payload, sender)
            published.add_done_callback(functools.partial(_settle_taken, taken, len(receivers)))
            return taken
        return None

    def _deliver(self, local: Iterable[Connection], message: WSMessageV3, payload: bytes | None = None) -> bytes:
        """Encode once (unless ``payload`` is it encoded), frame once for the local receivers if
        any; return the other processes' copy."""
        payload = encode(message) if payload is None else payload
        self.metrics.messages_out.inc(message.msg_type, message.target)
        receivers = tuple(local)
        if receivers:
            self.metrics.deliveries.inc(amount=self.hub.deliver(receivers, text_frame(payload)))
        return payload

    def _on_bridge_message(
        self, channel: Channel, payload: bytes, published_at: float, position: Position | None, own: bool
    ) -> None:
        stream, name = split(channel)
        if stream is None:
            if channel == RESYNC_CHANNEL:
                self.spawn(self._send_snapshots())
            elif channel == CONTROL_CHANNEL:
                self._obey(payload)
            else:
                log.warning("message on unknown bridge channel %s dropped", channel)
            return
        positioned = None
        if position is not None:
            if own:  # one of this process's, back after its reply (expected) or before it (noted)
                key = (channel, position)
                if key in self._echoes:
                    del self._echoes[key]
                else:
                    self._echoes[key] = None
            positioned = Positioned(stream, position.epoch, position.offset, payload)
        receivers = self._members(stream, name)
        self.metrics.deliveries.inc(amount=self.hub.deliver(receivers, text_frame(payload), positioned))
        self.metrics.bridge_latency.observe(max(0.0, time.time() - published_at))

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
        announcement that follows tells the others that this process's leases are back.
        """
        clean_start = not self._bridge_was_up and not len(self.hub)
        if self._bridge_was_up:  # the others seen before may be putting themselves back too
            self._restored_at = time.monotonic()
            self._peers = dict.fromkeys(self._peers, self._restored_at)
        self._bridge_was_up = True
        self._echoes.clear()  # what the lost connections left: their replies are not coming
        if self.history is not None and self.settings.recovery_secret is None:
            self.proofs.secret = await self.history.share_secret(self.proofs.secret)
        if not clean_start or self.presence.down:
            await self.presence.resync()
        await self._announce()
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
        return [_lease(conn) for conn in self.hub.all()]

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
        await self._refresh(self._leases())
        if self.history is not None:
            await self.history.keep(self._wanted_channels())

    async def _refresh(self, leases: list[Lease]) -> None:
        """Extend leases; a client whose lease had already expired (and left) joins again."""
        for lease in await self.presence.refresh(leases):
            self._to_group(lease.group_id, messages.joined(lease.group_id, lease.client_id))

    async def _expire_leases(self) -> None:
        """Announce clients whose leases ran out: those of a process that died, cluster-wide."""
        for group_id, client_id in await self.presence.expire():
            self._to_group(group_id, messages.left(group_id, client_id, "timeout"))


def _stamped(message: WSMessageV3, from_id: VisionId | None, group_id: VisionId | None) -> WSMessageV3:
    """The message as the server sends it: sender and group filled in, ``sent_at`` now."""
    return WSMessageV3(
        msg_type=message.msg_type,
        target=message.target,
        from_id=from_id,
        to_id=message.to_id,
        group_id=group_id,
        cmd=message.cmd,
        msg=message.msg,
        payload=message.payload,
        sent_at=utc_timestamp(),
    )


def _log_fields(conn: Connection) -> dict[str, str]:
    """What identifies a connection in a log line: its id (the lease key), group and client."""
    return {"conn": conn.lease_key, "group_id": conn.group_id, "client_id": conn.client_id}


def _lease(conn: Connection) -> Lease:
    return Lease(conn.group_id, conn.client_id, conn.lease_key)


def _positioned(channel: Channel, position: Position, payload: bytes) -> Positioned:
    """A recorded message of ``channel`` at ``position`` as recovering clients get it."""
    stream, _ = split(channel)
    assert stream is not None  # only client channels are recorded
    return Positioned(stream, position.epoch, position.offset, payload)


def _check_identity(conn: Connection, message: WSMessageV3) -> None:
    """A client may restate its own from_id and group_id, never claim another's."""
    problems = []
    if message.from_id is not None and message.from_id != conn.client_id:
        problems.append({"field": "from_id", "problem": "not this connection's client_id"})
    if message.group_id is not None and message.group_id != conn.group_id:
        problems.append({"field": "group_id", "problem": "not this connection's group"})
    if problems:
        fields = " and ".join(problem["field"] for problem in problems)
        raise ProtocolError(FORBIDDEN, f"{fields} must be your own or left out.", problems)


def _settle_taken(taken: asyncio.Future[int], local: int, published: asyncio.Future[int]) -> None:
    """A connection's message, local receivers and all, is out of its hands: it went, or Redis is lost."""
    others = 0 if published.exception() is not None else published.result()
    taken.set_result(local + others)


def _unavailable(to_id: str) -> ProtocolError:
    return ProtocolError(UNAVAILABLE, f"{to_id} is not on this server process and the others cannot be reached now.")
