"""Price sources: BTC-USD / ETH-USD candles and spot prices from Coinbase Exchange, Kraken, CoinGecko or a CSV file.

Every source has the same two calls:

- `await src.candles(pair, start, end, granularity) -> list[Candle]`: every candle of `granularity`
  seconds (3600 or 86400) that overlaps `[start, end)`, oldest first, one per start time. A candle that
  contains `start` is included (its `start` is before the asked one). An empty list means "no data".
- `await src.spot(pair) -> (price, at)`: the latest price and the Unix time it describes.

Every number that comes from outside is validated here: prices are finite and > 0, `low <= open, close
<= high`, times are integers aligned to the granularity. A malformed answer raises `MalformedError`
naming the field (`[3][4] (close): expected a finite price > 0, got 'NaN'`); the process never crashes
on garbage. Transport problems (timeouts, 5xx, 429) come from the shared `HttpClient`.

The network sources take an `HttpClient` whose base URL is the API root (`COINBASE_URL`, `KRAKEN_URL`,
`COINGECKO_URL`; tests point it at a local server). `make_http()` builds one with the rate limit below.

| source | endpoint (documented shape) | limit per request | public rate limit → what we use |
|---|---|---|---|
| Coinbase Exchange | `GET /products/{pair}/candles?granularity&start&end` → `[[time, low, high, open, close, volume], ...]`, newest first | 300 candles (a bigger range is rejected), so ranges are paged | 10 req/s per IP, bursts 15 → 3 req/s |
| Kraken | `GET /0/public/OHLC?pair&interval&since` → `{"error": [], "result": {"XXBTZUSD": [[time, "open", "high", "low", "close", "vwap", "volume", count], ...], "last": N}}` | the 720 most recent candles whatever `since` says: 30 days of hourly, ~2 years of daily | ~1 req/s per IP (public, ccxt's note of Kraken's support article) → 1 req/s |
| CoinGecko | `GET /api/v3/coins/{id}/market_chart/range?vs_currency&from&to` → `{"prices": [[ms, price], ...], "market_caps": ..., "total_volumes": ...}` | points, not candles: hourly for ranges of 1-90 days, daily (00:00 UTC) beyond; keyless/demo plans reach back 365 days only | keyless 5-30 calls/min, demo ~30/min → 0.2 req/s |

Documentation these shapes were checked against (2026):
- Coinbase: docs.cdp.coinbase.com/api-reference/exchange-api/rest-api/products/get-product-candles
  ("Candle schema is of the form [timestamp, price_low, price_high, price_open, price_close]"; "maximum
  number of data points for a single request is 300 candles"; "some of those candles may precede your
  declared start"; "no data is published for intervals where there are no ticks"), the ticker at
  `/products/{pair}/ticker` (`{"trade_id", "price", "size", "time", "bid", "ask", "volume"}`, prices as
  strings), and docs.cdp.coinbase.com/exchange/rest-api/rate-limits (public: 10 req/s per IP).
- Kraken: docs.kraken.com/api-reference/market-data/get-ohlc-data ("Returns up to 720 of the most recent
  entries (older data cannot be retrieved, regardless of the value of since)"; "The last entry in the
  OHLC array is for the current, not-yet-committed timeframe") and .../get-ticker-information
  (`c` = `[price, lot volume]` of the last trade closed). Error strings starting with `E` mean failure;
  `W` strings are warnings that come with a result (docs.kraken.com/rest: "result and error for
  successful requests or those with warnings").
- CoinGecko: docs.coingecko.com/demo/reference/coins-id-market-chart-range (auto granularity: "2-90
  days = hourly", "above 90 days = daily (00:00 UTC)"), `/simple/price?ids&vs_currencies
  &include_last_updated_at=true` → `{"bitcoin": {"usd": 68123.4, "last_updated_at": 1773151351}}`;
  the 365-day history limit of keyless/demo use is reported in portfolio-performance/portfolio#3896.

What the limits mean for old history: Kraken cannot serve an hourly candle older than 30 days; when a
range starts before the oldest candle it returned, `KrakenPrices.candles` raises `SourceError` instead
of answering with a silent partial series, so `FailoverPrices` asks the next source. CoinGecko ranges of
hourly candles are split into 89-day requests so the API keeps answering hourly points; candles built
from points carry the first, highest, lowest and last point of each bucket (CoinGecko's hourly point
sits a few minutes into the hour, so its "close" is the price near the end of the hour, not a trade).

`CsvPriceSource` reads `date,close` (daily) or `time,open,high,low,close` files (offline demo, replay).
`FailoverPrices` tries sources in order; a source that fails (any `SourceError`, malformed answers
included) or has no data for the range falls through to the next. It logs state changes only: the first
failure of a source, its recovery, and a change of the source that answers.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp

from monitor.model import Clock, MalformedError, RateLimitedError, SourceError, TransientError
from watchers.http import FailureLog, HttpClient
from watchers.validate import assert_dict, assert_list, require

__all__ = [
    "PAIRS",
    "GRANULARITIES",
    "COINBASE_URL",
    "KRAKEN_URL",
    "COINGECKO_URL",
    "RATE_LIMITS",
    "Candle",
    "SourcedCandles",
    "Spot",
    "PriceSource",
    "CoinbasePrices",
    "KrakenPrices",
    "CoinGeckoPrices",
    "CsvPriceSource",
    "FailoverPrices",
    "make_http",
    "parse_coinbase_candles",
    "parse_coinbase_ticker",
    "parse_kraken_ohlc",
    "parse_kraken_ticker",
    "parse_coingecko_chart",
    "parse_coingecko_price",
    "candles_from_points",
]

PAIRS = ("BTC-USD", "ETH-USD")
GRANULARITIES = (3600, 86400)

COINBASE_URL = "https://api.exchange.coinbase.com"
KRAKEN_URL = "https://api.kraken.com"
COINGECKO_URL = "https://api.coingecko.com"
#: Requests per second each public API is asked at (well under its documented limit; see the table above).
RATE_LIMITS = {"coinbase": 3.0, "kraken": 1.0, "coingecko": 0.2}
_DEFAULT_URLS = {"coinbase": COINBASE_URL, "kraken": KRAKEN_URL, "coingecko": COINGECKO_URL}

_COINBASE_MAX = 300
_KRAKEN_PAIRS = {"BTC-USD": "XBTUSD", "ETH-USD": "ETHUSD"}
_COINGECKO_IDS = {"BTC-USD": ("bitcoin", "usd"), "ETH-USD": ("ethereum", "usd")}
# 89 days, not 90: CoinGecko switches to daily points *above* 90 days and we stay clear of the edge.
_COINGECKO_HOURLY_SPAN = 89 * 86400
# Times before 2009 or after 2100 are garbage whatever the API says.
_MIN_TIME, _MAX_TIME = 1_230_768_000, 4_102_444_800


@dataclass(frozen=True)
class Candle:
    """One OHLC candle: prices in the quote currency (USD) over `[start, start + granularity)`."""

    start: int
    open: float
    high: float
    low: float
    close: float


@dataclass(frozen=True)
class SourcedCandles:
    """Candles and the name of the source that answered (`FailoverPrices.fetch`)."""

    source: str
    candles: tuple[Candle, ...]


@dataclass(frozen=True)
class Spot:
    """A latest price, the time it describes and the source that gave it (`FailoverPrices.quote`)."""

    price: float
    at: int
    source: str


class PriceSource(Protocol):
    """What every price source offers (see the module docstring for the semantics)."""

    name: str

    async def candles(self, pair: str, start: int, end: int, granularity: int) -> list[Candle]: ...

    async def spot(self, pair: str) -> tuple[float, int]: ...


def make_http(
    name: str,
    session: aiohttp.ClientSession,
    *,
    clock: Clock,
    base_urls: Sequence[str] | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> HttpClient:
    """An HttpClient for `coinbase`, `kraken` or `coingecko` with its public rate limit and default URL.

    `headers` may carry e.g. CoinGecko's `x-cg-demo-api-key`; other keyword arguments go to HttpClient.
    """
    if name not in RATE_LIMITS:
        raise ValueError(f"unknown price API {name!r}; expected one of {sorted(RATE_LIMITS)}")
    kwargs.setdefault("rate_limit", RATE_LIMITS[name])
    return HttpClient(name, list(base_urls or [_DEFAULT_URLS[name]]), session, clock=clock, headers=headers, **kwargs)


# --- validation helpers ---------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _price(value: Any, field: str) -> float:
    """A price given as a JSON number or a decimal string: finite and > 0."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise MalformedError(f"{field}: expected a finite price > 0, got {_show(value)}")
    return number


