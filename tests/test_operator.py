"""The operator's page in a real Chromium: processes, groups, members, recent messages, disconnect."""

import asyncio
import itertools
import re
from pathlib import Path

from playwright.async_api import expect

from .conftest import CHROMIUM_MISSING, evaluate, watched_page
from .httpapi import http
from .processes import ServerProcess
from .wsclient import Client

OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
KEY = "operator-key-of-16-chars"

pytestmark = CHROMIUM_MISSING


async def open_operator(browser, port: int, **options):
    page = await watched_page(browser, **options)
    await page.goto(f"http://127.0.0.1:{port}/v3/operator")
    return page


async def get(server, path: str, key: str | None = None):
    status, body = await http(server, "GET", path, **({"Authorization": f"Bearer {key}"} if key else {}))
    assert status == 200, (path, body)
    return body


def cells(page, table: str):
    return page.locator(f"#{table} tbody tr").first.locator("td")


async def chatter(client: Client) -> None:
    """Group messages, 25 a second, until cancelled."""
    for n in itertools.count():
        await client.send(msg_type="msg", target="group", msg=f"busy {n}")
        await asyncio.sleep(0.04)


async def test_the_operator_sees_the_cluster_opens_a_group_and_disconnects_a_client(browser):
    server = await ServerProcess.launch("--api-key", KEY, "--lease-seconds", "3")  # announces every second
    try:
        alice = await Client.joined(server.url("g_ops", "c_alice"))
        bob = await Client.joined(server.url("g_ops", "c_bob"))
        await Client.joined(server.url("g_quiet", "c_carol"))
        await alice.send(msg_type="msg", target="group", msg="hello from alice")
        await bob.recv_where(msg="hello from alice")

        page = await open_operator(browser, server.port)
        # Nothing is shown without the key, and the page says why in words.
        await expect(page.locator("#banner")).to_contain_text("needs its API key")
        await expect(page.locator("#processes tbody tr")).to_have_count(0)
        await page.fill("#key", KEY)
        await page.click("#key-form button[type=submit]")
        await expect(page.locator("#banner")).to_be_hidden()

        await expect(page.locator("#processes tbody tr")).to_have_count(1)
        row = cells(page, "processes")
        await expect(row.nth(4)).to_have_text("memory")  # the bridge
        await expect(row.nth(5)).to_have_text("3")  # connections
        await expect(row.nth(6)).to_have_text("3")  # clients
        await expect(row.nth(7)).to_have_text("2")  # groups
        await expect(page.locator("#sum-connections")).to_have_text("3")
        await expect(page.locator("#sum-groups")).to_have_text("2")
        await expect(page.locator("#groups tbody tr")).to_have_count(2)
        # Traffic shows as rates once the process has announced an interval it came in.
        traffic = asyncio.create_task(chatter(alice))
        try:
            await expect(page.locator("#sum-messages_in")).not_to_have_text("0.0")
            await expect(page.locator("#sum-deliveries")).not_to_have_text("0.0")
        finally:
            traffic.cancel()
        # The rates may show before 20 were sent: 20 more, so the group has a full page of history.
        for n in range(20):
            await alice.send(msg_type="msg", target="group", msg=f"busy again {n}")
        await bob.recv_where(msg="busy again 19")

        # The search narrows the groups; a group opens with its members and recent messages.
        await page.fill("#prefix", "g_o")
        await page.click("#group-search button")
        await expect(page.locator("#groups tbody tr")).to_have_count(1)
        await expect(cells(page, "groups").nth(1)).to_have_text("2")
        await page.click("#groups button:text('Open')")
        await expect(page.locator("#group-heading")).to_have_text("Group g_ops")
        members = page.locator("#members tbody tr")
        await expect(members.locator("td:first-child")).to_have_text(["c_alice", "c_bob"])
        node_id = (await get(server, "/healthz"))["node_id"]
        first_member = ["c_alice", "1", node_id, re.compile(r"\d+ s"), "Disconnect..."]
        await expect(members.first.locator("td")).to_have_text(first_member)
        await expect(page.locator("#connections tbody tr")).to_have_count(2)  # each connection, described
        await expect(page.locator("#connections tbody tr").first.locator("td").nth(2)).to_have_text("127.0.0.1")
        await expect(page.locator("#pub-group")).to_have_value("g_ops")  # publishing to it is one click away
        await expect(page.locator("#history li")).to_have_count(20)  # the latest, newest first
        await expect(page.locator("#history li").first).to_contain_text("c_alice msg: busy")
        await expect(page.locator("#chart-x")).to_have_text("10 min ago5 min agonow")  # labelled axes
        await expect(page.locator("#chart-top")).not_to_have_text("-")
        await expect(page.locator("#access")).to_be_hidden()  # the full key: nothing to warn about
        OUTPUT.mkdir(exist_ok=True)
        await page.screenshot(path=str(OUTPUT / "operator.png"), full_page=True)

        # Publish as a backend does; the server's refusal in words.
        await page.fill("#pub-cmd", "RELOAD")
        await page.fill("#pub-payload", '{"why": "operator"}')
        await page.click("#publish button[type=submit]")
        await expect(page.locator("#published")).to_contain_text("Published at")
        got = await alice.recv_where(cmd="RELOAD")
        assert (got["msg_type"], got["from_id"], got["payload"]) == ("cmd", None, {"why": "operator"})
        await page.select_option("#pub-target", "direct")
        await page.fill("#pub-to", "c_nobody")
        await page.click("#publish button[type=submit]")
        await expect(page.locator("#published")).to_have_text(
            "Not published: 404 recipient_offline: c_nobody has no open connection."
        )

        # Disconnect is two steps: the member's button fills the form, the form does it.
        await page.click("#members button[aria-label='Disconnect c_bob...']")
        await expect(page.locator("#client_id")).to_have_value("c_bob")
        await expect(page.locator("#code")).to_be_focused()
        await page.fill("#reason", "maintenance")
        await page.click("#disconnect button[type=submit]")
        await expect(page.locator("#outcome")).to_have_text('Disconnected c_bob with 4001 "maintenance".')
        assert await bob.closed() == (4001, "maintenance")
        await expect(members.locator("td:first-child")).to_have_text(["c_alice"])
        # A client that is not there: the problem in words, not only in colour.
        await page.click("#disconnect button[type=submit]")
        await expect(page.locator("#outcome")).to_have_text(
            "c_bob was not disconnected: 404 recipient_offline: c_bob has no open connection."
        )
        await expect(page.locator("#outcome")).to_have_class("error")

        # A ban: its code becomes a final one, and the client may not come back.
        await page.fill("#client_id", "c_alice")
        await page.fill("#reason", "spam")
        await page.fill("#ban", "60")
        await expect(page.locator("#code")).to_have_value("4403")
        await page.click("#disconnect button[type=submit]")
        await expect(page.locator("#outcome")).to_have_text('Disconnected c_alice with 4403 "spam"; banned for 60 s.')
        assert await alice.closed() == (4403, "spam")
        await page.click("#lift-ban")
        await expect(page.locator("#outcome")).to_have_text("Lifted the ban of c_alice.")
        await Client.joined(server.url("g_ops", "c_alice"))  # welcome again

        # Removing the group's history asks once more.
        await page.click("#remove-history")
        await expect(page.locator("#remove-history")).to_contain_text("click again")
        assert (await get(server, "/v3/groups/g_ops/history", KEY))["messages"] != []
        await page.click("#remove-history")
        await expect(page.locator("#removed")).to_have_text("Removed the recorded messages of g_ops.")
        assert (await get(server, "/v3/groups/g_ops/history", KEY))["messages"] == []
        assert page.csp_violations == []
    finally:
        await server.stopped()


