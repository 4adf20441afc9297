"""The Python client and its command line, against real servers."""

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from aether_tornado.client import AetherClient, Disconnected, QueueFull, Refused
from aether_tornado.history import redis as history_redis
from aether_tornado.v3.schema import WSMessageV3, encode, utc_timestamp

from .httpapi import http
from .processes import ServerProcess, free_port
from .timing import scaled, until
from .wsclient import Client


async def next_message(client: AetherClient) -> dict:
    """The next frame that is not a presence event."""
    while (message := await client.recv(5))["msg_type"] == "presence":
        pass
    return message


def base(server) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def test_roster_messages_and_helpers(server):
    async with (
        AetherClient(base(server), "g_py", "c_alice") as alice,
        AetherClient(base(server), "g_py", "c_bob") as bob,
    ):
        while alice.roster != ["c_alice", "c_bob"]:
            await alice.recv(5)
        bob.send_group("hello", {"n": 1})
        message = await next_message(alice)
        assert (message["from_id"], message["msg"], message["payload"]) == ("c_bob", "hello", {"n": 1})
        assert (await next_message(bob))["msg"] == "hello"  # its own copy
        alice.send_direct("c_bob", "psst")
        message = await next_message(bob)
        assert (message["target"], message["msg"]) == ("direct", "psst")
        alice.command("RELOAD", target="echo")
        assert (await next_message(alice))["cmd"] == "RELOAD"
        alice.send_direct("c_nobody", "hello?")
        error = await next_message(alice)
        assert error["cmd"] == "ERROR" and error["payload"]["code"] == "recipient_offline"
        bob.query_presence()
        while ((message := await bob.recv(5))["payload"] or {}).get("event") != "snapshot":
            pass
        assert message["payload"]["clients"] == ["c_alice", "c_bob"]
    assert alice.state == "closed"


async def test_an_invalid_id_is_refused_before_connecting():
    with pytest.raises(Refused) as caught:
        AetherClient("ws://127.0.0.1:9", "12345", "c_ok")
    assert caught.value.code == "invalid_id"


async def test_a_refused_token_stops_the_client(start_server):
    server = await start_server(jwt_secret="x" * 32)
    client = AetherClient(base(server), "g_auth", "c_auth", token="not-a-token")
    client.start()
    with pytest.raises(Refused) as caught:
        await client.wait_open()
    assert caught.value.code == "unauthorized"
    await client.close()


@pytest.mark.parametrize("code", [4400, 4403, 4499])
async def test_a_final_close_code_stops_the_client_and_a_ban_refuses_it(server, code):
    client = AetherClient(base(server), "g_py", "c_final", backoff_initial=0.01)
    async with client:
        order = {"code": code, "reason": "go away"} | ({"ban_seconds": 60} if code == 4403 else {})
        assert (await http(server, "POST", "/v3/clients/c_final/disconnect", order))[0] == 202
        with pytest.raises(Disconnected) as caught:
            while True:
                await client.recv(5)
        assert (caught.value.close_code, caught.value.reason) == (code, "go away")
        assert client.state == "closed"
    assert await http(server, "GET", "/v3/groups/g_py/presence") == (200, {"group_id": "g_py", "clients": []})
    if code == 4403:
        with pytest.raises(Refused) as refused:
            async with AetherClient(base(server), "g_py", "c_final"):
                pass
        assert refused.value.code == "banned"


async def test_a_close_code_under_4400_is_not_final(server):
    async with AetherClient(base(server), "g_py", "c_back", backoff_initial=0.01) as client:
        assert (await client.recv(5))["payload"]["event"] == "snapshot"
        assert (await http(server, "POST", "/v3/clients/c_back/disconnect", {"code": 4399}))[0] == 202
        while (await client.recv(5))["payload"]["event"] != "snapshot":  # the next connection's
            pass
        assert client.state == "open"


async def test_it_reconnects_after_a_restart_and_sends_what_was_queued():
    first = await ServerProcess.launch()
    client = AetherClient(base(first), "g_re", "c_re", backoff_initial=0.05, backoff_max=0.2, max_queue=3)
    client.start()
    await client.wait_open()
    first.kill()
    await until(lambda: client.state != "open")  # it notices the server is gone
    for n in range(3):
        client.echo(f"queued {n}")
    with pytest.raises(QueueFull):
        client.echo("one too many")
    second = await ServerProcess.launch(port=first.port)
    try:
        await client.wait_open(timeout=scaled(10))
        texts = []
        while len(texts) < 3:
            message = await client.recv(5)
            if message["msg_type"] == "msg":
                texts.append(message["msg"])
        assert texts == ["queued 0", "queued 1", "queued 2"]
        assert client.roster == ["c_re"]
    finally:
        await client.close()
        await second.stopped()


