"""The sans-I/O frame module: every rule it checks, byte by byte, without a socket."""

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether_tornado.ws import frames
from aether_tornado.ws.frames import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, FrameError, FrameReader


def masked(opcode: int, payload: bytes = b"", final: bool = True) -> bytes:
    return frames.build(opcode, payload, final, mask_key=os.urandom(4))


def events(data: bytes, **limits) -> list:
    reader = FrameReader(**limits)
    reader.feed(data)
    found = []
    while (event := reader.next()) is not None:
        found.append(event)
    return found


def failure(data: bytes, **limits) -> tuple[int, str]:
    with pytest.raises(FrameError) as raised:
        events(data, **limits)
    return raised.value.code, raised.value.reason


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_every_length_encoding_round_trips(length):
    payload = os.urandom(length)
    assert events(masked(BINARY, payload)) == [(BINARY, payload)]
    server = FrameReader(from_client=False)
    server.feed(frames.build(BINARY, payload))
    assert server.next() == (BINARY, payload)


@given(st.text(max_size=300), st.integers(min_value=1, max_value=50))
def test_text_arriving_in_any_pieces_is_one_message(text, piece):
    data = masked(TEXT, text.encode(), final=False) + masked(PING, b"hi") + masked(CONTINUATION, b"")
    reader = FrameReader()
    found = []
    for start in range(0, len(data), piece):
        reader.feed(data[start : start + piece])
        while (event := reader.next()) is not None:
            found.append(event)
    assert found == [(CONTINUATION, b""), (PING, b"hi"), (TEXT, text)]


def test_text_is_split_into_fragments_at_any_byte():
    encoded = "κόσμε €𝄞".encode()
    for cut in range(len(encoded) + 1):
        data = masked(TEXT, encoded[:cut], final=False) + masked(CONTINUATION, encoded[cut:])
        assert events(data)[-1] == (TEXT, "κόσμε €𝄞")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes([0xC1, 0x80]) + b"\0" * 4, 1002),  # RSV1
        (bytes([0x81, 0x00]), 1002),  # unmasked client frame
        (bytes([0x83, 0x80]) + b"\0" * 4, 1002),  # reserved data opcode
        (bytes([0x8B, 0x80]) + b"\0" * 4, 1002),  # reserved control opcode
        (bytes([0x09, 0x80]) + b"\0" * 4, 1002),  # fragmented ping
        (bytes([0x89, 0x80 | 126, 0, 126]) + b"\0" * 130, 1002),  # ping over 125 bytes
        (bytes([0x80, 0x80]) + b"\0" * 4, 1002),  # continuation of nothing
    ],
)
def test_protocol_violations_name_their_close_code(data, code):
    assert failure(data)[0] == code


def test_a_new_message_inside_a_fragmented_one_fails():
    assert failure(masked(TEXT, b"a", final=False) + masked(TEXT, b"b"))[0] == 1002


def test_server_frames_must_not_be_masked():
    reader = FrameReader(from_client=False)
    reader.feed(masked(TEXT, b"x"))
    with pytest.raises(FrameError):
        reader.next()


def test_size_limit_counts_every_fragment_and_fails_on_the_header():
    assert failure(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 10**7), max_message_bytes=100)[0] == 1009
    data = masked(BINARY, b"x" * 60, final=False) + masked(CONTINUATION, b"x" * 41)
    assert failure(data, max_message_bytes=100)[0] == 1009
    assert events(masked(BINARY, b"x" * 60, final=False) + masked(CONTINUATION, b"x" * 40), max_message_bytes=100)


def test_fragments_per_message_are_limited():
    data = masked(TEXT, b"", final=False) + masked(CONTINUATION, b"", final=False) * 2 + masked(CONTINUATION, b"")
    assert events(data, max_fragments=4)[-1] == (TEXT, "")
    assert failure(data, max_fragments=3) == (1008, "more than 3 fragments in one message")


def test_invalid_utf8_fails_in_the_fragment_that_holds_it():
    assert failure(masked(TEXT, b"ok \xce\xba\xff", final=False)) == (1007, "text is not UTF-8")
    # A truncated sequence at a fragment's end is fine until the next fragment breaks it.
    assert events(masked(TEXT, b"\xce", final=False)) == [(CONTINUATION, b"")]
    assert failure(masked(TEXT, b"\xce", final=False) + masked(CONTINUATION, b"A"))[0] == 1007
    assert failure(masked(TEXT, b"\xce"))[0] == 1007


def test_invalid_utf8_fails_while_the_frame_is_still_arriving():
    data = masked(TEXT, b"valid start \xf4\x90\x80\x80 then more" + b"x" * 1000)
    reader = FrameReader()
    reader.feed(data[:30])  # the header, the mask and the invalid sequence; most bytes still to come
    with pytest.raises(FrameError) as raised:
        reader.next()
    assert raised.value.code == 1007


def test_a_valid_frame_checked_while_arriving_still_parses_whole():
    data = masked(TEXT, "€uro".encode() * 100)
    reader = FrameReader()
    for n in range(0, len(data), 7):
        reader.feed(data[n : n + 7])
        event = reader.next()
    assert event == (TEXT, "€uro" * 100)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_registered_close_codes_are_accepted(code):
    payload = struct.pack("!H", code) + b"bye"
    assert events(masked(CLOSE, payload)) == [(CLOSE, payload)]
    assert frames.close_code(payload) == code


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_unregistered_close_codes_fail(code):
    assert failure(masked(CLOSE, struct.pack("!H", code)))[0] == 1002


def test_close_payloads_of_one_byte_or_with_a_reason_not_utf8_fail():
    assert failure(masked(CLOSE, b"\x03"))[0] == 1002
    assert failure(masked(CLOSE, struct.pack("!H", 1000) + b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"))[0] == 1007


def test_nothing_is_read_after_a_close():
    assert events(masked(CLOSE) + masked(TEXT, b"late") + masked(PONG)) == [(CLOSE, b"")]
    assert frames.close_code(b"") == frames.CloseCode.NO_STATUS


def test_a_close_reason_is_cut_on_a_character_boundary():
    payload = frames.close_payload(1001, "é" * 100)
    assert len(payload) == 124 and payload[2:].decode() == "é" * 61
    assert frames.close_payload(1000, "bye") == struct.pack("!H", 1000) + b"bye"


def test_text_frame_is_the_same_as_build():
    for length in (0, 125, 126, 65535, 65536):
        assert frames.text_frame(b"x" * length) == frames.build(TEXT, b"x" * length)


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=300))
def test_the_python_mask_masks_as_the_c_one_does(key, data):
    masked = frames._xor_mask(key, data)
    assert masked == frames.mask(key, data)
    assert frames._xor_mask(key, masked) == data  # masking twice gives the payload back


def test_opcodes_and_close_codes_are_named_values_with_the_rfc_s_numbers():
    assert (frames.TEXT, frames.CLOSE, frames.PONG) == (frames.Opcode.TEXT, 0x8, 0xA)
    assert frames.CloseCode.PROTOCOL_ERROR == 1002 and frames.CloseCode.TRY_AGAIN_LATER == 1013
    reader = FrameReader()
    reader.feed(b"\x83\x80abcd")  # a reserved opcode
    with pytest.raises(FrameError) as failed:
        reader.next()
    assert failed.value.code is frames.CloseCode.PROTOCOL_ERROR
