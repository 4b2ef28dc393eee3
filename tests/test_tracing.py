"""Hop tracing against the local Esplora server and a real SQLite file: the Bhutan route (watched wallet →
fresh → fresh → exchange) turns an `unknown_transfer` into a `sovereign_sale` with the 3-hop path, its
breakdown and one update alert; traces of unspent coins resume later (also after a restart); floors, hop
limits, returns to the entity and source errors end or pause a trace as documented. Multi-branch routes
(split hop, peeling chain) are in test_trace_routes.py."""

import asyncio
import random

import aiohttp
import pytest
from builders import entity
from fakes.discovery import COIN, MARCH_5_2026, cli_run, entity_toml, write_config
from fakes.offloop import in_store

from monitor.clock import FrozenClock
from monitor.config import load_config
from monitor.core.registry import Registry
from monitor.discovery.tracing import RETRY_BASE, TraceLimits, advance_trace, trace_pending
from monitor.model import Attribution
from monitor.run.runtime import runtime
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from storage.alerts import alert_rows
from storage.discovery import TraceState, trace_rows
from storage.reads import flow_row
from watchers.esplora import EsploraSource
from watchers.http import HttpClient

T0 = MARCH_5_2026 + 10 * 86_400


async def run_traces(cfg, now: int) -> int:
    """One tracing job as the daemon runs it: a fresh runtime (a restart each time), the first source."""
    async with runtime(await asyncio.to_thread(load_config, cfg), clock=FrozenClock(now)) as rt:
        return await trace_pending(rt.pipeline, rt.sources[0], rt.store, rt.registry, now=now, limits=TraceLimits(max_hops=5))


