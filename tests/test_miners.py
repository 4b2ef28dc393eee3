"""The chain-wide miner view end to end: a scripted pool episode on SimChain → EsploraServer on 127.0.0.1 →
HttpClient → miner scan → SQLite → PoolDays, totals, reconciliation, MPI.

Expected figures come from the episode's script (which pool each block is meant to be, the fees of the txs
it confirms), never from the attribution rules.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3

import aiohttp
import pytest
from builders import BUNDLED_PRICES, cli_run, config_toml, entity_table, esplora_source, until
from fakes.receiver import free_port

from monitor.clock import FrozenClock, SystemClock
from monitor.config import load_config
from monitor.discovery.miners import (
    BLOCKS_PER_DAY,
    backfill,
    block_subsidy,
    follow_tip,
    measured_production_fact,
    miner_position_index,
    pool_days,
    pool_totals,
    reconcile_production,
    scan_blocks,
)
from monitor.discovery.pools import load_pools
from monitor.model import Fact
from monitor.run.daemon import Daemon
from monitor.sim.bitcoind_server import BitcoindServer
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.pool_episode import PRE_REORG_BLOCKS, build_pool_episode
from storage import AsyncStore, Store
from storage.miners import miner_block_rows, pool_outflow_rows
from watchers.bitcoind.rpc import BitcoindRpc
from watchers.coinbases import BitcoindCoinbases, EsploraCoinbases
from watchers.http import HttpClient

NOW = 1_780_000_000


@pytest.fixture(scope="module")
def pools():
    return load_pools()


@pytest.fixture
def episode():
    return build_pool_episode(days=10, per_day=12)


@pytest.fixture
async def env(tmp_path, episode):
    ep = episode
    store = AsyncStore(await asyncio.to_thread(Store, tmp_path / "m.db"))
    async with EsploraServer(ep.chain) as server, aiohttp.ClientSession() as session:
        http = HttpClient("esplora", [server.url], session, clock=FrozenClock(), rng=random.Random(1), retries=1, rate_limit=None)
        yield ep, server, store, EsploraCoinbases(http)
    await store.close()


def store_path(store: AsyncStore):
    return store.store.path


def first_height(ep) -> int:
    return ep.blocks[0].height


async def by_pool(store) -> dict[str, tuple[int, int]]:
    rows = await store.run(miner_block_rows)
    return {t.pool: (t.blocks, t.produced) for t in pool_totals(pool_days(rows))}


async def test_pool_totals_equal_the_script_through_a_reorg(env, pools):
    ep, server, store, reader = env
    tip = ep.chain.height
    first = await scan_blocks(store, reader, start=first_height(ep), end=tip, now=NOW, pools=pools)
    assert first.scanned == tip - first_height(ep) + 1 and first.error == ""
    before = await by_pool(store)
    assert sum(n for n, _ in before.values()) == first.scanned

    ep.apply_reorg()
    ep.mine_rest()
    res = await follow_tip(store, reader, now=NOW, pools=pools)
    assert res.orphaned == PRE_REORG_BLOCKS  # the two orphaned blocks were undone

    got = await by_pool(store)
    assert got == ep.expected_by_pool()
    # the pools the script meant to be there are all there, by name
    assert {"Foundry USA", "AntPool", "F2Pool", "MARA Pool", "Luxor", "BTC.com", "Poolin", "unknown"} <= set(got)
    # nothing orphaned is left: the stored hashes are the best chain's
    rows = await store.run(miner_block_rows)
    assert [r["hash"] for r in rows] == [ep.chain.block_at(r["height"]).hash for r in rows]
    assert len(rows) == len(ep.best_blocks())


async def test_tag_change_and_shared_address_eras(env, pools):
    ep, server, store, reader = env
    ep.apply_reorg()
    ep.mine_rest()
    await scan_blocks(store, reader, start=first_height(ep), end=ep.chain.height, now=NOW, pools=pools)
    rows = {r["height"]: r for r in await store.run(miner_block_rows)}
    luxor = [b for b in ep.best_blocks() if b.pool == "Luxor"]
    assert {b.tag for b in luxor} == {"/LUXOR/", "Luxor Tech"}  # the script changes Luxor's tag mid-window
    assert all(rows[b.height]["pool"] == "Luxor" for b in luxor)
    shared = [b for b in ep.best_blocks() if b.payout == "1Bf9sZvBHPFGVPX71WX2njhd1NXKv5y7v5"]
    eras = {b.pool for b in shared}
    assert eras == {"BTC.com", "Poolin"}
    for b in shared:
        assert rows[b.height]["pool"] == b.pool
    poolin = [rows[b.height] for b in shared if b.pool == "Poolin"]
    assert all(r["address_pool"] == "BTC.com" and r["matched_by"] == "tag" for r in poolin)


async def test_scan_resumes_after_interruption(env, pools):
    ep, server, store, reader = env
    end = ep.chain.height
    n = end - first_height(ep) + 1
    # the 3rd header page fails for good (500 on every retry): the scan stops with the first pages kept
    server.faults.add(r"^/blocks/\d+$", "500", times=None)
    server.faults.rules[-1].pattern = re.compile(rf"^/blocks/{first_height(ep) + 29}$")
    stopped = await scan_blocks(store, reader, start=first_height(ep), end=end, now=NOW, pools=pools)
    assert stopped.error and stopped.scanned == 20
    server.faults.clear()
    start_req = len(server.requests)
    done = await scan_blocks(store, reader, start=first_height(ep), end=end, now=NOW, pools=pools)
    assert (done.skipped, done.scanned, done.error) == (20, n - 20, "")
    coinbase_reads = [p for p in server.requests[start_req:] if p.endswith("/txs/0")]
    assert len(coinbase_reads) == n - 20  # the 20 stored blocks are not read again
    assert len(await store.run(miner_block_rows)) == n


async def test_backfill_days_and_no_attribution(env):
    ep, server, store, reader = env
    seen: list[tuple[int, int]] = []
    res = await backfill(store, reader, days=2, now=NOW, pools=None, progress=lambda d, t: seen.append((d, t)), blocks_per_day=12)
    assert (res.start, res.end, res.scanned, res.error) == (ep.chain.height - 23, ep.chain.height, 24, "")
    assert res.end - res.start + 1 < BLOCKS_PER_DAY
    assert seen[-1][0] == seen[-1][1]
    rows = await store.run(miner_block_rows)
    assert rows and all(r["pool"] is None for r in rows)
    assert pool_days(rows) == []  # unattributed blocks count in no pool


def test_block_subsidy_schedule():
    assert block_subsidy(0) == 50 * 10**8
    assert block_subsidy(839_999) == 625_000_000
    assert block_subsidy(840_000) == 312_500_000
    assert block_subsidy(210_000 * 64) == 0


def test_pool_day_share_and_hashrate():
    rows = [
        {"day": "2026-03-01", "pool": "A", "subsidy_units": 100, "fees_units": 5, "difficulty": 1e12},
        {"day": "2026-03-01", "pool": "A", "subsidy_units": 100, "fees_units": 7, "difficulty": 1e12},
        {"day": "2026-03-01", "pool": "", "subsidy_units": 100, "fees_units": 1, "difficulty": 1e12},
        {"day": "2026-03-01", "pool": "B", "subsidy_units": 100, "fees_units": 0, "difficulty": 3e12},
    ]
    a = next(d for d in pool_days(rows) if d.pool == "A")
    assert (a.blocks, a.subsidy, a.fees, a.produced, a.day_blocks) == (2, 200, 12, 212, 4)
    assert a.share == 0.5
    # mean difficulty 1.5e12 → network 1.5e12 × 2^32 / 600 H/s; half of it
    assert a.hashrate == pytest.approx(0.5 * 1.5e12 * 4294967296 / 600)
    assert {d.pool for d in pool_days(rows)} == {"A", "B", "unknown"}


def test_mpi_on_a_known_series_equals_a_hand_calculation():
    series = {"2026-01-01": 10.0, "2026-01-02": 20.0, "2026-01-04": 60.0, "2026-01-05": 30.0}
    pts = miner_position_index(series, window=3)
    # by hand: 01-03 has no outflow (0); means over up to 3 days:
    # d1 10/1=10 → 1.0; d2 (10+20)/2=15 → 20/15; d3 (10+20+0)/3=10 → 0; d4 (20+0+60)/3=26.667 → 60/26.667=2.25;
    # d5 (0+60+30)/3=30 → 1.0
    assert [p.day for p in pts] == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]
    assert [p.days_used for p in pts] == [1, 2, 3, 3, 3]
    assert [round(p.value, 6) for p in pts] == [1.0, round(20 / 15, 6), 0.0, 2.25, 1.0]
    # the default window is 365 days: with 5 days covered it uses 5 and says so
    full = miner_position_index(series)
    assert full[-1].days_used == 5 and full[-1].average_usd == pytest.approx(120 / 5)
    assert miner_position_index({}) == []


async def test_reconciliation_and_measured_fact(env, pools):
    ep, server, store, reader = env
    ep.apply_reorg()
    ep.mine_rest()
    await scan_blocks(store, reader, start=first_height(ep), end=ep.chain.height, now=NOW, pools=pools)
    days = pool_days(await store.run(miner_block_rows))
    reported = Fact(736, "MARA Sep 2025 update", "2025-09-30")
    rec = reconcile_production(days, "MARA", "MARA Pool", reported)
    mara = [b for b in ep.best_blocks() if b.pool == "MARA Pool"]
    assert (rec.blocks, rec.produced) == (len(mara), sum(b.reward for b in mara))
    assert rec.days == 10 and rec.window_blocks == len(ep.best_blocks())
    assert rec.measured_monthly_btc == pytest.approx(sum(b.reward for b in mara) / 1e8 * 3)
    assert "reported 736 BTC/month" in rec.sentence() and "MARA Pool mined" in rec.sentence()
    fact = measured_production_fact(rec)
    assert fact is not None and fact.source.startswith("measured on chain") and fact.as_of == rec.until
    # a reported figure as fresh as the window wins
    fresh = reconcile_production(days, "MARA", "MARA Pool", Fact(736, "x", rec.until))
    assert measured_production_fact(fresh) is None


async def test_cli_backfill_and_miners_view_with_flows(tmp_path):
    """`miners backfill` + `poll` + `miners --json`: pools from the script, miners' outflows by kind as paid."""
    labels = SimChain()
    hot, exch, other_miner, stranger = (labels.address(x) for x in ("mara hot", "cc exchange", "cc other miner", "x"))
    sends = {
        11: [(hot, ((exch, 40 * 10**8), (stranger, 3 * 10**8)))],
        12: [(hot, ((exch, 25 * 10**8), (other_miner, 2 * 10**8)))],
    }
    ep = await asyncio.to_thread(
        build_pool_episode, days=14, per_day=12, reorg_day=5, wallets={hot: 100 * 10**8}, transfers=sends
    )
    await asyncio.to_thread(ep.apply_reorg)
    await asyncio.to_thread(ep.mine_rest)
    async with EsploraServer(ep.chain) as server:
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(
            cfg.write_text,
            config_toml(
                db=tmp_path / "m.db",
                sources=[esplora_source("local", server.url, rate_limit=1000.0)],
                prices=BUNDLED_PRICES,
                entities=[
                    entity_table("MARA", "miner", [hot]),
                    entity_table("CC Exchange", "exchange", [exch]),
                    entity_table("CC Other Miner", "miner", [other_miner]),
                ],
            ),
        )
        r = await cli_run("-c", cfg, "miners", "backfill", "--days", "1", "--no-progress")
        assert r.exit_code == 0, r.output
        assert "144 blocks scanned" in r.output
        r = await cli_run("-c", cfg, "miners", "backfill", "--days", "1", "--no-progress")
        assert "0 blocks scanned, 144 already stored" in r.output  # resumable: nothing read twice
        assert (await cli_run("-c", cfg, "poll")).exit_code == 0
        r = await cli_run("-c", cfg, "miners", "--json")
        assert r.exit_code == 0, r.output
        view = json.loads(r.output)
        r2 = await cli_run("-c", cfg, "miners")
    assert r2.exit_code == 0 and "MARA Pool" in r2.output and "Miner Position Index" in r2.output

    tip = ep.chain.height
    window = [b for b in ep.best_blocks() if b.height > tip - 144]
    expected: dict[str, list[int]] = {}
    for b in window:
        e = expected.setdefault(b.pool, [0, 0])
        e[0] += 1
        e[1] += b.reward
    assert {p["pool"]: [p["blocks"], p["produced_sat"]] for p in view["pools"]} == expected
    assert view["blocks_scanned"] == 144
    mara = next(m for m in view["tracked_miners"] if m["entity"] == "MARA")
    assert mara["blocks"] == expected.get("MARA Pool", [0])[0] and mara["reported_monthly_btc"] == 736
    by_kind: dict[str, int] = {}
    for f in view["flows"]:
        by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + f["sat"]
    assert by_kind == {"exchange": 65 * 10**8, "unknown": 3 * 10**8, "miner": 2 * 10**8}
    assert sum(d["sat"] for d in view["miner_to_exchange"]) == 65 * 10**8
    assert view["mpi"] and view["mpi_days_used"] == len(view["mpi"]) < 365

    # the classifier used MARA Pool's measured production (fresher than the Sep 2025 report) and says so
    import sqlite3

    reasons = await asyncio.to_thread(
        lambda: [
            r for (r,) in sqlite3.connect(tmp_path / "m.db").execute("select reasons from classifications where entity = 'MARA'")
        ]
    )
    assert reasons and all("monthly production" in r and "measured on chain" in r and "MARA Pool blocks" in r for r in reasons)


