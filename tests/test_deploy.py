"""Production set-up: graceful shutdown, JSON logs, the systemd unit, and nginx in front."""

import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from playwright.async_api import expect
from tornado.httpclient import AsyncHTTPClient

from aether_tornado.client import AetherClient

from .conftest import CHROMIUM_MISSING
from .processes import ServerProcess, free_port, free_ports
from .timing import scaled, until
from .wsclient import Client

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "aether-tornado@.service"
SITE = ROOT / "conf" / "nginx" / "aether-tornado.conf"
INSTALL_DIR = "/opt/aether-tornado"


async def test_sigterm_under_traffic_closes_every_socket_and_announces_leaves(start_process):
    leaving, staying = await start_process("--shutdown-timeout", "5"), await start_process()
    closing = [await Client.joined(leaving.url("g_bye", f"c_{n}")) for n in range(3)]
    watcher = await Client.joined(staying.url("g_bye", "c_watch"))
    sender = await Client.joined(staying.url("g_bye", "c_sender"))

    async def traffic():
        for n in range(2000):
            await sender.send(msg_type="msg", target="group", payload={"n": n})
            await asyncio.sleep(0.001)

    running = asyncio.create_task(traffic())
    await closing[0].recv_where(msg_type="msg")  # traffic reaches the process that will stop
    leaving.process.send_signal(signal.SIGTERM)
    for client in closing:
        assert await client.closed(timeout=10) == (1001, "server shutdown")
    left = set()
    while len(left) < 3:
        leave = await watcher.recv_where(event="leave", timeout=10)
        assert leave["payload"]["reason"] == "closed"
        left.add(leave["payload"]["client_id"])
    assert left == {"c_0", "c_1", "c_2"}
    assert await asyncio.to_thread(leaving.process.wait, 10) == 0
    running.cancel()


async def test_json_logs_carry_the_connection_id():
    process = await ServerProcess.launch("--log-format", "json", "--log-level", "debug")
    try:
        client = await Client.joined(process.url("g_log", "c_log"))
        await process.logged('"open g_log/c_log"', 10)
        client.close()
        await process.logged('"closed g_log/c_log"', 10)
        entries = [orjson.loads(line) for line in process.log]
        opened = next(entry for entry in entries if entry["message"] == "open g_log/c_log")
        closed = next(entry for entry in entries if entry["message"] == "closed g_log/c_log")
        assert opened["conn"] == closed["conn"] and opened["level"] == "debug"
        assert (opened["group_id"], opened["client_id"]) == ("g_log", "c_log")
    finally:
        await process.stopped()


def installed_here(text: str) -> str:
    """The unit as it would be installed, with this checkout standing in for /opt/aether-tornado."""
    return text.replace(INSTALL_DIR, str(ROOT))


def test_systemd_analyze_verifies_the_unit(tmp_path):
    (tmp_path / UNIT.name).write_text(installed_here(UNIT.read_text()))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "aether-tornado@8001.service")],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert result.returncode == 0, result.stderr
    assert "aether-tornado" not in result.stderr, result.stderr


def test_systemd_analyze_security_rates_the_unit_2_or_less(tmp_path):
    (tmp_path / UNIT.name).write_text(installed_here(UNIT.read_text()))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(tmp_path / UNIT.name)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert exposure is not None, result.stdout + result.stderr
    assert float(exposure.group(1)) <= 2.0, result.stdout


