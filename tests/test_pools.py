"""Pools: block attribution by payout address and coinbase tag (pools-v2.json), payout following to a miner's
wallets with evidence, candidates accepted and their later sale classified — against the local Esplora
server and a real SQLite file, driven through the CLI as a user would."""

import asyncio
import json

import pytest
from builders import addr, entity, make_tx
from fakes.discovery import COIN, MARCH_5_2026, cli_run, entity_toml, write_config
from fakes.offloop import in_store

from monitor.bundled import load_bundled_entities
from monitor.config import load_config
from monitor.core.registry import Registry
from monitor.discovery.pools import attribute_block, load_pools, payouts_of, production_check, proposals
from monitor.model import SALE_VERDICTS, ChainTx, TxInput, TxOutput
from monitor.run.runtime import build_registry
from monitor.sim.chain import Outpoint, SimChain, subsidy
from monitor.sim.esplora_server import EsploraServer
from storage import Store
from storage.discovery import evidence_rows, pool_block_rows

MARA_POOL = "15MdAHnkxt9TMC2Rj595hsg8Hnv693pPBB"  # pools-v2.json id 115
FOUNDRY = "bc1qxhmdufsvnuaaaer4ynz88fspdsxq2h9e9cetdj"  # pools-v2.json id 111
POOLS = load_pools()


def coinbase(outputs, height=880_100) -> ChainTx:
    ins = (TxInput(None, 0, "00" * 32, 0xFFFFFFFF),)
    outs = tuple(TxOutput(a, v, n) for n, (a, v) in enumerate(outputs))
    return ChainTx("bitcoin", f"{height:064x}", height, 1_772_668_800, ins, outs, 0, "00" * 32, is_coinbase=True)


def test_pools_file_loads_with_mara_pool_tags_and_addresses():
    mara = POOLS.by_name["MARA Pool"]
    assert mara.id == 115 and MARA_POOL in mara.addresses and "MARA Pool" in mara.tags
    assert len(POOLS.pools) == 168
    assert POOLS.pool_of_address(FOUNDRY).name == "Foundry USA"
    # signet pools' tb1 addresses are not mainnet addresses: left out, the pool kept
    assert POOLS.by_name["wiz"].addresses == ("1wizSAYSbuyXbt9d8JV8ytm5acqq2TorC",)
    assert POOLS.by_name["mononaut"].addresses == ()


def test_block_attribution_address_first_then_tag():
    reward = subsidy(880_100)
    by_address = coinbase([(MARA_POOL, reward), (None, 0)])
    a = attribute_block(by_address, POOLS)
    assert (a.pool.name, a.matched_by, a.pool_address, a.reward) == ("MARA Pool", "address", MARA_POOL, reward)
    both = attribute_block(by_address, POOLS, b"\x03\x84\x6d\x0d" + b"\x09MARA Pool")
    assert (both.matched_by, both.tag) == ("address+tag", "MARA Pool")
    # a tag can be written by anyone: the address wins and the disagreement is kept
    fake = attribute_block(by_address, POOLS, b"\x03\x84\x6d\x0d" + b"\x10Foundry USA Pool")
    assert (fake.pool.name, fake.matched_by, fake.tag_pool) == ("MARA Pool", "address", "Foundry USA")
    tag_only = attribute_block(coinbase([(addr("unknown-payout"), reward)]), POOLS, "\u4e03\u5f69\u795e\u4ed9\u9c7c".encode())
    assert (tag_only.pool.name, tag_only.matched_by) == ("F2Pool", "tag")
    assert attribute_block(coinbase([(addr("unknown-payout"), reward)]), POOLS, b"\x03\x84\x6d\x0d") is None
    assert attribute_block(make_tx([(MARA_POOL, 5)], [(addr("x"), 4)]), POOLS) is None  # not a coinbase


def test_payouts_are_the_non_pool_outputs_of_a_tx_spending_from_a_pool_address():
    w1, w2 = addr("member-1"), addr("member-2")
    tx = make_tx([(MARA_POOL, 10 * COIN)], [(w1, 6 * COIN), (w2, 3 * COIN), (MARA_POOL, COIN - 500)])
    pays = payouts_of(tx, POOLS)
    assert [(p.address, p.value, p.pool) for p in pays] == [(w1, 6 * COIN, "MARA Pool"), (w2, 3 * COIN, "MARA Pool")]
    assert payouts_of(tx, POOLS, followed=["Foundry USA"]) == []
    assert payouts_of(make_tx([(w1, 5 * COIN)], [(MARA_POOL, 5 * COIN - 100)]), POOLS) == []  # paying IN is not a payout
    ev = {
        w1: [{"txid": "a", "block_height": 5, "value_units": 10}, {"txid": "b", "block_height": 7, "value_units": 5}],
        w2: [{"txid": "a", "block_height": 5, "value_units": 3}],
    }
    [p] = proposals(ev, entity="MARA", min_payouts=2)
    assert (p.address, p.payouts, p.total, p.first_height, p.last_height, p.status) == (w1, 2, 15, 5, 7, "candidate")
    assert proposals(ev, entity="MARA", min_payouts=2, auto_accept_payouts=2)[0].status == "active"