def _time(value: Any, field: str, *, granularity: int | None = None) -> int:
    """Unix seconds as a JSON integer, in a sane range and (when asked) aligned to the granularity."""
    if isinstance(value, bool) or not isinstance(value, int) or not _MIN_TIME <= value <= _MAX_TIME:
        raise MalformedError(f"{field}: expected Unix seconds (integer), got {_show(value)}")
    if granularity and value % granularity:
        raise MalformedError(f"{field}: candle time {value} is not aligned to {granularity} s")
    return value


def _millis(value: Any, field: str) -> int:
    """Unix milliseconds (integer or integral float) → seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedError(f"{field}: expected Unix milliseconds, got {_show(value)}")
    seconds = int(value) // 1000
    if not _MIN_TIME <= seconds <= _MAX_TIME:
        raise MalformedError(f"{field}: expected Unix milliseconds, got {_show(value)}")
    return seconds


def _candle(start: int, o: float, h: float, lo: float, c: float, field: str) -> Candle:
    if not (lo <= o <= h and lo <= c <= h):
        raise MalformedError(f"{field}: inconsistent candle (open {o}, high {h}, low {lo}, close {c})")
    return Candle(start, o, h, lo, c)


_ISO = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def _iso_time(value: Any, field: str) -> int:
    """An ISO 8601 UTC timestamp (fractions of any length) → Unix seconds."""
    m = _ISO.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise MalformedError(f"{field}: expected an ISO 8601 time, got {_show(value)}")
    zone = m.group(3) or "Z"
    dt = datetime.fromisoformat(m.group(1) + ("+00:00" if zone == "Z" else zone))
    return _time(int(dt.timestamp()), field)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_request(pair: str, start: int, end: int, granularity: int) -> int:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity}")
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return start - start % granularity


def _unsupported(source: str, pair: str) -> SourceError:
    return SourceError(f"source={source} does not serve pair {pair!r}")


def _window(candles: dict[int, Candle], first: int, end: int) -> list[Candle]:
    return [candles[t] for t in sorted(candles) if first <= t < end]


# --- parsers (pure: JSON → candles / spot) --------------------------------------------------------


def parse_coinbase_candles(data: Any, granularity: int) -> list[Candle]:
    """Coinbase Exchange candles `[[time, low, high, open, close, volume], ...]` (note: low before high)."""
    rows = assert_list(data, "candles")
    out = []
    for i, row in enumerate(rows):
        p = f"[{i}]"
        row = assert_list(row, p)
        if len(row) < 5:
            raise MalformedError(f"{p}: expected [time, low, high, open, close, volume], got {_show(row)}")
        start = _time(row[0], f"{p}[0] (time)", granularity=granularity)
        lo = _price(row[1], f"{p}[1] (low)")
        hi = _price(row[2], f"{p}[2] (high)")
        o = _price(row[3], f"{p}[3] (open)")
        c = _price(row[4], f"{p}[4] (close)")
        out.append(_candle(start, o, hi, lo, c, p))
    return out


def parse_coinbase_ticker(data: Any) -> tuple[float, int]:
    """Coinbase Exchange `/products/{pair}/ticker` → (price of the last trade, its time)."""
    obj = assert_dict(data, "ticker")
    return _price(require(obj, "price"), "price"), _iso_time(require(obj, "time"), "time")


def _kraken_result(data: Any, what: str) -> dict:
    obj = assert_dict(data, what)
    errors = assert_list(require(obj, "error"), "error")
    failures = [e for e in errors if not (isinstance(e, str) and e.startswith("W"))]
    if failures:
        text = "; ".join(str(e)[:100] for e in failures[:3])
        if any(isinstance(e, str) and (e.startswith("EAPI:Rate limit") or e.startswith("EGeneral:Too many")) for e in failures):
            raise RateLimitedError(f"source=kraken {what}: {text}")
        if any(isinstance(e, str) and e.startswith("EService:") for e in failures):
            raise TransientError(f"source=kraken {what}: {text}")
        raise SourceError(f"source=kraken {what}: {text}")
    return assert_dict(require(obj, "result"), "result")


def _kraken_series(result: dict, what: str) -> tuple[str, Any]:
    keys = [k for k in result if k != "last"]
    if len(keys) != 1:
        raise MalformedError(f"result: expected exactly one pair key besides 'last' in {what}, got {_show(keys)}")
    return keys[0], result[keys[0]]


def parse_kraken_ohlc(data: Any, granularity: int) -> list[Candle]:
    """Kraken `/0/public/OHLC` → candles; prices are decimal strings, a non-empty `E...` error list fails.

    :raises RateLimitedError: / TransientError / SourceError: when Kraken answers with an error list.
    """
    result = _kraken_result(data, "OHLC")
    key, rows = _kraken_series(result, "OHLC")
    rows = assert_list(rows, f"result.{key}")
    out = []
    for i, row in enumerate(rows):
        p = f"result.{key}[{i}]"
        row = assert_list(row, p)
        if len(row) < 5:
            raise MalformedError(f"{p}: expected [time, open, high, low, close, vwap, volume, count], got {_show(row)}")
        start = _time(row[0], f"{p}[0] (time)", granularity=granularity)
        o = _price(row[1], f"{p}[1] (open)")
        hi = _price(row[2], f"{p}[2] (high)")
        lo = _price(row[3], f"{p}[3] (low)")
        c = _price(row[4], f"{p}[4] (close)")
        out.append(_candle(start, o, hi, lo, c, p))
    return out


def parse_kraken_ticker(data: Any) -> float:
    """Kraken `/0/public/Ticker` → the last trade's price (`c[0]`); the answer carries no time."""
    result = _kraken_result(data, "Ticker")
    key, ticker = _kraken_series(result, "Ticker")
    ticker = assert_dict(ticker, f"result.{key}")
    last = assert_list(require(ticker, "c", f"result.{key}"), f"result.{key}.c", non_empty=True)
    return _price(last[0], f"result.{key}.c[0]")


