"""The package as pip installs it: its command starts, and every page and script it serves is in it."""

import os
import subprocess
import sys
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

from .processes import LISTENING, LoggedProcess, free_port
from .timing import scaled

ROOT = Path(__file__).resolve().parent.parent
SERVED = ["/", "/v3/console", "/v3/operator", "/v3/client/aether-v3.js", "/v3/client/aether-v3.d.ts", "/healthz"]


async def test_the_built_package_s_command_serves_every_page(tmp_path):
    wheel = tmp_path / "wheel"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheel), str(ROOT)]
    subprocess.run(build, check=True, capture_output=True, timeout=scaled(120))
    target = tmp_path / "installed"
    [built] = wheel.glob("aether_tornado-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(built)]
    subprocess.run(install, check=True, capture_output=True, timeout=scaled(120))
    port = free_port()
    # From a folder of its own: the checkout is not importable, only what was installed (and the
    # dependencies of this interpreter).
    command = [str(target / "bin" / "aether-tornado"), "--port", str(port)]
    server = LoggedProcess(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    try:
        await server.logged(LISTENING)
        for path in SERVED:
            response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", request_timeout=scaled(5))
            assert response.code == 200 and response.body, path
    finally:
        server.stop()
