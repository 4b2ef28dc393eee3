"""watchers.rawblock against bitcoinlib, SimChain's own serialization, a hand-made segwit tx and Bitcoin's genesis block."""

from __future__ import annotations

import hashlib
import random

import pytest

from monitor.model import MalformedError
from monitor.sim.chain import SimChain
from watchers.rawblock import (
    BlockScan,
    block_tx_count,
    outpoint_key,
    outpoint_of_key,
    parse_block,
    parse_header,
    parse_tx,
    scan_block,
)

#: Bitcoin's genesis block (height 0), as served by `getblock <hash> 0`; hash and merkle root are well known.
GENESIS = bytes.fromhex(
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f61"
    "7fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c01010000000100000000000000000000000000000000000000"
    "00000000000000000000000000ffffffff4d04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63"
    "656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a0100"
    "0000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de"
    "5c384df7ba0b8d578a4c702b6bf11d5fac00000000"
)
KINDS = ("p2wpkh", "p2pkh", "p2sh", "p2tr", "p2wsh")


def sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


@pytest.fixture(scope="module")
def chain() -> SimChain:
    """A few blocks mixing every address kind, legacy-only and segwit txs, OP_RETURN and multi-input spends."""
    c = SimChain(seed=11)
    rng = random.Random(5)
    addrs = [c.address(f"r{i}", KINDS[i % len(KINDS)]) for i in range(20)]
    c.fund_many([(a, 5_000_000 + i) for i, a in enumerate(addrs)])
    c.mine(coinbase_tag="/test pool/")
    for _ in range(3):
        for _ in range(6):
            src = rng.sample(addrs, 2)
            dest = rng.choice(addrs)
            c.pay(src, [(dest, 1_000_000), (None, 0)], fee=700)
        c.mine()
    legacy = c.address("legacy-only", "p2pkh")
    c.fund(legacy, 3_000_000)
    c.pay([legacy], [(addrs[0], 1_000_000)], fee=1_000)  # no witness: the txid is sha256d of the whole tx
    c.mine()
    return c


def test_genesis_block_parses_to_its_known_hash_and_merkle_root():
    block = parse_block(GENESIS)
    h = block.header
    assert h.hash == "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    assert h.merkle_root == "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    assert (h.version, h.time, h.bits, h.nonce) == (1, 1231006505, 0x1D00FFFF, 2083236893)
    assert h.prev_hash == "00" * 32
    [cb] = block.txs
    assert cb.is_coinbase and cb.txid == h.merkle_root and not cb.has_witness
    assert cb.outputs[0].value == 50 * 100_000_000 and cb.outputs[0].script[-1] == 0xAC
    assert b"The Times 03/Jan/2009" in cb.inputs[0].script_sig
    assert block_tx_count(GENESIS) == 1


def test_sim_blocks_match_simchain_serialization(chain):
    for sim in chain.blocks:
        block = parse_block(sim.raw())
        assert block.header.hash == sim.hash and block.header.prev_hash == sim.prev_hash
        assert block.header.merkle_root == sim.merkle_root
        assert (block.header.time, block.header.bits, block.header.nonce, block.header.version) == (
            sim.time,
            sim.bits,
            sim.nonce,
            sim.version,
        )
        assert block.txids == sim.txids
        for tx, st in zip(block.txs, sim.txs):
            assert (tx.size, tx.base_size, tx.is_coinbase, tx.has_witness) == (
                st.size,
                st.base_size,
                st.is_coinbase,
                st.has_witness,
            )
            assert [(i.prev_txid, i.prev_vout, i.script_sig, i.sequence, i.witness) for i in tx.inputs] == [
                (i.txid, i.vout, i.script_sig, i.sequence, i.witness) for i in st.vin
            ]
            assert [(o.value, o.script) for o in tx.outputs] == [(o.value, o.script) for o in st.vout]
            assert parse_tx(st.raw) == tx


def test_sim_blocks_match_bitcoinlib(chain):
    from bitcoinlib.blocks import Block

    assert any(t.has_witness for b in chain.blocks for t in b.txs) and any(
        not t.has_witness for b in chain.blocks for t in b.txs[1:]
    )
    for sim in chain.blocks:
        raw = sim.raw()
        ours = parse_block(raw)
        theirs = Block.parse_bytes(raw, parse_transactions=True)
        assert ours.header.hash == theirs.block_hash.hex()
        assert ours.header.prev_hash == theirs.prev_block.hex()
        assert ours.header.merkle_root == theirs.merkle_root.hex()
        assert ours.header.bits == int.from_bytes(theirs.bits, "big")
        assert ours.header.nonce == int.from_bytes(theirs.nonce, "big")
        assert ours.header.time == theirs.time
        assert len(ours.txs) == len(theirs.transactions)
        for tx, bt in zip(ours.txs, theirs.transactions):
            assert tx.txid == bt.txid
            assert tx.is_coinbase == bt.coinbase
            assert tx.locktime == bt.locktime
            assert [(i.prev_txid, i.prev_vout, i.sequence) for i in tx.inputs] == [
                (i.prev_txid.hex(), int.from_bytes(i.output_n, "big"), i.sequence) for i in bt.inputs
            ]
            if tx.has_witness and not tx.is_coinbase:  # bitcoinlib lists a legacy input's scriptSig pushes as "witnesses"
                assert [list(i.witness) for i in tx.inputs if i.witness] == [
                    list(b.witnesses) for i, b in zip(tx.inputs, bt.inputs) if i.witness
                ]
            assert [(o.value, o.script) for o in tx.outputs] == [(o.value, o.lock_script) for o in bt.outputs]


