"""The command line: settings from flags, environment and file; a real server process."""

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from aether_tornado.__main__ import GC_YOUNG_ALLOCATIONS
from aether_tornado.config import Settings, SettingsError, load_settings

from .processes import LISTENING, free_port
from .timing import scaled
from .wsclient import Client


def server_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aether_tornado", *args],
        capture_output=True,
        text=True,
        timeout=scaled(20),
        env={**os.environ, **(env or {})},
    )


def test_precedence_is_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "aether.toml"
    config.write_text('port = 7001\nrate_limit = 5\nallowed_origins = ["https://a.example"]\nidle_timeout = 30\n')
    settings = load_settings(
        ["--config", str(config), "--rate-limit", "7"],
        {"AETHER_PORT": "7002", "AETHER_RATE_LIMIT": "6", "AETHER_ALLOW_CLIENT_BROADCAST": "false"},
    )
    assert settings == Settings(
        port=7002,
        rate_limit=7.0,
        allowed_origins=("https://a.example",),
        idle_timeout=30.0,
        allow_client_broadcast=False,
    )


@pytest.mark.parametrize(
    ("argv", "environ", "names"),
    [
        (["--port", "eighty"], {}, "--port"),
        (["--port", "70000"], {}, "port"),
        ([], {"AETHER_RATE_LIMIT": "-1"}, "rate_limit"),
        ([], {"AETHER_ALLOW_CLIENT_BROADCAST": "maybe"}, "AETHER_ALLOW_CLIENT_BROADCAST"),
        (["--max-message-bytes", "1.5"], {}, "--max-message-bytes"),
        (["--log-level", "loud"], {}, "log_level"),
        (["--redis-url", "http://127.0.0.1:6379"], {}, "redis_url"),
    ],
)
def test_bad_settings_are_refused_with_their_name(argv, environ, names):
    with pytest.raises(SettingsError, match=names):
        load_settings(argv, environ)


def test_help_explains_every_setting():
    result = server_cli("--help")
    assert result.returncode == 0
    for flag, env in [("--max-message-bytes", "AETHER_MAX_MESSAGE_BYTES"), ("--idle-timeout", "AETHER_IDLE_TIMEOUT")]:
        assert flag in result.stdout and env in result.stdout


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--port", "x"), {}), ((), {"AETHER_LEASE_SECONDS": "0"}), (("--config", "/nonexistent.toml"), {})],
)
def test_a_bad_setting_ends_the_process_with_status_2_and_one_line(args, env):
    result = server_cli(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aether_tornado: error:")


async def test_a_real_process_serves_and_shuts_down_gracefully_on_sigterm():
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aether_tornado", "--port", str(port), "--log-level", "debug",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        while LISTENING.encode() not in (line := await asyncio.wait_for(process.stderr.readline(), scaled(10))):
            assert line, "the server exited before serving"
        client = await Client.joined(f"ws://127.0.0.1:{port}/v3/ws/group/g_cli/client/c_cli")
        await client.send(msg_type="msg", target="echo", msg="ping")
        assert (await client.recv_where(msg="ping"))["from_id"] == "c_cli"
        process.send_signal(signal.SIGTERM)
        assert await client.closed() == (1001, "server shutdown")
        assert await asyncio.wait_for(process.wait(), scaled(10)) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_process_collects_cycles_less_often_and_never_looks_at_its_modules_again():
    """The collector's settings of ``python -m aether_tornado`` (bench/RESULTS.md, "Garbage collection")."""
    probe = (
        "import gc; from aether_tornado.__main__ import tune_gc; "
        "tune_gc(); print(gc.get_threshold()[0], gc.get_freeze_count())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=scaled(20), check=True
    )
    threshold, frozen = map(int, result.stdout.split())
    assert threshold == GC_YOUNG_ALLOCATIONS
    assert frozen > 10_000  # the imported modules' functions, classes and constants
