"""EVM flows through the whole product on a real anvil node: config → poll → classify → alert → reorg.

A watched sovereign account sends ETH and an ERC-20 to an exchange account; the CLI polls the node,
classifies the outflows (priced with ETH/USD when a price is known, said missing otherwise) and the
alerts reach a local Slack receiver; a reorg made with evm_snapshot/evm_revert retracts the ETH flow and
a retraction alert follows.
"""

import asyncio
import json
from pathlib import Path

import fakes.anvil as _anvil
from builders import (
    BUNDLED_PRICES,
    ROOT,
    cli_run,
    config_toml,
    entity_table,
    evm_source,
    rule,
    slack_channel,
    sourced,
)
from eth_account import Account
from fakes.offloop import in_store
from fakes.receiver import Receiver
from web3 import AsyncHTTPProvider, AsyncWeb3

from storage.alerts import alert_rows

anvil = _anvil.anvil
DEV_KEYS = _anvil.DEV_KEYS
WATCHED = Account.from_key(DEV_KEYS[0]).address
EXCHANGE = Account.from_key(DEV_KEYS[1]).address
ARTIFACT = json.loads((ROOT / "contracts" / "TestToken.json").read_text())


def write_config(tmp_path: Path, url: str, token: str | None) -> Path:
    tokens = [{"symbol": "TST", "address": token, "decimals": 6}] if token else []
    cfg = tmp_path / "evm.toml"
    cfg.write_text(
        config_toml(
            db=tmp_path / "evm.db",
            sources=[evm_source("anvil", url, chain_id=31337, confirmations=0, start_block=0, tokens=tokens)],
            prices=BUNDLED_PRICES,
            entities=[
                entity_table("Test Sovereign", "sovereign", ethereum=sourced([WATCHED], "anvil dev account 0 (test fixture)")),
                entity_table("Test Exchange", "exchange", ethereum=[EXCHANGE]),
            ],
            alerts={"max_age": 100000000},
            channels=[slack_channel("slack", "TM_EVM_SLACK")],
            rules=[rule("all", ["slack"])],
        )
    )
    return cfg


async def rpc(w3, method, *params):
    answer = await w3.provider.make_request(method, list(params))
    assert "error" not in answer, answer
    return answer["result"]


async def test_eth_and_token_outflows_are_classified_alerted_and_a_reorg_retracts(anvil, tmp_path, monkeypatch):
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
    try:
        factory = w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"])
        receipt = await w3.eth.wait_for_transaction_receipt(
            await factory.constructor("Test TST", "TST", 6, 10**15).transact({"from": WATCHED}), timeout=10
        )
        token = w3.eth.contract(address=receipt["contractAddress"], abi=ARTIFACT["abi"])
        async with Receiver() as slack:
            monkeypatch.setenv("TM_EVM_SLACK", slack.url("/hook"))
            cfg = await asyncio.to_thread(write_config, tmp_path, anvil.url, token.address)
            r = await cli_run("-c", cfg, "poll")
            assert r.exit_code == 0, r.output
            await w3.eth.wait_for_transaction_receipt(
                await token.functions.transfer(EXCHANGE, 2_500_000_000).transact({"from": WATCHED}), timeout=10
            )
            snapshot = await rpc(w3, "evm_snapshot")
            sent = await w3.eth.wait_for_transaction_receipt(
                await w3.eth.send_transaction({"from": WATCHED, "to": EXCHANGE, "value": 3 * 10**18}), timeout=10
            )
            eth_txid = "0x" + bytes(sent["transactionHash"]).hex()
            r = await cli_run("-c", cfg, "poll")
            assert r.exit_code == 0, r.output
            r = await cli_run("-c", cfg, "export", "--format", "jsonl", "--direction", "out")
            recs = {x["asset"]: x for x in map(json.loads, r.output.splitlines())}
            assert set(recs) == {"ETH", "TST"}
            eth = recs["ETH"]
            assert eth["txid"] == eth_txid and eth["out_units"] == 3 * 10**18 and eth["out_amount"] == "3.000000000000000000"
            assert eth["destinations"][0]["attribution"] == "exchange:Test Exchange"
            assert eth["classification"]["verdict"] == "sovereign_sale"
            # no ETH/USD price offline: classified anyway, and the reasons say the price is missing
            assert eth["classification"]["usd_value"] is None
            assert any("price" in reason.lower() for reason in eth["classification"]["reasons"])
            tst = recs["TST"]
            assert tst["out_units"] == 2_500_000_000 and tst["out_amount"] == "2500.000000" and tst["decimals"] == 6
            r = await cli_run("-c", cfg, "alerts", "dispatch")
            assert "delivered 2" in r.output, r.output
            texts = [json.dumps(q.json) for q in slack.requests]
            assert any("etherscan.io/tx/" + eth_txid in t for t in texts)

            # the block holding the ETH transfer leaves the chain: the flow is retracted and said so
            assert await rpc(w3, "evm_revert", snapshot) is True
            await rpc(w3, "anvil_mine", "0x3")
            r = await cli_run("-c", cfg, "poll")
            assert r.exit_code == 0, r.output

            def check_stored(store):
                assert store.tx_status("ethereum", eth_txid) == "orphaned"
                assert store.latest_classification("ethereum", eth_txid, "Test Sovereign").status == "retracted"
                return sorted((a["kind"], a["txid"]) for a in alert_rows(store))

            kinds = await in_store(tmp_path / "evm.db", check_stored)
            assert ("retraction", eth_txid) in kinds and len(kinds) == 3
            r = await cli_run("-c", cfg, "alerts", "dispatch")
            assert "delivered 1" in r.output, r.output
            assert "RETRACTED" in json.dumps(slack.requests[-1].json)
    finally:
        await w3.provider.disconnect()


async def test_bad_ethereum_checksum_in_config_is_a_clear_error(tmp_path):
    bad = WATCHED[:-1] + ("a" if WATCHED[-1] != "a" else "b")
    bad = bad[:2] + bad[2:3].swapcase() + bad[3:]
    cfg = tmp_path / "bad.toml"
    await asyncio.to_thread(cfg.write_text, f'[[entities]]\nname = "X"\nkind = "sovereign"\nethereum = ["{bad}"]\n')
    r = await cli_run("-c", cfg, "check-config")
    assert r.exit_code == 2 and "entities[0].ethereum[0]" in r.output + (r.stderr or "")
