"""Price candle cache: writes and reads of the `price_candles` table (schema step 002_prices).

One row per (pair, granularity, start), as the source that last delivered it reported it; `fetched_at`
says when, so a caller can tell a candle fetched while it was still open (`fetched_at < start +
granularity`) from a final one. Functions take a `Store` (run them through `AsyncStore.run`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from storage.store import Store

__all__ = ["StoredCandle", "save_candles", "candle_at", "candles_between", "latest_candle"]

_COLUMNS = "pair, granularity, start, open, high, low, close, source, fetched_at"


@dataclass(frozen=True)
class StoredCandle:
    """A cached candle: prices over `[start, start + granularity)`; `close` is the price used."""

    pair: str
    granularity: int
    start: int
    open: float
    high: float
    low: float
    close: float
    source: str
    fetched_at: int

    @property
    def end(self) -> int:
        """First second after the candle."""
        return self.start + self.granularity

    @property
    def is_final(self) -> bool:
        """True when it was fetched after it closed (an open candle's close is still moving)."""
        return self.fetched_at >= self.end


def _row(r: dict[str, Any]) -> StoredCandle:
    return StoredCandle(
        r["pair"], r["granularity"], r["start"], r["open"], r["high"], r["low"], r["close"], r["source"], r["fetched_at"]
    )


def save_candles(
    store: Store,
    pair: str,
    granularity: int,
    candles: Iterable[tuple[int, float, float, float, float]],
    source: str,
    *,
    now: int,
) -> int:
    """Upsert `(start, open, high, low, close)` candles; a later fetch replaces an earlier one. Returns the count.

    :raises ValueError: for a non-finite or non-positive price. :raises StorageError: when SQLite refuses.
    """
    rows = []
    for start, o, h, lo, c in candles:
        for name, value in (("open", o), ("high", h), ("low", lo), ("close", c)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{pair} candle {start}: {name} must be a finite price > 0, got {value!r}")
        rows.append(
            {
                "pair": pair,
                "granularity": int(granularity),
                "start": int(start),
                "open": float(o),
                "high": float(h),
                "low": float(lo),
                "close": float(c),
                "source": source,
                "fetched_at": int(now),
            }
        )
    if not rows:
        return 0
    with store.batch():
        store._db["price_candles"].upsert_all(rows, pk=("pair", "granularity", "start"))
    return len(rows)


def candle_at(store: Store, pair: str, at: int, granularity: int = 3600) -> StoredCandle | None:
    """The candle containing `at`, else the latest one before it (compare `end` with `at`), else None."""
    rows = store._query(
        f"select {_COLUMNS} from price_candles where pair = ? and granularity = ? and start <= ? order by start desc limit 1",
        [pair, granularity, at],
    )
    return _row(rows[0]) if rows else None


def candles_between(store: Store, pair: str, start: int, end: int, granularity: int = 3600) -> list[StoredCandle]:
    """Cached candles with `start <= candle.start < end`, oldest first."""
    rows = store._query(
        f"select {_COLUMNS} from price_candles where pair = ? and granularity = ? and start >= ? and start < ? order by start",
        [pair, granularity, start, end],
    )
    return [_row(r) for r in rows]


def latest_candle(store: Store, pair: str, granularity: int = 3600) -> StoredCandle | None:
    """The most recent cached candle of a pair, or None."""
    rows = store._query(
        f"select {_COLUMNS} from price_candles where pair = ? and granularity = ? order by start desc limit 1",
        [pair, granularity],
    )
    return _row(rows[0]) if rows else None