def parse_coingecko_chart(data: Any) -> list[tuple[int, float]]:
    """CoinGecko `market_chart/range` → `(unix seconds, price)` points from `prices` (`[[ms, price], ...]`)."""
    obj = assert_dict(data, "market_chart")
    rows = assert_list(require(obj, "prices"), "prices")
    points = []
    for i, row in enumerate(rows):
        p = f"prices[{i}]"
        row = assert_list(row, p)
        if len(row) != 2:
            raise MalformedError(f"{p}: expected [milliseconds, price], got {_show(row)}")
        points.append((_millis(row[0], f"{p}[0]"), _price(row[1], f"{p}[1]")))
    return points


def candles_from_points(points: Sequence[tuple[int, float]], granularity: int) -> list[Candle]:
    """Bucket price points into candles: open/close = first/last point of the bucket, high/low = extremes."""
    buckets: dict[int, list[float]] = {}
    for t, price in sorted(points, key=lambda p: p[0]):
        buckets.setdefault(t - t % granularity, []).append(price)
    return [Candle(s, ps[0], max(ps), min(ps), ps[-1]) for s, ps in sorted(buckets.items())]


def parse_coingecko_price(data: Any, coin: str, vs: str) -> tuple[float, int]:
    """CoinGecko `simple/price` (with `include_last_updated_at=true`) → (price, last_updated_at)."""
    obj = assert_dict(data, "simple_price")
    entry = assert_dict(require(obj, coin), coin)
    price = _price(require(entry, vs, coin), f"{coin}.{vs}")
    return price, _time(require(entry, "last_updated_at", coin), f"{coin}.last_updated_at")


