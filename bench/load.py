"""Load generator for aether-tornado (or any server of the Aether V3 protocol).

    python bench/load.py fanout --url ws://127.0.0.1:8888 --groups 10 --clients 100 --msgs 2000
    python bench/load.py echo   --url ws://127.0.0.1:8888 --clients 50 --seconds 5
    python bench/load.py direct --url ws://127.0.0.1:8001 --url2 ws://127.0.0.1:8002 --pairs 50 --seconds 5
    python bench/load.py direct --url ws://127.0.0.1:8001 --url2 ws://127.0.0.1:8002 --pairs 10 --window 16
    python bench/load.py connect --url ws://127.0.0.1:8888 --clients 5000 [--pid SERVER_PID] [--hold 0]
    python bench/load.py flood --url ws://127.0.0.1:8888 --kind ping|pong|continuation|text --seconds 5

Each run prints one JSON line: throughput, latency p50/p99/p99.9 (ms) and problems (lost,
reordered, errors, dropped). Clients are plain asyncio protocols that parse with the
server's own sans-I/O frame module (aether_tornado/ws/frames.py); frames are sent with a zero
mask (valid, and cheap to apply), so the generator costs a few microseconds a message.
Every loop is bounded by a count and by --timeout.
"""

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import sys
import time
from urllib.parse import urlsplit

import orjson

if not __package__:  # run as a script: the project is one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aether_tornado.ws import frames

ZERO_MASK = b"\x00\x00\x00\x00"


def text_frame(payload: bytes) -> bytes:
    return frames.build(frames.TEXT, payload, mask_key=ZERO_MASK)


class Client(asyncio.Protocol):
    """One WebSocket: the upgrade, then every text frame handed to ``on_message``."""

    def __init__(self, path: str, host: str, on_message) -> None:
        self.path, self.host, self.on_message = path, host, on_message
        self.buffer = bytearray()  # the handshake's response
        self.reader = frames.FrameReader(from_client=False)
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if self.upgraded.done():
            self.reader.feed(data)
        else:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[: self.buffer.find(b"\r\n")])
            if b" 101 " not in status:
                self.upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.reader.feed(self.buffer[end + 4 :])
            self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        while (event := self.reader.next()) is not None:
            opcode, payload = event
            if opcode == frames.TEXT:
                self.on_message(payload)
            elif opcode == frames.PING:  # answer, as a browser would
                self.transport.write(frames.build(frames.PONG, payload, mask_key=ZERO_MASK))
            elif opcode == frames.CLOSE and not self.closed.done():
                self.closed.set_result(frames.close_code(payload))

    def send(self, message: dict) -> None:
        self.transport.write(text_frame(orjson.dumps(message)))

    def connection_lost(self, exc) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed during the upgrade"))
            self.upgraded.exception()  # marked as seen: whoever awaits it still gets the error
        if not self.closed.done():
            self.closed.set_result(None)


async def connect(url: str, group_id: str, client_id: str, on_message) -> Client:
    parts = urlsplit(url)
    path = f"/v3/ws/group/{group_id}/client/{client_id}"
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: Client(path, parts.netloc, on_message), parts.hostname, parts.port or 80
    )
    await client.upgraded
    return client


class Stats:
    def __init__(self) -> None:
        self.latencies: list[int] = []  # ns
        self.errors = 0
        self.other = 0

    def percentiles(self) -> dict:
        if not self.latencies:
            return {}
        ordered = sorted(self.latencies)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

        return {"lat_p50_ms": at(0.5), "lat_p99_ms": at(0.99), "lat_p999_ms": at(0.999)}


def parse(payload: bytes) -> dict:
    return orjson.loads(payload)


