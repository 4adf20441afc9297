"""The schema alone: strict decoding, every problem at once, encode/decode round trips."""

import string

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether_tornado.v3.errors import ProtocolError
from aether_tornado.v3.ids import id_problem
from aether_tornado.v3.schema import FIELDS, WSMessageV3, decode, encode

json_values = st.recursive(
    # What orjson can carry: 64-bit integers and finite floats (it parses nothing else).
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
vision_ids = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=64).filter(
    lambda value: not value.isdigit()
)
cmd_names = st.text(string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=64)


@st.composite
def valid_messages(draw) -> WSMessageV3:
    msg_type = draw(st.sampled_from(["msg", "cmd", "heartbeat", "presence"]))
    target = (
        "echo"
        if msg_type in ("heartbeat", "presence")
        else draw(st.sampled_from(["direct", "group", "broadcast", "echo"]))
    )
    return WSMessageV3(
        msg_type=msg_type,
        target=target,
        from_id=draw(st.none() | vision_ids),
        to_id=draw(vision_ids) if target == "direct" else None,
        group_id=draw(st.none() | vision_ids),
        cmd=draw(cmd_names) if msg_type == "cmd" else None,
        msg=draw(st.none() | st.text()),
        payload=draw(st.none() | st.dictionaries(st.text(), json_values, max_size=5)),
    )


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from([*FIELDS, "targte", "x"]), json_values) | json_values)
def test_arbitrary_json_never_raises_anything_but_a_protocol_error(data):
    try:
        decode(orjson.dumps(data))
    except ProtocolError as problem:
        assert problem.code == ("invalid_message" if isinstance(data, dict) else "invalid_json")
        assert problem.msg
        assert all(set(item) == {"field", "problem"} for item in problem.problems)


@settings(max_examples=200)
@given(st.binary())
def test_arbitrary_bytes_never_raise_anything_but_a_protocol_error(frame):
    try:
        decode(frame)
    except ProtocolError as problem:
        try:
            is_object = isinstance(orjson.loads(frame), dict)
        except orjson.JSONDecodeError:
            is_object = False
        assert problem.code == ("invalid_message" if is_object else "invalid_json")


@settings(max_examples=300)
@given(valid_messages())
def test_every_valid_message_survives_encode_and_decode(message):
    assert decode(encode(message)) == message


def test_encode_always_writes_ten_keys_in_order():
    encoded = orjson.loads(encode(WSMessageV3(msg_type="msg", target="echo")))
    assert list(encoded) == list(FIELDS)
    assert encoded["version"] == "3"


def test_every_problem_is_reported_at_once():
    with pytest.raises(ProtocolError) as caught:
        decode(b'{"version": 3, "msg_type": "cmd", "target": "direct", "msg": 1, "extra": true}')
    assert [item["field"] for item in caught.value.problems] == ["version", "to_id", "cmd", "msg", "extra"]


def test_string_fields_are_not_coerced():
    with pytest.raises(ProtocolError) as caught:
        decode(b'{"msg_type": "msg", "target": "echo", "msg": 12, "payload": "x"}')
    assert {item["field"] for item in caught.value.problems} == {"msg", "payload"}


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("123", False),
        ("12a", True),
        ("a/b", False),
        ("é", False),
        ("a b", False),
        ("-_", True),
        ("٣", False),
    ],
)
def test_vision_id_rule(value, valid):
    assert (id_problem(value) is None) is valid
