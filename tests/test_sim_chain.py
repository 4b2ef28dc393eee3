"""SimChain: real serialization (checked against bitcoinlib and by hand), UTXO accounting, RBF, reorgs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from bitcoinlib.blocks import Block
from bitcoinlib.transactions import Transaction

from monitor.sim.chain import (
    COIN,
    NULL_TXID,
    Outpoint,
    SimChain,
    bits_from_difficulty,
    difficulty_from_bits,
    merkle_root,
    subsidy,
)
from watchers.addresses import validate_address

DATA = Path(__file__).parent / "data" / "esplora"
KINDS = {"p2wpkh": "p2wpkh", "p2pkh": "p2pkh", "p2sh": "p2sh", "p2wsh": "p2wsh", "p2tr": "p2tr"}


def sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def read_varint(raw: bytes, i: int) -> tuple[int, int]:
    first = raw[i]
    if first < 0xFD:
        return first, i + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(raw[i + 1 : i + 1 + width], "little"), i + 1 + width


def strip_witness(raw: bytes) -> bytes:
    """Non-witness serialization of a (possibly BIP-144) tx, parsed by hand as an independent check."""
    if raw[4:6] != b"\x00\x01":
        return raw
    i = 6
    n_in, i = read_varint(raw, i)
    for _ in range(n_in):
        i += 36
        ln, i = read_varint(raw, i)
        i += ln + 4
    n_out, i = read_varint(raw, i)
    for _ in range(n_out):
        i += 8
        ln, i = read_varint(raw, i)
        i += ln
    body_end = i
    for _ in range(n_in):
        items, i = read_varint(raw, i)
        for _ in range(items):
            ln, i = read_varint(raw, i)
            i += ln
    assert len(raw) - i == 4, "locktime must follow the witnesses"
    return raw[:4] + raw[6:body_end] + raw[i:]


@pytest.fixture
def chain() -> SimChain:
    return SimChain()


def funded(chain: SimChain, label: str, kind: str = "p2wpkh", value: int = 10 * COIN) -> str:
    addr = chain.address(label, kind)
    chain.fund(addr, value)
    return addr


# --- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_address_kinds_are_valid_mainnet_addresses_of_their_type(chain, kind):
    addr = chain.address("treasury", kind)
    info = validate_address(addr, "mainnet")
    assert info.type == KINDS[kind]
    assert chain.address("treasury", kind) == addr  # deterministic
    assert SimChain(seed=7).address("treasury", kind) == addr  # label-derived, not seed-derived
    assert chain.address("other", kind) != addr


def test_address_on_testnet_and_unknown_kind():
    chain = SimChain(network="testnet")
    assert chain.address("x").startswith("tb1q")
    with pytest.raises(ValueError):
        chain.address("x", "p2pk")


# --- transactions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_spends_of_every_script_type_serialize_to_their_txid(chain, kind):
    src = funded(chain, "src", kind)
    dest = chain.address("dest")
    tx = chain.pay([src], [(dest, COIN), (None, 0)], fee=2_000)
    assert sha256d(strip_witness(tx.raw))[::-1].hex() == tx.txid
    assert sha256d(tx.raw)[::-1].hex() == tx.wtxid
    assert tx.base_size == len(strip_witness(tx.raw))
    assert tx.weight == tx.base_size * 3 + tx.size
    parsed = Transaction.parse_hex(tx.hex)
    assert parsed.txid == tx.txid
    assert [o.value for o in parsed.outputs] == [o.value for o in tx.vout]
    assert tx.has_witness == (kind != "p2pkh")
    assert parsed.witness_type == ("legacy" if kind == "p2pkh" else "segwit")


def test_pay_selects_coins_makes_change_and_accounts_the_fee(chain):
    src = chain.address("src")
    chain.fund(src, 3 * COIN)
    chain.fund(src, 2 * COIN)
    dest = chain.address("dest", "p2pkh")
    tx = chain.pay([src], [(dest, 4 * COIN)], fee=5_000)
    assert len(tx.vin) == 2  # needed both coins, oldest first
    assert tx.vout[0].address == dest and tx.vout[0].value == 4 * COIN
    assert tx.change_n == 1 and tx.vout[1].address == src
    assert tx.vout[1].value == 5 * COIN - 4 * COIN - 5_000
    assert sum(chain.prevout(i.txid, i.vout).value for i in tx.vin) - sum(o.value for o in tx.vout) == tx.fee
    assert chain.in_mempool(tx.txid) and chain.tx_status(tx.txid) is None
    assert chain.balance(src) == 5 * COIN
    assert chain.balance(src, include_mempool=True) == COIN - 5_000


def test_pay_errors(chain):
    src = funded(chain, "src", value=COIN)
    dest = chain.address("dest")
    with pytest.raises(ValueError, match="insufficient funds"):
        chain.pay([src], [(dest, COIN)], fee=1)
    with pytest.raises(ValueError, match="unknown output|not a known output"):
        chain.pay([], [(dest, 1)], inputs=[Outpoint("11" * 32, 0)])
    utxo = chain.utxos(src)[0]
    chain.pay([], [(dest, 1_000)], inputs=[(utxo.txid, utxo.vout)], change_address=src)
    with pytest.raises(ValueError, match="already spent"):
        chain.pay([], [(dest, 1_000)], inputs=[(utxo.txid, utxo.vout)])
    with pytest.raises(ValueError):
        chain.pay([src], [("bc1qnotanaddress", 1)])


def test_exact_payment_makes_no_change_and_op_return_has_no_address(chain):
    src = funded(chain, "src", value=COIN)
    tx = chain.pay([src], [(chain.address("d"), COIN - 1_000), (None, 0)], fee=1_000)
    assert tx.change_n is None and len(tx.vout) == 2
    assert tx.vout[1].address is None and tx.vout[1].script[0] == 0x6A and tx.vout[1].value == 0


def test_unconfirmed_outputs_can_be_spent_and_mined_together(chain):
    a = funded(chain, "a")
    b, c = chain.address("b"), chain.address("c")
    parent = chain.pay([a], [(b, 2 * COIN)])
    child = chain.pay([b], [(c, COIN)])
    assert child.vin[0].txid == parent.txid
    with pytest.raises(ValueError, match="not included before"):
        chain.mine(txs=[child.txid])
    (block,) = chain.mine()
    assert block.txids[1:] == [parent.txid, child.txid]
    assert chain.mempool == []


# --- blocks ---------------------------------------------------------------------------------------


def test_blocks_are_byte_exact_and_link_up(chain):
    a = funded(chain, "a", "p2pkh")
    w = funded(chain, "w", "p2tr")
    dest = chain.address("dest", "p2wsh")
    t1 = chain.pay([a], [(dest, COIN)], fee=3_000)
    t2 = chain.pay([w], [(dest, COIN)], fee=4_000)
    (block,) = chain.mine(coinbase_tag="/Foundry USA Pool #dropgold/", coinbase_to=chain.address("foundry"))
    raw = block.raw()
    assert len(raw) == block.size and raw[:80] == block.header
    assert sha256d(raw[:80])[::-1].hex() == block.hash
    assert raw[4:36][::-1].hex() == block.prev_hash == chain.block_at(block.height - 1).hash
    assert raw[36:68][::-1].hex() == block.merkle_root
    assert merkle_root([bytes.fromhex(t)[::-1] for t in block.txids])[::-1].hex() == block.merkle_root
    assert int.from_bytes(raw[68:72], "little") == block.time
    assert int.from_bytes(raw[72:76], "little") == block.bits
    assert int.from_bytes(raw[76:80], "little") == block.nonce
    stripped_total = 80 + 1 + sum(len(strip_witness(t.raw)) for t in block.txs)
    assert block.weight == stripped_total * 3 + block.size

    parsed = Block.parse_bytes(raw, parse_transactions=True)
    assert parsed.block_hash.hex() == block.hash
    assert parsed.merkle_root.hex() == block.merkle_root
    assert [t.txid for t in parsed.transactions] == block.txids == [block.coinbase.txid, t1.txid, t2.txid]

    cb = block.coinbase
    assert cb.is_coinbase and cb.vin[0].txid == NULL_TXID and cb.vin[0].vout == 0xFFFFFFFF
    script_sig = cb.vin[0].script_sig
    assert script_sig[0] == 3 and int.from_bytes(script_sig[1:4], "little") == block.height  # BIP-34
    assert b"/Foundry USA Pool #dropgold/" in script_sig
    assert cb.vout[0].address == chain.address("foundry")
    assert cb.vout[0].value == subsidy(block.height) + 7_000
    # BIP-141 commitment: last output, over the wtxid merkle root with the coinbase's wtxid as zero.
    wtxids = [b"\x00" * 32] + [sha256d(t.raw) for t in block.txs[1:]]
    commitment = sha256d(merkle_root(wtxids) + cb.vin[0].witness[0])
    assert cb.vout[-1].script == b"\x6a\x24\xaa\x21\xa9\xed" + commitment and cb.vout[-1].value == 0


def test_block_sequence_times_median_and_determinism():
    def build(seed):
        c = SimChain(seed=seed, start_height=839_998, start_time=1_713_000_000)
        c.mine(4)
        return c

    c = build(1)
    assert [b.height for b in c.blocks] == [839_998, 839_999, 840_000, 840_001]
    assert [b.time for b in c.blocks] == [1_713_000_000 + 600 * i for i in range(4)]
    assert c.blocks[-1].median_time == 1_713_001_200  # Core's median of the 4 times available: sorted[4 // 2]
    assert [b.coinbase.vout[0].value for b in c.blocks] == [625_000_000] * 2 + [312_500_000] * 2
    assert build(1).tip.hash == c.tip.hash
    assert build(2).tip.hash != c.tip.hash
    (b,) = c.mine(time=1_713_100_000)
    assert b.time == 1_713_100_000


def test_subsidy_and_difficulty_encoding():
    assert subsidy(0) == 50 * COIN and subsidy(209_999) == 50 * COIN and subsidy(210_000) == 25 * COIN
    assert subsidy(840_000) == 312_500_000 and subsidy(64 * 210_000) == 0
    block = json.loads((DATA / "mempool_docs_mainnet_block.json").read_text())
    assert difficulty_from_bits(block["bits"]) == pytest.approx(block["difficulty"], rel=1e-12)
    assert bits_from_difficulty(block["difficulty"]) == block["bits"]
    assert difficulty_from_bits(0x1D00FFFF) == 1.0
    for d in (1.0, 144.4e12, 110.45e12, 2.5e6):
        assert difficulty_from_bits(bits_from_difficulty(d)) == pytest.approx(d, rel=1e-4)


def test_set_difficulty_applies_to_later_blocks(chain):
    (b1,) = chain.mine()
    chain.set_difficulty(100e12)
    (b2,) = chain.mine()
    (b3,) = chain.mine(difficulty=150e12)
    assert b1.difficulty == pytest.approx(144.4e12, rel=1e-4)
    assert b2.difficulty == pytest.approx(100e12, rel=1e-4) and b2.bits == bits_from_difficulty(100e12)
    assert b3.difficulty == pytest.approx(150e12, rel=1e-4)


def test_coinbase_outputs_split_the_reward(chain):
    pool, a, b = chain.address("pool"), chain.address("payout-a"), chain.address("payout-b", "p2pkh")
    (block,) = chain.mine(coinbase_outputs=[(a, COIN), (b, COIN)], coinbase_to=pool)
    values = {o.address: o.value for o in block.coinbase.vout if o.address}
    assert values == {a: COIN, b: COIN, pool: subsidy(block.height) - 2 * COIN}
    with pytest.raises(ValueError, match="more than subsidy"):
        chain.mine(coinbase_outputs=[(a, 10 * COIN)])


# --- views ----------------------------------------------------------------------------------------


def test_address_views_and_esplora_stats(chain):
    a = funded(chain, "a", value=5 * COIN)
    b = chain.address("b")
    t1 = chain.pay([a], [(b, COIN)], fee=1_000)
    chain.mine()
    t2 = chain.pay([b], [(a, 10_000)], fee=500)
    chain_stats, mempool_stats = chain.address_stats(b)
    assert chain_stats == {
        "funded_txo_count": 1, "funded_txo_sum": COIN, "spent_txo_count": 0, "spent_txo_sum": 0, "tx_count": 1,
    }  # fmt: skip
    assert mempool_stats == {
        "funded_txo_count": 1, "funded_txo_sum": COIN - 10_500, "spent_txo_count": 1, "spent_txo_sum": COIN,
        "tx_count": 1,
    }  # fmt: skip
    assert [t.txid for t in chain.address_txs(b)] == [t2.txid, t1.txid]
    assert [(u.txid, u.vout, u.value, u.status) for u in chain.utxos(b)] == [(t2.txid, 1, COIN - 10_500, None)]
    spends = chain.outspends(t1.txid)
    assert spends[0].txid == t2.txid and spends[0].vin == 0 and spends[0].status is None
    assert spends[1] is None  # a's change is unspent
    a_chain, _ = chain.address_stats(a)
    assert a_chain["funded_txo_sum"] - a_chain["spent_txo_sum"] == 5 * COIN - COIN - 1_000


# --- RBF ------------------------------------------------------------------------------------------


def test_replace_bumps_fee_and_drops_descendants(chain):
    a = funded(chain, "a")
    exch, b = chain.address("exchange"), chain.address("b")
    tx = chain.pay([a], [(exch, 3 * COIN)], fee=1_000)
    child = chain.pay([exch], [(b, COIN)])
    new = chain.replace(tx.txid)
    assert chain.tx(tx.txid) is None and chain.tx(child.txid) is None
    assert chain.any_tx(tx.txid) is tx  # still known, e.g. for stale prevouts
    assert new.fee == 2_000 and [i.outpoint for i in new.vin] == [i.outpoint for i in tx.vin]
    assert new.vout[0].value == 3 * COIN and new.vout[new.change_n].value == tx.vout[tx.change_n].value - 1_000
    assert [t.txid for t in chain.mempool] == [new.txid]
    assert chain.address_stats(b)[1]["tx_count"] == 0
    # cancel: send everything back to self with a higher fee
    cancel = chain.replace(new.txid, outputs=[(a, 10 * COIN - 5_000)])
    assert cancel.fee == 5_000
    assert chain.address_stats(exch) == (dict.fromkeys(chain.address_stats(exch)[0], 0),) * 2
    with pytest.raises(ValueError, match="must exceed"):
        chain.replace(cancel.txid, outputs=[(a, 10 * COIN - 5_000)])
    chain.mine()
    with pytest.raises(ValueError, match="not in the mempool"):
        chain.replace(cancel.txid)


def test_replace_with_outputs_and_fee_adds_change(chain):
    a = funded(chain, "a", value=2 * COIN)
    tx = chain.pay([a], [(chain.address("x"), COIN)], fee=1_000)
    new = chain.replace(tx.txid, outputs=[(chain.address("y"), COIN // 2)], fee=3_000)
    assert new.vout[new.change_n].address == a
    assert new.vout[new.change_n].value == 2 * COIN - COIN // 2 - 3_000


def test_evict_removes_a_tx_and_its_children(chain):
    a = funded(chain, "a")
    t1 = chain.pay([a], [(chain.address("b"), COIN)])
    t2 = chain.pay([chain.address("b")], [(chain.address("c"), 1_000)])
    assert chain.evict(t1.txid) == [t1.txid, t2.txid]
    assert chain.mempool == [] and chain.balance(a, include_mempool=True) == 10 * COIN


# --- reorgs ---------------------------------------------------------------------------------------


def test_reorg_returns_txs_to_the_mempool_and_keeps_stale_blocks(chain):
    a = funded(chain, "a")
    b = chain.address("b")
    tx = chain.pay([a], [(b, COIN)])
    (old1,) = chain.mine()
    (old2,) = chain.mine()
    h = chain.height
    new = chain.reorg(2, include_mempool=False)
    assert len(new) == 3 and chain.height == h + 1
    assert all(t.tx_count == 1 for t in new)
    assert chain.block_by_hash(old1.hash) is old1 and not chain.is_best(old1) and not chain.is_best(old2.hash)
    assert chain.block_at(old1.height) is new[0] and new[0].prev_hash == old1.prev_hash
    assert chain.tx(tx.txid) is tx and chain.tx_status(tx.txid) is None and chain.in_mempool(tx.txid)
    assert chain.tx(old1.coinbase.txid) is None  # orphaned coinbases vanish
    chain_stats, mempool_stats = chain.address_stats(b)
    assert chain_stats["tx_count"] == 0 and mempool_stats["funded_txo_sum"] == COIN
    (again,) = chain.mine()
    assert chain.tx_status(tx.txid).block_hash == again.hash
    assert chain.address_chain_txids(b) == [tx.txid]


def test_reorg_default_reconfirms_and_can_drop_or_replace(chain):
    a = funded(chain, "a")
    b, c = chain.address("b"), chain.address("c")
    keep = chain.pay([a], [(b, COIN)])
    drop = chain.pay([a], [(c, COIN)])
    child_of_drop = chain.pay([c], [(b, 1_000)])
    chain.mine()
    new = chain.reorg(1, drop_txids=[drop.txid])
    assert chain.tx_status(keep.txid).block_hash == new[0].hash
    assert chain.tx(drop.txid) is None and chain.tx(child_of_drop.txid) is None
    assert chain.address_stats(c) == (dict.fromkeys(chain.address_stats(c)[0], 0),) * 2

    t = chain.pay([b], [(c, 5_000)])
    chain.mine()
    (new2,) = chain.reorg(1, replacements={t.txid: {"outputs": [(b, COIN - 5_000)]}}, new_blocks=1)
    assert chain.tx(t.txid) is None
    assert [x.vout[0].address for x in new2.txs[1:]] == [b]


def test_reorg_drops_spends_of_orphaned_coinbases(chain):
    miner = chain.address("miner")
    chain.mine(coinbase_to=miner)
    spend = chain.pay([miner], [(chain.address("x"), COIN)])
    chain.reorg(1, include_mempool=False)
    assert chain.tx(spend.txid) is None and chain.mempool == []
    with pytest.raises(ValueError):
        chain.reorg(99)
