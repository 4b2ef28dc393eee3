"""Price sources against a local fake of Coinbase/Kraken/CoinGecko, the candle cache, PriceService and the bundled series."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from fakes.price_apis import PriceApis, price

from monitor.clock import FrozenClock
from monitor.market.prices import PriceService, build_price_sources
from monitor.model import MalformedError, RateLimitedError, SourceError, TransientError
from storage.prices import candle_at, candles_between, latest_candle, save_candles
from storage.store import AsyncStore, Store
from watchers.http import http_status
from watchers.prices import (
    Candle,
    CoinbasePrices,
    CoinGeckoPrices,
    CsvPriceSource,
    FailoverPrices,
    KrakenPrices,
    candles_from_points,
    make_http,
    parse_coinbase_candles,
    parse_coinbase_ticker,
    parse_coingecko_chart,
    parse_coingecko_price,
    parse_kraken_ohlc,
    parse_kraken_ticker,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "data" / "prices"
BUNDLED = ROOT / "monitor" / "data" / "btc_usd_daily.csv"
PRICES_MD = ROOT / "monitor" / "data" / "PRICES.md"
H, D = 3600, 86400
NOW = 1_773_158_400  # 2026-03-10T16:00:00Z, the fake's and the clock's "now"


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def sample(name: str):
    return json.loads((SAMPLES / name).read_text())


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
async def apis():
    async with PriceApis(now=NOW) as a:
        yield a


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock():
    return FrozenClock(now=NOW)


@pytest.fixture
def sources(apis, session, clock):
    def http(name, **kw):
        kw.setdefault("retries", 0)
        return make_http(name, session, clock=clock, base_urls=[apis.url], rate_limit=None, **kw)

    return {
        "coinbase": CoinbasePrices(http("coinbase")),
        "kraken": KrakenPrices(http("kraken"), clock=clock),
        "coingecko": CoinGeckoPrices(http("coingecko")),
    }


@pytest.fixture
async def astore(db_path):
    s = AsyncStore(await asyncio.to_thread(Store, db_path))
    yield s
    await s.close()


def expected_candle(apis, pair, start, g, digits=2):
    o, h, lo, c = apis.expected(pair, start, g)
    return Candle(start, round(o, digits), round(h, digits), round(lo, digits), round(c, digits))


# --- recorded shapes ------------------------------------------------------------------------------


def shape(value):
    """The JSON structure of a value: types, keys and the shape of the first element of each array."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return ["list", shape(value[0]) if value else None, len(value[0]) if value and isinstance(value[0], list) else None]
    return {k: shape(v) for k, v in sorted(value.items())}


def test_samples_parse_with_documented_column_orders():
    cb = parse_coinbase_candles(sample("coinbase_candles.json"), H)
    assert len(cb) == 6 and cb[0].start > cb[-1].start  # newest first, as Coinbase sends them
    # [time, low, high, open, close, volume]: low and high come before open and close
    assert cb[0] == Candle(1773151200, open=69230.01, high=69307.31, low=69139.24, close=69187.44)
    kr = parse_kraken_ohlc(sample("kraken_ohlc.json"), H)
    # [time, "open", "high", "low", "close", vwap, volume, count]: strings, and OHLC in that order
    assert kr[0] == Candle(1773133200, open=68790.0, high=68969.2, low=68717.5, close=68874.1)
    assert [c.start for c in kr] == sorted(c.start for c in kr)
    points = parse_coingecko_chart(sample("coingecko_market_chart_range.json"))
    gk = candles_from_points(points, H)
    assert len(gk) == 6 and all(c.start % H == 0 for c in gk)
    assert gk[0].close == points[0][1] and gk[0].start == points[0][0] - points[0][0] % H
    assert parse_coinbase_ticker(sample("coinbase_ticker.json")) == (69187.44, ts("2026-03-10T14:58:31"))
    assert parse_kraken_ticker(sample("kraken_ticker.json")) == 69187.4
    assert parse_coingecko_price(sample("coingecko_simple_price.json"), "bitcoin", "usd") == (69187.44, 1773154711)


