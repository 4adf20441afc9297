"""WS_Message_V3: the one message shape, its strict decoder and its encoder.

Decoding reports every problem of a message at once, each with the field it concerns,
so a frontend developer fixes a message in one round trip instead of one per typo.
"""

import heapq
import re
import time
from collections.abc import Callable
from typing import Any, Literal, NewType, get_args

import attrs
import orjson
from cattrs import ClassValidationError, Converter
from cattrs.literals import is_literal

from .errors import INVALID_JSON, INVALID_MESSAGE, ProtocolError
from .ids import id_problem

MsgType = Literal["msg", "cmd", "heartbeat", "presence"]
Target = Literal["direct", "group", "broadcast", "echo"]
Version = Literal["3"]
VisionId = NewType("VisionId", str)
CmdName = NewType("CmdName", str)
Payload = NewType("Payload", dict[str, Any])

_CMD_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# Problems listed in one error reply, and the characters of a field name shown in one, so that
# a reply stays a few KiB whatever the input (a frame of thousands of unknown keys, say).
MAX_PROBLEMS = 20
MAX_FIELD_SHOWN = 64
# Nesting orjson can encode (its recursion limit), the message object itself counting as one.
MAX_DEPTH = 254


@attrs.define(kw_only=True)
class WSMessageV3:
    """One frame in either direction; the server always sends all ten keys.

    Never changed once built (the server stamps a copy), but not frozen: two are built for
    every message a client sends, and a frozen class's constructor costs three times as
    much, a tenth of an echo's CPU (bench/RESULTS.md, "Per message").
    """

    version: Version = "3"
    msg_type: MsgType
    target: Target
    from_id: VisionId | None = None
    to_id: VisionId | None = None
    group_id: VisionId | None = None
    cmd: CmdName | None = None
    msg: str | None = None
    payload: Payload | None = None
    sent_at: str | None = None


FIELDS = tuple(field.name for field in attrs.fields(WSMessageV3))
_FIELD_SET = frozenset(FIELDS)


def _structure_str(value: Any, _: type) -> str:
    # cattrs would call str() on anything; the protocol wants a real string.
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _structure_vision_id(value: Any, _: type) -> str:
    text = _structure_str(value, str)
    why = id_problem(text)
    if why is not None:
        raise ValueError(f"not a Vision ID: {why}")
    return text


def _structure_cmd(value: Any, _: type) -> str:
    text = _structure_str(value, str)
    if not _CMD_NAME.fullmatch(text):
        raise ValueError("not a command name: 1 to 64 characters of A-Z a-z 0-9 _ . : -")
    return text


def _structure_payload(value: Any, _: type) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _literal_hook(literal: Any) -> Callable[[Any, type], str]:
    """One check per Literal type, its choices looked up once, not per message."""
    choices = frozenset(get_args(literal))
    problem = "not one of " + ", ".join(f"'{choice}'" for choice in get_args(literal))

    def structure(value: Any, _: type) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(problem)
        return value

    return structure


converter = Converter(detailed_validation=True)  # decode() reports unknown keys itself, bounded
for kind, hook in (
    (str, _structure_str),
    (VisionId, _structure_vision_id),
    (CmdName, _structure_cmd),
    (Payload, _structure_payload),
):
    converter.register_structure_hook(kind, hook)
    # decode() drops nulls first, so an optional field's hook only ever sees a value.
    converter.register_structure_hook(kind | None, hook)
converter.register_structure_hook_factory(is_literal, _literal_hook)


def _field_problems(error: ClassValidationError) -> dict[str, str]:
    """Turn cattrs' collected exceptions into ``{field: problem}``."""
    with_notes, _ = error.group_exceptions()
    return {note.name: "required" if isinstance(exc, KeyError) else str(exc) for exc, note in with_notes}


def _rule_problems(fields: dict[str, Any], bad: dict[str, str]) -> dict[str, str]:
    """Rules that tie two fields; each names the field that must change."""
    problems: dict[str, str] = {}
    target, msg_type = fields.get("target"), fields.get("msg_type")
    if "target" not in bad and "to_id" not in bad and target is not None:
        if target == "direct" and "to_id" not in fields:
            problems["to_id"] = "required for target 'direct'"
        elif target != "direct" and "to_id" in fields:
            problems["to_id"] = f"not allowed for target '{target}'"
    if "msg_type" not in bad and msg_type is not None:
        if "cmd" not in bad:
            if msg_type == "cmd" and "cmd" not in fields:
                problems["cmd"] = "required for msg_type 'cmd'"
            elif msg_type != "cmd" and "cmd" in fields:
                problems["cmd"] = f"not allowed for msg_type '{msg_type}'"
        needs_echo = msg_type in ("heartbeat", "presence")
        if needs_echo and "target" not in bad and target is not None and target != "echo":
            problems["target"] = f"required to be 'echo' for msg_type '{msg_type}'"
    return problems


