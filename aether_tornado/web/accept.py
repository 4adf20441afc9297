"""Accepting connections for the HTTP server without spinning when descriptors run out.

Tornado's accept handler lets an EMFILE escape and stays registered, so a process out of
file descriptors retries, and logs a traceback, on every loop iteration. This one stops
watching the listening sockets for a moment instead (logged once per episode), and
resumes with a growing pause until accepting works again. It also bounds the HTTP
connections open at once (handshakes under way, API calls, silent ones): past the bound a
new connection is closed as soon as it is accepted, so silent connections cannot take
every descriptor.
"""

import asyncio
import errno
import logging
import socket

import tornado.httpserver

from .tornado_internals import open_http_connections, serve_accepted

log = logging.getLogger(__name__)

# Connections accepted in one go before the loop serves others.
ACCEPTS_PER_TURN = 128
# Errors that say the process or the system is out of something an accept needs.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
PAUSE_FIRST = 0.05
PAUSE_MAX = 1.0


class Acceptor:
    def __init__(self, server: tornado.httpserver.HTTPServer, max_http_connections: int) -> None:
        self._server = server
        self._max = max_http_connections
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
            if open_http_connections(self._server) >= self._max:
                connection.close()
                if not self._refused:
                    log.warning("%d HTTP connections open: closing new ones until fewer are", self._max)
                self._refused += 1
                continue
            if self._refused:
                log.warning("HTTP connections below the bound again (%d were closed)", self._refused)
                self._refused = 0
            serve_accepted(self._server, connection, address)
        return None

    def _out_of_resources(self, error: OSError) -> None:
        if not self._pause:
            log.warning("cannot accept connections (%s): pausing until descriptors are free", error.strerror)
        self._pause = min(PAUSE_MAX, self._pause * 2 or PAUSE_FIRST)
        self._unwatch()
        self._resume = asyncio.get_running_loop().call_later(self._pause, self._rewatch)

    def _rewatch(self) -> None:
        self._resume = None
        self._watch()
