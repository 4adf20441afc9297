"""The console page and the browser client in a real Chromium, driven by Playwright."""

import asyncio
import re
import subprocess
from pathlib import Path

from playwright.async_api import expect

from aether_tornado.v3.schema import WSMessageV3

from .conftest import CHROMIUM_MISSING, evaluate, watched_page
from .processes import ServerProcess
from .timing import scaled
from .wsclient import Client

OUTPUT = Path(__file__).resolve().parent.parent / "test-output"

pytestmark = CHROMIUM_MISSING


async def open_console(browser, port: int, client_id: str):
    page = await watched_page(browser)
    await page.goto(f"http://127.0.0.1:{port}/v3/console")
    await page.fill("#group", "g_browser")
    await page.fill("#client", client_id)
    await page.click("#connect-button")
    await page.wait_for_selector("#state:text('open')")
    assert page.csp_violations == []  # the page's own inline code runs under its strict policy
    return page


# Waits use locators, never wait_for_function: Playwright evaluates a function's text with
# eval() while polling, which the pages' Content-Security-Policy forbids.


async def roster(page) -> list[str]:
    return await page.locator("#roster li").all_inner_texts()


async def send(page, target: str, msg: str, to_id: str = "") -> None:
    await page.select_option("#target", target)
    if target == "direct":
        await page.fill("#to_id", to_id)
    await page.fill("#msg", msg)
    await page.click("#send-button")


async def test_two_consoles_see_each_other_talk_and_reconnect_by_themselves(browser):
    server = await ServerProcess.launch()
    try:
        alice = await open_console(browser, server.port, "c_alice")
        bob = await open_console(browser, server.port, "c_bob")
        for page in (alice, bob):
            await expect(page.locator("#roster li")).to_have_count(2, timeout=scaled(10) * 1000)
            assert await roster(page) == ["c_alice", "c_bob"]

        await send(alice, "group", "hello group")
        await bob.wait_for_selector("#log div:has-text('hello group')")
        await alice.wait_for_selector("#log .rtt:has-text('hello group')")  # its own copy, timed
        await send(bob, "direct", "just for alice", to_id="c_alice")
        await alice.wait_for_selector("#log div:has-text('just for alice')")
        await send(alice, "direct", "nobody", to_id="c_nobody")
        await alice.wait_for_selector("#log .error:has-text('recipient_offline')")
        OUTPUT.mkdir(exist_ok=True)
        await alice.screenshot(path=str(OUTPUT / "console.png"), full_page=True)

        server.kill()
        await alice.wait_for_selector("#state:text('reconnecting')")
        # Why, and when the next try comes: a killed server closes without a close frame (1006).
        await alice.wait_for_selector("#log .error:has-text('reconnecting: close code 1006, attempt 1, next try in')")
        # The banner says so at every moment, with a countdown and a way to try at once.
        banner = alice.locator("#banner")
        await expect(banner).to_have_class(re.compile("problem"))
        countdown = re.compile(r"reconnecting, attempt \d+, (next try in \d+\.\d s|trying now)")
        await expect(banner).to_contain_text(countdown)
        await expect(alice.locator("#retry-now")).to_be_visible()
        await bob.wait_for_selector("#state:text('reconnecting')")
        await send(bob, "group", "typed while away")
        await bob.wait_for_selector("#log div:has-text('queued until connected')")  # not "sent"
        server = await ServerProcess.launch(port=server.port)
        for page in (alice, bob):
            await page.wait_for_selector("#state:text('open')", timeout=scaled(30) * 1000)
            await expect(page.locator("#roster li")).to_have_count(2, timeout=scaled(10) * 1000)
        # Sent once bob is back (alice may be back later, and this server kept no history).
        await bob.wait_for_selector("#log div.rtt:has-text('you → g_browser'):has-text('typed while away')")
        await send(bob, "group", "after the restart")
        await alice.wait_for_selector("#log div:has-text('after the restart')")
    finally:
        await server.stopped()


async def test_the_client_module_stops_on_a_refusal_it_cannot_fix(browser):
    server = await ServerProcess.launch("--jwt-secret", "s" * 32)
    try:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{server.port}/")
        outcome = await evaluate(
            page,
            """async () => {
              const { AetherClient } = await import("/v3/client/aether-v3.js");
              const client = new AetherClient({ groupId: "g_x", clientId: "c_x", token: "bad" });
              const error = new Promise((resolve) => client.on("error", (e) => resolve(e.code)));
              client.connect();
              return [await error, await new Promise((r) => setTimeout(() => r(client.state), 200))];
            }""",
        )
        assert outcome == ["unauthorized", "closed"]
    finally:
        await server.stopped()


