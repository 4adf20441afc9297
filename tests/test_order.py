"""A sender's order across shards (bridge/order.py): the gate its messages pass, and the
receiving half, read by read.

Real clusters reorder rarely and by chance; these are the interleavings that matter, each
played out exactly: which shard a message is read from, and when each pong comes.
"""

import asyncio

import pytest

from aether_tornado.bridge.order import Reorder, Sender

ALICE, BOB = b"alice", b"bob"


class Shards:
    """Three shards whose pongs come only when a test says so."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.pings: list[tuple[int, object]] = []
        self.reorder = Reorder(3, lambda shard, then: self.pings.append((shard, then)))

    def read(self, shard: int, sender: bytes | None, run: int, name: str) -> None:
        self.reorder.arrive(shard, sender, run, lambda: self.delivered.append(name))

    def pong(self, shard: int) -> None:
        """Every ping sent to ``shard`` so far is answered, in order."""
        answered = [then for to, then in self.pings if to == shard]
        self.pings = [(to, then) for to, then in self.pings if to != shard]
        self.reorder.after_read(shard, answered)

    def pong_all(self) -> None:
        while self.pings:
            self.pong(self.pings[0][0])


def test_a_sender_s_runs_are_numbered_by_switches_of_shard():
    sender = Sender(7)
    runs = [sender.mark(shard) for shard in (0, 0, 1, 1, 0, 2)]
    assert [int.from_bytes(mark[8:], "big") for mark in runs] == [0, 0, 1, 1, 2, 3]
    assert {int.from_bytes(mark[:8], "big") for mark in runs} == {7}


async def test_the_gate_lets_messages_for_the_shard_in_flight_through_and_holds_another_until_all_land():
    sender = Sender(1)
    loop = asyncio.get_running_loop()
    assert sender.turn(2) is None  # nothing in flight
    first, second = loop.create_future(), loop.create_future()
    sender.track(first, 2)
    assert sender.turn(2) is None  # the same shard: Redis keeps its order
    sender.track(second, 2)
    assert sender.turn(None) is None  # stays in the process: no shard to keep an order with
    waiting = sender.turn(0)
    assert waiting is not None and sender.in_flight == 2
    first.set_result(1)
    await asyncio.sleep(0)  # its callbacks run
    assert not waiting.done() and sender.in_flight == 1
    second.set_exception(ConnectionError("lost"))  # landed, or lost: either way no longer in flight
    await asyncio.wait_for(waiting, 1)
    assert sender.in_flight == 0 and sender.turn(0) is None
    assert isinstance(second.exception(), ConnectionError)  # its owner reads it, not the gate


async def test_callbacks_added_after_the_gate_s_see_the_message_landed():
    sender = Sender(1)
    landing = asyncio.get_running_loop().create_future()
    sender.track(landing, 0)
    seen = []
    landing.add_done_callback(lambda _: seen.append(sender.in_flight))
    landing.set_result(0)
    await asyncio.sleep(0)
    assert seen == [0]


def test_a_first_run_and_unmarked_messages_never_wait():
    shards = Shards()
    shards.read(0, ALICE, 0, "a0")
    shards.read(1, None, 0, "join")
    assert shards.delivered == ["a0", "join"] and not shards.pings


def test_a_new_run_waits_for_the_other_shards_and_an_earlier_run_read_meanwhile_goes_first():
    shards = Shards()
    shards.read(0, ALICE, 0, "a0")
    shards.read(1, ALICE, 1, "a1")  # read before the rest of run 0, which shard 0 may still hold
    shards.read(1, BOB, 0, "b0")  # behind a1 on its shard
    assert shards.delivered == ["a0"]
    assert sorted(shard for shard, _ in shards.pings) == [0, 2]
    shards.read(0, ALICE, 0, "a0 again")  # still run 0: it was published before a1
    shards.pong_all()
    assert shards.delivered == ["a0", "a0 again", "a1", "b0"]


def test_an_older_run_read_after_a_newer_one_goes_first_on_a_third_shard():
    """Runs 1, 2, 3 on shards 2, 0, 1; read 3, then 2, then 1: each waits for the one before."""
    shards = Shards()
    shards.read(1, ALICE, 3, "a3")
    shards.read(0, ALICE, 2, "a2")  # older than the latest run read: it waits for pongs too
    shards.read(2, ALICE, 1, "a1")
    shards.pong_all()
    assert shards.delivered == ["a1", "a2", "a3"]


def test_a_later_message_of_an_older_run_waits_for_the_run_before_it():
    """Runs 22, 23, 24 on shards 1, 0, 1: 22 waits for pongs, 24 behind it; 23 must not pass 22."""
    shards = Shards()
    shards.read(1, ALICE, 22, "a22")
    shards.read(1, ALICE, 24, "a24")
    shards.pong(0)
    shards.read(0, ALICE, 23, "a23")
    assert shards.delivered == []
    shards.pong_all()
    assert shards.delivered == ["a22", "a23", "a24"]


def test_one_sender_s_wait_does_not_hold_up_another_sender_on_other_shards():
    shards = Shards()
    shards.read(0, ALICE, 1, "a1")
    shards.read(1, BOB, 1, "b1")
    shards.pong(1)
    shards.pong(2)
    assert shards.delivered == ["a1"]  # bob's still waits for shard 0
    shards.pong(0)
    assert shards.delivered == ["a1", "b1"]


def test_a_pong_someone_waits_for_comes_after_what_was_read_before_it():
    shards = Shards()
    shards.read(0, ALICE, 1, "a1")  # waits
    answered = []
    shards.reorder.after_read(0, [lambda: answered.append(list(shards.delivered))])
    assert answered == []
    shards.pong_all()
    assert answered == [["a1"]]


def test_a_waiter_sharing_a_pong_with_a_barrier_that_frees_its_shard_is_still_called():
    shards = Shards()
    shards.read(0, ALICE, 1, "a1")  # waits for shards 1 and 2
    shards.read(2, ALICE, 2, "a2")  # waits for shards 0 and 1, and for a1
    shards.pong(1)
    shards.pong(0)
    barrier = next(then for shard, then in shards.pings if shard == 2)  # a1's, from shard 2
    answered = []
    shards.reorder.after_read(2, [barrier, lambda: answered.append(list(shards.delivered))])
    assert answered == [["a1", "a2"]]


def test_a_lost_connection_delivers_what_waits_in_every_sender_s_order():
    shards = Shards()
    shards.read(0, ALICE, 2, "a2")  # read first, on shard 0
    shards.read(1, ALICE, 1, "a1")
    shards.read(0, BOB, 0, "b0")
    shards.reorder.flush()
    assert shards.delivered == ["a1", "a2", "b0"]
    shards.pong_all()  # pongs of gone connections change nothing
    assert shards.delivered == ["a1", "a2", "b0"]


def test_past_max_senders_every_sender_is_forgotten_and_order_still_holds(monkeypatch):
    from aether_tornado.bridge import order

    monkeypatch.setattr(order, "MAX_SENDERS", 2)
    shards = Shards()
    shards.read(0, ALICE, 1, "a1")  # a second run of each: remembered, and each waits for pongs
    shards.read(1, BOB, 1, "b1")
    shards.pong_all()
    shards.read(2, b"carol", 1, "c1")  # the third: the memory of runs is cleared
    shards.pong_all()
    shards.read(0, ALICE, 1, "a1 again")  # forgotten: it waits for pongs once more, never delivered early
    assert shards.delivered == ["a1", "b1", "c1"]
    shards.pong_all()
    assert shards.delivered == ["a1", "b1", "c1", "a1 again"]


@pytest.mark.expect_errors("a delivery from Redis failed")
def test_a_delivery_that_fails_is_logged_and_those_behind_it_still_go(caplog):
    shards = Shards()

    def broken() -> None:
        raise RuntimeError("a receiver's bug")

    shards.reorder.arrive(0, ALICE, 1, broken)  # waits for pongs, with what comes behind it
    shards.read(0, BOB, 0, "behind")
    shards.pong_all()
    assert shards.delivered == ["behind"]
    assert "a delivery from Redis failed" in caplog.text
