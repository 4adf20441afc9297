"""The node's routing, without a socket: who gets a message, stamped how, and what a sender is told.

The node runs with the memory backends a single process uses; each connection is a session
that keeps what it is sent (hub.Connection), so every delivery can be read back exactly.
"""

import asyncio
import time
from typing import Any

import attrs
import orjson
import pytest

from aether_tornado.app import build_node
from aether_tornado.bridge.order import Sender
from aether_tornado.config import Settings
from aether_tornado.core.hub import Positioned
from aether_tornado.core.node import Node
from aether_tornado.v3.channels import Position, Stream
from aether_tornado.v3.errors import ProtocolError
from aether_tornado.v3.schema import VisionId, WSMessageV3, decode
from aether_tornado.ws import frames
from aether_tornado.ws.limits import TokenBucket


class Session:
    """A connection as the node sees it, that keeps every frame it is sent."""

    def __init__(self, node: Node, group_id: str, client_id: str) -> None:
        self.node = node
        self.group_id, self.client_id = VisionId(group_id), VisionId(client_id)
        self.watching = False
        self.lease_key = node.new_lease_key()
        self.sender: Sender = node.new_sender()
        now = time.monotonic()
        self.last_seen = now
        self.may_broadcast = False
        self.broadcast_budget = TokenBucket(100.0, 100, now)
        self.positions: list[Position | None] | None = None
        self.since = None
        self.proof: str | None = None
        self.frames: list[bytes] = []
        self._held: list[bytes] | None = []
        self.closed: tuple[int, str] | None = None

    @property
    def held_bytes(self) -> int:
        return sum(map(len, self._held or ()))

    def take_broadcast(self, now: float) -> bool:
        return self.broadcast_budget.take(now)

    def take_record(self, now: float, amount: int) -> bool:
        return True

    def send(self, frame: bytes) -> None:
        (self.frames if self._held is None else self._held).append(frame)

    def reply(self, frame: bytes) -> None:
        self.send(frame)

    def refuse(self, problem: ProtocolError) -> None:
        self.reply(self.node.router.error_frame(self, problem))

    def send_at(self, message: Positioned) -> None:
        self.send(message.frame)

    def release(self, first: bytes) -> None:
        held, self._held = self._held or [], None
        for frame in (first, *held):
            self.send(frame)

    def first_held(self, stream: Stream) -> Positioned | None:
        return None

    def release_recovered(self, first: bytes, missed: Any, replayed: Any) -> None:
        self.release(first)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def keepalive(self) -> None:
        pass

    def received(self) -> list[dict[str, Any]]:
        """Every message sent to this session so far, decoded, the snapshot included."""
        reader = frames.FrameReader(from_client=False)
        reader.feed(b"".join(self.frames))
        out = []
        while (event := reader.next()) is not None:
            out.append(orjson.loads(event[1]))
        return out

    def messages(self) -> list[dict[str, Any]]:
        """What it received besides presence events."""
        return [message for message in self.received() if message["msg_type"] != "presence"]

    async def says(self, **fields: Any) -> None:
        """Send a message as this client, as its connection would, and wait for what it left to do."""
        message = decode(orjson.dumps(fields))
        assert isinstance(message, WSMessageV3)
        try:
            rest = self.node.router.receive(self, message)
            answer = None if rest is None else await asyncio.wait_for(rest, 5)
            if isinstance(answer, ProtocolError):  # a direct message nobody took
                raise answer
        except ProtocolError as problem:
            self.refuse(problem)


@pytest.fixture
async def node():
    node = build_node(Settings(log_level="warning"))
    yield node
    for conn in list(node.hub.all()):
        await node.detach(conn)


async def joined(node: Node, group_id: str, client_id: str) -> Session:
    session = Session(node, group_id, client_id)
    await asyncio.wait_for(node.attach(session), 5)
    return session


async def test_a_group_message_reaches_every_member_of_its_group_only_stamped_once(node):
    alice, bob, other = [await joined(node, group, client) for group, client in [("g", "a"), ("g", "b"), ("h", "c")]]
    await alice.says(msg_type="msg", target="group", msg="hi")
    (to_alice,), (to_bob,) = alice.messages(), bob.messages()
    assert to_alice == to_bob
    assert (to_bob["from_id"], to_bob["group_id"], to_bob["msg"]) == ("a", "g", "hi")
    assert "position" not in to_bob  # recorded, but only a client that recovers is told where
    assert other.messages() == []
    assert alice.frames[-1] is bob.frames[-1]  # framed once, the same bytes for every member


