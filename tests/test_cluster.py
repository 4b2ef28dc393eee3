"""Co-spend clustering and change heuristics: pure rules, what is stored (evidence, rejected never re-added),
and the whole path on the local Esplora server through the CLI."""

import asyncio
import json

import pytest
from builders import addr, entity, make_tx
from fakes.discovery import COIN, MARCH_5_2026, cli_run, entity_toml, write_config
from fakes.offloop import in_store

from monitor.core.cluster import address_type, apply_learned, change_marks, coinjoin_shape, learn_from_txs
from monitor.core.registry import Registry
from monitor.discovery.jobs import learn_and_commit
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from storage import Store
from storage.discovery import evidence_rows, flag_rows

A = addr("miner-hot")
B = addr("miner-cold")
EXCH = addr("exchange-deposit", "p2pkh")
U1, U2, U3 = addr("unknown-1"), addr("unknown-2"), addr("unknown-3")


@pytest.fixture
def reg():
    return Registry(
        [
            entity("Miner", "miner", [A, B]),
            entity("Other Miner", "miner", [addr("other-miner")]),
            entity("Exchange", "exchange", [EXCH], watch=False),
        ]
    )


def test_cospend_with_an_unknown_input_learns_it_with_the_tx_as_evidence(reg):
    tx = make_tx([(A, 2 * COIN), (U1, COIN)], [(EXCH, 3 * COIN - 500)])
    r = learn_from_txs([tx], reg)
    [item] = r.learned
    assert item.entity == "Miner" and item.address.address == U1
    assert (item.address.learned_by, item.address.evidence) == ("cospend", tx.txid)
    assert item.address.as_of == "2026-03-04" and "common-input-ownership" in item.reason
    assert r.flags == ()
    assert apply_learned(reg, r.learned).entity_of("bitcoin", U1).name == "Miner"


def test_clusters_grow_across_a_batch_and_rejected_or_unconfirmed_stay_out(reg):
    tx1 = make_tx([(A, COIN), (U1, COIN)], [(EXCH, 2 * COIN - 500)], height=880_001)
    tx2 = make_tx([(U1, COIN), (U2, COIN)], [(EXCH, 2 * COIN - 500)], height=880_002)  # U1 is the Miner's now
    assert [x.address.address for x in learn_from_txs([tx1, tx2], reg).learned] == [U1, U2]
    assert [x.address.address for x in learn_from_txs([tx1, tx2], reg, rejected={("bitcoin", U1)}).learned] == []
    mempool = make_tx([(A, COIN), (U3, COIN)], [(EXCH, 2 * COIN - 500)], height=None)
    assert learn_from_txs([mempool], reg).learned == ()
    nobody = make_tx([(U2, COIN), (U3, COIN)], [(EXCH, 2 * COIN - 500)])
    assert learn_from_txs([nobody], reg).learned == ()