async def test_daemon_keeps_the_miner_view_current_through_a_reorg(tmp_path, pools):
    """A backfill starts the view; the running daemon's miner job follows new blocks and undoes the reorg."""
    ep = await asyncio.to_thread(build_pool_episode, days=10, per_day=12)
    db = tmp_path / "d.db"
    async with EsploraServer(ep.chain) as server:
        # the view is started by a backfill of what is there (the first half, up to the reorg day)
        store = AsyncStore(await asyncio.to_thread(Store, db))
        async with aiohttp.ClientSession() as session:
            http = HttpClient(
                "esplora", [server.url], session, clock=FrozenClock(), rng=random.Random(1), retries=1, rate_limit=None
            )
            await scan_blocks(store, EsploraCoinbases(http), start=first_height(ep), end=ep.chain.height, now=NOW, pools=pools)
        await store.close()
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(
            cfg.write_text,
            config_toml(
                db=db,
                sources=[esplora_source("local", server.url, rate_limit=1000.0, poll_interval=3600)],
                daemon={"port": free_port(), "digest_hour": -1},
                extra="[miners]\ninterval = 0.2\n",
            ),
        )
        daemon = Daemon(await asyncio.to_thread(load_config, cfg), clock=SystemClock())
        task = asyncio.create_task(daemon.run(install_signals=False))
        try:
            await until(lambda: daemon.miner_scans >= 1, what="first miner pass")
            assert daemon.scheduler.get_job("miners") is not None
            ep.apply_reorg()  # two stored blocks orphaned by three AntPool blocks, then the rest of the month
            ep.mine_rest()

            async def caught_up():
                rows = await daemon.rt.store.run(miner_block_rows)
                return rows and rows[-1]["height"] == ep.chain.height and rows[-1]["hash"] == ep.chain.tip.hash

            await until(caught_up, what="the miner view at the tip")
            got = await by_pool(daemon.rt.store)
            rows = await daemon.rt.store.run(miner_block_rows)
        finally:
            daemon.request_stop()
            assert await task == 0
    assert got == ep.expected_by_pool()  # the orphaned blocks are not counted, the new branch is
    assert [r["hash"] for r in rows] == [ep.chain.block_at(r["height"]).hash for r in rows]
    assert len(rows) == len(ep.best_blocks())


