"""Client tokens (HS256 JWT in ?token=) and the right to broadcast."""

import asyncio
import time

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient

from aether_tornado.client import AetherClient
from aether_tornado.config import SettingsError, load_settings

from .conftest import ws_url
from .test_handshake import handshake
from .timing import scaled, until
from .wsclient import Client, errors_of

SECRET = "test-secret-of-at-least-32-bytes!"


def token(client_id="c_alice", group_id="g_auth", expires_in=60, secret=SECRET, **claims) -> str:
    return jwt.encode({"sub": client_id, "group": group_id, "exp": int(time.time()) + expires_in, **claims}, secret)


@pytest.fixture
async def secured(start_server):
    return await start_server(jwt_secret=SECRET, broadcast_requires_grant=True)


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", "required"),
        ("?token=", "required"),
        ("?token=garbage", "invalid"),
        (f"?token={token(expires_in=-10)}", "expired"),
        (f"?token={token(secret='another-secret-of-at-least-32-bytes')}", "invalid"),
        (f"?token={token(client_id='c_mallory')}", "another client_id"),
        (f"?token={token(group_id='g_other')}", "another client_id or group_id"),
        (f"?token={jwt.encode({'sub': 'c_alice', 'group': 'g_auth'}, SECRET)}", "invalid"),
    ],
)
async def test_a_missing_or_invalid_token_is_401(secured, query, why):
    status, body = await handshake(secured.port, f"/v3/ws/group/g_auth/client/c_alice{query}")
    assert status == 401
    assert body["code"] == "unauthorized" and body["field"] is None and why in body["msg"]


async def test_a_valid_token_connects(secured):
    client = await Client.joined(ws_url(secured, "g_auth", "c_alice") + f"?token={token()}")
    assert client.snapshot["payload"]["clients"] == ["c_alice"]


async def test_broadcast_needs_the_grant_when_required(secured):
    plain = await Client.joined(ws_url(secured, "g_auth", "c_alice") + f"?token={token()}")
    granted = await Client.joined(
        ws_url(secured, "g_auth", "c_ops") + f"?token={token(client_id='c_ops', broadcast=True)}"
    )
    await plain.recv_where(event="join", client_id="c_ops")
    await plain.send(msg_type="msg", target="broadcast", msg="everyone?")
    code, errors = errors_of(await plain.recv())
    assert code == "forbidden" and errors == [{"field": "target", "problem": "broadcast needs a token that grants it"}]
    await granted.send(msg_type="msg", target="broadcast", msg="everyone!")
    assert (await plain.recv())["msg"] == "everyone!"


async def test_tokens_are_not_needed_for_the_http_api(secured):
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{secured.port}/healthz", request_timeout=scaled(5))
    assert response.code == 200


def test_broadcast_grant_needs_a_jwt_secret_and_the_secret_a_safe_length():
    with pytest.raises(SettingsError, match="needs jwt_secret"):
        load_settings(["--broadcast-requires-grant", "true"], {})
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        load_settings([], {"AETHER_JWT_SECRET": "short"})


async def test_a_connection_is_closed_within_a_second_of_its_token_s_expiry(secured):
    expires = int(time.time()) + 2
    client = await Client.joined(
        ws_url(secured, "g_auth", "c_alice") + f"?token={token(expires_in=expires - int(time.time()))}"
    )
    assert await client.closed(timeout=5) == (3000, "token expired")
    assert expires <= time.time() < expires + scaled(1)  # the promise: within a second, scaled


async def test_the_python_client_renews_its_token_and_misses_nothing(secured):
    issued = []

    async def fresh_token() -> str:
        issued.append(time.time())
        return token(expires_in=2)

    sender = await Client.joined(ws_url(secured, "g_auth", "c_bob") + f"?token={token(client_id='c_bob')}")
    base = f"ws://127.0.0.1:{secured.port}"
    async with AetherClient(base, "g_auth", "c_alice", token_provider=fresh_token, backoff_max=0.2) as alice:
        await sender.recv_where(event="join", client_id="c_alice")
        received: list[int] = []

        async def receive() -> None:
            while len(received) < 60:
                message = await alice.recv(timeout=5)
                if message["msg_type"] == "msg":
                    received.append(message["payload"]["n"])

        receiving = asyncio.create_task(receive())
        for n in range(60):  # over 3 s: the first token expires on the way
            await sender.send(msg_type="msg", target="group", payload={"n": n})
            await asyncio.sleep(0.05)
        await asyncio.wait_for(receiving, scaled(10))
    assert received == list(range(60))
    assert len(issued) >= 2  # asked for one more once the first expired


async def test_a_connection_gone_before_its_token_expires_leaves_no_timer_behind(secured):
    client = await Client.joined(ws_url(secured, "g_auth", "c_alice") + f"?token={token(expires_in=3600)}")
    (conn,) = secured.node.hub.client("c_alice")
    assert not conn._expiry.cancelled()  # the close at expiry, an hour from now
    client.close()
    await until(lambda: not secured.node.hub.client("c_alice"))
    assert conn._expiry.cancelled()  # else the loop would hold the connection for the hour
