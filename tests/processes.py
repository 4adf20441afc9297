"""Real processes for tests: a private redis-server and aether_tornado servers."""

import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

from .timing import scaled

STARTUP_TIMEOUT = 15.0  # scaled where it is used, as every timeout given to wait_for_log
# How long a stopping server may take to close its sockets (its --shutdown-timeout unless the
# test gives one), so that stopping every server of a test is quick.
SHUTDOWN_TIMEOUT = 0.2
LISTENING = "aether-tornado serving"  # logged once the port is open ("Redis bridge down, serving ..." may come first)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different ports free now: each socket stays bound until all are chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LoggedProcess:
    """A child process whose output lines are collected, so tests can wait for one."""

    # Every process started during the current test, whose log the suite reads once it is over.
    started: ClassVar[list["LoggedProcess"]] = []

    def __init__(
        self,
        argv: list[str],
        open_files: int | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``open_files`` caps the descriptors the process may open, soft and hard limit alike."""
        self.log: list[str] = []
        self._logged = threading.Condition()
        limit = None if open_files is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2))
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit,
            cwd=cwd,
        )
        threading.Thread(target=self._collect, args=(self.process,), daemon=True).start()
        LoggedProcess.started.append(self)

    def _collect(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]

    def wait_for_log(self, text: str, timeout: float = STARTUP_TIMEOUT, count: int = 1) -> None:
        """Block until ``count`` output lines contain ``text``, for ``timeout`` seconds (scaled)."""
        timeout = scaled(timeout)
        with self._logged:
            if not self._logged.wait_for(lambda: len(self.lines(text)) >= count, timeout):
                raise TimeoutError(f"{count} x {text!r} not seen within {timeout} s:\n{''.join(self.log)}")

    async def logged(self, text: str, timeout: float = STARTUP_TIMEOUT, count: int = 1) -> None:
        """``wait_for_log`` in a thread, so that the test's event loop goes on meanwhile."""
        await asyncio.to_thread(self.wait_for_log, text, timeout, count)

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

    async def stopped(self) -> None:
        """``stop`` in a thread, so that the test's event loop goes on meanwhile."""
        await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        """SIGTERM, as systemd stops it (a server writes what it measured, its coverage included),
        and SIGKILL if it is not gone within the time it was given."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(scaled(SHUTDOWN_TIMEOUT + 5))
            except subprocess.TimeoutExpired:
                self.kill()


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
        self.folder = tempfile.mkdtemp(prefix="redis-")  # its working folder: no file of ours is read or written
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
        argv = [executable, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.folder]
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
        self, *args: str, ready: str = LISTENING, port: int | None = None, open_files: int | None = None
    ) -> None:
        self.port = port or free_port()
        argv = [sys.executable, "-m", "aether_tornado", "--port", str(self.port), "--shutdown-timeout"]
        super().__init__([*argv, str(SHUTDOWN_TIMEOUT), *args], open_files)  # a later flag wins
        self.wait_for_start(LISTENING)
        self.wait_for_start(ready)

    @classmethod
    async def launch(cls, *args: str, **options: object) -> "ServerProcess":
        """A started server, waited for in a thread, so that the test's event loop goes on meanwhile."""
        return await asyncio.to_thread(cls, *args, **options)  # type: ignore[arg-type]

    def url(self, group_id: str, client_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v3/ws/group/{group_id}/client/{client_id}"


class RedisClusterServers:
    """A Redis Cluster of three masters with ``replicas`` each (one by default), on free ports, in ``folder``.

    Node timeouts are short (1 s), so a killed master's replica takes over within seconds.
    """

    def __init__(self, folder: Path, replicas: int = 1) -> None:
        self.nodes: list[LoggedProcess] = []
        count = 3 * (1 + replicas)
        ports = free_ports(2 * count)
        self.ports, bus_ports = ports[:count], ports[count:]
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not installed (make test installs it)"
        for port, bus_port in zip(self.ports, bus_ports, strict=True):
            config = folder / f"nodes-{port}.conf"
            argv = [executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
            argv += ["--dir", str(folder), "--dbfilename", f"dump-{port}.rdb"]  # never a file of the working folder
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(config), "--cluster-node-timeout", "1000"]
            argv += ["--cluster-port", str(bus_port)]  # the default, port + 10000, may be taken or too high
            argv += ["--cluster-replica-validity-factor", "0"]  # a replica may always take over
            node = LoggedProcess(argv)
            self.nodes.append(node)
            node.wait_for_start("to accept connections")
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        try:
            subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=30,
            )
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def cli(self, port: int, *args: str) -> str:
        result = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
        return result.stdout

    def alive(self) -> list[int]:
        return [port for port, node in zip(self.ports, self.nodes, strict=True) if node.process.poll() is None]

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok and agrees on the masters."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self.alive()
            states = [self.cli(port, "cluster", "info") for port in alive]
            masters = {frozenset(self.masters(port)) for port in alive}
            if all("cluster_state:ok" in state for state in states) and len(masters) == 1:
                return
            time.sleep(0.1)  # nothing announces it: the nodes are asked again
        raise TimeoutError("the Redis Cluster did not become ok")

    def masters(self, port: int) -> list[int]:
        lines = self.cli(port, "cluster", "nodes").splitlines()
        return sorted(
            int(line.split()[1].split("@")[0].rsplit(":", 1)[1])
            for line in lines
            if "master" in line.split()[2] and "fail" not in line.split()[2]
        )

    def master_of(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot."""
        slot = int(self.cli(self.alive()[0], "cluster", "keyslot", key))
        for line in self.cli(self.alive()[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2]:
                for ranges in fields[8:]:
                    first, _, last = ranges.partition("-")
                    if first.isdigit() and int(first) <= slot <= int(last or first):
                        return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no master holds slot {slot}")

    def kill(self, port: int) -> None:
        self.nodes[self.ports.index(port)].kill()

    async def stopped(self) -> None:
        """``stop`` in a thread, so that the test's event loop goes on meanwhile."""
        await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


# Pings Redis every 2 ms over a socket of its own until its standard input closes, then prints
# the longest answer time in ms and the number of pings.
_PINGER = """
import socket, sys, threading, time
redis = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
longest, count = 0.0, 0
while not done.is_set():
    start = time.perf_counter()
    redis.sendall(b"PING\\r\\n")
    reply = b""
    while not reply.endswith(b"\\r\\n"):
        reply += redis.recv(64)
    longest, count = max(longest, time.perf_counter() - start), count + 1
    time.sleep(0.002)
print(f"{longest * 1000:.2f} {count}")
"""


class RedisLatency:
    """The longest time Redis took to answer a PING while this ran, measured from another process."""

    def __init__(self, port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PINGER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def stop(self) -> tuple[float, int]:
        """(the longest answer in ms, how many pings were answered)."""
        out, _ = self.process.communicate("", timeout=10)
        longest, count = out.split()
        return float(longest), int(count)