async def test_no_miner_job_without_a_bitcoin_source_or_when_off(tmp_path):
    chain = SimChain()
    async with EsploraServer(chain) as server:
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(
            cfg.write_text,
            config_toml(
                db=tmp_path / "d.db",
                sources=[esplora_source("local", server.url, poll_interval=3600)],
                daemon={"port": free_port(), "digest_hour": -1},
                extra="[miners]\nfollow = false\n",
            ),
        )
        daemon = Daemon(await asyncio.to_thread(load_config, cfg), clock=SystemClock())
        await daemon.start()
        try:
            assert daemon.scheduler.get_job("miners") is None
        finally:
            await daemon.shutdown()


async def test_core_node_gives_the_same_per_pool_totals_as_esplora_through_a_reorg(tmp_path, pools):
    """The same episode read from the local Core JSON-RPC server and from the local Esplora server."""
    ep = await asyncio.to_thread(build_pool_episode, days=10, per_day=12)
    core_store = AsyncStore(await asyncio.to_thread(Store, tmp_path / "core.db"))
    esplora_store = AsyncStore(await asyncio.to_thread(Store, tmp_path / "esplora.db"))
    async with BitcoindServer(ep.chain) as node, EsploraServer(ep.chain) as server, aiohttp.ClientSession() as session:
        rpc = BitcoindRpc(
            node.url, session, clock=FrozenClock(), user="rpcuser", password="rpcpassword", rng=random.Random(1), retries=1
        )
        core = BitcoindCoinbases(rpc)
        esplora = EsploraCoinbases(
            HttpClient("esplora", [server.url], session, clock=FrozenClock(), rng=random.Random(1), retries=1, rate_limit=None)
        )
        for store, reader in ((core_store, core), (esplora_store, esplora)):
            first = await scan_blocks(store, reader, start=first_height(ep), end=ep.chain.height, now=NOW, pools=pools)
            assert first.error == "" and first.scanned == ep.chain.height - first_height(ep) + 1
        ep.apply_reorg()
        ep.mine_rest()
        res = await follow_tip(core_store, core, now=NOW, pools=pools)
        await follow_tip(esplora_store, esplora, now=NOW, pools=pools)
        methods = set(node.methods)
    try:
        assert res.error == "" and res.orphaned == PRE_REORG_BLOCKS
        got = await by_pool(core_store)
        assert got == ep.expected_by_pool()
        assert got == await by_pool(esplora_store)
        core_rows, esplora_rows = await core_store.run(miner_block_rows), await esplora_store.run(miner_block_rows)
        keep = ("height", "hash", "prev_hash", "time", "pool", "matched_by", "tag", "address_pool", "subsidy_units", "fees_units")
        assert [{k: r[k] for k in keep} for r in core_rows] == [{k: r[k] for k in keep} for r in esplora_rows]
        # Core prints a difficulty with 16 significant digits, electrs with 17
        assert [r["difficulty"] for r in core_rows] == pytest.approx([r["difficulty"] for r in esplora_rows], rel=1e-14)
        # Core without txindex: the coinbase is read with its block hash
        assert "getrawtransaction" in methods and methods <= {"getblockcount", "getblockhash", "getblock", "getrawtransaction"}
    finally:
        await core_store.close()
        await esplora_store.close()


