"""Sale routes real treasuries use, built on the simulated chain and run through the daemon's own jobs (its
poll tick and its discovery job, the same `discover_once` that `entities discover` runs) against the local
Esplora server, with alerts delivered to a real local Slack-compatible receiver:

- a split hop: 6,500 BTC to a fresh address whose next tx pays two exchanges, two unknown addresses and
  the largest part on to another fresh address → a breakdown with shares and ONE update alert;
- a peeling chain of 14 hops peeling 20 BTC to exchanges at each hop → followed to the end, one update;
- a sweep of every coin to a fresh address → provisional watch at once (history read: an older coin's sale
  is the entity's, labelled provisional), confirmed when the swept coins sit;
- a sweep to what turns out to be an exchange deposit (collected with other users' deposits into the
  exchange's hot wallet) → the address is rejected and the sweep becomes a sale with one alert.

Both in address mode and in block mode (where the discovery job borrows the block source's endpoint).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from builders import COIN, MARCH_5_2026, config_toml, entity_table, esplora_source, fact, rule, slack_channel, sourced
from fakes.offloop import in_store
from fakes.receiver import Receiver

from monitor.clock import FrozenClock
from monitor.config import load_config
from monitor.discovery.tracing import RETRY_BASE
from monitor.run.daemon import Daemon, SourceState
from monitor.run.runtime import runtime
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from storage.alerts import alert_rows
from storage.discovery import address_row, evidence_rows, trace_rows
from storage.reads import flow_row

T0 = MARCH_5_2026 + 10 * 86_400
SOV = "Test Sovereign"


def write_config(tmp_path: Path, url: str, entities: list[dict], mode: str, discovery: str = "") -> Path:
    """One local Esplora source in `mode`, the entities, every alert to Slack, `[discovery]` as given."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        config_toml(
            db=tmp_path / "tm.db",
            sources=[esplora_source("local", url, rate_limit=500.0, timeout=5.0, mode=mode)],
            entities=entities,
            alerts={"max_age": 100000000},
            channels=[slack_channel("slack", "TM_ROUTES_SLACK_URL")],
            rules=[rule("all", ["slack"], min_severity="info")],
            extra=discovery,
        )
    )
    return cfg


def sovereign(addresses: list[str], holdings: float) -> dict:
    return entity_table(SOV, "sovereign", sourced(addresses), profile={"holdings_btc": fact(holdings)})


def exchange(name: str, addresses: list[str]) -> dict:
    return entity_table(name, "exchange", sourced(addresses), watch=False)


@asynccontextmanager
async def daemon_jobs(cfg: Path, clock: FrozenClock):
    """A Daemon whose jobs (poll tick, discovery, dispatch) the test calls itself, on a frozen clock."""
    config = await asyncio.to_thread(load_config, cfg)
    d = Daemon(config, clock=clock)
    async with runtime(config, clock=clock) as rt:
        d.rt = rt
        d.states = {s.name: SourceState(s.name) for s in rt.sources}
        yield d


async def kinds(db: Path) -> list[str]:
    return [a["kind"] for a in await in_store(db, alert_rows)]


