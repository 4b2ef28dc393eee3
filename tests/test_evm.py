"""watchers.evm against a real local EVM node (anvil), with a JSON-RPC proxy for provider behaviour.

The proxy (an aiohttp app on 127.0.0.1) forwards to anvil and can refuse eth_getLogs ranges with the
wording of real providers, answer 5xx / 429, or send garbage, so the watcher's splitting, retries and
error translation are checked against a real chain behind it.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import fakes.anvil as _anvil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from monitor.clock import FrozenClock
from monitor.model import ChainTx, SourceError, TransientError, TxInput, TxOutput
from watchers.evm import (
    DEFAULT_TOKENS,
    HASH_WINDOW,
    TRANSFER_TOPIC,
    EvmSource,
    Token,
    is_range_too_large,
    validate_evm_address,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


anvil = _anvil.anvil  # the fixture: a fresh anvil node per test
DEV_KEYS = _anvil.DEV_KEYS
ARTIFACT = json.loads((REPO / "contracts" / "TestToken.json").read_text())

WATCHED = Account.from_key(DEV_KEYS[0]).address  # a treasury: anvil's first dev account
FUNDER = Account.from_key(DEV_KEYS[1]).address  # an unwatched account that pays the treasury
OTHER = Account.from_key(DEV_KEYS[2]).address  # an unwatched bystander
EXCHANGE = "0x28C6c06298d514Db089934071355E5743bf21d60"  # an "exchange" deposit address (no key)
STRANGER = "0x000000000000000000000000000000000000dEaD"


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
async def w3(anvil):
    """A web3 client of the test itself (sends transactions, controls the node)."""
    client = AsyncWeb3(AsyncHTTPProvider(anvil.url))
    yield client
    await client.provider.disconnect()


@pytest.fixture
def clock():
    return FrozenClock()


@pytest.fixture
async def sources():
    """Builds EvmSource objects and closes them after the test."""
    made: list[EvmSource] = []

    def make(url: str, **kw: Any) -> EvmSource:
        kw.setdefault("chain_id", 31337)
        kw.setdefault("watched", [WATCHED])
        kw.setdefault("tokens", ())
        kw.setdefault("confirmations", 0)
        kw.setdefault("start_block", 0)
        kw.setdefault("clock", FrozenClock())
        source = EvmSource("evm-test", url, **kw)
        made.append(source)
        return source

    yield make
    for source in made:
        await source.close()


async def rpc(w3: AsyncWeb3, method: str, *params: Any) -> Any:
    answer = await w3.provider.make_request(method, list(params))
    assert "error" not in answer, answer
    return answer["result"]


async def send_eth(w3: AsyncWeb3, sender: str, to: str, value: int, **extra: Any) -> dict:
    tx_hash = await w3.eth.send_transaction({"from": sender, "to": to, "value": value, **extra})
    return await mined(w3, tx_hash)


async def mined(w3: AsyncWeb3, tx_hash: Any) -> dict:
    # anvil automines each transaction, but may answer the send before the block is written.
    return await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)


async def deploy_token(w3: AsyncWeb3, owner: str, symbol: str, decimals: int, supply: int):
    factory = w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"])
    tx_hash = await factory.constructor(f"Test {symbol}", symbol, decimals, supply).transact({"from": owner})
    receipt = await mined(w3, tx_hash)
    assert receipt["status"] == 1
    return w3.eth.contract(address=receipt["contractAddress"], abi=ARTIFACT["abi"])


async def token_transfer(contract, sender: str, to: str, value: int) -> dict:
    tx_hash = await contract.functions.transfer(to, value).transact({"from": sender})
    receipt = await mined(contract.w3, tx_hash)
    assert receipt["status"] == 1
    return receipt


def log_txid(receipt: dict, position: int = 0) -> str:
    log = receipt["logs"][position]
    return f"0x{bytes(log['transactionHash']).hex()}:{log['logIndex']}"


def native_txid(receipt: dict) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


# --- a JSON-RPC proxy with provider behaviour ------------------------------------------------------

# What real providers answer when an eth_getLogs range is too large (see watchers/evm.py docstring).
REFUSALS = {
    "geth": (200, {"code": -32005, "message": "query returned more than 10000 results"}),
    "infura": (200, {"code": -32602, "message": "range {range} exceeds limit of {limit}"}),
    "alchemy": (
        200,
        {
            "code": -32600,
            "message": "You can make eth_getLogs requests with up to a {limit} "
            "block range. Based on your parameters, this block range "
            "should work: [{lo_hex}, {hi_hex}]",
        },
    ),
    "quicknode": (413, {"code": -32614, "message": "eth_getLogs is limited to a {limit} range"}),
    "bsc": (200, {"code": -32000, "message": "exceed maximum block range: {limit}"}),
}


class RpcProxy:
    """Forwards JSON-RPC to anvil; refuses wide eth_getLogs ranges; can fail the next requests."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.max_log_range: int | None = None
        self.refusal = "geth"
        self.fail_next = 0  # answer this many requests with `fail_status`
        self.fail_status = 503
        self.fail_headers: dict[str, str] = {}
        self.garbage_next = 0  # answer this many requests with a body that is not JSON
        self.refused = 0
        self.accepted_log_queries: list[tuple[int, int]] = []
        self.requests = 0
        self._session: aiohttp.ClientSession | None = None
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        await self.server.close()
        await self._session.close()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=self.fail_status, text="upstream unavailable", headers=self.fail_headers)
        if self.garbage_next:
            self.garbage_next -= 1
            return web.Response(status=200, text="<html>cloudflare says hi</html>", content_type="text/html")
        payload = json.loads(body)
        if isinstance(payload, dict) and payload.get("method") == "eth_getLogs":
            query = payload["params"][0]
            lo, hi = int(query["fromBlock"], 16), int(query["toBlock"], 16)
            if self.max_log_range is not None and hi - lo + 1 > self.max_log_range:
                self.refused += 1
                status, error = REFUSALS[self.refusal]
                message = error["message"].format(
                    range=hi - lo + 1, limit=self.max_log_range, lo_hex=hex(lo), hi_hex=hex(lo + self.max_log_range - 1)
                )
                return web.json_response(
                    {"jsonrpc": "2.0", "id": payload.get("id"), "error": {**error, "message": message}}, status=status
                )
            self.accepted_log_queries.append((lo, hi))
        async with self._session.post(self.upstream, data=body, headers={"Content-Type": "application/json"}) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read(), content_type="application/json")