async def test_the_operator_sees_every_process_and_is_told_when_the_server_is_gone(browser, start_process):
    first, second = await start_process("--lease-seconds", "3"), await start_process("--lease-seconds", "3")
    await Client.joined(first.url("g_one", "c_1"))
    await Client.joined(second.url("g_two", "c_2"))
    page = await open_operator(browser, first.port)
    await expect(page.locator("#processes tbody tr")).to_have_count(2)
    await expect(page.locator("#sum-processes")).to_have_text("2")
    await expect(page.locator("#sum-connections")).to_have_text("2")  # the other's once it announced
    await expect(page.locator("#processes tbody td:nth-child(5)")).to_have_text(["up", "up"])
    await expect(page.locator("#status")).to_contain_text("Redis: standalone")
    await expect(page.locator("#chart-caption")).to_contain_text("now 2")
    first.kill()
    await expect(page.locator("#banner")).to_have_text("the server cannot be reached; trying again")
    await expect(page.locator("#status")).to_contain_text("Not updated")


async def test_the_operator_page_fits_a_phone_in_dark_mode(browser, server):
    page = await open_operator(browser, server.port, viewport={"width": 390, "height": 844}, color_scheme="dark")
    await expect(page.locator("#status")).to_contain_text("Updated")
    layout = await evaluate(
        page,
        """() => ({
          overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
          canvas: getComputedStyle(document.documentElement).colorScheme,
        })""",
    )
    assert layout["overflow"] <= 0  # wide tables scroll inside their own region, not the page
    assert layout["canvas"] == "light dark"  # the browser's dark canvas and controls
    await expect(page.get_by_role("heading", level=1)).to_have_text("aether-tornado operator")
    await expect(page.get_by_role("main")).to_have_count(1)
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "operator-phone-dark.png"), full_page=True)
    assert page.csp_violations == []


