"""RFC 6455 frames without I/O: bytes in, one event per frame out; frames built for sending.

The server's connections, the test client and the load generator share this one parser and
these builders, so each rule of the RFC is written once. ``FrameReader`` checks everything
the RFC asks of the peer (masking, reserved bits and opcodes, control frames, the order of
fragments, UTF-8 text, the close payload) and the limits the server sets (message size,
fragments per message); a break is a ``FrameError`` that names the close code to fail the
connection with. Invalid UTF-8 is found as soon as the bytes that make it arrive, whether
they end a message, a fragment or only a read.
"""

import codecs
import enum
import struct
from typing import Any


class Opcode(enum.IntEnum):
    """A frame's opcode (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


# The parser compares every frame's opcode: a module's names are read several times faster
# than an enum's attributes.
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = Opcode


class CloseCode(enum.IntEnum):
    """The close codes the server sends and reads (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    NO_STATUS = 1005  # a close frame without a code; never sent
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


def _xor_mask(mask: bytes, data: bytes) -> bytes:
    """``data`` XORed with the 4-byte key ``mask`` (RFC 6455 section 5.3), in Python."""
    length = len(data)
    stream = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(length, "little")


try:  # the same in C when Tornado was built with its speedups: ten times faster
    from tornado.speedups import websocket_mask as mask
except ImportError:  # pragma: no cover - Tornado ships them on every platform we run on
    mask = _xor_mask


# The close codes a peer may send (RFC 6455 section 7.4 and IANA's registry): 1004-1006 and
# 1015 are reserved for reports, never for a frame.
def valid_close_code(code: int) -> bool:
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class FrameError(Exception):
    """The peer broke the protocol or a limit: fail the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


_Utf8Decoder = codecs.getincrementaldecoder("utf-8")

Event = tuple[int, bytes | str]


class FrameReader:
    """Splits one peer's byte stream into frames; ``next`` returns one event per frame.

    Events are ``(opcode, payload)``: ``(TEXT, str)`` and ``(BINARY, bytes)`` for whole
    messages (fragments joined), ``(CONTINUATION, b"")`` for a fragment that does not end
    its message, ``(PING | PONG, bytes)``, and ``(CLOSE, bytes)`` with a checked payload,
    after which nothing more is read. ``from_client`` says which side's frames these are:
    a client's must be masked, a server's must not.
    """

    __slots__ = (
        "_checked",
        "_continued",
        "_decoder",
        "_fragments",
        "_masked",
        "_max_fragments",
        "_max_message",
        "_message_bytes",
        "_opcode",
        "_partial",
        "_pos",
        "buffer",
        "closed",
        "frame_size",
    )

    def __init__(self, max_message_bytes: int = 1 << 62, max_fragments: int = 1 << 62, from_client: bool = True):
        self.buffer = bytearray()
        self._pos = 0  # where the next frame starts; what is before it was read already
        self._masked = from_client
        self._max_message = max_message_bytes
        self._max_fragments = max_fragments
        self._continued: list[Any] | None = None  # the parts of a fragmented message under way
        self._opcode = 0  # its opcode
        self._fragments = 0  # its frames so far
        self._message_bytes = 0  # its bytes so far
        self._decoder: codecs.BufferedIncrementalDecoder | None = None  # its UTF-8 decoder, when it is text
        # The decoder checking a text frame whose payload is still arriving.
        self._partial: codecs.BufferedIncrementalDecoder | None = None
        self._checked = 0  # how much of that payload it has checked
        self.closed = False
        self.frame_size = 0  # bytes of the frame ``next`` returned last, head included

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self.buffer[: self._pos]
            self._pos = 0
        self.buffer += data

    @property
    def pending(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self.buffer) - self._pos

    def next(self) -> Event | None:
        """The next frame's event, or None until more bytes arrive; raises FrameError."""
        buffer, pos = self.buffer, self._pos
        available = len(buffer) - pos
        if available < 2 or self.closed:
            return None
        first, second = buffer[pos], buffer[pos + 1]
        final, opcode, length, head = first & 0x80, first & 0x0F, second & 0x7F, 2
        if first & 0x70:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        if bool(second & 0x80) != self._masked:
            raise FrameError(
                CloseCode.PROTOCOL_ERROR,
                "client frames must be masked" if self._masked else "server frames are not masked",
            )
        if length == 126:
            if available < 4:
                return None
            length, head = struct.unpack_from("!H", buffer, pos + 2)[0], 4
        elif length == 127:
            if available < 10:
                return None
            length, head = struct.unpack_from("!Q", buffer, pos + 2)[0], 10
        if not (final and opcode == TEXT and length <= self._max_message and self._continued is None):
            self._check_header(final, opcode, length)  # all but the most common frame: a whole text message
        if self._masked:
            head += 4
        start, end = pos + head, pos + head + length
        if len(buffer) < end:
            if opcode == TEXT or (opcode == CONTINUATION and self._decoder is not None):
                self._check_arriving(start, opcode)
            return None
        payload = bytes(buffer[start:end])
        if self._masked and length:
            payload = mask(bytes(buffer[start - 4 : start]), payload)
        self._pos = end
        self.frame_size = end - pos
        self._partial, self._checked = None, 0
        if opcode == TEXT and final:  # the common case: a whole message in one frame
            try:
                return TEXT, payload.decode()
            except UnicodeDecodeError:
                raise FrameError(CloseCode.INVALID_DATA, "text is not UTF-8") from None
        if opcode & 0x8:
            if opcode == CLOSE:
                _check_close(payload)
                self.closed = True
            return opcode, payload
        return self._fragment(final, opcode, payload)

    def _check_header(self, final: int, opcode: int, length: int) -> None:
        if opcode & 0x8:
            if opcode > PONG:
                raise FrameError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode}")
            if not final:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
        elif opcode == CONTINUATION:
            if self._continued is None:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "continuation frame with no message to continue")
            if self._fragments >= self._max_fragments:
                raise FrameError(
                    CloseCode.POLICY_VIOLATION, f"more than {self._max_fragments} fragments in one message"
                )
            if self._message_bytes + length > self._max_message:
                raise FrameError(CloseCode.MESSAGE_TOO_BIG, "message too big")
        elif opcode > BINARY:
            raise FrameError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode}")
        elif self._continued is not None:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "new message before the last one's final fragment")
        elif length > self._max_message:
            raise FrameError(CloseCode.MESSAGE_TOO_BIG, "message too big")

    def _fragment(self, final: int, opcode: int, payload: bytes) -> Event:
        """A data frame that starts, continues or ends a fragmented message."""
        if opcode != CONTINUATION:
            if final:  # a whole binary message
                return opcode, payload
            self._continued, self._opcode, self._fragments, self._message_bytes = [], opcode, 0, 0
            self._decoder = _Utf8Decoder() if opcode == TEXT else None
        self._fragments += 1
        self._message_bytes += len(payload)
        assert self._continued is not None  # begun above, or a continuation _check_header let through
        if self._decoder is not None:
            try:
                self._continued.append(self._decoder.decode(payload, bool(final)))
            except UnicodeDecodeError:
                raise FrameError(CloseCode.INVALID_DATA, "text is not UTF-8") from None
        else:
            self._continued.append(payload)
        if not final:
            return CONTINUATION, b""
        parts, self._continued, self._decoder = self._continued, None, None
        return (self._opcode, "".join(parts)) if self._opcode == TEXT else (self._opcode, b"".join(parts))

    def _check_arriving(self, start: int, opcode: int) -> None:
        """Check the UTF-8 of a text frame's payload so far, so a bad byte fails at once."""
        arrived = len(self.buffer) - start
        if arrived <= self._checked:
            return
        if self._partial is None:
            self._partial = _Utf8Decoder()
            if opcode == CONTINUATION:
                assert self._decoder is not None  # next() checks a continuation only while text is under way
                self._partial.setstate(self._decoder.getstate())
        chunk = bytes(self.buffer[start + self._checked : start + arrived])
        if self._masked:
            key = bytes(self.buffer[start - 4 : start])
            turn = self._checked % 4
            chunk = mask(key[turn:] + key[:turn], chunk)
        try:
            self._partial.decode(chunk)
        except UnicodeDecodeError:
            raise FrameError(CloseCode.INVALID_DATA, "text is not UTF-8") from None
        self._checked = arrived


