"""The simulated 2026 episode: its arithmetic against the published figures, its determinism, its config,
and the monitor's conclusions when the scenario is served by the local Esplora server (CLI backfill, and
the pipeline driven step by step as the demo drives the daemon)."""

import asyncio
import base64
import datetime as dt
import functools
import re
import statistics

import pytest
from click.testing import CliRunner
from fakes.offloop import in_store

from monitor.cli.main import cli
from monitor.clock import FrozenClock
from monitor.config import load_config
from monitor.core.hashprice import block_subsidy_sat, hashprice_usd_per_ph_day
from monitor.model import SALE_VERDICTS
from monitor.output.report import build_report, render_png
from monitor.run.runtime import build_registry, runtime
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.scenario import (
    FEE_PER_BLOCK_SAT,
    FIGURES,
    Reorg,
    Replace,
    ScenarioRun,
    build_scenario,
    load_daily_prices,
)
from storage import Store
from storage.alerts import alert_rows
from storage.reads import flow_rows

COIN = 100_000_000
SMALL = 0.2


@functools.cache
def scenario(scale: float = 1.0):
    return build_scenario(seed=2026, scale=scale)


def t(month, day, hour=0, minute=0):
    return int(dt.datetime(2026, month, day, hour, minute, tzinfo=dt.UTC).timestamp())


def balance_at(sc, entity, at):
    """Replay the scenario up to `at` and sum the entity's confirmed balances."""
    run = sc.start()
    run.apply_until(at)
    return sum(run.chain.balance(a.address) for a in sc.addresses_of(entity))


def active(flows, kind=None):
    return [f for f in flows if f.status == "active" and (kind is None or f.kind in kind)]


# --- the script itself --------------------------------------------------------------------------------


def test_reduced_scale_builds_in_order_and_replays_identically():
    small, full = scenario(SMALL), scenario()
    assert len(small.steps) < len(full.steps) and small.block_count < full.block_count
    assert full.block_count <= 300 and full.tx_count <= 3000  # a few hundred blocks, well under a few thousand txs
    ats = [s.at for s in small.steps]
    assert ats == sorted(ats) and len(set(ats)) == len(ats)
    run = small.start()  # check=True: any txid that differs from the recorded one raises
    run.apply_all()
    assert run.done and run.txids == dict(small.txids)
    times = [b.time for b in run.chain.blocks]
    assert times == sorted(times) and len(set(times)) == len(times)
    again = ScenarioRun(small)
    again.apply_all()
    assert again.chain.tip.hash == run.chain.tip.hash
    # every block pays ~FEE_PER_BLOCK_SAT of fees, through its coinbase
    fees = [sum(tx.fee for tx in b.txs[1:]) for b in run.chain.blocks]
    assert abs(statistics.mean(fees) - FEE_PER_BLOCK_SAT) < FEE_PER_BLOCK_SAT * 0.1
    with pytest.raises(ValueError):
        small.start().apply(small.steps[1])
    with pytest.raises(ValueError):
        build_scenario(scale=0)


def test_the_replacement_and_the_reorg_are_scripted_and_observable():
    sc = scenario(SMALL)
    [rbf] = [s for s in sc.steps if any(isinstance(o, Replace) for o in s.ops)]
    [reorg] = [s for s in sc.steps if any(isinstance(o, Reorg) for o in s.ops)]
    [rep] = [o for o in rbf.ops if isinstance(o, Replace)]
    [ro] = [o for o in reorg.ops if isinstance(o, Reorg)]
    assert ro.depth == 2 and len(ro.drop) == 1
    assert rbf.observe and reorg.observe and rbf.entity == "Riot" and reorg.entity == "Cango"
    # the step before each sets up what must be seen first: an unconfirmed tx, a block about to go
    before_rbf, before_reorg = sc.steps[rbf.index - 1], sc.steps[reorg.index - 2]
    assert before_rbf.kind == "broadcast" and before_rbf.observe and before_rbf.blocks == 0
    assert before_reorg.observe and ro.drop[0] in before_reorg.keys
    replaced, reorged = sc.flow(rep.replaces), sc.flow(ro.drop[0])
    assert replaced.status == reorged.status == "retracted"
    assert sc.expected["Riot"].retracted_txids == (replaced.txid,)
    assert sc.expected["Cango"].retracted_txids == (reorged.txid,)
    run = sc.start()
    run.apply_all()
    for f in (replaced, reorged):
        assert run.chain.tx(f.txid) is None and run.chain.any_tx(f.txid) is not None
    # the replacement pays the same destination the same amount, and is what confirmed
    bump = sc.flow(rep.key)
    assert bump.status == "active" and bump.destinations == replaced.destinations
    assert run.chain.tx_status(bump.txid) is not None
    # the reorged tranche is re-sent a day later: the 4,451 BTC still add up
    resent = [f for f in active(sc.expected["Cango"].flows) if f.destinations == reorged.destinations and f.key != reorged.key]
    assert len(resent) == 1 and resent[0].at - reorged.at >= 86_400 - 3_600


