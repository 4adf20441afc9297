"""The process's one view of Redis: who moves it, and who hears a loss."""

from aether_tornado.redis.link import Link, LinkState


def test_the_link_is_up_only_once_the_node_has_resynced():
    link = Link()
    assert link.state is LinkState.DOWN and not link.connected and not link.up
    link.subscribed()
    assert link.state is LinkState.SYNCING and link.connected and not link.up
    link.restored()
    assert link.state is LinkState.UP and link.connected and link.up


def test_a_loss_during_the_resync_is_not_undone_by_its_end():
    link = Link()
    link.subscribed()
    link.lost(ConnectionError("gone"))
    link.restored()
    assert link.state is LinkState.DOWN


def test_every_backend_hears_every_loss_whoever_saw_it():
    link, heard = Link(), []
    link.when_lost(lambda error: heard.append(("bridge", str(error))))
    link.when_lost(lambda error: heard.append(("presence", str(error))))
    link.subscribed()
    link.restored()
    link.lost(TimeoutError("no answer"))
    link.lost(ConnectionError("refused"))  # a failed attempt while down: told again, harmlessly
    assert heard == [
        ("bridge", "no answer"),
        ("presence", "no answer"),
        ("bridge", "refused"),
        ("presence", "refused"),
    ]
    assert link.state is LinkState.DOWN


def test_closing_tells_nobody():
    link, heard = Link(), []
    link.when_lost(heard.append)
    link.subscribed()
    link.restored()
    link.closed()
    assert link.state is LinkState.DOWN and heard == []
