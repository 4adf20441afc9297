"""The server's HTTP routes as a test calls them: one helper for every route, JSON in and out."""

from typing import Any, Protocol

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from .timing import scaled


class Listening(Protocol):
    port: int


async def fetch_with(target: Listening, path: str, **headers: str) -> HTTPResponse:
    """GET ``path`` with these headers; the whole response."""
    url = f"http://127.0.0.1:{target.port}{path}"
    return await AsyncHTTPClient().fetch(url, headers=headers, request_timeout=scaled(5))


async def http(target: Listening, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    """(status, the JSON answer, or its text if it is not JSON); a body that is not bytes is sent as JSON."""
    payload = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    if payload is not None:
        headers = {"Content-Type": "application/json", **headers}
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{target.port}{path}",
        method=method,
        body=payload,
        headers=headers,
        raise_error=False,
        request_timeout=scaled(5),
    )
    text = response.body.decode()
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    return response.code, orjson.loads(text) if is_json else text


async def get(target: Listening, path: str) -> Any:
    """The JSON answer of a GET that must succeed."""
    status, body = await http(target, "GET", path)
    assert status == 200, (path, status, body)
    return body


async def health(target: Listening) -> Any:
    return await get(target, "/healthz")


async def publish(target: Listening, message: dict[str, Any]) -> tuple[int, Any]:
    return await http(target, "POST", "/v3/publish", message)
