"""docs/protocol.md, section 5: every error is answered to the sender alone, and the connection stays open."""

import orjson
import pytest

from .wsclient import Client, errors_of


@pytest.fixture
async def alice(url):
    client = await Client.joined(url("g_err", "c_alice"))
    await client.recv_where(event="join")
    return client


async def assert_still_open(client):
    await client.send(msg_type="msg", target="echo", msg="still here")
    assert (await client.recv())["msg"] == "still here"


async def test_error_frame_shape(alice):
    await alice.send(msg_type="msg", target="direct")
    error = await alice.recv()
    assert error == {
        "version": "3",
        "msg_type": "cmd",
        "target": "echo",
        "from_id": None,
        "to_id": None,
        "group_id": "g_err",
        "cmd": "ERROR",
        "msg": "to_id is required for target 'direct'",
        "payload": {
            "code": "invalid_message",
            "errors": [{"field": "to_id", "problem": "required for target 'direct'"}],
        },
        "sent_at": error["sent_at"],
    }
    await assert_still_open(alice)


@pytest.mark.parametrize("frame", ["not json", "{", "[1, 2]", '"text"', "3", "null", ""])
async def test_invalid_json(alice, frame):
    await alice.send_raw(frame)
    code, errors = errors_of(await alice.recv())
    assert code == "invalid_json" and errors == []
    await assert_still_open(alice)


async def test_binary_frame_is_unsupported(alice):
    await alice.send_raw(orjson.dumps({"msg_type": "msg", "target": "echo"}), binary=True)
    code, _ = errors_of(await alice.recv())
    assert code == "unsupported_frame"
    await assert_still_open(alice)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({}, {"msg_type": "required", "target": "required"}),
        ({"msg_type": "msg", "targte": "group"}, {"target": "required", "targte": "not a field of WS_Message_V3"}),
        ({"version": 3, "msg_type": "msg", "target": "echo"}, {"version": "not one of '3'"}),
        ({"version": "2", "msg_type": "msg", "target": "echo"}, {"version": "not one of '3'"}),
        ({"msg_type": "text", "target": "everyone"}, {"msg_type": "not one of", "target": "not one of"}),
        ({"msg_type": "msg", "target": "group", "to_id": "c_bob"}, {"to_id": "not allowed for target 'group'"}),
        ({"msg_type": "cmd", "target": "group"}, {"cmd": "required for msg_type 'cmd'"}),
        ({"msg_type": "msg", "target": "group", "cmd": "X"}, {"cmd": "not allowed for msg_type 'msg'"}),
        ({"msg_type": "heartbeat", "target": "group"}, {"target": "required to be 'echo' for msg_type 'heartbeat'"}),
        ({"msg_type": "presence", "target": "direct", "to_id": "c_b"}, {"target": "required to be 'echo'"}),
        ({"msg_type": "msg", "target": "echo", "msg": 5, "payload": [1]}, {"msg": "not a string", "payload": "not a"}),
        ({"msg_type": "cmd", "target": "echo", "cmd": "BAD CMD"}, {"cmd": "not a command name"}),
        ({"msg_type": "cmd", "target": "echo", "cmd": "x" * 65}, {"cmd": "not a command name"}),
        ({"msg_type": "msg", "target": "direct", "to_id": "123"}, {"to_id": "not a Vision ID"}),
        ({"msg_type": "msg", "target": "echo", "from_id": "a b"}, {"from_id": "not a Vision ID"}),
        ({"msg_type": "msg", "target": "echo", "group_id": ""}, {"group_id": "not a Vision ID"}),
        ({"msg_type": "msg", "target": "echo", "group_id": 7}, {"group_id": "not a string"}),
        ({"msg_type": "msg", "target": "echo", "targte": None}, {"targte": "not a field of WS_Message_V3"}),
    ],
)
async def test_invalid_message_lists_every_problem(alice, message, expected):
    await alice.send(**message)
    code, errors = errors_of(await alice.recv())
    assert code == "invalid_message"
    problems = {error["field"]: error["problem"] for error in errors}
    assert problems.keys() == expected.keys()
    for field, start in expected.items():
        assert problems[field].startswith(start), (field, problems[field])
    await assert_still_open(alice)


async def test_null_counts_as_absent(alice):
    await alice.send(msg_type="msg", target="echo", to_id=None, cmd=None, msg=None, payload=None, from_id=None)
    assert (await alice.recv())["msg_type"] == "msg"


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        ({"from_id": "c_mallory"}, ["from_id"]),
        ({"group_id": "g_elsewhere"}, ["group_id"]),
        ({"from_id": "c_mallory", "group_id": "g_elsewhere"}, ["from_id", "group_id"]),
    ],
)
async def test_someone_elses_ids_are_forbidden(alice, message, fields):
    await alice.send(msg_type="msg", target="group", **message)
    code, errors = errors_of(await alice.recv())
    assert code == "forbidden" and [error["field"] for error in errors] == fields
    await assert_still_open(alice)


async def test_errors_go_to_the_sender_alone(url, alice):
    bob = await Client.joined(url("g_err", "c_bob"))
    await alice.recv_where(event="join", client_id="c_bob")
    await bob.recv_where(event="join", client_id="c_bob")
    await alice.send_raw("garbage")
    errors_of(await alice.recv())
    await bob.nothing_within(0.2)


async def test_an_error_reply_stays_small_whatever_the_frame(alice):
    unknown = {f"k{n:04d}": 1 for n in range(5000)}  # 55 KB of unknown keys
    unknown["z" * 5000] = 1  # and one absurdly long one
    await alice.send_raw(orjson.dumps({"msg_type": "msg", "target": "echo", **unknown}).decode())
    frame = await alice.conn.read_message()
    assert len(frame) < 4096
    code, errors = errors_of(orjson.loads(frame))
    assert code == "invalid_message" and len(errors) == 20
    assert [error["field"] for error in errors[:2]] == ["k0000", "k0001"]
    assert orjson.loads(frame)["msg"].endswith("; and 4981 more unknown keys")
    await alice.send_raw(orjson.dumps({"msg_type": "msg", "target": "echo", "z" * 5000: 1}).decode())
    [error] = errors_of(await alice.recv())[1]
    assert error == {"field": "z" * 64 + "…", "problem": "not a field of WS_Message_V3"}
    await assert_still_open(alice)


@pytest.mark.parametrize("msg_type", ["msg", "heartbeat"])
async def test_a_payload_too_deep_to_encode_is_invalid_message_and_the_connection_stays(alice, msg_type):
    deep = '{"a":' * 300 + "{}" + "}" * 300
    await alice.send_raw(f'{{"msg_type": "{msg_type}", "target": "echo", "payload": {deep}}}')
    code, errors = errors_of(await alice.recv())
    assert code == "invalid_message"
    assert errors == [{"field": "payload", "problem": "nested deeper than 253 levels"}]
    await assert_still_open(alice)