@pytest.fixture
async def proxy(anvil):
    p = RpcProxy(anvil.url)
    await p.start()
    yield p
    await p.close()


# --- addresses and tokens (no node) ----------------------------------------------------------------


def test_validate_evm_address_checksums_and_rejects_bad_checksums():
    checksummed = "0x2260FAC5E5542a773Aa44fBCfeDf7C193bc2C599"
    assert validate_evm_address(checksummed.lower()) == checksummed
    assert validate_evm_address("0x" + checksummed[2:].upper()) == checksummed
    assert validate_evm_address(checksummed) == checksummed
    bad = checksummed.replace("FAC5", "fAC5")  # one letter's case flipped: fails EIP-55
    with pytest.raises(ValueError, match="EIP-55 checksum"):
        validate_evm_address(bad)
    for not_an_address in ("0x1234", "2260FAC5E5542a773Aa44fBCfeDf7C193bc2C599", "0x" + "g" * 40, 42):
        with pytest.raises(ValueError, match="not an EVM address"):
            validate_evm_address(not_an_address)  # type: ignore[arg-type]


def test_default_tokens_are_checksummed_mainnet_contracts():
    by_symbol = {t.symbol: t for t in DEFAULT_TOKENS}
    assert {s: (t.address, t.decimals) for s, t in by_symbol.items()} == {
        "WBTC": ("0x2260FAC5E5542a773Aa44fBCfeDf7C193bc2C599", 8),
        "USDT": ("0xdAC17F958D2ee523a2206206994597C13D831ec7", 6),
        "USDC": ("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", 6),
        "stETH": ("0xae7ab96520DE3A18E5e111B5EaAb095312D7fE84", 18),
    }
    for token in DEFAULT_TOKENS:
        assert validate_evm_address(token.address) == token.address  # mixed case passes EIP-55