def mine_mara_pool(chain: SimChain, wallets, n: int, *, extra=None):
    """`n` MARA Pool blocks (tag and payout address from pools-v2.json), each coinbase paid on to a wallet."""
    blocks = chain.mine(n, coinbase_tag="MARA Pool", coinbase_to=MARA_POOL)
    chain.mine(2, coinbase_tag="Foundry USA Pool", coinbase_to=FOUNDRY)  # someone else's blocks
    paid = []
    for i, b in enumerate(blocks):
        cb = b.coinbase
        value = cb.vout[0].value
        outs = [(wallets[i % len(wallets)], value - 1_000)]
        if extra is not None and i == 0:
            outs = [(wallets[0], value - 1_000 - extra[1]), extra]
        tx = chain.pay([], outs, fee=1_000, inputs=[Outpoint(cb.txid, 0)])
        paid.append((tx, outs))
    chain.mine()
    return blocks, paid


async def test_mara_pool_payouts_become_candidates_then_wallets_whose_sale_is_classified(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026 - 86_400)
    wallets = [chain.address(f"mara-wallet-{i}") for i in range(3)]
    one_off = chain.address("paid-once")
    exchange = chain.address("test-exchange")
    blocks, paid = mine_mara_pool(chain, wallets, 30, extra=(one_off, 5_000_000))
    async with EsploraServer(chain) as server:
        cfg = await asyncio.to_thread(
            write_config, tmp_path, server.url, entity_toml("Test Exchange", "exchange", [exchange], watch=False)
        )
        r = await cli_run("-c", cfg, "entities", "discover", "--no-cospend", "--no-trace")
        assert r.exit_code == 0, r.output
        assert (
            "pools (MARA Pool): 60 txs read, 30 new pool block(s), 31 payout output(s); 3 candidate(s) proposed, 0 accepted"
            in r.output
        )

        r = await cli_run("-c", cfg, "entities", "candidates", "--json")
        cands = {c["address"]: c for c in json.loads(r.output)}
        assert set(cands) == set(wallets)  # the one-off recipient (1 payout) is not proposed
        heights = [b.height for b in blocks]
        payout_height = chain.height
        for i, w in enumerate(wallets):
            c = cands[w]
            assert c["entity"] == "MARA" and c["learned_by"] == "pool_payout" and c["status"] == "candidate"
            mine = [(tx, outs) for tx, outs in paid if outs[0][0] == w]
            assert c["payouts"] == 10 and c["payout_units"] == sum(outs[0][1] for _, outs in mine)
            assert (c["first_height"], c["last_height"]) == (payout_height, payout_height)
            assert {e["txid"] for e in c["evidence"]} == {tx.txid for tx, _ in mine}
            # each payout spent a MARA Pool coinbase: the 1-hop evidence names it
            spent = {t for e in c["evidence"] for t in e["detail"]["spent_from"]}
            assert spent == {blocks[k].coinbase.txid for k in range(i, 30, 3)}
            assert "10 MARA Pool payouts" in c["evidence"] or "10 MARA Pool payouts" in c["source"]

        def check_stored(store):
            pb = pool_block_rows(store)
            assert [b["block_height"] for b in pb] == heights
            assert {b["matched_by"] for b in pb} == {"address+tag"} and {b["tag"] for b in pb} == {"MARA Pool"}
            assert sum(b["reward_units"] for b in pb) == 30 * subsidy(heights[0])
            assert evidence_rows(store, address=one_off)[0]["value_units"] == 5_000_000

        await in_store(tmp_path / "tm.db", check_stored)

        r = await cli_run("-c", cfg, "entities", "candidates")
        assert "10 payouts, 31.24990000 BTC" in r.output and "entities accept ADDRESS" in r.output
        for w in wallets:
            r = await cli_run("-c", cfg, "entities", "accept", w)
            assert r.exit_code == 0 and f"accepted {w} for MARA" in r.output, r.output
        assert "no candidates" in (await cli_run("-c", cfg, "entities", "candidates")).output

        # from now on the wallets are watched: their history is read, then a sale to an exchange is classified
        r = await cli_run("-c", cfg, "poll")
        assert r.exit_code == 0 and "local: 30 txs (30 new), 30 entity flows (0 outflows)" in r.output, r.output
        sale = chain.pay([wallets[1]], [(exchange, 25 * COIN)], fee=4_000)
        chain.mine()
        r = await cli_run("-c", cfg, "poll")
        assert "local: 1 txs (1 new), 1 entity flows (1 outflows)" in r.output, r.output
        r = await cli_run("-c", cfg, "export", "--format", "json", "--entity", "MARA", "--direction", "out")
        [rec] = json.loads(r.output)
        assert rec["txid"] == sale.txid and rec["out_units"] == 25 * COIN
        assert rec["destinations"][0]["attribution"] == "exchange:Test Exchange"
        assert rec["classification"]["verdict"] in SALE_VERDICTS

        # on-chain production from the payouts, next to the reported figure, with sources
        r = await cli_run("-c", cfg, "entities", "show", "MARA", "--json")
        d = json.loads(r.output)
        prod = d["production"]
        to_wallets = sum(v for _, outs in paid for a, v in outs if a in wallets)
        assert prod["blocks"] == 30 and prod["block_reward_units"] == 30 * subsidy(heights[0])
        assert prod["payouts"] == 30 and prod["payout_units"] == to_wallets and prod["wallets"] == 3
        assert prod["ratio"] == pytest.approx(to_wallets / (736 * COIN))
        assert "reported 736 BTC/month (MARA Sep 2025 update, as of 2025-09-30)" in prod["text"]
        assert "pools-v2.json" in prod["source"]
        statuses = {a["address"]: (a["status"], a["learned_by"]) for a in d["addresses"]}
        assert all(statuses[w] == ("active", "pool_payout") for w in wallets)


