"""No secret reaches a log line: tokens, API keys and Redis passwords stay out of the server's logs."""

import time

import jwt
from tornado.httpclient import AsyncHTTPClient

from .processes import ServerProcess
from .wsclient import Client

SECRET = "s" * 32
API_KEY = "api-key-" + "x" * 16


async def test_tokens_and_keys_never_reach_the_log(redis_server):
    token = jwt.encode({"sub": "c_other", "group": "g_log", "exp": int(time.time()) + 60}, SECRET, "HS256")
    server = await ServerProcess.launch(
        "--jwt-secret", SECRET, "--api-key", API_KEY, "--log-level", "debug",
        "--redis-url", redis_server.url.replace("redis://", "redis://:hunter2-password@"),
    )  # fmt: skip
    try:
        fetch = AsyncHTTPClient().fetch
        url = f"http://127.0.0.1:{server.port}"
        # A refused handshake (the token is for another client), a bad key, and a request Tornado itself refuses.
        refused = await fetch(f"{url}/v3/ws/group/g_log/client/c_log?token={token}", raise_error=False)
        assert refused.code == 401
        wrong = await fetch(f"{url}/v3/groups/g_log/presence", headers={"Authorization": "Bearer " + "w" * 20},
                            raise_error=False)  # fmt: skip
        assert wrong.code == 401
        bad = await fetch(f"{url}/v3/publish?token={token}", method="POST", body=b"x", raise_error=False,
                          headers={"Content-Type": "multipart/form-data; boundary=b"})  # fmt: skip
        assert bad.code == 400
        with_header = await Client.connect(
            f"ws://127.0.0.1:{server.port}/v3/ws/group/g_log/client/c_other",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert (await with_header.recv())["payload"]["event"] == "snapshot"  # the header is enough
        with_header.close()
        watch = f"{url}/v3/ws/watch/group/g_log?key={API_KEY}x"  # a wrong key, refused and logged
        assert (await fetch(watch, raise_error=False)).code == 401
        bad_watch = await fetch(f"{url}/v3/ws/watch/group/g_log/x?key={API_KEY}", raise_error=False)
        assert bad_watch.code == 404
        await server.logged("open g_log/c_other")
        await server.logged("404 GET /v3/ws/watch/group/g_log/x ")  # logged after every line above
        log = "".join(server.log)
        assert "401 GET /v3/ws/group/g_log/client/c_log " in log
        assert "/v3/publish?token=*** " in log  # Tornado's own warning, masked
        assert f"serving ws://127.0.0.1:{server.port}/v3/ws/" in log  # a port is no password
        assert "redis://:***@127.0.0.1:" in log
        assert "401 GET /v3/ws/watch/group/g_log " in log
        for secret in (token, token.split(".")[2], API_KEY, "w" * 20, "hunter2-password", SECRET):
            assert secret not in log
    finally:
        await server.stopped()
