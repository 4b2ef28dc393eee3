"""Market data for classification: the price and the chain's difficulty and fees at a flow's time.

`Market.contexts(flows)` gathers, for each flow, the BTC price at its block time (or the time it was
first seen), the difficulty and height of its block (the tip's for mempool flows) and the average fees
of recent blocks, and builds a MarketContext with `monitor.core.hashprice.build_context`. Chain facts come from
a `ChainInfo` (an Esplora source, a node, or the simulated chain) and are cached per block hash forever,
since a block's header and coinbase never change.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from monitor.core.hashprice import avg_fees_sat, build_context
from monitor.model import Clock, EntityFlow, MarketContext, SourceError
from storage import AsyncStore
from storage.blockfacts import block_facts, coinbase_totals, save_block_facts

__all__ = ["Market", "ChainInfo", "SourceChainInfo", "PriceLookup", "BlockFacts", "context_json", "pair_of"]

log = logging.getLogger("treasury_monitor.market")

#: Blocks of coinbase history averaged for the fee estimate (one day).
FEE_WINDOW = 144


@dataclass(frozen=True)
class BlockFacts:
    """What classification needs of a block: height, difficulty, and its coinbase's total output."""

    hash: str
    height: int
    difficulty: float
    time: int
    coinbase_total_sat: int | None = None


class ChainInfo(Protocol):
    """Chain facts by block hash, and the current tip."""

    async def block_facts(self, block_hash: str) -> BlockFacts: ...

    async def tip_hash(self) -> str: ...


class SourceChainInfo:
    """ChainInfo over a source that can read blocks (`get_block`, `coinbase_total`, `tip_hash`)."""

    def __init__(self, source: Any):
        self.source = source

    async def block_facts(self, block_hash: str) -> BlockFacts:
        b = await self.source.get_block(block_hash)
        coinbase = await self.source.coinbase_total(block_hash)
        return BlockFacts(block_hash, int(b["height"]), float(b["difficulty"]), int(b["timestamp"]), coinbase)

    async def tip_hash(self) -> str:
        return await self.source.tip_hash()


class PriceQuoteLike(Protocol):
    price: float | None
    at: int | None  # start of the candle used
    source: str
    is_stale: bool
    age: int | None  # seconds between the end of that candle and the asked time (0 when it contains it)


class PriceLookup(Protocol):
    """The price of a pair at a time (`monitor.market.prices.PriceService` implements it)."""

    async def price_at(self, pair: str, at: int) -> PriceQuoteLike: ...


def pair_of(asset: str) -> str:
    """Price pair of an asset: BTC and wrapped BTC use BTC-USD, ETH and stETH ETH-USD."""
    a = asset.upper()
    if a in ("BTC", "WBTC", "CBBTC", "TBTC"):
        return "BTC-USD"
    if a in ("ETH", "STETH", "WETH"):
        return "ETH-USD"
    return f"{a}-USD"


STABLECOINS = frozenset({"USDT", "USDC", "DAI"})


def context_json(ctx: MarketContext) -> dict[str, Any]:
    """A MarketContext as stored with its classification."""
    return asdict(ctx)


