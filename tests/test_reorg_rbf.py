"""Unconfirmed first, replacements and reorgs, with alerts, over the local Esplora server and the CLI."""

import asyncio
import json
from pathlib import Path

from builders import (
    BUNDLED_PRICES,
    COIN,
    MARCH_5_2026,
    cli_run,
    config_toml,
    entity_table,
    esplora_source,
    fact,
    rule,
    slack_channel,
    webhook_channel,
)
from fakes.offloop import in_store
from fakes.receiver import Receiver
from standardwebhooks import Webhook

from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from storage.alerts import alert_rows


def config(tmp_path: Path, url: str, hot: str, exchange: str, *, confirmations: bool = False) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(
        config_toml(
            db=tmp_path / "r.db",
            sources=[esplora_source("local", url, rate_limit=500.0)],
            prices=BUNDLED_PRICES,
            entities=[
                entity_table("Test Miner", "miner", [hot], profile={"holdings_btc": fact(1000)}),
                entity_table("Test Exchange", "exchange", [exchange]),
            ],
            alerts={"max_age": 100000000, "notify_confirmations": confirmations},
            channels=[slack_channel("slack", "TM_RR_SLACK"), webhook_channel("hook", "TM_RR_HOOK", "TM_RR_HOOK_SECRET")],
            rules=[rule("all", ["slack", "hook"])],
        )
    )
    return p


HOOK_SECRET = "whsec_" + "cmVvcmctYW5kLXJiZi10ZXN0LWtleS0zMi1ieXRlcw=="


def verified(hook: Receiver) -> list[dict]:
    """Each webhook body, after the reference Standard Webhooks library verified its signature."""
    out = []
    for r in hook.requests:
        body = Webhook(HOOK_SECRET).verify(r.body, dict(r.headers))
        assert body["message_id"] == r.headers["webhook-id"]
        out.append(body)
    return out


async def alerts_of(tmp_path: Path) -> list[tuple[str, str]]:
    return await in_store(tmp_path / "r.db", lambda store: [(a["kind"], a["txid"]) for a in alert_rows(store)])


async def poll_and_dispatch(cfg):
    r = await cli_run("-c", cfg, "poll")
    assert r.exit_code == 0, r.output
    r = await cli_run("-c", cfg, "alerts", "dispatch")
    assert r.exit_code == 0, r.output


async def test_rbf_of_an_alerted_mempool_outflow_is_one_update(tmp_path, monkeypatch):
    chain = SimChain(start_time=MARCH_5_2026)
    hot, exch = chain.address("rr-hot"), chain.address("rr-exchange")
    chain.fund(hot, 50 * COIN)
    chain.mine()
    async with EsploraServer(chain) as server, Receiver() as slack, Receiver() as hook:
        monkeypatch.setenv("TM_RR_SLACK", slack.url("/hook"))
        monkeypatch.setenv("TM_RR_HOOK", hook.url("/in"))
        monkeypatch.setenv("TM_RR_HOOK_SECRET", HOOK_SECRET)
        cfg = await asyncio.to_thread(config, tmp_path, server.url, hot, exch, confirmations=True)
        await poll_and_dispatch(cfg)
        first = chain.pay([hot], [(exch, 20 * COIN)], fee=1_000)
        await poll_and_dispatch(cfg)  # unconfirmed first: classified and alerted at once
        assert await alerts_of(tmp_path) == [("new", first.txid)]
        second = chain.replace(first.txid, fee=9_000)
        await poll_and_dispatch(cfg)
        assert await alerts_of(tmp_path) == [("new", first.txid), ("update", second.txid)]
        body = json.dumps(slack.requests[-1].json)
        assert "replaced (RBF)" in body and first.txid in body and second.txid in body

        def check_stored(store):
            assert store.tx_status("bitcoin", first.txid) == "replaced"
            assert store.latest_classification("bitcoin", first.txid, "Test Miner").status == "retracted"
            assert store.latest_classification("bitcoin", second.txid, "Test Miner").status == "active"

        await in_store(tmp_path / "r.db", check_stored)
        # the replacement confirms: the stored flow is updated in place; the rule asks for a confirmation
        chain.mine()
        await poll_and_dispatch(cfg)
        kinds = await alerts_of(tmp_path)
        assert kinds == [("new", first.txid), ("update", second.txid), ("update", second.txid)]
        assert "confirmed in block" in json.dumps(slack.requests[-1].json)
        r = await cli_run("-c", cfg, "export", "--format", "jsonl", "--direction", "out")
        recs = {x["txid"]: x for x in map(json.loads, r.output.splitlines())}
        assert recs[second.txid]["status"] == "confirmed" and recs[first.txid]["status"] == "replaced"
        assert len(slack.requests) == 3  # nothing sent twice
        new, rbf, confirmed = verified(hook)
        assert [b["kind"] for b in (new, rbf, confirmed)] == ["new", "update", "update"]
        assert new["amends"] is None and rbf["amends"] == new["message_id"]  # the replacement amends the original
        assert confirmed["amends"] == rbf["message_id"]  # the confirmation amends what was said about its tx
        assert len({new["message_id"], rbf["message_id"], confirmed["message_id"]}) == 3