async def test_cli_backfill_from_a_core_source(tmp_path):
    ep = await asyncio.to_thread(build_pool_episode, days=13, per_day=12, reorg_day=5)
    await asyncio.to_thread(ep.apply_reorg)
    await asyncio.to_thread(ep.mine_rest)
    async with BitcoindServer(ep.chain) as node:
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(
            cfg.write_text,
            config_toml(
                db=tmp_path / "m.db",
                prices=BUNDLED_PRICES,
                sources=[
                    {
                        "name": "node",
                        "type": "bitcoind",
                        "url": node.url,
                        "rpc_user": "rpcuser",
                        "rpc_password": {"env": "TM_TEST_RPC_PASSWORD"},
                    }
                ],
            ),
        )
        env = {"TM_TEST_RPC_PASSWORD": "rpcpassword"}
        r = await cli_run("-c", cfg, "miners", "backfill", "--days", "1", "--no-progress", env=env)
        assert r.exit_code == 0, r.output
        r = await cli_run("-c", cfg, "miners", "--json", env=env)
    assert r.exit_code == 0, r.output
    view = json.loads(r.output)
    window = [b for b in ep.best_blocks() if b.height > ep.chain.height - 144]
    expected: dict[str, list[int]] = {}
    for b in window:
        e = expected.setdefault(b.pool, [0, 0])
        e[0] += 1
        e[1] += b.reward
    assert {p["pool"]: [p["blocks"], p["produced_sat"]] for p in view["pools"]} == expected
    assert view["blocks_scanned"] == 144


