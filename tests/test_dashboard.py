"""The dashboard's pages over HTTP from a real `treasury-monitor run` watching the local Esplora server.

Filters and paging of the flows table, bad input (400), unknown entities and files (404), escaping of
hostile names, and the security headers. The browser-level behaviour is in test_dashboard_browser.py.
"""

import asyncio
import re
import signal
import urllib.parse

import aiohttp
from builders import COIN, MARCH_5_2026, config_toml, entity_table, esplora_source, miner_profile, until, wait_http
from fakes.receiver import free_port
from test_daemon import start_daemon, wait_exit

from monitor.model import EntityAddress
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from storage import Store
from storage.discovery import Evidence, add_evidence, propose_address

EVIL = "<b>Evil & Co</b>"
SALES = 30


def _seed_candidate(db, address: str) -> None:
    """A candidate address with two pool payouts as evidence, stored the way the discovery job stores them."""
    store = Store(db)
    try:
        with store.batch():
            propose_address(
                store,
                EVIL,
                EntityAddress("bitcoin", address, source="pool payouts (test)", learned_by="pool_payout"),
                status="candidate",
                now=MARCH_5_2026,
            )
            add_evidence(
                store,
                [
                    Evidence("bitcoin", address, EVIL, "pool_payout", txid=f"{i:064x}", block_height=900_000 + i, value=3 * COIN)
                    for i in (1, 2)
                ],
                now=MARCH_5_2026,
            )
    finally:
        store.close()


def _rows(html: str) -> int:
    return len(re.findall(r'<tr id="flow-', html))


async def test_flows_table_filters_pages_and_escapes(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    hot, exchange, stranger = chain.address("dash-hot"), chain.address("dash-exchange"), chain.address("dash-stranger")
    chain.fund(hot, 5_000 * COIN)
    chain.mine()
    port = free_port()
    async with EsploraServer(chain) as server:
        candidate = chain.address("dash-candidate")
        await asyncio.to_thread(_seed_candidate, tmp_path / "d.db", candidate)
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(
            cfg.write_text,
            config_toml(
                db=tmp_path / "d.db",
                sources=[esplora_source("local", server.url, rate_limit=500.0, timeout=2.0, retries=1, poll_interval=0.2)],
                entities=[
                    entity_table(EVIL, "miner", [hot], profile=miner_profile()),
                    entity_table("Test Exchange", "exchange", [exchange]),
                ],
                daemon={"port": port, "digest_hour": -1},
            ),
        )
        proc = await start_daemon(cfg, {})
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_http(base + "/healthz", proc=proc)
            for i in range(SALES):
                chain.pay([hot], [(exchange, (i + 1) * COIN)], fee=2_000)
                chain.mine()
            unknown = chain.pay([hot], [(stranger, 3 * COIN)], fee=2_000)
            chain.mine()
            page = f"{base}/entity/{urllib.parse.quote(EVIL, safe='')}"
            async with aiohttp.ClientSession() as s:

                async def get(url: str) -> tuple[int, str, dict]:
                    async with s.get(url) as r:
                        return r.status, await r.text(), dict(r.headers)

                async def stored() -> bool:
                    async with s.get(f"{base}/api/flows?direction=out") as r:
                        flows = await r.json()
                    return len([f for f in flows if f["classification"]]) == SALES + 1

                await until(stored, timeout=30)
                status, html, headers = await get(page)
                assert status == 200
                assert "default-src 'self'" in headers["Content-Security-Policy"]
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert EVIL not in html and "&lt;b&gt;Evil &amp; Co&lt;/b&gt;" in html
                assert f"{SALES + 2} matching" in html  # the funding inflow, 30 sales and the unknown transfer
                # newest first, 25 a page: the unknown transfer, mined last, heads the table
                assert _rows(html) == 25
                txids = re.findall(
                    r'<tr id="flow-[0-9a-f]+" class="[^"]*">\s*<td>[^<]*</td>\s*<td><code title="([0-9a-f]{64})"', html
                )
                assert len(txids) == 25 and txids[0] == unknown.txid
                # the candidate, with its evidence and the commands that decide it
                cands = html[html.index('id="cand-h"') :]
                assert candidate in cands and "pool_payout ×2" in cands and "2 payout(s), 6.00 BTC" in cands
                assert f"entities accept {candidate}" in cands and f"entities reject {candidate}" in cands
                _, html2, _ = await get(page + "?destination=exchange&page=2")
                assert f"{SALES} matching" in html2 and _rows(html2) == SALES - 25 and "page 2 of 2" in html2
                _, html3, _ = await get(page + "?destination=unknown")
                assert "1 matching" in html3 and unknown.txid[:12] in html3 and _rows(html3) == 1
                _, html4, _ = await get(page + "?since=2099-01-01")
                assert "0 matching" in html4 and "No flows match." in html4
                day = "2026-03-05"
                _, html5, _ = await get(page + f"?since={day}&until={day}")
                n = int(re.search(r"(\d+) matching", html5).group(1))
                assert 0 < n <= SALES + 2
                for bad in ("?verdict=bogus", "?destination=moon", "?since=yesterday", "?page=x"):
                    assert (await get(page + bad))[0] == 400, bad
                assert (await get(f"{base}/entity/Nobody"))[0] == 404
                assert (await get(f"{base}/static/../monitor/config.py"))[0] == 404
                assert (await get(f"{base}/static/nope.png"))[0] == 404
                status, js, headers = await get(f"{base}/static/dashboard.js")
                assert status == 200 and headers["Content-Type"].startswith("text/javascript") and "EventSource" in js
                status, html, _ = await get(base + "/")
                assert status == 200 and EVIL not in html and 'data-entity="&lt;b&gt;Evil &amp; Co&lt;/b&gt;"' in html
                # the feed starts after the newest event rendered, so the stream sends nothing twice
                after = int(re.search(r'id="feed" class="feed" data-after="(\d+)"', html).group(1))
                async with s.get(f"{base}/api/events?after=0&limit=5000") as r:
                    assert after == (await r.json())["last_id"]
        finally:
            proc.send_signal(signal.SIGTERM)
            await wait_exit(proc, 15)
