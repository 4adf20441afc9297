"""The operator's view of connections: each described by the process that holds it, gathered from all.

A process answers for its own connections. Asked for a cluster-wide list, it asks every other
process on the control channel and waits, a moment at most, for their answers: a process that
does not answer in time is named as missing, not waited for. Every list is bounded: a process
answers with at most MAX_LISTED connections, and the asker keeps at most what was asked for.
"""

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
import orjson

from ..bridge import CONTROL_CHANNEL, Bridge, BridgeDown
from ..v3.schema import utc_at
from .hub import Connection, Hub

log = logging.getLogger(__name__)

# Connections one process lists at most in one answer.
MAX_LISTED = 1000
# How long the asker waits for the other processes' answers.
ANSWER_DEADLINE = 1.0


@attrs.frozen
class Wanted:
    """Which connections: of a group, of a client, or all (None), up to ``limit``."""

    group_id: str | None = None
    client_id: str | None = None
    limit: int = 100

    def matches(self, conn: Connection) -> bool:
        return (self.group_id is None or conn.group_id == self.group_id) and (
            self.client_id is None or conn.client_id == self.client_id
        )


# One process's answer: the connections it lists, and whether more matched there.
Answer = tuple[list[dict[str, Any]], bool]


@attrs.frozen
class Listing:
    connections: list[dict[str, Any]]
    more: bool  # connections matched beyond the limit
    missing: list[str]  # processes that did not answer in time


class Inventory:
    def __init__(
        self, node_id: str, hub: Hub, bridge: Bridge, processes_up: Callable[[], Awaitable[list[str]]]
    ) -> None:
        """``processes_up``: the node_ids of the processes announced as up, this one included."""
        self._node_id = node_id
        self._hub = hub
        self._bridge = bridge
        self._processes_up = processes_up
        self._numbers = itertools.count(1)
        # Questions this process asked and awaits answers to: id -> (node_id -> answer, set on each).
        self._asked: dict[str, tuple[dict[str, Answer], asyncio.Event]] = {}

    def local(self, wanted: Wanted) -> Answer:
        """This process's connections that match, described, at most MAX_LISTED and the limit;
        and whether more matched."""
        most = min(wanted.limit, MAX_LISTED)
        found = itertools.islice((conn for conn in self._pool(wanted) if wanted.matches(conn)), most + 1)
        described = [self.describe(conn) for conn in found]
        return described[:most], len(described) > most

    def describe(self, conn: Connection) -> dict[str, Any]:
        return {
            "node_id": self._node_id,
            "connection": conn.lease_key,
            "group_id": conn.group_id,
            "client_id": None if conn.watching else conn.client_id,
            "watching": conn.watching,
            "connected_at": utc_at(conn.connected_at),
            "address": conn.address,
            "user_agent": conn.user_agent,
            "messages_in": conn.received,
            "bytes_in": conn.received_bytes,
            "queued_bytes": conn.queued_bytes,
            "recovers": conn.positions is not None,
        }

    async def gather(self, wanted: Wanted) -> Listing:
        """The matching connections of every process that answers in time, sorted."""
        connections, more = self.local(wanted)
        others = set(await self._processes_up()) - {self._node_id}
        missing: set[str] = set()
        if others:
            answers = await self._ask(wanted, others)
            missing = others - answers.keys()
            for listed, theirs_more in answers.values():
                connections += listed
                more = more or theirs_more
        connections.sort(key=lambda item: (item["group_id"], item["client_id"] or "", item["connected_at"]))
        more = more or len(connections) > wanted.limit
        return Listing(connections[: wanted.limit], more, sorted(missing))

    async def _ask(self, wanted: Wanted, others: set[str]) -> dict[str, Answer]:
        question = f"{self._node_id}:{next(self._numbers)}"
        answers: dict[str, Answer] = {}
        answered = asyncio.Event()
        self._asked[question] = answers, answered
        order = {"ask": "connections", "id": question, "wanted": attrs.asdict(wanted)}
        try:
            self._bridge.send(CONTROL_CHANNEL, orjson.dumps(order))
            async with asyncio.timeout(ANSWER_DEADLINE):
                while not others <= answers.keys():
                    await answered.wait()
                    answered.clear()
        except (BridgeDown, TimeoutError):
            pass  # those that did not answer are named as missing
        finally:
            del self._asked[question]
        return answers

    def obey(self, order: dict[str, Any]) -> None:
        """A question or an answer on the control channel. Raises KeyError or TypeError for one
        not understood."""
        if "ask" in order:
            question = order["id"]
            if question.startswith(self._node_id + ":"):
                return  # our own question, answered for this process already
            listed, more = self.local(Wanted(**order["wanted"]))
            answer = {"answer": question, "node_id": self._node_id, "connections": listed, "more": more}
            try:
                self._bridge.send(CONTROL_CHANNEL, orjson.dumps(answer))
            except BridgeDown:
                log.debug("could not answer %s: Redis is unreachable", question)
            return
        awaited = self._asked.get(order["answer"])
        if awaited is not None:  # a question of ours, still awaited
            answers, answered = awaited
            answers[order["node_id"]] = (list(order["connections"]), bool(order["more"]))
            answered.set()

    def _pool(self, wanted: Wanted) -> Iterable[Connection]:
        """Where to look: the smallest index that holds every match."""
        if wanted.client_id is not None:
            return self._hub.client(wanted.client_id)
        if wanted.group_id is not None:
            return self._hub.group(wanted.group_id)
        return self._hub.all()
