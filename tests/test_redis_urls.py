"""Processes on a Redis that asks for a password or a user, speaks TLS, or listens on a unix socket.

Presence goes through redis-py and the bridge through its own connections: both must log in
the same way from the one URL.
"""

import subprocess
from pathlib import Path

import pytest

from .processes import RedisServer
from .timing import scaled
from .wsclient import Client


def self_signed_certificate(folder: Path) -> Path:
    """cert.pem and key.pem for 127.0.0.1; the certificate is its own CA."""
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    files = ["-keyout", folder / "key.pem", "-out", folder / "cert.pem"]
    subprocess.run(
        [*request, "-addext", "subjectAltName=IP:127.0.0.1", *files],
        check=True,
        capture_output=True,
        timeout=scaled(30),
    )
    return folder


@pytest.fixture(params=["password", "user and password", "tls", "unix socket"])
def redis_server(request, tmp_path):
    """Overrides the plain one of conftest, so start_process uses this Redis."""
    options = {
        "password": {"password": "s3cret"},
        "user and password": {"username": "aether", "password": "s3cret"},
        "tls": {"tls": self_signed_certificate(tmp_path)},
        "unix socket": {"unix": tmp_path / "redis.sock"},
    }[request.param]
    server = RedisServer(**options)
    yield server
    server.kill()


async def test_two_processes_act_as_one_over_this_redis(start_process):
    first, second = await start_process(), await start_process()
    alice = await Client.joined(first.url("g_u", "c_alice"))
    bob = await Client.joined(second.url("g_u", "c_bob"))
    await alice.recv_where(event="join", client_id="c_bob")
    await alice.send(msg_type="msg", target="direct", to_id="c_bob", msg="over this Redis")
    message = await bob.recv_where(msg_type="msg")
    assert (message["from_id"], message["msg"]) == ("c_alice", "over this Redis")
    await bob.send(msg_type="msg", target="group", msg="and back")
    assert (await alice.recv_where(msg_type="msg"))["msg"] == "and back"
