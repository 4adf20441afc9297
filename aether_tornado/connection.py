"""One client's WebSocket after the handshake: frames in and out on an asyncio transport.

Tornado answers the HTTP handshake; then the socket moves to this protocol object, which
reads every whole frame a read brings (Tornado's reader awaits three reads per frame) and
writes queued frames straight to the transport. The protocol rules are RFC 6455's: UTF-8
text, the close handshake, ping and pong, fragmentation, a size limit.
"""

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Coroutine
from typing import Any, cast

from tornado.util import _websocket_mask

from .errors import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    RATE_LIMITED,
    REASON_BACKLOG,
    REASON_INTERNAL,
    REASON_PING,
    REASON_RATE,
    UNSUPPORTED_FRAME,
    ProtocolError,
)
from .limits import TokenBucket
from .node import Node, Rest
from .schema import decode

log = logging.getLogger(__name__)

# After sending a close frame, how long to wait for the peer's before dropping the socket.
CLOSE_WAIT = 5.0


class Flusher:
    """Writes every connection's queued frames in one pass, at most once per ``interval``.

    A fan-out queues one frame on each receiver. An idle server writes at the next loop
    iteration; a busy one waits until ``interval`` after its last pass began, and at least as
    long as that pass took, so the frames that meet on one socket meanwhile leave in one
    write: the system call per frame is what a fan-out costs most (see bench/RESULTS.md).
    The longer the passes, the more frames each write carries, so throughput grows with load.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self._interval = interval
        self._dirty: list[ClientConnection] = []
        self._next = 0.0

    def mark(self, conn: "ClientConnection") -> None:
        if not self._dirty:
            loop = asyncio.get_running_loop()
            wait = self._next - loop.time()
            if wait > 0:
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.write_queued()
        # Rest at least as long as the pass took: meanwhile messages are read and routed, and
        # the frames they bring meet on their sockets for the next pass.
        self._next = start + max(self._interval, 2 * (loop.time() - start))


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload


class ClientConnection(asyncio.Protocol):
    """What the node knows as a connection (hub.Connection), on an asyncio transport."""

    def __init__(
        self,
        node: Node,
        flusher: Flusher,
        handshake: tuple[str, str, bool],
        response: bytes,
    ) -> None:
        """``handshake`` is (group_id, client_id, may_broadcast); ``response`` the 101 to send first."""
        group_id, client_id, may_broadcast = handshake
        self._response = response
        self.node, self.config, self._flusher = node, node.settings, flusher
        self.group_id, self.client_id, self.may_broadcast = group_id, client_id, may_broadcast
        self.lease_key = node.new_lease_key()
        now = time.monotonic()
        self.last_seen = now
        self._bucket = TokenBucket(self.config.rate_limit, self.config.rate_burst, now)
        self._strikes = 0
        self._unanswered_ping = False
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._fragments: bytearray | None = None
        self._fragments_opcode = 0
        self._busy = False  # a message's routing is waiting (on Redis): the next ones wait too
        self._closing = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._held: list[bytes] | None = []  # frames held until the snapshot is out
        self._held_bytes = 0
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._attached: asyncio.Task | None = None
        self.made = False  # connection_made ran: connection_lost will release the socket slot
        # Only Redis makes routing wait; alone, a message is routed without a Task.
        self._eager = node.settings.redis_url is None

    def feed_early(self, data: bytes) -> None:
        """Bytes the client sent right after its request, read by Tornado before the hand-over."""
        self._inbox += data

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses, but alike
        self._transport.write(self._response)
        self.made = True
        self._attached = asyncio.ensure_future(self.node.attach(self))
        self._attached.add_done_callback(self._after_attach)

    def _after_attach(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("attaching %s/%s failed", self.group_id, self.client_id, exc_info=task.exception())
            self.close(CLOSE_INTERNAL_ERROR, REASON_INTERNAL)
            return
        self._take_frames()

    def data_received(self, data: bytes) -> None:
        self._inbox += data
        if len(self._inbox) > self.config.max_message_bytes + 14 + 65536:
            self._transport.pause_reading()  # a peer far ahead of us waits in its own buffers
        if self._attached is not None and self._attached.done():
            self._take_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.node.sockets -= 1
        self.node.spawn(self._detach())

    async def _detach(self) -> None:
        try:
            with contextlib.suppress(Exception):  # a failed attach was logged already
                await self._attached
        finally:
            await self.node.detach(self)

    # Reading

    def _take_frames(self) -> None:
        """Handle every whole frame in the inbox, in order, until one must wait."""
        buffer = self._inbox
        start, size = 0, len(buffer)
        try:
            while size - start >= 2 and not self._busy and not self._transport.is_closing():
                first, second = buffer[start], buffer[start + 1]
                final, opcode, length, head = first & 0x80, first & 0x0F, second & 0x7F, 2
                if first & 0x70 or not second & 0x80:  # reserved bits, or an unmasked client frame
                    return self._fail()
                if length == 126:
                    if size - start < 4:
                        break
                    length, head = struct.unpack_from("!H", buffer, start + 2)[0], 4
                elif length == 127:
                    if size - start < 10:
                        break
                    length, head = struct.unpack_from("!Q", buffer, start + 2)[0], 10
                if opcode & 0x8 and (not final or length > 125):
                    return self._fail()
                pending = len(self._fragments) if self._fragments is not None and not opcode & 0x8 else 0
                if length + pending > self.config.max_message_bytes:
                    self.close(CLOSE_TOO_BIG, "message too big")
                    self._transport.close()  # after the close frame, without reading the rest
                    return None
                end = start + head + 4 + length
                if size < end:
                    break
                payload = _websocket_mask(
                    bytes(buffer[start + head : start + head + 4]), bytes(buffer[start + head + 4 : end])
                )
                start = end
                self._frame(final, opcode, payload)
        finally:
            del buffer[:start]
            if self._transport is not None and len(buffer) <= self.config.max_message_bytes + 14:
                self._transport.resume_reading()
        return None

    def _frame(self, final: int, opcode: int, payload: bytes) -> None:
        if opcode == 0x8:  # the peer's close: answered (unless we closed first), then the end
            if len(payload) == 1:
                return self._fail()
            code = struct.unpack_from("!H", payload)[0] if payload else CLOSE_NORMAL
            valid = 1000 <= code <= 1003 or 1007 <= code <= 1011 or 3000 <= code <= 4999
            self.close(code if valid else CLOSE_PROTOCOL_ERROR, "")
            self._transport.close()
        elif self._closing:
            pass  # after our close frame, only the peer's close matters
        elif opcode == 0x9:
            self._unanswered_ping = False
            if self._transport.get_write_buffer_size() > self.config.outbound_buffer_bytes:
                self._overflow()  # pings from a peer that does not read its pongs
            else:
                self._write(control_frame(0xA, payload))
        elif opcode == 0xA:
            self._unanswered_ping = False
        elif opcode == 0:
            if self._fragments is None:
                return self._fail()
            self._fragments += payload
            if final:
                whole, self._fragments = bytes(self._fragments), None
                self._message(self._fragments_opcode, whole)
        elif self._fragments is not None or opcode not in (0x1, 0x2):
            return self._fail()
        elif not final:
            self._fragments, self._fragments_opcode = bytearray(payload), opcode
        else:
            self._message(opcode, payload)
        return None

    def _message(self, opcode: int, payload: bytes) -> None:
        now = time.monotonic()
        self.last_seen = now
        self._unanswered_ping = False
        if not self._bucket.take(now):
            return self._rate_limited()
        self._strikes = 0
        if opcode == 0x2:
            return self.refuse(ProtocolError(UNSUPPORTED_FRAME, "Binary frames are not supported; send JSON text."))
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail()
        try:
            message = decode(text)
        except ProtocolError as problem:
            return self.refuse(problem)
        try:
            rest = self.node.receive(self, message)
            if rest is not None:
                self._finish(rest)
        except Exception as error:
            self._routing_failed(error)
        return None

    def _finish(self, rest: Rest) -> None:
        """Run what routing left to do; the messages after it wait until it is done (order).

        A future (a direct message's receiver count) needs only a callback. A coroutine runs
        to its end right here when every backend is in memory, since then nothing waits, and
        as a Task with Redis.
        """
        if isinstance(rest, asyncio.Future):
            self._busy = True
            rest.add_done_callback(self._resume)
            return
        if self._eager:
            try:
                rest.send(None)
            except StopIteration:
                return
            rest.close()  # it waited after all: a bug in a memory backend, not a client's doing
            raise RuntimeError("routing waited although every backend is in memory")
        self._busy = True
        self.node.spawn(self._finished(rest))

    async def _finished(self, rest: Coroutine[Any, Any, None]) -> None:
        try:
            await rest
        except Exception as error:
            self._routing_failed(error)
        finally:
            self._resume()

    def _resume(self, _: object = None) -> None:
        self._busy = False
        if self._transport is not None:
            self._take_frames()

    def _routing_failed(self, error: Exception) -> None:
        if isinstance(error, ProtocolError):
            self.refuse(error)
            return
        log.error("routing a message of %s/%s failed", self.group_id, self.client_id, exc_info=error)
        self.close(CLOSE_INTERNAL_ERROR, REASON_INTERNAL)

    def _rate_limited(self) -> None:
        if self._strikes >= self.config.rate_strikes:
            log.warning(
                "closing %s/%s: still sending after %d rate_limited replies",
                self.group_id,
                self.client_id,
                self._strikes,
                extra={"conn": self.lease_key},
            )
            self.close(CLOSE_POLICY_VIOLATION, REASON_RATE)
            return
        self._strikes += 1
        rate = self.config.rate_limit
        self.refuse(ProtocolError(RATE_LIMITED, f"Too many messages: at most {rate:g} a second; this one was dropped."))

    def refuse(self, problem: ProtocolError) -> None:
        log.debug(
            "%s/%s: %s: %s", self.group_id, self.client_id, problem.code, problem.msg, extra={"conn": self.lease_key}
        )
        self.node.metrics.errors.inc(problem.code)
        self.send(self.node.error_frame(self, problem))

    def _fail(self) -> None:
        """A protocol violation: drop the connection (RFC 6455 section 7.1.7)."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    # Writing

    def send(self, frame: bytes) -> None:
        """Queue a ready frame for this iteration's flush; past the outbound cap, close with 1013."""
        if self._closing:
            return
        if self._held is not None:
            self._held.append(frame)
            self._held_bytes += len(frame)
            if self._held_bytes > self.config.outbound_buffer_bytes:
                self._overflow()
            return
        waiting = self._out_bytes + len(frame) + self._transport.get_write_buffer_size()
        if waiting > self.config.outbound_buffer_bytes:
            self._overflow()
            return
        if not self._out:
            self._flusher.mark(self)
        self._out.append(frame)
        self._out_bytes += len(frame)

    def release(self, first: bytes) -> None:
        held, self._held = self._held or [], None
        self.send(first)
        for frame in held:
            self.send(frame)

    def write_queued(self) -> None:
        out, self._out, self._out_bytes = self._out, [], 0
        if out and not self._closing:
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)  # asyncio sends at once and keeps only what the kernel refused

    def close(self, code: int, reason: str) -> None:
        """Send a close frame after what is queued; drop the socket if the peer never answers."""
        if self._closing:
            return
        self.write_queued()
        self._closing = True
        self._write(control_frame(0x8, struct.pack("!H", code) + reason.encode()[:123]))
        self._drop_later(CLOSE_WAIT)

    def _drop_later(self, seconds: float) -> None:
        if self._transport is not None and self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(seconds, self._transport.abort)

    def _overflow(self) -> None:
        self._held, self._held_bytes, self._out, self._out_bytes = [], 0, [], 0
        log.warning(
            "closing %s/%s: outbound buffer full", self.group_id, self.client_id, extra={"conn": self.lease_key}
        )
        self.close(CLOSE_TRY_AGAIN_LATER, REASON_BACKLOG)

    def keepalive(self) -> None:
        if self._closing:
            return
        if self._unanswered_ping:
            log.debug("closing %s/%s: no answer to a ping", self.group_id, self.client_id)
            self.close(CLOSE_NORMAL, REASON_PING)
            return
        self._unanswered_ping = True
        self._write(control_frame(0x9))