def client_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aether_tornado.client", *args], capture_output=True, text=True, timeout=scaled(timeout)
    )


async def test_cli_sends_and_prints_replies(server):
    url = base(server)
    result = await asyncio.to_thread(
        client_cli, url, "--group", "g_cli", "--client", "c_cli", "send", "echo", "--msg", "hi"
    )
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["payload"]["event"] == "snapshot"
    assert any(line["msg"] == "hi" and line["target"] == "echo" for line in lines)
    failed = await asyncio.to_thread(
        client_cli, url, "--group", "g_cli", "--client", "c_cli", "send", "direct", "--to", "c_x"
    )
    assert failed.returncode == 1 and "recipient_offline" in failed.stdout
    refused = await asyncio.to_thread(client_cli, url, "--group", "123", "--client", "c_cli", "send", "echo")
    assert refused.returncode == 2 and "invalid_id" in refused.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("ftp://127.0.0.1:1",), "is not a server address: give ws://HOST:PORT or wss://HOST"),
        (("ws://127.0.0.1:1/v3/ws/group/g_a/client/c_a",), "has a path: give the server's address only"),
        (("ws://127.0.0.1:1", "send", "echo", "--payload", "{bad"), "--payload: not valid JSON"),
        (("ws://127.0.0.1:1", "send", "echo", "--payload", "[1]"), "--payload: must be a JSON object"),
    ],
)
def test_cli_bad_arguments_get_one_clear_line(args, says):
    url, *rest = args
    result = client_cli(url, "--group", "g_a", "--client", "c_a", *rest)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_cli_fails_at_once_when_nothing_listens():
    port = free_port()
    result = client_cli(f"ws://127.0.0.1:{port}", "--group", "g_a", "--client", "c_a", timeout=5)  # no retrying
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"cannot connect to ws://127.0.0.1:{port}: Connection refused"


async def test_cli_takes_an_http_address_for_the_same_server(server):
    url = base(server).replace("ws://", "http://")
    result = await asyncio.to_thread(
        client_cli, url, "--group", "g_cli", "--client", "c_http", "send", "echo", "--msg", "hi"
    )
    assert result.returncode == 0, result.stderr
    assert any(orjson.loads(line)["msg"] == "hi" for line in result.stdout.splitlines())


def test_cli_help_explains_ids_and_exit_codes_in_plain_text():
    result = client_cli("--help")
    assert result.returncode == 0 and "``" not in result.stdout
    assert "Vision IDs: 1 to 64 characters of A-Z a-z 0-9 _ -" in result.stdout
    assert "Exit status: 0 done; 1 the server answered with an ERROR; 2" in result.stdout


async def test_cli_watches_in_a_readable_form(server):
    url = base(server)
    watch = asyncio.create_task(
        asyncio.to_thread(
            client_cli, url, "--group", "g_w", "--client", "c_watch", "--format", "text", "--seconds", "2"
        )
    )
    async with AetherClient(url, "g_w", "c_other") as other:
        while "c_watch" not in other.roster:
            await other.recv(5)
        other.send_group("for the watcher", {"k": 1})
    result = await watch
    assert result.returncode == 0
    assert "[group] c_other -> g_w: for the watcher" in result.stdout
    assert "c_other leaves g_w (closed)" in result.stdout


async def test_close_ends_iteration_and_a_peers_error_command_is_not_an_error(server):
    url = base(server)
    async with AetherClient(url, "g_end", "c_peer") as peer:
        listener = AetherClient(url, "g_end", "c_listener")
        await listener.__aenter__()
        seen = []
        got_error_command = asyncio.Event()

        async def read_all():
            async for message in listener:
                seen.append(message)
                if message.get("cmd") == "ERROR":
                    got_error_command.set()

        reading = asyncio.create_task(read_all())
        peer.command("ERROR", target="group")
        await asyncio.wait_for(got_error_command.wait(), scaled(5))
        await listener.close()
        await asyncio.wait_for(reading, scaled(5))  # the loop ended by itself
        error = next(message for message in seen if message.get("cmd") == "ERROR")
        assert error["from_id"] == "c_peer"
    result = await asyncio.to_thread(
        client_cli, url, "--group", "g_end", "--client", "c_cli2", "send", "cmd", "--cmd", "ERROR", "--target", "echo"
    )
    assert result.returncode == 0, result.stdout


