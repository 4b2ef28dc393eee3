"""What a self-hosted mempool.space server really sends, through the real Esplora watcher and pipeline.

mempool.space on its `none`/`electrum` backends converts Bitcoin Core's answers into Esplora's shape
(mempool/mempool backend/src/api/bitcoin/bitcoin-api.ts `$convertTransaction`): `"scriptpubkey_address": ""`
for every output without an address (OP_RETURN, bare multisig, P2PK), on outputs and prevouts, and a
coinbase input as `{"txid": "", "vout": 0, "prevout": null, "is_coinbase": true}`. The local Esplora
server speaks that dialect (`dialect="mempool-core"`); the same chain is served at once in electrs'
shapes, and the flows stored from both must be the same, with the numbers the chain holds.
"""

import asyncio
import json
import random
from pathlib import Path

import aiohttp
from builders import (
    COIN,
    MARCH_5_2026,
    cli_run,
    config_toml,
    entity_table,
    esplora_source,
    miner_profile,
    sourced,
)

from monitor.clock import FrozenClock
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from watchers.esplora import EsploraSource
from watchers.http import HttpClient

PUB_A = bytes.fromhex("02" + "11" * 32)
PUB_B = bytes.fromhex("03" + "22" * 32)
P2PK = b"\x21" + PUB_A + b"\xac"
BARE_MULTISIG = b"\x51" + b"\x21" + PUB_A + b"\x21" + PUB_B + b"\x52\xae"


def write_config(directory: Path, url: str, addrs: dict[str, str], mode: str = "address") -> Path:
    directory.mkdir(exist_ok=True)
    cfg = directory / "config.toml"
    cfg.write_text(
        config_toml(
            db=directory / "tm.db",
            sources=[esplora_source("local", url, rate_limit=200.0, timeout=5.0, mode=mode)],
            entities=[
                entity_table("Test Miner", "miner", sourced([addrs["hot"]]), profile=miner_profile()),
                entity_table("Test Exchange", "exchange", sourced([addrs["exchange"]]), watch=False),
            ],
        )
    )
    return cfg


async def flows(cfg: Path) -> dict[str, dict]:
    r = await cli_run("-c", cfg, "export", "--format", "jsonl")
    assert r.exit_code == 0, r.output
    return {rec["txid"]: rec for rec in map(json.loads, r.output.splitlines())}


def _chain_facts(records: dict[str, dict]) -> dict[str, dict]:
    # seen_at and classified_at say when each run stored them (wall time), not what the chain says
    out = {}
    for txid, rec in records.items():
        rec = {k: v for k, v in rec.items() if k != "seen_at"}
        if rec.get("classification"):
            rec["classification"] = {k: v for k, v in rec["classification"].items() if k != "classified_at"}
        out[txid] = rec
    return out


