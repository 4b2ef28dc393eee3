"""EVM chain source: native ETH transfers and ERC-20 `Transfer` logs that touch watched addresses.

Block mode over *confirmed* blocks only (height ≤ head − `confirmations`), through web3.py's
`AsyncWeb3` + `AsyncHTTPProvider`. What one poll does:

1. `eth_blockNumber`; the reorg check (below); then the next confirmed blocks, at most
   `max_blocks_per_poll`, fetched with full transaction objects (`eth_getBlockByNumber(n, true)`),
   `blocks_per_request` of them per JSON-RPC batch. Each block's `parentHash` must equal the hash of
   the block before it, so the scanned range is one chain.
2. **Native ETH**: each transaction whose `from` or `to` is watched (a lower-cased set: O(1) per tx,
   whatever the number of watched addresses). Receipts are fetched for those only; a failed tx
   (receipt status 0) is dropped, its fee too. Incoming zero-value calls are ignored; outgoing ones
   are kept because the watched account paid their gas (this is where the gas of an ERC-20 transfer
   made by a watched account shows up). *Internal* value transfers (ETH moved by contract code, e.g.
   a multisig wallet paying out or a DEX router refunding) are NOT seen: they are not transactions
   and only a tracing node (`debug_traceBlock`, `trace_block`) reveals them. A treasury held in a
   contract wallet (Gnosis Safe) therefore shows its ERC-20 movements but not its ETH payouts.
3. **ERC-20**: `eth_getLogs` for the `Transfer(address,address,uint256)` topic, filtered by the token
   addresses, over ranges of at most `max_log_range` blocks, as two queries per range: watched
   addresses as topic 1 (`from`) and as topic 2 (`to`). Two narrow queries instead of one query on
   the topic alone plus a local filter, because the token contracts here (USDT, USDC) emit thousands
   of Transfers per block: the node's answer stays proportional to the watched activity. The watched
   addresses go in OR-lists of at most `max_topic_addresses` (Infura caps a request at 5,000
   parameters), so many addresses mean more queries, never an unbounded one. A log seen by both
   queries (watched → watched) is reported once.
4. A range the node refuses as too large is split in halves until each half is accepted, and the
   source remembers the size that worked for later polls. Refusals recognised (real wording):
   geth/Infura `-32005 query returned more than 10000 results`; Infura `-32602 range 1000000
   exceeds limit of 10000`; Alchemy `Log response size exceeded. Please reduce query block range.`
   and `-32600 You can make eth_getLogs requests with up to a 500 block range`; QuickNode HTTP 413
   `-32614 eth_getLogs is limited to a 10,000 range`; BNB Chain `-32000 exceed maximum block range:
   5000`; Ankr `maximum [from, to] blocks distance: 10000`; Tenderly `range 9009594 is bigger than
   range limit 2000`; Erigon (cdk) `-32005 block range too large, max range: N`; reth `-32602 query
   exceeds max results 20000`; op-geth forks `block range is bigger than maxBlockRange` / `block range
   is larger than max block range`; zkSync `Query returned more than 10000 results. Try with this
   block range [...]`; and any HTTP 413.

Normalisation (`ChainTx`, amounts are ints in wei / token base units, addresses EIP-55 checksummed):

- native transfer: txid = tx hash (`0x…`, lower-case), asset `ETH`, decimals 18,
  `inputs=(TxInput(from, value + fee),)`, `outputs=(TxOutput(to, value, n=0),)`,
  `fee = gasUsed × effectiveGasPrice (+ blobGasUsed × blobGasPrice)`. The input carries value + fee so
  that, as on Bitcoin, `total_in == total_out + fee` and `monitor.core.flows` gets `out = value` for the
  sender. A contract creation pays its new contract (`receipt.contractAddress`).
- token Transfer log: txid = `f"{tx_hash}:{log_index}"`, asset = token symbol, decimals = token
  decimals, `inputs=(TxInput(from, value),)`, `outputs=(TxOutput(to, value, n=0),)`, fee 0 (the gas
  is on the native tx of the same hash when the sender is watched). Mints come from and burns go to
  the zero address. stETH is rebasing: its balance grows without Transfer logs; only transfers are
  reported, with the stETH amount of the log.

Only confirmed blocks are reported (`block_height` is never None here); nothing is read from the
mempool. With the default 12 confirmations a transfer shows up ~2.5 minutes after its block.

Cursor: one `Cursor(source=name, key="tip", state=JSON)`:

    {"height": 1234, "hashes": {"1171": "0x…", …, "1234": "0x…"}, "txids": {"1200": ["0x…", "0x…:7"]}}

`height` is the last scanned block; `hashes` the hashes of the last `HASH_WINDOW` (64) scanned
blocks; `txids` what this source reported from those blocks. On each poll the stored hash at `height`
is compared with the node's; on a mismatch all stored hashes are compared (one batch) to find the fork
point, the cursor goes back to it, the txids reported from orphaned blocks become `Batch.gone` unless
the rescan of the new branch reports them again, and the new branch is scanned. A tx re-included in a
block not yet confirmed is reported gone now and new again once its block is confirmed. A reorg deeper
than the window (impossible on post-merge mainnet, where blocks finalise after ~64) fails the poll
with an error that says so; moving the cursor by hand (or `start_block`) is the way out. Without a
stored cursor the first poll starts at `start_block`, or, when that is None, records the current
confirmed tip and reports nothing (a monitor watches from now on; backfills pass `start_block`).

Failures: each JSON-RPC request gets up to `1 + retries` attempts; timeouts, refused connections,
5xx, 429 (honouring `Retry-After` up to `backoff_cap`) and node-side RPC errors are retried after
`uniform(0, min(backoff_cap, backoff_base × 2^attempt))` seconds through `clock.sleep`. web3's own
retry loop is switched off so that every wait goes through the clock. When a poll still fails it
returns `Batch(failed=("tip",))` without a cursor (the `watchers.Source` contract: nothing is stored,
the next poll starts from the same place) and the error is kept in `last_error` and logged once (the
first failure and the recovery, not every poll). Only `start()` raises: a chain id other than the
configured one is a `SourceError` naming both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from eth_utils import to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import MethodUnavailable, TooManyRequests, Web3Exception, Web3RPCError

from monitor.model import (
    Batch,
    ChainTx,
    Clock,
    Cursor,
    MalformedError,
    RateLimitedError,
    SourceError,
    TransientError,
    TxInput,
    TxOutput,
)
from watchers.addresses import validate_evm_address
from watchers.http import FailureLog, RetryPolicy, is_retryable, retry

__all__ = [
    "Token",
    "DEFAULT_TOKENS",
    "TRANSFER_TOPIC",
    "HASH_WINDOW",
    "CURSOR_KEY",
    "EvmSource",
    "validate_evm_address",
    "is_range_too_large",
]

#: keccak256("Transfer(address,address,uint256)"), the ERC-20 (and ERC-721) Transfer event topic.
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
#: How many recent block hashes the cursor keeps for the reorg check.
HASH_WINDOW = 64
CURSOR_KEY = "tip"
NATIVE_DECIMALS = 18

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX = re.compile(r"0x[0-9a-fA-F]*")

T = TypeVar("T")


@dataclass(frozen=True)
class Token:
    """An ERC-20 token the source reads Transfer logs of (address EIP-55 checksummed)."""

    symbol: str
    address: str
    decimals: int


# Ethereum mainnet contracts (chain id 1). Each address was checked against the token's Etherscan page
# (https://etherscan.io/token/<address>) and the issuer's own list, and passes its EIP-55 checksum
# (tests/test_evm.py checks that):
# - WBTC: https://etherscan.io/token/0x2260fac5e5542a773aa44fbcfedf7c193bc2c599 (wbtc.network,
#   "Wrapped BTC", 8 decimals like BTC)
# - USDT: https://etherscan.io/token/0xdac17f958d2ee523a2206206994597c13d831ec7 (tether.to "Supported
#   protocols", "Tether USD", 6 decimals)
# - USDC: https://etherscan.io/token/0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48 (Circle's developer docs
#   "USDC contract addresses", FiatTokenProxy, 6 decimals)
# - stETH: https://etherscan.io/token/0xae7ab96520de3a18e5e111b5eaab095312d7fe84 (docs.lido.fi "Deployed
#   contracts", "Lido: stETH Token" proxy, 18 decimals)
DEFAULT_TOKENS: tuple[Token, ...] = (
    Token("WBTC", "0x2260FAC5E5542a773Aa44fBCfeDf7C193bc2C599", 8),
    Token("USDT", "0xdAC17F958D2ee523a2206206994597C13D831ec7", 6),
    Token("USDC", "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", 6),
    Token("stETH", "0xae7ab96520DE3A18E5e111B5EaAb095312D7fE84", 18),
)

# Messages providers send when an eth_getLogs range (or its result) is too large; see the module
# docstring for who sends which. Matched case-insensitively against the JSON-RPC error message.
_RANGE_TOO_LARGE = re.compile(
    r"more than \d+ results"
    r"|exceeds? (?:the )?(?:max(?:imum)? )?(?:block )?range"
    r"|block range (?:is )?(?:too|bigger|larger)"
    r"|range \d+ (?:exceeds|is bigger than) (?:the )?(?:range )?limit"
    r"|response size (?:exceeded|is larger)"
    r"|limited to a [\d,]+ (?:block )?range"
    r"|up to a [\d,]+ block range"
    r"|exceeds max results"
    r"|blocks distance"
    r"|block range too",
    re.IGNORECASE,
)
_RATE_LIMITED = re.compile(r"rate limit|too many requests|request count exceeded|capacity exceeded", re.IGNORECASE)


class _RangeTooLarge(SourceError):
    """The node refused an eth_getLogs range as too large (internal: triggers a split)."""


def is_range_too_large(exc: BaseException) -> bool:
    """Whether a web3/aiohttp error is a node refusing an eth_getLogs range as too large."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status == 413
    if isinstance(exc, Web3RPCError):
        return bool(_RANGE_TOO_LARGE.search(_rpc_message(exc)))
    return False


