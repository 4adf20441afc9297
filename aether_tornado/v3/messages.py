"""The frames the server itself originates: snapshots, presence events, heartbeats, errors."""

from typing import Any

from .errors import ProtocolError
from .schema import CmdName, Payload, VisionId, WSMessageV3, utc_timestamp


def snapshot(group_id: str, clients: list[str], recovery: dict[str, Any] | None = None) -> WSMessageV3:
    """``recovery``, for a client that asked to recover, says whether it did and where each stream is."""
    payload: dict[str, Any] = {"event": "snapshot", "clients": clients}
    if recovery is not None:
        payload["recovery"] = recovery
    return WSMessageV3(
        msg_type="presence",
        target="echo",
        group_id=VisionId(group_id),
        payload=Payload(payload),
        sent_at=utc_timestamp(),
    )


def joined(group_id: str, client_id: str) -> WSMessageV3:
    return WSMessageV3(
        msg_type="presence",
        target="group",
        from_id=VisionId(client_id),
        group_id=VisionId(group_id),
        payload=Payload({"event": "join", "client_id": client_id}),
        sent_at=utc_timestamp(),
    )


def left(group_id: str, client_id: str, reason: str) -> WSMessageV3:
    """``reason`` is ``closed`` (last connection closed) or ``timeout`` (lease expired)."""
    return WSMessageV3(
        msg_type="presence",
        target="group",
        from_id=VisionId(client_id),
        group_id=VisionId(group_id),
        payload=Payload({"event": "leave", "client_id": client_id, "reason": reason}),
        sent_at=utc_timestamp(),
    )


def heartbeat_reply(group_id: str, request: WSMessageV3) -> WSMessageV3:
    """The answer to a heartbeat; ``msg`` and ``payload`` come back as sent, for RTT checks."""
    return WSMessageV3(
        msg_type="heartbeat",
        target="echo",
        group_id=VisionId(group_id),
        msg=request.msg,
        payload=request.payload,
        sent_at=utc_timestamp(),
    )


def error(group_id: str, problem: ProtocolError) -> WSMessageV3:
    return WSMessageV3(
        msg_type="cmd",
        target="echo",
        group_id=VisionId(group_id),
        cmd=CmdName("ERROR"),
        msg=problem.msg,
        payload=Payload({"code": problem.code, "errors": problem.problems}),
        sent_at=utc_timestamp(),
    )