# --- network sources ------------------------------------------------------------------------------


class CoinbasePrices:
    """Coinbase Exchange public market data: candles paged by 300, newest-first answers re-sorted."""

    name = "coinbase"

    def __init__(self, http: HttpClient):
        self._http = http

    async def candles(self, pair: str, start: int, end: int, granularity: int) -> list[Candle]:
        """Candles overlapping `[start, end)`, one request per 300 candles. :raises SourceError:"""
        first = _check_request(pair, start, end, granularity)
        if pair not in PAIRS:
            raise _unsupported(self.name, pair)
        found: dict[int, Candle] = {}
        page = first
        while page < end:
            page_end = min(end, page + _COINBASE_MAX * granularity)
            # (page_end - page) / granularity <= 300 data points: Coinbase rejects more than that. Its
            # answer may include the bucket at `end` or before `start`; the filter keeps pages disjoint.
            query = urlencode({"granularity": granularity, "start": _iso(page), "end": _iso(page_end)})
            data = await self._http.get_json(f"/products/{pair}/candles?{query}")
            for c in parse_coinbase_candles(data, granularity):
                if page <= c.start < page_end:
                    found[c.start] = c
            page = page_end
        return _window(found, first, end)

    async def spot(self, pair: str) -> tuple[float, int]:
        """Last trade price and time from the ticker. :raises SourceError:"""
        if pair not in PAIRS:
            raise _unsupported(self.name, pair)
        return parse_coinbase_ticker(await self._http.get_json(f"/products/{pair}/ticker"))


