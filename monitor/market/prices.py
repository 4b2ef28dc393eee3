"""Price at a time: the candle cache first, then the price sources; decides staleness and what "missing" means.

The price of a tx is the close of the hourly candle that contains its block time. When no hourly candle
contains it, the latest hourly candle before it is used if it ended at most `staleness` seconds earlier;
otherwise the daily candle containing it; otherwise the freshest candle found, marked stale. With nothing
at all the quote has `price=None` and `source="none"`: callers still classify and say the price is missing.

Fetching: a miss fetches the whole block around the time (the UTC day of hourly candles, or 30 days of
daily candles) in one call, stores it and answers from the store, so the other txs of that day are cache
hits. A candle cached while still open (fetched before it ended) is refetched once it has closed. A block
that could not be fetched, or had no candle for the time, is not asked again for `retry_after` seconds.
Concurrent misses on one block share one fetch. `price_at` never raises `SourceError`: failures are
logged by the sources and answered from whatever the cache holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from monitor.model import Clock, SourceError
from storage.prices import StoredCandle, candle_at, save_candles
from storage.store import AsyncStore
from watchers.prices import (
    CoinbasePrices,
    CoinGeckoPrices,
    CsvPriceSource,
    FailoverPrices,
    KrakenPrices,
    PriceSource,
    make_http,
)

__all__ = [
    "PriceQuote",
    "PriceService",
    "build_price_sources",
    "BUNDLED_BTC_USD",
    "SIMULATED_SOURCE",
    "SOURCE_NAMES",
    "HOUR",
    "DAY",
    "DEFAULT_STALENESS",
]

HOUR = 3600
DAY = 86400
#: Seconds a candle may have ended before the asked time and still count as fresh.
DEFAULT_STALENESS = 7200
_BLOCK = {HOUR: DAY, DAY: 30 * DAY}
#: The bundled SIMULATED daily BTC/USD series (see monitor/data/PRICES.md).
BUNDLED_BTC_USD = Path(__file__).resolve().parent.parent / "data" / "btc_usd_daily.csv"
SOURCE_NAMES = ("coinbase", "kraken", "coingecko", "csv")
#: The source name of quotes from the bundled simulated series (the `csv` source without a file of yours).
SIMULATED_SOURCE = "simulated"


def build_price_sources(
    names: Sequence[str],
    session: aiohttp.ClientSession,
    *,
    clock: Clock,
    csv_path: str | Path | None = None,
    base_urls: Mapping[str, Sequence[str]] | None = None,
    headers: Mapping[str, Mapping[str, str]] | None = None,
) -> FailoverPrices:
    """FailoverPrices over the named sources, in order (`coinbase`, `kraken`, `coingecko`, `csv`).

    Network sources get an HttpClient with their documented public rate limit; `base_urls` and `headers`
    (e.g. `{"coingecko": {"x-cg-demo-api-key": ...}}`) override per source. `csv` reads `csv_path`,
    the bundled simulated series by default, and answers `spot` as of `clock` (replay-safe).
    :raises ValueError: for an unknown source name.
    """
    sources: list[PriceSource] = []
    for name in names:
        if name == "csv":
            path = Path(csv_path or BUNDLED_BTC_USD)
            # The bundled series is invented: its quotes say so wherever they are shown.
            # (No resolve(): this runs on the event loop. Both paths are absolute once config has loaded.)
            label = SIMULATED_SOURCE if path == BUNDLED_BTC_USD else "csv"
            sources.append(CsvPriceSource(path, clock=clock, name=label))
            continue
        if name not in SOURCE_NAMES:
            raise ValueError(f"unknown price source {name!r}; expected some of {SOURCE_NAMES}")
        http = make_http(
            name, session, clock=clock, base_urls=(base_urls or {}).get(name), headers=dict((headers or {}).get(name, {})) or None
        )
        if name == "coinbase":
            sources.append(CoinbasePrices(http))
        elif name == "kraken":
            sources.append(KrakenPrices(http, clock=clock))
        else:
            sources.append(CoinGeckoPrices(http))
    return FailoverPrices(sources)


@dataclass(frozen=True)
class PriceQuote:
    """A price for a time and how good it is.

    `price` is the close of the candle `[at, at + granularity)`; `age` is how many seconds that candle
    ended before the asked time (0 when it contains it); `is_stale` is `age > staleness`. With no price
    at all: `price`, `at`, `age` and `granularity` are None and `source` is "none".
    """

    price: float | None
    at: int | None
    source: str
    is_stale: bool
    age: int | None
    granularity: int | None = None
    pair: str = ""

    @property
    def is_missing(self) -> bool:
        return self.price is None


def _age(candle: StoredCandle, at: int) -> int:
    return max(0, at - candle.end)


def _contains(candle: StoredCandle, at: int) -> bool:
    return candle.start <= at < candle.end


class PriceService:
    """Cached historical prices for classification, backfills and the daemon's price job."""

    def __init__(
        self,
        store: AsyncStore,
        source: FailoverPrices | None,
        clock: Clock,
        *,
        staleness: int = DEFAULT_STALENESS,
        retry_after: int = 300,
        log: logging.Logger | None = None,
    ):
        self._store = store
        self._source = source
        self._clock = clock
        self.staleness = staleness
        self._retry_after = retry_after
        self._log = log or logging.getLogger("monitor.market.prices")
        self._tried: dict[tuple[str, int, int], float] = {}
        self._locks: dict[tuple[str, int, int], asyncio.Lock] = {}

    async def price_at(self, pair: str, at: int) -> PriceQuote:
        """The price of `pair` at Unix time `at` (see the module docstring); never raises SourceError."""
        at = int(at)
        candidates: list[StoredCandle] = []
        for granularity in (HOUR, DAY):
            candle = await self._store.run(candle_at, pair, at, granularity)
            if candle is None or not (_contains(candle, at) and candle.is_final):
                if await self._fetch_block(pair, at, granularity):
                    candle = await self._store.run(candle_at, pair, at, granularity)
            if candle is None:
                continue
            if _age(candle, at) <= self.staleness:
                return self._quote(pair, candle, at)
            candidates.append(candle)
        if candidates:
            best = min(candidates, key=lambda c: (_age(c, at), c.granularity))
            return self._quote(pair, best, at)
        return PriceQuote(None, None, "none", False, None, None, pair)

    async def refresh(self, pair: str, *, lookback: int = 2 * DAY) -> int:
        """Fetch and store the hourly candles of the last `lookback` seconds. Returns how many were stored.

        :raises SourceError: when every source failed (the daemon's job logs it and tries again later).
        """
        if self._source is None:
            return 0
        now = int(self._clock.time())
        return await self._fetch_and_store(pair, now - lookback, now + 1, HOUR, now)

    async def prefetch(self, pair: str, start: int, end: int) -> int:
        """Fetch `[start, end)` once, paged by the source (hourly, else daily), for a backfill. Returns the count.

        The blocks it covered are not fetched again by `price_at` for `retry_after` seconds.
        :raises SourceError: when every source failed.
        """
        if self._source is None or end <= start:
            return 0
        now = int(self._clock.time())
        end = min(end, now + 1)
        stored = 0
        for granularity in (HOUR, DAY):
            stored = await self._fetch_and_store(pair, start, end, granularity, now)
            block = _BLOCK[granularity]
            for b in range(start - start % block, end, block):
                self._tried[(pair, granularity, b)] = now
            if stored:
                break
        return stored

    # --- internals --------------------------------------------------------------------------------

    def _quote(self, pair: str, candle: StoredCandle, at: int) -> PriceQuote:
        age = _age(candle, at)
        return PriceQuote(candle.close, candle.start, candle.source, age > self.staleness, age, candle.granularity, pair)

    async def _fetch_block(self, pair: str, at: int, granularity: int) -> bool:
        """Fetch the block around `at` unless tried recently; True when a fetch was made."""
        if self._source is None:
            return False
        block = _BLOCK[granularity]
        start = at - at % block
        now = int(self._clock.time())
        if start > now:
            return False  # a time in the future: nothing to ask for yet
        key = (pair, granularity, start)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = int(self._clock.time())
            tried = self._tried.get(key)
            if tried is not None and now - tried < self._retry_after:
                return True  # fetched (or failed) moments ago, perhaps by a concurrent caller: read the cache
            self._tried[key] = now
            end = min(start + block, now - now % granularity + granularity)
            try:
                await self._fetch_and_store(pair, start, end, granularity, now)
            except SourceError as exc:
                self._log.debug("price fetch failed pair=%s granularity=%d block=%d error=%s", pair, granularity, start, exc)
        return True

    async def _fetch_and_store(self, pair: str, start: int, end: int, granularity: int, now: int) -> int:
        assert self._source is not None
        got = await self._source.fetch(pair, start, end, granularity)
        if not got.candles:
            return 0
        rows = [(c.start, c.open, c.high, c.low, c.close) for c in got.candles]
        return await self._store.run(save_candles, pair, granularity, rows, got.source, now=now)