@pytest.mark.parametrize(
    "path, name",
    [
        (
            "/products/BTC-USD/candles?granularity=3600&start=2026-03-10T09:00:00Z&end=2026-03-10T14:00:00Z",
            "coinbase_candles.json",
        ),
        ("/products/BTC-USD/ticker", "coinbase_ticker.json"),
        ("/0/public/OHLC?pair=XBTUSD&interval=60&since=1773133199", "kraken_ohlc.json"),
        ("/0/public/Ticker?pair=XBTUSD", "kraken_ticker.json"),
        (
            "/api/v3/coins/bitcoin/market_chart/range?vs_currency=usd&from=1773133200&to=1773154800",
            "coingecko_market_chart_range.json",
        ),
        ("/api/v3/simple/price?ids=bitcoin&vs_currencies=usd&include_last_updated_at=true", "coingecko_simple_price.json"),
    ],
)
async def test_fake_answers_with_the_sample_shapes(apis, session, path, name):
    async with session.get(apis.url + path) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert shape(body) == shape(await asyncio.to_thread(sample, name))


# --- Coinbase -------------------------------------------------------------------------------------


async def test_coinbase_pages_ranges_over_300_candles(apis, sources):
    start, end = NOW - 400 * H, NOW - 10 * H
    candles = await sources["coinbase"].candles("BTC-USD", start, end, H)
    assert [c.start for c in candles] == list(range(start, end, H))  # 390 candles, oldest first, no dups
    assert apis.count("coinbase") == 2  # 300 + 90
    for c in candles[::37]:
        assert c == expected_candle(apis, "BTC-USD", c.start, H)  # column order: low/high not swapped


async def test_fake_coinbase_rejects_more_than_300_candles(apis, session):
    # Why paging is needed: the API refuses a range of more than 300 data points.
    q = f"granularity=3600&start={NOW - 301 * H}&end={NOW}"
    async with session.get(f"{apis.url}/products/BTC-USD/candles?{q}") as resp:
        assert resp.status == 400


async def test_coinbase_range_inside_one_candle_and_gaps(apis, sources):
    apis.gaps.add(NOW - 5 * H)
    got = await sources["coinbase"].candles("BTC-USD", NOW - 6 * H + 120, NOW - 3 * H, H)
    assert [c.start for c in got] == [NOW - 6 * H, NOW - 4 * H]  # contains `start`; the gap stays a gap


async def test_coinbase_spot(apis, sources):
    price, at = await sources["coinbase"].spot("BTC-USD")
    assert at == NOW - 2 and price > 0


# --- Kraken ---------------------------------------------------------------------------------------


async def test_kraken_string_prices(apis, sources):
    got = await sources["kraken"].candles("BTC-USD", NOW - 24 * H, NOW - 20 * H, H)
    assert [c.start for c in got] == [NOW - 24 * H + k * H for k in range(4)]
    for c in got:
        assert c == expected_candle(apis, "BTC-USD", c.start, H, digits=1)
    q = apis.requests[-1].query
    assert q["pair"] == "XBTUSD" and q["interval"] == "60"


@pytest.mark.parametrize(
    "errors, exc",
    [
        (["EQuery:Unknown asset pair"], SourceError),
        (["EService:Unavailable"], TransientError),
        (["EAPI:Rate limit exceeded"], RateLimitedError),
        (["EGeneral:Too many requests"], RateLimitedError),
    ],
)
async def test_kraken_error_array_is_a_failure(apis, sources, errors, exc):
    apis.reply("kraken", {"error": errors})
    with pytest.raises(exc) as info:
        await sources["kraken"].candles("BTC-USD", NOW - 3 * H, NOW, H)
    assert errors[0] in str(info.value)
    assert not isinstance(info.value, MalformedError)