def _hand_made_segwit_tx() -> tuple[bytes, bytes]:
    """(full BIP-144 serialization, non-witness serialization) of a 2-in/2-out tx written field by field."""
    version = (2).to_bytes(4, "little")
    prev1 = bytes(range(32))  # wire order
    prev2 = bytes(range(32, 64))
    ins = b"".join(
        [
            b"\x02",
            prev1,
            (1).to_bytes(4, "little"),
            b"\x00",
            (0xFFFFFFFD).to_bytes(4, "little"),  # native segwit: empty scriptSig
            prev2,
            (0).to_bytes(4, "little"),
            b"\x03\x51\x52\x53",
            (0xFFFFFFFF).to_bytes(4, "little"),  # legacy input
        ]
    )
    p2wpkh = b"\x00\x14" + b"\x11" * 20
    p2pkh = b"\x76\xa9\x14" + b"\x22" * 20 + b"\x88\xac"
    outs = b"".join(
        [
            b"\x02",
            (123_456).to_bytes(8, "little"),
            bytes([len(p2wpkh)]),
            p2wpkh,
            (7_000_000).to_bytes(8, "little"),
            bytes([len(p2pkh)]),
            p2pkh,
        ]
    )
    wit = b"\x02" + b"\x47" + b"\x30" * 71 + b"\x21" + b"\x02" * 33 + b"\x00"  # input 0: sig + pubkey; input 1: none
    locktime = (880_000).to_bytes(4, "little")
    return version + b"\x00\x01" + ins + outs + wit + locktime, version + ins + outs + locktime


def test_hand_made_segwit_tx():
    full, stripped = _hand_made_segwit_tx()
    tx = parse_tx(full)
    assert tx.txid == sha256d(stripped)[::-1].hex()
    assert (tx.size, tx.base_size, tx.has_witness, tx.version, tx.locktime) == (len(full), len(stripped), True, 2, 880_000)
    assert [(i.prev_txid, i.prev_vout, i.script_sig, i.sequence) for i in tx.inputs] == [
        (bytes(range(32))[::-1].hex(), 1, b"", 0xFFFFFFFD),
        (bytes(range(32, 64))[::-1].hex(), 0, b"\x51\x52\x53", 0xFFFFFFFF),
    ]
    assert tx.inputs[0].witness == (b"\x30" * 71, b"\x02" * 33) and tx.inputs[1].witness == ()
    assert [o.value for o in tx.outputs] == [123_456, 7_000_000]
    # The same tx without witness data has the same txid.
    assert parse_tx(stripped).txid == tx.txid and not parse_tx(stripped).has_witness

    from bitcoinlib.transactions import Transaction

    assert Transaction.parse_bytes(full, strict=False).txid == tx.txid  # dummy signature: not strict


def _header_for(txs: list[bytes]) -> bytes:
    root = sha256d(b"".join(sha256d(t) for t in txs[:1]))  # any 32 bytes: the matcher does not check the root
    return (1).to_bytes(4, "little") + b"\x00" * 32 + root + (0).to_bytes(12, "little")