class Market:
    """Builds the MarketContext of flows from a price lookup and chain facts; both are optional."""

    def __init__(
        self,
        clock: Clock,
        *,
        prices: PriceLookup | None = None,
        chain: ChainInfo | None = None,
        staleness: int = 7200,
        store: AsyncStore | None = None,
    ):
        self.clock = clock
        self.prices = prices
        self.chain = chain
        self.staleness = staleness
        # With a store, block facts are kept in it (storage.blockfacts): a new process (a CLI `poll`) then
        # fetches no block twice and averages fees over the same blocks as a long-running daemon.
        self.store = store
        self._facts: OrderedDict[str, BlockFacts] = OrderedDict()

    async def _block(self, block_hash: str) -> BlockFacts | None:
        if block_hash in self._facts:
            return self._facts[block_hash]
        assert self.chain is not None
        kept = await self.store.run(block_facts, "bitcoin", block_hash) if self.store is not None else None
        if kept is not None:
            facts = BlockFacts(block_hash, kept["height"], kept["difficulty"], kept["time"], kept["coinbase_total"])
        else:
            try:
                facts = await self.chain.block_facts(block_hash)
            except SourceError as exc:
                log.warning("block=%s chain facts unavailable, hashprice left out: %s", block_hash, exc)
                return None
            if self.store is not None:
                await self.store.run(
                    save_block_facts,
                    "bitcoin",
                    block_hash,
                    height=facts.height,
                    difficulty=facts.difficulty,
                    time=facts.time,
                    coinbase_total=facts.coinbase_total_sat,
                )
        self._facts[block_hash] = facts
        while len(self._facts) > 4 * FEE_WINDOW:
            self._facts.popitem(last=False)
        return facts

    async def _avg_fees(self, height: int) -> int | None:
        if self.store is not None:
            window = await self.store.run(coinbase_totals, "bitcoin", height - FEE_WINDOW, height)
        else:
            window = [
                (f.height, f.coinbase_total_sat)
                for f in self._facts.values()
                if f.coinbase_total_sat is not None and height - FEE_WINDOW < f.height <= height
            ]
        return avg_fees_sat(window) if window else None

    async def _price(self, pair: str, at: int, quotes: dict[tuple[str, int], Any] | None) -> PriceQuoteLike:
        assert self.prices is not None
        q = quotes.get((pair, at)) if quotes is not None else None
        if q is None:
            q = await self.prices.price_at(pair, at)
            if quotes is not None:
                quotes[(pair, at)] = q
        return q

    async def context_for(
        self,
        flow: EntityFlow,
        *,
        block_hash: str | None,
        tip: list[str | None] | None = None,
        quotes: dict[tuple[str, int], Any] | None = None,
    ) -> MarketContext:
        """MarketContext at a flow's time (block time, or now for an unconfirmed flow).

        `tip` is a one-slot cache shared by the flows of one batch: unconfirmed flows use the tip's
        block, and it is fetched once per batch, not once per flow. `quotes` likewise holds the batch's
        prices by (pair, time): the flows of one block share one lookup (a backfill has thousands).
        """
        now = int(self.clock.time())
        at = flow.block_time if flow.block_time is not None else now
        facts = None
        # difficulty, subsidy and fees (hashprice) are Bitcoin facts; other chains get prices only
        if self.chain is not None and flow.chain == "bitcoin":
            h = block_hash
            if h is None:
                tip = tip if tip is not None else []
                if not tip:
                    try:
                        tip.append(await self.chain.tip_hash())
                    except SourceError as exc:
                        log.warning("tip unavailable, hashprice left out: %s", exc)
                        tip.append(None)
                h = tip[0]
            if h is not None:
                facts = await self._block(h)
        btc = asset = None
        price_at = granularity = start = None
        source = ""
        if self.prices is not None:
            q = await self._price("BTC-USD", at, quotes)
            # The observation time that matters is how far the candle is from `at`: 0 when it contains it.
            btc, source, granularity, start = q.price, q.source, q.granularity, q.at
            price_at = at - q.age if q.age is not None else None
            pair = pair_of(flow.asset)
            if flow.asset.upper() in STABLECOINS:
                asset = 1.0
            elif pair == "BTC-USD":
                asset = btc
            else:
                aq = await self._price(pair, at, quotes)
                asset = aq.price
        if btc is None:
            price_at = None
        ctx = build_context(
            at,
            btc_usd=btc,
            price_at=price_at,
            price_source=source or "none",
            staleness_bound=self.staleness,
            difficulty=facts.difficulty if facts else None,
            height=facts.height if facts else None,
            avg_fees_sat=await self._avg_fees(facts.height) if facts else None,
            asset_usd=asset,
            price_granularity=granularity,
            price_start=start,
        )
        if pair_of(flow.asset) != "BTC-USD":
            # build_context falls back to the BTC price; another asset must use its own or none.
            ctx = replace(ctx, asset_usd=asset)
        return ctx

    async def contexts(self, flows: Iterable[tuple[EntityFlow, str | None]]) -> dict[tuple[str, str, str], MarketContext]:
        """MarketContext per (chain, txid, entity) for (flow, block hash) pairs."""
        out = {}
        tip: list[str | None] = []
        quotes: dict[tuple[str, int], Any] = {}
        for flow, block_hash in flows:
            out[(flow.chain, flow.txid, flow.entity)] = await self.context_for(
                flow, block_hash=block_hash, tip=tip, quotes=quotes
            )
        return out