class KrakenPrices:
    """Kraken public OHLC and Ticker; only the 720 most recent candles exist (30 days hourly)."""

    name = "kraken"

    def __init__(self, http: HttpClient, *, clock: Clock):
        self._http = http
        self._clock = clock  # the Ticker answer has no time: the spot price is stamped with ours

    async def candles(self, pair: str, start: int, end: int, granularity: int) -> list[Candle]:
        """Candles overlapping `[start, end)`. :raises SourceError: also when `start` is older than Kraken keeps."""
        first = _check_request(pair, start, end, granularity)
        kpair = _KRAKEN_PAIRS.get(pair)
        if kpair is None:
            raise _unsupported(self.name, pair)
        query = urlencode({"pair": kpair, "interval": granularity // 60, "since": first - 1})
        rows = parse_kraken_ohlc(await self._http.get_json(f"/0/public/OHLC?{query}"), granularity)
        if rows and rows[0].start > first:
            raise SourceError(
                f"source=kraken OHLC keeps only the 720 most recent candles: oldest {_iso(rows[0].start)},"
                f" asked from {_iso(first)} ({pair}, {granularity} s)"
            )
        return _window({c.start: c for c in rows}, first, end)

    async def spot(self, pair: str) -> tuple[float, int]:
        """Last trade price, stamped with the local clock (Kraken's ticker has no time). :raises SourceError:"""
        kpair = _KRAKEN_PAIRS.get(pair)
        if kpair is None:
            raise _unsupported(self.name, pair)
        price = parse_kraken_ticker(await self._http.get_json(f"/0/public/Ticker?{urlencode({'pair': kpair})}"))
        return price, int(self._clock.time())


class CoinGeckoPrices:
    """CoinGecko market charts (points → candles) and simple price."""

    name = "coingecko"

    def __init__(self, http: HttpClient):
        self._http = http

    async def candles(self, pair: str, start: int, end: int, granularity: int) -> list[Candle]:
        """Candles overlapping `[start, end)` built from points; hourly ranges go in 89-day requests. :raises SourceError:"""
        first = _check_request(pair, start, end, granularity)
        ids = _COINGECKO_IDS.get(pair)
        if ids is None:
            raise _unsupported(self.name, pair)
        coin, vs = ids
        span = _COINGECKO_HOURLY_SPAN if granularity == 3600 else max(end - first, granularity)
        points: list[tuple[int, float]] = []
        chunk = first
        while chunk < end:
            chunk_end = min(end, chunk + span)
            query = urlencode({"vs_currency": vs, "from": chunk, "to": chunk_end})
            points += parse_coingecko_chart(await self._http.get_json(f"/api/v3/coins/{coin}/market_chart/range?{query}"))
            chunk = chunk_end
        return _window({c.start: c for c in candles_from_points(points, granularity)}, first, end)

    async def spot(self, pair: str) -> tuple[float, int]:
        """Price and its `last_updated_at`. :raises SourceError:"""
        ids = _COINGECKO_IDS.get(pair)
        if ids is None:
            raise _unsupported(self.name, pair)
        coin, vs = ids
        query = urlencode({"ids": coin, "vs_currencies": vs, "include_last_updated_at": "true"})
        return parse_coingecko_price(await self._http.get_json(f"/api/v3/simple/price?{query}"), coin, vs)


# --- offline source -------------------------------------------------------------------------------


class CsvPriceSource:
    """Candles from a CSV file: `date,close` (daily) or `time,open,high,low,close` (`time` Unix or ISO).

    Lines starting with `#` are comments. The granularity of a `time,...` file is the smallest step between
    rows (3600 or 86400) unless given. The file is read once, off the event loop, at first use. `spot`
    answers the close of the latest candle that had ended by `clock.time()` (no look-ahead in replays), or
    the last row when no clock is given.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        pair: str = "BTC-USD",
        name: str = "csv",
        granularity: int | None = None,
        clock: Clock | None = None,
    ):
        self.path = Path(path)
        self.pair = pair
        self.name = name
        self.granularity = granularity
        self._clock = clock
        self._rows: dict[int, Candle] | None = None
        self._lock = asyncio.Lock()

    async def _loaded(self) -> dict[int, Candle]:
        async with self._lock:
            if self._rows is None:
                self._rows = await asyncio.to_thread(self.load)
        return self._rows

    def load(self) -> dict[int, Candle]:
        """Read and validate the file (synchronous). :raises SourceError: unreadable; MalformedError: bad rows."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"source={self.name} cannot read {self.path}: {exc}") from exc
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise MalformedError(f"{self.path}: no header and no rows")
        header = [h.strip().lower() for h in next(csv.reader([lines[0][1]]))]
        if header == ["date", "close"]:
            daily = True
        elif header == ["time", "open", "high", "low", "close"]:
            daily = False
        else:
            raise MalformedError(
                f"{self.path}:{lines[0][0]}: header must be 'date,close' or 'time,open,high,low,close', got {header}"
            )
        rows: list[tuple[int, int, float, float, float, float]] = []
        for n, line in lines[1:]:
            cells = [c.strip() for c in next(csv.reader([line]))]
            where = f"{self.path.name}:{n}"
            if len(cells) != len(header):
                raise MalformedError(f"{where}: expected {len(header)} columns, got {len(cells)}")
            start = self._parse_when(cells[0], f"{where} ({header[0]})")
            if daily:
                c = _price(cells[1], f"{where} (close)")
                rows.append((n, start, c, c, c, c))
            else:
                o, h, lo, c = (_price(v, f"{where} ({k})") for v, k in zip(cells[1:], header[1:]))
                rows.append((n, start, o, h, lo, c))
        granularity = self.granularity or (86400 if daily else self._infer_granularity([r[1] for r in rows]))
        if granularity not in GRANULARITIES:
            raise MalformedError(f"{self.path}: granularity {granularity} s is not one of {GRANULARITIES}")
        self.granularity = granularity
        out: dict[int, Candle] = {}
        for n, start, o, h, lo, c in rows:
            where = f"{self.path.name}:{n}"
            if start % granularity:
                raise MalformedError(f"{where}: time {start} is not aligned to {granularity} s")
            if start in out:
                raise MalformedError(f"{where}: duplicate time {_iso(start)}")
            out[start] = _candle(start, o, h, lo, c, where)
        return dict(sorted(out.items()))

    @staticmethod
    def _parse_when(text: str, field: str) -> int:
        if re.fullmatch(r"\d+", text):
            return _time(int(text), field)
        try:
            dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError as exc:
            raise MalformedError(f"{field}: expected a date, ISO time or Unix seconds, got {_show(text)}") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return _time(int(dt.timestamp()), field)

    @staticmethod
    def _infer_granularity(starts: list[int]) -> int:
        steps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:]) if b > a]
        return min(steps) if steps else 86400

    async def candles(self, pair: str, start: int, end: int, granularity: int) -> list[Candle]:
        """Rows overlapping `[start, end)`; empty for another granularity than the file's. :raises SourceError:"""
        first = _check_request(pair, start, end, granularity)
        if pair != self.pair:
            raise _unsupported(self.name, pair)
        rows = await self._loaded()
        if granularity != self.granularity:
            return []
        return _window(rows, first, end)

    async def spot(self, pair: str) -> tuple[float, int]:
        """Close of the latest candle ended by now (or the last row) and its end time. :raises SourceError:"""
        if pair != self.pair:
            raise _unsupported(self.name, pair)
        rows = await self._loaded()
        g = self.granularity or 86400
        ended = list(rows.values())
        if self._clock is not None:
            now = self._clock.time()
            ended = [c for c in ended if c.start + g <= now]
        if not ended:
            raise SourceError(f"source={self.name} has no price before now in {self.path}")
        last = ended[-1]
        return last.close, last.start + g


