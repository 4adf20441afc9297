"""One WebSocket after its handshake, on an asyncio transport: RFC 6455's rules and the frame budget.

After the HTTP handshake (upgrade.py) the transport moves to a ``WebSocketProtocol``, which
reads every whole frame a read brings (frames.py parses them) and writes queued frames
straight to the transport. It owns what RFC 6455 asks of a server (pings answered, the
close handshake, a violation failed with its close code after what was queued before it)
and what keeps one peer from taking the process: every frame the peer sends costs from a
budget, control frames from a smaller one, its bytes are read no faster than a byte budget
allows, and a read handles at most ``FRAMES_PER_TURN`` frames before other sockets get theirs.
What a message means is its delegate's (``SocketDelegate``): the server's ``ClientSession``,
or the conformance suite's echo. It knows nothing of V3 and takes its limits as one small value.
"""

import asyncio
import enum
import time
from typing import NamedTuple, Protocol, cast

from . import frames
from .frames import CloseCode, FrameError, FrameReader
from .limits import TokenBucket

# Frames handled from one socket before the loop serves the others.
FRAMES_PER_TURN = 64

# The reasons the socket itself gives when it closes.
REASON_BACKLOG = "outbound buffer full"
REASON_PING = "ping timed out"


class State(enum.Enum):
    """Where a socket is in its life, as RFC 6455 names it (websockets' ``State``)."""

    CONNECTING = "connecting"  # the handshake's answer is not sent yet
    OPEN = "open"
    CLOSING = "closing"  # our close frame is out, or we failed the connection: nothing more is sent
    CLOSED = "closed"  # the TCP connection is gone


class Limits(NamedTuple):
    """What one peer may send and be sent (see config.py for each)."""

    max_message_bytes: int
    max_fragments: int
    frame_rate: float
    frame_burst: int
    byte_rate: float
    byte_burst: int
    control_rate: float
    control_burst: int
    outbound_buffer_bytes: int
    close_timeout: float


class SocketDelegate(Protocol):
    """What a socket tells the one it serves."""

    def on_open(self) -> None:
        """The 101 is out; set the socket's ``holding`` false (now or later) to read the peer's frames."""

    def on_message(self, opcode: int, payload: bytes | str) -> None:
        """A whole message: text as str, binary as bytes."""

    def on_failing(self, code: int, reason: str) -> None:
        """The peer broke the protocol or a limit: the connection is failed with this code."""

    def on_overflow(self) -> None:
        """The outbound buffer is full: the connection is closed with 1013."""

    def on_lost(self) -> None:
        """The socket is gone."""


class Flusher:
    """Writes every connection's queued frames in one pass, at the next loop iteration.

    Whatever one iteration reads and routes is queued first, then written: the frames that meet
    on a socket meanwhile leave in one write, which is what a fan-out costs most (a system
    call per frame). The pass comes at once after: a client waiting for its answer is not kept
    waiting while the process has nothing else to do (bench/RESULTS.md, "The flusher without a
    rest").
    """

    def __init__(self) -> None:
        self._dirty: list[WebSocketProtocol] = []

    def mark(self, conn: "WebSocketProtocol") -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.write_queued()


