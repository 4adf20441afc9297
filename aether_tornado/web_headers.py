"""Headers every HTTP answer of the server carries, and each page's Content-Security-Policy.

Nothing the server answers may be sniffed as another type, framed by another site, or leak
the page's address; a page may run only its own inline code (by hash) and what it loads
from this origin, and connect only here.
"""

import base64
import functools
import hashlib
import re

import tornado.web

DEFAULT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}

_INLINE = re.compile(rb"<(script|style)\b[^>]*>(.*?)</\1>", re.DOTALL)


class SecureHandler(tornado.web.RequestHandler):
    def set_default_headers(self) -> None:
        for name, value in DEFAULT_HEADERS.items():
            self.set_header(name, value)


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
