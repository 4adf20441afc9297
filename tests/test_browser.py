"""A real browser (Debian's Chromium, driven by Playwright) uses the server from its pages."""

import asyncio
import re
import time
from pathlib import Path

import jwt
import pytest
import tornado.web
from playwright.async_api import expect

from aether_tornado.v3.schema import WSMessageV3, encode, utc_timestamp

from .conftest import CHROMIUM_MISSING, evaluate, ws_url
from .httpapi import http
from .processes import ServerProcess, free_port
from .timing import scaled
from .wsclient import Client

pytestmark = CHROMIUM_MISSING


@pytest.fixture
async def page(browser, server):
    page = await browser.new_page()
    page.set_default_timeout(scaled(10) * 1000)
    await page.goto(f"http://127.0.0.1:{server.port}/")
    yield page
    await page.close()


async def test_the_index_page_connects_sends_to_its_group_and_sees_presence(page):
    received = await evaluate(
        page,
        """() => new Promise((resolve, reject) => {
          const got = [];
          const ws = new WebSocket(`ws://${location.host}/v3/ws/group/g_demo/client/c_demo`);
          ws.onopen = () => ws.send(JSON.stringify({msg_type: "msg", target: "group", msg: "Hello team!"}));
          ws.onmessage = (event) => { got.push(JSON.parse(event.data)); if (got.length === 3) resolve(got); };
          ws.onclose = (event) => reject(new Error(`closed ${event.code}`));
        })""",
    )
    assert [message["payload"] and message["payload"]["event"] for message in received[:2]] == ["snapshot", "join"]
    assert received[0]["payload"]["clients"] == ["c_demo"]
    assert (received[2]["msg"], received[2]["from_id"], received[2]["group_id"]) == ("Hello team!", "c_demo", "g_demo")


async def test_the_readme_s_connect_then_send_reaches_the_group_every_time(page):
    """``client.connect(); client.sendGroup(...)``: the queued message is the first frame after the 101."""
    echoed = await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          const echoed = [];
          for (let n = 0; n < 30; n++) {
            const client = new AetherClient({ groupId: "g_readme", clientId: `c_${n}` });
            const got = new Promise((resolve, reject) => {
              client.on("msg", (message) => resolve(message.msg));
              setTimeout(() => reject(new Error(`no echo for connection ${n}`)), 5000);
            });
            client.connect();
            client.sendGroup(`hello ${n}`);
            echoed.push(await got);
            client.close();
          }
          return echoed;
        }""",
    )
    assert echoed == [f"hello {n}" for n in range(30)]


async def test_the_browser_client_diagnoses_a_refusal_without_the_token_in_a_url(browser, start_server):
    server = await start_server(jwt_secret="s" * 32)
    page = await browser.new_page()
    page.set_default_timeout(scaled(10) * 1000)
    requests = []
    page.on("request", lambda request: requests.append((request.url, request.headers.get("authorization"))))
    await page.goto(f"http://127.0.0.1:{server.port}/")
    refusal = await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          const client = new AetherClient({ groupId: "g_tok", clientId: "c_tok", token: "not.a.valid-token" });
          const refused = new Promise((resolve) => client.on("error", (error) => resolve(error.code)));
          client.connect();
          return await refused;
        }""",
    )
    assert refusal == "unauthorized"
    diagnoses = [(url, auth) for url, auth in requests if url.startswith("http://") and "/v3/ws/" in url]
    assert diagnoses == [(f"http://127.0.0.1:{server.port}/v3/ws/group/g_tok/client/c_tok", "Bearer not.a.valid-token")]
    await page.close()