@pytest.mark.parametrize("mode", ["address", "block"])
async def test_split_hop_gives_a_breakdown_with_shares_and_one_update_alert(tmp_path, monkeypatch, mode):
    chain = SimChain(start_time=MARCH_5_2026)
    main = chain.address("split-main")
    fresh1, fresh2, u1, u2 = (chain.address(f"split-{x}") for x in ("fresh-1", "fresh-2", "unknown-1", "unknown-2"))
    kraken, coinbase = chain.address("split-kraken"), chain.address("split-coinbase")
    chain.fund(main, 7_000 * COIN)
    chain.mine()
    clock = FrozenClock(T0)
    db = tmp_path / "tm.db"
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_ROUTES_SLACK_URL", slack.url("/hook"))
        cfg = await asyncio.to_thread(
            write_config,
            tmp_path,
            server.url,
            [sovereign([main], 13_000), exchange("Kraken", [kraken]), exchange("Coinbase", [coinbase])],
            mode,
        )
        async with daemon_jobs(cfg, clock) as d:
            await d.poll_source("local")
            hop1 = chain.pay([main], [(fresh1, 6_500 * COIN)], fee=5_000)
            chain.mine()
            await d.poll_source("local")
            row = await in_store(db, flow_row, "bitcoin", hop1.txid, SOV)
            assert row["classification"]["verdict"] == "unknown_transfer" and row["out_units"] == 6_500 * COIN
            assert await kinds(db) == ["new"]

            # the next tx from the fresh address splits: two exchanges, two unknown addresses, the rest onward
            hop2 = chain.pay(
                [fresh1],
                [
                    (kraken, 600 * COIN),
                    (coinbase, 400 * COIN),
                    (u1, 700 * COIN),
                    (u2, 300 * COIN),
                    (fresh2, 4_500 * COIN - 4_000),
                ],
                fee=4_000,
            )
            chain.mine()
            await d.discover()
            row = await in_store(db, flow_row, "bitcoin", hop1.txid, SOV)
            c = row["classification"]
            assert (c["verdict"], c["version"], c["attribution"]) == ("sovereign_sale", 2, "exchange:Kraken")
            [dest] = [x for x in row["destinations"] if x["address"] == fresh1]
            assert dest["attribution"] == "exchange:Kraken" and dest["path"] == [hop1.txid, hop2.txid]
            shares = sorted((s["attribution"], s["note"], s["value_units"], s["hops"]) for s in dest["shares"])
            # each output carries its own value (fresh-1 held only the traced coins); the hop's fee is lost
            assert shares == [
                ("exchange:Coinbase", "", 400 * COIN, 2),
                ("exchange:Kraken", "", 600 * COIN, 2),
                ("unknown", "waiting", 300 * COIN, 2),
                ("unknown", "waiting", 700 * COIN, 2),
                ("unknown", "waiting", 4_500 * COIN - 4_000, 2),
            ]
            breakdown = (
                "1,000.00 of 6,500.00 BTC (15%) reached exchange:Kraken and exchange:Coinbase within 2 hops; "
                "5,500.00 BTC (85%) wait at 3 unattributed addresses"
            )
            assert any(breakdown in r for r in c["reasons"]), c["reasons"]
            assert await kinds(db) == ["new", "update"]
            reqs = await slack.wait_for(2)
            body = reqs[1].json
            # the headline says how much of how much reached exchanges, not "sold 6,500 BTC"
            assert body["text"].startswith("UPDATE: Test Sovereign sold 1,000.00000000 of 6,500.00000000 BTC moved")
            assert "reached exchange:Kraken and exchange:Coinbase within 2 hops" in json.dumps(body)
            assert "(traced: 1000.00000000 BTC reached counterparties)" in json.dumps(body)
            assert f"(largest part to exchange:Kraken via {hop1.txid[:12]}… → {hop2.txid[:12]}…)" in json.dumps(
                body, ensure_ascii=False
            )

            # the rest moves on: the trace follows it (state kept), but the flow is not re-alerted
            hop3 = chain.pay([fresh2], [(chain.address("split-fresh-3"), 4_500 * COIN - 8_000)], fee=4_000)
            chain.pay([u1], [(kraken, 700 * COIN - 1_000)], fee=1_000)
            chain.mine()
            clock.advance(RETRY_BASE)
        async with daemon_jobs(cfg, clock) as d:  # a restart in between: the trace resumes from storage
            await d.discover()
        [t] = await in_store(db, trace_rows)
        assert t.status == "pending" and t.reported and len(t.branches) == 2  # u2 waits, and hop3's output
        assert {b.txid for b in t.branches} == {hop2.txid, hop3.txid}
        assert sum(s.value for s in t.shares if s.attribution == "exchange:Kraken") == 600 * COIN + (700 * COIN - 1_000)
        assert "1,700.00 of 6,500.00 BTC (26%) reached exchange:Kraken and exchange:Coinbase within 3 hops" in t.result
        assert await kinds(db) == ["new", "update"]
        assert len(slack.requests) == 2