def test_full_scale_follows_the_published_figures():
    sc = scenario()
    e = sc.expected
    # MARA: 15,133 BTC between March 4 and 25 in tranches to exchange, OTC and custodian addresses
    mara = active(e["MARA"].flows, ("sale", "custody"))
    assert sum(f.out_sat for f in mara) == 15_133 * COIN
    assert all(t(3, 4) <= f.at < t(3, 26) for f in mara)
    assert {a.split(":")[0] for f in mara for a, _ in f.destinations} == {"exchange", "otc", "custodian"}
    assert e["MARA"].sold_sat + e["MARA"].custody_sat == 15_133 * COIN and e["MARA"].custody_sat > 0
    assert mara[0].out_sat > 1.5 * 736 * COIN  # the first tranche alone is a large sale
    assert abs(balance_at(sc, "MARA", t(3, 1)) - 53_000 * COIN) < COIN  # ~53,000 held before the sale
    # Cango: 550 BTC in January, 4,451 BTC (~60%) in February
    cango = active(e["Cango"].flows, ("sale",))
    assert sum(f.out_sat for f in cango if f.at < t(2, 1)) == 550 * COIN
    feb = sum(f.out_sat for f in cango if t(2, 1) <= f.at < t(3, 1))
    assert feb == 4_451 * COIN and 0.58 < feb / (7_474.67 * COIN) < 0.61
    assert abs(balance_at(sc, "Cango", t(1, 31, 23)) - 7_474.67 * COIN) < 0.1 * COIN
    # Riot: 3,778 BTC over Q1; ~19,000 at the start, ~18,000 at the end of February
    assert sum(f.out_sat for f in active(e["Riot"].flows, ("sale",))) == 3_778 * COIN
    assert 18_000 * COIN <= e["Riot"].start_sat <= 19_000 * COIN
    assert abs(balance_at(sc, "Riot", t(2, 28, 23)) - 18_000 * COIN) < 100 * COIN
    # Bitdeer: the reported drawdown path, to zero
    assert e["Bitdeer"].end_sat == 0
    for (m, d, h), btc in (((1, 3, 23), "1900.9"), ((1, 31, 23), "1530"), ((2, 14, 23), "943.1"), ((2, 20, 23), "0")):
        assert balance_at(sc, "Bitdeer", t(m, d, h)) == int(float(btc) * COIN), (m, d)
    # Bhutan: ~5,700 after the two QCP transfers, ~5,400 on March 9, transfers growing from ~$10M to $35-45M
    bh = active(e["Bhutan"].flows, ("sale",))
    assert abs(balance_at(sc, "Bhutan", t(2, 5, 23)) - 5_700 * COIN) < COIN
    assert abs(balance_at(sc, "Bhutan", t(3, 9, 23)) - 5_400 * COIN) < 50 * COIN
    usd = [f.usd for f in bh]
    assert usd[0] == pytest.approx(8.31e6, abs=0.01e6) and usd[1] == pytest.approx(14.09e6, abs=0.01e6)
    march = [f.usd for f in bh if f.at >= t(3, 1)]
    assert march == sorted(march) and 35e6 <= march[-2] <= 45e6 and 35e6 <= march[-1] <= 45e6
    assert max(usd) == march[-1] and all(f.accelerating for f in bh[-2:])
    # CleanSpark holds and receives 629 BTC a month of pool payouts
    cs = e["CleanSpark"]
    assert cs.sold_sat == 0 and cs.received_sat == 3 * 629 * COIN and cs.start_sat == 13_011 * COIN
    assert set(cs.verdicts) == {"internal"} and cs.end_sat > cs.start_sat
    # internal reshuffles with change (Bitdeer has a single hot wallet)
    assert {n for n, x in e.items() if x.internal_txids} == {"MARA", "Riot", "Cango", "Bhutan", "CleanSpark"}
    # the totals do not depend on the scale (Bitdeer sells down to exactly zero, so its fees count)
    small = scenario(SMALL).expected
    assert {n: (x.sold_sat + x.custody_sat, x.start_sat, x.received_sat) for n, x in small.items() if n != "Bitdeer"} == {
        n: (x.sold_sat + x.custody_sat, x.start_sat, x.received_sat) for n, x in e.items() if n != "Bitdeer"
    }
    assert small["Bitdeer"].end_sat == 0 and abs(small["Bitdeer"].sold_sat - e["Bitdeer"].sold_sat) < COIN // 100
    assert {f.entity for f in FIGURES} >= set(e) and all(f.source for f in FIGURES)