def test_kraken_warnings_come_with_a_result():
    data = sample("kraken_ohlc.json") | {"error": ["WGeneral:Something deprecated"]}
    assert len(parse_kraken_ohlc(data, H)) == 6


async def test_kraken_cannot_reach_back_past_720_candles(apis, sources):
    with pytest.raises(SourceError, match="720"):
        await sources["kraken"].candles("BTC-USD", NOW - 40 * D, NOW - 39 * D, H)
    # daily candles reach two years back
    got = await sources["kraken"].candles("BTC-USD", NOW - 40 * D, NOW - 38 * D, D)
    assert len(got) == 3  # the day containing the start (16:00) and the two that overlap the range


async def test_kraken_spot_is_stamped_with_the_clock(apis, sources, clock):
    price, at = await sources["kraken"].spot("BTC-USD")
    assert at == NOW and math.isclose(price, round(apis.expected("BTC-USD", NOW, 1)[0], 1), abs_tol=0.11)


# --- CoinGecko ------------------------------------------------------------------------------------


async def test_coingecko_points_become_candles(apis, sources):
    start = NOW - 48 * H
    got = await sources["coingecko"].candles("BTC-USD", start, start + 5 * H, H)
    assert [c.start for c in got] == [start + k * H for k in range(5)]
    for c in got:  # one point per hour, 181 s into it: open = high = low = close = that point
        p = price("BTC-USD", c.start + 181)
        assert (c.open, c.high, c.low, c.close) == (p, p, p, p)


async def test_coingecko_hourly_ranges_are_split_to_stay_hourly(apis, sources):
    start = NOW - 200 * D
    got = await sources["coingecko"].candles("BTC-USD", start, start + 200 * D - H, H)
    assert apis.count("coingecko") == 3  # 89 + 89 + 22 days
    assert len(got) == 200 * 24 - 1  # every hour, not one per day
    spans = [int(r.query["to"]) - int(r.query["from"]) for r in apis.requests]
    assert max(spans) <= 90 * D


async def test_coingecko_daily_and_its_365_day_limit(apis, sources):
    start, end = NOW - 200 * D, NOW - 100 * D
    got = await sources["coingecko"].candles("BTC-USD", start, end, D)
    assert [c.start for c in got] == list(range(start - start % D, end, D))  # 101 days: 16:00 to 16:00
    assert apis.count("coingecko") == 1 and all(c.open == c.close for c in got)  # one 00:00 point a day
    with pytest.raises(SourceError) as info:
        await sources["coingecko"].candles("BTC-USD", NOW - 400 * D, NOW - 300 * D, D)
    assert http_status(info.value) == 401 and "exceeds the allowed time range" in str(info.value)


async def test_coingecko_spot(apis, sources):
    assert (await sources["coingecko"].spot("BTC-USD"))[1] == NOW - 30


# --- garbage never crashes ------------------------------------------------------------------------

GOOD_CB = [NOW, 68000.0, 69000.0, 68500.0, 68800.0, 1.5]


@pytest.mark.parametrize(
    "data, field",
    [
        ({"message": "oops"}, "candles"),
        ([GOOD_CB, "x"], "[1]"),
        ([GOOD_CB[:3]], "[0]"),
        ([[str(NOW)] + GOOD_CB[1:]], "[0][0] (time)"),
        ([[True] + GOOD_CB[1:]], "[0][0] (time)"),
        ([[NOW + 1] + GOOD_CB[1:]], "[0][0] (time)"),  # not aligned to the hour
        ([GOOD_CB[:4] + ["NaN", 1]], "[0][4] (close)"),
        ([GOOD_CB[:4] + [float("inf"), 1]], "[0][4] (close)"),
        ([GOOD_CB[:3] + [-1.0] + GOOD_CB[4:]], "[0][3] (open)"),
        ([GOOD_CB[:3] + [0] + GOOD_CB[4:]], "[0][3] (open)"),
        ([[NOW, 69000.0, 68000.0, 68500.0, 68800.0, 1]], "[0]"),  # low above high: columns misread
        ([GOOD_CB[:4] + [None, 1]], "[0][4] (close)"),
    ],
)
def test_coinbase_garbage_is_malformed_naming_the_field(data, field):
    with pytest.raises(MalformedError) as info:
        parse_coinbase_candles(data, H)
    assert str(info.value).startswith(field)


