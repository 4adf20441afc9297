"""How a recovering client's replay is put together, without a socket or a store: which positions
its proof vouches for, the merge of its streams, what is dropped when it does not fit."""

from aether_tornado.core.hub import Positioned
from aether_tornado.core.recovery import NOT_RECOVERED, plan, vouched
from aether_tornado.history import Entry, Recovery
from aether_tornado.v3.channels import Position

GROUP, CLIENT, BROADCAST = range(3)
ROOMY = 1 << 20


def entry(offset: int, time: float, text: str = "m") -> Entry:
    return Entry(offset, time, b'{"msg":"%s"}' % text.encode())


def answer(epoch: str, top: int, missed: list[Entry] | None, read_at: float = 100.0) -> Recovery:
    return Recovery(Position(epoch, top), None if missed is None else tuple(missed), read_at)


def texts(replay) -> list[tuple[int, int]]:
    return [(message.stream, message.offset) for message in replay.missed]


def test_only_positions_at_or_after_the_proofs_floor_in_its_epoch_are_read_from():
    presented = [Position("e", 5), Position("e", 5), Position("e", 5)]
    floors = [Position("e", 5), Position("e", 6), Position("f", 1)]
    assert vouched(presented, floors) == [Position("e", 5), None, None]
    assert vouched([None, Position("e", 1), Position("e", 1)], [Position("e", 0), None, Position("e", 0)]) == [
        None,
        None,
        Position("e", 1),
    ]


def test_the_streams_merge_oldest_first_and_each_ends_at_its_last_missed_message():
    recoveries = [
        answer("g", 12, [entry(11, 1.0), entry(12, 3.0)]),
        answer("c", 4, [entry(4, 2.0)]),
        answer("b", 7, []),
    ]
    since = [Position("g", 10), Position("c", 3), Position("b", 7)]
    replay = plan(recoveries, since, ROOMY, lambda stream: None)
    assert texts(replay) == [(GROUP, 11), (CLIENT, 4), (GROUP, 12)]
    assert replay.complete and replay.recovered == [True, True, True]
    assert replay.tops == replay.replayed == [Position("g", 12), Position("c", 4), Position("b", 7)]
    report = replay.report("proof")
    assert report["recovered"] is True and report["proof"] == "proof"
    assert report["streams"]["group"] == {"position": "g:12", "recovered": True}


def test_what_was_recorded_after_the_first_stream_was_read_comes_live_not_replayed():
    recoveries = [
        answer("g", 12, [entry(11, 1.0), entry(12, 5.0)], read_at=4.0),  # 12: after the first read
        answer("c", 4, [entry(4, 2.0)], read_at=2.5),
        answer("b", 7, [], read_at=3.0),
    ]
    since = [Position("g", 10), Position("c", 3), Position("b", 7)]
    replay = plan(recoveries, since, ROOMY, lambda stream: None)
    assert texts(replay) == [(GROUP, 11), (CLIENT, 4)]
    assert replay.replayed[GROUP] == Position("g", 11)  # 12 arrives live, and is not skipped


def test_a_replay_that_does_not_fit_drops_broadcasts_then_the_group_before_direct_messages():
    big = "x" * 200
    recoveries = [
        answer("g", 2, [entry(1, 1.0, big), entry(2, 2.0, big)]),
        answer("c", 1, [entry(1, 1.5, big)]),
        answer("b", 1, [entry(1, 1.7, big)]),
    ]
    since = [Position("g", 0), Position("c", 0), Position("b", 0)]
    one_frame = len(Positioned(0, "g", 1, entry(1, 1.0, big).payload).frame)
    for room, recovered in [
        (4 * one_frame, [True, True, True]),
        (3 * one_frame, [True, True, False]),
        (2 * one_frame, [False, True, False]),
        (one_frame - 1, [False, False, False]),
    ]:
        replay = plan(recoveries, since, room, lambda stream: None)
        assert replay.recovered == recovered, room
        assert sum(len(message.frame) for message in replay.missed) <= room


def test_a_stream_not_replayed_starts_just_before_the_first_message_that_came_live():
    held = Positioned(BROADCAST, "b", 8, b'{"msg":"live"}')
    recoveries = [answer("g", 3, None), answer("c", 1, []), answer("b", 9, None)]
    since = [Position("g", 1), Position("c", 1), None]
    replay = plan(recoveries, since, ROOMY, lambda stream: held if stream == BROADCAST else None)
    assert replay.recovered == [False, True, False] and not replay.complete
    assert replay.tops == [Position("g", 3), Position("c", 1), Position("b", 7)]
    assert replay.replayed == [None, Position("c", 1), None]
    floors = [Position("g", 0), Position("c", 0), Position("b", 0)]
    assert replay.floors(floors) == [Position("g", 3), Position("c", 0), Position("b", 7)]
    assert replay.report("p")["streams"]["broadcast"] == {"position": "b:7", "recovered": False}


def test_a_live_message_of_another_epoch_leaves_the_stream_s_top_as_it_was_read():
    held = Positioned(GROUP, "new", 1, b'{"msg":"live"}')
    replay = plan([answer("g", 3, None), answer("c", 1, []), answer("b", 1, [])], [None] * 3, ROOMY, lambda s: held)
    assert replay.tops[GROUP] == Position("g", 3)


def test_a_client_whose_history_could_not_be_read_is_told_so_for_every_stream():
    assert NOT_RECOVERED["recovered"] is False and NOT_RECOVERED["proof"] is None
    assert set(NOT_RECOVERED["streams"]) == {"group", "client", "broadcast"}
    assert all(state == {"position": None, "recovered": False} for state in NOT_RECOVERED["streams"].values())
