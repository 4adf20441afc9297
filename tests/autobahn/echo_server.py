"""An echo server on the project's real frame layer, for the Autobahn|Testsuite and our own conformance tests.

    python tests/autobahn/echo_server.py --host 127.0.0.1 --port 9001

The handshake is read as the server reads it (ws/upgrade.py), on any path, and a
``WebSocketProtocol`` serves the socket with an echo as its delegate: every data message,
text or binary, is echoed back verbatim. The limits are the server's, raised so
that the suite's largest cases fit (9.*: 16 MiB messages, 4 MiB in 64-byte fragments).
"""

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a script: the project is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import attrs
import orjson
import uvloop

from aether_tornado.config import Settings
from aether_tornado.core.session import socket_limits
from aether_tornado.ws import frames
from aether_tornado.ws.upgrade import Head, Refusal, UpgradeReader, handshake_response, upgrade_problem
from aether_tornado.ws.websocket import Flusher, Limits, WebSocketProtocol

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


def accept(limits: Limits, flusher: Flusher) -> Callable[[Head, bytes], WebSocketProtocol | Refusal]:
    """Take any upgrade request, on any path."""

    def decide(head: Head, early: bytes) -> WebSocketProtocol | Refusal:
        problem = upgrade_problem(head.headers)
        if problem is not None:
            return Refusal(problem[0], orjson.dumps({"msg": problem[1]}))
        response = handshake_response(head.headers["Sec-WebSocket-Key"])
        return Echo(limits, flusher, response, early).socket

    return decide


async def start(host: str = "127.0.0.1", port: int = 0, limits: Limits = ROOMY) -> tuple[asyncio.Server, int]:
    """Listen; return the server (``close`` it) and its port."""
    decide = accept(limits, Flusher())
    server = await asyncio.get_running_loop().create_server(
        lambda: UpgradeReader(decide, timeout=10.0, ended=lambda: None), host, port
    )
    return server, server.sockets[0].getsockname()[1]


async def serve(host: str, port: int) -> None:
    _, port = await start(host, port)
    print(f"echo server on ws://{host}:{port}/", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
