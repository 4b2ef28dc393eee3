"""Reorg ≠ RBF in every Bitcoin source: address mode, block mode and Bitcoin Core, through the CLI.

Each route is built on the simulated chain, served by the local Esplora or Core server, polled by the real
CLI (`poll`, then `alerts dispatch` to a real Slack receiver), and checked on what a user sees: the flows and
their status, the verdicts, the alert kinds delivered and the entity's balance as `entities --json` shows it.
"""

import asyncio
import json
from pathlib import Path

import pytest
from builders import (
    BUNDLED_PRICES,
    COIN,
    MARCH_5_2026,
    bitcoind_source,
    cli_run,
    config_toml,
    entity_table,
    env,
    esplora_source,
    fact,
    rule,
    slack_channel,
)
from fakes.offloop import in_store
from fakes.receiver import Receiver

from monitor.sim.bitcoind_server import BitcoindServer
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from storage.alerts import alert_rows

MODES = ("address", "block", "core")


class Route:
    """One chain, its server for `mode`, a config on it, and the CLI steps a user runs."""

    def __init__(self, tmp_path: Path, mode: str):
        self.tmp_path, self.mode = tmp_path, mode
        self.chain = SimChain(start_time=MARCH_5_2026)
        self.hot, self.exch = self.chain.address(f"{mode}-hot"), self.chain.address(f"{mode}-exchange")
        self.db = tmp_path / "r.db"

    async def __aenter__(self):
        self.server = BitcoindServer(self.chain) if self.mode == "core" else EsploraServer(self.chain)
        await self.server.start()
        self.slack = Receiver()
        await self.slack.__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.slack.__aexit__(*exc)
        await self.server.stop()

    def write_config(self, monkeypatch) -> None:
        monkeypatch.setenv("TM_RM_SLACK", self.slack.url("/hook"))
        monkeypatch.setenv("TM_RM_RPC", "rpcpassword")
        if self.mode == "core":
            source = bitcoind_source("local", self.server.url, rpc_user="rpcuser", rpc_password=env("TM_RM_RPC"))
        else:
            source = esplora_source("local", self.server.url, rate_limit=500.0, mode=self.mode)
        self.cfg = self.tmp_path / "c.toml"
        self.cfg.write_text(
            config_toml(
                db=self.db,
                sources=[source],
                prices=BUNDLED_PRICES,
                entities=[
                    entity_table("Test Miner", "miner", [self.hot], profile={"holdings_btc": fact(1000)}),
                    entity_table("Test Exchange", "exchange", [self.exch]),
                ],
                alerts={"max_age": 100000000},
                channels=[slack_channel("slack", "TM_RM_SLACK")],
                rules=[rule("all", ["slack"])],
            )
        )

    async def poll(self) -> None:
        r = await cli_run("-c", self.cfg, "poll")
        assert r.exit_code == 0, r.output
        r = await cli_run("-c", self.cfg, "alerts", "dispatch")
        assert r.exit_code == 0, r.output

    async def alerts(self) -> list[tuple[str, str]]:
        return await in_store(self.db, lambda store: [(a["kind"], a["txid"]) for a in alert_rows(store)])

    async def balance(self) -> int | None:
        """The entity's balance seen, as `entities --json` shows it (None: no balance seen)."""
        r = await cli_run("-c", self.cfg, "entities", "--json")
        assert r.exit_code == 0, r.output
        row = next(x for x in json.loads(r.output) if x["name"] == "Test Miner")
        return row["balance_units"] if row["addresses_with_balance"] else None

    async def stored(self, txid: str) -> tuple[str | None, str | None, str | None]:
        """(tx status, classification status, verdict) of the miner's flow in `txid`."""

        def read(store):
            c = store.latest_classification("bitcoin", txid, "Test Miner")
            return store.tx_status("bitcoin", txid), c.status if c else None, c.verdict if c else None

        return await in_store(self.db, read)


@pytest.mark.parametrize("mode", MODES)
async def test_reorg_of_a_confirmed_sale_whose_input_is_re_spent_is_a_retraction_and_a_new_alert(tmp_path, monkeypatch, mode):
    async with Route(tmp_path, mode) as r:
        r.chain.fund(r.hot, 50 * COIN)
        r.chain.mine()
        await asyncio.to_thread(r.write_config, monkeypatch)
        await r.poll()  # the cursors start here (Core starts at the tip)
        sale = r.chain.pay([r.hot], [(r.exch, 40 * COIN)], fee=1_000)
        r.chain.mine()
        await r.poll()
        assert await r.alerts() == [("new", sale.txid)]
        status, cstatus, verdict = await r.stored(sale.txid)
        assert (status, cstatus) == ("confirmed", "active") and verdict.endswith("_sale")
        if mode != "core":
            assert await r.balance() == 50 * COIN - 40 * COIN - 1_000
        # The block is orphaned; the new branch holds another tx spending the very same input: a smaller sale.
        branch = r.chain.reorg(1, replacements={sale.txid: {"outputs": [(r.exch, 30 * COIN)], "fee": 2_000}})
        other = next(t for b in branch for t in b.txs[1:] if t.vin[0].txid == sale.vin[0].txid)
        assert other.txid != sale.txid and r.chain.tx_status(sale.txid) is None
        await r.poll()
        await r.poll()  # again: nothing new
        assert await r.alerts() == [("new", sale.txid), ("retraction", sale.txid), ("new", other.txid)]
        bodies = [json.dumps(q.json) for q in r.slack.requests]
        assert len(bodies) == 3
        assert "RETRACTED" in bodies[1] and "orphaned by a reorg" in bodies[1] and "RBF" not in bodies[1]
        assert "RBF" not in bodies[2] and other.txid in bodies[2] and "30" in bodies[2]
        assert await r.stored(sale.txid) == ("orphaned", "retracted", verdict)
        assert await r.stored(other.txid) == ("confirmed", "active", verdict)
        if mode != "core":
            assert await r.balance() == 50 * COIN - 30 * COIN - 2_000


@pytest.mark.parametrize("mode", MODES)
async def test_rbf_of_a_mempool_sale_is_one_update(tmp_path, monkeypatch, mode):
    async with Route(tmp_path, mode) as r:
        r.chain.fund(r.hot, 50 * COIN)
        r.chain.mine()
        await asyncio.to_thread(r.write_config, monkeypatch)
        await r.poll()
        first = r.chain.pay([r.hot], [(r.exch, 20 * COIN)], fee=1_000)
        await r.poll()
        assert await r.alerts() == [("new", first.txid)]
        assert (await r.stored(first.txid))[:2] == ("mempool", "active")
        second = r.chain.replace(first.txid, fee=9_000)
        await r.poll()
        assert await r.alerts() == [("new", first.txid), ("update", second.txid)]
        body = json.dumps(r.slack.requests[-1].json)
        assert "replaced (RBF)" in body and "RETRACTED" not in body
        assert (await r.stored(first.txid))[:2] == ("replaced", "retracted")
        assert (await r.stored(second.txid))[:2] == ("mempool", "active")
        r.chain.mine()
        await r.poll()
        assert (await r.stored(second.txid))[:2] == ("confirmed", "active")
        assert len(r.slack.requests) == 2
        if mode != "core":
            assert await r.balance() == 50 * COIN - 20 * COIN - 9_000
