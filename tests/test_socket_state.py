"""A socket's State through its life, over a real TCP connection: what the session reads to stop sending."""

import asyncio
import socket

from aether_tornado.config import Settings
from aether_tornado.core.session import socket_limits
from aether_tornado.ws import frames
from aether_tornado.ws.frames import CloseCode
from aether_tornado.ws.websocket import Flusher, State, WebSocketProtocol

from .timing import scaled


class Watcher:
    """A delegate that notes the socket's state at each event."""

    def __init__(self) -> None:
        self.socket = WebSocketProtocol(socket_limits(Settings()), Flusher(), b"HTTP/1.1 101 \r\n\r\n", b"", self)
        self.seen: list[tuple[str, State]] = []
        self.messaged = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def on_open(self) -> None:
        self.seen.append(("open", self.socket.state))
        self.socket.holding = False

    def on_message(self, opcode: int, payload: bytes | str) -> None:
        self.seen.append(("message", self.socket.state))
        self.messaged.set_result(None)

    def on_failing(self, code: int, reason: str) -> None:
        self.seen.append(("failing", self.socket.state))

    def on_overflow(self) -> None:
        self.seen.append(("overflow", self.socket.state))

    def on_lost(self) -> None:
        self.seen.append(("lost", self.socket.state))
        self.lost.set_result(None)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Our end and the peer's of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    peer.setblocking(False)
    return ours, peer


async def serve(ours: socket.socket, protocol: WebSocketProtocol) -> None:
    ours.setblocking(False)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock=ours)


async def read_until(peer: socket.socket, marker: bytes) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    async with asyncio.timeout(scaled(5)):
        while marker not in data:
            chunk = await loop.sock_recv(peer, 65536)
            assert chunk, f"the socket ended before {marker!r}: {data!r}"
            data += chunk
    return data


async def test_a_socket_is_connecting_then_open_then_closing_then_closed():
    ours, peer = tcp_pair()
    watcher = Watcher()
    assert watcher.socket.state is State.CONNECTING
    await serve(ours, watcher.socket)
    assert watcher.socket.state is State.OPEN
    await asyncio.get_running_loop().sock_sendall(peer, frames.build(frames.TEXT, b"hi", mask_key=b"abcd"))
    await read_until(peer, b"101")
    await asyncio.wait_for(watcher.messaged, scaled(5))
    watcher.socket.close(CloseCode.NORMAL, "bye")
    assert watcher.socket.state is State.CLOSING
    watcher.socket.send(frames.build(frames.TEXT, b"after the close"))  # dropped: nothing is sent from CLOSING
    assert (await read_until(peer, b"bye")).endswith(frames.build(frames.CLOSE, frames.close_payload(1000, "bye")))
    peer.close()
    await asyncio.wait_for(watcher.lost, scaled(5))
    assert watcher.socket.state is State.CLOSED
    assert watcher.seen == [("open", State.OPEN), ("message", State.OPEN), ("lost", State.CLOSED)]


async def test_a_failed_socket_is_closing_when_its_delegate_hears_it():
    ours, peer = tcp_pair()
    watcher = Watcher()
    await serve(ours, watcher.socket)
    await asyncio.get_running_loop().sock_sendall(peer, frames.build(frames.TEXT, b"unmasked"))  # a protocol error
    await read_until(peer, b"\x88")
    assert watcher.socket.state is State.CLOSING
    peer.close()
    await asyncio.wait_for(watcher.lost, scaled(5))
    assert watcher.seen == [("open", State.OPEN), ("failing", State.OPEN), ("lost", State.CLOSED)]
