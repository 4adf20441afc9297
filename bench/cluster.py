"""Two processes on one Redis against two processes on a three-master Redis Cluster.

    python -m bench.cluster [--rounds 3] [--out bench/results/cluster.json]

Starts a standalone redis-server and a cluster of three masters (no replicas: on a small
machine they would only take CPU from the masters) on free ports, then, round after round,
alternating the two: two fresh server processes on it, a fan-out (every other member on the
second process, so every message crosses processes) and direct messages across the
processes, with bench/load.py. For each run it reports the load's figures, the CPU seconds of
the two server processes, and per Redis (one, or each master) the commands it processed and
its CPU seconds. As in the comparison harness, the servers run on CPU 0, the generator and
every Redis on CPU 1 (on a machine with at least two). Everything runs on loopback and stops by
itself.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from tests.processes import RedisClusterServers, RedisServer, ServerProcess

LOAD = Path(__file__).with_name("load.py")
UNLIMITED = (
    "--rate-limit", "1e9", "--rate-burst", "1000000000", "--frame-rate", "1e9", "--frame-burst", "1000000000",
    "--byte-rate", "1e12",
)  # fmt: skip
SCENARIOS = {
    "fanout": ["--groups", "10", "--clients", "100", "--msgs", "1000", "--window", "10"],
    "direct": ["--pairs", "50", "--seconds", "5"],
}


SERVER_CPUS, OTHER_CPUS = ({0}, {1}) if (os.cpu_count() or 1) >= 2 else (None, None)


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


def redis_counters(port: int) -> tuple[int, float]:
    """Commands processed so far, and CPU seconds (user and system) used so far."""
    info = subprocess.run(["redis-cli", "-p", str(port), "info"], capture_output=True, text=True, timeout=10).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return int(fields["total_commands_processed"]), float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks


def run(backend: str, url: str, redis_ports: list[int], scenario: str, prefix: str) -> dict:
    args = ["--redis-url", url, "--redis-prefix", prefix, *UNLIMITED]
    if backend == "cluster":
        args += ["--redis-cluster", "true"]
    servers = [ServerProcess(*args, ready="Redis bridge up") for _ in range(2)]
    try:
        for server in servers:
            pin(server.process.pid, SERVER_CPUS)
        before = [redis_counters(port) for port in redis_ports]
        cpu_before = [cpu_seconds(server.process.pid) for server in servers]
        urls = [f"ws://127.0.0.1:{server.port}" for server in servers]
        load = [sys.executable, str(LOAD), scenario, "--url", urls[0], "--url2", urls[1], *SCENARIOS[scenario]]
        pinned = {} if OTHER_CPUS is None else {"preexec_fn": lambda: os.sched_setaffinity(0, OTHER_CPUS)}
        result = orjson.loads(subprocess.run(load, capture_output=True, check=True, timeout=180, **pinned).stdout)
        after = [redis_counters(port) for port in redis_ports]
        cpu_after = [cpu_seconds(server.process.pid) for server in servers]
        servers_cpu = sum(cpu_after) - sum(cpu_before)
    finally:
        for server in servers:
            server.kill()
    result.update(
        backend=backend,
        servers_cpu_s=round(servers_cpu, 2),
        redis=[
            {"port": port, "commands": done[0] - start[0], "cpu_s": round(done[1] - start[1], 2)}
            for port, start, done in zip(redis_ports, before, after, strict=True)
        ],
    )
    return result


def median_of(results: list[dict], key: str) -> float:
    return statistics.median(result[key] for result in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="where to write every run and the medians, as JSON")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    single = RedisServer()
    cluster = RedisClusterServers(folder, replicas=0)
    for redis in (single, *cluster.nodes):
        pin(redis.process.pid, OTHER_CPUS)
    backends = {"standalone": (single.url, [single.port]), "cluster": (cluster.url, cluster.ports)}
    runs: list[dict] = []
    try:
        for round_number in range(options.rounds):
            order = list(backends) if round_number % 2 == 0 else list(reversed(backends))
            for scenario in SCENARIOS:
                for backend in order:
                    url, ports = backends[backend]
                    result = run(backend, url, ports, scenario, f"bench{round_number}")
                    print(orjson.dumps(result).decode(), flush=True)
                    runs.append(result)
    finally:
        cluster.stop()
        single.kill()
    key = {"fanout": "deliveries_per_s", "direct": "rate_per_s"}
    medians = {
        scenario: {
            backend: median_of([r for r in runs if (r["scenario"], r["backend"]) == (scenario, backend)], key[scenario])
            for backend in backends
        }
        for scenario in SCENARIOS
    }
    for figures in medians.values():
        figures["cluster_over_standalone"] = round(figures["cluster"] / figures["standalone"], 2)
    print(orjson.dumps({"medians": medians}).decode())
    if options.out:
        options.out.write_bytes(orjson.dumps({"runs": runs, "medians": medians}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
