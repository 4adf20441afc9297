"""Wiring: builds the node with its backends and the Tornado application, and serves."""

import asyncio
import logging
import signal
import uuid
from urllib.parse import urlsplit

import tornado.httpserver
import tornado.netutil
import tornado.web
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .api import Asset, GroupPresence, Health, Metrics, Publish
from .bridge.memory import MemoryBridge
from .bridge.redis import RedisBridge
from .bridge.resp import Address
from .config import Settings
from .connection import Flusher
from .handlers import ClientSocket, NotFound
from .hub import Hub
from .node import Node
from .presence.memory import MemoryPresence
from .presence.redis import RedisPresence
from .sd_notify import notify

log = logging.getLogger(__name__)


def build_node(settings: Settings) -> Node:
    """The one place that picks the backends: Redis with a URL, memory without."""
    node_id = uuid.uuid4().hex[:12]
    if settings.redis_url is None:
        return Node(settings, node_id, Hub(), MemoryBridge(), MemoryPresence(settings.lease_seconds))
    redis = Redis.from_url(
        settings.redis_url,
        retry=Retry(NoBackoff(), 0),  # the bridge's supervisor reconnects, then resyncs presence
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=5,
    )
    bridge = RedisBridge(Address.from_url(settings.redis_url), settings.redis_prefix, node_id)
    presence = RedisPresence(redis, settings.redis_prefix, settings.lease_seconds, on_lost=bridge.mark_lost)
    return Node(settings, node_id, Hub(), bridge, presence)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Upgrades and successes at debug (one line per connection), refusals at info, failures at warning."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
    request = handler.request
    log.log(
        level,
        "%d %s %s (%s) %.1f ms",
        status,
        request.method,
        request.uri,
        request.remote_ip,
        1000 * request.request_time(),
    )


def make_app(node: Node) -> tornado.web.Application:
    settings = node.settings
    console = [(r"/v3/console", Asset, {"name": "console"})] if settings.console else []
    return tornado.web.Application(
        [
            (r"/", Asset, {"name": "index"}),
            (r"/v3/client/(aether-v3\.js|aether-v3\.d\.ts)", Asset),
            *console,
            (r"/healthz", Health, {"node": node}),
            (r"/metrics", Metrics, {"node": node}),
            (r"/v3/publish", Publish, {"node": node}),
            (r"/v3/groups/([^/]+)/presence", GroupPresence, {"node": node}),
            (r"/v3/ws/group/([^/]+)/client/([^/]+)", ClientSocket, {"node": node, "flusher": Flusher()}),
        ],
        default_handler_class=NotFound,
        log_function=_log_request,
    )


class Server:
    """A started node listening on its port; ``stop`` is the graceful shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node = build_node(settings)
        # A published message is one message: its body has the WebSocket frame limit.
        self.http = tornado.httpserver.HTTPServer(
            make_app(self.node), xheaders=True, max_body_size=settings.max_message_bytes
        )
        self.port = settings.port

    async def start(self) -> None:
        await self.node.start()
        sockets = tornado.netutil.bind_sockets(self.settings.port, self.settings.host)
        self.port = sockets[0].getsockname()[1]
        self.http.add_sockets(sockets)

    async def stop(self) -> None:
        self.http.stop()
        await self.node.stop()
        await self.http.close_all_connections()


def _redacted(url: str) -> str:
    """The Redis URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
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
