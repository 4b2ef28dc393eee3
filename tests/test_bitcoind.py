"""BitcoindSource end to end: SimChain → BitcoindServer (Core 25+ JSON-RPC shapes) on 127.0.0.1 → Batch.

The parity test runs EsploraSource (address mode, over EsploraServer) and BitcoindSource on the same chain
history and compares the ChainTx and the entity flows they give, step by step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from decimal import Decimal

import aiohttp
import fakes.bcoin as _bcoin
import pytest
from builders import entity

from monitor.clock import FrozenClock
from monitor.core.flows import entity_flows
from monitor.core.registry import Registry
from monitor.model import MalformedError, SourceError, TransientError
from monitor.sim.bitcoind_server import (
    BitcoindServer,
    RawNumber,
    core_asm,
    core_descriptor,
    descriptor_checksum,
)
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from watchers import Source
from watchers.bitcoind.parse import btc_to_sats, format_core_version, parse_core_tx
from watchers.bitcoind.rpc import BitcoindRpc, rpc_code
from watchers.bitcoind.source import TIP_KEY, BitcoindSource
from watchers.esplora import EsploraSource
from watchers.http import HttpClient

COIN = 100_000_000
bcoin = _bcoin.bcoin  # fixture: a real bcoin regtest node (installed into a cache dir on first use)


class Harness:
    """One chain served as Core JSON-RPC (and as Esplora), a shared session, cursors per source."""

    def __init__(self, chain: SimChain, node: BitcoindServer, esplora: EsploraServer, session: aiohttp.ClientSession):
        self.chain, self.node, self.esplora, self.session = chain, node, esplora, session
        self.clock = FrozenClock()
        self.cursors: dict[str, dict[str, str]] = {}

    def rpc(self, **kw) -> BitcoindRpc:
        kw.setdefault("user", "rpcuser")
        kw.setdefault("password", "rpcpassword")
        return BitcoindRpc(self.node.url, self.session, clock=self.clock, rng=random.Random(1), **kw)

    def core(self, addresses, *, rpc: BitcoindRpc | None = None, name: str = "core", **kw) -> BitcoindSource:
        return BitcoindSource(name, rpc or self.rpc(), addresses, clock=self.clock, **kw)

    def esplora_source(self, addresses) -> EsploraSource:
        http = HttpClient("esplora", [self.esplora.url], self.session, clock=self.clock, rate_limit=None)
        return EsploraSource("esplora", http, addresses, clock=self.clock)

    async def poll(self, source):
        """Poll like the pipeline does: the returned cursors are stored for the next poll."""
        stored = self.cursors.setdefault(source.name, {})
        batch = await source.poll(dict(stored))
        for c in batch.cursors:
            stored[c.key] = c.state
        return batch

    def state(self, source) -> dict:
        return json.loads(self.cursors[source.name][TIP_KEY])


@pytest.fixture
async def h():
    chain = SimChain(seed=11)
    async with BitcoindServer(chain) as node, EsploraServer(chain) as esplora, aiohttp.ClientSession() as session:
        yield Harness(chain, node, esplora, session)


def by_txid(batch) -> dict:
    return {t.txid: t for t in batch.txs}


# --- parity with Esplora ----------------------------------------------------------------------------------


async def test_same_txs_and_flows_as_esplora_step_by_step(h):
    c = h.chain
    a1, a2 = c.address("miner-a hot"), c.address("miner-a cold", "p2pkh")
    b1, b2 = c.address("miner-b", "p2sh"), c.address("miner-b tr", "p2tr")
    x1 = c.address("exchange deposit", "p2wsh")
    stranger = c.address("stranger")
    registry = Registry(
        [
            entity("Miner A", addresses=[a1, a2]),
            entity("Miner B", addresses=[b1, b2]),
            entity("Exchange X", kind="exchange", addresses=[x1]),
        ]
    )
    watched = registry.watched_addresses("bitcoin")
    assert set(watched) == {a1, a2, b1, b2}
    c.fund_many([(a1, 3 * COIN), (a2, 2 * COIN), (b1, 5 * COIN), (b2, COIN)])
    c.fund(stranger, COIN)  # noise: a block with no watched tx
    core = h.core(watched, start_height=c.start_height, max_blocks=100)
    esplora = h.esplora_source(watched)
    assert isinstance(core, Source)

    steps = []

    def spend_with_change():
        c.pay([a1], [(x1, COIN)], fee=1_500)

    def confirm():
        c.mine()

    def consolidation_with_unconfirmed_parent():
        parent = c.pay([a2], [(a1, COIN)], fee=800)  # internal, unconfirmed
        c.pay([a1], [(a1, COIN + 50_000)], fee=900, inputs=[(parent.txid, 0), *_utxos(c, a1, exclude=parent.txid)[:1]])

    def two_entities_and_a_stranger():
        c.pay([b1], [(a1, 40_000), (x1, COIN), (stranger, 7_000)], fee=2_000)

    def unconfirmed_funding_then_spend():
        c.fund(b2, 2 * COIN, confirmed=False)  # faucet parent in the mempool: its input comes from gettxout
        c.pay([b2], [(x1, COIN // 2)], fee=1_000)

    def coinbase_to_watched():
        c.mine(coinbase_to=b1, coinbase_tag="/pool/")

    steps = [
        spend_with_change,
        confirm,
        consolidation_with_unconfirmed_parent,
        confirm,
        two_entities_and_a_stranger,
        unconfirmed_funding_then_spend,
        confirm,
        coinbase_to_watched,
    ]

    first_core, first_esplora = await h.poll(core), await h.poll(esplora)
    assert by_txid(first_core) == by_txid(first_esplora)
    assert len(first_core.txs) == 1  # the faucet tx funding the four watched addresses
    compared = 1
    for step in steps:
        step()
        got_core, got_esplora = await h.poll(core), await h.poll(esplora)
        core_txs, esplora_txs = by_txid(got_core), by_txid(got_esplora)
        assert core_txs.keys() == esplora_txs.keys(), step.__name__
        assert core_txs == esplora_txs, step.__name__
        assert core_txs, step.__name__
        for txid, tx in core_txs.items():
            assert entity_flows(tx, registry) == entity_flows(esplora_txs[txid], registry)
        assert got_core.gone == got_esplora.gone == ()
        compared += len(core_txs)
    assert compared >= 12
    assert not h.state(core)["mempool"] and not h.state(core)["orphans"]


def _utxos(chain: SimChain, address: str, exclude: str = "") -> list[tuple[str, int]]:
    return [(u.txid, u.vout) for u in chain.utxos(address) if u.status is not None and u.txid != exclude]


async def test_flows_of_a_spend_a_consolidation_and_a_two_entity_tx(h):
    c = h.chain
    a1, a2, b1, x1 = c.address("fa1"), c.address("fa2", "p2pkh"), c.address("fb1"), c.address("fx1")
    registry = Registry(
        [entity("A", addresses=[a1, a2]), entity("B", addresses=[b1]), entity("X", kind="exchange", addresses=[x1])]
    )
    c.fund_many([(a1, 2 * COIN), (a2, COIN), (b1, COIN)])
    core = h.core(registry.watched_addresses("bitcoin"))
    await h.poll(core)
    spend = c.pay([a1], [(x1, COIN // 2)], fee=1_000)
    consolidate = c.pay([a2], [(a1, COIN - 500)], fee=500)
    both = c.pay([b1], [(a1, 30_000), (x1, 60_000)], fee=700)
    c.mine()
    txs = by_txid(await h.poll(core))
    assert set(txs) == {spend.txid, consolidate.txid, both.txid}
    (f,) = entity_flows(txs[spend.txid], registry)
    assert (f.entity, f.spent, f.change, f.fee_share, f.out) == ("A", 2 * COIN, 2 * COIN - COIN // 2 - 1_000, 1_000, COIN // 2)
    (f,) = entity_flows(txs[consolidate.txid], registry)
    assert (f.entity, f.out, f.direction) == ("A", 0, "internal")
    flows = {f.entity: f for f in entity_flows(txs[both.txid], registry)}
    assert flows["B"].out == 30_000 + 60_000 and flows["A"].received == 30_000 and flows["A"].spent == 0


# --- cost and cursor ----------------------------------------------------------------------------------


async def test_idle_poll_is_one_request_and_cursor_shape(h):
    a = h.chain.address("idle")
    h.chain.fund(a, COIN)
    core = h.core([a])
    batch = await h.poll(core)
    assert h.node.methods == ["getnetworkinfo", "getrawmempool", "getblockchaininfo", "getblockhash", "getblock"]
    assert batch.requests == 4  # getnetworkinfo, the [getrawmempool, getblockchaininfo] batch, getblockhash, getblock
    assert [t.block_height for t in batch.txs] == [h.chain.height] and batch.tip_height == h.chain.height
    state = h.state(core)
    assert state["v"] == 1 and state["height"] == h.chain.height and state["hash"] == h.chain.tip.hash
    assert state["blocks"] == [[h.chain.height, h.chain.tip.hash, [batch.txs[0].txid]]]
    n = len(h.node.calls)
    batch = await h.poll(core)
    assert batch.txs == () and batch.requests == 1
    assert h.node.methods[n:] == ["getrawmempool", "getblockchaininfo"]


async def test_irrelevant_mempool_txs_are_fetched_once(h):
    a, other = h.chain.address("w"), h.chain.address("noise")
    h.chain.fund_many([(a, COIN), (other, COIN)])
    core = h.core([a])
    await h.poll(core)
    noise = h.chain.pay([other], [(h.chain.address("n2"), 10_000)], fee=300)
    batch = await h.poll(core)
    assert batch.txs == ()
    fetched = [p for m, p in h.node.calls if m == "getrawtransaction" and p[0] == noise.txid]
    assert fetched == [[noise.txid, 2]]  # verbosity 2 on Core 25+
    n = len(h.node.calls)
    await h.poll(core)
    assert h.node.methods[n:] == ["getrawmempool", "getblockchaininfo"]


async def test_catch_up_is_capped_per_poll_with_progress(h):
    a = h.chain.address("cap")
    core = h.core([a], max_blocks=2)
    h.chain.fund(a, COIN)
    await h.poll(core)
    for i in range(5):
        h.chain.fund(a, 1_000 + i)
    seen = []
    heights = []
    unfinished = []
    for _ in range(3):
        batch = await core.poll(dict(h.cursors["core"]), progress=lambda *x: seen.append(x))
        for cur in batch.cursors:
            h.cursors["core"][cur.key] = cur.state
        heights.append([t.block_height for t in batch.txs])
        unfinished.append(batch.unfinished)
        assert batch.tip_height == h.chain.height
    tip = h.chain.height
    assert heights == [[tip - 4, tip - 3], [tip - 2, tip - 1], [tip]]
    assert unfinished == [("tip",), ("tip",), ()]  # `backfill` polls again at once while behind
    assert seen[:2] == [(TIP_KEY, 1, 5), (TIP_KEY, 2, 5)]


async def test_unreadable_cursor_starts_at_the_tip(h, caplog):
    a = h.chain.address("cur")
    h.chain.fund(a, COIN)
    h.chain.fund(a, 2 * COIN)
    batch = await h.core([a]).poll({TIP_KEY: '{"v": 7}'})
    assert [t.block_height for t in batch.txs] == [h.chain.height]
    assert "cursor unreadable" in caplog.text


# --- mempool, RBF, reorgs ---------------------------------------------------------------------------------


async def test_mempool_tx_then_confirmation_then_rbf_and_eviction(h):
    c = h.chain
    a, dest = c.address("rbf"), c.address("dest")
    c.fund(a, COIN)
    core = h.core([a])
    await h.poll(core)
    tx = c.pay([a], [(dest, COIN // 2)], fee=1_000)
    batch = await h.poll(core)
    assert [(t.txid, t.block_height, t.fee) for t in batch.txs] == [(tx.txid, None, 1_000)]
    assert h.state(core)["mempool"] == [tx.txid]

    new = c.replace(tx.txid)
    batch = await h.poll(core)
    assert batch.gone == (tx.txid,)
    assert [(t.txid, t.block_height, t.fee) for t in batch.txs] == [(new.txid, None, 2_000)]
    assert h.state(core)["mempool"] == [new.txid]

    c.evict(new.txid)
    batch = await h.poll(core)
    assert batch.gone == (new.txid,) and batch.txs == () and h.state(core)["mempool"] == []

    again = c.pay([a], [(dest, 1_234)], fee=600)
    await h.poll(core)
    block = c.mine()[0]
    batch = await h.poll(core)
    assert [(t.txid, t.block_height, t.block_hash) for t in batch.txs] == [(again.txid, block.height, block.hash)]
    assert batch.gone == () and h.state(core)["mempool"] == []


async def test_reorg_drops_remines_and_returns_to_mempool(h):
    c = h.chain
    a, dest = c.address("reorg"), c.address("reorg-dest")
    c.fund_many([(a, COIN), (a, COIN), (a, COIN)])
    core = h.core([a])
    await h.poll(core)
    dropped = c.pay([a], [(dest, 10_000)], fee=500)
    kept = c.pay([a], [(dest, 20_000)], fee=500, inputs=_utxos(c, a)[:1])
    waits = c.pay([a], [(dest, 30_000)], fee=500, inputs=_utxos(c, a)[:1])
    c.mine()
    old_tip = c.tip.hash
    batch = await h.poll(core)
    assert {t.txid for t in batch.txs} == {dropped.txid, kept.txid, waits.txid}

    # 1-block reorg: `dropped` vanishes, `kept` is re-mined on the new branch, `waits` goes back to the mempool.
    c.reorg(1, drop_txids=[dropped.txid], include_mempool=False)
    c.mine(txs=[kept.txid])
    assert c.in_mempool(waits.txid) and c.tx(dropped.txid) is None
    n = len(h.node.calls)
    batch = await h.poll(core)
    got = by_txid(batch)
    assert batch.gone == (dropped.txid,)
    assert got[kept.txid].block_hash == c.tx_status(kept.txid).block_hash != old_tip
    assert got[waits.txid].block_height is None
    assert set(got) == {kept.txid, waits.txid}
    assert ("getblockhash", [c.height - 2]) in h.node.calls[n:]  # the fork walk
    state = h.state(core)
    assert state["hash"] == c.tip.hash and state["mempool"] == [waits.txid] and state["orphans"] == []
    assert old_tip not in {b for _, b, _ in state["blocks"]}


async def test_same_height_reorg_and_orphans_wait_for_the_tip(h):
    c = h.chain
    a = c.address("sh")
    c.fund_many([(a, COIN), (a, COIN)])
    core = h.core([a], max_blocks=1)
    await h.poll(core)
    back = c.pay([a], [(c.address("x"), 5_000)], fee=400)
    dropped = c.pay([a], [(c.address("y"), 6_000)], fee=400, inputs=_utxos(c, a)[:1])
    c.mine()
    await h.poll(core)
    # A branch of the same height replaces the block: `back` returns to the mempool, `dropped` vanishes;
    # then two more blocks, read one per poll.
    c.reorg(1, new_blocks=1, include_mempool=False, drop_txids=[dropped.txid])
    c.mine(2, txs=[])
    batch = await h.poll(core)
    # `back` is in the mempool: returned unconfirmed at once; `dropped` waits until the tip is reached,
    # because a block not read yet could still confirm it.
    assert [(t.txid, t.block_height) for t in batch.txs] == [(back.txid, None)] and batch.gone == ()
    assert h.state(core)["orphans"] == [dropped.txid] and h.state(core)["mempool"] == [back.txid]
    batch = await h.poll(core)
    assert batch.gone == () and batch.txs == ()
    batch = await h.poll(core)
    assert batch.gone == (dropped.txid,) and batch.txs == ()
    assert h.state(core)["orphans"] == [] and h.state(core)["mempool"] == [back.txid]
    assert h.state(core)["hash"] == c.tip.hash


async def test_unresolved_prevout_is_retried_next_poll_and_txindex_resolves_it(h):
    c = h.chain
    a = c.address("res")
    c.fund(a, COIN)
    core = h.core([a])
    await h.poll(core)
    tx = c.pay([a], [(c.address("res2"), 1_000)], fee=100)
    h.node.mutate = lambda m, p, r: None if m == "gettxout" else r  # the coin seems gone (a race with a block)
    batch = await h.poll(core)
    assert batch.txs == ()  # neither returned nor called irrelevant: tried again next poll
    h.node.txindex = True  # with txindex the parent is found by getrawtransaction
    batch = await h.poll(core)
    assert [t.txid for t in batch.txs] == [tx.txid] and batch.txs[0].inputs[0].value == COIN


async def test_mempool_backlog_is_spread_over_polls(h, caplog):
    caplog.set_level(logging.INFO)
    c = h.chain
    a = c.address("bl")
    core = h.core([a], max_mempool_txs=2)
    c.fund(a, COIN)
    await h.poll(core)
    txids = {c.fund(a, 1_000 + i, confirmed=False).txid for i in range(5)}
    got = set()
    for _ in range(3):
        got |= {t.txid for t in (await h.poll(core)).txs}
    assert got == txids
    assert "examined=2 left_for_next_polls=3" in caplog.text


async def test_mempool_can_be_switched_off(h):
    c = h.chain
    a = c.address("off")
    c.fund(a, COIN)
    core = h.core([a], mempool=False)
    await h.poll(core)
    tx = c.pay([a], [(c.address("off2"), 1_000)], fee=100)
    batch = await h.poll(core)
    assert batch.txs == () and "getrawmempool" not in h.node.methods
    c.mine()
    assert [t.txid for t in (await h.poll(core)).txs] == [tx.txid]


async def test_new_addresses_make_the_mempool_be_examined_again(h):
    c = h.chain
    a, b = c.address("old"), c.address("LATER")
    c.fund_many([(a, COIN), (b, COIN)])
    core = h.core([a])
    await h.poll(core)
    tx = c.pay([b], [(c.address("z"), 1_000)], fee=100)
    assert (await h.poll(core)).txs == ()
    core.set_addresses([a, b.upper()])  # bech32 is case-insensitive
    assert [t.txid for t in (await h.poll(core)).txs] == [tx.txid]
    core.set_addresses([b, a])  # the same set again: nothing is examined again
    assert (await h.poll(core)).requests == 1


# --- errors ---------------------------------------------------------------------------------------------------


async def test_wrong_credentials_give_a_clear_message_and_recover(h, caplog):
    caplog.set_level(logging.INFO)
    a = h.chain.address("auth")
    h.chain.fund(a, COIN)
    core = h.core([a], rpc=h.rpc(password="not-the-password"))
    with pytest.raises(SourceError) as err:
        await h.poll(core)
    assert not isinstance(err.value, TransientError)
    where = f"127.0.0.1:{h.node.port}"
    assert str(err.value) == (f"bitcoind at {where} rejected the RPC credentials (check rpcuser/rpcpassword or the cookie file)")
    assert "not-the-password" not in caplog.text and "not-the-password" not in str(err.value)
    assert h.node.calls == []  # refused before any method ran
    h.node.password = "not-the-password"  # the operator fixes the node's rpcpassword
    batch = await h.poll(core)
    assert len(batch.txs) == 1
    assert "bitcoind recovered" in caplog.text


async def test_cookie_file_and_a_node_restart(h, tmp_path):
    cookie = tmp_path / ".cookie"
    node = BitcoindServer(h.chain, user=None, cookie_path=cookie)
    async with node:
        a = h.chain.address("cookie")
        h.chain.fund(a, COIN)
        rpc = BitcoindRpc(node.url, h.session, clock=h.clock, cookie_file=cookie)
        assert (await rpc.call("getblockcount")) == h.chain.height
        await asyncio.to_thread(node.rotate_cookie)  # the node restarted and wrote a new cookie: re-read once, no error
        assert (await rpc.call("getblockcount")) == h.chain.height
        token = (await asyncio.to_thread(cookie.read_text)).split(":", 1)[1]
        await asyncio.to_thread(node.rotate_cookie)
        await asyncio.to_thread(cookie.write_text, "__cookie__:" + "0" * 64)  # a wrong cookie stays wrong after the re-read
        with pytest.raises(SourceError, match="rejected the RPC credentials") as err:
            await rpc.call("getblockcount")
        assert token not in str(err.value)
    missing = BitcoindRpc(node.url, h.session, clock=h.clock, cookie_file=tmp_path / "nope")
    with pytest.raises(SourceError, match="cannot read the bitcoind cookie file"):
        await missing.call("getblockcount")


async def test_initial_block_download_is_transient_with_progress(h, caplog):
    caplog.set_level(logging.INFO)
    a = h.chain.address("ibd")
    h.chain.fund(a, COIN)
    h.node.ibd, h.node.verification_progress = True, 0.42137
    core = h.core([a])
    with pytest.raises(TransientError) as err:
        await h.poll(core)
    assert str(err.value) == f"bitcoind at 127.0.0.1:{h.node.port} is in initial block download (42.1% verified); waiting"
    with pytest.raises(TransientError):
        await h.poll(core)
    assert caplog.text.count("bitcoind poll failed") == 1  # logged once, not every interval
    assert TIP_KEY not in h.cursors.get("core", {})
    h.node.ibd = False
    batch = await h.poll(core)
    assert len(batch.txs) == 1 and "bitcoind recovered" in caplog.text


async def test_warmup_is_transient(h):
    h.chain.fund(h.chain.address("w"), COIN)
    h.node.warmup = "Loading block index…"
    with pytest.raises(TransientError, match=r"is starting \(Loading block index…\); waiting"):
        await h.poll(h.core([h.chain.address("w")]))


@pytest.mark.parametrize("version, shown", [(220000, "22.0"), (210100, "0.21.1")])
async def test_core_older_than_23_is_refused(h, version, shown):
    h.chain.fund(h.chain.address("old"), COIN)
    h.node.version = version
    with pytest.raises(SourceError) as err:
        await h.poll(h.core([h.chain.address("old")]))
    assert str(err.value) == (
        f"Bitcoin Core 23.0 or newer is needed (getblock verbosity 3 returns prevouts); "
        f"bitcoind at 127.0.0.1:{h.node.port} is {shown} (/Satoshi:{shown}.0/)"
        if version >= 220000
        else f"Bitcoin Core 23.0 or newer is needed (getblock verbosity 3 returns prevouts); "
        f"bitcoind at 127.0.0.1:{h.node.port} is {shown} (/Satoshi:{shown}/)"
    )
    assert h.node.methods == ["getnetworkinfo"]


async def test_node_that_does_not_say_its_version_is_judged_by_its_getblock_answer(h):
    """A non-Core node (version not an integer) that answers verbosity 3 like Core 22 (no prevouts)."""
    a = h.chain.address("nv")
    h.chain.fund(a, COIN)
    h.chain.pay([a], [(h.chain.address("nv2"), 1_000)], fee=100)
    h.chain.mine()

    def mutate(method, params, result):
        if method == "getnetworkinfo":
            return {**result, "version": "v1.0.2", "subversion": "/other-node:1.0.2/"}
        if method == "getblock" and params[1:] == [3]:
            return {
                **result,
                "tx": [{**t, "vin": [{k: v for k, v in i.items() if k != "prevout"} for i in t["vin"]]} for t in result["tx"]],
            }
        return result

    h.node.mutate = mutate
    with pytest.raises(
        SourceError,
        match=r"Bitcoin Core 23.0 or newer is needed .* \(/other-node:1.0.2/\) answered "
        r"getblock verbosity 3 without prevouts",
    ):
        await h.poll(h.core([a]))

    def refuse(method, params, result):
        if method == "getnetworkinfo":
            return {**result, "version": "v1.0.2", "subversion": "/other-node:1.0.2/"}
        return result

    h.node.mutate = refuse
    h.node.version = 220000  # only affects getblock's shape now (the version field is overwritten)
    core = h.core([a])
    with pytest.raises(SourceError, match="answered getblock verbosity 3 without prevouts"):
        await h.poll(core)


async def test_core_24_works_through_the_mempool_fallback(h):
    """Core 23/24 have getblock verbosity 3 but not getrawtransaction verbosity 2: mempool txs still resolve."""
    h.node.version = 240000
    c = h.chain
    a, dest = c.address("v24"), c.address("v24-dest")
    c.fund(a, COIN)
    core, esplora = h.core([a]), h.esplora_source([a])
    await h.poll(core), await h.poll(esplora)
    c.pay([a], [(dest, 5_000)], fee=321)
    got_core, got_esplora = await h.poll(core), await h.poll(esplora)
    assert by_txid(got_core) == by_txid(got_esplora) and len(got_core.txs) == 1
    assert ["getrawtransaction", [got_core.txs[0].txid, True]] in [[m, p] for m, p in h.node.calls]


async def test_pruned_block_without_prevouts_is_malformed_naming_the_field(h):
    a = h.chain.address("pr")
    h.chain.fund(a, COIN)
    h.chain.pay([a], [(h.chain.address("pr2"), 1_000)], fee=100)
    h.chain.mine()

    def no_prevout(method, params, result):
        if method == "getblock" and params[1:] == [3]:
            txs = [dict(t) for t in result["tx"]]
            txs[1] = {**txs[1], "vin": [{k: v for k, v in i.items() if k != "prevout"} for i in txs[1]["vin"]]}
            return {**result, "tx": txs}
        return result

    h.node.mutate = no_prevout
    with pytest.raises(
        MalformedError,
        match=r"^tx\[1\]\.vin\[0\]\.prevout: missing in getblock [0-9a-f]{64} "
        r"\(height \d+\) verbosity 3",
    ):
        await h.poll(h.core([a]))


@pytest.mark.parametrize(
    "bad, message",
    [
        (RawNumber("0.123456789"), r"tx\[1\]\.vout\[0\]\.value: 0\.123456789 BTC is not a whole number of satoshis"),
        ("0.001", r"tx\[1\]\.vout\[0\]\.value: expected an amount in BTC \(a JSON number\), got '0.001'"),
        (RawNumber("-0.00000001"), r"tx\[1\]\.vout\[0\]\.value: -1E-8 BTC is outside 0\.\.21,000,000 BTC"),
        (RawNumber("21000000.00000001"), r"tx\[1\]\.vout\[0\]\.value: .* is outside"),
    ],
)
async def test_malformed_amounts_name_the_field(h, bad, message):
    a = h.chain.address("amt")
    h.chain.fund(a, COIN)
    h.chain.pay([a], [(h.chain.address("amt2"), 1_000)], fee=100)
    h.chain.mine()

    def mutate(method, params, result):
        if method == "getblock" and params[1:] == [3]:
            txs = [dict(t) for t in result["tx"]]
            txs[1]["vout"] = [{**txs[1]["vout"][0], "value": bad}] + txs[1]["vout"][1:]
            return {**result, "tx": txs}
        return result

    h.node.mutate = mutate
    with pytest.raises(MalformedError, match=message):
        await h.poll(h.core([a]))


async def test_work_queue_full_is_retried_then_transient(h):
    a = h.chain.address("busy")
    h.chain.fund(a, COIN)
    h.node.busy(2)
    batch = await h.poll(h.core([a]))
    assert len(batch.txs) == 1 and len(h.clock.sleeps) == 2
    h.node.busy(100)
    with pytest.raises(TransientError, match=r"HTTP 503: 'Work queue depth exceeded'"):
        await h.poll(h.core([a], name="core2"))


async def test_connection_refused_is_transient(h):
    rpc = BitcoindRpc("http://127.0.0.1:9", h.session, clock=h.clock, retries=1)
    with pytest.raises(TransientError, match="connection error"):
        await rpc.call("getblockcount")


async def test_credentials_in_the_url_are_used_and_never_shown(h):
    h.chain.fund(h.chain.address("u"), COIN)
    url = f"http://rpcuser:rpcpassword@127.0.0.1:{h.node.port}"
    rpc = BitcoindRpc(url, h.session, clock=h.clock)
    assert await rpc.call("getblockcount") == h.chain.height
    assert "rpcpassword" not in repr(rpc) and rpc.where == f"127.0.0.1:{h.node.port}"


async def test_rpc_errors_and_batches(h):
    h.chain.fund(h.chain.address("e"), COIN)
    rpc = h.rpc()
    with pytest.raises(SourceError) as err:
        await rpc.call("getrawtransaction", "ab" * 32, 1)
    assert rpc_code(err.value) == -5 and "No such mempool transaction" in str(err.value)
    with pytest.raises(SourceError) as err:
        await rpc.call("nosuchmethod")
    assert rpc_code(err.value) == -32601
    answers = await rpc.batch([("getblockcount", []), ("getblockhash", [10**9]), ("getbestblockhash", [])])
    assert answers[0] == h.chain.height and rpc_code(answers[1]) == -8 and answers[2] == h.chain.tip.hash


async def test_wrong_chain_is_refused(h):
    h.chain.fund(h.chain.address("net"), COIN)
    with pytest.raises(SourceError, match=r"is on chain 'main', but this source is configured for regtest"):
        await h.poll(h.core([h.chain.address("net")], network="regtest"))


# --- single lookups -----------------------------------------------------------------------------------------


async def test_block_helpers_agree_with_esplora(h):
    a = h.chain.address("hb")
    h.chain.fund(a, COIN)
    h.chain.pay([a], [(h.chain.address("hb2"), 1_000)], fee=4_321)
    block = h.chain.mine()[0]
    core, esplora = h.core([a]), h.esplora_source([a])
    assert await core.tip_hash() == await esplora.tip_hash() == block.hash
    got, want = await core.get_block(block.hash), await esplora.get_block(block.hash)
    assert got.keys() == want.keys()
    assert {k: v for k, v in got.items() if k != "difficulty"} == {k: v for k, v in want.items() if k != "difficulty"}
    assert got["difficulty"] == pytest.approx(want["difficulty"], rel=1e-15)
    assert await core.coinbase_total(block.hash) == await esplora.coinbase_total(block.hash) == 312_500_000 + 4_321


# --- pure parts -----------------------------------------------------------------------------------------------


def test_btc_to_sats_is_exact():
    assert btc_to_sats(Decimal("0.00012000"), "v") == 12_000
    assert btc_to_sats(Decimal("20999999.97690000"), "v") == 2_099_999_997_690_000
    assert btc_to_sats(50, "v") == 50 * COIN
    assert btc_to_sats(Decimal("1E-8"), "v") == 1
    assert btc_to_sats(Decimal("0E-8"), "v") == 0
    for bad, text in [
        (Decimal("0.000000001"), "not a whole number"),
        (0.1, "a float"),
        (True, "True"),
        ("1.0", "'1.0'"),
        (Decimal(-1), "outside"),
        (Decimal("NaN"), "not a whole number"),
    ]:
        with pytest.raises(MalformedError, match=text):
            btc_to_sats(bad, "x.value")


def test_parse_core_tx_checks_fee_and_vout_index():
    tx = {
        "txid": "aa" * 32,
        "vin": [
            {
                "txid": "bb" * 32,
                "vout": 1,
                "prevout": {"value": Decimal("1.00000000"), "scriptPubKey": {"address": "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"}},
            }
        ],
        "vout": [{"value": Decimal("0.99990000"), "n": 0, "scriptPubKey": {"type": "nulldata"}}],
        "fee": Decimal("0.00010000"),
    }
    parsed = parse_core_tx(tx)
    assert parsed.fee == 10_000 and parsed.inputs[0].address == "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"
    assert parsed.outputs[0].address is None and parsed.block_height is None
    with pytest.raises(MalformedError, match=r"tx\.fee: expected inputs - outputs = 10000 sat, got 20000 sat"):
        parse_core_tx({**tx, "fee": Decimal("0.0002")})
    with pytest.raises(MalformedError, match=r"tx\.vout\[0\]\.n: expected 0, got 3"):
        parse_core_tx({**tx, "vout": [{**tx["vout"][0], "n": 3}]})
    with pytest.raises(MalformedError, match=r"tx\.vin\[0\]\.prevout: missing"):
        parse_core_tx({**tx, "vin": [{"txid": "bb" * 32, "vout": 1}]})


def test_core_rendering_helpers():
    assert descriptor_checksum("raw(deadbeef)") == "89f8spxm"  # the example in Core's doc/descriptors.md
    assert core_asm(bytes.fromhex("0014" + "11" * 20)) == "0 " + "11" * 20
    assert core_asm(bytes.fromhex("6a04deadbeef")) == "OP_RETURN -1874767326"  # ≤ 4-byte pushes are numbers
    assert core_descriptor(bytes.fromhex("6a"), None).startswith("raw(6a)#")
    assert format_core_version(250100) == "25.1" and format_core_version(210100) == "0.21.1"


# --- a real node: bcoin in regtest ---------------------------------------------------------------------------


async def test_real_bcoin_node_auth_rpc_shapes_and_the_older_node_error(bcoin):
    """bcoin speaks Core-style JSON-RPC but predates getblock verbosity 3: the source must say what it needs."""
    hashes = await asyncio.to_thread(bcoin.rpc, "generatetoaddress", [3, bcoin.address])
    clock = FrozenClock()
    async with aiohttp.ClientSession() as session:
        wrong = BitcoindRpc(bcoin.url, session, clock=clock, user="x", password="not-the-key")
        with pytest.raises(SourceError) as err:
            await wrong.call("getblockcount")
        assert str(err.value) == (
            f"bitcoind at 127.0.0.1:{bcoin.port} rejected the RPC credentials (check rpcuser/rpcpassword or the cookie file)"
        )
        rpc = BitcoindRpc(bcoin.url, session, clock=clock, user="x", password=bcoin.api_key)
        info = await rpc.call("getblockchaininfo")
        assert (info["chain"], info["blocks"], info["bestblockhash"]) == ("regtest", 3, hashes[-1])
        assert await rpc.call("getblockhash", 3) == hashes[-1]
        block = await rpc.call("getblock", hashes[-1], True, True)  # bcoin's (verbose, details) form
        assert btc_to_sats(block["tx"][0]["vout"][0]["value"], "value") == 50 * COIN  # regtest subsidy, exact
        source = BitcoindSource("bcoin", rpc, [bcoin.address], clock=clock, network="regtest")
        assert await source.tip_hash() == hashes[-1]
        with pytest.raises(SourceError) as err:
            await source.poll({})
        assert not isinstance(err.value, (TransientError, MalformedError))
        assert str(err.value) == (
            "Bitcoin Core 23.0 or newer is needed (getblock verbosity 3 returns prevouts); "
            f"bitcoind at 127.0.0.1:{bcoin.port} (/bcoin:v1.0.2/) answered getblock verbosity 3 with error -3: "
            "Param #1 must be a boolean."
        )


async def test_a_redirect_is_not_followed_with_the_rpc_credentials(aiohttp_server):
    """A JSON-RPC endpoint answering 307 elsewhere: the credentials and the call stay here; the error says so."""
    from aiohttp import web

    elsewhere: list[dict] = []

    async def other_handler(request: web.Request) -> web.Response:
        elsewhere.append(dict(request.headers))
        return web.json_response({"result": 1, "error": None, "id": 0})

    other_app = web.Application()
    other_app.router.add_route("*", "/{tail:.*}", other_handler)
    other = await aiohttp_server(other_app, host="127.0.0.2")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(str(other.make_url("/")))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        rpc = BitcoindRpc(
            str(server.make_url("/")), session, clock=FrozenClock(), user="rpcuser", password="rpc-pa55word", retries=0
        )
        with pytest.raises(SourceError) as info:
            await rpc.call("getblockcount")
    assert not isinstance(info.value, TransientError) and "307" in str(info.value)
    assert elsewhere == []
