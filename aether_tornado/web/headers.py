"""What every HTTP answer of the server shares: the host check, its headers, and each page's
Content-Security-Policy.

A request for a host the server does not answer for is refused before anything else: a page on
another site whose name resolves to this server (DNS rebinding) reaches nothing. Nothing the
server answers may be sniffed as another type, framed by another site, or leak the page's
address; a page may run only its own inline code (by hash) and what it loads from this origin,
and connect only here.
"""

import base64
import functools
import hashlib
import logging
import re
from typing import Any

import orjson
import tornado.web

from ..config import host_name
from ..v3.errors import MISDIRECTED, NOT_FOUND

log = logging.getLogger(__name__)

DEFAULT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}

_INLINE = re.compile(rb"<(script|style)\b[^>]*>(.*?)</\1>", re.DOTALL)


class SecureHandler(tornado.web.RequestHandler):
    """The base of every handler: a subclass's ``prepare`` calls this one first and stops if it
    finished the request."""

    def set_default_headers(self) -> None:
        for name, value in DEFAULT_HEADERS.items():
            self.set_header(name, value)

    def prepare(self) -> None:
        """Answer 421 to a request for a host this server does not answer for (``allowed_hosts``)."""
        refusal = misdirected(self.request.headers.get("Host", ""), self.application.settings["answered_hosts"])
        if refusal is not None:
            self.set_status(421)
            self.set_header("Content-Type", "application/json")
            self.finish(orjson.dumps(refusal))


def misdirected(host_header: str, hosts: frozenset[str]) -> dict[str, Any] | None:
    """The body of the 421 for a request to a host the server does not answer for; None if it answers."""
    host = host_name(host_header)
    if host in hosts or "*" in hosts:
        return None
    msg = f"This server does not answer for host {host[:100]!r}; see allowed_hosts."
    return {"code": MISDIRECTED, "field": None, "msg": msg, "errors": []}


def not_found(path: str) -> dict[str, Any]:
    """The body of the 404 for a path that no route takes."""
    return {"code": NOT_FOUND, "field": None, "msg": f"No route for {path}."}


def log_answer(status: int, method: str, path: str, remote_ip: str, milliseconds: float) -> None:
    """One line per HTTP answer: successes and upgrades at debug, refusals at info, failures at warning.

    The path, never the query: it may hold a client's token.
    """
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
    log.log(level, "%d %s %s (%s) %.1f ms", status, method, path, remote_ip, milliseconds)


@functools.cache
def page_policy(html: bytes) -> str:
    """The CSP of one page: its inline scripts and styles allowed by their hashes, nothing else inline."""
    sources: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for kind, body in _INLINE.findall(html):
        sources[kind].append(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'")
    return (
        f"default-src 'none'; script-src 'self' {' '.join(sources[b'script'])}; "
        f"style-src 'self' {' '.join(sources[b'style'])}; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