@pytest.mark.parametrize(
    "parse, data",
    [
        (lambda d: parse_kraken_ohlc(d, H), None),
        (lambda d: parse_kraken_ohlc(d, H), {"result": {}}),
        (lambda d: parse_kraken_ohlc(d, H), {"error": "none", "result": {}}),
        (lambda d: parse_kraken_ohlc(d, H), {"error": [], "result": {"last": 1}}),
        (lambda d: parse_kraken_ohlc(d, H), {"error": [], "result": {"A": [], "B": [], "last": 1}}),
        (lambda d: parse_kraken_ohlc(d, H), {"error": [], "result": {"XXBTZUSD": [[NOW, "1e999", "2", "1", "1"]]}}),
        (lambda d: parse_kraken_ohlc(d, H), {"error": [], "result": {"XXBTZUSD": [[NOW, "abc", "2", "1", "1"]]}}),
        (lambda d: parse_kraken_ticker(d), {"error": [], "result": {"XXBTZUSD": {"c": []}}}),
        (lambda d: parse_coingecko_chart(d), {"prices": [[1, 2, 3]]}),
        (lambda d: parse_coingecko_chart(d), {"prices": [["soon", 1.0]]}),
        (lambda d: parse_coingecko_chart(d), {"prices": [[NOW * 1000, -5]]}),
        (lambda d: parse_coingecko_chart(d), {"total_volumes": []}),
        (lambda d: parse_coingecko_price(d, "bitcoin", "usd"), {"bitcoin": {"usd": 1.0}}),
        (lambda d: parse_coingecko_price(d, "bitcoin", "usd"), {"bitcoin": {"usd": "NaN", "last_updated_at": NOW}}),
        (lambda d: parse_coinbase_ticker(d), {"price": "69000", "time": "yesterday"}),
        (lambda d: parse_coinbase_ticker(d), []),
    ],
)
def test_other_garbage_is_malformed(parse, data):
    with pytest.raises(MalformedError):
        parse(data)


# --- failover -------------------------------------------------------------------------------------


async def test_failover_when_the_first_source_500s(apis, sources, caplog):
    prices = FailoverPrices([sources["coinbase"], sources["kraken"]])
    apis.fail("coinbase", status=500, times=2)
    caplog.set_level(logging.INFO, logger="watchers.prices")
    got = await prices.fetch("BTC-USD", NOW - 6 * H, NOW - 3 * H, H)
    assert got.source == "kraken" and len(got.candles) == 3
    again = await prices.fetch("BTC-USD", NOW - 6 * H, NOW - 3 * H, H)
    assert again.source == "kraken"  # coinbase still failing
    third = await prices.fetch("BTC-USD", NOW - 6 * H, NOW - 3 * H, H)
    assert third.source == "coinbase"
    failing = [r for r in caplog.records if "price source failing" in r.getMessage()]
    recovered = [r for r in caplog.records if "price source recovered" in r.getMessage()]
    assert len(failing) == 1 and "source=coinbase" in failing[0].getMessage()  # the first failure only
    assert len(recovered) == 1 and "source=coinbase" in recovered[0].getMessage()
    switches = [r.getMessage() for r in caplog.records if "price failover" in r.getMessage()]
    assert switches == ["price failover call=candles from=kraken to=coinbase"]  # not one line per call


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'[[1773154800, 68000, 69000, "NaN", 68800, 1]]',
        b'{"message": "maintenance"}',
        b"[[1773154800, 68",
    ],
)
async def test_failover_when_the_first_source_answers_garbage(apis, sources, body):
    prices = FailoverPrices([sources["coinbase"], sources["coingecko"]])
    apis.reply("coinbase", body)
    got = await prices.fetch("BTC-USD", NOW - 6 * H, NOW - 3 * H, H)
    assert got.source == "coingecko" and len(got.candles) == 3