def _rpc_message(exc: Web3RPCError) -> str:
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        parts = [str(error.get("message", ""))]
        if error.get("data") is not None:
            parts.append(json.dumps(error["data"], default=str))
        return " ".join(parts)
    return str(exc.message)


def _rpc_code(exc: Web3RPCError) -> int | None:
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else None


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff applies instead


def _translate(exc: BaseException, what: str) -> SourceError:
    """Map a web3/aiohttp/decoding error into the model's exception tree."""
    if isinstance(exc, SourceError):
        return exc
    if what == "eth_getLogs" and is_range_too_large(exc):
        return _RangeTooLarge(f"{what}: range refused as too large: {_short(exc)}")
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status == 429:
            return RateLimitedError(f"{what}: HTTP 429", _retry_after(exc.headers))
        if exc.status >= 500 or exc.status == 408:
            return TransientError(f"{what}: HTTP {exc.status} {exc.message}")
        return SourceError(f"{what}: HTTP {exc.status} {exc.message}")
    if isinstance(exc, aiohttp.InvalidURL):
        return SourceError(f"{what}: invalid node URL {str(exc)[:80]}")
    if isinstance(exc, (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError)):
        return TransientError(f"{what}: {type(exc).__name__}: {_short(exc)}")
    if isinstance(exc, TooManyRequests):
        return RateLimitedError(f"{what}: {_short(exc)}")
    if isinstance(exc, MethodUnavailable):
        return SourceError(f"{what}: the node does not offer this method: {_short(exc)}")
    if isinstance(exc, Web3RPCError):
        message = _rpc_message(exc)
        if _RATE_LIMITED.search(message):
            return RateLimitedError(f"{what}: {message[:200]}")
        if _rpc_code(exc) == -32601:
            return SourceError(f"{what}: the node does not offer this method: {message[:200]}")
        # Node-side errors (header not found behind a load balancer, internal error, block not
        # found yet) usually clear on the next attempt.
        return TransientError(f"{what}: RPC error {_rpc_code(exc)}: {message[:200]}")
    # Web3 formatting errors, JSON that does not decode, wrong types: the answer is not what the
    # JSON-RPC spec documents.
    return MalformedError(f"{what}: malformed answer: {type(exc).__name__}: {_short(exc)}")


