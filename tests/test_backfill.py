"""`backfill`: the whole history of every address in one call, committed step by step, resumable; batched writes."""

import asyncio
import json
from pathlib import Path

from aiohttp import web
from builders import BUNDLED_PRICES, COIN, MARCH_5_2026, cli_run, config_toml, entity_table, esplora_source, make_tx, sql
from fakes.offloop import in_store

from monitor.model import Attribution, Destination, EntityFlow
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from storage import Store


def long_history(n: int) -> tuple[SimChain, str, str]:
    """A miner address with `n` txs: receipts, and every tenth one a sale to the exchange."""
    chain = SimChain(start_time=MARCH_5_2026)
    hot, exch = chain.address("bf-hot"), chain.address("bf-exchange")
    for b in range(0, n, 500):
        k = min(500, n - b)
        for j in range(k - k // 10):
            chain.fund(hot, COIN + j, confirmed=False)
        chain.mine()
        for _ in range(k // 10):
            chain.pay([hot], [(exch, COIN // 4)], fee=1_000)
        chain.mine()
    return chain, hot, exch


def write_config(tmp_path: Path, url: str, hot: str, exch: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(
        config_toml(
            db=tmp_path / "b.db",
            sources=[esplora_source("local", url, rate_limit=10000.0, retries=1)],
            prices=BUNDLED_PRICES,
            entities=[entity_table("Test Miner", "miner", [hot]), entity_table("Test Exchange", "exchange", [exch])],
        )
    )
    return p


def counts(store: Store) -> tuple[int, int, int]:
    """(txs, outflows, active classifications) stored."""
    one = lambda query: sql(store, query)[0][0]  # noqa: E731
    return (
        one("select count(*) from transactions"),
        one("select count(*) from flows where direction = 'out'"),
        one("select count(*) from classifications where status = 'active'"),
    )


async def test_backfill_reads_a_history_beyond_one_step_in_one_call_with_progress(tmp_path):
    chain, hot, exch = long_history(2_100)  # one step reads 1,025 txs: this needs three
    async with EsploraServer(chain) as server:
        cfg = await asyncio.to_thread(write_config, tmp_path, server.url, hot, exch)
        r = await cli_run("-c", cfg, "backfill", "--progress")
        assert r.exit_code == 0, r.output
        assert "local: 2100 txs (2100 new), 2100 entity flows (210 outflows)" in r.stdout
        assert "2100/2100 txs" in r.stderr and "1025/2100 txs" in r.stderr  # the bar went on across steps
        assert await in_store(tmp_path / "b.db", counts) == (2_100, 210, 210)
        chain_pages = [p for p in server.requests if "/txs/chain/" in p]
        assert len(chain_pages) == len(set(chain_pages)) == 2_100 // 25  # each page read once
        before = len(server.requests)
        r = await cli_run("-c", cfg, "poll")  # nothing left to read: stats requests only
        assert r.exit_code == 0 and "0 txs (0 new)" in r.output
        assert not [p for p in server.requests[before:] if "/txs" in p]


async def test_an_interrupted_backfill_resumes_where_it_stopped(tmp_path):
    chain, hot, exch = long_history(2_100)
    allowed = {"pages": 60}  # the second step dies on its 20th page (after the first step's 40)

    @web.middleware
    async def cut(request, handler):
        if "/txs/chain/" in request.path:
            if allowed["pages"] <= 0:
                return web.Response(status=500, text="down")
            allowed["pages"] -= 1
        return await handler(request)

    server = EsploraServer(chain)
    server.app.middlewares.append(cut)
    async with server:
        cfg = await asyncio.to_thread(write_config, tmp_path, server.url, hot, exch)
        r = await cli_run("-c", cfg, "backfill", "--no-progress")
        assert r.exit_code == 3, r.output  # partial: what was read is stored, the rest is retried
        assert "1 failed (retried next time)" in r.output
        txs, outflows, _ = await in_store(tmp_path / "b.db", counts)
        assert txs == 1_025  # the first step is committed with its cursor; the failed one is not
        seen = list(server.requests)
        allowed["pages"] = 10_000
        r = await cli_run("-c", cfg, "backfill", "--no-progress")
        assert r.exit_code == 0 and "failed" not in r.output, r.output
        assert "1075 txs (1075 new)" in r.output
        assert await in_store(tmp_path / "b.db", counts) == (2_100, 210, 210)
        again = [p for p in server.requests[len(seen) :] if "/txs/chain/" in p]
        committed = [p for p in seen if "/txs/chain/" in p][:40]
        assert again and not set(again) & set(committed)  # nothing read twice that was stored


def tx(txid: str, height: int | None):
    return make_tx([("in-addr", 5 * COIN)], [("out-addr", 4 * COIN), ("change", COIN - 500)], txid=txid * 32, height=height)


def test_batched_writes_keep_first_seen_update_status_and_count_new(tmp_path):
    store = Store(tmp_path / "s.db")
    a, b = tx("aa", None), tx("bb", 100)
    assert store.save_txs([a, b], now=10) == 2
    confirmed = tx("aa", 101)
    assert store.save_txs([confirmed, b, tx("cc", 101)], now=20) == 1
    assert store.tx_statuses("bitcoin", ["aa" * 32, "bb" * 32, "dd" * 32]) == {"aa" * 32: "confirmed", "bb" * 32: "confirmed"}
    row = sql(store, "select first_seen, updated_at, block_height from transactions where txid = ?", ["aa" * 32])[0]
    assert tuple(row) == (10, 20, 101)
    assert store.get_tx("bitcoin", "aa" * 32) == confirmed
    flow = EntityFlow(
        chain="bitcoin",
        txid="aa" * 32,
        entity="M",
        block_height=101,
        block_time=5,
        spent=10,
        change=2,
        received=0,
        fee_share=1,
        out=7,
        destinations=(Destination("x", 7, 0, Attribution("exchange", "K")),),
    )
    assert store.save_flows([flow], now=30) == 1
    moved = EntityFlow(**{**flow.__dict__, "destinations": (Destination("y", 7, 1, Attribution("unknown")),)})
    assert store.save_flows([moved], now=40) == 0
    assert store.get_flow("bitcoin", "aa" * 32, "M") == moved  # destinations replaced, not added to
    assert sql(store, "select first_seen from flows")[0][0] == 30
    store.close()


async def test_backfill_in_block_mode_seeds_every_address_in_one_call(tmp_path):
    from watchers.esplora_blocks import DEFAULT_MAX_SEED

    chain = SimChain(start_time=MARCH_5_2026)
    hot = [chain.address(f"bfb-{i}") for i in range(DEFAULT_MAX_SEED + 60)]  # more than one poll seeds
    exch = chain.address("bfb-exchange")
    chain.fund_many([(a, COIN + i) for i, a in enumerate(hot)])
    chain.mine()
    async with EsploraServer(chain) as server:
        p = tmp_path / "c.toml"
        await asyncio.to_thread(
            p.write_text,
            config_toml(
                db=tmp_path / "b.db",
                prices=BUNDLED_PRICES,
                sources=[esplora_source("local", server.url, rate_limit=100000.0, mode="block", mempool_checks=0)],
                entities=[entity_table("Test Miner", "miner", hot), entity_table("Test Exchange", "exchange", [exch])],
            ),
        )
        r = await cli_run("-c", p, "backfill", "--no-progress")
        assert r.exit_code == 0, r.output
        assert "(1 new)" in r.stdout  # the one funding tx, read in the histories of both steps' addresses
        n = len(server.requests)
        r = await cli_run("-c", p, "poll")
        assert r.exit_code == 0 and "0 txs (0 new)" in r.output and "1 requests" in r.output, r.output
        assert server.requests[n:] == ["/blocks/tip/hash"]  # nothing left to seed
        r = await cli_run("-c", p, "entities", "--json")
        miner = next(x for x in json.loads(r.output) if x["name"] == "Test Miner")
        assert miner["addresses_with_balance"] == len(hot)
        assert miner["balance_units"] == sum(COIN + i for i in range(len(hot)))
