"""docs/protocol.md, section 4 through a real server: snapshots, join and leave events."""

import pytest

from aether_tornado.presence import Lease

from .conftest import ws_url
from .wsclient import Client


@pytest.fixture
def url(spread_url):
    """Every test here runs with one process, and with clients spread over two."""
    return spread_url


async def test_snapshot_is_sorted_in_code_point_order(url):
    for client_id in ["b", "B", "a_", "A", "_z", "-y"]:
        await Client.joined(url("g_sort", client_id))
    last = await Client.joined(url("g_sort", "Z"))
    assert last.snapshot["payload"]["clients"] == sorted(["b", "B", "a_", "A", "_z", "-y", "Z"])
    assert last.snapshot["payload"]["clients"][:3] == ["-y", "A", "B"]


async def test_join_and_leave_reach_the_group_only(url):
    alice = await Client.joined(url("g_p", "c_alice"))
    await alice.recv_where(event="join", client_id="c_alice")
    outsider = await Client.joined(url("g_q", "c_out"))
    await outsider.recv_where(event="join", client_id="c_out")
    bob = await Client.joined(url("g_p", "c_bob"))
    assert bob.snapshot["payload"]["clients"] == ["c_alice", "c_bob"]
    own_join = await bob.recv()
    assert own_join["payload"] == {"event": "join", "client_id": "c_bob"}
    join = await alice.recv()
    assert (join["msg_type"], join["target"], join["from_id"], join["group_id"]) == (
        "presence",
        "group",
        "c_bob",
        "g_p",
    )
    bob.close()
    leave = await alice.recv()
    assert leave["payload"] == {"event": "leave", "client_id": "c_bob", "reason": "closed"}
    assert leave["from_id"] == "c_bob" and leave["target"] == "group"
    await outsider.nothing_within(0.2)


async def test_exactly_one_join_and_one_leave_per_presence_span(url):
    watcher = await Client.joined(url("g_span", "c_watch"))
    await watcher.recv_where(event="join", client_id="c_watch")
    tabs = [await Client.joined(url("g_span", "c_tabs")) for _ in range(3)]
    for tab in tabs:
        tab.close()
        await tab.closed()
    events = []
    while not events or events[-1][0] != "leave":
        message = await watcher.recv()
        events.append((message["payload"]["event"], message["payload"]["client_id"]))
    assert events == [("join", "c_tabs"), ("leave", "c_tabs")]
    await watcher.nothing_within(0.3)


async def test_presence_is_empty_after_everyone_left(url):
    client = await Client.joined(url("g_gone", "c_one"))
    client.close()
    await client.closed()
    probe = await Client.joined(url("g_gone", "c_probe"))
    present = set(probe.snapshot["payload"]["clients"])
    if "c_one" in present:
        # The close is done, its process is still dropping the lease (on another process than the
        # probe's, an instant later): the snapshot may still list it, and its leave follows.
        await probe.recv_where(event="leave", client_id="c_one")
        present.discard("c_one")
    assert present == {"c_probe"}
    await probe.send(msg_type="presence", target="echo")
    assert (await probe.recv_where(event="snapshot"))["payload"]["clients"] == ["c_probe"]


async def test_a_heartbeat_after_the_lease_was_reaped_announces_the_client_again(start_server):
    server = await start_server()
    watcher = await Client.joined(ws_url(server, "g_hb", "c_watch"))
    sleeper = await Client.joined(ws_url(server, "g_hb", "c_sleeper"))
    await watcher.recv_where(event="join", client_id="c_sleeper")
    (conn,) = server.node.hub.client("c_sleeper")
    # As if its lease had expired and been reaped (a stalled process): presence forgot it.
    assert await server.node.presence.leave(Lease("g_hb", "c_sleeper", conn.lease_key))
    await sleeper.send(msg_type="heartbeat", target="echo")
    join = await watcher.recv_where(event="join", client_id="c_sleeper")
    assert join["from_id"] == "c_sleeper"
    await sleeper.send(msg_type="presence", target="echo")
    assert (await sleeper.recv_where(event="snapshot"))["payload"]["clients"] == ["c_sleeper", "c_watch"]