async def test_the_page_says_when_the_api_is_open_and_a_read_only_key_changes_nothing(browser):
    server = await ServerProcess.launch()  # loopback, no key: the API is open
    try:
        page = await open_operator(browser, server.port)
        await expect(page.locator("#access")).to_contain_text("the API is open: anyone who can reach this port")
        await expect(page.locator("#access")).to_contain_text("--api-key")
        await expect(page.locator("#key")).to_be_hidden()  # no field that looks needed
    finally:
        await server.stopped()
    read_key = "read-only-key-of-16-chars"
    server = await ServerProcess.launch("--api-key", KEY, "--api-read-key", read_key)
    try:
        await Client.joined(server.url("g_ro", "c_ro"))
        page = await open_operator(browser, server.port)
        await page.fill("#key", read_key)
        await page.click("#key-form button[type=submit]")
        await expect(page.locator("#access")).to_contain_text("read-only key: you can look at everything")
        await expect(page.locator("#groups tbody tr")).to_have_count(1)
        for form in ("#publish", "#disconnect"):
            await expect(page.locator(f"{form} button[type=submit]")).to_be_disabled()
        await page.click("#groups button:text('Open')")
        await expect(page.locator("#members tbody tr")).to_have_count(1)
        await expect(page.locator("#remove-history")).to_be_disabled()
        assert page.csp_violations == []
    finally:
        await server.stopped()


async def test_the_chart_starts_from_the_processes_own_last_minutes(browser):
    server = await ServerProcess.launch("--lease-seconds", "3")
    try:
        clients = [await Client.joined(server.url("g_chart", f"c_{n}")) for n in range(3)]
        # Each process keeps a sample every 10 s from its start: the first is there at once.
        page = await open_operator(browser, server.port)
        await expect(page.locator("#chart-caption")).to_contain_text("Connections over the last 10 minutes: now 3")
        points = await page.locator("#chart-line").get_attribute("points")
        assert points is not None and len(points.split()) >= 2  # a past and now, on the first load
        await page.select_option("#series", "messages_in")
        await expect(page.locator("#chart-caption")).to_contain_text("Messages in / s over the last 10 minutes")
        assert clients
    finally:
        await server.stopped()