def test_hashprice_at_the_scenario_difficulty_is_within_coinshares_march_range():
    sc = scenario(SMALL)
    run = sc.start()
    run.apply_all()
    tip = run.chain.tip
    subsidy = block_subsidy_sat(tip.height)
    assert subsidy == 312_500_000
    march = {d: p for d, p in load_daily_prices().items() if d.startswith("2026-03")}
    assert len(march) == 31
    for day, price in march.items():
        hp = hashprice_usd_per_ph_day(tip.difficulty, price, subsidy, FEE_PER_BLOCK_SAT)
        assert 28.0 <= hp <= 30.0, (day, price, hp)
    # with the difficulty coingeek reported (144.4 T) the same March prices land above the range
    assert hashprice_usd_per_ph_day(144.4e12, march["2026-03-04"], subsidy, FEE_PER_BLOCK_SAT) > 30.0


def test_config_toml_is_valid_and_every_invented_address_says_simulated(tmp_path):
    sc = scenario(SMALL)
    path = tmp_path / "demo.toml"
    path.write_text(
        sc.config_toml(
            "http://127.0.0.1:9/api",
            tmp_path / "demo.db",
            poll_interval=5.0,
            extra_toml='[[alerts.channels]]\nname = "second"\ntype = "console"',
        )
    )
    cfg = load_config(path)
    assert cfg.sources[0].urls == ("http://127.0.0.1:9/api",) and cfg.sources[0].poll_interval == 5.0
    assert cfg.prices.sources == ("csv",) and cfg.prices.csv.is_file()
    assert [c.type for c in cfg.alerts.channels] == ["console", "console"] and cfg.alerts.explorer_url is None
    assert cfg.daemon.digest_hour == -1 and cfg.storage == tmp_path / "demo.db"
    by_name = {e.name: e for e in cfg.entities}
    assert set(by_name) == set(sc.treasuries) | set(sc.counterparties)
    for a in sc.addresses:
        if a.kind in ("pool", "background"):
            assert a.entity not in by_name
            continue
        [ea] = [x for x in by_name[a.entity].addresses if x.address == a.address]
        assert "SIMULATED" in ea.source and "simulated" in ea.label
    registry = build_registry(cfg)  # merged with the bundled, sourced profiles
    assert registry.get("MARA").profile.monthly_production_btc.value == 736
    assert registry.entity_of("bitcoin", sc.addresses_of("Coinbase Prime")[0].address).kind == "custodian"
    watched = set(registry.watched_addresses("bitcoin"))
    assert {a.address for n in sc.treasuries for a in sc.addresses_of(n)} <= watched
    assert not {a.address for n in sc.counterparties for a in sc.addresses_of(n)} & watched
    assert any("SIMULATED" in line for line in sc.describe())


# --- the monitor against the served scenario ------------------------------------------------------


def stored(db):
    store = Store(db)
    try:
        return {(r["txid"], r["entity"]): r for r in flow_rows(store)}
    finally:
        store.close()