async def test_failover_all_failing_raises_and_empty_answers_fall_through(apis, sources, tmp_path):
    prices = FailoverPrices([sources["coinbase"], sources["kraken"]])
    apis.fail("coinbase", times=1)
    apis.reply("kraken", {"error": ["EService:Busy"]})
    with pytest.raises(SourceError, match="every price source failed"):
        await prices.fetch("BTC-USD", NOW - 6 * H, NOW - 3 * H, H)
    # a source without data for the range (the daily CSV asked for hourly candles) falls through
    csv = CsvPriceSource(BUNDLED)
    got = await FailoverPrices([csv, sources["kraken"]]).fetch("BTC-USD", NOW - 6 * H, NOW - 3 * H, H)
    assert got.source == "kraken"
    empty = await FailoverPrices([csv]).fetch("BTC-USD", NOW - 6 * H, NOW - 3 * H, H)
    assert empty.source == "" and empty.candles == ()


async def test_failover_spot(apis, sources):
    prices = FailoverPrices([sources["kraken"], sources["coinbase"]])
    apis.reply("kraken", b"garbage")
    spot = await prices.quote("BTC-USD")
    assert spot.source == "coinbase" and spot.at == NOW - 2


async def test_http_retry_then_answer_counts_requests(apis, session, clock):
    # The shared HttpClient retries a 500 before failover is needed at all.
    src = CoinbasePrices(make_http("coinbase", session, clock=clock, base_urls=[apis.url], rate_limit=None, retries=2))
    apis.fail("coinbase", times=2)
    got = await src.candles("BTC-USD", NOW - 3 * H, NOW, H)
    assert len(got) == 3 and apis.count("coinbase") == 3 and len(clock.sleeps) == 2


# --- storage --------------------------------------------------------------------------------------


def test_storage_candle_at_between_latest(db_path):
    store = Store(db_path)
    t = NOW - 10 * H
    assert save_candles(store, "BTC-USD", H, [(t, 1.0, 3.0, 0.5, 2.0), (t + 2 * H, 2.0, 4.0, 1.5, 3.0)], "kraken", now=NOW) == 2
    assert candle_at(store, "BTC-USD", t + 1800).start == t  # containing
    before = candle_at(store, "BTC-USD", t + H + 5)  # no candle contains it: the latest before
    assert before.start == t and before.end <= t + H + 5 and before.source == "kraken" and before.is_final
    assert candle_at(store, "BTC-USD", t - 1) is None
    assert candle_at(store, "BTC-USD", t + 1800, D) is None and candle_at(store, "ETH-USD", t) is None
    assert [c.start for c in candles_between(store, "BTC-USD", t, t + 3 * H)] == [t, t + 2 * H]
    assert latest_candle(store, "BTC-USD").close == 3.0
    save_candles(store, "BTC-USD", H, [(t, 1.0, 3.0, 0.5, 2.5)], "coinbase", now=t + 100)  # refetch replaces
    again = candle_at(store, "BTC-USD", t)
    assert (again.close, again.source, again.is_final) == (2.5, "coinbase", False)
    with pytest.raises(ValueError):
        save_candles(store, "BTC-USD", H, [(t, float("nan"), 1.0, 1.0, 1.0)], "x", now=NOW)
    store.close()


# --- PriceService ---------------------------------------------------------------------------------