async def test_the_types_and_the_module_are_served(server):
    from tornado.httpclient import AsyncHTTPClient

    for name, kind in (("aether-v3.js", "text/javascript"), ("aether-v3.d.ts", "text/plain")):
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{server.port}/v3/client/{name}")
        assert response.headers["Content-Type"].startswith(kind) and b"AetherClient" in response.body


async def test_a_peers_error_command_is_a_command_and_close_stays_closed(browser, server):
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{server.port}/")
    outcome = await evaluate(
        page,
        """async () => {
          const { AetherClient } = await import("/v3/client/aether-v3.js");
          const a = new AetherClient({ groupId: "g_js", clientId: "c_a" });
          const b = new AetherClient({ groupId: "g_js", clientId: "c_b" });
          let errors = 0;
          b.on("error", () => errors++);
          const command = new Promise((resolve) => b.on("cmd", (message) => resolve(message.cmd)));
          await Promise.all([a, b].map((c) => new Promise((resolve) => { c.on("open", resolve); c.connect(); })));
          a.command("ERROR", { target: "group" });
          const got = await command;
          a.close();
          b.close();
          const gone = new AetherClient({ groupId: "g_js", clientId: "c_gone", url: "ws://127.0.0.1:9" });
          gone.connect();
          gone.close();
          await new Promise((resolve) => setTimeout(resolve, 500));
          return [got, errors, a.state, gone.state, gone.socket];
        }""",
    )
    assert outcome == ["ERROR", 0, "closed", "closed", None]


async def test_the_console_shows_what_it_recovered_after_a_lost_connection(browser, server):
    page = await open_console(browser, server.port, "c_rec")
    await page.wait_for_selector("#log div:has-text('snapshot')")
    (conn,) = server.node.hub.client("c_rec")
    conn.socket.abort()  # the connection is lost without a close
    await server.node.router.publish(
        WSMessageV3(msg_type="msg", target="group", group_id="g_browser", msg="while away")
    )
    await page.wait_for_selector("#log .recovered:has-text('while away')")
    await page.wait_for_selector("#log .recovered:has-text('marked recovered')")
    await server.node.router.publish(
        WSMessageV3(msg_type="msg", target="group", group_id="g_browser", msg="live again")
    )
    await page.wait_for_selector("#log div:has-text('live again')")
    assert await page.locator("#log .recovered:has-text('live again')").count() == 0
    assert page.csp_violations == []


async def test_the_console_form_guides_heartbeats_and_does_not_reconnect_an_open_connection(browser, server):
    page = await open_console(browser, server.port, "c_form")
    await expect(page.locator("#connect-button")).to_be_disabled()  # Connect again would drop this one
    # What does not apply to a message is closed and cleared: nothing typed for another kind leaves with it.
    await expect(page.locator("#to_id")).to_be_disabled()  # target group
    await expect(page.locator("#cmd")).to_be_disabled()  # msg_type msg
    await page.fill("#payload", '{"left": "over"}')
    await page.select_option("#msg_type", "heartbeat")
    await expect(page.locator("#target")).to_have_value("echo")
    for field in ("#target", "#msg", "#payload", "#to_id", "#cmd"):
        await expect(page.locator(field)).to_be_disabled()
    for field in ("#msg", "#payload"):
        await expect(page.locator(field)).to_have_value("")
    await page.click("#send-button")
    sent = page.locator("#log div.sent").first
    await expect(sent).to_contain_text("sent #1 heartbeat → you")
    assert await sent.locator("pre").text_content() == '{\n  "msg_type": "heartbeat",\n  "target": "echo"\n}'
    await page.wait_for_selector("#log div.heartbeat:has-text('answered')")
    await page.select_option("#msg_type", "cmd")
    await expect(page.locator("#target")).to_be_enabled()
    await expect(page.locator("#cmd")).to_be_enabled()
    await page.select_option("#target", "direct")
    await expect(page.locator("#to_id")).to_be_enabled()
    await page.click("#disconnect-button")
    await page.wait_for_selector("#state:text('closed')")
    await page.wait_for_selector("#log div:has-text('closed: close code 1000, reason \"client closed\"')")
    await expect(page.locator("#roster li")).to_have_count(0)
    await expect(page.locator("#connect-button")).to_be_enabled()
    assert await page.locator("#log .error").count() == 0
    await page.close()


