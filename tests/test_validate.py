"""validate: recorded Esplora / mempool.space answers → exact typed values; malformed ones name the field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from monitor.model import BalanceSnapshot, MalformedError, TxInput, TxOutput
from watchers.validate import (
    MAX_MONEY,
    assert_int,
    assert_sats,
    parse_address_stats,
    parse_block,
    parse_hash,
    parse_height,
    parse_outspends,
    parse_tx,
    parse_tx_page,
    parse_tx_status,
    parse_txs,
    parse_utxos,
)

DATA = Path(__file__).parent / "data" / "esplora"


def load(name: str):
    return json.loads((DATA / name).read_text())


CONFIRMED = "tx_confirmed_esplora_format__mempool_backend_testdata.json"
ARRAY = "txs_array_esplora_format__mempool_backend_testdata.json"
RAW = "mempool_backend_testdata_transactions-random.RAW.json"


def test_confirmed_tx_exact_values():
    tx = parse_tx(load(CONFIRMED))
    assert tx.chain == "bitcoin"
    assert tx.txid == "20b984492b5264162a4c92c9a34bc7fa08b67d669de7b4c5982ad3cb28aaecf6"
    assert (tx.block_height, tx.block_time) == (848136, 1718517071)
    assert tx.block_hash == "00000000000000000002c69c7a3010fcd596c0c7451c23e7cd1f5e19ebf8ee6d"
    assert tx.inputs == (
        TxInput(
            "bc1qnzw0zfm5l3c9vztpp3aegx0j68zgqajyffr2r6",
            27619,
            "3adda6afd547193793c248e667c2b7dbf26d705003de65e3a25e5be698286aef",
            2,
        ),
    )
    assert tx.outputs == (
        TxOutput(None, 0, 0),  # OP_RETURN: no address
        TxOutput("bc1p6uwxc048hflxaerh5zlastpqc7ye0zpvq7gq2a", 546, 1),
        TxOutput("bc1qnzw0zfm5l3c9vztpp3aegx0j68zgqajyffr2r6", 23073, 2),
    )
    assert tx.fee == 4000 and tx.total_in - tx.total_out == tx.fee
    assert all(type(v) is int for v in (tx.fee, *(o.value for o in tx.outputs), *(i.value for i in tx.inputs)))
    assert tx.is_confirmed and not tx.is_coinbase


def test_array_two_unconfirmed_two_confirmed():
    txs = parse_txs(load(ARRAY))
    assert [t.txid[:12] for t in txs] == ["13f007241d78", "8e89b20f8a7f", "20b984492b52", "b10c0000004d"]
    assert [t.block_height for t in txs] == [None, None, 848136, 850000]
    assert [t.fee for t in txs] == [584, 691, 4000, 71294]
    assert [(o.address, o.value) for o in txs[0].outputs] == [
        ("1FLC7Bag7okAkKPCyZbgZZg3Hh1EuGZ5Rd", 344697),
        ("bc1q0hhg573c4wlmqrdlhgm9ert8z2f5e3y3lf9hvx", 265396),
    ]
    assert len(txs[1].inputs) == 9 and txs[1].total_in == 5500691
    every_type = txs[3]  # p2pk, p2pkh, multisig, p2sh, p2wpkh, p2wsh, p2tr, unknown, op_return
    assert [o.address is None for o in every_type.outputs] == [True, False, True, False, False, False, False, False, True]
    assert every_type.outputs[7] == TxOutput("bc1pfeessrawgf", 240, 7)
    assert every_type.inputs[0] == TxInput(None, 6102, every_type.inputs[0].prev_txid, every_type.inputs[0].prev_vout)
    assert every_type.total_in == 74732 and every_type.total_out == 3438


def test_raw_file_with_extra_keys_parses_the_same():
    raw, filtered = parse_txs(load(RAW)), parse_txs(load(ARRAY))
    for r, f in zip(raw, filtered, strict=True):
        assert (r.txid, r.inputs, r.outputs, r.fee, r.block_height) == (f.txid, f.inputs, f.outputs, f.fee, f.block_height)
    # mempool.space's firstSeen becomes the time of an unconfirmed tx.
    assert raw[0].block_time == 1691222538 and filtered[0].block_time is None


@pytest.mark.parametrize(
    "name, txid, fee, value",
    [
        ("mempool_cypress_fixture_tx01_api_cached.json", "242f3fff9ca7", 606, 49394),
        ("mempool_cypress_fixture_tx02_api_tx.json", "b6a53d8a8025", 960, 49040),
    ],
)
def test_cypress_fixtures_unconfirmed(name, txid, fee, value):
    tx = parse_tx(load(name))
    assert tx.txid.startswith(txid) and tx.fee == fee and tx.outputs[0].value == value
    assert tx.block_height is None and tx.block_hash is None
    assert tx.inputs[0] == TxInput(
        "1stAprEZapjCYGUACUcXohQqSHF9MU5Kj", 50000, "fb16c141d22a3a7af5e44e7478a8663866c35d554cd85107ec8a99b97e5a72e9", 0
    )


def test_coinbase_input_has_no_prevout():
    tx = load(CONFIRMED)
    tx["vin"] = [{"txid": "0" * 64, "vout": 4294967295, "prevout": None, "scriptsig": "03", "is_coinbase": True, "sequence": 0}]
    tx["fee"] = 0
    parsed = parse_tx(tx)
    assert parsed.is_coinbase
    assert parsed.inputs == (TxInput(None, 0, "0" * 64, 4294967295),)


def _broken(path: list, value, delete: bool = False):
    tx = copy.deepcopy(load(CONFIRMED))
    node = tx
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return tx


@pytest.mark.parametrize(
    "path, value, delete, message",
    [
        (["vout", 2, "value"], 1.5, False, "vout[2].value: expected a non-negative integer, got 1.5"),
        (["vout", 2, "value"], "23073", False, "vout[2].value: expected a non-negative integer, got '23073'"),
        (["vout", 2, "value"], -1, False, "vout[2].value: expected a non-negative integer, got -1"),
        (["vout", 2, "value"], True, False, "vout[2].value: expected a non-negative integer, got True"),
        (["vout", 2, "value"], MAX_MONEY + 1, False, "vout[2].value: expected at most"),
        (["vout"], None, True, "vout: missing"),
        (["vout"], [], False, "vout: expected a non-empty array, got []"),
        (["vin", 0, "prevout"], None, True, "vin[0].prevout: missing"),
        (["vin", 0, "prevout", "value"], 27619.0, False, "vin[0].prevout.value: expected a non-negative integer"),
        (["vin", 0, "prevout", "scriptpubkey_address"], "bc1q<script>", False, "vin[0].prevout.scriptpubkey_address"),
        (["txid"], "XYZ", False, "txid: expected 64 lower-case hex digits, got 'XYZ'"),
        (["fee"], 4001, False, "fee: expected inputs - outputs = 4000, got 4001"),
        (["status", "block_height"], "848136", False, "status.block_height: expected a non-negative integer"),
        (["status", "confirmed"], "yes", False, "status.confirmed: expected a boolean, got 'yes'"),
        (["status"], None, True, "status: missing"),
    ],
)
def test_malformed_tx_names_the_field(path, value, delete, message):
    with pytest.raises(MalformedError) as info:
        parse_tx(_broken(path, value, delete))
    assert str(info.value).startswith(message)


def test_malformed_element_in_array_names_its_index():
    txs = load(ARRAY)
    txs[2]["vout"][1]["value"] = "546"
    with pytest.raises(MalformedError, match=r"^txs\[2\]\.vout\[1\]\.value: expected a non-negative integer"):
        parse_txs(txs)
    with pytest.raises(MalformedError, match="^txs: expected an array"):
        parse_txs({"error": "rate limited"})


def test_assert_helpers_reject_bools_and_floats():
    with pytest.raises(MalformedError):
        assert_int(False, "x")
    with pytest.raises(MalformedError):
        assert_sats(1e8, "x")
    assert assert_sats(10**8, "x") == 10**8


def test_address_stats_to_snapshot():
    stats = parse_address_stats(load("mempool_docs_mainnet_address.json"), "1wiz18xYmhRX6xStj2b9t1rwWX4GKUgpv")
    assert (stats.chain_tx_count, stats.chain_funded, stats.chain_spent) == (7, 15007599040, 15007599040)
    assert stats.snapshot(chain="bitcoin", at=100) == BalanceSnapshot(
        chain="bitcoin", address="1wiz18xYmhRX6xStj2b9t1rwWX4GKUgpv", at=100, confirmed=0, mempool_delta=0, tx_count=7
    )
    moved = load("mempool_docs_mainnet_address.json")
    moved["chain_stats"]["spent_txo_sum"] = 15007599000
    moved["mempool_stats"].update(spent_txo_sum=30, tx_count=1)
    snap = parse_address_stats(moved, "1wiz18xYmhRX6xStj2b9t1rwWX4GKUgpv").snapshot(chain="bitcoin", at=1)
    assert (snap.confirmed, snap.mempool_delta) == (40, -30)


def test_address_stats_malformed():
    good = load("mempool_docs_mainnet_address.json")
    with pytest.raises(MalformedError, match="^address: expected '1other"):
        parse_address_stats(good, "1otherAddressxxxxxxxxxxxxxxxxx")
    bad = copy.deepcopy(good)
    bad["chain_stats"]["tx_count"] = "7"
    with pytest.raises(MalformedError, match=r"^chain_stats\.tx_count: expected a non-negative integer, got '7'"):
        parse_address_stats(bad, good["address"])
    bad = copy.deepcopy(good)
    del bad["mempool_stats"]
    with pytest.raises(MalformedError, match="^mempool_stats: missing"):
        parse_address_stats(bad, good["address"])


def test_block_header():
    block = parse_block(load("mempool_docs_mainnet_block.json"))
    assert block["height"] == 363366 and block["timestamp"] == 1435766771 and block["tx_count"] == 494
    assert block["difficulty"] == 49402014931.2275
    assert block["previousblockhash"].startswith("000000000000000010c545b6")
    bad = load("mempool_docs_mainnet_block.json")
    bad["timestamp"] = "1435766771"
    with pytest.raises(MalformedError, match="^timestamp: expected a non-negative integer"):
        parse_block(bad)


def test_status_tip_height_hash():
    status = parse_tx_status(load("mempool_docs_mainnet_tx_status.json"))
    assert (status.confirmed, status.block_height, status.block_time) == (True, 363348, 1435754650)
    assert parse_tx_status({"confirmed": False}).block_height is None
    assert parse_height((DATA / "mempool_docs_mainnet_blocks_tip_height.json").read_text()) == 698767
    with pytest.raises(MalformedError, match="height: expected a decimal block height"):
        parse_height("<html>429</html>")
    assert parse_hash("0000000000000000000624d76f52661d0f35a0da8b93a87cb93cf08fd9140209\n").startswith("0000")
    with pytest.raises(MalformedError):
        parse_hash("nope")


def test_docs_tx_with_emptied_vin_is_rejected():
    # The docs authors emptied vin/vout; a real answer never has them empty.
    with pytest.raises(MalformedError, match="^vin: expected a non-empty array"):
        parse_tx(load("mempool_docs_mainnet_tx.json"))


def test_utxos_and_outspends():
    utxos = parse_utxos(
        [
            {
                "txid": "12f96289f8f9cd51ccfe390879a46d7eeb0435d9e0af9297776e6bdf249414ff",
                "vout": 0,
                "status": load("mempool_docs_mainnet_tx_status.json"),
                "value": 644951084,
            },
            {"txid": "aa" * 32, "vout": 3, "status": {"confirmed": False}, "value": 1},
        ]
    )
    assert [(u.vout, u.value, u.block_height) for u in utxos] == [(0, 644951084, 363348), (3, 1, None)]
    with pytest.raises(MalformedError, match=r"^utxos\[0\]\.value"):
        parse_utxos([{"txid": "aa" * 32, "vout": 0, "status": {"confirmed": False}, "value": 0.5}])
    spends = parse_outspends(
        [{"spent": False}, {"spent": True, "txid": "bb" * 32, "vin": 1, "status": load("mempool_docs_mainnet_tx_status.json")}]
    )
    assert [(s.spent, s.txid, s.vin, s.block_height) for s in spends] == [(False, None, None, None), (True, "bb" * 32, 1, 363348)]


# --- what self-hosted servers send besides Esplora's own shapes ---------------------------------------
# mempool.space on Core (backend/src/api/bitcoin/bitcoin-api.ts $convertTransaction) writes "" for no
# address, a coinbase input as txid "" / vout 0 / prevout null, and prevout null on lazily resolved inputs.


def test_empty_address_on_outputs_and_prevouts_is_no_address():
    tx = load(CONFIRMED)
    tx["vout"][0]["scriptpubkey_address"] = ""
    tx["vin"][0]["prevout"]["scriptpubkey_address"] = ""
    tx["vout"][1]["scriptpubkey_address"] = None
    parsed = parse_tx(tx)
    assert parsed.inputs[0].address is None and parsed.inputs[0].value == tx["vin"][0]["prevout"]["value"]
    assert parsed.outputs[0].address is None and parsed.outputs[1].address is None
    assert parsed.outputs[0].value == tx["vout"][0]["value"]
    assert parsed.fee == tx["fee"]


@pytest.mark.parametrize(
    "vin0",
    [
        {"txid": "", "vout": 0, "prevout": None, "is_coinbase": True, "scriptsig": "03", "sequence": 0},
        {"txid": "0" * 64, "vout": 4294967295, "prevout": None, "scriptsig": "03", "sequence": 0},  # no is_coinbase
        {"txid": "", "vout": 0, "prevout": None, "scriptsig": "03", "sequence": 0},
        {
            "txid": "0" * 64,
            "vout": 4294967295,
            "is_coinbase": True,
            "prevout": {"scriptpubkey_address": "", "value": 0},
        },  # a proxy that fills a dummy prevout
    ],
)
def test_coinbase_input_shapes_normalise_to_the_null_outpoint(vin0):
    tx = load(CONFIRMED)
    tx["vin"] = [vin0]
    tx["fee"] = 0
    parsed = parse_tx(tx)
    assert parsed.is_coinbase and parsed.fee == 0
    assert parsed.inputs == (TxInput(None, 0, "0" * 64, 4294967295),)


def test_prevout_null_on_a_spending_input_is_rejected_with_the_reason():
    tx = load(CONFIRMED)
    tx["vin"][0]["prevout"] = None
    with pytest.raises(MalformedError, match=r"^vin\[0\]\.prevout: null on a non-coinbase input"):
        parse_tx(tx)


def test_fee_absent_or_null_is_derived_and_negative_rejected():
    tx = load(CONFIRMED)
    want = tx.pop("fee")
    assert parse_tx(tx).fee == want
    tx["fee"] = None
    assert parse_tx(tx).fee == want
    tx["fee"] = -1  # mempool.space's marker for a fee it did not compute
    with pytest.raises(MalformedError, match=r"^fee: expected a non-negative integer, got -1"):
        parse_tx(tx)


@pytest.mark.parametrize(
    "status, message",
    [
        ({"confirmed": True}, "status.block_height: missing"),
        ({"confirmed": True, "block_height": 848136, "block_hash": "00" * 32}, "status.block_time: missing"),
        (
            {"confirmed": True, "block_height": 2**64, "block_hash": "00" * 32, "block_time": 1},
            "status.block_height: expected an integer <= 2147483647",
        ),  # would overflow what is stored
        (
            {"confirmed": True, "block_height": 1, "block_hash": "00" * 32, "block_time": 1e9},
            "status.block_time: expected a non-negative integer, got 1000000000.0",
        ),
        ({"confirmed": False, "block_height": 0}, None),  # block fields of an unconfirmed tx are ignored
    ],
)
def test_status_shapes(status, message):
    tx = load(CONFIRMED)
    tx["status"] = status
    if message is None:
        parsed = parse_tx(tx)
        assert parsed.is_confirmed == status["confirmed"]
    else:
        with pytest.raises(MalformedError, match="^" + re.escape(message)):
            parse_tx(tx)


@pytest.mark.parametrize("value", [5, ["bc1q"], "bc1q spaces here", "x" * 120])
def test_address_of_another_type_is_rejected(value):
    tx = load(CONFIRMED)
    tx["vout"][0]["scriptpubkey_address"] = value
    with pytest.raises(MalformedError, match=r"^vout\[0\]\.scriptpubkey_address: expected an address"):
        parse_tx(tx)


def test_outspends_from_mempool_on_core():
    spender = "ab" * 32
    got = parse_outspends(
        [
            {"spent": False},
            {"spent": True},  # getTxOut said spent, no spender known
            {"spent": True, "txid": spender, "vin": 1, "status": {"confirmed": True}},
            {"spent": True, "txid": spender, "vin": 0, "status": {"confirmed": False}},
        ]
    )
    assert [(o.spent, o.txid, o.vin, o.block_height, o.confirmed) for o in got] == [
        (False, None, None, None, False),
        (True, None, None, None, False),
        (True, spender, 1, None, True),
        (True, spender, 0, None, False),
    ]


def test_page_keeps_good_txs_and_names_the_bad_one():
    txs = load(ARRAY)
    txs[1]["vout"][0]["value"] = 1.5
    entries = parse_tx_page(txs, prefix="txs")
    assert [e.txid for e in entries] == [t["txid"] for t in txs]
    assert [e.tx is None for e in entries] == [False, True, False, False]
    assert entries[1].reason.startswith("txs[1].vout[0].value: expected a non-negative integer, got 1.5")
    assert entries[1].status.confirmed == txs[1]["status"]["confirmed"]
    assert entries[0].tx == parse_tx(txs[0], prefix="txs[0]")


@pytest.mark.parametrize(
    "path, value, message",
    [
        (["txid"], "", r"^txs\[2\]\.txid: expected 64 lower-case hex digits"),
        (["status"], None, r"^txs\[2\]\.status: expected an object"),
    ],
)
def test_page_fails_whole_when_a_txid_or_status_is_unreadable(path, value, message):
    txs = load(ARRAY)
    txs[2][path[0]] = value
    with pytest.raises(MalformedError, match=message):
        parse_tx_page(txs)


def test_very_large_values():
    stats = load("mempool_docs_mainnet_address.json")
    stats["chain_stats"]["funded_txo_sum"] = 10**17  # above MAX_MONEY: a busy address's lifetime sum
    assert parse_address_stats(stats, stats["address"]).chain_funded == 10**17
    stats["chain_stats"]["funded_txo_sum"] = 2**64
    with pytest.raises(MalformedError, match=r"^chain_stats\.funded_txo_sum: expected an integer <= "):
        parse_address_stats(stats, stats["address"])
    tx = load(CONFIRMED)
    tx["vout"][0]["value"] = 10**30
    with pytest.raises(MalformedError, match=r"^vout\[0\]\.value: expected at most 2100000000000000 satoshis"):
        parse_tx(tx)
