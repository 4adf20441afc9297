"""Accepting connections, sending each where it goes, without spinning when descriptors run out.

A connection whose first bytes are a V3 handshake's (``GET /v3/ws/``, read without taking
them) goes to the handshakes (handshake.py), and never through Tornado; any other goes to
Tornado's HTTP server. A connection that has sent nothing yet is watched until it does, for
as long as an HTTP connection may stay silent.

Tornado's accept handler lets an EMFILE escape and stays registered, so a process out of
file descriptors retries, and logs a traceback, on every loop iteration. This one stops
watching the listening sockets for a moment instead (logged once per episode), and
resumes with a growing pause until accepting works again. It also bounds the HTTP
connections open at once (handshakes under way, API calls, silent ones): past the bound a
new connection is closed as soon as it is accepted, so silent connections cannot take
every descriptor.
"""

import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any

import tornado.httpserver

from .handshake import PREFIX, Handshakes
from .tornado_internals import open_http_connections, serve_accepted

log = logging.getLogger(__name__)

# Connections accepted in one go before the loop serves others.
ACCEPTS_PER_TURN = 128
# Errors that say the process or the system is out of something an accept needs.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
PAUSE_FIRST = 0.05
PAUSE_MAX = 1.0
# A connection whose first bytes are only the start of PREFIX is looked at again this much later.
LOOK_AGAIN = 0.01


class Acceptor:
    def __init__(
        self, server: tornado.httpserver.HTTPServer, handshakes: Handshakes, max_http_connections: int, silence: float
    ) -> None:
        """``silence``: how long a new connection may send nothing before it is closed."""
        self._server = server
        self._handshakes = handshakes
        self._max = max_http_connections
        self._silence = silence
        self._silent: dict[int, _Silent] = {}  # connections that have not sent enough to be sent on, by descriptor
        self._sockets: list[socket.socket] = []
        self._pause = 0.0  # the current pause after running out; 0 while accepting works
        self._resume: asyncio.TimerHandle | None = None
        self._refused = 0  # connections closed at once in the current episode of the bound

    def listen(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets
        self._watch()

    def close(self) -> None:
        self._unwatch()
        if self._resume is not None:
            self._resume.cancel()
        for fd in list(self._silent):
            self._drop(fd)
        for sock in self._sockets:
            sock.close()

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                connection, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno not in OUT_OF_RESOURCES:
                    raise
                return self._out_of_resources(error)
            if self._pause:
                log.warning("accepting connections again")
                self._pause = 0.0
            if self.open_connections >= self._max:
                connection.close()
                if not self._refused:
                    log.warning("%d HTTP connections open: closing new ones until fewer are", self._max)
                self._refused += 1
                continue
            if self._refused:
                log.warning("HTTP connections below the bound again (%d were closed)", self._refused)
                self._refused = 0
            connection.setblocking(False)
            self._route(connection, address)
        return None

    @property
    def open_connections(self) -> int:
        """HTTP connections open: Tornado's, the handshakes', and those not sent on yet."""
        return open_http_connections(self._server) + self._handshakes.under_way + len(self._silent)

    def _route(self, connection: socket.socket, address: Any, silent: "_Silent | None" = None) -> None:
        """Send a connection where its first bytes say, or watch it until they come."""
        try:
            first: bytes | None = connection.recv(len(PREFIX), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            first = None
        except OSError:  # reset already
            first = b""
        fd = connection.fileno()
        loop = asyncio.get_running_loop()
        if first is None or (first != PREFIX and first and PREFIX.startswith(first)):
            if silent is None:
                silent = self._silent[fd] = _Silent(connection, address, loop.call_later(self._silence, self._drop, fd))
            if first is None:  # nothing yet: when something comes
                silent.again = None
                loop.add_reader(fd, self._look_again, fd)
            else:  # part of PREFIX: a moment later, not on every loop iteration while it is unread
                silent.again = loop.call_later(LOOK_AGAIN, self._look_again, fd)
            return
        if silent is not None:
            del self._silent[fd]
            silent.timer.cancel()
        if first == PREFIX:
            self._handshakes.serve(connection)
        elif first:
            serve_accepted(self._server, connection, address)  # a request for Tornado
        else:
            connection.close()  # closed, or reset, before a word

    def _look_again(self, fd: int) -> None:
        silent = self._silent[fd]
        if silent.again is None:
            asyncio.get_running_loop().remove_reader(fd)
        self._route(silent.connection, silent.address, silent)

    def _drop(self, fd: int) -> None:
        """A connection silent for too long is closed, as Tornado closes an idle one."""
        silent = self._silent.pop(fd)
        if silent.again is None:
            asyncio.get_running_loop().remove_reader(fd)
        else:
            silent.again.cancel()
        with contextlib.suppress(OSError):  # what it did send: closed unread, it would reset the connection
            silent.connection.recv(65536)
        silent.connection.close()

    def _out_of_resources(self, error: OSError) -> None:
        if not self._pause:
            log.warning("cannot accept connections (%s): pausing until descriptors are free", error.strerror)
        self._pause = min(PAUSE_MAX, self._pause * 2 or PAUSE_FIRST)
        self._unwatch()
        self._resume = asyncio.get_running_loop().call_later(self._pause, self._rewatch)

    def _rewatch(self) -> None:
        self._resume = None
        self._watch()


class _Silent:
    """A connection not sent on yet: the end of its silence, and its next look if timed (else when readable)."""

    __slots__ = ("address", "again", "connection", "timer")

    def __init__(self, connection: socket.socket, address: Any, timer: asyncio.TimerHandle) -> None:
        self.connection = connection
        self.address = address
        self.timer = timer
        self.again: asyncio.TimerHandle | None = None