# --- failover -------------------------------------------------------------------------------------


class FailoverPrices:
    """Tries price sources in order; failures and empty answers fall through to the next source."""

    def __init__(self, sources: Sequence[PriceSource], *, log: logging.Logger | None = None):
        if not sources:
            raise ValueError("FailoverPrices needs at least one source")
        self.sources = tuple(sources)
        self._log = log or logging.getLogger("watchers.prices")
        self._failures = FailureLog(self._log)  # per source name
        self._serving: dict[str, str] = {}  # call kind → the source that answered last

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)

    def _failed(self, source: PriceSource, what: str, exc: SourceError) -> None:
        self._failures.failed(
            str(exc),
            "price source failing source=%s call=%s kind=%s error=%s",
            "price source still failing source=%s call=%s kind=%s error=%s",
            source.name,
            what,
            type(exc).__name__,
            exc,
            key=source.name,
        )

    def _answered(self, source: PriceSource, what: str) -> None:
        self._failures.recovered("price source recovered source=%s call=%s", source.name, what, key=source.name)

    def _served(self, kind: str, source: str) -> None:
        previous = self._serving.get(kind)
        if previous is not None and previous != source:
            self._log.info("price failover call=%s from=%s to=%s", kind, previous, source)
        self._serving[kind] = source

    async def fetch(self, pair: str, start: int, end: int, granularity: int) -> SourcedCandles:
        """Candles from the first source that has some for the range.

        Returns an empty result (source "") when every source answered but none had data.
        :raises SourceError: when every source failed.
        """
        errors: list[str] = []
        answered = False
        what = f"candles {pair} {granularity}s"
        for source in self.sources:
            try:
                candles = await source.candles(pair, start, end, granularity)
            except SourceError as exc:
                self._failed(source, what, exc)
                errors.append(f"{source.name}: {type(exc).__name__}: {exc}")
                continue
            self._answered(source, what)
            answered = True
            if candles:
                self._served("candles", source.name)
                return SourcedCandles(source.name, tuple(candles))
        if answered:
            return SourcedCandles("", ())
        raise SourceError(f"every price source failed ({what}): " + " | ".join(errors))

    async def candles(self, pair: str, start: int, end: int, granularity: int) -> list[Candle]:
        """Same as `fetch`, without the source name. :raises SourceError: when every source failed."""
        return list((await self.fetch(pair, start, end, granularity)).candles)

    async def quote(self, pair: str) -> Spot:
        """Spot price from the first source that answers. :raises SourceError: when every source failed."""
        errors: list[str] = []
        for source in self.sources:
            try:
                price, at = await source.spot(pair)
            except SourceError as exc:
                self._failed(source, f"spot {pair}", exc)
                errors.append(f"{source.name}: {type(exc).__name__}: {exc}")
                continue
            self._answered(source, f"spot {pair}")
            self._served("spot", source.name)
            return Spot(price, at, source.name)
        raise SourceError(f"every price source failed (spot {pair}): " + " | ".join(errors))

    async def spot(self, pair: str) -> tuple[float, int]:
        """(price, at) from the first source that answers. :raises SourceError: when every source failed."""
        s = await self.quote(pair)
        return s.price, s.at