def sold_by_entity(rows):
    out = {}
    for r in rows.values():
        c = r["classification"]
        if c and c["status"] == "active" and c["verdict"] in SALE_VERDICTS:
            out[r["entity"]] = out.get(r["entity"], 0) + r["out_units"]
    return out


async def test_cli_backfill_of_the_served_scenario_finds_the_expected_sales(tmp_path):
    sc = await asyncio.to_thread(scenario, SMALL)  # built once per session: a file read and a full play
    run = sc.start()
    run.apply_all()
    async with EsploraServer(run.chain) as server:
        cfg = tmp_path / "demo.toml"
        await asyncio.to_thread(cfg.write_text, sc.config_toml(server.url, tmp_path / "demo.db"))
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["-c", str(cfg), "backfill", "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = await asyncio.to_thread(stored, tmp_path / "demo.db")
    assert sold_by_entity(rows) == {n: e.sold_sat for n, e in sc.expected.items() if e.sold_sat}
    for e in sc.expected.values():
        for f in e.flows:
            if f.status == "retracted":  # replaced / reorged out before the backfill: never seen
                assert (f.txid, e.name) not in rows
                continue
            r = rows[(f.txid, e.name)]
            assert r["classification"]["verdict"] == f.verdict, f.description
            assert r["out_units"] == f.out_sat


async def test_pipeline_driven_step_by_step_retracts_accelerates_and_reports(tmp_path):
    """As the demo drives the daemon: apply steps with a clock at their time, poll after `observe` steps."""
    sc = await asyncio.to_thread(scenario, SMALL)
    run = sc.start()
    db = tmp_path / "demo.db"
    async with EsploraServer(run.chain) as server:
        path = tmp_path / "demo.toml"
        await asyncio.to_thread(path.write_text, sc.config_toml(server.url, db, alert_max_age=400 * 86_400))
        clock = FrozenClock(now=sc.start_time)
        async with runtime(await asyncio.to_thread(load_config, path), clock=clock) as rt:
            for step in sc.steps:
                run.apply(step)
                clock.now = step.at + 60
                if step.observe:
                    await rt.pipeline.tick(rt.sources[0])
            clock.now = sc.end_time + 3_600
            await rt.pipeline.tick(rt.sources[0])
    rows = await asyncio.to_thread(stored, db)
    assert sold_by_entity(rows) == {n: e.sold_sat for n, e in sc.expected.items() if e.sold_sat}
    for e in sc.expected.values():
        for f in e.flows:
            c = rows[(f.txid, e.name)]["classification"]
            assert (c["verdict"], c["status"] == "retracted") == (f.verdict, f.status == "retracted"), f.description
            if f.accelerating:
                assert any("selling accelerates" in x for x in c["reasons"]), c["reasons"]

    def check_alerts_and_report(store):
        alerts = alert_rows(store)
        retractions = {(a["entity"], a["txid"]) for a in alerts if a["kind"] == "retraction"}
        updates = [a for a in alerts if a["kind"] == "update"]
        expected = {(n, x) for n, e in sc.expected.items() for x in e.retracted_txids}
        # the replaced (RBF) sale is not retracted in an alert: its replacement is one update of it
        [rbf] = updates
        assert any("replaced (RBF)" in c for c in rbf["payload"]["changes"])
        replaced = next((n, x) for n, x in expected if x in " ".join(rbf["payload"]["changes"]))
        assert retractions == expected - {replaced}
        html_text = build_report(store, sources=sc.sources, now=sc.end_time)  # simulated: detected
        png = render_png(store, entity="Bhutan")
        return alerts, html_text, png

    # the database, the report and its charts (matplotlib) in a worker thread
    alerts, html_text, png = await in_store(db, check_alerts_and_report)
    ids = set(re.findall(r"<tr id='alert-(\d+)'>", html_text))
    assert ids == {str(a["id"]) for a in alerts}
    for name in sc.treasuries:
        assert f"<h2>{name} <span" in html_text
    assert "SIMULATED DATA" in html_text and "15,133" in html_text
    for src in re.findall(r'src="data:image/png;base64,([^"]+)"', html_text):
        assert base64.b64decode(src)[:8] == b"\x89PNG\r\n\x1a\n"
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
