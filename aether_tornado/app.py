"""Wiring: builds the node with its backends and the Tornado application, and serves."""

import asyncio
import contextlib
import logging
import resource
import signal
import uuid
from urllib.parse import urlsplit

import attrs
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from .bridge.memory import MemoryBridge
from .bridge.redis import RedisBridge
from .config import Settings, answered_hosts
from .core.hub import Hub
from .core.node import Node
from .core.session import socket_limits
from .history.memory import MemoryHistory
from .history.redis import RedisHistory
from .presence.memory import MemoryPresence
from .presence.redis import RedisPresence
from .redis.link import Link
from .redis.resp import Address
from .sd_notify import notify
from .web.accept import Acceptor
from .web.api import (
    Asset,
    ClientBan,
    ClientDisconnect,
    Connections,
    GroupHistory,
    GroupPresence,
    Groups,
    Health,
    Metrics,
    Processes,
    Publish,
)
from .web.handlers import NotFound
from .web.handshake import Handshakes, KeptAlive
from .web.headers import log_answer
from .ws.websocket import Flusher

log = logging.getLogger(__name__)

PRESENCE_CONNECTIONS = 32
# Seconds an HTTP connection may stay silent before its request (or between two of them).
HTTP_IDLE_TIMEOUT = 10.0
# Open files a process needs besides its WebSockets: listening sockets, Redis, logs, and a
# descriptor or two for each handshake under way.
FILES_RESERVED = PRESENCE_CONNECTIONS + 100
# What the server adds to a client's message before recording it (from_id, group_id, sent_at...).
ENTRY_OVERHEAD = 1024


def build_node(settings: Settings) -> Node:
    """The one place that picks the backends: Redis with a URL, memory without."""
    node_id = uuid.uuid4().hex[:12]
    # A stream's counter outlives the last connection on it by the window, and by a refresh.
    keep_seconds = settings.history_seconds + settings.lease_seconds
    if settings.redis_url is None:
        hub, history = Hub(), None
        if settings.history_size:
            history = MemoryHistory(
                settings.history_size,
                settings.history_seconds,
                keep_seconds,
                present=lambda client_id: bool(hub.client(client_id)),
            )
        return Node(settings, node_id, hub, MemoryBridge(), MemoryPresence(settings.lease_seconds), history)
    link = Link()  # one outage for all: what one backend loses, the others stop using
    bridge = RedisBridge(
        Address.from_url(settings.redis_url),
        settings.redis_prefix,
        node_id,
        link,
        scripts=RedisHistory.scripts if settings.history_size else (),
        cluster=settings.redis_cluster,
    )
    redis = _presence_client(settings.redis_url, settings.redis_cluster)
    presence = RedisPresence(redis, settings.redis_prefix, settings.lease_seconds, link, max_calls=PRESENCE_CONNECTIONS)
    redis_history = None
    if settings.history_size:
        redis_history = RedisHistory(
            bridge,
            settings.redis_prefix,
            settings.history_size,
            settings.history_seconds,
            keep_seconds,
            entry_bytes=settings.max_message_bytes + ENTRY_OVERHEAD,
        )
    return Node(settings, node_id, Hub(), bridge, presence, redis_history)


def _presence_client(url: str, cluster: bool) -> Redis | RedisCluster:
    """redis-py for presence, which is not on the hot path: it follows a cluster's redirects itself.

    Calls wait for one of a few connections rather than open one each: a burst of handshakes
    would otherwise open hundreds, each a file descriptor a client could have had. A heartbeat
    or presence query holds its sender's next messages: Redis gets a second to answer, as the
    bridge does, before presence answers from this process's own leases. No retry: the
    bridge's supervisor reconnects, then resyncs presence.
    """
    timeouts = {"socket_connect_timeout": 1, "socket_timeout": 1, "retry": Retry(NoBackoff(), 0)}
    if cluster:
        return RedisCluster.from_url(url, max_connections=PRESENCE_CONNECTIONS, **timeouts)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=PRESENCE_CONNECTIONS, timeout=1, health_check_interval=5, **timeouts
    )
    return Redis.from_pool(pool)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    request = handler.request
    log_answer(
        handler.get_status(), request.method or "", request.path, request.remote_ip or "", 1000 * request.request_time()
    )