async def test_the_browser_client_recovers_what_it_missed_and_marks_it(page, server):
    await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          const options = { groupId: "g_br", clientId: "c_br", backoffInitialMs: 50, backoffMaxMs: 200 };
          const client = new AetherClient(options);
          window.got = [];
          window.reports = [];
          const waiters = new Set();
          const settle = () => waiters.forEach((waiter) => waiter());
          client.on("msg", (message) => { got.push([message.msg, message.recovered === true]); settle(); });
          client.on("recovery", (report) => { reports.push(report.recovered); settle(); });
          window.until = (done) => new Promise((resolve, reject) => {
            const waiter = () => { if (done()) { waiters.delete(waiter); resolve(got); } };
            waiters.add(waiter);
            waiter();
            setTimeout(() => { waiters.delete(waiter); reject(new Error(JSON.stringify(got))); }, 5000);
          });
          const open = new Promise((resolve) => client.on("open", resolve));
          client.connect();
          await open;
        }""",
    )

    async def publish(text: str) -> None:
        await server.node.router.publish(WSMessageV3(msg_type="msg", target="group", group_id="g_br", msg=text))

    await publish("0")
    await evaluate(page, "() => until(() => got.length === 1)")
    (conn,) = server.node.hub.client("c_br")
    conn.socket.abort()  # the connection is lost without a close, as on a network change
    for text in ("1", "2", "3"):
        await publish(text)  # recorded at once, before the loop even sees the loss
    await evaluate(page, "() => until(() => reports.length === 1)")
    await publish("4")
    got = await evaluate(page, "() => until(() => got.length === 5)")
    assert got == [["0", False], ["1", True], ["2", True], ["3", True], ["4", False]]
    assert await evaluate(page, "() => reports") == [True]
    # A message recorded but never delivered (lost between processes): the next one shows the gap.
    lost = WSMessageV3(msg_type="msg", target="group", group_id="g_br", msg="5", sent_at=utc_timestamp())
    server.node.history.append("group:g_br", encode(lost), lambda recorded: None)
    await publish("6")
    got = await evaluate(page, "() => until(() => got.length === 7)")
    assert got[5:] == [["5", True], ["6", True]]
    assert await evaluate(page, "() => reports") == [True, True]


async def test_a_page_of_an_allowed_origin_imports_the_client_whose_events_come_once_each(browser, start_server):
    frontend = await start_server()  # a page of another origin, as a frontend's dev server would be
    server = await start_server(allowed_origins=(f"http://127.0.0.1:{frontend.port}",))
    page = await browser.new_page(bypass_csp=True)  # the frontend's own policy is its business
    page.set_default_timeout(scaled(10) * 1000)
    await page.goto(f"http://127.0.0.1:{frontend.port}/")
    seen = await evaluate(
        page,
        """async (port) => {
          const { AetherClient } = await import(`http://127.0.0.1:${port}/v3/client/aether-v3.js`);
          const client = new AetherClient({ groupId: "g_x", clientId: "c_x", url: `ws://127.0.0.1:${port}` });
          const seen = { states: [], closes: [], rosters: [] };
          client.on("state", (state, why) => seen.states.push([state, why]));
          client.on("close", (event) => seen.closes.push(event));
          client.on("roster", (clients) => seen.rosters.push(clients));
          const present = new Promise((resolve) => client.on("roster", (clients) => clients.length && resolve()));
          client.connect();
          await present;
          client.close();
          client.close();  // a second close changes nothing
          return seen;
        }""",
        server.port,
    )
    assert seen["states"] == [["connecting", {}], ["open", {}], ["closed", {"code": 1000, "reason": "client closed"}]]
    assert seen["closes"] == [{"code": 1000, "reason": "client closed"}]
    assert seen["rosters"] == [["c_x"], []]  # emptied on close
    await page.close()


async def test_a_client_that_cannot_connect_says_reconnecting_once_with_why_and_when(browser, server):
    page = await browser.new_page(bypass_csp=True)  # the page's policy would refuse another port itself
    page.set_default_timeout(scaled(10) * 1000)
    await page.goto(f"http://127.0.0.1:{server.port}/")
    states = await evaluate(
        page,
        """async (port) => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          const client = new AetherClient({
            groupId: "g_x", clientId: "c_x", url: `ws://127.0.0.1:${port}`, backoffInitialMs: 20, backoffMaxMs: 40,
          });
          const states = [];
          let closes = 0;
          client.on("state", (state, why) => states.push([state, why]));
          const retried = new Promise((resolve, reject) => {
            client.on("close", () => ++closes === 4 && resolve());
            setTimeout(() => reject(new Error(`${closes} attempts in 5 s`)), 5000);
          });
          client.connect();
          await retried;  // four attempts failed
          client.close();
          return states;
        }""",
        free_port(),  # nothing listens there
    )
    await page.close()
    assert [state for state, _ in states] == ["connecting", "reconnecting", "closed"]
    why = states[1][1]
    assert why["code"] == 1006 and why["reason"] == "" and 0 <= why["retryInMs"] <= 20


async def test_the_browser_client_renews_its_token_with_get_token_and_misses_nothing(browser, start_server):
    secret = "s" * 32
    server = await start_server(jwt_secret=secret)
    page = await browser.new_page()
    page.set_default_timeout(scaled(10) * 1000)
    issued = []

    def fresh_token(client_id: str) -> str:
        issued.append(client_id)
        return jwt.encode({"sub": client_id, "group": "g_renew", "exp": int(time.time()) + 2}, secret)

    await page.expose_function("freshToken", fresh_token)
    await page.goto(f"http://127.0.0.1:{server.port}/")
    await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          const getToken = async () => await window.freshToken("c_renew");
          const client = new AetherClient({ groupId: "g_renew", clientId: "c_renew", getToken });
          window.got = [];
          window.closes = [];
          client.on("msg", (message) => got.push(message.payload.n));
          window.allIn = new Promise((resolve) => client.on("msg", () => got.length >= 60 && resolve()));
          client.on("close", (event) => closes.push(event.code));
          const open = new Promise((resolve) => client.on("open", resolve));
          client.connect();
          await open;
        }""",
    )
    sender_token = jwt.encode({"sub": "c_send", "group": "g_renew", "exp": int(time.time()) + 60}, secret)
    sender = await Client.joined(ws_url(server, "g_renew", "c_send") + f"?token={sender_token}")
    for n in range(60):  # over 3 s: the page's first token expires on the way
        await sender.send(msg_type="msg", target="group", payload={"n": n})
        await asyncio.sleep(0.05)
    await evaluate(page, "() => allIn")
    assert await evaluate(page, "() => got") == list(range(60))
    assert 3000 in await evaluate(page, "() => closes")  # the server closed it at expiry
    assert len(issued) >= 2
    await page.close()


