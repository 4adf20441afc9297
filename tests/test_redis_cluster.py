"""Processes on a Redis Cluster: what the shared tests do not cover."""

from .processes import ServerProcess
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
    first, second = (ServerProcess(*args, ready="Redis bridge up") for _ in range(2))
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
        first.kill()
        second.kill()