async def test_empty_address_and_empty_coinbase_txid_keep_the_address_monitored(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    addrs = {k: chain.address(f"shapes-{k}") for k in ("hot", "exchange")}
    [payout_block] = chain.mine(coinbase_to=addrs["hot"])  # a pool payout straight from a coinbase
    funding = chain.fund(addrs["hot"], 30 * COIN)
    odd = chain.pay([addrs["hot"]], [(None, 0), (BARE_MULTISIG, 1_000), (P2PK, 2 * COIN)], fee=2_000)
    chain.mine()
    # spends the P2PK output: an input whose prevout has no address
    back = chain.pay([], [(addrs["hot"], 2 * COIN - 1_500)], inputs=[(odd.txid, 2)], fee=1_500)
    chain.mine()

    async with EsploraServer(chain, dialect="mempool-core") as mempool, EsploraServer(chain) as electrs:
        # the server really answers in mempool.space's dialect
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{mempool.url}/tx/{payout_block.coinbase.txid}") as resp:
                coinbase = await resp.json()
            async with s.get(f"{mempool.url}/tx/{odd.txid}") as resp:
                odd_json = await resp.json()
        assert coinbase["vin"][0]["txid"] == "" and coinbase["vin"][0]["vout"] == 0
        assert coinbase["vin"][0]["prevout"] is None and coinbase["vin"][0]["is_coinbase"] is True
        assert [o["scriptpubkey_address"] for o in odd_json["vout"][:3]] == ["", "", ""]

        cfg_m = await asyncio.to_thread(write_config, tmp_path / "mempool", mempool.url, addrs)
        cfg_e = await asyncio.to_thread(write_config, tmp_path / "electrs", electrs.url, addrs)
        for cfg in (cfg_m, cfg_e):
            r = await cli_run("-c", cfg, "backfill", "--no-progress")
            assert r.exit_code == 0, r.output
            assert "local: 4 txs (4 new)" in r.output, r.output

        # the address is still monitored: a later sale is seen by the next poll; in its block a stranger's
        # 14-input consolidation, whose later prevouts mempool.space leaves null on block pages (fee -1)
        stranger = chain.address("shapes-stranger")
        chain.fund_many([(stranger, 10_000 + i) for i in range(14)])
        chain.mine()
        lazy = chain.pay([stranger], [(stranger, 100_000)], fee=40_000)
        sale = chain.pay([addrs["hot"]], [(addrs["exchange"], 12 * COIN)], fee=3_000)
        [sale_block] = chain.mine()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{mempool.url}/block/{sale_block.hash}/txs/0") as resp:
                page = {t["txid"]: t for t in await resp.json()}
        assert page[lazy.txid]["fee"] == -1 and page[lazy.txid]["vin"][13]["prevout"] is None
        for cfg in (cfg_m, cfg_e):
            r = await cli_run("-c", cfg, "poll")
            assert r.exit_code == 0 and "local: 1 txs (1 new)" in r.output, r.output
            assert "failed" not in r.output and "skipped" not in r.output, r.output

        got, reference = await flows(cfg_m), await flows(cfg_e)

    assert _chain_facts(got) == _chain_facts(reference)
    assert set(got) == {payout_block.coinbase.txid, funding.txid, odd.txid, back.txid, sale.txid}

    payout_value = sum(o.value for o in payout_block.coinbase.vout if o.address == addrs["hot"])
    assert payout_value > 0
    rec = got[payout_block.coinbase.txid]
    assert rec["direction"] == "in" and rec["received_units"] == payout_value and rec["spent_units"] == 0

    rec = got[odd.txid]  # spends the payout (oldest UTXO first)
    assert rec["spent_units"] == payout_value and rec["fee_share_units"] == 2_000
    assert rec["change_units"] == payout_value - 2 * COIN - 1_000 - 2_000
    no_address = sorted((d["n"], d["value_units"]) for d in rec["destinations"] if d["address"] is None)
    assert no_address == [(1, 1_000), (2, 2 * COIN)]  # a zero-value OP_RETURN moves nothing
    assert rec["out_units"] == 2 * COIN + 1_000

    rec = got[back.txid]
    assert rec["direction"] == "in" and rec["received_units"] == 2 * COIN - 1_500 and rec["spent_units"] == 0

    rec = got[sale.txid]
    assert rec["out_units"] == 12 * COIN
    assert [d["attribution"] for d in rec["destinations"]] == ["exchange:Test Exchange"]
    # hashprice comes from coinbase totals (/block/:hash/txs/0), read through the coinbase's "" txid
    assert rec["classification"]["hashprice_usd"] and rec["classification"]["hashprice_usd"] > 0


async def test_block_mode_reads_payouts_and_odd_outputs_through_mempool_on_core(tmp_path):
    """Block mode reads each matching tx with /tx/:txid: the coinbase payout and "" outputs must parse."""
    chain = SimChain(start_time=MARCH_5_2026)
    addrs = {k: chain.address(f"bm-shapes-{k}") for k in ("hot", "exchange")}
    chain.fund(addrs["hot"], 20 * COIN)
    chain.mine()
    async with EsploraServer(chain, dialect="mempool-core") as mempool, EsploraServer(chain) as electrs:
        cfgs = [
            await asyncio.to_thread(write_config, tmp_path / name, srv.url, addrs, "block")
            for name, srv in (("mempool", mempool), ("electrs", electrs))
        ]
        for cfg in cfgs:
            assert (await cli_run("-c", cfg, "poll")).exit_code == 0  # starts at the tip
        [payout] = chain.mine(coinbase_to=addrs["hot"])
        odd = chain.pay([addrs["hot"]], [(None, 0), (BARE_MULTISIG, 1_000), (addrs["exchange"], 5 * COIN)], fee=2_500)
        chain.mine()
        for cfg in cfgs:
            r = await cli_run("-c", cfg, "poll")
            assert r.exit_code == 0 and "local: 2 txs (2 new)" in r.output, r.output
        got, reference = [await flows(cfg) for cfg in cfgs]
    assert _chain_facts(got) == _chain_facts(reference)
    assert {payout.coinbase.txid, odd.txid} <= set(got)
    assert got[payout.coinbase.txid]["received_units"] == sum(o.value for o in payout.coinbase.vout if o.address == addrs["hot"])
    assert got[odd.txid]["out_units"] == 5 * COIN + 1_000


async def test_block_mode_seeds_through_mempool_electrum_without_txs_mempool_route(tmp_path):
    """No /address/:a/txs/mempool on the electrum backend: seeding reads /txs instead, so a spend of coins
    held before the first poll is seen."""
    chain = SimChain(start_time=MARCH_5_2026)
    addrs = {k: chain.address(f"seed-{k}") for k in ("hot", "exchange")}
    chain.fund(addrs["hot"], 20 * COIN)
    chain.mine()
    async with EsploraServer(chain, dialect="mempool-electrum") as mempool, EsploraServer(chain) as electrs:
        cfgs = [
            await asyncio.to_thread(write_config, tmp_path / name, srv.url, addrs, "block")
            for name, srv in (("mempool", mempool), ("electrs", electrs))
        ]
        for cfg in cfgs:
            r = await cli_run("-c", cfg, "--log-level", "info", "poll")
            assert r.exit_code == 0 and "seeding failed" not in r.output and "block mode seeded" in r.output, r.output
        assert any(p.endswith("/txs/mempool") for p in mempool.requests)  # asked, 404, then /txs
        assert any(p.endswith(f"/address/{addrs['hot']}/txs") for p in mempool.requests)
        sale = chain.pay([addrs["hot"]], [(addrs["exchange"], 5 * COIN)], fee=1_000)
        chain.mine()
        for cfg in cfgs:
            r = await cli_run("-c", cfg, "poll")
            assert r.exit_code == 0, r.output
        got, reference = [await flows(cfg) for cfg in cfgs]
    assert _chain_facts(got) == _chain_facts(reference)
    rec = got[sale.txid]
    assert rec["spent_units"] == 20 * COIN and rec["out_units"] == 5 * COIN


async def _poll_all(server, addresses, cursors):
    clock = FrozenClock()
    async with aiohttp.ClientSession() as session:
        http = HttpClient("esplora", [server.url], session, clock=clock, rng=random.Random(1), retries=0)
        src = EsploraSource("esplora", http, addresses, clock=clock, max_pages=100)
        batch = await src.poll(dict(cursors))
    cursors.update({c.key: c.state for c in batch.cursors})
    return batch


async def test_mempool_electrum_backend_history_pages_by_after_txid():
    """mempool.space on electrum: 10 txs a page through ?after_txid=, no /txs/chain; balances from its sums."""
    chain = SimChain(seed=5, start_time=MARCH_5_2026)
    a = chain.address("electrum-backend")
    for i in range(34):
        chain.fund(a, 10_000 + i, confirmed=False)
        if i % 10 == 9:
            chain.mine()
    chain.mine()
    chain.pay([a], [(chain.address("elsewhere"), 5_000)], fee=500)  # one in the mempool
    async with EsploraServer(chain, dialect="mempool-electrum") as mempool, EsploraServer(chain) as electrs:
        got_cursors: dict[str, str] = {}
        ref_cursors: dict[str, str] = {}
        got = await _poll_all(mempool, [a], got_cursors)
        ref = await _poll_all(electrs, [a], ref_cursors)
        assert got.failed == () and ref.failed == ()
        assert {t.txid for t in got.txs} == {t.txid for t in ref.txs} and len(got.txs) == 35
        assert sorted(got.txs, key=lambda t: t.txid) == sorted(ref.txs, key=lambda t: t.txid)
        [snap], [ref_snap] = got.snapshots, ref.snapshots
        assert (snap.confirmed, snap.mempool_delta) == (ref_snap.confirmed, ref_snap.mempool_delta)
        assert (snap.confirmed, snap.mempool_delta) == (
            chain.balance(a),
            chain.balance(a, include_mempool=True) - chain.balance(a),
        )
        paths = [p for p in mempool.requests if "/txs" in p]
        assert not any("/txs/chain" in p for p in paths)
        assert len(paths) == 4 and all("?after_txid=" in p for p in paths[1:])  # 35 txs: 10 + 10 + 10 + 5

        # a new block: the next poll reads one page and stops at the known boundary
        tx = chain.pay([a], [(chain.address("elsewhere"), 7_000)], fee=600)
        chain.mine()
        before = len(mempool.requests)
        got = await _poll_all(mempool, [a], got_cursors)
        assert {t.txid for t in got.txs} >= {tx.txid} and all(t.is_confirmed for t in got.txs)
        assert [p.split("/")[-1] for p in mempool.requests[before:]] == [a, "txs"]