async def fanout(args) -> dict:
    """Member 0 of each group sends; every member (the sender too) must get all, in order.

    With --url2, odd members connect there, so every message crosses processes."""
    stats = Stats()
    expected = [[0] * args.clients for _ in range(args.groups)]
    problems = {"lost": 0, "reordered": 0}
    acked = [asyncio.Event() for _ in range(args.groups)]
    own = [0] * args.groups
    done = asyncio.get_running_loop().create_future()
    remaining = [args.groups * args.clients * args.msgs]

    def receiver(group: int, member: int):
        def on_message(payload: bytes) -> None:
            message = parse(payload)
            if message["msg_type"] != "msg":
                stats.other += message["cmd"] != "ERROR" or 0
                stats.errors += message["cmd"] == "ERROR"
                return
            n, sent = message["payload"]["n"], message["payload"]["t"]
            stats.latencies.append(time.monotonic_ns() - sent)
            if n != expected[group][member]:
                problems["reordered"] += 1
            expected[group][member] = n + 1
            if member == 0:
                own[group] = n + 1
                acked[group].set()
            remaining[0] -= 1
            if not remaining[0] and not done.done():
                done.set_result(None)

        return on_message

    clients = [
        [
            await connect((args.url, args.url2)[member % 2], f"g{group}", f"c{group}_{member}", receiver(group, member))
            for member in range(args.clients)
        ]
        for group in range(args.groups)
    ]
    await asyncio.sleep(args.settle)  # presence events of the set-up drain away

    async def sender(group: int) -> None:
        client = clients[group][0]
        for n in range(args.msgs):
            while n - own[group] >= args.window:
                acked[group].clear()
                await acked[group].wait()
            client.send({"msg_type": "msg", "target": "group", "payload": {"n": n, "t": time.monotonic_ns()}})

    started = time.monotonic()
    senders = asyncio.gather(*(sender(group) for group in range(args.groups)))
    with contextlib.suppress(TimeoutError):  # what did not arrive by then counts as lost
        await asyncio.wait_for(asyncio.gather(senders, done), args.timeout)
    elapsed = time.monotonic() - started
    delivered = args.groups * args.clients * args.msgs - remaining[0]
    problems["lost"] = remaining[0]
    return {"deliveries_per_s": round(delivered / elapsed), "deliveries": delivered, **stats.percentiles(),
            **problems, "errors": stats.errors}  # fmt: skip


async def round_trips(args, make_pair) -> dict:
    """Clients with up to --window messages in flight for --seconds; ``make_pair`` gives (sender, message).

    Each answer must come in the order sent: one that overtakes another counts as reordered.
    """
    stats = Stats()
    count, reordered = [0], [0]
    deadline = time.monotonic() + args.seconds

    async def loop(index: int) -> None:
        arrived = asyncio.Event()
        flight = {"sent": 0, "back": 0}

        def on_message(payload: bytes) -> None:
            message = parse(payload)
            if message["cmd"] == "ERROR":
                stats.errors += 1  # the round trip ends: the run reports it, and does not hang
            elif message["msg_type"] in ("msg", "heartbeat") and message.get("payload"):
                stats.latencies.append(time.monotonic_ns() - message["payload"]["t"])
                reordered[0] += message["payload"]["n"] != flight["back"]
                count[0] += 1
            else:
                return
            flight["back"] += 1
            arrived.set()

        sender, message = await make_pair(index, on_message)
        while time.monotonic() < deadline:
            while flight["sent"] - flight["back"] < args.window:
                sender.send({**message, "payload": {"t": time.monotonic_ns(), "n": flight["sent"]}})
                flight["sent"] += 1
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), args.timeout)
        async with asyncio.timeout(args.timeout):  # what is still in flight comes back, or the run fails
            while flight["back"] < flight["sent"]:
                arrived.clear()
                await arrived.wait()

    started = time.monotonic()
    await asyncio.gather(*(loop(index) for index in range(args.clients)))
    return {"rate_per_s": round(count[0] / (time.monotonic() - started)), **stats.percentiles(),
            "errors": stats.errors, "reordered": reordered[0]}  # fmt: skip


async def echo(args) -> dict:
    async def make_pair(index, on_message):
        client = await connect(args.url, f"g_echo{index}", f"c_echo{index}", on_message)
        return client, {"msg_type": "msg", "target": "echo"}

    return await round_trips(args, make_pair)


async def direct(args) -> dict:
    """A on --url sends to B on --url2, B's server delivers; --window messages in flight per pair."""

    async def make_pair(index, on_message):
        snapshot = asyncio.Event()  # B's server has subscribed it once B has its snapshot

        def receive(payload: bytes) -> None:
            if parse(payload)["msg_type"] == "presence":
                snapshot.set()
            else:
                on_message(payload)

        await connect(args.url2, f"g_b{index}", f"c_b{index}", receive)
        await asyncio.wait_for(snapshot.wait(), args.timeout)
        sender = await connect(args.url, f"g_a{index}", f"c_a{index}", on_message)  # its errors count
        return sender, {"msg_type": "msg", "target": "direct", "to_id": f"c_b{index}"}

    args.clients = args.pairs
    return await round_trips(args, make_pair)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def connect_many(args) -> dict:
    """Open --clients idle connections (groups of 10) as fast as the server takes them."""
    before = rss_kb(args.pid) if args.pid else None
    semaphore = asyncio.Semaphore(args.concurrency)
    clients = []

    async def one(index: int) -> None:
        async with semaphore:
            snapshot = asyncio.get_running_loop().create_future()

            def on_message(payload: bytes) -> None:
                if not snapshot.done():
                    snapshot.set_result(None)

            number = args.offset + index
            clients.append(await connect(args.url, f"g_idle{number // 10}", f"c_idle{number}", on_message))
            await asyncio.wait_for(snapshot, args.timeout)

    started = time.monotonic()
    await asyncio.gather(*(one(index) for index in range(args.clients)))
    elapsed = time.monotonic() - started
    result = {"connects_per_s": round(args.clients / elapsed), "connections": len(clients)}
    if args.pid:
        await asyncio.sleep(1)
        result["rss_kb_per_conn"] = round((rss_kb(args.pid) - before) / args.clients, 2)
    await asyncio.sleep(args.hold)
    return result


