"""Real processes for tests: a private redis-server and aether_tornado servers."""

import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

STARTUP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoggedProcess:
    """A child process whose output lines are collected, so tests can wait for one."""

    def __init__(self, argv: list[str], open_files: int | None = None) -> None:
        """``open_files`` caps the descriptors the process may open, soft and hard limit alike."""
        self.log: list[str] = []
        self._logged = threading.Condition()
        limit = None if open_files is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2))
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit,
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

    def wait_for_start(self, text: str) -> None:
        """Like wait_for_log, but a process that never gets there is killed, not left behind."""
        try:
            self.wait_for_log(text)
        except TimeoutError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: its sockets vanish without a goodbye, as in a crash."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class RedisServer(LoggedProcess):
    """A redis-server on a free port, which a test may kill and start again on that port.

    With ``password`` it asks for one, of ``username`` too if given (the default user is
    then disabled). With ``tls`` (a folder holding cert.pem and key.pem) it speaks TLS only;
    with ``unix`` it listens on that socket file only.
    """

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        tls: Path | None = None,
        unix: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.username, self.password, self.tls, self.unix = username, password, tls, unix
        self.start()

    @property
    def url(self) -> str:
        login = f"{self.username or ''}:{self.password}@" if self.password else ""
        if self.unix:
            return f"unix://{login}{self.unix}?db=0"
        if self.tls:
            return f"rediss://{login}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls / 'cert.pem'}"
        return f"redis://{login}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not installed (make test installs it)"
        argv = [executable, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.unix:
            argv += ["--port", "0", "--unixsocket", str(self.unix)]
        elif self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(self.tls / "cert.pem"), "--tls-key-file", str(self.tls / "key.pem")]
        else:
            argv += ["--port", str(self.port)]
        if self.username:
            argv += ["--user", "default", "off"]
            argv += ["--user", self.username, "on", f">{self.password}", "~*", "&*", "+@all"]
        elif self.password:
            argv += ["--requirepass", self.password]
        super().__init__(argv)
        self.wait_for_start("to accept connections")


class ServerProcess(LoggedProcess):
    """``python -m aether_tornado`` on a free port, ready once ``ready`` is logged."""

    def __init__(
        self, *args: str, ready: str = "serving", port: int | None = None, open_files: int | None = None
    ) -> None:
        self.port = port or free_port()
        super().__init__([sys.executable, "-m", "aether_tornado", "--port", str(self.port), *args], open_files)
        self.wait_for_start("serving")
        self.wait_for_start(ready)

    def url(self, group_id: str, client_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v3/ws/group/{group_id}/client/{client_id}"