async def test_a_direct_message_reaches_each_connection_of_its_recipient_in_any_group(node):
    sender = await joined(node, "g", "a")
    here, elsewhere, bystander = [
        await joined(node, group, client) for group, client in [("g", "b"), ("h", "b"), ("g", "c")]
    ]
    await sender.says(msg_type="msg", target="direct", to_id="b", msg="psst")
    assert [m["msg"] for m in here.messages()] == [m["msg"] for m in elsewhere.messages()] == ["psst"]
    assert sender.messages() == [] and bystander.messages() == []


async def test_a_direct_message_to_nobody_is_answered_recipient_offline(node):
    sender = await joined(node, "g", "a")
    await sender.says(msg_type="msg", target="direct", to_id="nobody", msg="hello?")
    (error,) = sender.messages()
    assert error["payload"]["code"] == "recipient_offline"
    assert error["payload"]["errors"] == [{"field": "to_id", "problem": "has no open connection"}]


async def test_an_echo_comes_back_to_its_sender_alone(node):
    alice, bob = await joined(node, "g", "a"), await joined(node, "g", "b")
    await alice.says(msg_type="msg", target="echo", msg="me")
    assert [m["msg"] for m in alice.messages()] == ["me"] and bob.messages() == []


async def test_a_broadcast_reaches_everybody_in_every_group(node):
    sender, *others = [await joined(node, group, client) for group, client in [("g", "a"), ("g", "b"), ("h", "c")]]
    await sender.says(msg_type="msg", target="broadcast", msg="all")
    assert [[m["msg"] for m in s.messages()] for s in (sender, *others)] == [["all"]] * 3


async def test_a_client_may_not_speak_for_another_client_or_group(node):
    alice, bob = await joined(node, "g", "a"), await joined(node, "g", "b")
    await alice.says(msg_type="msg", target="group", from_id="b", group_id="h", msg="forged")
    (error,) = alice.messages()
    assert error["payload"]["code"] == "forbidden"
    assert {item["field"] for item in error["payload"]["errors"]} == {"from_id", "group_id"}
    assert bob.messages() == []


async def test_broadcast_is_refused_when_the_operator_turned_it_off():
    node = build_node(attrs.evolve(Settings(), allow_client_broadcast=False))
    sender, other = await joined(node, "g", "a"), await joined(node, "h", "b")
    await sender.says(msg_type="msg", target="broadcast", msg="all")
    (error,) = sender.messages()
    assert error["payload"]["code"] == "forbidden" and other.messages() == []
    await node.detach(sender)
    await node.detach(other)


async def test_the_api_publishes_as_the_backend_says_and_in_order(node):
    member = await joined(node, "g", "a")
    for n in range(5):
        await node.router.publish(WSMessageV3(msg_type="msg", target="group", group_id=VisionId("g"), msg=str(n)))
    await node.router.publish(
        WSMessageV3(msg_type="msg", target="direct", from_id=VisionId("ops"), to_id=VisionId("a"), msg="direct")
    )
    received = member.messages()
    assert [m["msg"] for m in received] == ["0", "1", "2", "3", "4", "direct"]
    assert received[-1]["from_id"] == "ops"
    with pytest.raises(ProtocolError) as refused:
        await node.router.publish(WSMessageV3(msg_type="msg", target="direct", to_id=VisionId("nobody"), msg="x"))
    assert refused.value.code == "recipient_offline"


async def test_joins_and_leaves_reach_the_group_once(node):
    alice = await joined(node, "g", "a")
    bob = await joined(node, "g", "b")
    second_bob = await joined(node, "g", "b")  # the same client again: no second join
    await node.detach(second_bob)  # one of its connections left: no leave
    await node.detach(bob)
    events = [(m["payload"]["event"], m["payload"].get("client_id")) for m in alice.received()]
    assert events == [("snapshot", None), ("join", "a"), ("join", "b"), ("leave", "b")]