FOUNDRY_PAYOUT = "bc1qxhmdufsvnuaaaer4ynz88fspdsxq2h9e9cetdj"  # pools-v2, Foundry USA
ANTPOOL_PAYOUT = "12dRugNcdxK39288NjcDV4GX7rMsKCGn6B"  # pools-v2, AntPool


async def test_pool_payout_outflows_count_by_kind_into_miner_to_exchange(tmp_path, pools):
    """Spends from pool payout addresses (of coins the scan saw arrive) join the miners' outflows by kind."""
    labels = SimChain()
    exch, stranger, mara_hot = (labels.address(x) for x in ("pool exch", "pool stranger", "pool mara hot"))
    kind_of_dest = {exch: "exchange", stranger: "unknown", mara_hot: "miner"}
    sends = {
        10: [(FOUNDRY_PAYOUT, ((exch, 4 * 10**8), (stranger, 10**8))), (mara_hot, ((exch, 3 * 10**8),))],
        11: [(ANTPOOL_PAYOUT, ((exch, 2 * 10**8), (mara_hot, 15 * 10**7)))],
    }
    ep = await asyncio.to_thread(
        build_pool_episode, days=12, per_day=12, reorg_day=4, wallets={mara_hot: 50 * 10**8}, transfers=sends
    )
    await asyncio.to_thread(ep.apply_reorg)
    await asyncio.to_thread(ep.mine_rest)
    db = tmp_path / "m.db"
    async with EsploraServer(ep.chain) as server:
        store = AsyncStore(await asyncio.to_thread(Store, db))
        async with aiohttp.ClientSession() as session:
            reader = EsploraCoinbases(
                HttpClient(
                    "esplora", [server.url], session, clock=FrozenClock(), rng=random.Random(1), retries=1, rate_limit=None
                )
            )
            await scan_blocks(store, reader, start=first_height(ep), end=ep.chain.height, now=NOW, pools=pools)
            res = await follow_tip(store, reader, now=NOW, pools=pools)
            again = await follow_tip(store, reader, now=NOW, pools=pools)
        await store.close()
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(
            cfg.write_text,
            config_toml(
                db=db,
                sources=[esplora_source("local", server.url, rate_limit=1000.0)],
                prices=BUNDLED_PRICES,
                entities=[entity_table("MARA", "miner", [mara_hot]), entity_table("CC Exchange", "exchange", [exch])],
            ),
        )
        assert (await cli_run("-c", cfg, "poll")).exit_code == 0
        r = await cli_run("-c", cfg, "miners", "--json")
        page_path = tmp_path / "report.html"
        rep = await cli_run("-c", cfg, "report", "--out", page_path)
    assert r.exit_code == 0, r.output
    assert rep.exit_code == 0, rep.output
    view = json.loads(r.output)
    assert res.error == "" and res.spends == 2 and again.spends == 0  # each spend is read once

    # expected from the script: every scripted payment, by who paid it and to what kind of destination
    pool_expected: dict[str, int] = {}
    all_expected: dict[str, int] = {}
    for day_sends in sends.values():
        for source, outs in day_sends:
            for dest, value in outs:
                all_expected[kind_of_dest[dest]] = all_expected.get(kind_of_dest[dest], 0) + value
                if source in (FOUNDRY_PAYOUT, ANTPOOL_PAYOUT):
                    pool_expected[kind_of_dest[dest]] = pool_expected.get(kind_of_dest[dest], 0) + value

    def by_kind(rows):
        out: dict[str, int] = {}
        for f in rows:
            out[f["kind"]] = out.get(f["kind"], 0) + f["sat"]
        return out

    assert by_kind(view["pool_flows"]) == pool_expected
    assert by_kind(view["flows"]) == all_expected  # MARA's own sale and the pools' payouts together
    assert sum(d["sat"] for d in view["miner_to_exchange"]) == all_expected["exchange"]
    # the pool spends' change went back to the pool addresses: not an outflow, a coin followed further
    rows = await asyncio.to_thread(
        lambda: sqlite3.connect(db).execute("select pool, count(*) from pool_coins where coinbase = 0 group by pool").fetchall()
    )
    assert dict(rows) == {"Foundry USA": 1, "AntPool": 1}

    # the static report's miner view: production by pool as scripted, the outflow kinds, the MPI line
    page = await asyncio.to_thread(page_path.read_text)
    section = page.split("<section id='miners'>", 1)[1].split("</section>", 1)[0]
    for pool, (blocks, reward) in ep.expected_by_pool().items():
        assert re.search(
            rf"<tr><td>{re.escape(pool)}</td><td>{blocks:,}</td><td>[\d.]+%</td>"
            rf"<td>[\d,.]+</td><td>[\d,.]+</td><td>{reward / 1e8:,.2f}</td>",
            section,
        ), pool
    exch_btc = all_expected["exchange"] / 1e8
    assert f"<tr><td>exchange</td><td>{exch_btc:,.2f}</td><td>{pool_expected['exchange'] / 1e8:,.2f}</td></tr>" in section
    assert f"Miner-to-exchange: {exch_btc:,.2f} BTC" in section and "Miner Position Index" in section


