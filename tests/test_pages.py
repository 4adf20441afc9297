"""Every page the server serves, checked by axe-core in Chromium: WCAG 2.1 A and AA, and best practice."""

from pathlib import Path

import pytest

from .conftest import CHROMIUM_MISSING, evaluate
from .timing import scaled
from .wsclient import Client

AXE = Path(__file__).parent / "node" / "node_modules" / "axe-core" / "axe.min.js"
RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]

pytestmark = CHROMIUM_MISSING


async def violations(page) -> list[str]:
    """What axe-core finds wrong on the page as it is now: rule, impact and the elements."""
    await page.add_script_tag(path=str(AXE))
    found = await evaluate(page, f"async () => (await axe.run(document, {{runOnly: {RULES}}})).violations")
    return [
        f"{item['id']} ({item['impact']}): {item['help']} at {[node['target'] for node in item['nodes']]}"
        for item in found
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
async def test_every_page_passes_axe_in_both_colour_schemes_wide_and_narrow(browser, server, scheme, width):
    assert AXE.exists(), "tests/node has no axe-core: run make test, which installs it"
    watcher = await Client.joined(f"ws://127.0.0.1:{server.port}/v3/ws/group/g_axe/client/c_watch")
    # axe is injected as a script, which the pages' Content-Security-Policy would refuse.
    context = await browser.new_context(bypass_csp=True, color_scheme=scheme, viewport={"width": width, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(scaled(10) * 1000)
    try:
        await page.goto(f"http://127.0.0.1:{server.port}/")
        assert await violations(page) == []

        await page.goto(f"http://127.0.0.1:{server.port}/v3/console")
        await page.fill("#group", "g_axe")
        await page.click("#connect-button")
        await page.wait_for_selector("#roster li:text('c_watch')")
        await page.fill("#payload", '{"k": 1}')
        await page.click("#send-button")
        await page.wait_for_selector("#log .rtt")
        await watcher.send(msg_type="msg", target="direct", to_id="c_console", msg="to you")
        await watcher.send(msg_type="cmd", target="broadcast", cmd="RELOAD")
        await page.wait_for_selector("#log .direct-to-me")  # every kind's colour, in this scheme
        await page.wait_for_selector("#log .broadcast")
        await page.click("#log summary >> nth=0")  # an opened line too
        assert await violations(page) == []

        await page.goto(f"http://127.0.0.1:{server.port}/v3/operator")
        await page.wait_for_selector("#access:has-text('the API is open')")  # the warning too
        await page.wait_for_selector("#groups button")
        await page.click("#groups button")
        await page.wait_for_selector("#members tbody tr")
        await page.wait_for_selector("#connections tbody tr")
        assert await violations(page) == []
    finally:
        await context.close()
        watcher.close()
