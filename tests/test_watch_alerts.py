"""Dormancy and balance alerts from stored data, through the real pipeline and the local Esplora server:
coins funded in 2017 moving in 2026 (and younger ones that must not count), and MARA's balance falling
during the simulated March 2026 campaign."""

import asyncio
import datetime as dt
import functools
from pathlib import Path

import pytest
from builders import (
    BUNDLED_PRICES,
    COIN,
    cli_run,
    config_toml,
    entity_table,
    esplora_source,
    fact,
    webhook_channel,
)
from fakes.offloop import in_store
from fakes.receiver import Receiver

from monitor.clock import FrozenClock
from monitor.config import load_config
from monitor.run.runtime import runtime
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.scenario import build_scenario
from storage.alerts import alert_rows

YEAR = 365.25 * 86_400
SECRET = "whsec_" + "d2F0Y2gtYWxlcnRzLXRlc3Qta2V5LTMyLWJ5dGVzIQ=="


def ts(*args) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp())


def dormancy_config(tmp_path: Path, url: str, hot: str, exchange: str) -> Path:
    p = tmp_path / "d.toml"
    p.write_text(
        config_toml(
            db=tmp_path / "d.db",
            sources=[esplora_source("local", url, rate_limit=500.0)],
            prices=BUNDLED_PRICES,
            entities=[
                entity_table("Old Miner", "miner", [hot], profile={"holdings_btc": fact(1000)}),
                entity_table("Test Exchange", "exchange", [exchange]),
            ],
            alerts={
                "max_age": 100_000_000,
                "dormancy": [{"name": "sleepers", "min_years": 5, "min_btc": 10, "channels": ["hook"]}],
            },
            channels=[webhook_channel("hook", "TM_W_HOOK", "TM_W_SECRET")],
            rules=[],
        )
    )
    return p


async def test_coins_funded_years_before_moving_raise_one_dormancy_alert(tmp_path, monkeypatch):
    chain = SimChain(start_time=ts(2017, 6, 1))
    hot, young_hot, exch = chain.address("old-hot"), chain.address("young-hot"), chain.address("exch")
    old = chain.fund(hot, 50 * COIN)  # mined 2017-06-01
    funded_at = chain.blocks[-1].time
    old2 = chain.fund(hot, 40 * COIN)
    chain.mine(time=ts(2025, 9, 1))
    young = chain.fund(hot, 20 * COIN)  # mined 2025-09: half a year old when spent
    chain.mine(time=ts(2026, 3, 5, 12))
    spend = chain.pay([], [(exch, 65 * COIN)], inputs=[old, young], fee=2_000, change_address=hot)
    chain.mine(time=ts(2026, 3, 5, 13))
    spent_at = chain.blocks[-1].time
    # the same coins' age rule applied to a second, young-only spend must not alert
    chain.fund(young_hot, 30 * COIN)
    async with EsploraServer(chain) as server, Receiver() as hook:
        monkeypatch.setenv("TM_W_HOOK", hook.url("/in"))
        monkeypatch.setenv("TM_W_SECRET", SECRET)
        cfg = await asyncio.to_thread(dormancy_config, tmp_path, server.url, hot, exch)
        for _ in range(2):  # polling again finds nothing new and alerts nothing twice
            r = await cli_run("-c", cfg, "poll")
            assert r.exit_code == 0, r.output
            r = await cli_run("-c", cfg, "alerts", "dispatch")
            assert r.exit_code == 0, r.output
        # more 2017 coins move, first unconfirmed, then replaced (RBF): the same coins, ONE more alert
        first = chain.pay([], [(exch, 39 * COIN)], inputs=[old2], fee=1_000)
        for _ in range(2):
            assert (await cli_run("-c", cfg, "poll")).exit_code == 0
            assert (await cli_run("-c", cfg, "alerts", "dispatch")).exit_code == 0
            if _ == 0:
                replacement = chain.replace(first.txid, fee=9_000)
                chain.mine()
    req, again = hook.requests
    assert again.json["watch"]["txid"] == first.txid and again.json["watch"]["dormant_units"] == 40 * COIN
    assert replacement.txid != first.txid
    body = req.json
    assert body["schema"] == "treasury-monitor.flow/1" and body["txid"] == spend.txid  # the flow rides along
    w = body["watch"]
    assert w["type"] == "dormancy" and w["dormant_units"] == 50 * COIN  # the 2025 coins are not dormant
    assert w["oldest_funding_txid"] == old.txid
    assert abs(w["oldest_years"] - (spent_at - funded_at) / YEAR) < 0.001
    assert body["kind"] == "new" and body["message_id"] == req.headers["webhook-id"]
    assert any(f"{(spent_at - funded_at) / YEAR:.1f} years before it was spent" in x for x in body["reasons"])
    assert any("verdict is" in x for x in body["reasons"])
    rows = await in_store(tmp_path / "d.db", alert_rows)
    row = rows[0]
    assert len(rows) == 2 and row["dedup_key"].startswith("dormancy:bitcoin:Old Miner:sleepers:") and row["entity"] == "Old Miner"
    title = row["payload"]["title"]
    assert title.startswith("Old Miner: 50 BTC dormant 8.8 years moved")


