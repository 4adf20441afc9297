"""Every use of Tornado's private API, in one place, for the Tornado releases it was tested with.

The server accepts connections itself (accept.py), handing those that do not open with a
WebSocket handshake to Tornado's HTTP server, and counts those it holds. A handshake that
comes on a connection Tornado already serves (a proxy reuses its keep-alive connections) is
taken from Tornado, which needs what Tornado keeps private: the stream's socket, what it has
already read from it, and the handler's own way of breaking the reference cycle it is in.
``check_tornado`` refuses to start on a release these were not tested with.
"""

import os
import socket
from typing import Any, cast

import tornado
import tornado.httpserver
import tornado.web
from tornado.http1connection import HTTP1Connection

# Tornado releases (major, minor) whose internals below were tested.
TESTED_TORNADO = ((6, 6),)


def check_tornado(version: tuple[int, ...] = tornado.version_info) -> None:
    """Raise RuntimeError unless ``version`` is a Tornado release this module was tested with."""
    if tuple(version[:2]) not in TESTED_TORNADO:
        tested = ", ".join(f"{major}.{minor}" for major, minor in TESTED_TORNADO)
        shown = ".".join(str(part) for part in version[:3])
        raise RuntimeError(
            f"Tornado {shown} is installed, but the socket hand-over was tested with Tornado {tested} only; "
            "install the version pinned in requirements.txt"
        )


def take_socket(handler: tornado.web.RequestHandler) -> tuple[socket.socket, bytes]:
    """Take the handshake's socket from Tornado, with the bytes Tornado read past the request.

    Tornado's stream is closed before this returns, so it stops watching the socket: every
    byte the client sends from now on stays in the kernel until the new owner reads it.
    Nothing here awaits, so no event can run between taking the buffer and closing the
    stream. Raises OSError (EMFILE when out of descriptors) before the handler is touched.
    """
    stream = cast(HTTP1Connection, handler.request.connection).stream  # HTTPServer speaks HTTP/1 only
    descriptor = os.dup(stream.socket.fileno())  # the socket lives on in this one
    stream = handler.detach()
    early = bytes(stream._read_buffer[: stream._read_buffer_size])
    stream.close()  # unwatches and closes Tornado's descriptor; no RST, the socket is still open
    # As Tornado's own finish() does: the handler holds itself through its UI modules, and with
    # it the request, its connection and stream. A detached handler never finishes, so the
    # cyclic collector would have to free all that, late and at a cost that grows with every
    # live connection (bench/RESULTS.md, "Garbage collection").
    handler._break_cycles()
    return socket.socket(fileno=descriptor), early


def serve_accepted(server: tornado.httpserver.HTTPServer, connection: socket.socket, address: Any) -> None:
    """Hand an accepted connection to the HTTP server, as its own accept handler does."""
    server._handle_connection(connection, address)


def open_http_connections(server: tornado.httpserver.HTTPServer) -> int:
    """HTTP connections the server holds: requests under way and idle keep-alive ones (not WebSockets)."""
    return len(server._connections)
