"""One host: a request for a host the server does not answer for is refused first (DNS rebinding).

A page on another site whose name resolves to 127.0.0.1 sends its own name in ``Host``; so does
a browser that follows it there. Whatever the route, that request gets 421 and nothing else.
"""

import asyncio

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from .timing import scaled
from .wsclient import TIMEOUT, RawSocket

ROUTES = [
    ("GET", "/"),
    ("GET", "/v3/client/aether-v3.js"),
    ("GET", "/v3/console"),
    ("GET", "/v3/operator"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/v3/publish"),
    ("GET", "/v3/processes"),
    ("GET", "/v3/groups"),
    ("GET", "/v3/groups/g_h/presence"),
    ("GET", "/v3/groups/g_h/history"),
    ("POST", "/v3/clients/c_h/disconnect"),
    ("GET", "/no/such/route"),
    ("GET", "/v3/ws/group/g_h/client/c_h"),
]
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip


async def fetch(port: int, method: str, path: str, host: str) -> tuple[int, dict]:
    headers = {"Host": host, "Content-Type": "application/json", **(UPGRADE if "/ws/" in path else {})}
    body = orjson.dumps({"msg_type": "msg", "target": "broadcast"}) if method == "POST" else None
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}{path}", method=method, headers=headers, body=body, raise_error=False
    )
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    return response.code, orjson.loads(response.body) if is_json else {}


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_refuses_a_foreign_host_with_421_before_anything_else(server, method, path):
    code, body = await fetch(server.port, method, path, f"rebind.attacker.example:{server.port}")
    assert code == 421
    assert body["code"] == "misdirected_request" and "rebind.attacker.example" in body["msg"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST", "localhost."])
async def test_on_loopback_the_loopback_names_are_answered_with_any_port(server, host):
    for name in (host, f"{host}:{server.port}", f"{host}:80"):
        code, body = await fetch(server.port, "GET", "/healthz", name)
        assert code == 200 and body["status"] == "ok", name


async def test_the_configured_names_replace_the_loopback_ones(start_server):
    server = await start_server(allowed_hosts=("ws.example.com",))
    assert (await fetch(server.port, "GET", "/healthz", "ws.example.com"))[0] == 200
    assert (await fetch(server.port, "GET", "/healthz", f"ws.example.com:{server.port}"))[0] == 200
    assert (await fetch(server.port, "GET", "/healthz", "127.0.0.1"))[0] == 421
    assert (await fetch(server.port, "GET", "/healthz", "evil.ws.example.com"))[0] == 421


async def test_a_star_answers_any_host(start_server):
    server = await start_server(allowed_hosts=("*",))
    assert (await fetch(server.port, "GET", "/healthz", "anything.example"))[0] == 200


async def test_a_rebinding_page_cannot_open_a_websocket_even_with_a_matching_origin(server):
    """The Origin check compares Origin with Host: both the attacker's, they match. The host check does not."""
    socket = await RawSocket.connected(server.port)
    socket.writer.write(
        b"GET /v3/ws/group/g_h/client/c_h HTTP/1.1\r\nHost: rebind.attacker.example\r\n"
        b"Origin: http://rebind.attacker.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    status = await asyncio.wait_for(socket.reader.readline(), scaled(TIMEOUT))
    assert status.startswith(b"HTTP/1.1 421"), status
    socket.close()