# --- balance ----------------------------------------------------------------------------------------


@functools.cache
def scenario():
    return build_scenario(seed=2026, scale=1.0)


@pytest.mark.parametrize("mode", ["address", "block"])
async def test_mara_balance_drop_and_level_crossing_alert_once_each(tmp_path, monkeypatch, mode):
    sc = await asyncio.to_thread(scenario)
    run = sc.start()
    db = tmp_path / "b.db"
    async with EsploraServer(run.chain) as server, Receiver() as hook:
        monkeypatch.setenv("TM_B_HOOK", hook.url("/balance"))
        monkeypatch.setenv("TM_B_SECRET", SECRET)
        extra = """
[[alerts.channels]]
name = "hook"
type = "webhook"
url = { env = "TM_B_HOOK" }
secret = { env = "TM_B_SECRET" }
min_interval = 0

[[alerts.balance]]
name = "mara-treasury"
entities = ["MARA"]
below_btc = 45000
drop_pct = 10
within_days = 7
channels = ["hook"]
"""
        path = tmp_path / "b.toml"
        text = sc.config_toml(server.url, db, alert_max_age=400 * 86_400, extra_toml=extra)
        text = text.replace('type = "esplora"\n', f'type = "esplora"\nmode = "{mode}"\n', 1)
        await asyncio.to_thread(path.write_text, text)
        clock = FrozenClock(now=sc.start_time)
        async with runtime(await asyncio.to_thread(load_config, path), clock=clock) as rt:
            for step in sc.steps:
                run.apply(step)
                clock.now = step.at + 60
                if step.observe or step.entity == "MARA":
                    await rt.pipeline.tick(rt.sources[0])
                    await rt.dispatcher.dispatch_once()
    bodies = [r.json for r in hook.requests]
    kinds = [b["watch"]["type"] for b in bodies]
    assert sorted(kinds) == ["balance_below", "balance_drop"]  # each condition once, though it stays true
    drop = next(b for b in bodies if b["watch"]["type"] == "balance_drop")
    below = next(b for b in bodies if b["watch"]["type"] == "balance_below")
    assert drop["schema"] == "treasury-monitor.watch/1"

    # check the numbers against the chain itself: MARA's confirmed balance replayed to those times
    def chain_balance(at):
        replay = sc.start()
        replay.apply_until(at)
        return sum(replay.chain.balance(a.address) for a in sc.addresses_of("MARA"))

    def when(text):
        return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())

    w = drop["watch"]
    assert w["peak_units"] == chain_balance(when(w["peak_at"]))
    assert w["balance_units"] == chain_balance(when(w["as_of"]))
    assert w["drop_pct"] >= 10 and abs(w["drop_pct"] - (w["peak_units"] - w["balance_units"]) / w["peak_units"] * 100) < 1e-3
    b = below["watch"]
    assert b["balance_units"] == chain_balance(when(b["as_of"])) < b["level_units"] == 45_000 * COIN
    assert "fell" in drop["reasons"][0] and "outflows since then took" in drop["reasons"][1]
    assert below["reasons"][0].startswith("MARA's balance is ")