def _as_rpc_error(responses: Any, method: str, expected: int) -> Exception:
    """The error of a batch answered with one error object (or with the wrong number of items)."""
    if isinstance(responses, Mapping) and responses.get("error") is not None:
        return Web3RPCError(str(responses["error"]), rpc_response=dict(responses))
    return MalformedError(f"{method}: batch of {expected} answered with {str(responses)[:80]!r}")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --- untrusted answer → typed values ---------------------------------------------------------------


def _get(obj: Any, key: str, where: str) -> Any:
    try:
        return obj[key]
    except (KeyError, TypeError, IndexError):
        raise MalformedError(f"{where}.{key}: missing") from None


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise MalformedError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise MalformedError(f"{where}: expected a non-negative integer, got {value}")
        return value
    if isinstance(value, str) and _HEX.fullmatch(value) and len(value) > 2:
        return int(value, 16)
    raise MalformedError(f"{where}: expected an integer, got {value!r:.60}")


def _as_hex(value: Any, where: str, nbytes: int | None = None) -> str:
    if isinstance(value, (bytes, bytearray)):
        text = "0x" + bytes(value).hex()
    elif isinstance(value, str) and _HEX.fullmatch(value):
        text = value.lower()
    else:
        raise MalformedError(f"{where}: expected hex bytes, got {value!r:.60}")
    if nbytes is not None and len(text) != 2 + 2 * nbytes:
        raise MalformedError(f"{where}: expected {nbytes} bytes, got {text:.70}")
    return text