async def test_the_browser_client_retries_at_once_when_asked(page, server):
    """A backoff that would last for days: ``retryNow`` connects at once instead."""
    await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          const days = { backoffInitialMs: 1e9, backoffMaxMs: 1e9 };
          window.client = new AetherClient({ groupId: "g_now", clientId: "c_now", ...days });
          window.states = [];
          client.on("state", (state, why) => states.push([state, why.attempt ?? null]));
          await new Promise((resolve) => { client.on("open", resolve); client.connect(); });
        }""",
    )
    assert (await http(server, "POST", "/v3/clients/c_now/disconnect", {"code": 4001}))[0] == 202
    states = await evaluate(
        page,
        """async () => {
          while (client.state !== "reconnecting") await new Promise((resolve) => setTimeout(resolve, 10));
          const opened = new Promise((resolve) => client.on("open", resolve));
          client.retryNow();
          await opened;
          return states;
        }""",
    )
    assert states == [["connecting", None], ["open", None], ["reconnecting", 1], ["open", None]]


async def test_the_browser_client_stops_on_a_final_close_and_on_a_ban(page, server):
    await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          window.client = new AetherClient({ groupId: "g_ban", clientId: "c_ban", backoffInitialMs: 10 });
          window.ended = new Promise((resolve) => client.on("error", (error) => resolve(error.code)));
          window.stopped = new Promise((resolve) => {
            client.on("state", (state, why) => state === "closed" && resolve(why));
          });
          await new Promise((resolve) => { client.on("open", resolve); client.connect(); });
        }""",
    )
    order = {"ban_seconds": 60, "reason": "spam"}
    assert (await http(server, "POST", "/v3/clients/c_ban/disconnect", order))[0] == 202
    code, why, later = await evaluate(
        page,
        """async () => {
          const code = await ended;
          const why = await stopped;
          await new Promise((resolve) => setTimeout(resolve, 300));  // no reconnect in the meantime
          return [code, why, client.state];
        }""",
    )
    assert (code, later) == ("disconnected", "closed")
    assert why["final"] is True and why["code"] == 4403 and "4403 spam" in why["reason"]
    assert server.node.connection_count == 0
    refused = await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          const again = new AetherClient({ groupId: "g_ban", clientId: "c_ban" });
          const error = new Promise((resolve) => again.on("error", (e) => resolve(e.code)));
          again.connect();
          return [await error, again.state];
        }""",
    )
    assert refused == ["banned", "closed"]


async def test_the_browser_client_watches_a_group_without_joining_it(page, server):
    member = await Client.joined(ws_url(server, "g_watched", "c_member"))
    await member.recv_where(event="join", client_id="c_member")
    seen = await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          window.watcher = new AetherClient({ groupId: "g_watched", watch: true });
          window.said = new Promise((resolve) => watcher.on("msg", (message) => resolve(message.msg)));
          const roster = new Promise((resolve) => watcher.on("roster", resolve));
          watcher.connect();
          return [await roster, watcher.endpoint];
        }""",
    )
    assert seen == [["c_member"], f"ws://127.0.0.1:{server.port}/v3/ws/watch/group/g_watched"]
    await member.send(msg_type="msg", target="group", msg="watched")
    assert await evaluate(page, "() => said") == "watched"
    await member.recv_where(msg="watched")
    await member.nothing_within(0.2)  # no join of the watcher


async def test_the_readme_s_page_on_another_origin_connects_and_receives(browser):
    """The README's snippet for a frontend served elsewhere, run as written but for the ports."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("**From a page on another origin**") :]
    command = re.search(r"```sh\n(.*?)```", section, re.DOTALL)[1].strip()
    snippet = re.search(r"```html\n(.*?)```", section, re.DOTALL)[1]
    assert command == "aether-tornado --allowed-origins http://localhost:3000"
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    server = await ServerProcess.launch("--allowed-origins", origin)
    try:
        html = snippet.replace("127.0.0.1:8888", f"127.0.0.1:{server.port}")

        class Frontend(tornado.web.RequestHandler):
            def get(self) -> None:
                self.finish(f"<!doctype html><html><head><title>app</title></head><body>{html}</body></html>")

        frontend = tornado.web.Application([(r"/", Frontend)]).listen(page_port, "127.0.0.1")
        try:
            page = await browser.new_page()
            page.set_default_timeout(scaled(10) * 1000)
            await page.goto(f"{origin}/")
            bob = await Client.joined(server.url("g_demo", "c_bob"))
            await bob.recv_where(event="join", client_id="c_bob")
            await expect(page).to_have_title("2 present")
            await bob.send(msg_type="msg", target="group", msg="hello from elsewhere")
            await expect(page.locator("body")).to_contain_text("c_bob: hello from elsewhere")
            await page.close()
        finally:
            frontend.stop()
    finally:
        await server.stopped()