async def test_a_reorg_undoes_a_pool_spend_it_orphans(env, pools):
    ep, server, store, reader = env
    chain = ep.chain
    mature = await asyncio.to_thread(chain.mine, 100)  # the episode's first coinbases mature
    dest = chain.address("reorg pool dest")
    spend = chain.pay([FOUNDRY_PAYOUT], [(dest, 2 * 10**8)], fee=10_000)
    chain.mine(time=mature[-1].time + 600)
    await scan_blocks(store, reader, start=first_height(ep), end=chain.height, now=NOW, pools=pools)
    first = await follow_tip(store, reader, now=NOW, pools=pools)
    assert first.spends == 1
    assert [(r["txid"], r["address"], r["value_units"]) for r in await store.run(pool_outflow_rows)] == [
        (spend.txid, dest, 2 * 10**8)
    ]

    chain.reorg(1, drop_txids=[spend.txid])  # the spend's block is orphaned and the spend is gone
    res = await follow_tip(store, reader, now=NOW, pools=pools)
    assert res.orphaned == 1 and res.spends == 0
    assert await store.run(pool_outflow_rows) == []
    spent = await asyncio.to_thread(
        lambda: (
            sqlite3.connect(store_path(store))
            .execute("select count(*) from pool_coins where spent_by is not null or coinbase = 0")
            .fetchone()[0]
        )
    )
    assert spent == 0  # the coins it spent are unspent again, its change is gone


