"""Which dated Fact of an entity's profile is in force at a time, and holdings rolled forward (pure).

A profile figure (holdings, monthly production, cash cost, efficiency) is a series of dated Facts. A
judgment about a flow uses the newest point dated on or before the flow's UTC day. When every point is
dated after the flow, the earliest one is used and the reason says that only a later figure exists.
An undated point (a bare number in config.toml) is in force at any time and is cited as undated.

Holdings are rolled forward: the point in force less what the monitor saw leave the entity's watched
addresses after that point's date (the end of its day) and before the flow. Arrivals are not added: an
arrival at a newly watched address is usually the entity's own coins coming from a wallet the monitor
does not watch, already counted in the reported figure (and a scenario's opening funding looks the same),
so adding them would count coins twice. The estimate can only err low (production since is left out),
which makes a sale's share of holdings err high: towards alerting, and the reason states the arithmetic.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from monitor.model import SATS_PER_BTC, Fact, FlowHistory, Profile

__all__ = ["FactUse", "fact_at", "day_of", "day_end", "Holdings", "holdings_at", "cite"]


def day_of(at: int) -> str:
    """ISO UTC date of a Unix time."""
    return _dt.datetime.fromtimestamp(at, tz=_dt.UTC).strftime("%Y-%m-%d")


def day_end(as_of: str) -> int:
    """Unix time of the end of an ISO date (UTC midnight after it): a figure 'as of' a day covers that day."""
    d = _dt.date.fromisoformat(as_of) + _dt.timedelta(days=1)
    return int(_dt.datetime(d.year, d.month, d.day, tzinfo=_dt.UTC).timestamp())


@dataclass(frozen=True)
class FactUse:
    """The point of a figure used for a judgment, and whether it is dated after the judged flow."""

    fact: Fact
    is_later: bool = False


def fact_at(profile: Profile, figure: str, day: str) -> FactUse | None:
    """The point of `figure` in force on `day` (ISO date): the newest dated on or before it, else the
    earliest later one (flagged), else None."""
    points = profile.series(figure)
    if not points:
        return None
    before = [f for f in points if not f.as_of or f.as_of <= day]
    if before:
        return FactUse(before[-1])
    return FactUse(points[0], is_later=True)


def cite(use: FactUse, short_source: str) -> str:
    """'source, as of DATE' with what a reader must know: undated, or dated after the flow."""
    f = use.fact
    if not f.as_of:
        return f"{short_source}, undated"
    if use.is_later:
        return f"{short_source}, as of {f.as_of}: the earliest figure found, dated after this flow"
    return f"{short_source}, as of {f.as_of}"


@dataclass(frozen=True)
class Holdings:
    """Holdings at a flow: the reported point, and the flows seen since its date (base units)."""

    use: FactUse
    received: int = 0
    left: int = 0
    is_rolled: bool = False  # outflows since the point's date were seen and subtracted

    @property
    def reported_btc(self) -> float:
        return self.use.fact.value

    @property
    def btc(self) -> float:
        """Reported figure less what was seen leaving since, never below zero (arrivals: see the module)."""
        return max(0.0, self.use.fact.value - self.left / SATS_PER_BTC)


def holdings_at(profile: Profile, history: FlowHistory, day: str) -> Holdings | None:
    """Holdings in force on `day`, rolled forward with the flows `history.since` reports for its date."""
    use = fact_at(profile, "holdings_btc", day)
    if use is None:
        return None
    if use.is_later or not use.fact.as_of:
        return Holdings(use)
    for as_of, received, left in history.since:
        if as_of == use.fact.as_of:
            # Fees of internal moves alone (under 0.01 BTC) do not make an estimate worth a sentence.
            return Holdings(use, received, left, is_rolled=left >= SATS_PER_BTC // 100)
    return Holdings(use)