def quick_client(server, group_id: str, reports: list) -> AetherClient:
    """A client that comes back within a tenth of a second and reports each recovery to ``reports``."""
    return AetherClient(
        base(server), group_id, "c_py", backoff_initial=0.05, backoff_max=0.2, on_recovery=reports.append
    )


async def next_snapshot(client: AetherClient) -> dict:
    while (message := await client.recv(5))["payload"] is None or message["payload"].get("event") != "snapshot":
        pass
    return message


async def texts_until(client: AetherClient, last: str) -> list[tuple[str, bool]]:
    """(msg, whether the client marked it recovered) of each message, up to the one saying ``last``."""
    texts = []
    while not texts or texts[-1][0] != last:
        message = await next_message(client)
        texts.append((message["msg"], message.get("recovered", False)))
    return texts


async def test_after_its_process_is_replaced_the_client_gets_what_it_missed_once_in_order(redis_server, start_process):
    first, second = await start_process(), await start_process()
    reports = []
    client = quick_client(first, "g_pc", reports)
    async with client:
        await next_snapshot(client)  # in the group: what is sent from now on reaches it
        sender = await Client.joined(second.url("g_pc", "c_talk"))
        for n in range(3):
            await sender.send(msg_type="msg", target="group", msg=str(n))
        assert await texts_until(client, "2") == [("0", False), ("1", False), ("2", False)]
        first.kill()  # a deploy, or a crash: the connection is gone without a close
        await until(lambda: client.state != "open")  # it notices the server is gone
        await sender.send(msg_type="msg", target="group", msg="3")
        await sender.send(msg_type="msg", target="direct", to_id="c_py", msg="4")
        await sender.send(msg_type="msg", target="broadcast", msg="5")
        await sender.recv_where(msg="5")  # recorded
        replacement = await ServerProcess.launch(
            "--redis-url", redis_server.url, port=first.port, ready="Redis bridge up"
        )
        try:
            await client.wait_open(timeout=scaled(10))
            assert (await next_snapshot(client))["payload"]["recovery"]["recovered"] is True
            await sender.send(msg_type="msg", target="group", msg="6")
            assert await texts_until(client, "6") == [("3", True), ("4", True), ("5", True), ("6", False)]
            assert [report["recovered"] for report in reports] == [True]
        finally:
            await replacement.stopped()


async def test_the_client_reports_when_it_could_not_recover_and_goes_on_from_there():
    first = await ServerProcess.launch()  # in memory: a new process has new epochs
    reports = []
    client = quick_client(first, "g_nr", reports)
    async with client:
        client.send_group("before")
        assert await texts_until(client, "before") == [("before", False)]
        old = dict(client.positions)
        first.kill()
        await until(lambda: client.state != "open")  # it notices the server is gone
        second = await ServerProcess.launch(port=first.port)
        try:
            await client.wait_open(timeout=scaled(10))
            assert (await next_snapshot(client))["payload"]["recovery"]["recovered"] is False
            client.send_group("after")
            assert await texts_until(client, "after") == [("after", False)]
            assert [report["recovered"] for report in reports] == [False]
            assert client.positions["group"] != old["group"]
        finally:
            await second.stopped()


async def test_a_message_lost_between_processes_is_noticed_and_recovered(redis_server, start_process):
    """A recorded message whose publish never arrived: the next one shows the gap, and the client recovers it."""
    process = await start_process()
    reports = []
    client = quick_client(process, "g_gap", reports)
    async with client:
        client.send_group("0")
        assert await texts_until(client, "0") == [("0", False)]
        lost = encode(WSMessageV3(msg_type="msg", target="group", group_id="g_gap", msg="1", sent_at=utc_timestamp()))
        stream = "aether:history:{group:g_gap}"
        script = (Path(history_redis.__file__).parent / "lua" / "append.lua").read_text()
        redis = Redis.from_url(redis_server.url)
        try:  # recorded like any message, but published where nobody listens
            master = (await redis.info("replication"))["master_replid"]
            keys = (stream, stream + ":meta", stream + ":meta")
            args = ("nowhere", b"", lost, 100, 60_000, 60_000, "unused", "PUBLISH", master, 300)
            await redis.eval(script, 3, *keys, *args)
        finally:
            await redis.aclose()
        client.send_group("2")
        assert await texts_until(client, "2") == [("1", True), ("2", True)]
        assert [report["recovered"] for report in reports] == [True]