async def test_core_follows_pool_spends_block_by_block_like_esplora_per_coin(tmp_path, pools):
    """A Core node (no spender index: each block's spends of pool coins) and Esplora (outspends per coin) store
    the same pool outflows, as scripted, and both undo a spend a reorg drops."""
    labels = SimChain()
    exch, stranger, mara_hot = (labels.address(x) for x in ("core exch", "core stranger", "core mara hot"))
    sends = {
        10: [(FOUNDRY_PAYOUT, ((exch, 4 * 10**8), (stranger, 10**8)))],
        11: [(ANTPOOL_PAYOUT, ((exch, 2 * 10**8), (mara_hot, 15 * 10**7)))],
    }
    ep = await asyncio.to_thread(build_pool_episode, days=12, per_day=12, reorg_day=4, transfers=sends)
    await asyncio.to_thread(ep.apply_reorg)
    await asyncio.to_thread(ep.mine_rest)
    ant_spend = ep.transfer_txids[-1]
    stores = {k: AsyncStore(await asyncio.to_thread(Store, tmp_path / f"{k}.db")) for k in ("core", "esplora")}

    def outflows(rows):
        return sorted((r["txid"], r["n"], r["pool"], r["address"], r["value_units"], r["block_height"]) for r in rows)

    def scripted(days):
        return sorted((dest, value) for d in days for _, outs in sends[d] for dest, value in outs)

    try:
        async with BitcoindServer(ep.chain) as node, EsploraServer(ep.chain) as server, aiohttp.ClientSession() as session:
            readers = {
                "core": BitcoindCoinbases(
                    BitcoindRpc(
                        node.url,
                        session,
                        clock=FrozenClock(),
                        user="rpcuser",
                        password="rpcpassword",
                        rng=random.Random(1),
                        retries=1,
                    )
                ),
                "esplora": EsploraCoinbases(
                    HttpClient(
                        "esplora", [server.url], session, clock=FrozenClock(), rng=random.Random(1), retries=1, rate_limit=None
                    )
                ),
            }
            got = {}
            for k, reader in readers.items():
                await scan_blocks(stores[k], reader, start=first_height(ep), end=ep.chain.height, now=NOW, pools=pools)
                res = await follow_tip(stores[k], reader, now=NOW, pools=pools)
                assert res.error == ""
                got[k] = outflows(await stores[k].run(pool_outflow_rows))
            assert got["core"] == got["esplora"]
            assert sorted((r[3], r[4]) for r in got["core"]) == scripted([10, 11])

            # the whole of day 11 is orphaned and the AntPool spend dropped with it
            await asyncio.to_thread(ep.chain.reorg, 12, drop_txids=[ant_spend])
            for k, reader in readers.items():
                res = await follow_tip(stores[k], reader, now=NOW, pools=pools)
                assert res.error == "" and res.orphaned == 12
                got[k] = outflows(await stores[k].run(pool_outflow_rows))
        assert got["core"] == got["esplora"]
        assert sorted((r[3], r[4]) for r in got["core"]) == scripted([10])
        assert ant_spend not in {r[0] for r in got["core"]}
    finally:
        for s in stores.values():
            await s.close()


