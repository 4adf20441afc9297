"""Real processes for tests: a private redis-server and aether_tornado servers."""

import os
import shutil
import socket
import subprocess
import sys
import threading

STARTUP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoggedProcess:
    """A child process whose output lines are collected, so tests can wait for one."""

    def __init__(self, argv: list[str]) -> None:
        self.log: list[str] = []
        self._logged = threading.Condition()
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._collect, args=(self.process,), daemon=True).start()

    def _collect(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]

    def wait_for_log(self, text: str, timeout: float = STARTUP_TIMEOUT, count: int = 1) -> None:
        """Block until ``count`` output lines contain ``text``."""
        with self._logged:
            if not self._logged.wait_for(lambda: len(self.lines(text)) >= count, timeout):
                raise TimeoutError(f"{count} x {text!r} not seen within {timeout} s:\n{''.join(self.log)}")

    def kill(self) -> None:
        """SIGKILL: its sockets vanish without a goodbye, as in a crash."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class RedisServer(LoggedProcess):
    """A redis-server on a free port, which a test may kill and start again on that port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.starts = 0
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not installed (make test installs it)"
        argv = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__(argv)
        self.wait_for_log("Ready to accept connections")


class ServerProcess(LoggedProcess):
    """``python -m aether_tornado`` on a free port, ready once ``ready`` is logged."""

    def __init__(self, *args: str, ready: str = "serving", port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__([sys.executable, "-m", "aether_tornado", "--port", str(self.port), *args])
        self.wait_for_log("serving")
        self.wait_for_log(ready)

    def url(self, group_id: str, client_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v3/ws/group/{group_id}/client/{client_id}"