def make_app(node: Node, handshakes: Handshakes) -> tornado.web.Application:
    settings = node.settings
    console = [(r"/v3/console", Asset, {"name": "console"})] if settings.console else []
    return tornado.web.Application(
        [
            # Only a handshake on a connection kept alive by a proxy: the others never reach Tornado.
            (r"/v3/ws/.*", KeptAlive, {"handshakes": handshakes}),
            (r"/", Asset, {"name": "index"}),
            (r"/favicon\.ico", Asset, {"name": "favicon"}),
            (r"/v3/client/(aether-v3\.js|aether-v3\.d\.ts)", Asset, {"allowed_origins": settings.allowed_origins}),
            *console,
            (r"/v3/operator", Asset, {"name": "operator"}),
            (r"/healthz", Health, {"node": node}),
            (r"/metrics", Metrics, {"node": node}),
            (r"/v3/publish", Publish, {"node": node}),
            (r"/v3/processes", Processes, {"node": node}),
            (r"/v3/connections", Connections, {"node": node}),
            (r"/v3/groups", Groups, {"node": node}),
            (r"/v3/groups/([^/]+)/presence", GroupPresence, {"node": node}),
            (r"/v3/clients/([^/]+)/disconnect", ClientDisconnect, {"node": node}),
            (r"/v3/clients/([^/]+)/ban", ClientBan, {"node": node}),
            (r"/v3/groups/([^/]+)/history", GroupHistory, {"node": node}),
        ],
        default_handler_class=NotFound,
        log_function=_log_request,
        answered_hosts=answered_hosts(settings),
    )


class Server:
    """A started node listening on its port; ``stop`` is the graceful shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node = build_node(settings)
        # Handshakes do not go through Tornado: they are most of the requests (a deploy's reconnects).
        handshakes = Handshakes(
            self.node, Flusher(), socket_limits(settings), answered_hosts(settings), HTTP_IDLE_TIMEOUT
        )
        # A published message is one message: its body has the WebSocket frame limit. A
        # connection that sends no request soon is closed: each one holds a descriptor.
        self.http = tornado.httpserver.HTTPServer(
            make_app(self.node, handshakes),
            xheaders=True,
            max_body_size=settings.max_message_bytes,
            idle_connection_timeout=HTTP_IDLE_TIMEOUT,
            body_timeout=HTTP_IDLE_TIMEOUT,
        )
        self.acceptor = Acceptor(self.http, handshakes, settings.max_http_connections, HTTP_IDLE_TIMEOUT)
        self.port = settings.port

    async def start(self) -> None:
        # Tornado's IOLoop for this loop, made now: the first request Tornado serves may come
        # when the process is out of descriptors, too late to import what it needs.
        tornado.ioloop.IOLoop.current()
        await self.node.start()
        sockets = tornado.netutil.bind_sockets(self.settings.port, self.settings.host)
        self.port = sockets[0].getsockname()[1]
        self.acceptor.listen(sockets)

    async def stop(self) -> None:
        self.acceptor.close()
        await self.node.stop()
        await self.http.close_all_connections()


def _redacted(url: str) -> str:
    """The Redis URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def fit_open_files(settings: Settings) -> Settings:
    """Lift the soft limit on open files to the hard one, and lower max_connections to what fits.

    A process out of descriptors cannot even accept a connection to refuse it; within the
    limit, the extra handshakes get 503 over_capacity.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # a hard limit of "unlimited" cannot be the soft one
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    room = soft - FILES_RESERVED
    if soft == resource.RLIM_INFINITY or settings.max_connections <= room:
        return settings
    log.warning(
        "max_connections lowered from %d to %d: the process may open %d files; "
        "raise the limit (LimitNOFILE= in systemd, ulimit -n) to hold more",
        settings.max_connections,
        max(room, 1),
        soft,
    )
    return attrs.evolve(settings, max_connections=max(room, 1))


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    settings = fit_open_files(settings)
    server = Server(settings)
    await server.start()
    log.info(
        "aether-tornado serving ws://%s:%d/v3/ws/group/{group_id}/client/{client_id} (%s, node %s)",
        settings.host,
        server.port,
        "in memory" if settings.redis_url is None else f"bridged through {_redacted(settings.redis_url)}",
        server.node.node_id,
    )
    notify(f"READY=1\nSTATUS=serving on port {server.port}")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    notify("STOPPING=1")
    log.info("shutting down: closing %d connections", server.node.connection_count)
    await server.stop()
    log.info("stopped")
