"""EsploraBlockSource (block mode) end to end: SimChain → EsploraServer on 127.0.0.1 → HttpClient → Batch → SQLite.

Batches are committed the way the pipeline commits them (UTXO changes and cursors in one storage batch),
into a real Store; request counts come from the server's own log; sleeps are recorded by FrozenClock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random

import aiohttp
import pytest
from aiohttp import web

from monitor.clock import FrozenClock
from monitor.core.flows import entity_flows
from monitor.core.registry import Registry
from monitor.model import Cursor, Entity, EntityAddress, WatchedUtxo
from monitor.sim.chain import COIN, SimChain
from monitor.sim.esplora_server import EsploraServer
from storage import AsyncStore, Store
from storage.utxos import apply_utxo_changes, load_utxos
from watchers import Source
from watchers.esplora import EsploraSource
from watchers.esplora_blocks import EsploraBlockSource, address_script, choose_mode, mode_sees
from watchers.http import HttpClient

KINDS = ("p2wpkh", "p2pkh", "p2sh", "p2tr", "p2wsh")


def paths(server, since: int = 0) -> list[str]:
    """Served request paths after the first `since` (without /api)."""
    return list(server.requests[since:])


class Harness:
    """A chain, its server, a real Store, and sources committed like the pipeline commits them."""

    def __init__(self, chain: SimChain, server: EsploraServer, session: aiohttp.ClientSession, store: AsyncStore):
        self.chain, self.server, self.session, self.store = chain, server, session, store
        self.clock = FrozenClock()
        self.extra: list[EsploraServer] = []

    def http(self, retries: int = 2, server: EsploraServer | None = None) -> HttpClient:
        return HttpClient(
            "esplora",
            [(server or self.server).url],
            self.session,
            clock=self.clock,
            rng=random.Random(1),
            retries=retries,
            rate_limit=None,
        )

    async def blocks(self, addresses, *, retries: int = 2, server: EsploraServer | None = None, **kw) -> EsploraBlockSource:
        """A block-mode source given the stored UTXO set, as the runtime builds it."""
        return EsploraBlockSource(
            "blocks",
            self.http(retries, server),
            addresses,
            clock=self.clock,
            utxos=await self.store.run(load_utxos, "bitcoin"),
            **kw,
        )

    async def server_with(self, middleware) -> EsploraServer:
        """A second server over the same chain with an aiohttp middleware in front (stopped by the fixture)."""
        server = EsploraServer(self.chain)
        server.app.middlewares.append(middleware)
        await server.start()
        self.extra.append(server)
        return server

    async def cursors(self, name: str = "blocks") -> dict[str, str]:
        return await self.store.run(Store.cursors, name)

    async def commit(self, batch) -> None:
        def write(store: Store) -> None:
            with store.batch():
                if batch.utxos_added or batch.utxos_spent:
                    apply_utxo_changes(store, batch.chain, batch.utxos_added, batch.utxos_spent)
                store.set_cursors(batch.cursors, now=0)

        await self.store.run(write)

    async def poll(self, src, commit: bool = True):
        batch = await src.poll(await self.cursors(src.name))
        if commit:
            await self.commit(batch)
        return batch

    async def catch_up(self, src) -> list:
        """Poll until the source reaches the chain tip; every batch is committed."""
        batches = []
        for _ in range(100):
            batches.append(await self.poll(src))
            state = json.loads((await self.cursors(src.name))["tip"])
            if state["hash"] == self.chain.tip.hash and not batches[-1].failed:
                return batches
        raise AssertionError("never caught up")

    async def stored_utxos(self) -> set[tuple[str, int, str, int]]:
        return {(u.txid, u.vout, u.address, u.value) for u in await self.store.run(load_utxos, "bitcoin")}


def outpoint(chain: SimChain, address: str, i: int) -> tuple[str, int]:
    """The i-th unspent output of an address, as an input for `SimChain.pay`."""
    u = chain.utxos(address)[i]
    return (u.txid, u.vout)


def confirmed_utxos(chain: SimChain, addresses) -> set[tuple[str, int, str, int]]:
    """Outputs to `addresses` in best-chain blocks not spent by a best-chain tx (what block mode must hold)."""
    watched = set(addresses)
    out: dict[tuple[str, int], tuple[str, int, str, int]] = {}
    for b in chain.blocks:
        for t in b.txs:
            for i in t.vin:
                out.pop((i.txid, i.vout), None)
            for n, o in enumerate(t.vout):
                if o.address in watched:
                    out[(t.txid, n)] = (t.txid, n, o.address, o.value)
    return set(out.values())


@pytest.fixture
async def h(tmp_path):
    chain = SimChain(seed=21)
    store = AsyncStore(await asyncio.to_thread(Store, tmp_path / "blocks.db"))
    async with EsploraServer(chain) as server, aiohttp.ClientSession() as session:
        harness = Harness(chain, server, session, store)
        yield harness
        for extra in harness.extra:
            await extra.stop()
    await store.close()


def flow_set(txs, registry: Registry) -> set:
    out = set()
    for tx in txs:
        for f in entity_flows(tx, registry):
            out.add(
                (
                    f.txid,
                    f.entity,
                    f.block_height,
                    f.spent,
                    f.change,
                    f.received,
                    f.fee_share,
                    f.out,
                    tuple((d.address, d.value, d.n) for d in f.destinations),
                )
            )
    return out


def _entity(name: str, kind: str, addresses) -> Entity:
    return Entity(name, kind, tuple(EntityAddress("bitcoin", a, source="test") for a in addresses))


# --- identical flows ----------------------------------------------------------------------------------


def build_history(
    chain: SimChain,
    rng: random.Random,
    blocks: int,
    ents: dict[str, list[str]],
    noise: list[str],
    exchange: str,
    after_block=None,
) -> None:
    """`blocks` blocks of receipts, spends with change, consolidations, cross-entity payments, coinbases and noise."""
    miners = ents["MinerA"] + ents["MinerB"]
    own = [a for v in ents.values() for a in v]
    for k in range(blocks):
        for _ in range(rng.randint(0, 3)):  # receipts from outside
            chain.fund(rng.choice(own), rng.randint(1, 50) * 1_000_000, confirmed=False)
        for _ in range(rng.randint(0, 3)):  # noise
            chain.fund(rng.choice(noise), 2_000_000, confirmed=False)
            try:
                chain.pay([rng.choice(noise)], [(rng.choice(noise), 500_000)], fee=300)
            except ValueError:
                pass
        for name, addrs in ents.items():
            if rng.random() < 0.5:
                continue
            kind = rng.choice(["sale", "consolidate", "cross", "two_out", "chain"])
            try:
                if kind == "sale":  # spend with change back to another own address
                    chain.pay(
                        [rng.choice(addrs)],
                        [(exchange, rng.randint(1, 5) * 1_000_000)],
                        fee=rng.randint(200, 2_000),
                        change_address=rng.choice(addrs),
                    )
                elif kind == "consolidate":
                    chain.pay(addrs, [(rng.choice(addrs), 1_000_000)], fee=1_500, change_address=addrs[0])
                elif kind == "cross":  # touches two watched entities
                    other = rng.choice([n for n in ents if n != name])
                    chain.pay([rng.choice(addrs)], [(rng.choice(ents[other]), 2_000_000), (rng.choice(noise), 100_000)], fee=800)
                elif kind == "two_out":
                    chain.pay([rng.choice(addrs)], [(rng.choice(noise), 300_000), (exchange, 400_000)], fee=600)
                else:  # receive and spend in the same block
                    a = rng.choice(addrs)
                    fund = chain.fund(a, 3_000_000, confirmed=False)
                    chain.pay([], [(exchange, 1_000_000)], inputs=[fund], fee=500, change_address=a)
            except ValueError:
                pass
        coinbase_to = rng.choice(miners) if rng.random() < 0.2 else None
        chain.mine(coinbase_to=coinbase_to)
        if after_block is not None:
            after_block(k)


async def test_block_mode_and_address_mode_give_identical_flows_on_300_blocks(h):
    rng = random.Random(7)
    ents = {
        "MinerA": [h.chain.address(f"a{i}", KINDS[i]) for i in range(3)],
        "MinerB": [h.chain.address(f"b{i}", KINDS[i + 3]) for i in range(2)],
        "Sovereign": [h.chain.address("s0")],
    }
    exchange = h.chain.address("exchange", "p2pkh")
    noise = [h.chain.address(f"n{i}", KINDS[i % 5]) for i in range(15)]
    registry = Registry(
        [_entity(n, "sovereign" if n == "Sovereign" else "miner", a) for n, a in ents.items()]
        + [_entity("Exchange", "exchange", [exchange])]
    )
    watched = registry.watched_addresses("bitcoin")
    assert len(watched) == 6
    before = h.chain.fund(ents["MinerA"][0], 10 * COIN)  # history before the block source starts: seeded from /utxo
    early = h.chain.pay([ents["MinerA"][0]], [(exchange, COIN)], fee=1_000)  # a mempool spend of a seeded output

    src = await h.blocks(watched, max_blocks=50)
    assert isinstance(src, Source)
    first = await h.poll(src)  # starts at the tip, seeds every address
    assert first.txs == () and {(u.txid, u.vout) for u in first.utxos_added} == {
        (t, v) for t, v, _, _ in confirmed_utxos(h.chain, watched)
    }
    block_txs = {}
    polls_per_catch_up = []

    async def poll_to_tip() -> None:
        batches = await h.catch_up(src)
        polls_per_catch_up.append(len(batches))
        for b in batches:
            block_txs.update({t.txid: t for t in b.txs})

    # Poll every 30 blocks, except for a 150-block gap that the 50-block cap spreads over several polls.
    for start in range(0, 300, 30):
        build_history(h.chain, rng, 30, ents, noise, exchange)
        if not 90 <= start < 210:
            await poll_to_tip()
    h.chain.mine()
    await poll_to_tip()
    assert max(polls_per_catch_up) == 3 and min(polls_per_catch_up) == 1  # the gap: 150 blocks, 3 polls of 50
    assert h.chain.height - 880_000 >= 300 and h.chain.mempool == []

    addr_src = EsploraSource("address", h.http(), watched, clock=h.clock, max_pages=1000)
    addr_batch = await addr_src.poll({})
    assert addr_batch.failed == ()
    address_txs = {t.txid: t for t in addr_batch.txs}
    seeded_history = set(address_txs) - set(block_txs)  # confirmed before the block source started
    assert seeded_history == {before.txid} and early.txid in block_txs  # spend of a seeded outpoint, mined later
    assert {t: address_txs[t] for t in block_txs} == block_txs  # same ChainTx, field for field
    assert flow_set(block_txs.values(), registry) == flow_set(
        [t for t in address_txs.values() if t.txid not in seeded_history], registry
    )
    flows = flow_set(block_txs.values(), registry)
    assert len(block_txs) > 300 and len(flows) > 400
    assert {f[1] for f in flows} == {"MinerA", "MinerB", "Sovereign"}
    assert any(f[7] > 0 for f in flows) and any(f[7] == 0 and f[3] > 0 for f in flows)  # sales and internal moves
    assert any(t.is_coinbase for t in block_txs.values())
    assert await h.stored_utxos() == confirmed_utxos(h.chain, watched)

    # A second block source started below the history (start_height) finds the same txs from raw blocks alone.
    other = EsploraBlockSource("from-start", h.http(), watched, clock=h.clock, start_height=880_000, max_blocks=50)
    found = {}
    cursors: dict[str, str] = {}
    for _ in range(20):
        b = await other.poll(cursors)
        cursors.update({c.key: c.state for c in b.cursors})
        found.update({t.txid: t for t in b.txs})
        if json.loads(cursors["tip"])["hash"] == h.chain.tip.hash:
            break
    assert found == address_txs


# --- reorgs -------------------------------------------------------------------------------------------


async def test_two_block_reorg_drops_one_outflow_and_remines_another(h):
    miner, exchange, cold = h.chain.address("miner"), h.chain.address("exchange", "p2pkh"), h.chain.address("cold", "p2sh")
    h.chain.fund_many([(miner, 5 * COIN), (miner, 3 * COIN)])
    src = await h.blocks([miner, cold])
    await h.catch_up(src)
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [miner, cold])

    dropped = h.chain.pay([], [(exchange, 2 * COIN)], inputs=[outpoint(h.chain, miner, 0)], fee=2_000)
    h.chain.mine()
    remined = h.chain.pay([], [(cold, COIN)], inputs=[outpoint(h.chain, miner, 0)], fee=1_000)  # the other output
    old_block = h.chain.mine()[0]
    batch = await h.poll(src)
    assert [t.txid for t in batch.txs] == [dropped.txid, remined.txid]
    assert batch.txs[1].block_hash == old_block.hash
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [miner, cold])

    # Restart from storage (as the daemon would), then reorg: `dropped` vanishes, `remined` confirms elsewhere.
    src = await h.blocks([miner, cold])
    new_blocks = h.chain.reorg(2, drop_txids=[dropped.txid])
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert batch.gone == (dropped.txid,)
    [again] = batch.txs
    assert again.txid == remined.txid and again.block_hash == new_blocks[0].hash and again.block_height == new_blocks[0].height
    assert again.block_hash != old_block.hash
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [miner, cold])
    assert h.chain.tx(dropped.txid) is None
    served = paths(h.server, n)
    assert served[0] == "/blocks/tip/hash" and f"/tx/{dropped.txid}" in served
    assert sum(p.endswith("/raw") for p in served) == 3  # the new branch, each block once
    state = json.loads((await h.cursors())["tip"])
    assert state["hash"] == h.chain.tip.hash and [b[1] for b in state["blocks"][-3:]] == [b.hash for b in new_blocks]
    assert state["pending"] == [] and state["orphaned"] == []

    # Nothing new: one request.
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert batch.txs == () and batch.cursors == () and paths(h.server, n) == ["/blocks/tip/hash"]


async def test_orphaned_tx_back_in_the_mempool_is_unconfirmed_then_confirmed_or_gone(h):
    miner, exchange = h.chain.address("miner"), h.chain.address("exchange", "p2pkh")
    h.chain.fund_many([(miner, 5 * COIN), (miner, 4 * COIN)])
    src = await h.blocks([miner])
    await h.catch_up(src)
    t1 = h.chain.pay([], [(exchange, COIN)], inputs=[outpoint(h.chain, miner, 0)], fee=1_000)
    t2 = h.chain.pay([], [(exchange, COIN)], inputs=[outpoint(h.chain, miner, 1)], fee=1_000)
    h.chain.mine()
    await h.poll(src)
    h.chain.reorg(1, include_mempool=False)  # both return to the mempool, the new blocks are empty
    batch = await h.poll(src)
    assert {t.txid: t.block_height for t in batch.txs} == {t1.txid: None, t2.txid: None} and batch.gone == ()
    assert sorted(json.loads((await h.cursors())["tip"])["pending"]) == sorted([t1.txid, t2.txid])
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [miner])  # both outputs unspent again

    h.chain.evict(t2.txid)
    h.chain.mine(txs=[t1.txid])
    batch = await h.poll(src)
    assert [(t.txid, t.block_height) for t in batch.txs] == [(t1.txid, h.chain.height)]
    assert batch.gone == (t2.txid,)
    assert json.loads((await h.cursors())["tip"])["pending"] == []
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [miner])


async def test_block_read_before_the_reorg_is_matched_against_the_undone_utxo_set(h):
    # The first new-branch block the walk reads (at old tip + 1) is read before the fork is known; it must be
    # matched after the orphaned block is undone, or a re-mined spend of a restored output is missed.
    miner, exchange = h.chain.address("miner"), h.chain.address("exchange", "p2pkh")
    h.chain.fund(miner, 5 * COIN)
    src = await h.blocks([miner])
    await h.catch_up(src)
    sale = h.chain.pay([], [(exchange, 5 * COIN - 1_000)], inputs=[outpoint(h.chain, miner, 0)], fee=1_000)
    h.chain.mine()
    await h.poll(src)
    assert await h.stored_utxos() == set()
    h.chain.reorg(1, new_blocks=0)  # the sale returns to the mempool
    h.chain.mine(txs=[])
    block = h.chain.mine(txs=[sale.txid])[0]  # re-mined one block higher than before
    batch = await h.poll(src)
    assert [(t.txid, t.block_hash) for t in batch.txs] == [(sale.txid, block.hash)] and batch.gone == ()
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [miner]) == set()
    state = json.loads((await h.cursors())["tip"])
    assert state["blocks"][-1][3] and state["blocks"][-1][3][0][5] == sale.txid  # the spend is in the new block's delta


# --- request counts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_watched", [10, 10_000])
async def test_one_new_block_costs_three_requests_plus_one_per_tx_with_a_foreign_input(h, n_watched):
    watched = [h.chain.address(f"w{i}") for i in range(n_watched)]
    a, b = watched[0], watched[-1]
    stranger = h.chain.address("stranger")
    h.chain.fund_many([(a, 2 * COIN), (stranger, 2 * COIN)])
    src = await h.blocks(watched)

    # Start at the tip as already seeded (as if from storage): seeding 10,000 addresses is a separate, one-time cost.
    def seed(store: Store) -> None:
        with store.batch():
            store.set_cursors([Cursor("blocks", "seeded", json.dumps({"v": 1, "addresses": watched}))], now=0)

    await h.store.run(seed)
    await h.poll(src)
    assert await h.stored_utxos() == set()  # seeded by the cursor: no requests, nothing known before the tip
    h.chain.fund(a, COIN, confirmed=False)  # a receipt → one matching tx
    h.chain.pay([stranger], [(h.chain.address("other"), COIN)], fee=500)  # noise
    h.chain.pay([stranger], [(b, COIN // 2)], fee=500)  # to the last watched address
    block = h.chain.mine()[0]
    assert block.tx_count == 4
    n = len(h.server.requests)
    batch = await h.poll(src)
    served = paths(h.server, n)
    assert served[:3] == ["/blocks/tip/hash", f"/block-height/{block.height}", f"/block/{block.hash}/raw"]
    assert sorted(served[3:]) == sorted(f"/tx/{t.txid}" for t in block.txs if t.txid in {x.txid for x in batch.txs})
    assert batch.requests == len(served) == 3 + 2
    assert {(u.address, u.value) for u in batch.utxos_added} == {(a, COIN), (b, COIN // 2)}
    # A sale spending only watched outputs (their values are stored) is built from the raw block: no /tx.
    received = next(u for u in batch.utxos_added if u.address == a)
    sale = h.chain.pay(
        [], [(h.chain.address("exchange"), COIN // 4)], inputs=[(received.txid, received.vout)], fee=700, change_address=b
    )
    block = h.chain.mine()[0]
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert paths(h.server, n) == ["/blocks/tip/hash", f"/block-height/{block.height}", f"/block/{block.hash}/raw"]
    assert batch.txs == (await src._api.get_tx(sale.txid),)  # the same ChainTx /tx gives, field for field


async def test_seeding_costs_two_requests_per_new_address_and_is_redone_when_a_block_arrives(h):
    a, b, ex = h.chain.address("a"), h.chain.address("b", "p2pkh"), h.chain.address("ex")
    ops = h.chain.fund_many([(a, COIN), (a, 2 * COIN), (b, 3 * COIN)])
    h.chain.pay([], [(ex, COIN // 2)], inputs=[ops[0]], fee=1_000)  # a confirmed output spent in the mempool
    h.chain.fund(b, 7, confirmed=False)  # an unconfirmed output: not part of the confirmed set
    # Mine a block the moment the first /utxo is served: the seed straddles two tips and is thrown away.
    mined = []

    @web.middleware
    async def mine_during_seed(request, handler):
        if request.path.endswith("/utxo") and not mined:
            mined.append(h.chain.mine(txs=[])[0])
        return await handler(request)

    server = await h.server_with(mine_during_seed)
    src = await h.blocks([a, b], server=server)
    batch = await h.poll(src)
    assert mined and batch.utxos_added == () and "seeded" not in await h.cursors()

    n = len(server.requests)
    batch = await h.poll(src)
    served = paths(server, n)
    assert served.count(f"/address/{a}/utxo") == 1 and served.count(f"/address/{a}/txs/mempool") == 1
    assert batch.requests == 1 + 2 + 2 * 2 + 1  # tip, the new block (height + raw), 2 per address, tip again
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [a, b])
    assert (ops[0].txid, 0, a, COIN) in await h.stored_utxos()  # spent only in the mempool: still confirmed-unspent
    assert sorted(json.loads((await h.cursors())["seeded"])["addresses"]) == sorted([a, b])

    # The mempool spend confirms: block mode sees it through the seeded outpoint.
    h.chain.mine()
    batch = await h.poll(src)
    assert any(i.prev_txid == ops[0].txid for t in batch.txs for i in t.inputs)
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [a, b])


async def test_watch_adds_an_address_that_is_seeded_alone_and_unwatched_ones_leave_the_seeded_cursor(h):
    a, b, gone = h.chain.address("a"), h.chain.address("b", "p2tr"), h.chain.address("gone")
    h.chain.fund_many([(a, COIN), (b, 2 * COIN), (gone, 3 * COIN)])
    src = await h.blocks([a, gone])
    await h.poll(src)
    assert sorted(json.loads((await h.cursors())["seeded"])["addresses"]) == sorted([a, gone])

    src = await h.blocks([a])  # restarted without `gone`: the seeded cursor is pruned, nothing is re-seeded
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert json.loads((await h.cursors())["seeded"])["addresses"] == [a] and paths(h.server, n) == ["/blocks/tip/hash"]
    assert batch.utxos_added == ()

    src.watch([b, a])  # learned at runtime (e.g. by clustering); `a` is already watched
    assert src.watched_addresses == (a, b)
    n = len(h.server.requests)
    batch = await h.poll(src)
    assert paths(h.server, n) == ["/blocks/tip/hash", f"/address/{b}/utxo", f"/address/{b}/txs/mempool", "/blocks/tip/hash"]
    assert {(u.address, u.value) for u in batch.utxos_added} == {(b, 2 * COIN)}
    assert sorted(json.loads((await h.cursors())["seeded"])["addresses"]) == sorted([a, b])


async def test_history_option_backfills_new_addresses_in_address_mode_first(h):
    a = h.chain.address("a")
    for i in range(30):
        h.chain.fund(a, 1_000 + i, confirmed=False)
        if i % 4 == 3:
            h.chain.mine()
    h.chain.mine()
    src = await h.blocks([a], history=True)
    batch = await h.poll(src)
    assert len(batch.txs) == 30 and all(t.is_confirmed for t in batch.txs)
    assert json.loads((await h.cursors())[f"history:{a}"])["tail"] is None
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [a]) and len(await h.stored_utxos()) == 30
    n = len(h.server.requests)
    assert (await h.poll(src)).requests == 1 and paths(h.server, n) == ["/blocks/tip/hash"]


# --- fallback and faults -----------------------------------------------------------------------------


def busy_history(chain: SimChain, watched: list[str], blocks: int = 12) -> None:
    rng = random.Random(4)
    noise = [chain.address(f"noise{i}") for i in range(30)]
    chain.fund_many([(n, COIN) for n in noise] + [(w, 4 * COIN) for w in watched])
    for k in range(blocks):
        for n in noise:  # 30 noise txs per block: more than one 25-tx page
            chain.pay([n], [(rng.choice(noise), 10_000)], fee=200)
        w = rng.choice(watched)
        chain.pay([w], [(rng.choice(noise), 100_000), (rng.choice(watched), 50_000)], fee=1_000)
        chain.fund(rng.choice(watched), 77_000 + k, confirmed=False)
        chain.mine()


async def _run_to_tip(src, chain: SimChain, *, max_polls: int = 30):
    """Poll (keeping cursors in memory) until the tip; the union of txs and the net UTXO changes."""
    cursors: dict[str, str] = {}
    txs, added, spent, batches = {}, {}, set(), []
    for _ in range(max_polls):
        b = await src.poll(cursors)
        batches.append(b)
        cursors.update({c.key: c.state for c in b.cursors})
        txs.update({t.txid: t for t in b.txs})
        for u in b.utxos_added:
            added[(u.txid, u.vout)] = u
        spent |= set(b.utxos_spent)
        if "tip" in cursors and json.loads(cursors["tip"])["hash"] == chain.tip.hash and not b.failed:
            break
    return txs, {k: v for k, v in added.items() if k not in spent}, cursors, batches


async def test_raw_unavailable_falls_back_to_25_tx_pages_with_the_same_result(h, caplog):
    watched = [h.chain.address(f"w{i}", KINDS[i]) for i in range(5)]
    start = h.chain.height + 1
    busy_history(h.chain, watched)
    raw_src = await h.blocks(watched, start_height=start)
    raw_txs, raw_utxos, _, _ = await _run_to_tip(raw_src, h.chain)

    refused = []

    @web.middleware
    async def no_raw(request, handler):  # a server without the endpoint (the sim's log never sees these)
        if request.path.endswith("/raw"):
            refused.append(request.path)
            return web.Response(status=404, text="endpoint does not exist")
        return await handler(request)

    server = await h.server_with(no_raw)
    page_src = await h.blocks(watched, start_height=start, server=server)
    with caplog.at_level(logging.WARNING, logger="watchers.esplora_blocks"):
        page_txs, page_utxos, _, _ = await _run_to_tip(page_src, h.chain)
    assert page_txs == raw_txs and len(raw_txs) >= 24
    assert page_utxos == raw_utxos and raw_utxos
    served = paths(server)
    assert len(refused) == 1  # tried once, then never again
    assert not any(p.startswith("/tx/") for p in served)  # pages carry prevouts: no /tx per match
    block = h.chain.block_at(start + 3)
    assert f"/block/{block.hash}/txs/0" in served and f"/block/{block.hash}/txs/25" in served
    assert sum("no /block/:hash/raw" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("kind", ["429", "500", "garbage"])
async def test_faults_on_raw_stop_the_walk_at_the_last_good_block_and_retry_next_poll(h, kind, caplog):
    watched = [h.chain.address(f"w{i}", KINDS[i]) for i in range(5)]
    start = h.chain.height + 1
    busy_history(h.chain, watched, blocks=8)
    clean = await h.blocks(watched, start_height=start)
    want_txs, want_utxos, _, _ = await _run_to_tip(clean, h.chain)

    bad = h.chain.block_at(start + 4)
    # retries=1: two attempts per request, and the rule fires for both (a whole poll fails on that block).
    h.server.faults.add(rf"/block/{bad.hash}/raw$", kind, times=2 if kind != "garbage" else 1)
    src = await h.blocks(watched, start_height=start, retries=1)
    cursors: dict[str, str] = {}
    with caplog.at_level(logging.WARNING, logger="watchers.esplora_blocks"):
        first = await src.poll(cursors)
    cursors.update({c.key: c.state for c in first.cursors})
    state = json.loads(cursors["tip"])
    assert state["height"] == bad.height - 1  # applied up to the block before the bad one, not past it
    assert first.failed == () and all(t.block_height < bad.height for t in first.txs)
    assert any("block mode poll stopped" in r.getMessage() for r in caplog.records)
    rest_txs = {t.txid: t for t in first.txs}
    added = {(u.txid, u.vout): u for u in first.utxos_added}
    spent = set(first.utxos_spent)
    for _ in range(5):
        b = await src.poll(cursors)
        cursors.update({c.key: c.state for c in b.cursors})
        rest_txs.update({t.txid: t for t in b.txs})
        added.update({(u.txid, u.vout): u for u in b.utxos_added})
        spent |= set(b.utxos_spent)
        if json.loads(cursors["tip"])["hash"] == h.chain.tip.hash:
            break
    assert rest_txs == want_txs
    assert {k: v for k, v in added.items() if k not in spent} == want_utxos


async def test_tip_failure_before_any_progress_reports_the_tip_key_failed(h, caplog):
    a = h.chain.address("a")
    h.chain.fund(a, COIN)
    src = await h.blocks([a], retries=0)
    await h.poll(src)
    h.server.faults.add(r"^/blocks/tip/hash$", "500", times=1)
    with caplog.at_level(logging.WARNING, logger="watchers.esplora_blocks"):
        batch = await h.poll(src)
    assert batch.failed == ("tip",) and batch.cursors == () and batch.requests == 1
    with caplog.at_level(logging.INFO, logger="watchers.esplora_blocks"):
        batch = await h.poll(src)
    assert batch.failed == ()
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_an_uncommitted_batch_is_rolled_back_in_memory_before_the_next_poll(h):
    a, ex = h.chain.address("a"), h.chain.address("ex")
    h.chain.fund_many([(a, COIN), (a, 2 * COIN)])
    src = await h.blocks([a])
    await h.catch_up(src)
    spend = h.chain.pay([], [(ex, COIN // 2)], inputs=[outpoint(h.chain, a, 0)], fee=1_000)
    h.chain.mine()
    lost = await h.poll(src, commit=False)  # the pipeline failed to store this batch
    again = await h.poll(src)  # same stored cursors: the same answer, the spend matched again
    assert [t.txid for t in lost.txs] == [t.txid for t in again.txs] == [spend.txid]
    assert again.utxos_spent == lost.utxos_spent and again.utxos_added == lost.utxos_added
    assert await h.stored_utxos() == confirmed_utxos(h.chain, [a])


# --- helpers ------------------------------------------------------------------------------------------


def test_choose_mode_states_its_choice():
    assert choose_mode("auto", 10)[0] == "address" and "10 watched addresses < 50" in choose_mode("auto", 10)[1]
    assert choose_mode("auto", 50)[0] == "block" and "block" in choose_mode("auto", 50)[1]
    assert choose_mode("auto", 200, threshold=500)[0] == "address"
    assert choose_mode("block", 1) == ("block", "mode=block (configured) for 1 watched addresses")
    assert choose_mode("address", 10_000)[0] == "address"
    with pytest.raises(ValueError):
        choose_mode("fast", 3)


def test_mode_sees_says_plainly_what_each_mode_sees():
    assert "unconfirmed txs of all 10 addresses at every poll" in mode_sees("address", 10, 25)
    assert "unconfirmed txs of every address at every poll" in mode_sees("block", 10, 25)
    text = mode_sees("block", 1_000, 25)
    assert "unconfirmed txs of 25 addresses per poll" in text and "at least every 40 polls" in text
    assert "balances from the watched UTXO set" in text
    assert "no unconfirmed txs (mempool_checks = 0)" in mode_sees("block", 1_000, 0)
    assert "sees unconfirmed txs only of the `mempool_checks` addresses" in choose_mode("auto", 1_000)[1]


def test_address_script_agrees_with_the_validating_codec():
    from watchers.addresses import address_to_script

    chain = SimChain()
    for i, kind in enumerate(KINDS):
        a = chain.address(f"x{i}", kind)
        assert address_script(a) == address_to_script(a) == chain.script_for(a)
        assert address_script(a.upper() if a.startswith("bc1") else a) == address_to_script(a)


def test_given_utxos_of_other_chains_or_unwatched_addresses_are_ignored():
    chain = SimChain()
    a, b = chain.address("a"), chain.address("b")
    src = EsploraBlockSource(
        "blocks",
        None,
        [a],
        clock=FrozenClock(),
        utxos=[  # type: ignore[arg-type]
            WatchedUtxo("bitcoin", "11" * 32, 0, a, 5),
            WatchedUtxo("bitcoin", "22" * 32, 0, b, 5),
            WatchedUtxo("testnet", "33" * 32, 0, a, 5),
        ],
    )
    assert src.utxo_count == 1 and src.watched_addresses == (a,)


# --- mempool ------------------------------------------------------------------------------------------


async def test_mempool_checks_are_bounded_round_robin_and_see_sales_replacements_and_confirmations(h):
    watched = sorted(h.chain.address(f"mp{i}") for i in range(5))
    exchange = h.chain.address("mp-exchange")
    h.chain.fund_many([(a, 3 * COIN) for a in watched])
    src = await h.blocks(watched, mempool_checks=2)
    await h.poll(src)  # start at the tip + seed (UTXOs now known: every address holds one), check 0 and 1
    checked = []
    for _ in range(3):
        n = len(h.server.requests)
        batch = await h.poll(src)
        checked.append([p.split("/")[2] for p in paths(h.server, n) if p.endswith("/txs/mempool")])
        assert batch.txs == () and batch.requests == 1 + 2  # tip hash + 2 mempool checks
    # two per poll, in address order, round the ring: every address is seen within ceil(5 / 2) polls
    assert checked == [watched[2:4], [watched[4], watched[0]], watched[1:3]]
    sale = h.chain.pay([watched[3]], [(exchange, COIN)], fee=1_000)
    b1 = await h.poll(src)  # watched[3] and watched[4] are next in the ring
    assert [t.txid for t in b1.txs] == [sale.txid] and not b1.txs[0].is_confirmed
    assert b1.txs[0] == await src._api.get_tx(sale.txid)
    # RBF: the address with a pending tx is checked first, every poll, so the replacement shows at once
    bump = h.chain.replace(sale.txid, fee=5_000)
    n = len(h.server.requests)
    b2 = await h.poll(src)
    served = paths(h.server, n)
    assert served[1] == f"/address/{watched[3]}/txs/mempool" and f"/tx/{sale.txid}" in served
    assert [t.txid for t in b2.txs] == [bump.txid] and b2.gone == (sale.txid,)
    # the replacement confirms: matched in the block (built from raw: its input is a watched UTXO), not looked up
    block = h.chain.mine()[0]
    n = len(h.server.requests)
    b3 = await h.poll(src)
    assert [(t.txid, t.block_height) for t in b3.txs] == [(bump.txid, block.height)] and b3.gone == ()
    assert not [p for p in paths(h.server, n) if p.startswith("/tx/")]
    state = json.loads((await h.cursors())["mempool"])
    assert state["seen"] == {}  # nothing pending any more
