"""Memory per idle connection, seen from inside the server: tracemalloc and RSS.

    python bench/memory.py --clients 5000

Starts a server in this process with tracemalloc on, has a child process (bench/load.py
connect) open --clients idle connections and hold them, then reports the Python heap and
the RSS grown per connection, and the allocation sites that grew most.
"""

import argparse
import asyncio
import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

import orjson

from aether_tornado.app import Server
from aether_tornado.config import Settings

LOAD = Path(__file__).with_name("load.py")


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def measure(clients: int, top: int) -> dict:
    server = Server(Settings(port=0, log_level="warning"))
    await server.start()
    gc.collect()
    tracemalloc.start(10)
    before, rss_before = tracemalloc.take_snapshot(), rss_kb()
    hold = 5 + clients / 500
    loader = await asyncio.create_subprocess_exec(
        sys.executable, str(LOAD), "connect", "--url", f"ws://127.0.0.1:{server.port}",
        "--clients", str(clients), "--hold", str(hold), stdout=subprocess.PIPE,
    )  # fmt: skip
    for _ in range(int(hold * 10)):  # wait until all are attached, bounded by the hold time
        if len(server.node.hub) >= clients:
            break
        await asyncio.sleep(0.1)
    gc.collect()
    after, rss_after = tracemalloc.take_snapshot(), rss_kb()
    held = len(server.node.hub)
    growth = sorted(after.compare_to(before, "lineno"), key=lambda stat: -stat.size_diff)[:top]
    await loader.wait()
    await server.stop()
    heap = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return {
        "connections": held,
        "heap_bytes_per_conn": round(heap / held),
        "rss_kb_per_conn": round((rss_after - rss_before) / held, 2),
        "top": [f"{stat.size_diff / held:8.0f} B  {stat.traceback[0]}" for stat in growth],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    result = asyncio.run(measure(args.clients, args.top))
    for line in result.pop("top"):
        print(line)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