class WebSocketProtocol(asyncio.Protocol):
    """A server-side WebSocket: frames in, queued frames out, closed as RFC 6455 says.

    Each whole message goes to the delegate. Frames are read only while ``holding`` is false;
    the delegate sets it while a message's handling must finish before the next one
    (``resume`` reads on).
    """

    # Thousands of these live at once: slots instead of a dict each (bench/RESULTS.md, memory).
    __slots__ = (
        "_byte_budget",
        "_close_timer",
        "_closing",
        "_control_budget",
        "_delegate",
        "_flusher",
        "_frame_budget",
        "_lost",
        "_out",
        "_out_bytes",
        "_reader",
        "_response",
        "_throttle",
        "_transport",
        "_turn",
        "_unanswered_ping",
        "holding",
        "limits",
    )

    def __init__(
        self, limits: Limits, flusher: Flusher, response: bytes, early: bytes, delegate: SocketDelegate
    ) -> None:
        """``response`` is the handshake's 101, sent first; ``early`` what the client sent after its request."""
        self.limits = limits
        self._delegate = delegate
        self._flusher = flusher
        self._response = response
        self._reader = FrameReader(limits.max_message_bytes, limits.max_fragments)
        self._reader.feed(early)
        now = time.monotonic()
        self._frame_budget = TokenBucket(limits.frame_rate, limits.frame_burst, now)
        self._byte_budget = TokenBucket(limits.byte_rate, limits.byte_burst, now)
        self._throttle: asyncio.TimerHandle | None = None  # reading waits for the byte budget
        self._control_budget = TokenBucket(limits.control_rate, limits.control_burst, now)
        self._unanswered_ping = False
        self._transport: asyncio.Transport | None = None
        self.holding = True  # until the delegate's on_open says otherwise
        self._turn: asyncio.Handle | None = None  # the next turn of a long read
        # The socket's State, as plain flags read on every frame (see ``state``).
        self._closing = False  # our close frame is out (or the socket is gone): no more data frames
        self._lost = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0

    @property
    def queued_bytes(self) -> int:
        """What this process holds for the peer: queued, and not yet taken by the socket."""
        buffered = self._transport.get_write_buffer_size() if self._transport is not None else 0
        return self._out_bytes + buffered

    @property
    def state(self) -> State:
        """Past CONNECTING, the delegate's ``on_lost`` will run; from CLOSING, nothing more is sent."""
        if self._transport is None:
            return State.CONNECTING
        if self._lost:
            return State.CLOSED
        return State.CLOSING if self._closing else State.OPEN

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses, but alike
        self._transport.write(self._response)
        self._response = b""
        self._delegate.on_open()
        self.read_frames()

    def data_received(self, data: bytes) -> None:
        if self._reader.closed:
            return  # failed, closed by the peer, or gone: what follows is discarded
        self._reader.feed(data)
        if self._reader.pending > self.limits.max_message_bytes + 65536:
            assert self._transport is not None  # data comes after connection_made
            self._transport.pause_reading()  # a peer far ahead of us waits in its own buffers
        self.read_frames()

    def _unthrottle(self) -> None:
        self._throttle = None
        self.read_frames()

    def eof_received(self) -> bool:
        return False  # the peer is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._closing = self._reader.closed = True
        for handle in (self._close_timer, self._turn, self._throttle):
            if handle is not None:
                handle.cancel()
        self._delegate.on_lost()

    # Reading

    def resume(self, _: object = None) -> None:
        """Read on after ``holding``."""
        self.holding = False
        if self._transport is not None:
            self.read_frames()

    def read_frames(self) -> None:
        """Handle the frames that have arrived, in order, until one must wait or the turn is over."""
        if self._turn is not None or self._throttle is not None or self._reader.closed:
            return
        assert self._transport is not None  # frames are read only once connection_made has run
        reader, now = self._reader, time.monotonic()
        handled = 0
        try:
            while not self.holding and not reader.closed:
                if handled == FRAMES_PER_TURN and not self._transport.is_closing():
                    self._turn = asyncio.get_running_loop().call_soon(self._next_turn)
                    self._transport.pause_reading()  # until this socket's frames are all handled
                    return
                event = reader.next()
                if event is None:
                    break
                handled += 1
                if not self._frame_budget.take(now):
                    return self.fail(CloseCode.POLICY_VIOLATION, "too many frames")
                wait = self._byte_budget.spend(reader.frame_size, now)
                opcode, payload = event
                self._unanswered_ping = False
                if opcode == frames.TEXT or opcode == frames.BINARY:  # whole messages, the common case
                    if not self._closing:  # after our close, only the peer's close matters
                        self._delegate.on_message(opcode, payload)
                elif opcode != frames.CONTINUATION:
                    self._control(opcode, cast(bytes, payload), now)
                if wait and not reader.closed and not self._transport.is_closing():
                    # Past its byte budget: the peer's frames wait, its socket is not read, TCP pushes back.
                    self._transport.pause_reading()
                    self._throttle = asyncio.get_running_loop().call_later(wait, self._unthrottle)
                    return None
        except FrameError as error:
            return self.fail(error.code, error.reason)
        self._read_on()
        return None

    def _read_on(self) -> None:
        """Read from the socket again, unless a long read's next turn, the byte budget or a full inbox holds it."""
        assert self._transport is not None  # called by read_frames only
        if self._turn is not None or self._throttle is not None or self._transport.is_closing():
            return
        if self._reader.pending <= self.limits.max_message_bytes + 14:
            self._transport.resume_reading()

    def _next_turn(self) -> None:
        self._turn = None
        self.read_frames()

    def _control(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == frames.CLOSE:
            return self._peer_closed(payload)
        if not self._control_budget.take(now):
            return self.fail(CloseCode.POLICY_VIOLATION, "too many pings or pongs")
        if opcode == frames.PING and not self._closing:
            self.send(frames.build(frames.PONG, payload))
        return None

    def _peer_closed(self, payload: bytes) -> None:
        """Answer the peer's close with its code (unless ours went first), then end the connection."""
        if not self._closing:
            code = frames.close_code(payload)
            self._send_close(CloseCode.NORMAL if code == CloseCode.NO_STATUS else code, "")
        assert self._transport is not None  # the peer's close was read from it
        self._transport.close()  # after what is buffered; the server ends the TCP connection first

    # Writing

    def send(self, frame: bytes) -> None:
        """Queue a ready frame for the next flush; past the outbound cap, close with 1013."""
        if self._closing:
            return
        assert self._transport is not None  # frames are sent only once the connection is made
        waiting = self._out_bytes + len(frame) + self._transport.get_write_buffer_size()
        if waiting > self.limits.outbound_buffer_bytes:
            self.overflow()
            return
        if not self._out:
            self._flusher.mark(self)
        self._out.append(frame)
        self._out_bytes += len(frame)

    def write_queued(self) -> None:
        out, self._out, self._out_bytes = self._out, [], 0
        if out and not self._closing:
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)  # asyncio sends at once and keeps only what the kernel refused

    def _send_close(self, code: int, reason: str) -> None:
        """What was queued, then the close frame; nothing after it."""
        self.write_queued()
        self._closing = True
        self._write(frames.build(frames.CLOSE, frames.close_payload(code, reason)))

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake; drop the socket if the peer never answers."""
        if self._closing:
            return
        self._send_close(code, reason)
        self._drop_later()

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): what was queued, the close frame, then the end.

        Our side is shut after the close frame and the peer's bytes are read and discarded
        until it closes, so the close frame is not lost to a reset.
        """
        self._reader.closed = True  # the input is discarded from now on
        if not self._closing:
            self._delegate.on_failing(code, reason)
            self._send_close(code, reason)
        if self._transport is None or self._transport.is_closing():
            return
        if self._transport.can_write_eof():
            self._transport.write_eof()
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        self._transport.resume_reading()
        self._drop_later()

    def _drop_later(self) -> None:
        if self._transport is not None and self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(self.limits.close_timeout, self.abort)

    def abort(self) -> None:
        """Drop the socket at once, without a close frame: what a peer that never answers gets."""
        if self._transport is not None:
            self._transport.abort()

    def overflow(self) -> None:
        """The peer is sent more than its outbound buffer holds: drop what is queued, close with 1013."""
        self._out, self._out_bytes = [], 0
        self._delegate.on_overflow()
        self.close(CloseCode.TRY_AGAIN_LATER, REASON_BACKLOG)

    def keepalive(self) -> None:
        """Ping the peer; close it if the last ping got no frame back."""
        if self._closing:
            return
        if self._unanswered_ping:
            self.close(CloseCode.NORMAL, REASON_PING)
            return
        self._unanswered_ping = True
        self._write(frames.build(frames.PING))
