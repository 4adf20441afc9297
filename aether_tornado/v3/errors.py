"""Protocol error codes, the V3 close code and the close reasons, in one place."""

from typing import Final

# Error codes carried in the ``payload.code`` of an ERROR frame (docs/protocol.md, section 5).
INVALID_JSON: Final = "invalid_json"
UNSUPPORTED_FRAME: Final = "unsupported_frame"
INVALID_MESSAGE: Final = "invalid_message"
FORBIDDEN: Final = "forbidden"
RECIPIENT_OFFLINE: Final = "recipient_offline"
RATE_LIMITED: Final = "rate_limited"
UNAVAILABLE: Final = "unavailable"

# Codes of a refused handshake's JSON body (docs/protocol.md, section 1).
INVALID_ID: Final = "invalid_id"
FORBIDDEN_ORIGIN: Final = "forbidden_origin"
UNAUTHORIZED: Final = "unauthorized"
OVER_CAPACITY: Final = "over_capacity"
NOT_FOUND: Final = "not_found"
NOT_WEBSOCKET: Final = "not_websocket"
INVALID_POSITION: Final = "invalid_position"
HISTORY_OFF: Final = "history_off"
INVALID_LIMIT: Final = "invalid_limit"
BANNED: Final = "banned"
# A request for a host the server does not answer for (allowed_hosts): HTTP 421.
MISDIRECTED: Final = "misdirected_request"

# The close codes of RFC 6455 are frames.CloseCode. The client's token expired (IANA's 3000,
# "Unauthorized"): it gets a fresh one and reconnects at once.
CLOSE_TOKEN_EXPIRED: Final = 3000
# Application close codes the clients treat as final: they do not reconnect (a ban's among them).
FINAL_CLOSE_CODES: Final = range(4400, 4500)
CLOSE_BANNED: Final = 4403

# The reasons sent with close codes (besides the socket's own, in ws/websocket.py).
REASON_IDLE: Final = "idle timeout"
REASON_SHUTDOWN: Final = "server shutdown"
REASON_RATE: Final = "rate limit exceeded"
REASON_INTERNAL: Final = "internal error"
REASON_TOKEN_EXPIRED: Final = "token expired"
REASON_BANNED: Final = "banned by the server"


class ProtocolError(Exception):
    """A message the server cannot accept: answered to its sender, never fatal.

    ``problems`` holds ``{"field", "problem"}`` pairs, the ``payload.errors`` list.
    """

    def __init__(self, code: str, msg: str, problems: list[dict[str, str]] | None = None):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.problems = problems or []