async def test_the_unit_command_line_starts_notifies_and_stops(redis_server, tmp_path):
    unit = UNIT.read_text()
    settings = dict(re.findall(r"^([^=\n]+)=(.*)$", unit, re.MULTILINE))
    port = free_port()
    command = installed_here(settings["ExecStart"]).replace("%i", str(port)).split()
    environment = {"AETHER_REDIS_URL": redis_server.url, "AETHER_SHUTDOWN_TIMEOUT": "2"}
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notifications:
        notifications.bind(notify_path)
        notifications.settimeout(15)
        process = subprocess.Popen(
            command,
            cwd=installed_here(settings["WorkingDirectory"]),
            env={**os.environ, **environment, "NOTIFY_SOCKET": notify_path},
        )
        try:
            ready = (await asyncio.to_thread(notifications.recv, 4096)).decode()
            assert ready.startswith("READY=1"), ready
            client = await Client.joined(f"ws://127.0.0.1:{port}/v3/ws/group/g_unit/client/c_unit")
            process.send_signal(signal.SIGTERM)
            assert (await asyncio.to_thread(notifications.recv, 4096)).decode() == "STOPPING=1"
            assert await client.closed() == (1001, "server shutdown")
            assert await asyncio.to_thread(process.wait, 15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_the_example_environment_file_is_valid_settings():
    from aether_tornado.config import load_settings

    example = ROOT / "systemd" / "aether-tornado.env.example"
    environ = dict(re.findall(r"^(AETHER_[A-Z_]+)=(.*)$", example.read_text(), re.MULTILINE))
    settings = load_settings([], environ)
    assert settings.redis_url and settings.log_format == "json"


@contextlib.contextmanager
def running_nginx(
    upstream_ports: list[int], change: Callable[[str], str] = lambda text: text
) -> Iterator[tuple[int, Path]]:
    """Real nginx with the repo's site config, rendered onto free ports, before these upstream ports."""
    port = free_port()
    site = SITE.read_text().replace("listen 80;", f"listen 127.0.0.1:{port};")
    site = site.replace("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;")
    site = site.replace("server_name ws.example.com;", "server_name 127.0.0.1;")  # the name the tests use
    site = change(site)
    prefix = Path(tempfile.mkdtemp(prefix="aether-nginx-"))
    site = site.replace("/var/log/nginx/", f"{prefix}/")
    for default, upstream in zip(("8001", "8002"), upstream_ports, strict=True):
        site = site.replace(f"server 127.0.0.1:{default} ", f"server 127.0.0.1:{upstream} ")
    (prefix / "site.conf").write_text(site)
    (prefix / "nginx.conf").write_text(
        f"worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;\n"
        f"  include {prefix}/site.conf; }}\n"
    )
    process = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    try:
        deadline = time.monotonic() + scaled(10)
        while True:  # nginx says nothing when it listens: try to connect, for up to 10 s
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (prefix / "error.log").read_text()
                assert time.monotonic() < deadline, (
                    f"nginx does not listen on {port}: {(prefix / 'error.log').read_text()}"
                )
                time.sleep(0.05)
        yield port, prefix
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def nginx(request, start_process):
    """Real nginx before two processes. A test may change the site's text first (``indirect``
    parametrisation with a function)."""
    upstreams = [start_process.now(), start_process.now()]
    with running_nginx([process.port for process in upstreams], getattr(request, "param", lambda text: text)) as (
        port,
        prefix,
    ):
        yield port, upstreams, prefix


async def test_traffic_and_presence_through_nginx(nginx):
    port, upstreams, _ = nginx
    url = f"ws://127.0.0.1:{port}/v3/ws/group/g_nx/client/{{}}"
    origin = {"Origin": f"http://127.0.0.1:{port}"}  # the Host header reaches the server unchanged
    clients = [await Client.joined(url.format(f"c_{n}"), headers=origin) for n in range(4)]
    for client in clients:
        await client.recv_where(event="join", client_id="c_3")
    for process in upstreams:  # least_conn spread the clients over both processes
        health = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{process.port}/healthz", request_timeout=scaled(5))
        assert orjson.loads(health.body)["connections"] >= 1
    await clients[0].send(msg_type="msg", target="group", msg="through nginx")
    for client in clients:
        assert (await client.recv_where(msg="through nginx"))["from_id"] == "c_0"
    await clients[1].send(msg_type="msg", target="direct", to_id="c_2", msg="psst")
    assert (await clients[2].recv_where(msg="psst"))["from_id"] == "c_1"
    api = f"http://127.0.0.1:{port}/v3"
    presence = await AsyncHTTPClient().fetch(f"{api}/groups/g_nx/presence", request_timeout=scaled(5))
    assert orjson.loads(presence.body)["clients"] == ["c_0", "c_1", "c_2", "c_3"]
    published = await AsyncHTTPClient().fetch(
        f"{api}/publish",
        method="POST",
        body=orjson.dumps({"msg_type": "cmd", "target": "group", "group_id": "g_nx", "cmd": "RELOAD"}),
        headers={"Content-Type": "application/json"},
        request_timeout=scaled(5),
    )
    assert published.code == 202
    for client in clients:
        assert (await client.recv_where(cmd="RELOAD"))["from_id"] is None


async def test_nginx_keeps_the_backend_api_to_its_allow_list_and_tokens_out_of_its_log(nginx):
    port, _, prefix = nginx
    fetch = AsyncHTTPClient().fetch
    api = f"http://127.0.0.1:{port}/v3"
    body = orjson.dumps({"msg_type": "msg", "target": "broadcast"})
    json = {"Content-Type": "application/json"}
    allowed = await fetch(f"{api}/publish", method="POST", body=body, headers=json, raise_error=False)
    assert allowed.code == 202
    assert allowed.headers["Server"] == "nginx"  # server_tokens off: no version
    backend_routes = [("/publish", "POST"), ("/groups/g_x/presence", "GET"), ("/groups", "GET"),
                      ("/processes", "GET"), ("/connections", "GET"), ("/groups/g_x/history", "DELETE"),
                      ("/clients/c_x/disconnect", "POST")]  # fmt: skip
    for path, method in backend_routes:
        elsewhere = await fetch(
            f"{api}{path}", method=method, body=body if method == "POST" else None, headers=json,
            network_interface="127.0.0.2", raise_error=False,
        )  # fmt: skip
        assert elsewhere.code == 403, path  # from an address not on the allow-list
    for path in ("/groups", "/processes", "/connections"):  # the operator's page's data, from this machine
        assert (await fetch(f"{api}{path}", raise_error=False)).code == 200, path
    icon = await fetch(f"http://127.0.0.1:{port}/favicon.ico", network_interface="127.0.0.2", raise_error=False)
    assert icon.code == 200 and icon.headers["Content-Type"] == "image/svg+xml"  # no 404 for every page
    disconnect = await fetch(f"{api}/clients/c_x/disconnect", method="POST", body=b"{}", headers=json,
                             raise_error=False)  # fmt: skip
    assert disconnect.code == 404  # reached the app: nobody to disconnect
    for page in ("/operator", "/console"):  # public pages, from anywhere
        answer = await fetch(f"{api}{page}", network_interface="127.0.0.2", raise_error=False)
        assert answer.code == 200, page
    refused = await fetch(f"{api}/ws/group/g_x/client/c_x?token=secret-in-a-query", raise_error=False)
    assert refused.code == 400  # no upgrade: the app answers, and nginx logs the request
    log = prefix / "aether-tornado.access.log"
    # nginx writes its log line after the answer has gone: the file is read until it holds it.
    await until(lambda: "/v3/ws/group/g_x/client/c_x " in log.read_text())
    assert "secret-in-a-query" not in log.read_text()


async def test_nginx_closes_a_request_for_another_name_unanswered(nginx):
    port, _, _ = nginx
    for host in ("rebind.attacker.example", f"localhost:{port}"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v3/operator HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert await asyncio.wait_for(reader.read(), scaled(5)) == b"", host  # 444: the connection ends, no answer
        writer.close()
    named = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/v3/operator", raise_error=False)
    assert named.code == 200


async def test_nginx_answers_a_handshake_flood_with_429(nginx):
    port, _, _ = nginx
    fetch = AsyncHTTPClient().fetch
    url = f"http://127.0.0.1:{port}/v3/ws/group/g_x/client/c_x"
    codes = await asyncio.gather(*(fetch(url, raise_error=False) for _ in range(80)))
    assert {response.code for response in codes} == {400, 429}  # a burst of 40 passes, the rest wait their turn


def _healthz_for_nobody(site: str) -> str:
    """The site as seen from a browser on another machine: /healthz refused."""
    kept = "location = /healthz {\n        allow 127.0.0.1;\n"
    assert kept in site
    return site.replace(kept, "location = /healthz {\n")


@CHROMIUM_MISSING
@pytest.mark.parametrize("nginx", [_healthz_for_nobody], indirect=True)
async def test_the_console_behind_nginx_shows_no_problem_when_healthz_is_kept_from_it(nginx, browser):
    port, _, prefix = nginx
    page = await browser.new_page()
    page.set_default_timeout(scaled(10) * 1000)
    await page.goto(f"http://127.0.0.1:{port}/v3/console?group=g_nx&client=c_console")
    await page.wait_for_selector("#state:text('open')")
    log = prefix / "aether-tornado.access.log"
    # Two health checks refused (the page checks every 5 s): the first one's answer was handled long ago.
    await until(lambda: log.read_text().count('"GET /healthz HTTP/1.1" 403') >= 2, timeout=15)
    await expect(page.locator("#banner")).not_to_have_class(re.compile("problem"))
    await expect(page.locator("#banner-health")).to_be_empty()
    await page.close()


ROLLING_RESTART = ROOT / "scripts" / "rolling-restart"


async def test_a_rolling_restart_through_nginx_refuses_no_handshake_and_loses_nothing(redis_server, tmp_path):
    # Two processes started from a shell, so that the script's restart command can stop one with
    # SIGTERM, wait for it to exit and start it again on its port, as systemd would.
    ports = free_ports(2)
    start = (
        f"cd {ROOT} && {sys.executable} -m aether_tornado --port {{port}} --redis-url {redis_server.url} "
        f"--shutdown-timeout 2 >> {tmp_path}/{{port}}.log 2>&1 & echo $! > {tmp_path}/{{port}}.pid"
    )
    stop = f"kill -TERM $(cat {tmp_path}/{{port}}.pid) && tail --pid=$(cat {tmp_path}/{{port}}.pid) -f /dev/null"
    try:
        for port in ports:
            subprocess.run(["sh", "-c", start.replace("{port}", str(port))], check=True, timeout=scaled(10))
        healthy = " && ".join(f"curl -fs 127.0.0.1:{port}/healthz" for port in ports)
        wait = ["sh", "-c", f"until {healthy}; do sleep 0.1; done"]  # nothing announces it: asked again
        await asyncio.to_thread(subprocess.run, wait, check=True, timeout=20, capture_output=True)
        with running_nginx(ports) as (port, prefix):
            base = f"ws://127.0.0.1:{port}"
            quick = {"backoff_initial": 0.05, "backoff_max": 0.5}
            recoveries: list[bool] = []

            def note(report: dict) -> None:
                recoveries.append(report["recovered"])

            receivers = [AetherClient(base, "g_roll", f"c_r{n}", on_recovery=note, **quick) for n in range(10)]
            sender = AetherClient(base, "g_roll", "c_sender", **quick)
            for client in [*receivers, sender]:
                client.start()
                await client.wait_open()
            received: dict[str, list[tuple[int, float]]] = {client.client_id: [] for client in [*receivers, sender]}

            async def receive(client: AetherClient) -> None:
                with contextlib.suppress(Exception):  # ended by close()
                    async for message in client:
                        if message["msg_type"] == "msg":
                            received[client.client_id].append((message["payload"]["n"], time.monotonic()))

            receiving = [asyncio.create_task(receive(client)) for client in [*receivers, sender]]
            sending = True

            async def send() -> None:
                n = 0
                while sending:
                    with contextlib.suppress(Exception):  # QueueFull while away: that message is not sent
                        sender.send_group(payload={"n": n})
                        n += 1
                    await asyncio.sleep(0.01)

            sent = asyncio.create_task(send())
            restart = f"{stop}; {start}"
            environment = {**os.environ, "AETHER_RESTART": restart, "AETHER_HEALTH_TIMEOUT": "20"}
            script = await asyncio.to_thread(
                subprocess.run, [str(ROLLING_RESTART), *map(str, ports)], env=environment, capture_output=True,
                text=True, timeout=60,
            )  # fmt: skip
            assert script.returncode == 0, script.stdout + script.stderr
            await asyncio.sleep(1)  # traffic goes on after the last restart: that is what is measured
            sending = False
            await sent
            acked = [n for n, _ in received["c_sender"]]  # the sender's own copies: recorded, then delivered
            async with asyncio.timeout(scaled(15)):
                while any(not received[client.client_id] or received[client.client_id][-1][0] < acked[-1]
                          for client in receivers):  # fmt: skip
                    await asyncio.sleep(0.05)  # the receivers catch up: their lists are watched
            for client in [*receivers, sender]:
                await client.close()
            await asyncio.gather(*receiving)
            log = (prefix / "aether-tornado.access.log").read_text()
        first = [n for n, _ in received["c_r0"]]
        for client in receivers:
            got = [n for n, _ in received[client.client_id]]
            assert got == first, client.client_id  # the same messages, once each, in the same order
        assert first == sorted(set(first)) and set(acked) <= set(first)
        assert '" 502 ' not in log and " 502 " not in log
        away = max(b - a for client in receivers for (_, a), (_, b) in itertools.pairwise(received[client.client_id]))
        print(f"rolling restart: {len(first)} messages, {len(recoveries)} recoveries "
              f"({recoveries.count(True)} recovered), longest gap at a receiver {away:.2f} s, 0 refused")  # fmt: skip
        assert recoveries and all(recoveries)
    finally:
        for port in ports:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((tmp_path / f"{port}.pid").read_text()), signal.SIGKILL)