async def test_the_console_fits_a_phone_follows_dark_mode_and_names_its_parts(browser, server):
    page = await browser.new_page(viewport={"width": 390, "height": 844}, color_scheme="dark")
    page.set_default_timeout(scaled(10) * 1000)
    await page.goto(f"http://127.0.0.1:{server.port}/v3/console")
    layout = await evaluate(
        page,
        """() => ({
          overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
          logFont: parseFloat(getComputedStyle(document.getElementById("log")).fontSize),
          asideWidth: document.querySelector("aside").getBoundingClientRect().width,
          canvas: getComputedStyle(document.documentElement).colorScheme,
        })""",
    )
    assert layout["overflow"] <= 0 and layout["logFont"] >= 12  # no sideways scrolling, readable text
    assert layout["asideWidth"] >= 380  # the connection stacks above the messages, full width
    assert layout["canvas"] == "light dark"  # the browser's dark canvas and controls
    await expect(page.get_by_role("heading", level=1)).to_have_text("aether-tornado console")
    await expect(page.get_by_role("main")).to_have_count(1)
    await expect(page.get_by_role("log")).to_have_attribute("aria-live", "polite")
    await expect(page.get_by_role("form", name="Send a message")).to_have_count(1)
    await expect(page.get_by_role("status")).to_have_text("idle")
    # Connected, the form folds away: what is sent, and its answer, show without scrolling.
    await page.fill("#group", "g_browser")
    await page.fill("#client", "c_phone")
    await page.click("#connect-button")
    await page.wait_for_selector("#state:text('open')")
    await expect(page.locator("#connection")).not_to_have_attribute("open", "")
    await send(page, "group", "on the phone")
    await page.wait_for_selector("#log div.rtt:has-text('on the phone')")
    answer = await page.locator("#log div.rtt").first.bounding_box()
    assert answer is not None and answer["y"] + answer["height"] <= 844, answer
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "console-phone-dark.png"), full_page=True)
    await page.close()