FLOODS = {
    "ping": frames.build(frames.PING, b"", mask_key=ZERO_MASK),
    "pong": frames.build(frames.PONG, b"", mask_key=ZERO_MASK),
    "continuation": frames.build(frames.CONTINUATION, b"", final=False, mask_key=ZERO_MASK),
    "text": text_frame(b'{"msg_type":"msg","target":"echo"}'),
}


async def flood(args) -> dict:
    """One client floods --kind frames for --seconds (reconnecting when closed); another measures echo.

    The measuring client sends one echo every 2 ms and waits for it; its latencies are the
    result, with how often the flooder was closed and with which codes.
    """
    burst = FLOODS[args.kind] * 4096
    # Continuations need a message to continue: one that never ends.
    opener = frames.build(frames.TEXT, b"", final=False, mask_key=ZERO_MASK) if args.kind == "continuation" else b""
    deadline = time.monotonic() + args.seconds
    codes: dict[str, int] = {}

    async def flooder() -> None:
        number = 0
        while time.monotonic() < deadline:
            number += 1
            client = await connect(args.url, "g_flood", f"c_flood{number}", lambda payload: None)
            client.transport.write(opener)
            while not client.closed.done() and time.monotonic() < deadline:
                if client.transport.get_write_buffer_size() < 1 << 20:
                    client.transport.write(burst)
                await asyncio.sleep(0)
            code = str(client.closed.result()) if client.closed.done() else "open at the end"
            codes[code] = codes.get(code, 0) + 1
            client.transport.close()

    stats = Stats()
    arrived = asyncio.Event()
    measurer = await connect(args.url, "g_calm", "c_calm", lambda payload: arrived.set())
    await asyncio.sleep(args.settle)
    flooding = asyncio.create_task(flooder())
    await asyncio.sleep(0.2)  # the flood is under way
    while time.monotonic() < deadline:
        arrived.clear()
        sent = time.monotonic_ns()
        measurer.send({"msg_type": "msg", "target": "echo"})
        await asyncio.wait_for(arrived.wait(), args.timeout)
        stats.latencies.append(time.monotonic_ns() - sent)
        await asyncio.sleep(0.002)
    await flooding
    worst = round(max(stats.latencies) / 1e6, 3) if stats.latencies else None
    return {"kind": args.kind, "round_trips": len(stats.latencies), **stats.percentiles(), "lat_max_ms": worst,
            "flooder_closes": codes}  # fmt: skip


SCENARIOS = {"fanout": fanout, "echo": echo, "direct": direct, "connect": connect_many, "flood": flood}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--url", default="ws://127.0.0.1:8888")
    parser.add_argument("--url2", help="second server process: direct's receivers, every other fan-out member")
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--msgs", type=int, default=2000)
    parser.add_argument(
        "--window", type=int, help="messages in flight: per fan-out group sender (10), per echo or direct client (1)"
    )
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=200, help="connect: handshakes in flight")
    parser.add_argument("--offset", type=int, default=0, help="connect: first client number (to run several)")
    parser.add_argument("--pid", type=int, help="connect: the server process whose RSS to read")
    parser.add_argument("--hold", type=float, default=0.0, help="connect: seconds to keep the connections open")
    parser.add_argument("--settle", type=float, default=1.0, help="fanout: seconds between set-up and load")
    parser.add_argument("--kind", choices=FLOODS, default="ping", help="flood: the frame kind to flood with")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    args.url2 = args.url2 or args.url
    if args.window is None:
        args.window = 10 if args.scenario == "fanout" else 1
    result = asyncio.run(SCENARIOS[args.scenario](args))
    print(orjson.dumps({"scenario": args.scenario, **result}).decode())
    sys.exit(0)


if __name__ == "__main__":
    main()
