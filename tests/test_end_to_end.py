"""End to end over real HTTP and a real SQLite file: backfill → poll → classify → alert → export.

A SimChain is served by the local Esplora server; the CLI runs in a worker thread (it has its own event
loop) exactly as a user runs it; alerts go to a local Slack-compatible receiver.
"""

import asyncio
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from builders import (
    COIN,
    MARCH_5_2026,
    cli_run,
    config_toml,
    entity_table,
    esplora_source,
    miner_profile,
    rule,
    slack_channel,
    sourced,
)
from fakes.receiver import Receiver, block_kit_problems

from monitor.output.export import CLASSIFICATION_FIELDS, CSV_FIELDS, FLOW_FIELDS
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer


def write_config(
    tmp_path: Path, url: str, addrs: dict[str, str], *, mode: str | None = None, more_hot: Sequence[str] = ()
) -> Path:
    """The miner (hot and cold wallets, `more_hot` between them) and an unwatched exchange; Slack for sales."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        config_toml(
            db=tmp_path / "tm.db",
            sources=[esplora_source("local", url, rate_limit=200.0, timeout=5.0, mode=mode)],
            entities=[
                entity_table(
                    "Test Miner",
                    "miner",
                    [*sourced([addrs["hot"]]), *more_hot, *sourced([addrs["cold"]])],
                    profile=miner_profile(strategy_tags=["convertible_repurchase"]),
                ),
                entity_table("Test Exchange", "exchange", sourced([addrs["exchange"]]), watch=False),
            ],
            alerts={"max_age": 100000000},
            channels=[slack_channel("slack", "TM_TEST_SLACK_URL")],
            rules=[rule("sales", ["slack"], min_severity="notice")],
        )
    )
    return cfg


@pytest.fixture
def chain():
    return SimChain(start_time=MARCH_5_2026)


async def test_backfill_poll_classify_alert_export(tmp_path, chain, monkeypatch):
    addrs = {k: chain.address(f"e2e-{k}") for k in ("hot", "cold", "exchange", "stranger")}
    for i in range(30):
        chain.fund(addrs["hot"], 10 * COIN + i)
    chain.pay([addrs["hot"]], [(addrs["cold"], 50 * COIN)], fee=2_000)  # internal move, with change
    chain.mine()
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_TEST_SLACK_URL", slack.url("/services/T000/B000/secret-token"))
        cfg = await asyncio.to_thread(write_config, tmp_path, server.url, addrs)
        r = await cli_run("-c", cfg, "backfill", "--no-progress")
        assert r.exit_code == 0, r.output
        assert "local: 31 txs (31 new)" in r.output

        # a sale to the exchange, with change back to the hot wallet
        sale = chain.pay([addrs["hot"]], [(addrs["exchange"], 120 * COIN)], fee=5_000)
        chain.mine()
        before = len(server.requests)
        r = await cli_run("-c", cfg, "poll")
        assert r.exit_code == 0, r.output
        # only the address whose stats changed reads its first page; nothing old is downloaded again
        new_paths = server.requests[before:]
        assert sum(p.startswith("/address/") and p.endswith("/txs") for p in new_paths) == 1
        assert not any("/txs/chain/" in p for p in new_paths)

        r = await cli_run("-c", cfg, "alerts", "dispatch")
        assert r.exit_code == 0 and "delivered 1" in r.output, r.output
        [req] = await slack.wait_for(1)
        assert block_kit_problems(req.json) == []
        text = json.dumps(req.json)
        assert "120.00000000" in text.replace(",", "") and "Test Miner" in text
        assert sale.txid in text

        r = await cli_run("-c", cfg, "export", "--format", "json", "--entity", "Test Miner", "--direction", "out")
        assert r.exit_code == 0, r.output
        [rec] = json.loads(r.output)
        assert tuple(rec) == FLOW_FIELDS
        assert rec["txid"] == sale.txid and rec["out_units"] == 120 * COIN and rec["out_amount"] == "120.00000000"
        assert rec["fee_share_units"] == 5_000 and rec["spent_units"] - rec["change_units"] - 5_000 == 120 * COIN
        assert rec["destinations"] == [
            {
                "address": addrs["exchange"],
                "n": 0,
                "value_units": 120 * COIN,
                "value_amount": "120.00000000",
                "attribution": "exchange:Test Exchange",
            }
        ]
        c = rec["classification"]
        assert tuple(c) == CLASSIFICATION_FIELDS
        assert (
            c["verdict"] in ("balance_sheet_sale", "distress_sale") and c["price_source"] == "simulated"
        )  # the bundled series, labelled as invented
        assert c["btc_usd"] and c["usd_value"] == pytest.approx(120 * c["btc_usd"])
        assert c["hashprice_usd"] and 20 < c["hashprice_usd"] < 60
        assert any("cash cost" in reason for reason in c["reasons"])
        assert rec["block_time"].endswith("Z") and rec["status"] == "confirmed"

        r = await cli_run("-c", cfg, "export", "--format", "jsonl")
        lines = [json.loads(x) for x in r.output.splitlines()]
        assert len(lines) == 32 and all(tuple(x) == FLOW_FIELDS for x in lines)  # 30 fundings, 1 move, 1 sale
        assert [x["direction"] for x in lines].count("in") == 30
        assert {x["direction"] for x in lines} == {"in", "internal", "out"}
        move = next(x for x in lines if x["direction"] == "internal")
        assert move["out_units"] == 0 and move["classification"]["verdict"] == "internal"

        out = tmp_path / "flows.csv"
        r = await cli_run("-c", cfg, "export", "--format", "csv", "--out", out, "--since", "2026-03-01")
        rows = list(csv.DictReader(io.StringIO(await asyncio.to_thread(out.read_text))))
        assert tuple(rows[0]) == CSV_FIELDS and len(rows) == 32
        sale_row = next(x for x in rows if x["txid"] == sale.txid)
        assert sale_row["out_amount"] == "120.00000000" and sale_row["verdict"] == c["verdict"]

        r = await cli_run("-c", cfg, "entities")
        assert "Test Miner" in r.output

        # the secret webhook path never shows in what the user sees
        r = await cli_run("-c", cfg, "alerts", "list")
        assert r.exit_code == 0 and "delivered" in r.output and "secret-token" not in r.output


async def test_mempool_tx_is_stored_once_and_updated_when_it_confirms(tmp_path, chain, monkeypatch):
    addrs = {k: chain.address(f"e2e2-{k}") for k in ("hot", "cold", "exchange")}
    chain.fund(addrs["hot"], 50 * COIN)
    chain.mine()
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_TEST_SLACK_URL", slack.url("/hook"))
        cfg = await asyncio.to_thread(write_config, tmp_path, server.url, addrs)
        assert (await cli_run("-c", cfg, "backfill", "--no-progress")).exit_code == 0
        tx = chain.pay([addrs["hot"]], [(addrs["exchange"], 10 * COIN)], fee=1_000)
        r = await cli_run("-c", cfg, "poll")
        assert "1 txs (1 new)" in r.output, r.output
        chain.mine()
        r = await cli_run("-c", cfg, "poll")
        assert "1 txs (0 new)" in r.output, r.output
        r = await cli_run("-c", cfg, "export", "--format", "jsonl", "--direction", "out")
        [rec] = [json.loads(x) for x in r.output.splitlines()]
        assert rec["txid"] == tx.txid and rec["status"] == "confirmed" and rec["block_height"] == chain.height
        # classified once (same verdict when it confirmed), alerted once
        r = await cli_run("-c", cfg, "alerts", "list", "--json")
        assert len(json.loads(r.output)) == 1


@pytest.mark.parametrize("mode", ["block", "auto"])
async def test_block_mode_source_through_the_cli_gives_the_same_flows(tmp_path, chain, monkeypatch, mode, caplog):
    addrs = {k: chain.address(f"bm-{k}") for k in ("hot", "cold", "exchange")}
    chain.fund(addrs["hot"], 80 * COIN)
    chain.mine()
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_TEST_SLACK_URL", slack.url("/hook"))
        # in auto mode, enough watched addresses for auto to pick block mode
        more = [chain.address(f"bm-extra-{i}") for i in range(60)] if mode == "auto" else []
        cfg = await asyncio.to_thread(write_config, tmp_path, server.url, addrs, mode=mode, more_hot=more)
        r = await cli_run("-c", cfg, "--log-level", "info", "poll")
        assert r.exit_code == 0, r.output
        assert "mode=block" in r.output
        sale = chain.pay([addrs["hot"]], [(addrs["exchange"], 30 * COIN)], fee=4_000)
        chain.mine()
        before = len(server.requests)
        r = await cli_run("-c", cfg, "poll")
        assert r.exit_code == 0, r.output
        new = server.requests[before:]
        per_address = [p for p in new if p.startswith("/address/")]
        assert any(p.endswith("/raw") for p in new)
        # no per-address reads but the bounded mempool checks (addresses holding coins, 25 per poll at most)
        assert all(p.endswith("/txs/mempool") for p in per_address) and 0 < len(per_address) <= 25
        r = await cli_run("-c", cfg, "export", "--format", "jsonl", "--direction", "out")
        [rec] = [json.loads(x) for x in r.output.splitlines()]
        assert rec["txid"] == sale.txid and rec["out_units"] == 30 * COIN and rec["fee_share_units"] == 4_000
        assert rec["destinations"][0]["attribution"] == "exchange:Test Exchange"