async def test_the_console_has_an_icon_and_its_form_fields_line_up(browser, server):
    page = await watched_page(browser, viewport={"width": 1280, "height": 800})
    missing = []
    page.on("response", lambda response: response.status == 404 and missing.append(response.url))
    await page.goto(f"http://127.0.0.1:{server.port}/v3/console")
    icon = await page.request.get(f"http://127.0.0.1:{server.port}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
    tops = await evaluate(
        page,
        """() => ["msg_type", "target", "to_id", "cmd"].map(
             (id) => document.getElementById(id).getBoundingClientRect().top)""",
    )
    assert len(set(tops)) == 1, tops  # one row, one height
    assert missing == []
    await page.close()


async def test_the_log_says_what_each_line_is_and_marks_direct_messages_to_me(browser, server):
    page = await open_console(browser, server.port, "c_me")
    bob = await Client.joined(f"ws://127.0.0.1:{server.port}/v3/ws/group/g_browser/client/c_bob")
    joined = page.locator("#log div.presence:has-text('c_bob joined g_browser')")
    await expect(joined.locator(".badge")).to_have_text("join")
    await bob.send(msg_type="msg", target="group", msg="hi", payload={"n": 1})
    await bob.send(msg_type="msg", target="direct", to_id="c_me", msg="psst")
    await bob.send(msg_type="cmd", target="broadcast", cmd="RELOAD")
    group = page.locator("#log div.group").first
    await expect(group).to_contain_text('c_bob → g_browser: "hi" · payload 7 B')
    await expect(group.locator(".badge")).to_have_text("group")
    direct = page.locator("#log div.direct-to-me")
    await expect(direct).to_contain_text('c_bob → you: "psst"')
    await expect(direct.locator(".badge")).to_have_text("direct to you")
    broadcast = page.locator("#log div.broadcast")
    await expect(broadcast).to_contain_text("c_bob → everybody: cmd RELOAD")
    colours = await evaluate(
        page,
        """() => ["group", "direct-to-me", "broadcast"].map((kind) =>
             getComputedStyle(document.querySelector(`#log div.${kind} .badge`)).color)""",
    )
    assert len(set(colours)) == 3  # distinct in colour as well as in words
    await direct.locator("summary").click()  # the raw frame on expand
    await expect(direct.locator("pre")).to_contain_text('"to_id": "c_me"')
    await page.close()


async def test_a_watching_console_sees_the_group_and_nobody_sees_it(browser):
    server = await ServerProcess.launch("--api-key", "console-key-of-16-chars")
    try:
        member = await Client.joined(server.url("g_watch", "c_member"))
        await member.recv_where(event="join", client_id="c_member")
        page = await watched_page(browser)
        await page.goto(f"http://127.0.0.1:{server.port}/v3/console?group=g_watch&watch=1")
        await expect(page.locator("#client")).to_be_disabled()
        await page.fill("#api-key", "console-key-of-16-chars")
        await page.click("#connect-button")
        await page.wait_for_selector("#state:text('open')")
        await expect(page.locator("#roster li")).to_have_text(["c_member"])
        await expect(page.locator("#banner-state")).to_have_text("Connected to g_watch (watching, not a member).")
        closed = await evaluate(
            page, "() => [...document.getElementById('msg_type').options].filter((o) => o.disabled).map((o) => o.text)"
        )
        assert closed == ["msg", "cmd"]  # a watcher sends nothing on
        await member.send(msg_type="msg", target="group", msg="seen by the watcher")
        await page.wait_for_selector("#log div.group:has-text('c_member → g_watch: \"seen by the watcher\"')")
        await page.click("#send-button")  # a heartbeat: all a watcher may send
        await page.wait_for_selector("#log div.heartbeat:has-text('answered')")
        await member.recv_where(msg="seen by the watcher")
        await member.nothing_within(0.3)  # no join, no heartbeat, nothing
        assert page.csp_violations == []
    finally:
        await server.stopped()


async def test_the_console_log_shortens_pretty_prints_filters_pauses_and_clears(browser, server):
    page = await open_console(browser, server.port, "c_tools")
    await send(page, "group", "x" * 2000 + " END")
    own_copy = page.locator("#log div.group:has-text('you → g_browser')")
    await expect(own_copy.locator("summary")).to_contain_text("more characters)")  # shortened
    await own_copy.locator("summary").click()
    await expect(own_copy.locator("pre")).to_contain_text('"msg_type": "msg"')  # pretty-printed
    await expect(own_copy.locator("pre")).to_contain_text(" END")  # all of it

    await page.select_option("#kind", "presence")
    await expect(page.locator("#log div[data-category=message]:visible")).to_have_count(0)
    await expect(page.locator("#log div[data-category=presence]:visible")).not_to_have_count(0)
    await page.select_option("#kind", "")
    await page.fill("#search", "END")
    await expect(page.locator("#log > div:visible")).to_have_count(2)  # sent, and its own copy
    await page.fill("#search", "")

    await page.click("#pause")
    await send(page, "echo", "while paused")
    await expect(page.locator("#pause")).to_have_text("Resume (2 held)")  # sent, and the echo
    await expect(page.locator("#log div:has-text('while paused')")).to_have_count(0)
    await page.click("#pause")
    await expect(page.locator("#log div:has-text('while paused')")).to_have_count(2)
    await page.click("#clear")
    await expect(page.locator("#log > div")).to_have_count(0)
    await page.close()


async def test_copy_as_curl_gives_a_command_that_publishes_the_same_message(browser, server):
    page = await open_console(browser, server.port, "c_curler")
    watcher = await Client.joined(f"ws://127.0.0.1:{server.port}/v3/ws/group/g_browser/client/c_watch")
    await page.fill("#msg", "via curl, with a quote's")
    await page.fill("#payload", '{"n": 1}')
    await page.click("#curl")
    line = page.locator("#log div[data-category=connection]:has-text('curl -X POST')")
    full = line.locator("pre")
    text = await (full if await full.count() else line).text_content()
    command = text[text.index("curl ") :]
    result = await asyncio.to_thread(
        subprocess.run, ["sh", "-c", command], capture_output=True, text=True, timeout=10, env={"PATH": "/usr/bin:/bin"}
    )
    assert '"status":"accepted"' in result.stdout, result.stderr
    got = await watcher.recv_where(msg="via curl, with a quote's")
    assert (got["from_id"], got["group_id"], got["payload"]) == ("c_curler", "g_browser", {"n": 1})
    await page.select_option("#target", "echo")
    await page.click("#curl")
    await page.wait_for_selector("#log .error:has-text('the API publishes to a group, a client or everybody')")
    await page.close()


async def test_the_console_adds_nothing_to_messages_and_tells_which_message_each_answer_is_for(browser, server):
    page = await open_console(browser, server.port, "c_asker")
    bob = await Client.joined(f"ws://127.0.0.1:{server.port}/v3/ws/group/g_browser/client/c_bob")
    await page.fill("#payload", '{"k": 1}')
    await send(page, "group", "first")
    assert (await bob.recv_where(msg="first"))["payload"] == {"k": 1}  # exactly what was typed
    await page.wait_for_selector("#log .rtt:has-text('first'):has-text('answer to #1, round trip')")

    # A direct message to another client is answered only when it fails: a heartbeat receipt
    # (seen by nobody else) says that it went through.
    await send(page, "direct", "to bob", to_id="c_bob")
    got = await bob.recv_where(msg="to bob")
    assert got["payload"] == {"k": 1} and set(got) == {
        "version",
        "msg_type",
        "target",
        "from_id",
        "to_id",
        "group_id",
        "cmd",
        "msg",
        "payload",
        "sent_at",
    }
    await page.wait_for_selector("#log .rtt:has-text('#2 went through: no error came back')")

    # Sent at once, without waiting: a failing direct message, then a group message. Each
    # answer names its own message.
    await page.fill("#payload", "")
    await page.select_option("#target", "direct")
    await page.fill("#to_id", "c_nobody")
    await page.fill("#msg", "lost")
    await page.click("#send-button")
    await page.select_option("#target", "group")
    await page.fill("#msg", "after the lost one")
    await page.click("#send-button")
    await page.wait_for_selector("#log .error:has-text('recipient_offline'):has-text('answer to #3')")
    await page.wait_for_selector("#log .rtt:has-text('after the lost one'):has-text('answer to #4')")
    assert await page.locator("#log div:has-text('#3 went through')").count() == 0
    await bob.recv_where(msg="after the lost one")
    await bob.nothing_within(0.2)  # no receipt reached bob

    # Every line has its own copy button.
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    line = page.locator("#log div:has-text('recipient_offline')").first
    await line.locator("button.copy").click()
    await expect(line.locator("button.copy")).to_have_text("Copied")
    copied = await evaluate(page, "() => navigator.clipboard.readText()")
    assert '"code": "recipient_offline"' in copied  # the error frame, pretty-printed
    await page.close()


async def test_a_link_opens_a_connected_console_and_problems_show_in_a_banner(browser, redis_server, start_process):
    process = await start_process()
    bob = await Client.joined(process.url("g_link", "c_bob"))
    page = await browser.new_page()
    page.set_default_timeout(scaled(10) * 1000)
    await page.goto(f"http://127.0.0.1:{process.port}/v3/console?group=g_link&client=c_linked")
    await page.wait_for_selector("#state:text('open')")
    await expect(page.locator("#roster li")).to_have_text(["c_bob", "c_linked"])
    await expect(page.locator("#banner")).not_to_have_class(re.compile("problem"))
    await expect(page.locator("#banner-state")).to_have_text("Connected to g_link as c_linked.")

    # Filter by sender: only what c_bob sent.
    await bob.send(msg_type="msg", target="group", msg="from bob")
    await page.wait_for_selector("#log div:has-text('from bob')")
    await send(page, "group", "from the console")
    await page.wait_for_selector("#log .rtt:has-text('from the console')")
    await page.fill("#sender", "c_bob")
    await expect(page.locator("#log > div:visible")).to_have_count(1)
    await expect(page.locator("#log > div:visible")).to_contain_text("from bob")
    await page.fill("#sender", "")

    redis_server.kill()  # the process serves on, alone: degraded
    await expect(page.locator("#banner")).to_contain_text("problem the server is degraded", timeout=scaled(15) * 1000)
    await process.stopped()
    await page.wait_for_selector("#state:text('reconnecting')")
    await expect(page.locator("#banner")).to_contain_text("the server cannot be reached")
    await expect(page.locator("#roster")).to_have_class("stale")  # what was last known, greyed
    await expect(page.locator("#roster-note")).to_have_text("(as last known: not connected)")
    await page.close()