async def test_price_at_is_the_close_of_the_hour_and_a_cache_hit_makes_no_request(apis, sources, astore, clock):
    svc = PriceService(astore, FailoverPrices([sources["coinbase"], sources["kraken"]]), clock)
    at = ts("2026-03-09T10:30:00")
    q = await svc.price_at("BTC-USD", at)
    hour = at - at % H
    assert q.price == apis.expected("BTC-USD", hour, H)[3]
    assert (q.at, q.granularity, q.source, q.age, q.is_stale) == (hour, H, "coinbase", 0, False)
    sent = apis.count()
    assert sent == 1  # the whole day in one request
    for minute in (0, 5, 59):
        assert (await svc.price_at("BTC-USD", hour + minute * 60)).price == q.price
    other = await svc.price_at("BTC-USD", ts("2026-03-09T22:15:00"))  # same day: cached too
    assert other.price == apis.expected("BTC-USD", ts("2026-03-09T22:00:00"), H)[3]
    assert apis.count() == sent


async def test_concurrent_misses_share_one_fetch(apis, sources, astore, clock):
    svc = PriceService(astore, FailoverPrices([sources["coinbase"]]), clock)
    day = ts("2026-03-08T00:00:00")
    quotes = await asyncio.gather(*(svc.price_at("BTC-USD", day + k * 2000) for k in range(20)))
    assert apis.count() == 1 and all(q.price and not q.is_stale for q in quotes)


async def test_an_open_candle_is_refetched_after_it_closes(apis, sources, astore, clock):
    svc = PriceService(astore, FailoverPrices([sources["coinbase"]]), clock, retry_after=300)
    at = NOW + 600  # inside the hour still open at fetch time
    clock.now = apis.now = NOW + 900
    await svc.price_at("BTC-USD", at)
    assert apis.count() == 1
    await svc.price_at("BTC-USD", at)  # open candle, but fetched moments ago: no new request
    assert apis.count() == 1
    clock.now = apis.now = NOW + H + 60
    q = await svc.price_at("BTC-USD", at)
    assert apis.count() == 2 and q.price == apis.expected("BTC-USD", NOW, H)[3]
    await svc.price_at("BTC-USD", at)  # final now
    assert apis.count() == 2


async def test_stale_when_only_an_old_candle_exists(astore, clock):
    old = NOW - 12 * H
    await astore.run(save_candles, "BTC-USD", H, [(old, 70000.0, 70100.0, 69900.0, 70050.0)], "coinbase", now=NOW)
    svc = PriceService(astore, None, clock, staleness=7200)
    q = await svc.price_at("BTC-USD", NOW)
    assert (q.price, q.at, q.source, q.is_stale) == (70050.0, old, "coinbase", True)
    assert q.age == NOW - (old + H)
    fresh = await svc.price_at("BTC-USD", old + H + 3600)  # ended an hour before: within 2 h
    assert fresh.is_stale is False and fresh.age == 3600


async def test_missing_price_is_none_with_source_none(apis, sources, astore, clock):
    q = await PriceService(astore, None, clock).price_at("BTC-USD", NOW)
    assert (q.price, q.at, q.source, q.is_stale, q.age, q.is_missing) == (None, None, "none", False, None, True)
    apis.fail("coinbase", times=10)
    apis.fail("kraken", times=10)
    svc = PriceService(astore, FailoverPrices([sources["coinbase"], sources["kraken"]]), clock)
    q = await svc.price_at("BTC-USD", NOW - 5 * H)  # every source failing: no exception, no price
    assert q.price is None and q.source == "none"
    sent = apis.count()
    await svc.price_at("BTC-USD", NOW - 4 * H)  # the failed block is not hammered again right away
    assert apis.count() == sent


async def test_daily_fallback_from_the_offline_csv(astore):
    clock = FrozenClock(now=ts("2026-06-30T23:00:00"))
    svc = PriceService(astore, FailoverPrices([CsvPriceSource(BUNDLED)]), clock)
    q = await svc.price_at("BTC-USD", ts("2026-03-10T12:00:00"))
    closes = dict(await asyncio.to_thread(lambda: list(_bundled_rows())))
    assert (q.granularity, q.source, q.age, q.is_stale) == (D, "csv", 0, False)
    assert q.price == closes["2026-03-10"] and q.at == ts("2026-03-10T00:00:00")
    assert (await svc.price_at("ETH-USD", ts("2026-03-10T12:00:00"))).source == "none"