def _check_close(payload: bytes) -> None:
    if len(payload) == 1:
        raise FrameError(CloseCode.PROTOCOL_ERROR, "close payload of one byte")
    if payload and not valid_close_code(struct.unpack_from("!H", payload)[0]):
        raise FrameError(CloseCode.PROTOCOL_ERROR, "invalid close code")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None


def close_code(payload: bytes) -> int:
    """The code of a checked close payload; NO_STATUS when it has none."""
    return struct.unpack_from("!H", payload)[0] if payload else CloseCode.NO_STATUS


def build(opcode: int, payload: bytes = b"", final: bool = True, mask_key: bytes | None = None) -> bytes:
    """One frame (RFC 6455 section 5.2): unmasked from a server, masked with ``mask_key`` from a client."""
    length = len(payload)
    first = (0x80 if final else 0) | opcode
    bit = 0x80 if mask_key is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, bit | length)
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", first, bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, bit | 127, length)
    if mask_key is None:
        return head + payload
    return head + mask_key + (mask(mask_key, payload) if length else b"")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame: a message encoded once for all its receivers."""
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", 0x81, length) + payload
    if length <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then the reason cut to fit 125 bytes on a character boundary."""
    encoded = reason.encode()
    if len(encoded) > 123:
        encoded = encoded[:123].decode(errors="ignore").encode()
    return struct.pack("!H", code) + encoded