def test_transfer_topic_is_the_event_signature_hash():
    from eth_utils import keccak

    assert TRANSFER_TOPIC == "0x" + keccak(text="Transfer(address,address,uint256)").hex()
    transfer_abi = [e for e in ARTIFACT["abi"] if e.get("type") == "event" and e["name"] == "Transfer"]
    assert [i["indexed"] for i in transfer_abi[0]["inputs"]] == [True, True, False]


def test_range_refusals_of_real_providers_are_recognised():
    from web3.exceptions import Web3RPCError

    for _status, error in REFUSALS.values():
        message = error["message"].format(range=30, limit=4, lo_hex="0x1", hi_hex="0x4")
        exc = Web3RPCError(message, rpc_response={"jsonrpc": "2.0", "id": 1, "error": {**error, "message": message}})
        assert is_range_too_large(exc), message
    for message in (
        "Log response size exceeded. Please reduce query block range.",
        "maximum [from, to] blocks distance: 10000",
        "range 9009594 is bigger than range limit 2000",
        "block range too large, max range: 1000",
        "query exceeds max results 20000, retry with the range 1-2",
    ):
        exc = Web3RPCError(message, rpc_response={"error": {"code": -32000, "message": message}})
        assert is_range_too_large(exc), message
    for message in ("header not found", "execution reverted", "daily request count exceeded, request rate limited"):
        exc = Web3RPCError(message, rpc_response={"error": {"code": -32005, "message": message}})
        assert not is_range_too_large(exc), message