async def test_prefetch_pages_once_then_price_at_hits_the_cache(apis, sources, astore, clock):
    svc = PriceService(astore, FailoverPrices([sources["coinbase"]]), clock)
    start, end = NOW - 20 * D, NOW - 2 * D
    stored = await svc.prefetch("BTC-USD", start, end)
    assert stored == 18 * 24 and apis.count() == 2  # 432 candles in 300-candle pages
    for k in range(0, 18 * 24, 7):
        t = start + k * H + 1234
        assert (await svc.price_at("BTC-USD", t)).price == apis.expected("BTC-USD", t - t % H, H)[3]
    assert apis.count() == 2


async def test_refresh_stores_recent_hours(apis, sources, astore, clock):
    svc = PriceService(astore, FailoverPrices([sources["kraken"]]), clock)
    assert await svc.refresh("BTC-USD") == 49  # 48 closed hours and the open one
    latest = await astore.run(latest_candle, "BTC-USD")
    assert latest.start == NOW and latest.source == "kraken" and not latest.is_final


# --- the bundled simulated series -----------------------------------------------------------------

# Published anchors (see monitor/data/PRICES.md for the sources): date → USD.
ANCHORS = {
    "2025-04-15": 81_731,  # Riot sold 475 BTC in Apr 2025 at avg $81,731 (economics.md §4)
    "2025-08-15": 60.7e6 / 533.5,  # CleanSpark sold 533.5 BTC for $60.7M, Aug 2025 (economics.md §4)
    "2025-09-15": 109_568,  # CleanSpark sold 445 BTC at avg $109,568, Sep 2025 (economics.md §4)
    "2025-10-06": 124_500,  # ~$124,500 Oct 2025 peak, CoinShares Q1-2026 report (economics.md §1)
    "2025-12-15": 86_000,  # ~$86,000 Dec 2025, same report
    "2026-02-02": 8.31e6 / 100.82,  # Bhutan 100.82 BTC = $8.31M, early Feb 2026 (economics.md §5)
    "2026-02-05": 14.09e6 / 184.03,  # Bhutan 184.03 BTC = $14.09M, early Feb 2026 (economics.md §5)
    "2026-03-04": 69_000,  # "$68,000 and $70,000", ChainCatcher 2026-04-03
    "2026-03-25": 69_000,
}


def _bundled_rows():
    for line in BUNDLED.read_text().splitlines():
        if line and line[0].isdigit():
            d, close = line.split(",")
            yield d, float(close)


async def test_bundled_csv_parses_and_matches_the_anchors():
    src = CsvPriceSource(BUNDLED)
    candles = await src.candles("BTC-USD", ts("2025-01-01T00:00:00"), ts("2026-07-01T00:00:00"), D)
    assert len(candles) == 546 and src.granularity == D  # every day of 2025-01-01 .. 2026-06-30
    by_day = {datetime.fromtimestamp(c.start, tz=UTC).date().isoformat(): c.close for c in candles}
    for day, usd in ANCHORS.items():
        assert abs(by_day[day] / usd - 1) < 0.02, (day, by_day[day], usd)
    assert max(by_day.values()) == by_day["2025-10-06"]  # the October 2025 peak is the high
    band = [p for d, p in by_day.items() if "2026-03-04" <= d <= "2026-03-25"]
    assert len(band) == 22 and all(68_000 <= p <= 70_000 for p in band)
    header = (await asyncio.to_thread(BUNDLED.read_text)).splitlines()[0]
    assert header.startswith("#") and "SIMULATED" in header


