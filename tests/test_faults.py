"""Faults: the same process never depends on Redis, and only the truth is answered about a recipient.

A recorded message is delivered on its sender's process from Redis (in the order recorded); if
Redis drops that copy, the process delivers it itself. ``recipient_offline`` is said only when
no process can hold the client, and ``unavailable`` only when Redis cannot tell.
"""

import asyncio
import signal
import time

from redis.asyncio import Redis

from .processes import RedisServer, ServerProcess
from .timing import scaled
from .wsclient import Client, errors_of


async def announced(redis_server: RedisServer, *processes: ServerProcess) -> None:
    """Until each process has announced itself in Redis (it has read the others' announcements then too)."""
    redis = Redis.from_url(redis_server.url)
    try:
        async with asyncio.timeout(scaled(10)):
            while True:
                announcements = await redis.hvals("aether:presence:{processes}:announced")
                pids = [f'"pid":{process.process.pid},'.encode() for process in processes]
                if all(any(pid in announcement for announcement in announcements) for pid in pids):
                    return
                await asyncio.sleep(0.02)  # Redis announces nothing: its state is read
    finally:
        await redis.aclose()


async def test_a_recorded_message_redis_does_not_bring_back_reaches_its_sender_s_process(redis_server, start_process):
    process = await start_process()
    members = [await Client.joined(process.url("g_lost", f"c_m{n}")) for n in range(4)]
    talker = await Client.joined(process.url("g_lost", "c_talk"))
    redis = Redis.from_url(redis_server.url)
    try:
        # Redis drops any subscriber whose pending output passes a byte: this process's own
        # subscriber, as the copy of the message comes back, after the message was recorded.
        await redis.config_set("client-output-buffer-limit", "pubsub 1 1 0")
        big = "x" * 20_000
        await talker.send(msg_type="msg", target="group", msg=big)
        for client in [*members, talker]:
            message = await client.recv_where(msg_type="msg")
            assert message["msg"] == big and message["from_id"] == "c_talk"
    finally:
        await redis.config_set("client-output-buffer-limit", "pubsub 33554432 8388608 60")
        await redis.aclose()
    await process.logged("Redis bridge up", 10, 2)  # it came back by itself
    await talker.send(msg_type="msg", target="group", msg="after")
    for client in [*members, talker]:
        assert (await client.recv_where(msg_type="msg"))["msg"] == "after"


async def test_a_group_message_sent_while_redis_is_frozen_reaches_its_sender_s_process(redis_server, start_process):
    process = await start_process()
    members = [await Client.joined(process.url("g_ice", f"c_m{n}")) for n in range(4)]
    talker = await Client.joined(process.url("g_ice", "c_talk"))
    redis_server.process.send_signal(signal.SIGSTOP)  # its sockets stay open: it just never answers
    try:
        await talker.send(msg_type="msg", target="group", msg="frozen")
        for client in [*members, talker]:  # once the bridge gives up on Redis (0.9 s), from here
            assert (await client.recv_where(msg_type="msg", timeout=5))["msg"] == "frozen"
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


async def answer_to_direct(sender: Client, to_id: str, receiver: Client, text: str) -> str:
    """``delivered`` if ``receiver`` got the direct message, else the code of the error its sender got."""
    await sender.send(msg_type="msg", target="direct", to_id=to_id, msg=text)
    await sender.send(msg_type="msg", target="echo", msg=f"after {text}")  # answered once the direct one is settled
    answer = await first_answer(sender, text)
    if answer == "echo":
        assert (await receiver.recv_where(msg=text))["from_id"] is not None
        return "delivered"
    return answer


async def first_answer(sender: Client, text: str) -> str:
    """The code of the error about ``text``, or ``echo`` if the echo sent after it came first."""
    while True:
        message = await sender.recv(timeout=10)
        if message.get("cmd") == "ERROR":
            return errors_of(message)[0]
        if message["msg"] == f"after {text}":
            return "echo"


async def test_after_redis_comes_back_empty_a_client_connected_all_along_is_never_offline(redis_server, start_process):
    lease = ("--lease-seconds", "6")  # processes announce themselves every 2 s
    second = await start_process(*lease)
    bob = await Client.joined(second.url("g_b", "c_bob"))
    await announced(redis_server, second)
    first = await start_process(*lease)
    alice = await Client.joined(first.url("g_a", "c_alice"))
    await announced(redis_server, first, second)  # the first has seen the second
    assert await answer_to_direct(alice, "c_bob", bob, "before") == "delivered"
    second.process.send_signal(signal.SIGSTOP)  # slow to come back: it has not put its leases back
    try:
        redis_server.kill()
        redis_server.start()  # empty: every lease and subscription is gone
        await first.logged("Redis bridge up", 10, 2)
        await announced(redis_server, first)  # the first has put its own leases back
        answers = [await answer_to_direct(alice, "c_bob", bob, f"while away {n}") for n in range(3)]
        assert answers == ["unavailable"] * 3
    finally:
        second.process.send_signal(signal.SIGCONT)
    answers = []
    async with asyncio.timeout(scaled(10)):
        while not answers or answers[-1] != "delivered":
            answers.append(await answer_to_direct(alice, "c_bob", bob, f"back {len(answers)}"))
    assert "recipient_offline" not in answers, answers


async def test_a_direct_message_racing_its_recipient_s_close_is_answered_at_once_and_truly(start_process):
    first, second = await start_process(), await start_process()
    alice = await Client.joined(first.url("g_a", "c_alice"))
    answers = []
    for n in range(60):
        bob = await Client.joined(second.url("g_b", f"c_bob{n}"))
        bob.close()
        started = time.monotonic()
        await alice.send(msg_type="msg", target="direct", to_id=f"c_bob{n}", msg="bye")
        await alice.send(msg_type="msg", target="echo", msg=f"after {n}")
        answer = await first_answer(alice, str(n))
        if answer != "echo":
            await alice.recv_where(msg=f"after {n}")
        answers.append((answer, time.monotonic() - started))
    assert {answer for answer, _ in answers} <= {"recipient_offline", "echo"}, answers  # never "unavailable"
    assert max(waited for _, waited in answers) < scaled(0.5), answers  # never the presence deadline (1 s)