@pytest.mark.parametrize("mode", ["address", "block"])
async def test_peeling_chain_of_14_hops_is_followed_with_one_update_alert(tmp_path, monkeypatch, mode):
    chain = SimChain(start_time=MARCH_5_2026)
    main = chain.address("peel-main")
    kraken, binance = chain.address("peel-kraken"), chain.address("peel-binance")
    chain.fund(main, 1_200 * COIN)
    chain.mine()
    clock = FrozenClock(T0)
    db = tmp_path / "tm.db"
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_ROUTES_SLACK_URL", slack.url("/hook"))
        cfg = await asyncio.to_thread(
            write_config,
            tmp_path,
            server.url,
            [sovereign([main], 5_000), exchange("Kraken", [kraken]), exchange("Binance", [binance])],
            mode,
        )
        async with daemon_jobs(cfg, clock) as d:
            await d.poll_source("local")
            head = chain.address("peel-0")
            first = chain.pay([main], [(head, 1_000 * COIN)], fee=5_000)
            chain.mine()
            await d.poll_source("local")
            assert await kinds(db) == ["new"]

            def peel(hops: int, start: int) -> list[str]:
                nonlocal head
                txids = []
                for k in range(start, start + hops):
                    nxt = chain.address(f"peel-{k + 1}")
                    value = chain.utxos(head)[0].value
                    tx = chain.pay([head], [((kraken, binance)[k % 2], 20 * COIN), (nxt, value - 20 * COIN - 1_000)], fee=1_000)
                    chain.mine()
                    txids.append(tx.txid)
                    head = nxt
                return txids

            path = peel(3, 0)
            await d.discover()  # 60 BTC (6%) peeled: below the 10% significant share, no update yet
            [t] = await in_store(db, trace_rows)
            assert (t.status, t.reported, t.hops) == ("pending", False, 4)
            assert "60.00 of 1,000.00 BTC (6%) reached exchange:Kraken and exchange:Binance within 4 hops" in t.result
            assert await kinds(db) == ["new"]

            path += peel(11, 3)
            clock.advance(RETRY_BASE)
            before = len(server.requests)
            await d.discover()
            # 11 more hops: one outspends and one tx per hop, and the unspent tip's outspends
            assert sum(p.startswith("/tx/") for p in server.requests[before:]) == 2 * 11 + 1
            row = await in_store(db, flow_row, "bitcoin", first.txid, SOV)
            c = row["classification"]
            assert (c["verdict"], c["version"]) == ("sovereign_sale", 2)
            [dest] = row["destinations"][:1]
            assert dest["address"] == chain.address("peel-0")
            peeled = [s for s in dest["shares"] if s["attribution"] != "unknown"]
            assert len(peeled) == 14 and max(s["hops"] for s in peeled) == 15
            assert [s["path"][-1] for s in sorted(peeled, key=lambda s: s["hops"])] == path
            assert any(
                "280.00 of 1,000.00 BTC (28%) reached exchange:Kraken and exchange:Binance within 15 hops" in r
                and f"via {first.txid[:12]}… → {path[0][:12]}…)" in r
                for r in c["reasons"]
            ), c["reasons"]
            [t] = await in_store(db, trace_rows)
            assert t.hops == 15 and t.reported and t.status == "pending" and t.tip_address == head

            # two more peels: followed, no second update
            peel(2, 14)
            clock.advance(RETRY_BASE)
            await d.discover()
            [t] = await in_store(db, trace_rows)
            assert t.hops == 17 and "320.00 of 1,000.00 BTC (32%)" in t.result
        assert await kinds(db) == ["new", "update"]
        assert len(await slack.wait_for(2)) == 2


@pytest.mark.parametrize("mode", ["address", "block"])
async def test_sweep_to_cold_storage_then_a_sale_from_an_older_coin_of_the_swept_to_wallet(tmp_path, monkeypatch, mode):
    chain = SimChain(start_time=MARCH_5_2026)
    main, cold, change = chain.address("sweep-main"), chain.address("sweep-cold"), chain.address("sweep-change")
    kraken = chain.address("sweep-kraken")
    chain.fund(main, 300 * COIN)
    old_coin = chain.fund(cold, 50 * COIN)  # the cold wallet held coins before the sweep
    chain.mine()
    clock = FrozenClock(T0)
    db = tmp_path / "tm.db"
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_ROUTES_SLACK_URL", slack.url("/hook"))
        cfg = await asyncio.to_thread(
            write_config, tmp_path, server.url, [sovereign([main], 5_000), exchange("Kraken", [kraken])], mode
        )
        async with daemon_jobs(cfg, clock) as d:
            await d.poll_source("local")
            sweep = chain.pay([main], [(cold, 300 * COIN - 2_000)], fee=2_000)  # every coin, one output, no change
            chain.mine()
            await d.poll_source("local")
            row = await in_store(db, flow_row, "bitcoin", sweep.txid, SOV)
            c = row["classification"]
            assert (row["out_units"], c["verdict"], c["attribution"]) == (300 * COIN - 2_000, "internal", "self")
            assert any(r.startswith("probable consolidation; watching the destination") and cold in r for r in c["reasons"]), c[
                "reasons"
            ]
            addr = await in_store(db, address_row, "bitcoin", cold)
            assert (addr["entity"], addr["status"], addr["learned_by"]) == (SOV, "provisional", "sweep")
            [ev] = await in_store(db, evidence_rows, address=cold)
            assert (ev["kind"], ev["txid"]) == ("sweep", sweep.txid)
            assert cold in d.rt.sources[0].watched_addresses if mode == "block" else cold in d.rt.sources[0].addresses

            # the next poll reads the cold wallet's whole history: its older coin is seen
            await d.poll_source("local")
            assert await in_store(db, flow_row, "bitcoin", old_coin.txid, SOV) is not None

            # a sale from the older coin (change to a fresh address): the entity's, labelled provisional
            sale = chain.pay([], [(kraken, 30 * COIN)], inputs=[old_coin], change_address=change, fee=3_000)
            chain.mine()
            await d.poll_source("local")
            row = await in_store(db, flow_row, "bitcoin", sale.txid, SOV)
            c = row["classification"]
            assert (row["out_units"], c["verdict"], c["attribution"]) == (50 * COIN - 3_000, "sovereign_sale", "exchange:Kraken")
            assert any(f"spent from {cold}: provisionally {SOV}'s" in r for r in c["reasons"]), c["reasons"]
            assert (await in_store(db, address_row, "bitcoin", cold))["status"] == "provisional"
            sale_alerts = [a for a in await in_store(db, alert_rows) if a["payload"]["flow"]["txid"] == sale.txid]
            assert [a["kind"] for a in sale_alerts] == ["new"]
            bodies = [json.dumps(r.json) for r in slack.requests]
            assert any(sale.txid in b and "provisionally" in b for b in bodies)

            # the swept coins sit for the settle period: the cold wallet is the entity's
            clock.advance(31 * 86_400)
            await d.discover()
            addr = await in_store(db, address_row, "bitcoin", cold)
            assert (addr["status"], addr["learned_by"]) == ("active", "sweep")
            assert sorted(e["kind"] for e in await in_store(db, evidence_rows, address=cold)) == ["sweep", "sweep_confirmed"]
            assert not d.rt.pipeline.registry.is_provisional("bitcoin", cold)
        # the sweep never turned into a sale: internal, one version
        c = (await in_store(db, flow_row, "bitcoin", sweep.txid, SOV))["classification"]
        assert (c["verdict"], c["version"]) == ("internal", 1)


