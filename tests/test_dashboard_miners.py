"""The dashboard's Miners page from a real `treasury-monitor run` over a backfilled miner view.

The scripted pool episode (monitor.sim.pool_episode) is served by the local Esplora server; its blocks are
scanned into SQLite with the product's scan (the same as `miners backfill`), the pools' and a tracked
miner's payments are polled and classified, then a daemon subprocess serves the page. The page must show
the figures `/api/miners` returns (the one view builder), and those must be the script's: blocks and
reward per pool, and the payments by destination kind. The browser test drives Debian's Chromium at 1280
and 375 px (no horizontal overflow, no console errors, keyboard reachable); screenshots go to tmp_path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import json
import random
import re
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from blockbuster import blockbuster_ctx
from builders import BUNDLED_PRICES, cli_run, config_toml, entity_table, env, esplora_source, wait_http
from fakes.receiver import free_port
from test_daemon import start_daemon, wait_exit

from monitor.clock import FrozenClock
from monitor.discovery.miners import follow_tip, scan_blocks
from monitor.discovery.pools import load_pools
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.pool_episode import PoolEpisode, build_pool_episode
from storage import AsyncStore, Store
from watchers.coinbases import EsploraCoinbases
from watchers.http import HttpClient

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "miners-page-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_780_000_000
FOUNDRY_PAYOUT = "bc1qxhmdufsvnuaaaer4ynz88fspdsxq2h9e9cetdj"  # pools-v2, Foundry USA
ANTPOOL_PAYOUT = "12dRugNcdxK39288NjcDV4GX7rMsKCGn6B"  # pools-v2, AntPool


@pytest.fixture(autouse=True)
def blockbuster():
    """Our packages stay guarded against blocking calls on the loop; playwright's client is not (it stats its
    driver and writes screenshots from the loop), so only our packages are scanned (as test_dashboard_browser)."""
    with blockbuster_ctx(["monitor", "storage", "alerts", "watchers"]) as bb:
        yield bb


@dataclass
class Served:
    base: str
    cfg: Path
    ep: PoolEpisode
    by_kind: dict[str, int]  # every scripted payment (pools' and MARA's) by destination kind
    pool_by_kind: dict[str, int]  # the pools' part


@contextlib.asynccontextmanager
async def served_miner_view(tmp_path: Path) -> AsyncIterator[Served]:
    """The episode scanned and polled into a database, and a daemon (token required) serving it."""
    labels = SimChain()
    exch, stranger, mara_hot = (labels.address(x) for x in ("page exch", "page stranger", "page mara hot"))
    kind_of = {exch: "exchange", stranger: "unknown", mara_hot: "miner"}
    sends = {
        10: [(FOUNDRY_PAYOUT, ((exch, 4 * 10**8), (stranger, 10**8))), (mara_hot, ((exch, 3 * 10**8),))],
        11: [(ANTPOOL_PAYOUT, ((exch, 2 * 10**8), (mara_hot, 15 * 10**7))), (mara_hot, ((stranger, 5 * 10**7),))],
    }
    by_kind: dict[str, int] = {}
    pool_by_kind: dict[str, int] = {}
    for day_sends in sends.values():
        for source, outs in day_sends:
            for dest, value in outs:
                by_kind[kind_of[dest]] = by_kind.get(kind_of[dest], 0) + value
                if source in (FOUNDRY_PAYOUT, ANTPOOL_PAYOUT):
                    pool_by_kind[kind_of[dest]] = pool_by_kind.get(kind_of[dest], 0) + value
    ep = await asyncio.to_thread(
        build_pool_episode, days=12, per_day=12, reorg_day=4, wallets={mara_hot: 50 * 10**8}, transfers=sends
    )
    await asyncio.to_thread(ep.apply_reorg)
    await asyncio.to_thread(ep.mine_rest)
    db = tmp_path / "m.db"
    port = free_port()
    async with EsploraServer(ep.chain) as server:
        store = AsyncStore(await asyncio.to_thread(Store, db))
        try:
            async with aiohttp.ClientSession() as session:
                reader = EsploraCoinbases(
                    HttpClient(
                        "esplora", [server.url], session, clock=FrozenClock(), rng=random.Random(1), retries=1, rate_limit=None
                    )
                )
                pools = await asyncio.to_thread(load_pools)
                await scan_blocks(store, reader, start=ep.blocks[0].height, end=ep.chain.height, now=NOW, pools=pools)
                await follow_tip(store, reader, now=NOW, pools=pools)
        finally:
            await store.close()
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(
            cfg.write_text,
            config_toml(
                db=db,
                sources=[esplora_source("local", server.url, rate_limit=1000.0, poll_interval=3600)],
                prices=BUNDLED_PRICES,
                entities=[entity_table("MARA", "miner", [mara_hot]), entity_table("CC Exchange", "exchange", [exch])],
                daemon={"port": port, "digest_hour": -1, "token": env("TM_TOKEN")},
            ),
        )
        polled = await cli_run("-c", cfg, "poll", env={"TM_TOKEN": TOKEN})
        assert polled.exit_code == 0, polled.output
        proc = await start_daemon(cfg, {"TM_TOKEN": TOKEN})
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_http(base + "/healthz", proc=proc)
            yield Served(base, cfg, ep, by_kind, pool_by_kind)
        finally:
            proc.send_signal(signal.SIGTERM)
            await wait_exit(proc, 15)


def _row(page: str, attr: str, value: str) -> str:
    m = re.search(rf'<tr {attr}="{re.escape(html.escape(value))}">(.*?)</tr>', page, re.S)
    assert m, (attr, value)
    return m.group(1)


def _cell(row: str, field: str) -> tuple[str, str | None]:
    """(visible text, data-sat) of a row's cell."""
    m = re.search(rf'data-field="{field}"(?: data-sat="(\d+)")?>([^<]*)</td>', row)
    assert m, field
    return m.group(2), m.group(1)


