"""The hub's indices and its first/last reports."""

from aether_tornado.core.hub import Added, Hub, Removed


class Conn:
    def __init__(self, group_id: str, client_id: str, watching: bool = False) -> None:
        self.group_id, self.client_id, self.watching = group_id, client_id, watching
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


def test_add_and_remove_report_first_and_last():
    hub = Hub()
    a1, a2, b1 = Conn("g", "a"), Conn("g", "a"), Conn("h", "a")
    assert hub.add(a1) == Added(True, True)
    assert hub.add(a2) == Added(False, False)
    assert hub.add(b1) == Added(True, False)
    assert len(hub) == 3
    assert hub.remove(a1) == Removed(False, False)
    assert hub.remove(a1) == Removed(False, False)  # unknown: nothing changes
    assert hub.remove(a2) == Removed(True, False)
    assert hub.remove(b1) == Removed(True, True)
    assert len(hub) == 0 and list(hub.groups()) == [] and list(hub.clients()) == []


def test_deliver_hands_the_same_frame_to_every_connection():
    hub = Hub()
    conns = [Conn("g", f"c{n}") for n in range(3)]
    for conn in conns:
        hub.add(conn)
    frame = b"\x81\x02hi"
    assert hub.deliver(hub.group("g"), frame) == 3
    assert all(conn.frames[0] is frame for conn in conns)
    assert hub.deliver(hub.group("missing"), frame) == 0


def test_a_watcher_is_indexed_by_its_group_only():
    hub = Hub()
    member, watcher = Conn("g", "a"), Conn("g", "operator", watching=True)
    assert hub.add(watcher) == Added(True, False)
    assert hub.add(member) == Added(False, True)
    assert set(hub.group("g")) == {member, watcher} and list(hub.clients()) == ["a"]
    assert hub.client("operator") == ()
    assert hub.remove(watcher) == Removed(False, False)
    assert hub.remove(member) == Removed(True, True)
