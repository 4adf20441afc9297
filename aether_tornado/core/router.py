"""The router: who gets a message, and what its sender is told.

Local sockets first, then one copy for the other processes; with history on, a message is
recorded on the way and delivered here in the order recorded. A client's message comes from
its session (``receive``), a backend's from the API (``publish``), another process's from the
bridge (``deliver_published``); the order of one sender's messages is kept by its gate
(bridge/order.py). The router owns no connection and no timer: the node does.
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from typing import Any, cast

from ..bridge import Bridge, BridgeDown
from ..bridge.order import Sender
from ..config import Settings
from ..history import Appended, History
from ..metrics import Metrics
from ..presence import Lease, Presence
from ..v3 import messages
from ..v3.channels import BROADCAST_CHANNEL, Channel, Position, Stream, channel_of, client_channel, group_channel, split
from ..v3.errors import FORBIDDEN, INVALID_MESSAGE, RATE_LIMITED, RECIPIENT_OFFLINE, UNAVAILABLE, ProtocolError
from ..v3.schema import VisionId, WSMessageV3, encode, utc_timestamp
from ..ws.frames import text_frame
from .hub import Connection, Hub, Positioned

log = logging.getLogger(__name__)

# How long a presence query may take when deciding between recipient_offline and unavailable.
PRESENCE_DEADLINE = 1.0
# A client whose last connection just closed is unsubscribed a moment before its lease is
# dropped: a direct message that nobody took while presence still shows the client asks
# presence again after SETTLE_FIRST seconds, then twice as long each time, up to SETTLE_LAST.
SETTLE_FIRST = 0.002
SETTLE_LAST = 0.128
# What recording a message costs from its sender's record budget besides its size: about what
# Redis keeps for a stream entry besides the message (49 bytes measured), so small ones count too.
RECORD_COST = 64
# What is left of routing a message once it must wait for Redis, or None when it is done: a
# coroutine, or a future whose callbacks have done the work once it is settled.
Rest = Coroutine[Any, Any, None] | asyncio.Future[Any] | None


def frame_of(message: WSMessageV3) -> bytes:
    """Encode a message and frame it, once for all its receivers."""
    return text_frame(encode(message))


class Router:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        bridge: Bridge,
        presence: Presence,
        history: History | None,
        metrics: Metrics,
        api_sender: Sender,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        peers_missing: Callable[[], Awaitable[bool]],
    ) -> None:
        """``spawn`` runs background work the node keeps track of; ``peers_missing`` says whether
        a process known before a Redis outage has not announced itself again since."""
        self.settings = settings
        self.hub = hub
        self.bridge = bridge
        self.presence = presence
        self.history = history
        self.metrics = metrics
        self.spawn = spawn
        self._peers_missing = peers_missing
        # The backend API sends as one more connection: one message routed at a time, through
        # its sender's gate.
        self._api_sender = api_sender
        self._api_turn = asyncio.Lock()
        # This process's recorded messages on their way back from its subscriber, by (channel,
        # position): the message, to deliver from here if the subscriber is lost before it
        # brings it (its reply came first), or None (it came back before its reply).
        self._echoes: dict[tuple[Channel, Position], bytes | None] = {}

    def forget_echoes(self) -> None:
        """The bridge reconnected: the replies of what the lost connections carried are not coming."""
        self._echoes.clear()

    def deliver_published(
        self, channel: Channel, stream: Stream, name: str, payload: bytes, position: Position | None, own: bool
    ) -> None:
        """Deliver what the bridge brought on a client channel (``own``: this process recorded it)."""
        positioned = None
        if position is not None:
            if own:  # one of this process's, back after its reply (expected) or before it (noted)
                key = (channel, position)
                if key in self._echoes:
                    del self._echoes[key]
                else:
                    self._echoes[key] = None
            positioned = _positioned(stream, position, payload)
        receivers = self.members(stream, name)
        self.metrics.deliveries.inc(amount=self.hub.deliver(receivers, text_frame(payload), positioned))

    def receive(self, conn: Connection, message: WSMessageV3) -> Rest:
        """Route one valid message from ``conn``; problems come back as ProtocolError.

        What needs no answer from Redis is done here and now. The rest (a heartbeat's lease, a
        presence query, a recording) is returned, for the caller to run before the sender's next
        message. For a direct message it is a future of its answer: the ProtocolError to send
        back once it is known that nobody took it, or None.
        """
        if conn.watching:
            return self._answer_watcher(conn, message)
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
        if self.history is not None and not conn.take_record(time.monotonic(), len(payload) + RECORD_COST):
            rate = self.settings.record_byte_rate
            raise ProtocolError(
                RATE_LIMITED,
                f"Too many bytes to record for recovery: at most {rate:g} a second; this message was dropped.",
            )
        receivers = self._route(stamped, payload, conn.sender)
        if receivers is None or message.target != "direct":
            return receivers  # in flight until recorded and delivered here
        assert message.to_id is not None  # the schema requires it for target 'direct'
        answered: asyncio.Future[ProtocolError | None] = asyncio.get_running_loop().create_future()
        receivers.add_done_callback(functools.partial(self._answer_unreached, message.to_id, answered))
        return answered

    def shard_of(self, conn: Connection, message: WSMessageV3) -> int | None:
        """The Redis shard that carries ``message``, or None for one that stays in this process.

        Without a cluster every message is on the one shard (0), where the gate never holds one
        back: its channel is not worked out twice for nothing.
        """
        if not self.bridge.sharded:
            return 0
        channel = channel_of(message, conn.group_id)
        return None if channel is None else self.bridge.shard_of(channel)

    def _answer_unreached(
        self, to_id: str, answered: asyncio.Future[ProtocolError | None], receivers: asyncio.Future[int]
    ) -> None:
        """Once the other processes' count is in: no answer, unavailable, or (after presence) an answer."""
        if receivers.exception() is None and receivers.result():
            answered.set_result(None)
        elif receivers.exception() is not None:
            answered.set_result(_unavailable(to_id))
        else:
            self.spawn(self._answer_nobody_took(to_id, answered))

    async def _answer_nobody_took(self, to_id: str, answered: asyncio.Future[ProtocolError | None]) -> None:
        problem = None
        try:
            problem = await self.nobody_took(to_id)
        finally:
            answered.set_result(problem)

    async def nobody_took(self, to_id: str) -> ProtocolError:
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

    def _answer_watcher(self, conn: Connection, message: WSMessageV3) -> Rest:
        """A watcher may keep its connection alive and ask who is present; it sends nothing on."""
        if message.msg_type == "heartbeat":
            self._send_one(conn, messages.heartbeat_reply(conn.group_id, message))  # no lease to extend
            return None
        if message.msg_type == "presence":
            return self._answer_presence(conn)
        raise ProtocolError(
            FORBIDDEN, "A watcher only watches: it may send heartbeats and presence queries, nothing to others."
        )

    async def _answer_heartbeat(self, conn: Connection, message: WSMessageV3) -> None:
        await self.refresh([lease_of(conn)])
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
                raise await self.nobody_took(message.to_id)
        assert stamped.sent_at is not None
        return stamped.sent_at

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
        elif not conn.take_broadcast(time.monotonic()):
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
        return self._send(channel, self.local(channel), message, sender, payload)

    def _send_one(self, conn: Connection, message: WSMessageV3) -> None:
        conn.reply(frame_of(message))
        self.metrics.deliveries.inc()

    def local(self, channel: Channel) -> Collection[Connection]:
        """This process's connections that receive what is published to ``channel``."""
        return self.members(*split(channel))

    def members(self, stream: Stream | None, name: str) -> Collection[Connection]:
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
        local = self.members(stream, name)
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
        positioned = None if position is None else _positioned(stream, position, payload)
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
            stream, name = split(channel)
            count = self.hub.deliver(
                self.members(stream, name), text_frame(payload), _positioned(stream, position, payload)
            )
            self.metrics.deliveries.inc(amount=count)
        if settle is not None:
            settle.set_result(receivers)

    def to_group(self, group_id: str, message: WSMessageV3) -> None:
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

    async def refresh(self, leases: list[Lease]) -> None:
        """Extend leases; a client whose lease had already expired (and left) joins again."""
        for lease in await self.presence.refresh(leases):
            self.to_group(lease.group_id, messages.joined(lease.group_id, lease.client_id))


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


def lease_of(conn: Connection) -> Lease:
    return Lease(conn.group_id, conn.client_id, conn.lease_key)


def _positioned(stream: Stream | None, position: Position, payload: bytes) -> Positioned:
    """A recorded message of ``stream`` at ``position`` as recovering clients get it."""
    assert stream is not None  # only the channels of client streams are recorded
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
