"""Processes on a Redis Cluster: what the shared tests do not cover."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from .processes import RedisClusterServers, ServerProcess
from .timing import scaled
from .wsclient import Client


async def test_a_killed_process_s_clients_leave_once_on_a_cluster(redis_cluster):
    args = (
        "--redis-url",
        redis_cluster.url,
        "--redis-cluster",
        "true",
        "--redis-prefix",
        "kill9",
        "--lease-seconds",
        "1",
    )
    first, second = [await ServerProcess.launch(*args, ready="Redis bridge up") for _ in range(2)]
    try:
        watcher = await Client.joined(first.url("g_k9", "c_watch"))
        victims = [await Client.joined(second.url(group, "c_victim")) for group in ("g_k9", "g_other")]
        await watcher.recv_where(event="join", client_id="c_victim")
        second.kill()
        for victim in victims:
            assert await victim.closed() == (None, None)
        leave = await watcher.recv_where(event="leave", client_id="c_victim", timeout=10)
        assert leave["payload"]["reason"] == "timeout"
        await watcher.nothing_within(1.5)  # once, not once per bucket or per process
        await watcher.send(msg_type="msg", target="direct", to_id="c_victim", msg="anyone?")
        error = await watcher.recv_where(cmd="ERROR")
        assert error["payload"]["code"] == "recipient_offline"  # gone from every group, on every shard
    finally:
        await first.stopped()
        await second.stopped()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A cluster of the test's own, since the test kills one of its masters."""
    cluster = RedisClusterServers(tmp_path)
    yield cluster
    cluster.stop()


async def test_delivery_and_presence_resume_after_a_master_fails_over(own_cluster):
    args = ("--redis-url", own_cluster.url, "--redis-cluster", "true", "--lease-seconds", "3")
    first, second = [await ServerProcess.launch(*args, ready="Redis bridge up") for _ in range(2)]
    try:
        receiver = await Client.joined(first.url("g_fail", "c_receiver") + "?recover=")  # sees positions
        sender = await Client.joined(second.url("g_fail", "c_sender"))
        await receiver.recv_where(event="join", client_id="c_sender")
        await sender.send(msg_type="msg", target="group", msg="before")
        epoch_before = (await receiver.recv_where(msg="before"))["position"].split(":")[0]
        own_cluster.kill(own_cluster.master_of("aether:{group:g_fail}"))  # the group's channel and history

        async def send_until_both_are_back() -> int:
            count = 0
            while not all(len(process.lines("Redis bridge up")) >= 2 for process in (first, second)):
                await sender.send(msg_type="msg", target="group", msg=f"during {count}")
                count += 1
                await asyncio.sleep(0.05)  # a steady sender, through the whole failover
            return count

        sent_during = await asyncio.wait_for(send_until_both_are_back(), scaled(30))
        for process in (first, second):  # each has put its clients back (a newcomer sees them)
            await process.logged("presence back in Redis", 10)
        for number in range(20):
            await sender.send(msg_type="msg", target="group", msg=f"after {number}")
        received = []
        while len(received) < 20 or received[-1] != "after 19":
            message = await receiver.recv(timeout=10)
            if message["msg_type"] == "msg":
                received.append(message["msg"])
                last_position = message["position"]
        during = [text for text in received if text.startswith("during")]
        assert len(during) == len(set(during)) <= sent_during  # some may be lost in the failover, none twice
        assert received[len(during) :] == [f"after {number}" for number in range(20)]
        # The replica may lack the last messages: counting on from its copy would reuse their offsets.
        assert last_position.split(":")[0] != epoch_before

        newcomer = await Client.joined(second.url("g_fail", "c_newcomer"))
        assert newcomer.snapshot["payload"]["clients"] == ["c_newcomer", "c_receiver", "c_sender"]
        await receiver.recv_where(event="join", client_id="c_newcomer", timeout=10)
        sender.close()
        leave = await receiver.recv_where(event="leave", client_id="c_sender", timeout=10)
        assert leave["payload"]["reason"] == "closed"
        await receiver.nothing_within(1.0)  # once
    finally:
        await first.stopped()
        await second.stopped()


async def test_order_across_shards_holds_without_history(start_cluster_process):
    """Without history nothing is recorded: the sender waits for Redis to take each message instead."""
    first, second = (
        await start_cluster_process("--history-size", "0"),
        await start_cluster_process("--history-size", "0"),
    )
    alice = await Client.joined(first.url("g_order", "c_alice"))  # g_order, c_bob, broadcast: three shards
    bob = await Client.joined(second.url("g_order", "c_bob"))
    await alice.recv_where(event="join", client_id="c_bob")
    await bob.recv_where(event="join", client_id="c_bob")
    targets = ["broadcast" if n % 30 == 2 else ["group", "direct"][n % 2] for n in range(300)]
    for n, target in enumerate(targets):
        await alice.send(
            msg_type="msg", target=target, payload={"n": n}, **({"to_id": "c_bob"} if target == "direct" else {})
        )
    received = [(await bob.recv())["payload"]["n"] for _ in range(300)]
    assert received == list(range(300))