def _as_address(value: Any, where: str) -> str:
    if isinstance(value, (bytes, bytearray)) and len(value) == 20:
        return to_checksum_address("0x" + bytes(value).hex())
    if isinstance(value, str) and _HEX_ADDRESS.fullmatch(value):
        return to_checksum_address(value)
    raise MalformedError(f"{where}: expected an address, got {value!r:.60}")


def _topic_address(topic: str, where: str) -> str:
    if not topic.startswith("0x000000000000000000000000"):
        raise MalformedError(f"{where}: not an address topic: {topic:.70}")
    return to_checksum_address("0x" + topic[-40:])


def _pad_topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


# --- cursor state ----------------------------------------------------------------------------------


@dataclass
class _State:
    height: int
    hashes: dict[int, str]
    txids: dict[int, list[str]]

    @classmethod
    def parse(cls, text: str) -> _State:
        try:
            raw = json.loads(text)
            height = raw["height"]
            hashes = {int(h): str(v) for h, v in raw.get("hashes", {}).items()}
            txids = {int(h): [str(t) for t in v] for h, v in raw.get("txids", {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise MalformedError(f"stored cursor is not an EVM tip state: {text[:80]!r}") from exc
        if not isinstance(height, int) or isinstance(height, bool) or height < -1:
            raise MalformedError(f"stored cursor height is not a block height: {height!r}")
        return cls(height, hashes, txids)

    def dump(self) -> str:
        keep = sorted(h for h in self.hashes if h <= self.height)[-HASH_WINDOW:]
        low = keep[0] if keep else self.height + 1
        return json.dumps(
            {
                "height": self.height,
                "hashes": {str(h): self.hashes[h] for h in keep},
                "txids": {str(h): v for h, v in sorted(self.txids.items()) if low <= h <= self.height and v},
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class _Block:
    height: int
    hash: str
    parent: str
    time: int


class EvmSource:
    """Native and ERC-20 transfers of watched addresses on one EVM chain, block by confirmed block."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        chain: str = "ethereum",
        chain_id: int,
        watched: Iterable[str],
        tokens: Sequence[Token],
        confirmations: int = 12,
        max_log_range: int = 2000,
        max_blocks_per_poll: int = 500,
        blocks_per_request: int = 20,
        max_topic_addresses: int = 100,
        start_block: int | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        backoff_base: float = 0.25,
        backoff_cap: float = 10.0,
        clock: Clock,
        log: logging.Logger | None = None,
    ):
        if confirmations < 0 or max_log_range < 1 or max_blocks_per_poll < 1 or blocks_per_request < 1:
            raise ValueError("confirmations ≥ 0 and max_log_range, max_blocks_per_poll, blocks_per_request ≥ 1")
        self.name = name
        self.chain = chain
        self.url = url
        self.chain_id = chain_id
        self.watched = tuple(validate_evm_address(a) for a in watched)
        self._watched_lower = frozenset(a.lower() for a in self.watched)
        self.tokens = tuple(tokens)
        self._tokens_by_address = {t.address.lower(): t for t in self.tokens}
        self.confirmations = confirmations
        self.max_log_range = max_log_range
        self.log_range = max_log_range  # shrinks when the node refuses a range
        self.max_blocks_per_poll = max_blocks_per_poll
        self.blocks_per_request = blocks_per_request
        self.max_topic_addresses = max(1, max_topic_addresses)
        self.start_block = start_block
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.clock = clock
        self.log = log or logging.getLogger("watchers.evm")
        self._failures = FailureLog(self.log, changes=True)
        self._timeout = timeout
        self._w3: AsyncWeb3 | None = None
        self._started = False
        self._requests = 0
        self._random = random.Random()

    # --- lifecycle ---------------------------------------------------------------------------------

    def _web3(self) -> AsyncWeb3:
        if self._w3 is None:
            provider = AsyncHTTPProvider(
                self.url,
                request_kwargs={"timeout": aiohttp.ClientTimeout(total=self._timeout)},
                # Retries happen here, through the injected clock, not in web3's asyncio.sleep loop.
                exception_retry_configuration=None,
            )
            # No middleware: no ENS lookups or hidden eth_chainId calls; results are plain dicts.
            self._w3 = AsyncWeb3(provider, middleware=[])
        return self._w3

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Watch this address list from the next poll on."""
        self.watched = tuple(validate_evm_address(a) for a in addresses)
        self._watched_lower = frozenset(a.lower() for a in self.watched)

    async def start(self) -> None:
        """Connect and check the node's chain id against the configured one.

        :raises SourceError: on a different chain id (both numbers in the message) or no answer.
        """
        self._requests = 0
        w3 = self._web3()
        node_chain_id = await self._call("eth_chainId", lambda: w3.eth.chain_id)
        if node_chain_id != self.chain_id:
            raise SourceError(
                f"source {self.name}: the node at {self._shown_url()} is on chain id {node_chain_id}, "
                f"but the configuration says chain id {self.chain_id} ({self.chain})"
            )
        self._started = True

    async def close(self) -> None:
        """Close the provider's HTTP session (avoids aiohttp's unclosed-session warnings)."""
        if self._w3 is not None:
            await self._w3.provider.disconnect()
            self._w3 = None
            self._started = False

    async def __aenter__(self) -> EvmSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _shown_url(self) -> str:
        # Provider URLs often embed an API key in the path: show scheme and host only.
        match = re.match(r"^[a-z]+://[^/]+", self.url)
        return match.group(0) if match else "<url>"

    # --- poll --------------------------------------------------------------------------------------

    async def poll(
        self,
        cursors: Mapping[str, str],
        *,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Batch:
        """Transfers in newly confirmed blocks since the stored `tip` cursor, and txids orphaned since.

        A failing pass returns `failed=("tip",)` and no cursor; see the module docstring.
        :raises SourceError: only from the first call's `start()` (chain id mismatch).
        """
        if not self._started:
            await self.start()
        self._requests = 0
        try:
            batch = await self._poll(cursors.get(CURSOR_KEY), progress)
        except SourceError as exc:
            message = f"{type(exc).__name__}: {exc}"
            self._failures.failed(
                message, "evm poll failed source=%s error=%s", "evm poll failed again source=%s error=%s", self.name, message
            )
            return Batch(source=self.name, chain=self.chain, failed=(CURSOR_KEY,), requests=self._requests)
        self._failures.recovered("evm poll recovered source=%s after=%s", self.name, self.last_error)
        return batch

    @property
    def last_error(self) -> str | None:
        """The reason of the last failed poll while polls fail, else None."""
        return self._failures.reason()

    async def _poll(self, stored: str | None, progress: Callable[[str, int, int], None] | None) -> Batch:
        w3 = self._web3()
        head = await self._call("eth_blockNumber", lambda: w3.eth.block_number)
        safe = head - self.confirmations
        if stored is None:
            if self.start_block is None:
                state = _State(max(safe, -1), {}, {})
                if safe >= 0:
                    (block,) = await self._blocks([safe], full=False)
                    state.hashes[safe] = block.hash
                return self._batch((), (), state, head)
            state = _State(self.start_block - 1, {}, {})
        else:
            state = _State.parse(stored)

        orphaned = await self._unwind_reorg(state, head)
        fork = state.height

        first, last = state.height + 1, min(safe, state.height + self.max_blocks_per_poll)
        txs: list[ChainTx] = []
        if last >= first:
            blocks, native = await self._scan_blocks(state, first, last, progress)
            if blocks:
                last = blocks[-1].height
                tokens = await self._token_transfers(blocks) if self.tokens else []
                txs = native + tokens
                txs.sort(key=lambda t: (t.block_height or 0, t.txid))
                for block in blocks:
                    state.hashes[block.height] = block.hash
                for tx in txs:
                    state.txids.setdefault(tx.block_height, []).append(tx.txid)
                state.height = last
        reported = {t.txid for t in txs}
        gone = tuple(sorted(t for t in orphaned if t not in reported))
        if orphaned:
            self.log.warning(
                "evm reorg source=%s fork_height=%d orphaned_txs=%d gone=%d", self.name, fork, len(orphaned), len(gone)
            )
        return self._batch(tuple(txs), gone, state, head)

    def _batch(self, txs: tuple[ChainTx, ...], gone: tuple[str, ...], state: _State, head: int) -> Batch:
        return Batch(
            source=self.name,
            chain=self.chain,
            txs=txs,
            cursors=(Cursor(self.name, CURSOR_KEY, state.dump()),),
            gone=gone,
            tip_height=head,
            requests=self._requests,
        )

    async def _unwind_reorg(self, state: _State, head: int) -> list[str]:
        """Move `state` back to the fork point when its blocks left the chain; returns orphaned txids."""
        if state.height not in state.hashes:
            return []  # nothing scanned yet (fresh start_block): nothing to compare
        if state.height <= head:
            (tip,) = await self._blocks([state.height], full=False)
            if tip.hash == state.hashes[state.height]:
                return []
        heights = sorted((h for h in state.hashes if h <= head), reverse=True)
        node_hashes = {b.height: b.hash for b in await self._blocks(heights, full=False)} if heights else {}
        fork = next((h for h in heights if node_hashes.get(h) == state.hashes[h]), None)
        if fork is None:
            oldest = min(state.hashes)
            raise SourceError(
                f"reorg deeper than the {len(state.hashes)} stored block hashes (none from {oldest} to "
                f"{state.height} is on the node's chain): move the cursor back by hand or set start_block"
            )
        orphaned = [t for h in sorted(state.txids) if h > fork for t in state.txids[h]]
        state.height = fork
        state.hashes = {h: v for h, v in state.hashes.items() if h <= fork}
        state.txids = {h: v for h, v in state.txids.items() if h <= fork}
        return orphaned

    # --- native transfers --------------------------------------------------------------------------

    async def _scan_blocks(
        self,
        state: _State,
        first: int,
        last: int,
        progress: Callable[[str, int, int], None] | None,
    ) -> tuple[list[_Block], list[ChainTx]]:
        """Fetch blocks first..last (stopping where the chain stops linking) and their native transfers."""
        scanned: list[_Block] = []
        candidates: list[tuple[_Block, dict[str, Any]]] = []
        parent = state.hashes.get(first - 1)
        total = last - first + 1
        for low in range(first, last + 1, self.blocks_per_request):
            heights = list(range(low, min(last, low + self.blocks_per_request - 1) + 1))
            raw_blocks = await self._raw_blocks(heights, full=True)
            for height, raw in zip(heights, raw_blocks):
                block = self._parse_block(raw, height)
                if parent is not None and block.parent != parent:
                    # The chain changed while we read it: keep the linked prefix; the next poll's
                    # reorg check sees the change.
                    self.log.info("evm chain moved during scan source=%s height=%d", self.name, height)
                    return scanned, await self._native_transfers(candidates)
                parent = block.hash
                scanned.append(block)
                for i, tx in enumerate(_get(raw, "transactions", f"block[{height}]")):
                    where = f"block[{height}].transactions[{i}]"
                    sender = _get(tx, "from", where)
                    receiver = tx.get("to") if isinstance(tx, Mapping) else None
                    if (isinstance(sender, str) and sender.lower() in self._watched_lower) or (
                        isinstance(receiver, str) and receiver.lower() in self._watched_lower
                    ):
                        candidates.append((block, tx))
            if progress is not None:
                progress(CURSOR_KEY, len(scanned), total)
        return scanned, await self._native_transfers(candidates)

    def _parse_block(self, raw: Any, height: int) -> _Block:
        where = f"block[{height}]"
        number = _as_int(_get(raw, "number", where), f"{where}.number")
        if number != height:
            raise MalformedError(f"{where}.number: asked for {height}, got {number}")
        return _Block(
            height=height,
            hash=_as_hex(_get(raw, "hash", where), f"{where}.hash", 32),
            parent=_as_hex(_get(raw, "parentHash", where), f"{where}.parentHash", 32),
            time=_as_int(_get(raw, "timestamp", where), f"{where}.timestamp"),
        )

    async def _native_transfers(self, candidates: list[tuple[_Block, dict[str, Any]]]) -> list[ChainTx]:
        if not candidates:
            return []
        hashes = [_as_hex(_get(tx, "hash", "tx"), "tx.hash", 32) for _, tx in candidates]
        receipts: list[Any] = []
        for low in range(0, len(hashes), 100):
            chunk = hashes[low : low + 100]
            receipts.extend(await self._raw_batch("eth_getTransactionReceipt", [[h] for h in chunk]))
        out: list[ChainTx] = []
        for (block, tx), txid, receipt in zip(candidates, hashes, receipts):
            where = f"receipt[{txid}]"
            if _as_int(_get(receipt, "status", where), f"{where}.status") != 1:
                continue  # failed: no value moved
            if _as_hex(_get(receipt, "blockHash", where), f"{where}.blockHash", 32) != block.hash:
                raise TransientError(f"{where}: receipt is from another block than {block.hash}: chain moved")
            sender = _as_address(_get(tx, "from", f"tx[{txid}]"), f"tx[{txid}].from")
            to = tx.get("to")
            receiver = (
                _as_address(to, f"tx[{txid}].to")
                if to is not None
                else _as_address(_get(receipt, "contractAddress", where), f"{where}.contractAddress")
            )
            value = _as_int(_get(tx, "value", f"tx[{txid}]"), f"tx[{txid}].value")
            sender_watched = sender.lower() in self._watched_lower
            if value == 0 and not sender_watched:
                continue  # a call into a watched contract: nothing moved to or from the entity
            gas_used = _as_int(_get(receipt, "gasUsed", where), f"{where}.gasUsed")
            price = receipt.get("effectiveGasPrice")
            if price is None:  # pre-London nodes: the legacy gas price is what was paid
                price = _get(tx, "gasPrice", f"tx[{txid}]")
            fee = gas_used * _as_int(price, f"{where}.effectiveGasPrice")
            if receipt.get("blobGasUsed") is not None and receipt.get("blobGasPrice") is not None:
                fee += _as_int(receipt["blobGasUsed"], f"{where}.blobGasUsed") * _as_int(
                    receipt["blobGasPrice"], f"{where}.blobGasPrice"
                )
            out.append(
                ChainTx(
                    chain=self.chain,
                    txid=txid,
                    block_height=block.height,
                    block_time=block.time,
                    inputs=(TxInput(sender, value + fee),),
                    outputs=(TxOutput(receiver, value, 0),),
                    fee=fee,
                    block_hash=block.hash,
                    asset="ETH",
                    decimals=NATIVE_DECIMALS,
                )
            )
        return out

    # --- ERC-20 transfers --------------------------------------------------------------------------

    async def _token_transfers(self, blocks: list[_Block]) -> list[ChainTx]:
        by_height = {b.height: b for b in blocks}
        first, last = blocks[0].height, blocks[-1].height
        token_addresses = [t.address for t in self.tokens]
        topics = [_pad_topic(a) for a in self.watched]
        groups = [topics[i : i + self.max_topic_addresses] for i in range(0, len(topics), self.max_topic_addresses)]
        seen: dict[str, ChainTx] = {}
        low = first
        while low <= last:
            high = min(last, low + self.log_range - 1)
            for group in groups:
                for topic_filter in ([TRANSFER_TOPIC, group], [TRANSFER_TOPIC, None, group]):
                    for raw in await self._logs(low, high, token_addresses, topic_filter):
                        tx = self._parse_log(raw, by_height)
                        if tx is not None:
                            seen.setdefault(tx.txid, tx)
            low = high + 1
        return list(seen.values())

    async def _logs(self, low: int, high: int, addresses: list[str], topics: list[Any]) -> list[Any]:
        """eth_getLogs over [low, high]; halves a range the node refuses until it is accepted."""
        w3 = self._web3()
        pending = [(low, high)]
        found: list[Any] = []
        while pending:
            lo, hi = pending.pop()
            params = {"fromBlock": lo, "toBlock": hi, "address": addresses, "topics": topics}
            try:
                found.extend(await self._call("eth_getLogs", lambda p=params: w3.eth.get_logs(p)))
            except _RangeTooLarge as exc:
                if lo == hi:
                    raise SourceError(f"eth_getLogs refused even the single block {lo}: {exc}") from exc
                mid = (lo + hi) // 2
                self.log_range = max(1, min(self.log_range, mid - lo + 1))
                self.log.info("evm log range split source=%s range=%d-%d next_range=%d", self.name, lo, hi, self.log_range)
                pending.extend([(mid + 1, hi), (lo, mid)])
        return found

    def _parse_log(self, raw: Any, by_height: dict[int, _Block]) -> ChainTx | None:
        where = "log"
        if raw.get("removed") if isinstance(raw, Mapping) else False:
            return None
        tx_hash = _as_hex(_get(raw, "transactionHash", where), f"{where}.transactionHash", 32)
        index = _as_int(_get(raw, "logIndex", where), f"{where}.logIndex")
        where = f"log[{tx_hash}:{index}]"
        height = _as_int(_get(raw, "blockNumber", where), f"{where}.blockNumber")
        block = by_height.get(height)
        if block is None:
            raise MalformedError(f"{where}.blockNumber: {height} is outside the range asked for")
        if _as_hex(_get(raw, "blockHash", where), f"{where}.blockHash", 32) != block.hash:
            raise TransientError(f"{where}: log is from another block than {block.hash}: chain moved")
        token = self._tokens_by_address.get(_as_address(_get(raw, "address", where), f"{where}.address").lower())
        if token is None:
            raise MalformedError(f"{where}.address: not a token that was asked for")
        topics = [_as_hex(t, f"{where}.topics", 32) for t in _get(raw, "topics", where)]
        data = _as_hex(_get(raw, "data", where), f"{where}.data")
        if len(topics) != 3 or topics[0] != TRANSFER_TOPIC or len(data) != 66:
            # ERC-721-style Transfer (tokenId indexed) or a non-standard token: not an amount.
            self.log.warning("evm skipped non-ERC-20 Transfer log source=%s token=%s log=%s", self.name, token.symbol, where)
            return None
        sender = _topic_address(topics[1], f"{where}.topics[1]")
        receiver = _topic_address(topics[2], f"{where}.topics[2]")
        value = int(data, 16)
        return ChainTx(
            chain=self.chain,
            txid=f"{tx_hash}:{index}",
            block_height=height,
            block_time=block.time,
            inputs=(TxInput(sender, value),),
            outputs=(TxOutput(receiver, value, 0),),
            fee=0,
            block_hash=block.hash,
            asset=token.symbol,
            decimals=token.decimals,
        )

    # --- requests ----------------------------------------------------------------------------------

    async def _blocks(self, heights: list[int], *, full: bool) -> list[_Block]:
        raws = []
        for low in range(0, len(heights), self.blocks_per_request):
            raws.extend(await self._raw_blocks(heights[low : low + self.blocks_per_request], full=full))
        return [self._parse_block(raw, h) for h, raw in zip(heights, raws)]

    async def _raw_blocks(self, heights: list[int], *, full: bool) -> list[Any]:
        return await self._raw_batch("eth_getBlockByNumber", [[hex(h), full] for h in heights])

    async def _raw_batch(self, method: str, params_list: list[list[Any]]) -> list[Any]:
        """Raw JSON results of one method called with each params, as one JSON-RPC batch (one HTTP request).

        Blocks and receipts bypass web3's result formatters: they cost ~0.5 ms per transaction of a full
        block (measured with bench/evm_scan.py), more than the node takes to serve it, and the answers
        are validated here anyway. web3 still does the transport and the batch encoding.
        """
        provider = self._web3().provider

        async def send() -> list[Any]:
            if len(params_list) == 1:
                responses = [await provider.make_request(method, params_list[0])]
            else:
                responses = await provider.make_batch_request([(method, p) for p in params_list])
            if not isinstance(responses, list) or len(responses) != len(params_list):
                raise _as_rpc_error(responses, method, len(params_list))
            results = []
            for params, response in zip(params_list, responses):
                if not isinstance(response, Mapping):
                    raise MalformedError(f"{method}: a batch item is not a JSON-RPC response: {response!r:.80}")
                if response.get("error") is not None:
                    raise Web3RPCError(str(response["error"]), rpc_response=response)
                if "result" not in response:
                    raise MalformedError(f"{method}: response without result: {response!r:.80}")
                if response["result"] is None:
                    # Load-balanced providers answer from a node a block or two behind.
                    raise TransientError(f"{method}{params}: the node does not have it (yet)")
                results.append(response["result"])
            return results

        return await self._call(method, send)

    async def _call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        """Await one request, translated into the model's errors, retried when transient."""

        async def once() -> T:
            self._requests += 1
            try:
                return await make()
            except (SourceError, aiohttp.ClientError, TimeoutError, Web3Exception, ValueError, TypeError, KeyError) as exc:
                error = _translate(exc, what)
                if self.url in str(error):  # the URL may carry an API key (Infura, Alchemy paths)
                    error.args = (str(error).replace(self.url, self._shown_url()), *error.args[1:])
                if error is exc:
                    raise
                raise error from exc

        def before_retry(error: SourceError, attempt: int) -> float:
            delay = policy.full_jitter(attempt, self._random)
            if isinstance(error, RateLimitedError) and error.retry_after is not None:
                if error.retry_after > self.backoff_cap:
                    raise error
                delay = max(delay, error.retry_after)
            if attempt == 0:
                self.log.info("evm request failed, retrying source=%s what=%s error=%s", self.name, what, error)
            return delay

        policy = RetryPolicy(self.retries, self.backoff_base, self.backoff_cap)
        return await retry(
            once,
            policy,
            sleep=self.clock.sleep,
            rng=self._random,
            delay=before_retry,
            retryable=lambda exc: is_retryable(exc) and not isinstance(exc, _RangeTooLarge),
        )
