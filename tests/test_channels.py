"""What a channel is and where a message is in its stream: named in one place, parsed in one place."""

import pytest

from aether_tornado.bridge import CONTROL_CHANNEL, RESYNC_CHANNEL
from aether_tornado.v3.channels import (
    BROADCAST_CHANNEL,
    STREAMS,
    Position,
    Stream,
    channel_of,
    client_channel,
    group_channel,
    split,
    streams_of,
)
from aether_tornado.v3.schema import WSMessageV3, decode


def message(**fields) -> WSMessageV3:
    decoded = decode(b'{"msg_type":"%s","target":"%s"%s}' % (
        fields.pop("msg_type", "msg").encode(), fields.pop("target").encode(),
        b"".join(b',"%s":"%s"' % (key.encode(), value.encode()) for key, value in fields.items()),
    ))  # fmt: skip
    assert isinstance(decoded, WSMessageV3), decoded
    return decoded


def test_a_channel_names_its_stream_and_whom_it_reaches():
    assert split(group_channel("g_1")) == (Stream.GROUP, "g_1")
    assert split(client_channel("c:odd")) == (Stream.CLIENT, "c:odd")
    assert split(BROADCAST_CHANNEL) == (Stream.BROADCAST, "")
    assert split(streams_of("g", "c")[Stream.CLIENT]) == (Stream.CLIENT, "c")
    assert [stream for stream, _ in map(split, streams_of("g", "c"))] == list(Stream)
    assert STREAMS == ("group", "client", "broadcast")


def test_the_bridge_s_own_channels_are_no_stream():
    assert split(RESYNC_CHANNEL)[0] is None and split(CONTROL_CHANNEL)[0] is None


def test_a_message_travels_on_the_channel_of_its_target():
    assert channel_of(message(target="group"), "g_1") == group_channel("g_1")
    assert channel_of(message(target="direct", to_id="c_2"), "g_1") == client_channel("c_2")
    assert channel_of(message(target="broadcast"), "g_1") == BROADCAST_CHANNEL
    assert channel_of(message(target="echo"), "g_1") is None
    assert channel_of(message(msg_type="heartbeat", target="echo"), "g_1") is None


@pytest.mark.parametrize("text", ["", ":1", "e:", "e:-1", "e:1.5", "é:1", "e:" + "9" * 19, "x" * 33 + ":1"])
def test_a_position_is_an_epoch_of_letters_and_digits_and_a_whole_offset(text):
    with pytest.raises(ValueError):
        Position.parse(text)


def test_a_position_reads_back_as_written_and_compares_within_its_epoch():
    position = Position.parse("k3J9x:42")
    assert position == Position("k3J9x", 42) and str(position) == "k3J9x:42"
    assert position.at_or_after(Position("k3J9x", 42)) and position.at_or_after(Position("k3J9x", 1))
    assert not position.at_or_after(Position("k3J9x", 43))
    assert not position.at_or_after(Position("other", 1)) and not position.at_or_after(None)
