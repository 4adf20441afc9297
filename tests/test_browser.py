"""A real browser (Debian's Chromium, driven over the DevTools protocol) uses the server."""

import asyncio
import itertools
import json
import os
import shutil
import tempfile
import urllib.request

import pytest
from tornado.websocket import websocket_connect

CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]

# Skipped on a developer's machine without Chromium; CI (CI=true) installs it and never skips.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true", reason="chromium is not installed (make test installs it)"
)


class Page:
    """One tab, driven through the DevTools protocol."""

    def __init__(self, devtools) -> None:
        self.devtools = devtools
        self.ids = itertools.count(1)

    async def call(self, method: str, timeout: float = 10, **params):
        call_id = next(self.ids)
        await self.devtools.write_message(json.dumps({"id": call_id, "method": method, "params": params}))
        return await self.event(lambda reply: reply.get("id") == call_id, timeout)

    async def event(self, matches, timeout: float = 10):
        async def read():
            while not matches(reply := json.loads(await self.devtools.read_message())):
                pass
            assert "error" not in reply, reply
            return reply

        return await asyncio.wait_for(read(), timeout)

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await self.event(lambda reply: reply.get("method") == "Page.loadEventFired")

    async def evaluate(self, expression: str):
        reply = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in reply["result"], reply["result"]
        return reply["result"]["result"]["value"]


@pytest.fixture
async def browser_page(server):
    profile = tempfile.mkdtemp(prefix="aether-chromium-")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        while b"DevTools listening on" not in (line := await asyncio.wait_for(process.stderr.readline(), 30)):
            assert line, "chromium exited before listening"
        debug_port = line.decode().rsplit(":", 1)[1].split("/")[0]
        listing = await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{debug_port}/json", timeout=10)
        target = next(item for item in json.load(listing) if item["type"] == "page")
        devtools = await asyncio.wait_for(websocket_connect(target["webSocketDebuggerUrl"]), 10)
        page = Page(devtools)
        await page.open(f"http://127.0.0.1:{server.port}/")
        yield page
        devtools.close()
    finally:
        process.kill()
        await process.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def test_the_index_page_connects_sends_to_its_group_and_sees_presence(browser_page, server):
    received = await browser_page.evaluate(
        """new Promise((resolve, reject) => {
          const got = [];
          const ws = new WebSocket(`ws://${location.host}/v3/ws/group/g_demo/client/c_demo`);
          ws.onopen = () => ws.send(JSON.stringify({msg_type: "msg", target: "group", msg: "Hello team!"}));
          ws.onmessage = (event) => { got.push(JSON.parse(event.data)); if (got.length === 3) resolve(got); };
          ws.onclose = (event) => reject(new Error(`closed ${event.code}`));
        })"""
    )
    assert [message["payload"] and message["payload"]["event"] for message in received[:2]] == ["snapshot", "join"]
    assert received[0]["payload"]["clients"] == ["c_demo"]
    assert (received[2]["msg"], received[2]["from_id"], received[2]["group_id"]) == ("Hello team!", "c_demo", "g_demo")