def test_scan_matches_what_a_full_parse_would_find(chain):
    rng = random.Random(9)
    blocks = chain.blocks
    all_outputs = [(t.txid, n, o) for b in blocks for t in b.txs for n, o in enumerate(t.vout)]
    for trial in range(20):
        watched = {o.script: f"label-{o.script.hex()[:6]}" for _, _, o in rng.sample(all_outputs, 8) if o.address}
        outpoints = {outpoint_key(t, n): f"utxo-{t[:6]}:{n}" for t, n, _ in rng.sample(all_outputs, 6)}
        for sim in blocks:
            scan = scan_block(sim.raw(), watched, outpoints)
            assert isinstance(scan, BlockScan) and scan.header == parse_block(sim.raw()).header
            expected = []
            created: dict[bytes, str] = {}
            for index, tx in enumerate(parse_block(sim.raw()).txs):
                spends = [
                    (
                        k,
                        i.prev_txid,
                        i.prev_vout,
                        outpoints.get(outpoint_key(i.prev_txid, i.prev_vout))
                        or created.get(outpoint_key(i.prev_txid, i.prev_vout)),
                    )
                    for k, i in enumerate(tx.inputs)
                    if outpoint_key(i.prev_txid, i.prev_vout) in outpoints or outpoint_key(i.prev_txid, i.prev_vout) in created
                ]
                receipts = [(n, o.value, o.script, watched[o.script]) for n, o in enumerate(tx.outputs) if o.script in watched]
                for n, _, _, label in receipts:
                    created[outpoint_key(tx.txid, n)] = label
                if spends or receipts:
                    expected.append((index, tx.txid, tx.is_coinbase, spends, receipts))
            got = [
                (
                    m.index,
                    m.txid,
                    m.is_coinbase,
                    [(s.vin, s.prev_txid, s.prev_vout, s.label) for s in m.spends],
                    [(r.n, r.value, r.script, r.label) for r in m.receipts],
                )
                for m in scan.matches
            ]
            assert got == expected, trial


def test_scan_follows_outputs_spent_in_the_same_block_and_finds_coinbase_receipts():
    c = SimChain(seed=2)
    watched, other = c.address("watched"), c.address("other", "p2pkh")
    c.fund(other, 10_000_000)
    pay = c.pay([other], [(watched, 4_000_000)], fee=1_000)
    spend = c.pay([watched], [(other, 1_000_000)], fee=1_000)  # spends `pay`'s output in the same block
    block = c.mine(coinbase_to=watched)[0]
    scan = scan_block(block.raw(), {c.script_for(watched)}, {})
    assert [m.txid for m in scan.matches] == [block.txs[0].txid, pay.txid, spend.txid]
    assert scan.matches[0].is_coinbase and scan.matches[0].receipts[0].value == block.txs[0].vout[0].value
    assert scan.matches[0].receipts[0].label == c.script_for(watched)  # a set of scripts labels by script
    [s] = scan.matches[2].spends
    assert (s.prev_txid, s.prev_vout) == (pay.txid, 0)
    assert [r.value for r in scan.matches[2].receipts] == [4_000_000 - 1_000_000 - 1_000]  # change back to watched


def test_scan_accepts_outpoints_keyed_by_txid_and_vout():
    c = SimChain(seed=3)
    a = c.address("a")
    op = c.fund(a, 1_000_000)
    tx = c.pay([a], [(c.address("b"), 500_000)], fee=500)
    raw = c.mine()[0].raw()
    by_tuple = scan_block(raw, set(), {(op.txid, op.vout): "A"})
    by_key = scan_block(raw, set(), {outpoint_key(op.txid, op.vout): "A"})
    assert by_tuple == by_key and [m.txid for m in by_key.matches] == [tx.txid]
    assert outpoint_of_key(outpoint_key(op.txid, 7)) == (op.txid, 7)


def test_scan_of_nothing_watched_returns_no_matches_but_still_checks_the_bytes(chain):
    raw = chain.blocks[-1].raw()
    assert scan_block(raw, {}, {}).matches == []
    with pytest.raises(MalformedError):
        scan_block(raw[:-1], {}, {})


@pytest.mark.parametrize("func", [parse_block, lambda raw: scan_block(raw, {b"\x00\x14" + b"\x00" * 20}, {b"\x00" * 36: 1})])
def test_every_truncation_and_corruption_is_malformed_never_an_index_error(chain, func):
    raw = chain.blocks[1].raw()
    for cut in list(range(200)) + list(range(200, len(raw), 7)):
        with pytest.raises(MalformedError):
            func(raw[:cut])
    with pytest.raises(MalformedError):
        func(raw + b"\x00")  # trailing bytes
    rng = random.Random(1)
    for _ in range(300):
        bad = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(81, len(bad))] = rng.randrange(256)
        try:
            func(bytes(bad))
        except MalformedError:
            pass  # a flipped byte inside a script or value can still parse: only the error type matters
    garbage = b"<!DOCTYPE html><html><body>Checking your browser before accessing the site.</body></html>"
    for body in (garbage, garbage * 3, b"", b"\xff" * 81, b"\x00" * 80 + b"\xff" + b"\xff" * 8):
        with pytest.raises(MalformedError):
            func(body)


def test_zero_input_tx_and_bad_segwit_flag_are_malformed():
    full, stripped = _hand_made_segwit_tx()
    with pytest.raises(MalformedError):
        parse_tx(full[:4] + b"\x00\x02" + full[6:])  # marker 0 with a flag other than 1
    header = _header_for([stripped])
    with pytest.raises(MalformedError):
        parse_block(header + b"\x00")  # a block with no transactions
    with pytest.raises(MalformedError):
        parse_header(header[:79])
    assert parse_block(header + b"\x01" + stripped).txids == [parse_tx(full).txid]