def test_bundled_csv_is_what_the_documented_generator_makes(tmp_path):
    code = re.search(r"```python\n(.*?)```", PRICES_MD.read_text(), re.S).group(1)
    gen = tmp_path / "gen.py"
    gen.write_text(code)
    out = subprocess.run([sys.executable, str(gen)], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out == BUNDLED.read_text()


async def test_csv_formats_and_errors(tmp_path):
    hourly = tmp_path / "h.csv"
    await asyncio.to_thread(
        hourly.write_text, f"# comment\ntime,open,high,low,close\n{NOW - 2 * H},1,2,0.5,1.5\n2026-03-10T15:00:00Z,1.5,2,1,1.8\n"
    )
    src = CsvPriceSource(hourly, clock=FrozenClock(now=NOW + 10))
    got = await src.candles("BTC-USD", NOW - 3 * H, NOW, H)
    assert src.granularity == H and [c.close for c in got] == [1.5, 1.8]
    assert await src.candles("BTC-USD", NOW - 3 * H, NOW, D) == []
    assert await src.spot("BTC-USD") == (1.8, NOW)  # the candle that ended by now, stamped with its end
    early = CsvPriceSource(hourly, clock=FrozenClock(now=NOW - H + 5))
    assert await early.spot("BTC-USD") == (1.5, NOW - H)  # no look-ahead into an unfinished candle
    with pytest.raises(SourceError):
        await src.candles("ETH-USD", NOW - 3 * H, NOW, H)
    for body, where in [
        ("date,close\n2026-03-01,70000\n2026-03-02,NaN\n", "bad.csv:3 (close)"),
        ("date,close\n2026-03-01,70000,1\n", "bad.csv:2"),
        ("day,price\n2026-03-01,70000\n", "header"),
        ("date,close\nMarch 1,70000\n", "bad.csv:2 (date)"),
        ("time,open,high,low,close\n1773100800,1,2,3,1\n", "bad.csv:2"),  # low above high
    ]:
        bad = tmp_path / "bad.csv"
        await asyncio.to_thread(bad.write_text, body)
        with pytest.raises(MalformedError, match=re.escape(where)):
            await CsvPriceSource(bad).candles("BTC-USD", NOW - D, NOW, D)
    with pytest.raises(SourceError):
        await CsvPriceSource(tmp_path / "absent.csv").candles("BTC-USD", NOW - D, NOW, D)


async def test_make_http_defaults_and_rate_limit(apis, session, clock):
    cb = make_http("coinbase", session, clock=clock)
    assert cb.active_url == "https://api.exchange.coinbase.com"
    assert make_http("coingecko", session, clock=clock).active_url == "https://api.coingecko.com"
    with pytest.raises(ValueError):
        make_http("binance", session, clock=clock)
    # the documented per-API rate (CoinGecko 0.2 req/s) spaces requests, recorded by the frozen clock
    gk = CoinGeckoPrices(make_http("coingecko", session, clock=clock, base_urls=[apis.url]))
    await gk.spot("BTC-USD")
    await gk.spot("BTC-USD")
    assert clock.sleeps == [pytest.approx(5.0)]


async def test_build_price_sources_in_config_order(apis, session, clock, astore):
    prices = build_price_sources(["kraken", "csv"], session, clock=clock, base_urls={"kraken": [apis.url]})
    assert prices.names == ("kraken", "simulated")  # the bundled series is labelled as invented
    svc = PriceService(astore, prices, clock)
    apis.fail("kraken", times=50)  # Kraken down (retries included): the bundled CSV answers with its daily close
    q = await svc.price_at("BTC-USD", ts("2026-03-05T09:00:00"))
    closes = dict(await asyncio.to_thread(lambda: list(_bundled_rows())))
    assert q.source == "simulated" and q.granularity == D and q.price == closes["2026-03-05"]
    with pytest.raises(ValueError):
        build_price_sources(["binance"], session, clock=clock)