@pytest.mark.parametrize("mode", ["address", "block"])
async def test_sweep_to_what_turns_out_to_be_an_exchange_deposit_becomes_a_sale(tmp_path, monkeypatch, mode):
    chain = SimChain(start_time=MARCH_5_2026)
    main, deposit = chain.address("dep-main"), chain.address("dep-deposit")
    kraken_hot = chain.address("dep-kraken-hot")
    others = [chain.fund(chain.address(f"dep-other-user-{i}"), (5 + i) * COIN) for i in range(2)]
    chain.fund(main, 200 * COIN)
    chain.mine()
    clock = FrozenClock(T0)
    db = tmp_path / "tm.db"
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_ROUTES_SLACK_URL", slack.url("/hook"))
        cfg = await asyncio.to_thread(
            write_config, tmp_path, server.url, [sovereign([main], 5_000), exchange("Kraken", [kraken_hot])], mode
        )
        async with daemon_jobs(cfg, clock) as d:
            await d.poll_source("local")
            sweep = chain.pay([main], [(deposit, 200 * COIN - 2_000)], fee=2_000)
            chain.mine()
            await d.poll_source("local")
            c = (await in_store(db, flow_row, "bitcoin", sweep.txid, SOV))["classification"]
            assert c["verdict"] == "internal" and "probable consolidation; watching the destination" in c["reasons"][0]
            assert (await in_store(db, address_row, "bitcoin", deposit))["status"] == "provisional"
            assert await kinds(db) == []  # internal: no alert rule fires for it

            # the exchange sweeps the deposit together with other users' deposits into its hot wallet
            [coin] = chain.utxos(deposit)
            total = 200 * COIN - 2_000 + 5 * COIN + 6 * COIN
            collect = chain.pay([], [(kraken_hot, total - 5_000)], inputs=[(coin.txid, coin.vout), *others], fee=5_000)
            chain.mine()
            await d.poll_source("local")
            addr = await in_store(db, address_row, "bitcoin", deposit)
            assert addr["status"] == "rejected"
            assert sorted(e["kind"] for e in await in_store(db, evidence_rows, address=deposit)) == ["sweep", "sweep_deposit"]
            row = await in_store(db, flow_row, "bitcoin", sweep.txid, SOV)
            c = row["classification"]
            assert (c["verdict"], c["version"], c["attribution"]) == ("sovereign_sale", 2, "exchange:Kraken")
            [dest] = row["destinations"]
            assert dest["attribution"] == "exchange:Kraken" and dest["path"] == [sweep.txid, collect.txid]
            # the exchange's collection is not the entity's flow, and the other users' coins were not learned
            assert await in_store(db, flow_row, "bitcoin", collect.txid, SOV) is None
            for o in others:
                assert await in_store(db, address_row, "bitcoin", chain.tx(o.txid).vout[o.vout].address) is None
            assert not d.rt.pipeline.registry.entity_of("bitcoin", deposit)
            after = await kinds(db)
            assert after == ["new"]  # the first alert about this flow: a sale
            reqs = await slack.wait_for(1)
            assert sweep.txid in json.dumps(reqs[-1].json) and "sovereign_sale" in json.dumps(reqs[-1].json)

            # later polls change nothing: the traced attribution is kept, no second alert
            await d.poll_source("local")
            assert (await in_store(db, flow_row, "bitcoin", sweep.txid, SOV))["classification"]["version"] == 2
            assert await kinds(db) == after
