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
import re

import orjson
import tornado.web

from ..config import host_name
from ..v3.errors import MISDIRECTED

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
        hosts: frozenset[str] = self.application.settings["answered_hosts"]
        host = host_name(self.request.headers.get("Host", ""))
        if host in hosts or "*" in hosts:
            return
        self.set_status(421)
        self.set_header("Content-Type", "application/json")
        msg = f"This server does not answer for host {host[:100]!r}; see allowed_hosts."
        self.finish(orjson.dumps({"code": MISDIRECTED, "field": None, "msg": msg, "errors": []}))


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
