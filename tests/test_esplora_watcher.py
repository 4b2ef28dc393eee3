"""EsploraSource (address mode) end to end: SimChain → EsploraServer on 127.0.0.1 → HttpClient → Batch.

Request counts are read from the server's own log (`server.requests`); sleeps are recorded by FrozenClock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from monitor.clock import FrozenClock
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from watchers import Source
from watchers.esplora import EsploraSource
from watchers.http import HttpClient

COIN = 100_000_000
DATA = Path(__file__).parent / "data" / "esplora"


def paths(server, since: int = 0) -> list[str]:
    """Served request paths after the first `since`, without the `/api` prefix."""
    out = []
    for p in server.requests[since:]:
        p = p if isinstance(p, str) else p[0]
        out.append(p[4:] if p.startswith("/api/") else p)
    return out


class Harness:
    """A chain, its server, one shared session and a source over some watched addresses."""

    def __init__(self, chain: SimChain, server, session: aiohttp.ClientSession, clock: FrozenClock):
        self.chain, self.server, self.session, self.clock = chain, server, session, clock
        self.cursors: dict[str, str] = {}

    def source(self, addresses, **kw) -> EsploraSource:
        http_kw = {k: kw.pop(k) for k in ("timeout", "retries", "rate_limit") if k in kw}
        http_kw.setdefault("retries", 3)
        http = HttpClient("esplora", [self.server.url], self.session, clock=self.clock, rng=random.Random(1), **http_kw)
        return EsploraSource("esplora", http, addresses, clock=self.clock, **kw)

    async def poll(self, source: EsploraSource, **kw):
        """Poll like the pipeline does: store the returned cursors for the next poll."""
        batch = await source.poll(dict(self.cursors), **kw)
        for c in batch.cursors:
            self.cursors[c.key] = c.state
        return batch


@pytest.fixture
async def h():
    chain = SimChain(seed=3)
    async with EsploraServer(chain) as server, aiohttp.ClientSession() as session:
        yield Harness(chain, server, session, FrozenClock())


def make_history(chain: SimChain, address: str, confirmed: int, mempool: int, per_block: int = 10) -> None:
    for i in range(confirmed):
        chain.fund(address, 10_000 + i, confirmed=False)
        if i % per_block == per_block - 1 or i == confirmed - 1:
            chain.mine()
    for i in range(mempool):
        chain.fund(address, 50_000 + i, confirmed=False)


async def test_backfill_pages_past_25_then_incremental_polls(h):
    a = h.chain.address("treasury-a")
    make_history(h.chain, a, confirmed=120, mempool=3)
    src = h.source([a])
    assert isinstance(src, Source)
    seen_progress: list[tuple[str, int, int]] = []

    batch = await h.poll(src, progress=lambda *args: seen_progress.append(args))
    assert batch.failed == () and len(batch.cursors) == 1
    confirmed = [t for t in batch.txs if t.is_confirmed]
    mempool = [t for t in batch.txs if not t.is_confirmed]
    assert len(confirmed) == 120 and len(mempool) == 3
    assert {t.txid for t in batch.txs} == set(h.chain.address_chain_txids(a)) | set(h.chain.address_mempool_txids(a))
    assert [t.block_height for t in confirmed] == sorted(t.block_height for t in confirmed)  # oldest first
    assert all(t.block_hash and t.block_time for t in confirmed)
    # 1 stats + 1 first page (25 confirmed) + 4 chain pages (25, 25, 25, 20).
    assert batch.requests == 6
    assert paths(h.server) == [f"/address/{a}", f"/address/{a}/txs"] + [
        f"/address/{a}/txs/chain/{confirmed[-k].txid}" for k in (25, 50, 75, 100)
    ]
    assert seen_progress[-1] == (a, 120, 120)
    assert [f for _, f, _ in seen_progress] == sorted(f for _, f, _ in seen_progress)
    snap = batch.snapshots[0]
    assert snap.confirmed == sum(10_000 + i for i in range(120)) == h.chain.balance(a)
    assert snap.mempool_delta == 50_000 + 50_001 + 50_002 and snap.tx_count == 120

    state = json.loads(batch.cursors[0].state)
    assert state["chain_tx_count"] == 120 and state["mempool_tx_count"] == 3 and state["tail"] is None
    assert len(state["top"]) == 25 and len(state["mempool"]) == 3

    # Nothing new: exactly one request.
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert batch.txs == () and batch.requests == 1 and paths(h.server, n) == [f"/address/{a}"]
    assert len(batch.cursors) == 1 and len(batch.snapshots) == 1

    # A new block with 2 more txs (the 3 mempool txs stay in the mempool): no old page is re-read.
    new = [h.chain.fund(a, 70_000 + i, confirmed=False).txid for i in range(2)]
    h.chain.mine(txs=new)
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert paths(h.server, n) == [f"/address/{a}", f"/address/{a}/txs"]
    assert batch.requests == 2
    assert sorted(t.txid for t in batch.txs) == sorted(new)
    assert all(t.block_height == h.chain.height for t in batch.txs)

    # The 3 mempool txs confirm: they come back once more, now with their block fields.
    waiting = {t.txid for t in mempool}
    block = h.chain.mine()[0]
    batch = await h.poll(src)
    assert {t.txid for t in batch.txs} == waiting
    assert all((t.block_height, t.block_hash, t.block_time) == (block.height, block.hash, block.time) for t in batch.txs)
    assert batch.gone == ()


async def test_backfill_resumes_across_polls_with_page_cap(h):
    a = h.chain.address("big")
    make_history(h.chain, a, confirmed=120, mempool=0, per_block=30)
    src = h.source([a], max_pages=2)
    got: set[str] = set()
    polls = 0
    while True:
        batch = await h.poll(src)
        polls += 1
        got |= {t.txid for t in batch.txs}
        if json.loads(h.cursors[a])["tail"] is None:
            break
        assert polls < 10
    # 25 (first page) + 2 × 25 per poll, then the rest: 75 + 45.
    assert polls == 2
    assert got == set(h.chain.address_chain_txids(a))
    n = len(h.server.requests)
    assert (await h.poll(src)).requests == 1 and len(h.server.requests) == n + 1


async def test_tx_touching_two_addresses_is_returned_once(h):
    a, b, payer = h.chain.address("a"), h.chain.address("b"), h.chain.address("payer")
    h.chain.fund(payer, COIN)
    tx = h.chain.pay([payer], [(a, 1000), (b, 2000)], fee=500)
    h.chain.mine()
    batch = await h.poll(h.source([a, b]))
    assert [t.txid for t in batch.txs] == [tx.txid]
    assert {c.key for c in batch.cursors} == {a, b}


async def test_replaced_mempool_tx_is_gone(h):
    a, dest = h.chain.address("spender"), h.chain.address("dest")
    h.chain.fund(a, COIN)
    src = h.source([a])
    await h.poll(src)
    tx = h.chain.pay([a], [(dest, COIN // 2)], fee=1_000)
    batch = await h.poll(src)
    assert [t.txid for t in batch.txs] == [tx.txid] and batch.txs[0].block_height is None
    new = h.chain.replace(tx.txid)  # RBF: the change to `a` pays 1,000 sat more fee
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert batch.gone == (tx.txid,)
    # The vanished txid is looked up once (404) before it is called gone.
    assert paths(h.server, n) == [f"/address/{a}", f"/address/{a}/txs", f"/tx/{tx.txid}"]
    assert [t.txid for t in batch.txs] == [new.txid]
    assert json.loads(h.cursors[a])["mempool"] == [new.txid]


async def test_reorg_count_goes_down(h):
    a = h.chain.address("miner")
    make_history(h.chain, a, confirmed=30, mempool=0, per_block=5)
    src = h.source([a])
    await h.poll(src)
    last_block = h.chain.tip
    dropped, kept = last_block.txids[1], last_block.txids[2]  # [0] is the coinbase
    h.chain.reorg(1, drop_txids=[dropped])
    assert h.chain.address_stats(a)[0]["tx_count"] == 29
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert paths(h.server, n) == [f"/address/{a}", f"/address/{a}/txs", f"/tx/{dropped}"]
    assert batch.gone == (dropped,)
    remined = {t.txid: t for t in batch.txs}
    assert kept in remined and remined[kept].block_hash == h.chain.tx_status(kept).block_hash != last_block.hash
    assert dropped not in remined
    state = json.loads(h.cursors[a])
    assert state["chain_tx_count"] == 29 and dropped not in {t for t, _ in state["top"]}


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("429", {"retry_after": 3}),
        ("500", {"times": 3}),
        ("502", {"times": 2}),
        ("slow", {"delay": 1.0}),
        ("garbage", {}),
        ("truncated", {}),
        ("reset", {}),
    ],
)
async def test_fault_on_one_address_ends_in_success(h, kind, kwargs):
    a, b = h.chain.address("a"), h.chain.address("b")
    for addr in (a, b):
        make_history(h.chain, addr, confirmed=3, mempool=1)
    h.server.faults.add(rf"/address/{b}/txs$", kind, **kwargs)
    batch = await h.poll(h.source([a, b], timeout=0.2))
    assert batch.failed == ()
    assert {c.key for c in batch.cursors} == {a, b}
    assert len(batch.txs) == 8
    if kind == "429":
        assert 3.0 in h.clock.sleeps


@pytest.mark.parametrize("kind", ["garbage", "500", "slow", "429"])
async def test_persistent_fault_skips_only_that_address(h, kind, caplog):
    caplog.set_level(logging.INFO)
    a, b, c = (h.chain.address(x) for x in "abc")
    for addr in (a, b, c):
        make_history(h.chain, addr, confirmed=2, mempool=0)
    h.server.faults.add(rf"/address/{b}/txs", kind, times=100, delay=1.0 if kind == "slow" else 0)
    src = h.source([a, b, c], timeout=0.2, retries=1)
    batch = await h.poll(src)
    assert batch.failed == (b,)
    assert {x.key for x in batch.cursors} == {a, c}  # b's cursor is not advanced
    assert {s.address for s in batch.snapshots} == {a, c}
    assert {t.txid for t in batch.txs} == set(h.chain.address_chain_txids(a)) | set(h.chain.address_chain_txids(c))
    skips = [r for r in caplog.records if "esplora address skipped" in r.getMessage()]
    assert len(skips) == 1 and f"address={b}" in skips[0].getMessage()

    # Still failing: not logged again. Then it recovers, is read in full and the recovery is logged.
    await h.poll(src)
    assert len([r for r in caplog.records if "esplora address skipped" in r.getMessage()]) == 1
    h.server.faults.clear()
    batch = await h.poll(src)
    assert batch.failed == ()
    assert {t.txid for t in batch.txs} == set(h.chain.address_chain_txids(b))
    assert any("esplora address recovered" in r.getMessage() and b in r.getMessage() for r in caplog.records)


async def test_helpers(h):
    a, dest = h.chain.address("h"), h.chain.address("dest")
    h.chain.fund(a, COIN)
    tx = h.chain.pay([a], [(dest, 1000)], fee=300)
    block = h.chain.mine()[0]
    src = h.source([a])
    assert await src.tip_height() == h.chain.height
    assert await src.tip_hash() == block.hash
    got = await src.get_tx(tx.txid)
    assert (got.txid, got.fee, got.block_height) == (tx.txid, 300, block.height)
    header = await src.get_block(block.hash)
    assert header["height"] == block.height and header["timestamp"] == block.time and header["difficulty"] > 0
    utxos = await src.utxos(a)
    assert [(u.txid, u.value) for u in utxos] == [(tx.txid, COIN - 1000 - 300)]
    spends = await src.outspends(tx.txid)
    assert [s.spent for s in spends] == [False, False]


async def test_evicted_tx_is_gone_and_confirmed_elsewhere_is_not(h):
    a, b = h.chain.address("ev-a"), h.chain.address("ev-b")
    h.chain.fund(a, COIN)
    src = h.source([a])
    await h.poll(src)
    evicted = h.chain.pay([a], [(b, 1_000)], fee=200)
    await h.poll(src)
    h.chain.evict(evicted.txid)
    batch = await h.poll(src)
    assert batch.gone == (evicted.txid,) and batch.txs == ()
    assert json.loads(h.cursors[a])["mempool"] == []


async def test_fetch_tip_adds_one_request_per_poll(h):
    a = h.chain.address("tip")
    h.chain.fund(a, COIN)
    src = h.source([a], fetch_tip=True)
    await h.poll(src)
    batch = await h.poll(src)
    assert batch.tip_height == h.chain.height and batch.requests == 2


async def test_unreadable_cursor_means_reread(h, caplog):
    a = h.chain.address("cur")
    make_history(h.chain, a, confirmed=3, mempool=0)
    src = h.source([a])
    batch = await src.poll({a: '{"v": 99}'})
    assert len(batch.txs) == 3 and len(batch.cursors) == 1
    assert "cursor unreadable" in caplog.text


async def test_history_of_another_address_is_malformed(aiohttp_server, caplog):
    """A confused cache or proxy answering with someone else's txs: the address fails, nothing is stored."""
    address = "1wiz18xYmhRX6xStj2b9t1rwWX4GKUgpv"
    stats = json.loads(await asyncio.to_thread((DATA / "mempool_docs_mainnet_address.json").read_text))
    txs = await asyncio.to_thread((DATA / "txs_array_esplora_format__mempool_backend_testdata.json").read_bytes)

    async def handle(request: web.Request) -> web.Response:
        if request.path == f"/api/address/{address}":
            return web.json_response(stats)
        return web.Response(body=txs, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    clock = FrozenClock()
    async with aiohttp.ClientSession() as session:
        http = HttpClient("esplora", [str(server.make_url("/api"))], session, clock=clock, retries=0)
        batch = await EsploraSource("esplora", http, [address], clock=clock).poll({})
    assert batch.failed == (address,) and batch.txs == () and batch.cursors == ()
    assert "does not touch address" in caplog.text


async def test_one_malformed_tx_is_skipped_and_retried_not_the_whole_page(h, caplog):
    """A tx whose value is a float costs that tx only; paging goes on past it and it is read again until it parses."""
    a = h.chain.address("skip-one")
    make_history(h.chain, a, confirmed=30, mempool=2)
    async with h.session.get(f"{h.server.url}/address/{a}/txs") as resp:
        first_page = [t["txid"] for t in await resp.json()]
    confirmed_page = [t for t in first_page if h.chain.tx_status(t) is not None]
    bad = confirmed_page[-1]  # the last of the page: its txid is also the next page's cursor
    bad_mempool = next(t for t in first_page if h.chain.tx_status(t) is None)
    h.server.broken.update({bad, bad_mempool})
    src = h.source([a], retries=0)

    batch = await h.poll(src)
    assert batch.failed == ()
    assert {t.txid for t in batch.txs} == set(h.chain.address_chain_txids(a) + h.chain.address_mempool_txids(a)) - {
        bad,
        bad_mempool,
    }
    assert len(batch.txs) == 30
    assert any(
        "esplora tx skipped" in r.getMessage() and bad in r.getMessage() and "vout[0].value" in r.getMessage()
        for r in caplog.records
    )
    assert json.loads(h.cursors[a])["retry"] == sorted([bad, bad_mempool])

    # unchanged stats, still malformed: only the two txs are read again, nothing is lost or returned
    before = len(h.server.requests)
    batch = await h.poll(src)
    assert batch.txs == () and batch.failed == ()
    assert sorted(paths(h.server, before)) == sorted([f"/address/{a}", f"/tx/{bad}", f"/tx/{bad_mempool}"])
    assert json.loads(h.cursors[a])["retry"] == sorted([bad, bad_mempool])

    # fixed at the server: both come back with their real values, the retry list empties
    h.server.broken.clear()
    batch = await h.poll(src)
    got = {t.txid: t for t in batch.txs}
    assert set(got) == {bad, bad_mempool}
    assert got[bad].is_confirmed and not got[bad_mempool].is_confirmed
    for txid, tx in got.items():
        assert [o.value for o in tx.outputs] == [o.value for o in h.chain.any_tx(txid).vout]
    assert "retry" not in json.loads(h.cursors[a])
    before = len(h.server.requests)
    batch = await h.poll(src)
    assert batch.txs == () and paths(h.server, before) == [f"/address/{a}"]


async def test_malformed_tx_that_disappears_is_gone(h):
    a = h.chain.address("skip-gone")
    h.chain.fund(a, 70_000)
    h.chain.mine()
    tx = h.chain.pay([a], [(h.chain.address("elsewhere"), 20_000)], fee=1_000)
    h.server.broken.add(tx.txid)
    src = h.source([a], retries=0)
    batch = await h.poll(src)
    assert len(batch.txs) == 1 and json.loads(h.cursors[a])["retry"] == [tx.txid]
    h.chain.evict(tx.txid)
    batch = await h.poll(src)
    assert batch.gone == (tx.txid,) and "retry" not in json.loads(h.cursors[a])