def test_token_artifact_matches_a_fresh_compile_of_the_source():
    """contracts/TestToken.json is what contracts/build.js (npm solc 0.8.28) makes of TestToken.sol."""
    _anvil.ensure_anvil()  # runs `npm ci` on a fresh clone: solc comes with the same install
    fresh = subprocess.run(
        ["node", str(REPO / "contracts" / "build.js"), "--stdout"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    compiled = json.loads(fresh.stdout)
    assert compiled["compiler"]["version"].startswith("0.8.28+")
    assert compiled["bytecode"] == ARTIFACT["bytecode"]
    assert compiled == ARTIFACT


# --- against anvil ---------------------------------------------------------------------------------


async def test_chain_id_mismatch_is_a_clear_error(anvil, sources):
    source = sources(anvil.url, chain_id=1)
    with pytest.raises(SourceError, match=r"chain id 31337.*chain id 1\b"):
        await source.start()
    with pytest.raises(SourceError, match="31337"):
        await source.poll({})  # poll starts the source itself and checks the same way


async def test_native_transfer_to_exchange_has_exact_wei_and_fee(anvil, w3, sources):
    sent = await send_eth(w3, WATCHED, EXCHANGE, 1_500_000_000_000_000_001)
    received = await send_eth(w3, FUNDER, WATCHED, 2 * 10**18)
    await send_eth(w3, FUNDER, OTHER, 10**18)  # between two unwatched accounts: ignored
    token = await deploy_token(w3, FUNDER, "TST", 6, 10**12)
    failed = await send_eth(w3, WATCHED, token.address, 10**17, gas=100_000)  # no receive(): reverts
    assert failed["status"] == 0

    source = sources(anvil.url)
    await source.start()
    batch = await source.poll({})

    assert batch.failed == ()
    block = await w3.eth.get_block(sent["blockNumber"])
    fee = sent["gasUsed"] * sent["effectiveGasPrice"]
    assert fee > 0
    assert batch.txs[0] == ChainTx(
        chain="ethereum",
        txid=native_txid(sent),
        block_height=sent["blockNumber"],
        block_time=block["timestamp"],
        inputs=(TxInput(WATCHED, 1_500_000_000_000_000_001 + fee),),
        outputs=(TxOutput(EXCHANGE, 1_500_000_000_000_000_001, 0),),
        fee=fee,
        block_hash="0x" + bytes(sent["blockHash"]).hex(),
        asset="ETH",
        decimals=18,
    )
    incoming = batch.txs[1]
    assert incoming.txid == native_txid(received)
    assert incoming.inputs[0].address == FUNDER and incoming.outputs == (TxOutput(WATCHED, 2 * 10**18, 0),)
    assert [t.txid for t in batch.txs] == [native_txid(sent), native_txid(received)]  # failed tx left out
    assert all(isinstance(t.outputs[0].value, int) and t.total_in == t.total_out + t.fee for t in batch.txs)
    assert batch.tip_height == failed["blockNumber"]
    state = json.loads(batch.cursors[0].state)
    assert state["height"] == failed["blockNumber"]
    assert state["txids"] == {
        str(sent["blockNumber"]): [native_txid(sent)],
        str(received["blockNumber"]): [native_txid(received)],
    }

    again = await source.poll({c.key: c.state for c in batch.cursors})
    assert again.txs == () and again.gone == ()


async def test_erc20_transfers_from_or_to_watched_accounts_only(anvil, w3, sources):
    token = await deploy_token(w3, FUNDER, "TST", 6, 10**12)
    unlisted = await deploy_token(w3, FUNDER, "ZZZ", 18, 10**24)
    second_watched = OTHER
    incoming = await token_transfer(token, FUNDER, WATCHED, 5_000_000)
    outgoing = await token_transfer(token, WATCHED, EXCHANGE, 1_234_567)
    between_watched = await token_transfer(token, WATCHED, second_watched, 1)
    await token_transfer(token, FUNDER, STRANGER, 77)  # neither side watched
    await token_transfer(unlisted, FUNDER, WATCHED, 10**18)  # token not configured

    source = sources(anvil.url, watched=[WATCHED, second_watched.lower()], tokens=[Token("TST", token.address, 6)])
    batch = await source.poll({})

    tokens = [t for t in batch.txs if t.asset == "TST"]
    assert [t.txid for t in tokens] == [log_txid(incoming), log_txid(outgoing), log_txid(between_watched)]
    first = tokens[0]
    assert (first.inputs, first.outputs, first.fee, first.decimals, first.block_height) == (
        (TxInput(FUNDER, 5_000_000),),
        (TxOutput(WATCHED, 5_000_000, 0),),
        0,
        6,
        incoming["blockNumber"],
    )
    assert tokens[1].inputs == (TxInput(WATCHED, 1_234_567),)
    assert tokens[1].outputs == (TxOutput(EXCHANGE, 1_234_567, 0),)
    # The watched sender paid gas for its token transfers: those are reported as zero-value ETH txs.
    native = [t for t in batch.txs if t.asset == "ETH"]
    assert [t.txid for t in native] == [native_txid(outgoing), native_txid(between_watched)]
    assert native[0].outputs == (TxOutput(token.address, 0, 0),)
    assert native[0].fee == outgoing["gasUsed"] * outgoing["effectiveGasPrice"]
    assert native[0].inputs == (TxInput(WATCHED, native[0].fee),)
    assert not [t for t in batch.txs if t.asset not in ("TST", "ETH")]


async def test_confirmations_hold_back_recent_blocks(anvil, w3, sources):
    sent = await send_eth(w3, WATCHED, EXCHANGE, 10**18)  # block 1
    source = sources(anvil.url, confirmations=2, start_block=1)
    cursors: dict[str, str] = {}
    seen: list[list[str]] = []
    for _ in range(3):
        batch = await source.poll(cursors)
        cursors = {c.key: c.state for c in batch.cursors}
        seen.append([t.txid for t in batch.txs])
        await rpc(w3, "evm_mine")
    # heads 1, 2, 3: block 1 has 2 confirmations on top of it only at head 3
    assert seen == [[], [], [native_txid(sent)]]
    assert json.loads(cursors["tip"])["height"] == 1


async def test_first_poll_without_cursor_starts_at_the_confirmed_tip(anvil, w3, sources):
    await send_eth(w3, WATCHED, EXCHANGE, 10**18)
    source = sources(anvil.url, start_block=None)
    first = await source.poll({})
    assert first.txs == ()
    assert json.loads(first.cursors[0].state)["height"] == 1
    later = await send_eth(w3, WATCHED, EXCHANGE, 2 * 10**18)
    second = await source.poll({c.key: c.state for c in first.cursors})
    assert [t.txid for t in second.txs] == [native_txid(later)]


async def test_reorg_puts_the_orphaned_transfer_in_gone_once(anvil, w3, sources):
    token = await deploy_token(w3, FUNDER, "TST", 6, 10**12)
    snapshot = await rpc(w3, "evm_snapshot")
    sent = await send_eth(w3, WATCHED, EXCHANGE, 10**18)
    moved = await token_transfer(token, FUNDER, WATCHED, 42)
    source = sources(anvil.url, tokens=[Token("TST", token.address, 6)])
    before = await source.poll({})
    assert {t.txid for t in before.txs} == {native_txid(sent), log_txid(moved)}

    assert await rpc(w3, "evm_revert", snapshot) is True  # both blocks leave the chain
    await rpc(w3, "anvil_mine", "0x3")  # a longer branch without them
    after = await source.poll({c.key: c.state for c in before.cursors})

    assert sorted(after.gone) == sorted([native_txid(sent), log_txid(moved)])
    assert after.txs == ()
    state = json.loads(after.cursors[0].state)
    assert state["height"] == (await w3.eth.block_number) and state["txids"] == {}
    later = await source.poll({c.key: c.state for c in after.cursors})
    assert later.gone == () and later.txs == ()


async def test_reorg_keeps_a_transfer_that_the_new_branch_includes_again(anvil, w3, sources):
    snapshot = await rpc(w3, "evm_snapshot")
    account = Account.from_key(DEV_KEYS[0])
    signed = account.sign_transaction(
        {
            "to": EXCHANGE,
            "value": 7 * 10**17,
            "gas": 21_000,
            "nonce": 0,
            "chainId": 31337,
            "maxFeePerGas": 3 * 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
    first_receipt = await mined(w3, tx_hash)
    source = sources(anvil.url)
    before = await source.poll({})
    assert [t.block_height for t in before.txs] == [first_receipt["blockNumber"]]

    await rpc(w3, "evm_revert", snapshot)
    await rpc(w3, "evm_mine")  # the new branch has another block first ...
    await mined(w3, await w3.eth.send_raw_transaction(signed.raw_transaction))  # ... then the same tx again
    after = await source.poll({c.key: c.state for c in before.cursors})

    assert after.gone == ()
    assert [(t.txid, t.block_height) for t in after.txs] == [(native_txid(first_receipt), first_receipt["blockNumber"] + 1)]


async def test_reorg_deeper_than_the_stored_hashes_fails_the_poll_clearly(anvil, w3, sources):
    await rpc(w3, "anvil_mine", hex(HASH_WINDOW + 5))
    forged = {"height": HASH_WINDOW, "hashes": {str(h): "0x" + "ab" * 32 for h in range(1, HASH_WINDOW + 1)}, "txids": {}}
    source = sources(anvil.url)
    batch = await source.poll({"tip": json.dumps(forged)})
    assert batch.failed == ("tip",) and batch.cursors == ()
    assert "reorg deeper than the 64 stored block hashes" in source.last_error


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
async def test_get_logs_range_refused_as_too_large_is_split_and_completed(anvil, w3, sources, proxy, refusal):
    token = await deploy_token(w3, FUNDER, "TST", 6, 10**12)
    expected = []
    for i in range(12):
        receipt = await token_transfer(token, FUNDER, WATCHED, 1000 + i)
        expected.append(log_txid(receipt))
        await rpc(w3, "anvil_mine", hex(i % 3))  # spread them over ~24 blocks
    proxy.max_log_range, proxy.refusal = 5, refusal
    source = sources(proxy.url, tokens=[Token("TST", token.address, 6)], blocks_per_request=50)

    batch = await source.poll({})

    assert batch.failed == (), source.last_error
    assert [t.txid for t in batch.txs] == expected
    assert proxy.refused > 0
    # The accepted queries cover every scanned block exactly twice (the from-side and the to-side query).
    covered = Counter(h for lo, hi in proxy.accepted_log_queries for h in range(lo, hi + 1))
    assert covered == Counter({h: 2 for h in range(0, batch.tip_height + 1)})
    assert source.log_range <= 5  # remembered for later polls
    refused_before = proxy.refused
    late = await token_transfer(token, WATCHED, EXCHANGE, 5)
    await rpc(w3, "anvil_mine", hex(20))
    next_batch = await source.poll({c.key: c.state for c in batch.cursors})
    assert log_txid(late) in [t.txid for t in next_batch.txs]
    assert proxy.refused == refused_before  # no refusal once the working size is known


async def test_transient_failures_are_retried_through_the_clock(anvil, w3, sources, proxy):
    sent = await send_eth(w3, WATCHED, EXCHANGE, 10**18)
    clock = FrozenClock()
    source = sources(proxy.url, clock=clock, retries=2, backoff_base=0.25, backoff_cap=10.0)
    await source.start()
    proxy.fail_next = 2  # eth_blockNumber fails twice, the third attempt gets through
    batch = await source.poll({})
    assert [t.txid for t in batch.txs] == [native_txid(sent)]
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.25 and 0 <= clock.sleeps[1] <= 0.5  # full jitter, doubling cap


async def test_a_poll_that_keeps_failing_returns_failed_and_keeps_the_cursor(anvil, w3, sources, proxy):
    first = await send_eth(w3, WATCHED, EXCHANGE, 10**18)
    source = sources(proxy.url, retries=1)
    batch = await source.poll({})
    cursors = {c.key: c.state for c in batch.cursors}
    assert [t.txid for t in batch.txs] == [native_txid(first)]
    second = await send_eth(w3, WATCHED, EXCHANGE, 2 * 10**18)

    proxy.fail_next = 2
    failed = await source.poll(cursors)
    assert failed.failed == ("tip",) and failed.cursors == () and failed.txs == ()
    assert "TransientError" in source.last_error and "503" in source.last_error

    proxy.garbage_next = 2
    garbled = await source.poll(cursors)
    assert garbled.failed == ("tip",) and "MalformedError" in source.last_error

    recovered = await source.poll(cursors)  # same cursor: nothing was lost
    assert [t.txid for t in recovered.txs] == [native_txid(second)]
    assert source.last_error is None


async def test_rate_limit_waits_for_retry_after(anvil, w3, sources, proxy):
    clock = FrozenClock()
    source = sources(proxy.url, clock=clock)
    await source.start()
    proxy.fail_next, proxy.fail_status, proxy.fail_headers = 1, 429, {"Retry-After": "3"}
    batch = await source.poll({})
    assert batch.failed == ()
    assert clock.sleeps and clock.sleeps[0] >= 3


async def test_errors_do_not_show_the_url_path_that_may_hold_an_api_key(sources):
    port = _anvil.free_port()  # nothing listens there
    source = sources(f"http://127.0.0.1:{port}/v3/SECRETKEY123", retries=0)
    with pytest.raises(TransientError) as caught:
        await source.start()
    assert "SECRETKEY123" not in str(caught.value)
    assert str(port) in str(caught.value)  # the host stays visible