async def test_auto_accept_threshold_and_rejected_recipients_never_return(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    wallets = [chain.address("auto-a"), chain.address("auto-b")]
    mine_mara_pool(chain, wallets, 6)
    async with EsploraServer(chain) as server:
        cfg = await asyncio.to_thread(write_config, tmp_path, server.url)
        r = await cli_run("-c", cfg, "entities", "discover", "--no-cospend", "--no-trace", "--auto-accept", "3")
        assert "0 candidate(s) proposed, 2 accepted" in r.output, r.output
        r = await cli_run("-c", cfg, "entities", "reject", wallets[1])
        assert r.exit_code == 0 and "rejected" in r.output
        mine_mara_pool(chain, wallets, 4)
        r = await cli_run("-c", cfg, "entities", "discover", "--no-cospend", "--no-trace", "--auto-accept", "3")
        assert r.exit_code == 0 and "4 new pool block(s)" in r.output and "0 accepted" in r.output, r.output

        def check_stored(store):
            rows = {a["address"]: a for a in store.address_rows(entity="MARA")}
            assert rows[wallets[0]]["status"] == "active" and rows[wallets[1]]["status"] == "rejected"
            assert "5 MARA Pool payouts" in rows[wallets[0]]["evidence"]  # the summary follows the evidence
            assert len(evidence_rows(store, address=wallets[1], kind="pool_payout")) == 5
            reg = build_registry(load_config(cfg), store)
            prod = production_check(store, reg, "MARA")
            assert prod.blocks == 10 and prod.wallets == 1 and prod.payouts == 5

        await in_store(tmp_path / "tm.db", check_stored)
        # a second pass with nothing new reads one stats request per pool address and changes nothing
        before = len(server.requests)
        r = await cli_run("-c", cfg, "entities", "discover", "--no-cospend", "--no-trace")
        assert "0 txs read, 0 new pool block(s)" in r.output and len(server.requests) - before == 2


def test_recipient_owned_by_another_entity_is_not_proposed(db_path):
    from monitor.discovery.pools import _commit_follow  # the transaction step, on a real file

    exch, member = addr("direct-to-exchange"), addr("member")
    reg = Registry(load_bundled_entities() + [entity("Some Exchange", "exchange", [exch], watch=False)])
    txs = [make_tx([(MARA_POOL, 10 * COIN)], [(exch, 5 * COIN), (member, 5 * COIN - k)], height=880_000 + k) for k in (1, 2)]
    pays = [p for tx in txs for p in payouts_of(tx, POOLS)]
    store = Store(db_path)
    props = _commit_follow(store, [], pays, {"MARA Pool": "MARA"}, reg, [], now=1, min_payouts=2, auto_accept_payouts=None)
    assert [(p.address, p.outcome) for p in props] == [(member, "added")]
    assert evidence_rows(store, address=exch) == []  # an exchange deposit is not the miner's wallet
