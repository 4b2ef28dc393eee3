"""scenarios, status, alerts test and report through the CLI."""

import asyncio
import json

import pytest
from builders import (
    BUNDLED_PRICES,
    COIN,
    MARCH_5_2026,
    ROOT,
    cli_run,
    cli_sync,
    config_toml,
    console_channel,
    entity_table,
    esplora_source,
    rule,
    slack_channel,
)
from fakes.receiver import Receiver

from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer


def test_scenarios_json_from_reference_inputs(tmp_path):
    r = cli_sync("-c", ROOT / "config.toml", "--db", tmp_path / "none.db", "scenarios", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["inputs"]["difficulty"] == 144.4e12 and "reference" in doc["inputs"]["chain_source"]
    by = {s["btc_usd"]: s for s in doc["scenarios"]}
    # 144.4 T, subsidy only: $100k → $43.53/PH/day (economics.md §2 derived table)
    assert by[100_000.0]["hashprice_usd_per_ph_day"] == pytest.approx(43.53, abs=0.01)
    assert by[100_000.0]["quoted_hashprice"]["value"] == 37.0
    # at $80k the sector-average miners ($79,995) are just above cost; Riot's $81k is below
    assert {b["miner"] for b in by[80_000.0]["below_cash_cost"]} == {"Riot"}
    # below-cost cases: at $75k/$70k/$65k every sector-average miner and Riot are under water
    for price in (75_000.0, 70_000.0, 65_000.0):
        below = {b["miner"] for b in by[price]["below_cash_cost"]}
        assert {"MARA", "Riot", "Bitdeer"} <= below and "CleanSpark" not in below  # CleanSpark's cost is $60k
    assert "Cango" in {b["miner"] for b in by[65_000.0]["below_cash_cost"]}  # $70,602 cost
    assert [d["change"] for d in by[70_000.0]["difficulty_cases"]] == ["-10%", "+10%"]
    assert by[70_000.0]["difficulty_cases"][0]["hashprice_usd_per_ph_day"] == pytest.approx(30.47 / 0.9, abs=0.02)
    s20 = next(b for b in by[100_000.0]["breakeven_usd_per_kwh"] if b["j_per_th"] == 20.0)
    assert s20["usd_per_kwh"] == pytest.approx(43.53 / 480, abs=0.001)


async def test_status_alerts_test_and_report(tmp_path, monkeypatch):
    chain = SimChain(start_time=MARCH_5_2026)
    hot, exch = chain.address("cc-hot"), chain.address("cc-exchange")
    chain.fund(hot, 30 * COIN)
    chain.mine()
    chain.pay([hot], [(exch, 12 * COIN)], fee=2_000)
    chain.mine()
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_CC_SLACK", slack.url("/services/T/B/tok"))
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(
            cfg.write_text,
            config_toml(
                db=tmp_path / "cc.db",
                sources=[esplora_source("local", server.url, rate_limit=500.0)],
                prices=BUNDLED_PRICES,
                entities=[entity_table("CC Miner", "miner", [hot]), entity_table("CC Exchange", "exchange", [exch])],
                alerts={"max_age": 100000000},
                channels=[slack_channel("slack", "TM_CC_SLACK"), console_channel("out")],
                rules=[rule("all", ["slack"])],
            ),
        )
        r = await cli_run("-c", cfg, "status")
        assert r.exit_code == 1 and "nothing has been stored yet" in r.output
        assert (await cli_run("-c", cfg, "poll")).exit_code == 0
        r = await cli_run("-c", cfg, "status", "--json")
        doc = json.loads(r.output)
        assert doc["sources"][0]["source"] == "local" and doc["sources"][0]["cursor_keys"] >= 1
        assert doc["alerts"] == {"queued": 1}
        r = await cli_run("-c", cfg, "alerts", "list", "--status", "queued")
        assert r.exit_code == 0 and "CC Miner" in r.output and "queued" in r.output

        r = await cli_run("-c", cfg, "alerts", "test", "--channel", "slack")
        assert r.exit_code == 0 and "sample alert delivered" in r.output
        [req] = slack.requests
        assert "test alert" in json.dumps(req.json).lower()
        r = await cli_run("-c", cfg, "alerts", "test", "--channel", "out")
        assert r.exit_code == 0 and "TEST" in r.output
        r = await cli_run("-c", cfg, "alerts", "test", "--channel", "nope")
        assert r.exit_code == 1 and "no channel named 'nope'" in r.output
        slack.fail(1, status=400, body="invalid_payload")
        r = await cli_run("-c", cfg, "alerts", "test", "--channel", "slack")
        assert r.exit_code == 1 and "400" in r.output and "tok" not in r.output

        html = tmp_path / "r.html"
        r = await cli_run("-c", cfg, "report", "--out", html)
        assert r.exit_code == 0, r.output
        text = await asyncio.to_thread(html.read_text)
        assert text.lstrip().lower().startswith("<!doctype html") and "CC Miner" in text
        png = tmp_path / "r.png"
        r = await cli_run("-c", cfg, "report", "--format", "png", "--entity", "CC Miner", "--out", png)
        assert r.exit_code == 0 and (await asyncio.to_thread(png.read_bytes)).startswith(b"\x89PNG")
        r = await cli_run("-c", cfg, "report", "--since", "not-a-date")
        assert r.exit_code == 2


async def test_a_blind_monitor_says_so_in_exit_codes_and_status(tmp_path):
    """Every source unreachable: backfill and poll exit 4; one of two: 3; `status` shows the failure."""
    from fakes.receiver import free_port

    from monitor.run.health import EXIT_FAILED, EXIT_PARTIAL

    chain = SimChain(start_time=MARCH_5_2026)
    hot = chain.address("blind-hot")
    chain.fund(hot, 30 * COIN)
    chain.mine()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with EsploraServer(chain) as server:

        def write(name, sources):
            path = tmp_path / name
            path.write_text(
                config_toml(
                    db=tmp_path / "blind.db",
                    sources=sources,
                    prices=BUNDLED_PRICES,
                    entities=[entity_table("Blind Miner", "miner", [hot])],
                )
            )
            return path

        blind = await asyncio.to_thread(
            write, "blind.toml", [esplora_source("dead", dead, rate_limit=500.0, timeout=1.0, retries=1)]
        )
        for command in ("backfill", "poll"):
            r = await cli_run("-c", blind, command, *(["--no-progress"] if command == "backfill" else []))
            assert r.exit_code == EXIT_FAILED, r.output
            assert "dead: FAILED" in r.output and "every source failed" in r.output
        r = await cli_run("-c", blind, "status", "--json")
        [src] = json.loads(r.output)["sources"]
        assert src["source"] == "dead" and src["failing_since"] and src["last_error"] and src["last_success"] is None
        r = await cli_run("-c", blind, "status")
        assert "failing since" in r.output

        half = await asyncio.to_thread(
            write,
            "half.toml",
            [
                esplora_source("dead", dead, rate_limit=500.0, timeout=1.0, retries=1),
                esplora_source("local", server.url, rate_limit=500.0),
            ],
        )
        r = await cli_run("-c", half, "poll")
        assert r.exit_code == EXIT_PARTIAL, r.output
        r = await cli_run("-c", half, "status", "--json")
        by = {s["source"]: s for s in json.loads(r.output)["sources"]}
        assert by["local"]["last_success"] and by["local"]["failing_since"] is None
        assert by["dead"]["failing_since"] and by["dead"]["last_error"]

        ok = await asyncio.to_thread(write, "ok.toml", [esplora_source("local", server.url, rate_limit=500.0)])
        assert (await cli_run("-c", ok, "poll")).exit_code == 0