async def test_a_malformed_core_answer_stops_the_scan_clearly_and_loses_nothing(tmp_path, pools):
    ep = await asyncio.to_thread(build_pool_episode, days=4, per_day=12, reorg_day=3)
    bad_height = first_height(ep) + 25
    broken = {"on": True}

    def mutate(method, params, result):
        if (
            broken["on"]
            and method == "getrawtransaction"
            and len(params) == 3
            and ep.chain.block_by_hash(params[2]).height == bad_height
        ):
            return {**result, "vout": [{**result["vout"][0], "value": 1.5e-9}]}  # not a whole number of sats
        return result

    store = AsyncStore(await asyncio.to_thread(Store, tmp_path / "m.db"))
    try:
        async with BitcoindServer(ep.chain, mutate=mutate) as node, aiohttp.ClientSession() as session:
            reader = BitcoindCoinbases(
                BitcoindRpc(
                    node.url,
                    session,
                    clock=FrozenClock(),
                    user="rpcuser",
                    password="rpcpassword",
                    rng=random.Random(1),
                    retries=1,
                )
            )
            end = ep.chain.height
            stopped = await scan_blocks(store, reader, start=first_height(ep), end=end, now=NOW, pools=pools)
            assert "vout[0].value" in stopped.error and stopped.scanned == 20  # the two pages before it are kept
            broken["on"] = False
            done = await scan_blocks(store, reader, start=first_height(ep), end=end, now=NOW, pools=pools)
        assert done.error == "" and done.skipped == 20 and done.scanned == end - first_height(ep) + 1 - 20
        assert await by_pool(store) == ep.expected_by_pool()
    finally:
        await store.close()