def test_coinjoin_shaped_and_two_entity_txs_are_flagged_not_merged(reg):
    cj = make_tx(
        [(A, COIN), (U1, COIN), (U2, COIN), (U3, COIN)],
        [(addr(f"mix-{k}"), 10_000_000) for k in range(5)] + [(addr("mix-change"), 3 * COIN - 51_000_000)],
    )
    assert coinjoin_shape(cj) == (10_000_000, 5)
    r = learn_from_txs([cj], reg)
    assert r.learned == () and [(f.kind, f.entity, f.txid) for f in r.flags] == [("coinjoin", "Miner", cj.txid)]
    assert "5 outputs of 10000000 sat" in r.flags[0].detail
    mixed = make_tx([(A, COIN), (EXCH, COIN), (U1, COIN)], [(addr("somewhere"), 3 * COIN - 500)])
    r = learn_from_txs([mixed], reg)
    assert r.learned == () and r.flags[0].kind == "mixed_entities" and "Miner, Exchange" in r.flags[0].detail
    two = make_tx([(A, COIN), (addr("other-miner"), COIN)], [(addr("x"), 2 * COIN - 500)])
    assert learn_from_txs([two], reg).flags[0].entity == "Miner, Other Miner"
    # two equal outputs are an ordinary payment, not a CoinJoin
    assert coinjoin_shape(make_tx([(A, COIN), (U1, COIN)], [(addr("p"), COIN // 2), (addr("q"), COIN // 2)])) is None


def test_change_heuristics_name_the_output_they_single_out(reg):
    fresh = addr("fresh-change")  # p2wpkh like the input
    tx = make_tx([(A, 5 * COIN)], [(EXCH, 2 * COIN), (fresh, 299_987_654)])
    [m] = change_marks(tx, "Miner", reg, seen={A, EXCH})
    assert (m.n, m.address, m.heuristics) == (1, fresh, ("same_script_type", "non_round_amount", "fresh_address"))
    r = learn_from_txs([tx], reg)
    [cand] = r.candidates
    assert cand.address.address == fresh and cand.address.learned_by == "change" and "non_round_amount" in cand.reason
    # both outputs of the input's type and both round: no heuristic singles one out
    flat = make_tx([(A, 5 * COIN)], [(addr("p1"), 2 * COIN), (addr("p2"), 2 * COIN + 990 * 100_000)], fee=1_000_000)
    assert change_marks(flat, "Miner", reg) == []
    # a spend with someone else's input is not judged
    assert change_marks(make_tx([(A, COIN), (U1, COIN)], [(EXCH, COIN), (fresh, 12_345)]), "Miner", reg) == []


def test_address_types_from_their_form():
    assert [address_type(addr("t", k)) for k in ("p2wpkh", "p2pkh", "p2sh", "p2tr")] == ["p2wpkh", "p2pkh", "p2sh", "p2tr"]
    assert address_type("bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3") == "p2wsh"
    assert address_type(None) is None


def test_learned_addresses_are_stored_with_evidence_and_rejected_ones_never_come_back(reg, db_path):
    store = Store(db_path)
    tx = make_tx([(A, COIN), (U1, COIN), (U2, COIN)], [(EXCH, 3 * COIN - 500)])
    store.add_addresses("Miner", [], now=0)
    with store.batch():
        c = learn_and_commit(store, [tx], reg, now=10)
    assert {x.address.address for x in c.added} == {U1, U2}
    learned = {a.address: a for a in store.learned_addresses()["Miner"]}
    assert learned[U1].learned_by == "cospend" and learned[U1].evidence == tx.txid
    assert evidence_rows(store, address=U1)[0]["detail"]["reason"].startswith("spent together with Miner's inputs")
    store.set_address_status("bitcoin", U1, "rejected")
    with store.batch():
        again = learn_and_commit(store, [tx], reg, now=20)
    assert again.added == ()  # U1 is rejected, U2 already known
    assert [r["status"] for r in store.address_rows(entity="Miner") if r["address"] == U1] == ["rejected"]


async def test_cospend_on_the_local_server_through_the_cli(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    hot, exch = chain.address("cs-hot"), chain.address("cs-exchange")
    stranger = chain.address("cs-stranger", "p2pkh")
    mixers = [chain.address(f"cs-mixer-{k}") for k in range(3)]
    chain.fund(hot, 10 * COIN)
    chain.fund(hot, 10 * COIN)
    s_out = chain.fund(stranger, 3 * COIN)
    m_outs = [chain.fund(m, COIN) for m in mixers]
    async with EsploraServer(chain) as server:
        cfg = await asyncio.to_thread(
            write_config,
            tmp_path,
            server.url,
            entity_toml("CS Miner", "miner", [hot]) + entity_toml("CS Exchange", "exchange", [exch], watch=False),
        )
        assert (await cli_run("-c", cfg, "backfill", "--no-progress")).exit_code == 0
        hot_utxos = [(u.txid, u.vout) for u in chain.utxos(hot)]
        cospend = chain.pay(
            [], [(exch, 12 * COIN)], fee=2_000, inputs=[hot_utxos[0], (s_out.txid, s_out.vout)], change_address=hot
        )
        coinjoin = chain.pay(
            [],
            [(chain.address(f"cj-out-{k}"), COIN - 10_000) for k in range(4)],
            fee=2_000,
            inputs=[hot_utxos[1]] + [(o.txid, o.vout) for o in m_outs[:2]] + [(m_outs[2].txid, m_outs[2].vout)],
            change_address=hot,
        )
        chain.mine()
        # the pipeline learns co-spent addresses during the poll itself (before computing flows)
        assert (await cli_run("-c", cfg, "poll")).exit_code == 0
        flow = await in_store(tmp_path / "tm.db", Store.get_flow, "bitcoin", cospend.txid, "CS Miner")
        assert flow.spent == 13 * COIN  # the stranger's 3 BTC input counts as the entity's own
        assert flow.out == 12 * COIN
        # so a discovery pass over the stored txs has nothing left to learn
        r = await cli_run("-c", cfg, "entities", "discover", "--no-pools", "--no-trace")
        assert r.exit_code == 0, r.output
        assert "co-spend: 0 address(es) learned" in r.output
        r = await cli_run("-c", cfg, "entities", "show", "CS Miner", "--json")
        d = json.loads(r.output)
        rows = {a["address"]: a for a in d["addresses"]}
        assert rows[stranger]["learned_by"] == "cospend" and rows[stranger]["evidence"] == cospend.txid
        assert not any(m in rows for m in mixers)
        assert [(f["txid"], f["kind"]) for f in d["flags"]] == [(coinjoin.txid, "coinjoin")]
        # the learned address is watched from the next poll: its own history is read
        r = await cli_run("-c", cfg, "poll")
        assert r.exit_code == 0 and "local: 2 txs" in r.output, r.output
        assert len(await in_store(tmp_path / "tm.db", flag_rows)) == 1
