"""EsploraServer over SimChain: exact Esplora shapes (vs the fixtures), raw bytes, paging, RBF, reorgs, faults.

Real HTTP on 127.0.0.1 with aiohttp's client; the fixtures in tests/data/esplora/ are the real service's
response shapes (see that folder's README for their origin).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import aiohttp
import pytest
from bitcoinlib.blocks import Block
from bitcoinlib.transactions import Transaction

from monitor.sim.chain import COIN, SimChain, merkle_root
from monitor.sim.esplora_server import (
    BLOCKSTREAM_429_BODY,
    MEMPOOL_429_BODY,
    EsploraServer,
    Faults,
    esplora_script_type,
    script_asm,
)

DATA = Path(__file__).parent / "data" / "esplora"


def fixture(name: str):
    return json.loads((DATA / name).read_text())


FIX_TX = fixture("tx_confirmed_esplora_format__mempool_backend_testdata.json")  # p2wpkh spend, confirmed
FIX_TX_P2PKH = fixture("mempool_cypress_fixture_tx02_api_tx.json")  # p2pkh spend, unconfirmed
FIX_TXS = fixture("txs_array_esplora_format__mempool_backend_testdata.json")
FIX_ADDRESS = fixture("mempool_docs_mainnet_address.json")
FIX_BLOCK = fixture("mempool_docs_mainnet_block.json")
FIX_STATUS = fixture("mempool_docs_mainnet_tx_status.json")
TX_KEYS = set(FIX_TX)  # txid, version, locktime, vin, vout, size, weight, fee, status
VIN_KEYS_WITNESS = set(FIX_TX["vin"][0])
VIN_KEYS_LEGACY = set(FIX_TX_P2PKH["vin"][0])
PREVOUT_KEYS = set(FIX_TX["vin"][0]["prevout"])
VOUT_KEYS = set(FIX_TX["vout"][2])  # with scriptpubkey_address
VOUT_KEYS_OP_RETURN = set(FIX_TX["vout"][0])
#: /address/:a/utxo element keys, from the mempool docs example (mempool_docs_mainnet_address_utxo.docs_example.txt
#: in the project's recorded samples): {txid, vout, status{...}, value}.
UTXO_KEYS = {"txid", "vout", "status", "value"}
#: /block/:hash/status keys: electrs src/util/block.rs `BlockStatus` (serialized without skipping None).
BLOCK_STATUS_KEYS = {"in_best_chain", "height", "next_best"}


def sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


class Client:
    """Tiny GET helper: (status, content type, body bytes)."""

    def __init__(self, session: aiohttp.ClientSession, server: EsploraServer):
        self.session, self.server = session, server

    async def get(self, path: str, **kw) -> tuple[int, str, bytes]:
        async with self.session.get(self.server.url + path, **kw) as r:
            return r.status, r.content_type, await r.read()

    async def json(self, path: str):
        status, ctype, body = await self.get(path)
        assert status == 200, (path, status, body[:200])
        assert ctype == "application/json"
        return json.loads(body)

    async def text(self, path: str) -> str:
        status, ctype, body = await self.get(path)
        assert status == 200 and ctype == "text/plain", (path, status, body[:200])
        return body.decode()


@pytest.fixture
async def env():
    chain = SimChain(seed=5)
    async with EsploraServer(chain) as server, aiohttp.ClientSession() as session:
        yield chain, server, Client(session, server)


def assert_txout_shape(out: dict) -> None:
    assert set(out) == (VOUT_KEYS if "scriptpubkey_address" in out else VOUT_KEYS_OP_RETURN)
    assert isinstance(out["value"], int) and isinstance(out["scriptpubkey"], str)
    assert out["scriptpubkey_asm"] == script_asm(bytes.fromhex(out["scriptpubkey"]))
    assert out["scriptpubkey_type"] == esplora_script_type(bytes.fromhex(out["scriptpubkey"]))


def assert_tx_shape(tx: dict) -> None:
    assert set(tx) == TX_KEYS
    for key in ("version", "locktime", "size", "weight", "fee"):
        assert type(tx[key]) is int, key
    assert set(tx["status"]) == (set(FIX_STATUS) if tx["status"]["confirmed"] else {"confirmed"})
    for vin in tx["vin"]:
        base = VIN_KEYS_WITNESS if "witness" in vin else VIN_KEYS_LEGACY
        extra = set(vin) - base
        assert extra <= {"inner_redeemscript_asm", "inner_witnessscript_asm"}, extra
        assert type(vin["vout"]) is int and type(vin["sequence"]) is int and type(vin["is_coinbase"]) is bool
        if vin["is_coinbase"]:
            assert vin["prevout"] is None
        else:
            assert set(vin["prevout"]) <= PREVOUT_KEYS
            assert_txout_shape(vin["prevout"])
    for out in tx["vout"]:
        assert_txout_shape(out)


def build_variety(chain: SimChain) -> dict:
    """Spends of every address type, an OP_RETURN, a confirmed and a mempool tx."""
    kinds = ["p2wpkh", "p2pkh", "p2sh", "p2wsh", "p2tr"]
    srcs = {k: chain.address(f"src-{k}", k) for k in kinds}
    chain.fund_many([(a, 5 * COIN) for a in srcs.values()])
    dest = chain.address("exchange")
    confirmed = {k: chain.pay([a], [(dest, COIN), (None, 0)], fee=1_500) for k, a in srcs.items()}
    (block,) = chain.mine(coinbase_tag="/AntPool/")
    pending = chain.pay([dest], [(srcs["p2pkh"], 12_345)], fee=700)
    return {"srcs": srcs, "dest": dest, "confirmed": confirmed, "block": block, "pending": pending}


# --- shapes ---------------------------------------------------------------------------------------


async def test_tx_objects_have_the_fixture_shapes(env):
    chain, _, c = env
    v = build_variety(chain)
    for kind, tx in v["confirmed"].items():
        got = await c.json(f"/tx/{tx.txid}")
        assert_tx_shape(got)
        assert got["status"] == {
            "confirmed": True, "block_height": v["block"].height, "block_hash": v["block"].hash,
            "block_time": v["block"].time,
        }  # fmt: skip
        vin = got["vin"][0]
        assert set(vin) - {"inner_redeemscript_asm", "inner_witnessscript_asm"} == (
            VIN_KEYS_LEGACY if kind == "p2pkh" else VIN_KEYS_WITNESS
        )
        assert vin["prevout"]["scriptpubkey_address"] == v["srcs"][kind]
        assert got["fee"] == 1_500 == vin["prevout"]["value"] - sum(o["value"] for o in got["vout"])
        assert got["size"] == tx.size and got["weight"] == tx.weight
        assert [o["scriptpubkey_type"] for o in got["vout"]] == [
            "v0_p2wpkh",
            "op_return",
            got["vin"][0]["prevout"]["scriptpubkey_type"],
        ]
        assert "scriptpubkey_address" not in got["vout"][1]
    by_kind = {k: (await c.json(f"/tx/{t.txid}"))["vin"][0] for k, t in v["confirmed"].items()}
    assert by_kind["p2sh"]["inner_redeemscript_asm"].startswith("OP_0 OP_PUSHBYTES_20 ")
    assert by_kind["p2wsh"]["inner_witnessscript_asm"].endswith(" OP_CHECKSIG")
    assert len(by_kind["p2tr"]["witness"]) == 1 and len(by_kind["p2tr"]["witness"][0]) == 128
    assert by_kind["p2pkh"]["scriptsig_asm"].startswith("OP_PUSHBYTES_71 ")
    assert by_kind["p2wpkh"]["prevout"]["scriptpubkey_asm"].startswith("OP_0 OP_PUSHBYTES_20 ")

    pending = await c.json(f"/tx/{v['pending'].txid}")
    assert_tx_shape(pending)
    assert pending["status"] == {"confirmed": False}
    assert await c.json(f"/tx/{v['pending'].txid}/status") == {"confirmed": False}
    status = await c.json(f"/tx/{v['confirmed']['p2tr'].txid}/status")
    assert list(status) == list(FIX_STATUS) and type(status["block_height"]) is int

    # Key order follows electrs' structs, like the fixtures.
    assert list(pending) == list(FIX_TX)
    assert list(pending["vin"][0])[:5] == list(FIX_TX["vin"][0])[:5]


async def test_coinbase_and_block_shapes(env):
    chain, _, c = env
    v = build_variety(chain)
    block = v["block"]
    txs = await c.json(f"/block/{block.hash}/txs")
    for tx in txs:
        assert_tx_shape(tx)
    cb = txs[0]
    assert cb["fee"] == 0 and cb["vin"][0]["is_coinbase"] is True and cb["vin"][0]["prevout"] is None
    assert cb["vin"][0]["txid"] == "00" * 32 and cb["vin"][0]["vout"] == 0xFFFFFFFF
    assert bytes.fromhex(cb["vin"][0]["scriptsig"]).endswith(b"/AntPool/")
    assert cb["vout"][-1]["scriptpubkey_asm"].startswith("OP_RETURN OP_PUSHBYTES_36 aa21a9ed")
    assert sum(o["value"] for o in cb["vout"]) == 312_500_000 + 5 * 1_500

    got = await c.json(f"/block/{block.hash}")
    assert list(got) == list(FIX_BLOCK)
    for key, value in FIX_BLOCK.items():
        assert type(got[key]) is type(value), key
    assert got["id"] == block.hash and got["tx_count"] == 6 and got["previousblockhash"] == block.prev_hash
    assert got["mediantime"] <= got["timestamp"]
    status = await c.json(f"/block/{block.hash}/status")
    assert status == {"in_best_chain": True, "height": block.height, "next_best": None}
    (nxt,) = chain.mine(txs=[])
    assert (await c.json(f"/block/{block.hash}/status"))["next_best"] == nxt.hash
    assert set(status) == BLOCK_STATUS_KEYS

    addr = await c.json(f"/address/{v['dest']}")
    assert list(addr) == list(FIX_ADDRESS)
    assert list(addr["chain_stats"]) == list(FIX_ADDRESS["chain_stats"])
    assert list(addr["mempool_stats"]) == list(FIX_ADDRESS["mempool_stats"])
    assert addr["chain_stats"] == {
        "funded_txo_count": 5, "funded_txo_sum": 5 * COIN, "spent_txo_count": 0, "spent_txo_sum": 0, "tx_count": 5,
    }  # fmt: skip
    assert addr["mempool_stats"]["spent_txo_count"] == 1 and addr["mempool_stats"]["tx_count"] == 1

    utxos = await c.json(f"/address/{v['dest']}/utxo")
    assert all(set(u) == UTXO_KEYS and type(u["value"]) is int for u in utxos)
    assert sum(u["value"] for u in utxos) == chain.balance(v["dest"], include_mempool=True)

    spends = await c.json(f"/tx/{v['confirmed']['p2wpkh'].txid}/outspends")
    assert spends[0] == {"spent": True, "txid": v["pending"].txid, "vin": 0, "status": {"confirmed": False}}
    assert spends[1] == {"spent": False} and spends[2] == {"spent": False}
    assert await c.json(f"/tx/{v['confirmed']['p2wpkh'].txid}/outspend/0") == spends[0]


async def test_txs_arrays_have_the_element_shape_of_the_fixture_array(env):
    chain, _, c = env
    v = build_variety(chain)
    for path in (f"/address/{v['dest']}/txs", f"/address/{v['dest']}/txs/chain", f"/address/{v['dest']}/txs/mempool"):
        items = await c.json(path)
        assert items and all(set(t) == set(FIX_TXS[0]) for t in items)


# --- raw bytes ------------------------------------------------------------------------------------


async def test_served_raw_bytes_hash_to_the_ids(env):
    chain, _, c = env
    v = build_variety(chain)
    for kind, tx in v["confirmed"].items():
        hexed = await c.text(f"/tx/{tx.txid}/hex")
        status, ctype, raw = await c.get(f"/tx/{tx.txid}/raw")
        assert status == 200 and ctype == "application/octet-stream" and raw.hex() == hexed
        parsed = await asyncio.to_thread(Transaction.parse_hex, hexed)  # bitcoinlib logs to its file: off the loop
        assert parsed.txid == tx.txid
        if kind == "p2pkh":
            assert sha256d(raw)[::-1].hex() == tx.txid
        else:
            assert raw[4:6] == b"\x00\x01"  # BIP-144 marker and flag
        assert len(raw) == (await c.json(f"/tx/{tx.txid}"))["size"]

    block = v["block"]
    status, ctype, raw = await c.get(f"/block/{block.hash}/raw")
    assert status == 200 and ctype == "application/octet-stream"
    assert sha256d(raw[:80])[::-1].hex() == block.hash
    assert (await c.text(f"/block/{block.hash}/header")) == raw[:80].hex()
    txids = await c.json(f"/block/{block.hash}/txids")
    root = merkle_root([bytes.fromhex(t)[::-1] for t in txids])
    assert raw[36:68] == root and root[::-1].hex() == (await c.json(f"/block/{block.hash}"))["merkle_root"]
    parsed = await asyncio.to_thread(Block.parse_bytes, raw, parse_transactions=True)
    assert parsed.block_hash.hex() == block.hash
    assert [t.txid for t in parsed.transactions] == txids
    assert len(raw) == (await c.json(f"/block/{block.hash}"))["size"]
    assert (await c.text(f"/block/{block.hash}/txid/2")) == txids[2]


# --- paging ---------------------------------------------------------------------------------------


async def test_address_paging_120_confirmed_and_3_mempool(env):
    chain, server, c = env
    a = chain.address("treasury", "p2sh")
    for i in range(120):
        chain.fund(a, 10_000 + i, confirmed=False)
        if i % 7 == 6 or i == 119:
            chain.mine()  # several txs per block, so the within-block order matters
    mem = [chain.fund(a, 50_000 + i, confirmed=False).txid for i in range(3)]

    first = await c.json(f"/address/{a}/txs")
    assert len(first) == 28
    assert [t["txid"] for t in first[:3]] == mem[::-1]  # mempool, newest first
    assert all(not t["status"]["confirmed"] for t in first[:3]) and all(t["status"]["confirmed"] for t in first[3:])
    assert await c.json(f"/address/{a}/txs/mempool") == first[:3]

    seen, last, pages = [], None, []
    for _ in range(10):  # bounded: a server that repeats itself must fail, not hang
        page = await c.json(f"/address/{a}/txs/chain" + (f"/{last}" if last else ""))
        pages.append(len(page))
        if not page:
            break
        seen += [t["txid"] for t in page]
        last = page[-1]["txid"]
    assert pages == [25, 25, 25, 25, 20, 0]
    assert len(seen) == len(set(seen)) == 120
    assert seen == chain.address_chain_txids(a)
    assert [t["txid"] for t in first[3:]] == seen[:25]
    keys = [(chain.tx_position(t)[0].height, chain.tx_position(t)[1]) for t in seen]
    assert keys == sorted(keys, reverse=True)  # newest first: height, then position in block
    # electrs: an unknown last_seen_txid gives an empty page; an unparsable one is ignored.
    assert await c.json(f"/address/{a}/txs/chain/{'ab' * 32}") == []
    assert [t["txid"] for t in await c.json(f"/address/{a}/txs/chain/nothex")] == seen[:25]
    assert server.requests[0] == f"/address/{a}/txs"


async def test_mempool_history_is_capped_at_50(env):
    chain, _, c = env
    a = chain.address("busy")
    for i in range(55):
        chain.fund(a, 1_000 + i, confirmed=False)
    assert len(await c.json(f"/address/{a}/txs")) == 50
    assert len(await c.json(f"/address/{a}/txs/mempool")) == 50
    assert (await c.json(f"/address/{a}"))["mempool_stats"]["tx_count"] == 55


async def test_block_txs_paging_rules(env):
    chain, _, c = env
    payees = [chain.address(f"p{i}") for i in range(59)]
    chain.fund_many([(p, COIN) for p in payees])
    for i, p in enumerate(payees):
        chain.pay([p], [(payees[(i + 1) % len(payees)], 1_000)])
    (block,) = chain.mine()
    assert block.tx_count == 60
    pages = [await c.json(f"/block/{block.hash}/txs/{s}") for s in (0, 25, 50)]
    assert [len(p) for p in pages] == [25, 25, 10]
    assert await c.json(f"/block/{block.hash}/txs") == pages[0]
    assert [t["txid"] for p in pages for t in p] == await c.json(f"/block/{block.hash}/txids")
    assert await c.get(f"/block/{block.hash}/txs/75") == (404, "text/plain", b"start index out of range")
    assert await c.get(f"/block/{block.hash}/txs/10") == (
        400, "text/plain", b"start index must be a multipication of 25",
    )  # fmt: skip


async def test_blocks_lists_and_tip(env):
    chain, _, c = env
    chain.mine(12)
    tip = chain.tip
    assert await c.text("/blocks/tip/height") == str(tip.height)
    assert await c.text("/blocks/tip/hash") == tip.hash
    assert await c.text(f"/block-height/{tip.height - 3}") == chain.block_at(tip.height - 3).hash
    recent = await c.json("/blocks")
    assert [b["height"] for b in recent] == list(range(tip.height, tip.height - 10, -1))
    assert all(list(b) == list(FIX_BLOCK) for b in recent)
    older = await c.json(f"/blocks/{chain.start_height + 4}")
    assert [b["height"] for b in older] == list(range(chain.start_height + 4, chain.start_height - 1, -1))
    assert (await c.get(f"/blocks/{tip.height + 1}"))[0] == 404


async def test_server_follows_the_chain_while_running(env):
    chain, _, c = env
    a = chain.address("a")
    chain.fund(a, COIN)
    h = int(await c.text("/blocks/tip/height"))
    tx = chain.pay([a], [(chain.address("b"), 1_000)])
    assert (await c.json(f"/tx/{tx.txid}/status")) == {"confirmed": False}
    (block,) = chain.mine()
    assert int(await c.text("/blocks/tip/height")) == h + 1
    assert (await c.json(f"/tx/{tx.txid}/status"))["block_hash"] == block.hash


# --- errors ---------------------------------------------------------------------------------------


async def test_error_answers_are_plain_text_like_electrs(env):
    chain, _, c = env
    assert await c.get("/blocks/tip/height") == (503, "text/plain", b"the simulated chain has no blocks yet")
    chain.mine()
    unknown = "ab" * 32
    assert await c.get(f"/tx/{unknown}") == (404, "text/plain", b"Transaction not found")
    assert await c.get(f"/tx/{unknown}/hex") == (404, "text/plain", b"Transaction not found")
    assert await c.get(f"/tx/{unknown}/outspends") == (404, "text/plain", b"Transaction not found")
    assert await c.json(f"/tx/{unknown}/status") == {"confirmed": False}
    assert await c.get("/tx/xyz") == (400, "text/plain", b"Invalid hash string")
    assert await c.get(f"/block/{unknown}") == (404, "text/plain", b"Block not found")
    assert await c.json(f"/block/{unknown}/status") == {"in_best_chain": False, "height": None, "next_best": None}
    assert await c.get("/block-height/99999999") == (404, "text/plain", b"Block not found")
    assert await c.get("/block-height/abc") == (400, "text/plain", b"Invalid number")
    assert await c.get("/address/1notanaddress") == (400, "text/plain", b"Invalid Bitcoin address")
    testnet = SimChain(network="testnet").address("t")
    assert await c.get(f"/address/{testnet}") == (400, "text/plain", b"Address on invalid network")
    assert await c.get("/nope/x") == (404, "text/plain", b'endpoint does not exist "/nope/x"')
    # An address nobody paid is fine, with zero stats; upper-case bech32 is the same address.
    fresh = chain.address("fresh")
    got = await c.json(f"/address/{fresh.upper()}")
    assert got["address"] == fresh.upper() and got["chain_stats"]["tx_count"] == 0
    assert await c.json(f"/address/{fresh}/txs") == []


# --- RBF and reorgs -------------------------------------------------------------------------------


async def test_rbf_replacement_is_reflected(env):
    chain, _, c = env
    miner, exch = chain.address("miner-treasury"), chain.address("exchange-deposit")
    chain.fund(miner, 10 * COIN)
    sale = chain.pay([miner], [(exch, 4 * COIN)], fee=1_000)
    assert [t["txid"] for t in await c.json(f"/address/{exch}/txs")] == [sale.txid]
    assert (await c.json(f"/address/{exch}"))["mempool_stats"]["funded_txo_sum"] == 4 * COIN

    cancel = chain.replace(sale.txid, outputs=[(miner, 10 * COIN - 3_000)])
    assert await c.get(f"/tx/{sale.txid}") == (404, "text/plain", b"Transaction not found")
    assert await c.json(f"/tx/{sale.txid}/status") == {"confirmed": False}
    assert await c.json(f"/address/{exch}/txs") == []
    assert (await c.json(f"/address/{exch}"))["mempool_stats"]["tx_count"] == 0
    assert (await c.json(f"/address/{miner}/txs"))[0]["txid"] == cancel.txid
    assert (await c.json(f"/tx/{cancel.txid}"))["fee"] == 3_000
    chain.mine()
    assert (await c.json(f"/tx/{cancel.txid}/status"))["confirmed"] is True


async def test_two_block_reorg_is_reflected(env):
    chain, _, c = env
    miner, exch = chain.address("miner-treasury"), chain.address("exchange-deposit")
    chain.fund(miner, 10 * COIN)
    sale = chain.pay([miner], [(exch, 4 * COIN)], fee=1_000)
    (b1,) = chain.mine()
    (b2,) = chain.mine()
    assert (await c.json(f"/tx/{sale.txid}/status"))["block_hash"] == b1.hash
    assert (await c.json(f"/address/{exch}"))["chain_stats"]["funded_txo_sum"] == 4 * COIN

    new = chain.reorg(2, include_mempool=False)
    assert int(await c.text("/blocks/tip/height")) == b2.height + 1
    assert await c.json(f"/tx/{sale.txid}/status") == {"confirmed": False}
    stats = await c.json(f"/address/{exch}")
    assert stats["chain_stats"]["tx_count"] == 0 and stats["mempool_stats"]["funded_txo_sum"] == 4 * COIN
    assert [t["status"] for t in await c.json(f"/address/{exch}/txs")] == [{"confirmed": False}]
    for old in (b1, b2):
        assert await c.json(f"/block/{old.hash}/status") == {"in_best_chain": False, "height": None, "next_best": None}
        assert (await c.json(f"/block/{old.hash}"))["id"] == old.hash  # stale blocks stay readable
    assert all(t["status"] == {"confirmed": False} for t in await c.json(f"/block/{b1.hash}/txs"))
    assert await c.text(f"/block-height/{b1.height}") == new[0].hash

    (b4,) = chain.mine()
    status = await c.json(f"/tx/{sale.txid}/status")
    assert status["block_height"] == b4.height and status["block_hash"] == b4.hash

    # A reorg that drops the tx: it is gone everywhere.
    chain.reorg(1, drop_txids=[sale.txid])
    assert await c.get(f"/tx/{sale.txid}") == (404, "text/plain", b"Transaction not found")
    assert await c.json(f"/address/{exch}/txs") == []
    assert (await c.json(f"/address/{exch}"))["chain_stats"]["funded_txo_sum"] == 0


# --- faults ---------------------------------------------------------------------------------------


@pytest.fixture
async def faulty():
    chain = SimChain(seed=9)
    chain.mine(3)
    faults = Faults()
    # force_close: a fresh connection per request, so only aiohttp's own single retry hides a reset.
    connector = aiohttp.TCPConnector(force_close=True)
    async with EsploraServer(chain, faults=faults) as server, aiohttp.ClientSession(connector=connector) as session:
        yield chain, server, Client(session, server)


async def test_429_blockstream_body_with_retry_after_then_recovers(faulty):
    chain, server, c = faulty
    rule = server.faults.add(r"^/blocks/tip/height$", "429", retry_after=7)
    async with c.session.get(server.url + "/blocks/tip/height") as r:
        assert r.status == 429 and r.headers["Retry-After"] == "7" and r.content_type == "application/json"
        body = await r.read()
    assert body == BLOCKSTREAM_429_BODY and 300 <= len(body) <= 360
    assert json.loads(body)["message"].startswith("Blockstream Explorer API NOTICE: Your request rate exceeds")
    assert await c.text("/blocks/tip/height") == str(chain.height)
    assert rule.fired == 1 and not rule.active
    assert server.requests == ["/blocks/tip/height", "/blocks/tip/height"]


async def test_429_mempool_html_without_retry_after(faulty):
    _, server, c = faulty
    server.faults.add("tip", "429", body="mempool")
    async with c.session.get(server.url + "/blocks/tip/hash") as r:
        assert r.status == 429 and "Retry-After" not in r.headers and r.content_type == "text/html"
        assert await r.read() == MEMPOOL_429_BODY
    assert b"Enterprise" in MEMPOOL_429_BODY


@pytest.mark.parametrize("kind, reason", [("500", b"Internal Server Error"), ("502", b"Bad Gateway")])
async def test_5xx_fail_times_then_answer(faulty, kind, reason):
    chain, server, c = faulty
    server.faults.add(r"/blocks/tip", kind, times=2)
    for _ in range(2):
        status, ctype, body = await c.get("/blocks/tip/hash")
        assert status == int(kind) and ctype == "text/html" and reason in body
    assert await c.text("/blocks/tip/hash") == chain.tip.hash


async def test_garbage_and_truncated_are_200_with_unparsable_bodies(faulty):
    chain, server, c = faulty
    path = f"/block/{chain.tip.hash}"
    good = (await c.get(path))[2]
    server.faults.add(r"^/block/", "garbage")
    status, _, body = await c.get(path)
    assert status == 200 and body.startswith(b"<!DOCTYPE html>")
    server.faults.add(r"^/block/", "truncated")
    status, ctype, body = await c.get(path)
    assert status == 200 and ctype == "application/json"
    assert 0 < len(body) < len(good) and good.startswith(body)
    for bad in (b"<!DOCTYPE html>", body):
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad)
    assert json.loads((await c.get(path))[2])["id"] == chain.tip.hash


async def test_reset_drops_the_connection(faulty):
    chain, server, c = faulty
    # aiohttp's client retries a GET once when the connection drops, so it takes two resets to see one.
    server.faults.add(r"^/blocks/tip/height$", "reset", times=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await c.get("/blocks/tip/height")
    assert server.requests == ["/blocks/tip/height"] * 2
    assert await c.text("/blocks/tip/height") == str(chain.height)
    server.faults.add(r"^/blocks/tip/height$", "reset", times=1)
    assert await c.text("/blocks/tip/height") == str(chain.height)  # absorbed by that retry
    assert len(server.requests) == 5


async def test_slow_delays_then_answers_and_times_out_impatient_clients(faulty):
    chain, server, c = faulty
    server.faults.add(r"^/blocks/tip/hash$", "slow", delay=0.05)
    assert await c.text("/blocks/tip/hash") == chain.tip.hash  # answered normally after the delay
    server.faults.add(r"^/blocks/tip/hash$", "slow", delay=30)
    with pytest.raises(asyncio.TimeoutError):
        await c.get("/blocks/tip/hash", timeout=aiohttp.ClientTimeout(total=0.2))
    assert await c.text("/blocks/tip/hash") == chain.tip.hash  # the rule was used up


async def test_forever_rules_match_only_their_pattern_until_cleared(faulty):
    chain, server, c = faulty
    server.faults.add(r"^/address/", "500", times=None)
    a = chain.address("a")
    for _ in range(4):
        assert (await c.get(f"/address/{a}"))[0] == 500
    assert await c.text("/blocks/tip/height") == str(chain.height)  # other paths unaffected
    server.faults.clear()
    assert (await c.json(f"/address/{a}"))["address"] == a
    assert len(server.requests) == 6
    with pytest.raises(ValueError):
        server.faults.add("x", "418")
    assert re.search(server.faults.add("x", "reset").pattern, "/x")
