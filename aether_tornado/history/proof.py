"""Recovery proofs: a client shows that the positions it recovers from were its own.

With the snapshot of a connection that recovers, the server issues a proof: for each stream,
the position from which this client_id, in this group, has received it (its floor), signed
with a secret every process shares. A client that reconnects presents the proof with its
positions, and a stream is replayed only from a position in the floor's epoch, at or after
the floor. So a client recovers only what it could have received live: a newcomer gets
nothing from before it first joined, and whoever connects under another's client_id without
that client's proof gets that client's direct messages from now on only, as without history.
Checking a proof costs one HMAC per handshake and nothing per message.
"""

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from ..v3.channels import Position

# A proof longer than this is no proof of ours: three positions, their signature and separators.
MAX_PROOF = 512
_CONTEXT = b"aether-tornado recovery proof 1\0"
_MAC_BYTES = 16


class Proofs:
    def __init__(self, secret: bytes | None = None) -> None:
        """Without ``secret``, a random one: until the processes share one (history.share_secret)."""
        self.secret = secret or secrets.token_bytes(32)

    def issue(self, group_id: str, client_id: str, floors: Sequence[Position | None]) -> str:
        """The proof that ``client_id`` in ``group_id`` has received each stream since its floor."""
        text = ",".join("" if floor is None else str(floor) for floor in floors).encode()
        return f"{_encode(text)}.{_encode(self._mac(group_id, client_id, text))}"

    def floors(self, proof: str, group_id: str, client_id: str, streams: int) -> list[Position | None] | None:
        """The floors a proof vouches for, one per stream; None for anything that is not a valid
        proof for this client_id in this group, signed with the current secret."""
        body, _, signature = proof.partition(".")
        if len(proof) > MAX_PROOF:
            return None
        try:
            text, mac = _decode(body), _decode(signature)
            if not hmac.compare_digest(mac, self._mac(group_id, client_id, text)):
                return None
            items = text.decode().split(",")
            if len(items) != streams:
                return None
            return [Position.parse(item) if item else None for item in items]
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
            return None

    def _mac(self, group_id: str, client_id: str, text: bytes) -> bytes:
        message = b"\0".join((_CONTEXT, group_id.encode(), client_id.encode(), text))
        return hmac.new(self.secret, message, hashlib.sha256).digest()[:_MAC_BYTES]


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    """Strict base64url: anything else raises ValueError."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