async def test_bhutan_route_becomes_sovereign_sale_with_the_path_and_one_update_alert(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    main, fresh1, fresh2, exchange = (chain.address(x) for x in ("dhi-main", "fresh-1", "fresh-2", "qcp-deposit"))
    chain.fund(main, 500 * COIN)
    async with EsploraServer(chain) as server:
        cfg = await asyncio.to_thread(
            write_config,
            tmp_path,
            server.url,
            alerts=True,
            entities=(
                entity_toml("Test Sovereign", "sovereign", [main], holdings=5400)
                + entity_toml("Test OTC", "otc", [exchange], watch=False)
            ),
        )
        assert (await cli_run("-c", cfg, "backfill", "--no-progress")).exit_code == 0
        hop1 = chain.pay([main], [(fresh1, 300 * COIN)], fee=2_000)
        chain.mine()
        r = await cli_run("-c", cfg, "poll")
        assert "1 outflows" in r.output, r.output
        db = tmp_path / "tm.db"
        assert (await in_store(db, flow_row, "bitcoin", hop1.txid, "Test Sovereign"))["classification"][
            "verdict"
        ] == "unknown_transfer"
        assert [a["kind"] for a in await in_store(db, alert_rows)] == ["new"]

        hop2 = chain.pay([fresh1], [(fresh2, 300 * COIN - 1_500)], fee=1_500)
        chain.mine()
        assert await run_traces(cfg, T0) == 0  # the coins sit on the second fresh address: try later
        [t] = await in_store(db, trace_rows)
        assert (t.status, t.hops, t.path, t.tip_address, t.attempts) == ("pending", 2, (hop1.txid, hop2.txid), fresh2, 1)
        assert t.next_at == T0 + RETRY_BASE and "coins unspent" in t.result

        hop3 = chain.pay([fresh2], [(exchange, 300 * COIN - 3_000)], fee=1_500)
        chain.mine()
        before = len(server.requests)
        assert await run_traces(cfg, T0 + 60) == 0  # not due yet: no request at all
        assert not any("outspends" in p for p in server.requests[before:])
        assert await run_traces(cfg, T0 + RETRY_BASE) == 1

        row = await in_store(db, flow_row, "bitcoin", hop1.txid, "Test Sovereign")
        [dest] = [d for d in row["destinations"] if d["address"] == fresh1]
        assert dest["attribution"] == "otc:Test OTC" and dest["path"] == [hop1.txid, hop2.txid, hop3.txid]
        c = row["classification"]
        assert (c["verdict"], c["version"], c["attribution"]) == ("sovereign_sale", 2, "otc:Test OTC")
        kinds = [a["kind"] for a in await in_store(db, alert_rows)]
        assert kinds == ["new", "update"]
        update = (await in_store(db, alert_rows))[1]
        assert update["payload"]["flow"]["classification"]["verdict"] == "sovereign_sale"
        [t] = await in_store(db, trace_rows)
        assert (t.status, t.hops, t.attribution) == ("attributed", 3, "otc:Test OTC")

        # nothing more to do: no second update, no request
        before = len(server.requests)
        assert await run_traces(cfg, T0 + 10 * RETRY_BASE) == 0
        assert len(server.requests) == before
        assert [a["kind"] for a in await in_store(db, alert_rows)] == ["new", "update"]
        r = await cli_run("-c", cfg, "entities", "show", "Test Sovereign")
        assert (
            f"{hop1.txid}:0 attributed after 3 hop(s): 300.00 of 300.00 BTC (100%) reached otc:Test OTC within 3 hops" in r.output
        ), r.output


@pytest.fixture
async def traced():
    """A chain, its server and an EsploraSource over it."""
    chain = SimChain(start_time=MARCH_5_2026)
    async with EsploraServer(chain) as server, aiohttp.ClientSession() as session:
        clock = FrozenClock(T0)
        http = HttpClient("local", [server.url], session, clock=clock, rng=random.Random(1), retries=0)
        yield chain, server, EsploraSource("local", http, [], clock=clock)


def start(tx, n: int, entity_name: str = "Sov") -> TraceState:
    o = tx.vout[n]
    return TraceState(
        "bitcoin",
        tx.txid,
        entity_name,
        n,
        o.address,
        o.value,
        "pending",
        1,
        (tx.txid,),
        tx.txid,
        n,
        o.value,
        o.address,
        0,
        T0,
        created_at=T0,
    )


async def test_floor_hop_limit_return_and_unconfirmed(traced):
    chain, _, source = traced
    main, exch = chain.address("sov-main"), chain.address("exch")
    reg = Registry([entity("Sov", "sovereign", [main]), entity("Exch", "exchange", [exch], watch=False)])
    chain.fund(main, 100 * COIN)
    # a peel to dust: the largest branch falls below the floor
    a, b = chain.address("peel-a"), chain.address("peel-b")
    t1 = chain.pay([main], [(a, COIN)], fee=1_000)
    chain.mine()
    chain.pay([a], [(b, 4_000_000), (chain.address("peel-c"), 3_000_000)], fee=1_000, change_address=chain.address("peel-d"))
    chain.mine()
    out = await advance_trace(start(t1, 0), source, reg, now=T0, value_floor_sat=95_000_000)
    assert out.state.status == "ended" and "below the 95000000 sat floor" in out.state.result and out.attribution is None

    # a long chain of fresh addresses: exhausted after max_hops txs on the path
    prev = chain.address("long-0")
    t2 = chain.pay([main], [(prev, 10 * COIN)], fee=1_000)
    chain.mine()
    for k in range(1, 6):
        nxt = chain.address(f"long-{k}")
        chain.pay([prev], [(nxt, 10 * COIN - 1_000 * k)], fee=1_000)
        chain.mine()
        prev = nxt
    out = await advance_trace(start(t2, 0), source, reg, now=T0, max_hops=3)
    assert out.state.status == "exhausted" and len(out.state.path) == 3 and out.requests == 4

    # back to the sovereign's own wallet: ended, nothing to re-attribute
    c = chain.address("round-trip")
    t3 = chain.pay([main], [(c, 5 * COIN)], fee=1_000)
    chain.mine()
    chain.pay([c], [(main, 5 * COIN - 1_000)], fee=1_000)
    chain.mine()
    out = await advance_trace(start(t3, 0), source, reg, now=T0)
    assert out.state.status == "ended" and "(100%) came back to Sov after 2 hops" in out.state.result

    # spent, but only in the mempool: wait for a confirmation
    d = chain.address("waiting")
    t4 = chain.pay([main], [(d, 5 * COIN)], fee=1_000)
    chain.mine()
    chain.pay([d], [(exch, 5 * COIN - 1_000)], fee=1_000)
    out = await advance_trace(start(t4, 0), source, reg, now=T0)
    assert out.state.status == "pending" and "spend unconfirmed" in out.state.result and out.state.hops == 1
    chain.mine()
    out = await advance_trace(out.state, source, reg, now=T0 + RETRY_BASE)
    assert out.attribution == Attribution("exchange", "Exch", (t4.txid, chain.blocks[-1].txs[1].txid))


async def test_destination_labelled_later_needs_no_request_and_errors_keep_progress(traced):
    chain, server, source = traced
    main, later = chain.address("sov-main-2"), chain.address("labelled-later")
    chain.fund(main, 50 * COIN)
    t1 = chain.pay([main], [(later, 10 * COIN)], fee=1_000)
    chain.mine()
    reg = Registry([entity("Sov", "sovereign", [main]), entity("Desk", "custodian", [later], watch=False)])
    before = len(server.requests)
    out = await advance_trace(start(t1, 0), source, reg, now=T0)
    assert out.attribution == Attribution("custodian", "Desk", (t1.txid,)) and len(server.requests) == before

    f1, f2 = chain.address("err-1"), chain.address("err-2")
    reg = Registry([entity("Sov", "sovereign", [main])])
    t2 = chain.pay([main], [(f1, 10 * COIN)], fee=1_000)
    chain.mine()
    chain.pay([f1], [(f2, 10 * COIN - 1_000)], fee=1_000)
    chain.mine()
    server.faults.add(r"^/tx/[0-9a-f]+$", "500", times=None)  # outspends answers, the tx itself does not
    out = await advance_trace(start(t2, 0), source, reg, now=T0)
    assert out.state.status == "pending" and out.state.hops == 1 and "source error" in out.state.result
    assert out.state.next_at == T0 + RETRY_BASE


async def test_queued_only_for_confirmed_unknown_destinations_above_the_floor(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    main = chain.address("q-main")
    small, big, known = chain.address("q-small"), chain.address("q-big"), chain.address("q-known")
    chain.fund(main, 100 * COIN)
    async with EsploraServer(chain) as server:
        cfg = await asyncio.to_thread(
            write_config,
            tmp_path,
            server.url,
            entity_toml("Q Sov", "sovereign", [main]) + entity_toml("Q Exchange", "exchange", [known], watch=False),
        )
        assert (await cli_run("-c", cfg, "backfill", "--no-progress")).exit_code == 0
        chain.pay([main], [(small, 1_000_000), (big, 20 * COIN), (known, 5 * COIN)], fee=1_000)
        chain.mine()
        assert (await cli_run("-c", cfg, "poll")).exit_code == 0
        await run_traces(cfg, T0)
        traces = await in_store(tmp_path / "tm.db", trace_rows)
        assert [(t.address, t.status) for t in traces] == [(big, "pending")]  # 0.01 BTC is below the 0.1 floor
