"""An echo server on the project's real frame layer, for the Autobahn|Testsuite and our own conformance tests.

    python tests/autobahn/echo_server.py --host 127.0.0.1 --port 9001

Tornado answers the handshake on any path, the socket is taken over exactly as the server
does it (tornado_internals.take_socket), and a ``WebSocketProtocol`` serves it with an echo as
its delegate: every data message, text or binary, is echoed back verbatim. The limits are the server's, raised so
that the suite's largest cases fit (9.*: 16 MiB messages, 4 MiB in 64-byte fragments).
"""

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

if not __package__:  # run as a script: the project is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import attrs
import tornado.httpserver
import tornado.netutil
import tornado.web
import uvloop

from aether_tornado.config import Settings
from aether_tornado.core.session import socket_limits
from aether_tornado.web.tornado_internals import check_tornado, take_socket
from aether_tornado.ws import frames
from aether_tornado.ws.websocket import (
    Flusher,
    Limits,
    WebSocketProtocol,
    handshake_response,
    serve_socket,
    upgrade_problem,
)

ROOMY = socket_limits(
    attrs.evolve(
        Settings(),
        max_message_bytes=20_000_000,
        max_fragments=1_000_000,
        frame_rate=1e9,
        frame_burst=1_000_000_000,
        control_rate=1e9,
        control_burst=1_000_000_000,
        byte_rate=1e12,
        byte_burst=10**12,
        outbound_buffer_bytes=64 * 1024 * 1024,
    )
)


class Echo:
    """The delegate of one socket: every message back as it came."""

    def __init__(self, limits: Limits, flusher: Flusher, response: bytes, early: bytes) -> None:
        self.socket = WebSocketProtocol(limits, flusher, response, early, self)

    def on_open(self) -> None:
        self.socket.holding = False

    def on_message(self, opcode: int, payload: bytes | str) -> None:
        self.socket.send(frames.build(opcode, payload.encode() if isinstance(payload, str) else payload))

    def on_failing(self, code: int, reason: str) -> None:
        pass

    def on_overflow(self) -> None:
        pass

    def on_lost(self) -> None:
        pass


class EchoHandler(tornado.web.RequestHandler):
    def initialize(self, limits: Limits, flusher: Flusher) -> None:
        self.limits = limits
        self.flusher = flusher

    async def get(self, _: str) -> None:
        problem = upgrade_problem(self.request.headers)
        if problem is not None:
            self.set_status(problem[0])
            self.finish(problem[1])
            return
        response = handshake_response(self.request.headers["Sec-WebSocket-Key"])
        sock, early = take_socket(self)
        await serve_socket(sock, Echo(self.limits, self.flusher, response, early).socket)


async def start(host: str = "127.0.0.1", port: int = 0, limits: Limits = ROOMY) -> tuple[object, int]:
    """Listen; return the HTTP server (``stop`` it) and its port."""
    app = tornado.web.Application([(r"(.*)", EchoHandler, {"limits": limits, "flusher": Flusher()})])
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(port, host)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def serve(host: str, port: int) -> None:
    _, port = await start(host, port)
    print(f"echo server on ws://{host}:{port}/", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    check_tornado()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