async def test_miners_page_shows_the_api_view_and_the_script(tmp_path):
    async with served_miner_view(tmp_path) as srv, aiohttp.ClientSession() as s:

        async def get(path: str, **kw) -> tuple[int, str]:
            async with s.get(srv.base + path, **kw) as r:
                return r.status, await r.text()

        assert (await get("/miners"))[0] == 401  # the dashboard's token rules
        status, page = await get("/miners", headers=AUTH)
        assert status == 200
        async with s.get(srv.base + "/api/miners", headers=AUTH) as r:
            api = await r.json()
        assert 'href="/miners" aria-current="page"' in page

        # Production by pool: the page's figures are the API's, and those are the script's.
        assert {p["pool"]: (p["blocks"], p["produced_sat"]) for p in api["pools"]} == srv.ep.expected_by_pool()
        assert len(re.findall(r"<tr data-pool=", page)) == len(api["pools"]) >= 7
        for p in api["pools"]:
            row = _row(page, "data-pool", p["pool"])
            assert _cell(row, "blocks")[0] == f"{p['blocks']:,}"
            assert _cell(row, "share")[0] == f"{p['share']:.1%}"
            for field in ("subsidy", "fees", "produced"):
                text, sat = _cell(row, field)
                assert sat == str(p[f"{field}_sat"]) and text == f"{p[f'{field}_sat'] / 1e8:,.2f}", (p["pool"], field)
            assert _cell(row, "days")[0] == str(p["days"])
        assert '<a href="/entity/MARA">MARA</a>' in _row(page, "data-pool", "MARA Pool")
        # the stacked chart: a bar segment per pool and day, with its blocks and BTC in the tooltip
        chart = page.split('aria-label="Production per day chart">', 1)[1].split("</svg>", 1)[0]
        for d in api["pool_days"]:
            if d["pool"] != "unknown":
                assert (
                    f"<title>{d['day']} · {html.escape(d['pool'])}: {d['blocks']:,} blocks, "
                    f"{d['produced_sat'] / 1e8:,.2f} BTC</title>"
                ) in chart, d

        # Measured vs reported: MARA's sentence as the API words it.
        mara = next(m for m in api["tracked_miners"] if m["entity"] == "MARA")
        assert mara["reported_monthly_btc"] is not None and mara["blocks"] == srv.ep.expected_by_pool()["MARA Pool"][0]
        assert f'<li data-entity="MARA">{html.escape(mara["sentence"])}</li>' in page

        # Outflows by kind, the pool-payout part, miner-to-exchange: the scripted payments.
        for kind, sat in srv.by_kind.items():
            row = _row(page, "data-kind", kind)
            assert _cell(row, "sat")[1] == str(sat), kind
            assert _cell(row, "pool_sat")[1] == str(srv.pool_by_kind.get(kind, 0)), kind
        assert len(re.findall(r"<tr data-kind=", page)) == len(srv.by_kind)
        assert sum(d["sat"] for d in api["miner_to_exchange"]) == srv.by_kind["exchange"]
        assert (
            f'Miner-to-exchange: <strong data-sat="{srv.by_kind["exchange"]}">'
            f"{srv.by_kind['exchange'] / 1e8:,.2f} BTC</strong> over {len(api['miner_to_exchange'])} day(s)"
        ) in page
        for d in api["miner_to_exchange"]:
            assert f'<tr data-day="{d["day"]}"><td>{d["day"]}</td><td class="num" data-sat="{d["sat"]}">' in page

        # The MPI: last and peak as the API has them, the chart's points, and the days-used caveat.
        priced = [p for p in api["mpi"] if p["mpi"] is not None]
        assert priced and api["mpi_days_used"] == len(api["mpi"]) < 365
        assert f"{priced[-1]['mpi']:.2f} on {priced[-1]['day']}" in page
        assert f"uses the {api['mpi_days_used']} day(s) the data covers, fewer than the 365" in page
        mpi_svg = page.split('aria-label="Miner Position Index chart">', 1)[1].split("</svg>", 1)[0]
        assert mpi_svg.count("<circle") == len(priced)

        # ?since= narrows the page as it narrows the API; a bad date is a 400, not a page.
        day = api["days"][len(api["days"]) // 2]
        status, later = await get(f"/miners?since={day}", headers=AUTH)
        async with s.get(srv.base + f"/api/miners?since={day}", headers=AUTH) as r:
            api_later = await r.json()
        assert status == 200 and f'value="{day}"' in later
        assert 0 < api_later["blocks_scanned"] < api["blocks_scanned"]
        for p in api_later["pools"]:
            assert _cell(_row(later, "data-pool", p["pool"]), "blocks")[0] == f"{p['blocks']:,}"
        assert f"{api_later['blocks_scanned']:,} blocks scanned" in later
        assert (await get("/miners?since=last-tuesday", headers=AUTH))[0] == 400
        status, empty = await get("/miners?since=2099-01-01", headers=AUTH)
        assert status == 200 and "No block scanned yet since 2099-01-01" in empty and "miners backfill" in empty

        # The static report of the same database: its miner section carries the MPI as a PNG chart.
        out = tmp_path / "report.html"
        rep = await cli_run("-c", srv.cfg, "report", "--out", out, env={"TM_TOKEN": TOKEN})
        assert rep.exit_code == 0, rep.output
    section = (await asyncio.to_thread(out.read_text)).split("<section id='miners'>", 1)[1].split("</section>", 1)[0]
    assert f"{priced[-1]['mpi']:.2f} on {priced[-1]['day']}" in section
    assert f"average over the {api['mpi_days_used']} days covered" in section
    png = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="Miner Position Index per day"', section)
    assert png and base64.b64decode(png.group(1))[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")
async def test_miners_page_in_chromium(tmp_path):
    from playwright.async_api import async_playwright

    shots = tmp_path / "screenshots"
    await asyncio.to_thread(shots.mkdir)
    errors: list[str] = []
    seen: dict[str, object] = {}
    async with served_miner_view(tmp_path) as srv, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:

            async def new_page(viewport):
                page = await browser.new_page(viewport=viewport)
                page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                return page

            page = await new_page({"width": 1280, "height": 800})
            await page.goto(f"{srv.base}/?token={TOKEN}")  # swapped for the HttpOnly cookie, as a user would
            # Keyboard: from the overview, Tab reaches the Miners link and Enter opens the page.
            for _ in range(20):
                await page.keyboard.press("Tab")
                if await page.evaluate("document.activeElement.getAttribute('href')") == "/miners":
                    break
            else:
                pytest.fail("Tab never reached the Miners link")
            await page.keyboard.press("Enter")
            await page.wait_for_url("**/miners")
            assert await page.locator("table.pools tbody tr").count() == len(srv.ep.expected_by_pool())
            assert await page.locator("svg.chart").count() == 3  # production, miner-to-exchange, MPI
            # every chart and table scroll region shown is reachable by Tab (the per-day table opens from its summary)
            regions = await page.locator('.scroll[tabindex="0"]:visible').count()
            focused = set()
            for _ in range(60):
                await page.keyboard.press("Tab")
                label = await page.evaluate(
                    "document.activeElement.classList.contains('scroll') ? "
                    "document.activeElement.getAttribute('aria-label') : null"
                )
                if label:
                    focused.add(label)
            assert len(focused) == regions >= 5, focused
            await page.screenshot(path=shots / "miners-1280.png", full_page=True)
            seen["weight_bytes"] = await page.evaluate(
                "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
                ".reduce((s, e) => s + e.decodedBodySize, 0)"
            )
            seen["html_bytes"] = await page.evaluate("performance.getEntriesByType('navigation')[0].decodedBodySize")
            seen["transfer_bytes"] = await page.evaluate(
                "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
                ".reduce((s, e) => s + e.transferSize, 0)"
            )

            phone = await new_page({"width": 375, "height": 740})
            await phone.goto(f"{srv.base}/?token={TOKEN}")
            await phone.goto(f"{srv.base}/miners")
            assert await phone.locator("table.pools").count() == 1
            overflow = await phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow == 0
            await phone.locator("#miner-to-exchange + figure + details summary").click()
            assert await phone.locator("table.to-exchange").is_visible()
            assert await phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") == 0
            await phone.screenshot(path=shots / "miners-375.png", full_page=True)
        finally:
            await browser.close()
    assert errors == []
    print(f"\nscreenshots: {shots}\n{json.dumps(seen)}")
