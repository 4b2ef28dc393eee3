"""The dashboard in a real browser (Debian's Chromium driven by playwright) against the served demo.

`run_demo(serve=True)` plays the simulated episode with the real daemon, then keeps it watching the
simulated chain; the test mines new blocks on that chain and watches the page: a sale appears in the
live feed without a reload, a hop-traced flow's update and an RBF retraction change their item in place.
Screenshots are saved under the test's tmp_path (printed) as artefacts.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx
from playwright.async_api import Page, async_playwright

from monitor.cli.demo import DemoServer, run_demo
from monitor.model import SALE_VERDICTS, SATS_PER_BTC
from monitor.run.httpapi import start_http
from storage.reads import last_event_id

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SEED, SCALE = 7, 0.1
SCREEN = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")


@pytest.fixture(autouse=True)
def blockbuster():
    """The product's rooms stay guarded against blocking calls on the loop; playwright's client is not
    (it stats its driver and writes screenshots from the loop), so only our packages are scanned."""
    with blockbuster_ctx(["monitor", "storage", "alerts", "watchers"]) as bb:
        yield bb


def _key(txid: str, entity: str) -> str:
    return f"bitcoin:{txid}:{entity}"


def _item(key: str) -> str:
    return f'#feed > li[data-key="{key}"]'


async def _overflow(page: Page) -> int:
    """How many CSS pixels the document is wider than the viewport (0: no horizontal scrolling)."""
    return await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


async def _richest(srv: DemoServer) -> tuple[str, list[str]]:
    """The treasury holding the most BTC on the simulated chain, and its funded addresses."""
    best = None
    for name in srv.scenario.treasuries:
        addrs = [a.address for a in srv.scenario.addresses_of(name) if srv.chain.balance(a.address) > 0]
        total = sum(srv.chain.balance(a) for a in addrs)
        if best is None or total > best[0]:
            best = (total, name, addrs)
    assert best is not None
    return best[1], best[2]


async def test_dashboard_in_chromium_while_the_daemon_watches_the_episode(tmp_path):
    shots = tmp_path / "screenshots"
    await asyncio.to_thread(shots.mkdir)
    errors: list[str] = []
    seen: dict[str, object] = {}

    async def drive(srv: DemoServer) -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                await _drive(browser, srv)
            finally:
                await browser.close()

    async def _drive(browser, srv: DemoServer) -> None:
        page = await browser.new_page(viewport=SCREEN)
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
        await page.goto(srv.url)
        await page.wait_for_selector("#feed-state.live", timeout=10_000)

        # The overview: a card per watched treasury, its balance equal to what the chain holds.
        for name in srv.scenario.treasuries:
            card = page.locator(f'.card[data-entity="{name}"]')
            assert await card.count() == 1, name
            on_chain = sum(srv.chain.balance(a.address) for a in srv.scenario.addresses_of(name))
            balance = (await card.locator('[data-field="balance"]').inner_text()).strip()
            assert balance.startswith(f"{on_chain / SATS_PER_BTC:,.2f} BTC"), (name, balance)
            if srv.scenario.expected[name].sold_sat:
                assert await card.locator('[data-field="worst"] .chip').count() == 1, name
                assert await card.locator("svg.spark").count() == 1, name
        await page.screenshot(path=shots / "overview-1280.png")

        # Keyboard: Tab reaches every entity card's link.
        reached = set()
        for _ in range(80):
            await page.keyboard.press("Tab")
            href = await page.evaluate("document.activeElement && document.activeElement.getAttribute('href')")
            if href:
                reached.add(urllib.parse.unquote(href))
        assert {f"/entity/{n}" for n in srv.scenario.treasuries} <= reached

        entity, addrs = await _richest(srv)
        kraken = [a.address for a in srv.scenario.addresses_of("Kraken")]
        chain = srv.chain

        # A new block with a sale: the alert shows in the feed, on top, without a reload.
        sale = chain.pay(addrs, [(kraken[0], 25 * SATS_PER_BTC)], fee=2_000)
        t0 = time.monotonic()
        chain.mine()
        await page.wait_for_selector(_item(_key(sale.txid, entity)), timeout=2_000)
        seen["sale_latency_s"] = time.monotonic() - t0
        first = page.locator("#feed > li").first
        assert await first.get_attribute("data-key") == _key(sale.txid, entity)
        verdict = (await first.locator('[data-slot="verdict"]').inner_text()).strip()
        assert verdict in SALE_VERDICTS
        assert "25.00000000 BTC" in await first.inner_text()
        await page.screenshot(path=shots / "feed-new-sale.png")

        # An unconfirmed sale, then replaced by fee (RBF): its item turns retracted in place.
        pending = chain.pay(addrs, [(kraken[-1], 7 * SATS_PER_BTC)], fee=2_000)
        key = _key(pending.txid, entity)
        await page.wait_for_selector(_item(key), timeout=5_000)
        before = await page.locator("#feed > li").evaluate_all("(els, k) => els.findIndex(e => e.dataset.key === k)", key)
        chain.replace(pending.txid, fee=12_000)
        await page.wait_for_selector(_item(key) + ".retracted", timeout=5_000)
        assert await page.locator(_item(key)).count() == 1
        # in place: still where it was, though the replacement tx may have gone on top since
        after = await page.locator("#feed > li").evaluate_all("(els, k) => els.findIndex(e => e.dataset.key === k)", key)
        assert after in (before, before + 1)
        assert "(retracted)" in await page.locator(_item(key) + ' [data-slot="verdict"]').inner_text()
        chain.mine()  # the replacement confirms

        # A transfer to an unknown address, which then forwards the coins to an exchange: the daemon's
        # hop tracing attributes it and the feed item is updated in place (unknown_transfer → a sale).
        hop = chain.address("dashboard-test-hop")
        unknown = chain.pay(addrs, [(hop, 40 * SATS_PER_BTC)], fee=2_000)
        chain.mine()
        key = _key(unknown.txid, entity)
        await page.wait_for_selector(_item(key), timeout=5_000)
        assert (await page.locator(_item(key) + ' [data-slot="verdict"]').inner_text()).strip() == "unknown_transfer"
        # the hop splits the coins between two exchanges: a trace with two branches and their shares
        coinbase = srv.scenario.addresses_of("Coinbase")[0].address
        chain.pay([hop], [(kraken[0], 25 * SATS_PER_BTC), (coinbase, 15 * SATS_PER_BTC - 3_000)], fee=3_000)
        chain.mine()
        await srv.daemon.discover()  # the [discovery] job the scheduler runs every `interval`
        await page.wait_for_selector(_item(key) + ' [data-slot="kind"]:text-is("updated")', timeout=5_000)
        assert await page.locator(_item(key)).count() == 1
        updated = (await page.locator(_item(key) + ' [data-slot="verdict"]').inner_text()).strip()
        assert updated in SALE_VERDICTS
        await page.screenshot(path=shots / "feed-update-retraction.png")

        # The HTTP server goes away (as in a restart) while a sale happens: once it is back, the browser's
        # EventSource reconnects with Last-Event-ID and the feed shows the sale, still without a reload.
        daemon = srv.daemon
        port = daemon.bound_port
        quiet = len(errors)
        await daemon._http.cleanup()  # closes the listening socket and the open event stream
        await page.wait_for_selector("#feed-state.down", timeout=10_000)
        stored = await daemon.rt.store.run(last_event_id)
        missed = chain.pay(addrs, [(kraken[0], 3 * SATS_PER_BTC)], fee=2_000)
        chain.mine()
        for _ in range(200):  # the daemon keeps watching meanwhile: wait until it has stored the sale
            if await daemon.rt.store.run(last_event_id) > stored:
                break
            await asyncio.sleep(0.05)
        daemon._http, _ = await start_http(daemon, "127.0.0.1", port)
        await page.wait_for_selector(_item(_key(missed.txid, entity)), timeout=10_000)
        await page.wait_for_selector("#feed-state.live", timeout=10_000)
        # The cut stream and refused reconnects are the outage itself, logged by the browser; nothing else.
        outage = errors[quiet:]
        assert all("ERR_INCOMPLETE_CHUNKED_ENCODING" in e or "ERR_CONNECTION_REFUSED" in e for e in outage), outage
        del errors[quiet:]
        keys = await page.locator("#feed > li").evaluate_all("els => els.map(e => e.dataset.key)")
        assert len(keys) == len(set(keys))  # nothing shown twice after the resume

        # The entity page: the new flows in the table, and the trace graph of the traced one.
        await page.goto(f"{srv.url}entity/{urllib.parse.quote(entity)}")
        rows = page.locator("table.flows tbody tr")
        assert await rows.count() > 3
        table = await page.locator("table.flows").inner_text()
        for tx in (sale, unknown):
            assert tx.txid[:12] in table
        graph = page.locator(f"#trace-{unknown.txid[:16]} svg.trace")
        assert await graph.count() == 1
        text = await graph.inner_html()
        assert "exchange:Kraken" in text and "exchange:Coinbase" in text
        assert "25.00 BTC · 62%" in text and "15.00 BTC · 37%" in text
        assert await page.locator("svg.chart").count() == 1
        assert await page.locator("svg.chart a, svg.chart g > title").count() > 3  # outflow markers
        facts = await page.locator("ul.facts").inner_text()
        assert "holdings" in facts and "as of 20" in facts and "source:" in facts
        await page.screenshot(path=shots / "entity-1280.png", full_page=True)
        # Filters and paging: only sales to exchanges, and the page count follows.
        await page.select_option('select[name="destination"]', "exchange")
        await page.click('form.filters button[type="submit"]')
        await page.wait_for_url("**destination=exchange**")
        dests = await page.locator("table.flows tbody tr td:nth-child(7)").all_inner_texts()
        assert dests and all("exchange:" in d for d in dests)

        await page.goto(f"{srv.url}scenarios")
        assert await page.locator(".scenario table tr").count() > 2
        await page.screenshot(path=shots / "scenarios-1280.png")

        # At 375 px: no horizontal overflow on any page (wide tables and charts scroll inside themselves).
        phone = await browser.new_page(viewport=PHONE)
        phone.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        phone.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        for name, path in (("overview", ""), ("entity", f"entity/{urllib.parse.quote(entity)}"), ("scenarios", "scenarios")):
            await phone.goto(srv.url + path)
            assert await _overflow(phone) == 0, name
            await phone.screenshot(path=shots / f"{name}-375.png", full_page=name != "overview")

        # Page weights: bytes the browser fetched per page (HTML, CSS, script).
        weights = {}
        for name, path in (("overview", ""), ("entity", f"entity/{urllib.parse.quote(entity)}"), ("scenarios", "scenarios")):
            w = await browser.new_page(viewport=SCREEN)
            await w.goto(srv.url + path)
            await w.wait_for_load_state("load")
            weights[name] = await w.evaluate(
                "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
                ".filter(e => !e.name.includes('/api/')).reduce((s, e) => s + e.decodedBodySize, 0)"
            )
            await w.close()
        seen["weights"] = weights

        # The static report of the same run: under 10 screens at 1280x800, no overflow at 375 px.
        report = await browser.new_page(viewport=SCREEN)
        await report.goto((tmp_path / "report.html").as_uri())
        height = await report.evaluate("document.documentElement.scrollHeight")
        seen["report_height"] = height
        assert height < 10 * SCREEN["height"], height
        assert await _overflow(report) == 0
        await report.screenshot(path=shots / "report-1280.png")
        await report.set_viewport_size(PHONE)
        assert await _overflow(report) == 0

    result = await run_demo(
        seed=SEED,
        scale=SCALE,
        speed=3_000_000,
        out=tmp_path / "report.html",
        db=tmp_path / "demo.db",
        echo=lambda *_: None,
        serve=True,
        port=0,
        on_serve=drive,
    )
    assert result.is_ok
    assert errors == []
    print(f"\nscreenshots: {shots}\n{json.dumps(seen, indent=1)}")