async def test_two_block_reorg_retracts_the_alerted_outflow_and_alerts_the_new_branch_once(tmp_path, monkeypatch):
    chain = SimChain(start_time=MARCH_5_2026)
    hot, exch = chain.address("ro-hot"), chain.address("ro-exchange")
    chain.fund(hot, 50 * COIN)
    chain.fund(hot, 30 * COIN)
    chain.mine()
    async with EsploraServer(chain) as server, Receiver() as slack, Receiver() as hook:
        monkeypatch.setenv("TM_RR_SLACK", slack.url("/hook"))
        monkeypatch.setenv("TM_RR_HOOK", hook.url("/in"))
        monkeypatch.setenv("TM_RR_HOOK_SECRET", HOOK_SECRET)
        cfg = await asyncio.to_thread(config, tmp_path, server.url, hot, exch)
        await poll_and_dispatch(cfg)
        doomed = chain.pay([hot], [(exch, 40 * COIN)], fee=1_000)
        chain.mine()
        chain.mine()
        await poll_and_dispatch(cfg)
        assert await alerts_of(tmp_path) == [("new", doomed.txid)]
        # a 2-block reorg drops the outflow from chain and mempool; the new branch carries another outflow
        utxo = next(u for u in chain.utxos(hot) if u.value == 30 * COIN)
        branch = chain.reorg(2, drop_txids=[doomed.txid], new_blocks=3)
        other = chain.pay([], [(exch, 25 * COIN)], inputs=[(utxo.txid, utxo.vout)], fee=1_000, change_address=hot)
        chain.mine()
        assert branch and chain.tx_status(doomed.txid) is None or not chain.tx_status(doomed.txid).confirmed
        await poll_and_dispatch(cfg)
        await poll_and_dispatch(cfg)  # again: nothing new
        assert await alerts_of(tmp_path) == [("new", doomed.txid), ("retraction", doomed.txid), ("new", other.txid)]
        kinds = [r.json for r in slack.requests]
        assert len(kinds) == 3 and "RETRACTED" in json.dumps(kinds[1])
        # the webhook retraction has its own id and names the id of the alert it retracts
        alerted, retraction, other_new = verified(hook)
        assert retraction["kind"] == "retraction" and retraction["txid"] == doomed.txid
        assert retraction["message_id"] != alerted["message_id"]
        assert retraction["amends"] == alerted["message_id"] == hook.requests[0].headers["webhook-id"]
        assert retraction["dedup_key"] == alerted["dedup_key"]
        assert other_new["amends"] is None

        def check_stored(store):
            assert store.tx_status("bitcoin", doomed.txid) == "orphaned"

        await in_store(tmp_path / "r.db", check_stored)
