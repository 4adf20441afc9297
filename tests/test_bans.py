"""The bans a process holds for its handshakes: bounded, ending on time, replaced by the store's."""

import pytest

from aether_tornado.presence import bans
from aether_tornado.presence.bans import Bans, TooManyBans


def test_a_ban_ends_on_time_or_when_lifted_and_a_longer_one_wins():
    now = [1000.0]
    held = Bans(clock=lambda: now[0])
    held.add("c_a", 1060)
    held.add("c_a", 1030)  # shorter: the longer stays
    assert held.remaining("c_a") == 60
    now[0] = 1059.5
    assert held.remaining("c_a") == 0.5
    now[0] = 1060
    assert held.remaining("c_a") == 0 and len(held) == 0  # over, and forgotten
    held.add("c_b", 2000)
    assert held.lift("c_b") is True and held.lift("c_b") is False and held.remaining("c_b") == 0


def test_the_store_s_bans_replace_those_held_after_an_outage():
    held = Bans(clock=lambda: 1000.0)
    held.add("c_lifted_meanwhile", 2000)
    held.replace([("c_banned_meanwhile", 1500.0)])
    assert held.remaining("c_lifted_meanwhile") == 0 and held.remaining("c_banned_meanwhile") == 500


def test_bans_are_bounded_and_room_comes_back_as_they_end(monkeypatch):
    monkeypatch.setattr(bans, "MAX_BANS", 2)
    now = [1000.0]
    held = Bans(clock=lambda: now[0])
    held.add("c_1", 1010)
    held.add("c_2", 1100)
    assert not held.has_room("c_3") and held.has_room("c_1")  # a ban held may be extended
    with pytest.raises(TooManyBans):
        held.add("c_3", 1100)
    now[0] = 1011  # c_1's ended
    held.add("c_3", 1100)
    assert held.remaining("c_3") == 89