def decode(frame: str | bytes) -> WSMessageV3:
    """Parse one client frame, or raise ProtocolError listing every problem.

    ``null`` counts as absent and a client's ``sent_at`` is ignored, whatever its value.
    """
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError(INVALID_JSON, "The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ProtocolError(INVALID_JSON, "A message must be a JSON object.")
    # null counts as absent for the fields; an unknown key is reported, null or not.
    fields, unknown = {}, []
    for key, value in data.items():
        if key not in _FIELD_SET:
            unknown.append(key)
        elif value is not None:
            fields[key] = value
    fields.pop("sent_at", None)
    try:
        message = converter.structure(fields, WSMessageV3)
        problems: dict[str, str] = {}
    except ClassValidationError as error:
        message = None
        problems = _field_problems(error)
    problems |= _rule_problems(fields, problems)
    if problems or unknown:
        raise _invalid(problems, unknown)
    assert message is not None  # structure() either returns or raises
    return message


def _invalid(problems: dict[str, str], unknown: list[str]) -> ProtocolError:
    """Every problem, in field order then unknown keys sorted, at most MAX_PROBLEMS of them listed."""
    order = {name: index for index, name in enumerate(FIELDS)}
    listed = sorted(problems.items(), key=lambda item: order[item[0]])
    room = MAX_PROBLEMS - len(listed)
    listed += [(key, "not a field of WS_Message_V3") for key in heapq.nsmallest(room, unknown)]
    more = len(problems) + len(unknown) - len(listed)
    shown = [(_shown(field), problem) for field, problem in listed]
    text = "; ".join(f"{field} is {problem}" for field, problem in shown)
    if more:
        text += f"; and {more} more unknown keys"
    return ProtocolError(INVALID_MESSAGE, text, [{"field": field, "problem": problem} for field, problem in shown])


def _shown(field: str) -> str:
    return field if len(field) <= MAX_FIELD_SHOWN else field[:MAX_FIELD_SHOWN] + "…"


def too_deep(field: str = "payload") -> ProtocolError:
    """A message nested deeper than the encoder can go: the client's mistake, not ours."""
    problem = f"nested deeper than {MAX_DEPTH - 1} levels"
    return ProtocolError(INVALID_MESSAGE, f"{field} is {problem}", [{"field": field, "problem": problem}])


def encode(message: WSMessageV3) -> bytes:
    """Serialize a message with all ten keys; done once per message, never per receiver.

    A payload too deep for the encoder raises ProtocolError (``invalid_message``).
    """
    try:
        return _encode(message)
    except orjson.JSONEncodeError:
        raise too_deep() from None


def _encode(message: WSMessageV3) -> bytes:
    return orjson.dumps(
        {
            "version": message.version,
            "msg_type": message.msg_type,
            "target": message.target,
            "from_id": message.from_id,
            "to_id": message.to_id,
            "group_id": message.group_id,
            "cmd": message.cmd,
            "msg": message.msg,
            "payload": message.payload,
            "sent_at": message.sent_at,
        }
    )


# The last millisecond and whole second formatted, with their texts: under load, many messages
# are stamped within one millisecond, and strftime runs once a second.
_millisecond: list[Any] = [-1, ""]
_second: list[Any] = [-1, ""]
_UTC_SECONDS = "%Y-%m-%dT%H:%M:%S"


def utc_at(seconds: float) -> str:
    """A time (seconds since the epoch) as ``sent_at`` writes one."""
    whole, millis = divmod(round(seconds * 1000), 1000)
    return f"{time.strftime(_UTC_SECONDS, time.gmtime(whole))}.{millis:03d}Z"


def utc_timestamp() -> str:
    """Now as ISO 8601 UTC with milliseconds and ``Z``: the ``sent_at`` format."""
    millis = int(time.time() * 1000)
    if millis != _millisecond[0]:
        seconds, rest = divmod(millis, 1000)
        if seconds != _second[0]:
            _second[:] = [seconds, time.strftime(_UTC_SECONDS, time.gmtime(seconds))]
        _millisecond[:] = [millis, f"{_second[1]}.{rest:03d}Z"]
    stamp: str = _millisecond[1]
    return stamp
