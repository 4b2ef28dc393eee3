"""One aiohttp app on 127.0.0.1 that speaks Coinbase Exchange, Kraken and CoinGecko price APIs, with faults.

The answers have the exact shapes of the samples in `tests/data/prices/` (a test compares them) and
follow each API's documented limits: Coinbase rejects more than 300 candles per request and answers
newest first (plus one candle before `start`, as its docs warn); Kraken returns only the 720 most recent
candles whatever `since` says, the last one still open; CoinGecko gives hourly points (a few minutes into
the hour) for ranges up to 90 days, daily points above, and refuses history older than 365 days.

Prices come from a deterministic series (`price(pair, t)`), so tests can compute the expected candle:

    async with PriceApis(now=T) as apis:            # listens on a port picked by the OS
        apis.url                                     # base URL for all three APIs
        apis.fail("coinbase", status=500, times=3)   # the next 3 Coinbase answers are 500
        apis.reply("kraken", {"error": ["EService:Unavailable"]})   # any JSON body, once
        apis.reply("coingecko", b"<html>oops</html>")               # any bytes (garbage), once
        apis.count("coinbase")                       # requests seen by that API
        apis.expected(pair, start, granularity)      # (open, high, low, close) the fake serves
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

__all__ = ["PriceApis", "Fault", "price"]

_BASE = {"BTC-USD": 69_000.0, "ETH-USD": 2_000.0}
_KRAKEN = {"XBTUSD": ("BTC-USD", "XXBTZUSD"), "ETHUSD": ("ETH-USD", "XETHZUSD")}
_GECKO = {"bitcoin": "BTC-USD", "ethereum": "ETH-USD"}
_SUPPLY = {"BTC-USD": 19_930_000, "ETH-USD": 120_700_000}


def price(pair: str, t: float) -> float:
    """The fake market: a 3-day swing of ±3% and an hourly ripple, rounded to cents."""
    base = _BASE[pair]
    p = base * (1 + 0.03 * math.sin(2 * math.pi * t / (3 * 86400)) + 0.004 * math.sin(2 * math.pi * t / 3700))
    return round(p, 2)


def _ohlc(pair: str, start: int, g: int) -> tuple[float, float, float, float]:
    samples = [price(pair, start + k * g / 8) for k in range(8)] + [price(pair, start + g - 1)]
    return samples[0], max(samples), min(samples), samples[-1]


def _parse_time(text: str) -> int:
    if text.isdigit():
        return int(text)
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Fault:
    """One scripted answer that replaces the normal one."""

    status: int = 500
    body: bytes = b'{"message": "Internal Server Error"}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    api: str
    path: str
    query: dict[str, str]


class PriceApis:
    """The three price APIs in one local server (see the module docstring)."""

    def __init__(self, *, now: int = 1_773_158_400):  # 2026-03-10T16:00:00Z
        self.now = now
        self.requests: list[Seen] = []
        self.gaps: set[int] = set()  # candle starts with "no ticks": Coinbase/Kraken omit them
        self._faults: dict[str, deque[Fault]] = {"coinbase": deque(), "kraken": deque(), "coingecko": deque()}
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- scripting --------------------------------------------------------------------------------

    def fail(self, api: str, *, status: int = 500, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """The next `times` answers of `api` have this status (e.g. 500, or 429 with Retry-After)."""
        body = json.dumps({"message": f"status {status}"}).encode()
        self._faults[api].extend([Fault(status, body, headers or {})] * times)

    def reply(self, api: str, body: Any, *, times: int = 1, status: int = 200) -> None:
        """The next `times` answers of `api` are `body` (bytes as they are, anything else as JSON)."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._faults[api].extend([Fault(status, raw, {"Content-Type": "application/json"})] * times)

    def count(self, api: str | None = None) -> int:
        """Requests seen, for one API or all."""
        return sum(1 for r in self.requests if api is None or r.api == api)

    def expected(self, pair: str, start: int, granularity: int) -> tuple[float, float, float, float]:
        """(open, high, low, close) of the candle the fake serves for `start`."""
        return _ohlc(pair, start, granularity)

    # --- server -----------------------------------------------------------------------------------

    async def __aenter__(self) -> PriceApis:
        app = web.Application()
        app.router.add_get("/products/{pair}/candles", self._coinbase_candles)
        app.router.add_get("/products/{pair}/ticker", self._coinbase_ticker)
        app.router.add_get("/0/public/OHLC", self._kraken_ohlc)
        app.router.add_get("/0/public/Ticker", self._kraken_ticker)
        app.router.add_get("/api/v3/coins/{coin}/market_chart/range", self._gecko_range)
        app.router.add_get("/api/v3/simple/price", self._gecko_price)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _record(self, api: str, request: web.Request) -> web.Response | None:
        self.requests.append(Seen(api, request.path, dict(request.query)))
        if self._faults[api]:
            f = self._faults[api].popleft()
            return web.Response(status=f.status, body=f.body, headers=f.headers)
        return None

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, text=json.dumps(data, separators=(",", ":")), content_type="application/json")

    # --- Coinbase Exchange ------------------------------------------------------------------------

    async def _coinbase_candles(self, request: web.Request) -> web.Response:
        if (fault := self._record("coinbase", request)) is not None:
            return fault
        pair = request.match_info["pair"]
        if pair not in _BASE:
            return self._json({"message": "NotFound"}, 404)
        g = int(request.query.get("granularity", "0"))
        if g not in (60, 300, 900, 3600, 21600, 86400):
            return self._json({"message": "Unsupported granularity"}, 400)
        start, end = _parse_time(request.query["start"]), _parse_time(request.query["end"])
        if (end - start) / g > 300:
            return self._json(
                {"message": "granularity too small for the requested time range. Count of aggregations requested exceeds 300"},
                400,
            )
        # Buckets from one before `start` (the docs: "some of those candles may precede your declared
        # start") to the bucket at `end` inclusive, never past the currently open bucket.
        first = start - start % g - g
        last = min(end - end % g, self.now - self.now % g)
        out = []
        for t in range(first, last + 1, g):
            if t in self.gaps:
                continue
            o, h, lo, c = _ohlc(pair, t, g)
            out.append([t, lo, h, o, c, round(10 + (t // g) % 97 * 1.37, 8)])
        out.reverse()  # newest first
        return self._json(out)

    async def _coinbase_ticker(self, request: web.Request) -> web.Response:
        if (fault := self._record("coinbase", request)) is not None:
            return fault
        pair = request.match_info["pair"]
        p = price(pair, self.now)
        return self._json(
            {
                "ask": f"{p + 0.01:.2f}",
                "bid": f"{p:.2f}",
                "volume": "8123.45678901",
                "trade_id": 912345678,
                "price": f"{p:.2f}",
                "size": "0.00150000",
                "time": _iso(self.now - 2),
                "rfq_volume": "12.345678",
            }
        )

    # --- Kraken -----------------------------------------------------------------------------------

    async def _kraken_ohlc(self, request: web.Request) -> web.Response:
        if (fault := self._record("kraken", request)) is not None:
            return fault
        known = _KRAKEN.get(request.query.get("pair", ""))
        if known is None:
            return self._json({"error": ["EQuery:Unknown asset pair"]})
        pair, key = known
        interval = int(request.query.get("interval", "1"))
        if interval not in (1, 5, 15, 30, 60, 240, 1440, 10080, 21600):
            return self._json({"error": ["EGeneral:Invalid arguments"]})
        g = interval * 60
        since = int(request.query.get("since", "0"))
        current = self.now - self.now % g
        oldest = current - 719 * g  # 720 most recent, the open one included, whatever `since` says
        rows = []
        for t in range(max(oldest, since - since % g), current + 1, g):
            if t <= since or t in self.gaps:
                continue
            o, h, lo, c = _ohlc(pair, t, g)
            rows.append(
                [t, f"{o:.1f}", f"{h:.1f}", f"{lo:.1f}", f"{c:.1f}", f"{(o + c) / 2:.1f}", "12.34567890", 1500 + t // g % 700]
            )
        return self._json({"error": [], "result": {key: rows, "last": current - g}})

    async def _kraken_ticker(self, request: web.Request) -> web.Response:
        if (fault := self._record("kraken", request)) is not None:
            return fault
        known = _KRAKEN.get(request.query.get("pair", ""))
        if known is None:
            return self._json({"error": ["EQuery:Unknown asset pair"]})
        pair, key = known
        p = price(pair, self.now)
        return self._json(
            {
                "error": [],
                "result": {
                    key: {
                        "a": [f"{p + 0.1:.5f}", "1", "1.000"],
                        "b": [f"{p:.5f}", "2", "2.000"],
                        "c": [f"{p:.5f}", "0.00150000"],
                        "v": ["1234.56789012", "2345.67890123"],
                        "p": [f"{p - 50:.5f}", f"{p - 80:.5f}"],
                        "t": [23456, 45678],
                        "l": [f"{p - 900:.5f}", f"{p - 1200:.5f}"],
                        "h": [f"{p + 500:.5f}", f"{p + 700:.5f}"],
                        "o": f"{p - 300:.5f}",
                    }
                },
            }
        )

    # --- CoinGecko --------------------------------------------------------------------------------

    async def _gecko_range(self, request: web.Request) -> web.Response:
        if (fault := self._record("coingecko", request)) is not None:
            return fault
        pair = _GECKO.get(request.match_info["coin"])
        if pair is None or request.query.get("vs_currency") != "usd":
            return self._json({"error": "coin not found"}, 404)
        start, end = int(request.query["from"]), int(request.query["to"])
        if start < self.now - 365 * 86400:
            # Keyless/demo plans: history limited to the past 365 days (error text approximated).
            return self._json(
                {
                    "error": {
                        "status": {
                            "error_code": 10012,
                            "error_message": "Your request exceeds the allowed time range. Public API users are limited to "
                            "querying historical data within the past 365 days.",
                        }
                    }
                },
                401,
            )
        end = min(end, self.now)
        step, offset = (3600, 181) if end - start <= 90 * 86400 else (86400, 0)
        points = []
        t = start - start % step + offset
        while t <= end:
            if t >= start:
                points.append((t, price(pair, t)))
            t += step
        ms = [(t * 1000 + 17, p) for t, p in points]
        return self._json(
            {
                "prices": [[t, p] for t, p in ms],
                "market_caps": [[t, round(p * _SUPPLY[pair], 3)] for t, p in ms],
                "total_volumes": [[t, 31_000_000_000.5] for t, _ in ms],
            }
        )

    async def _gecko_price(self, request: web.Request) -> web.Response:
        if (fault := self._record("coingecko", request)) is not None:
            return fault
        coin = request.query.get("ids", "")
        pair = _GECKO.get(coin)
        if pair is None:
            return self._json({})
        entry: dict[str, Any] = {"usd": price(pair, self.now)}
        if request.query.get("include_last_updated_at") == "true":
            entry["last_updated_at"] = self.now - 30
        return self._json({coin: entry})
