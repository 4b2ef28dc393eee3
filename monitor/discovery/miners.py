"""The chain-wide miner view: production per pool per day from every block's coinbase, miners' outflows by
destination kind, the Miner Position Index, and a tracked miner's measured production beside its reported one.

Production. Every block of the scanned range is read once (`watchers.coinbases`: header + coinbase) and
attributed to a pool with the pools-v2 rules of `monitor.discovery.pools.attribute_block`. Where the coinbase tag
and the payout address name different pools, the miner view takes the *tag*: a payout address outlives a
pool's era (a pool sold, renamed or succeeded keeps paying the same address, and pools-v2 lists each
address under one pool only), while the tag is what the pool writes now. The address pool is kept beside
it (`address_pool`). A block with neither is `unknown`. Per block: subsidy (the schedule's, capped at
what the coinbase paid), fees (the rest of the coinbase: what the pool claimed) and reward; a **PoolDay**
sums one pool's blocks of one UTC day, with its share of the day's blocks and, from the day's difficulty,
an estimated hashrate (share × difficulty × 2^32 / 600 H/s: a block-count estimate, noisy on few blocks).

One row per block is stored (`storage.miners`), PoolDays are sums of rows: a reorg deletes the orphaned
heights and writes the new branch in one transaction, so nothing orphaned is counted.

Outflows. Miners' daily outflows are the stored flows of every entity of kind `miner` (configured,
imported, discovered: whatever the watchers saw), by destination kind: exchange, OTC, other miners
(`entity:<a miner>`), custodian, other, unknown; plus the outflows from pool payout addresses: every
coinbase output to a pools-v2 payout address is stored as a pool coin, checked once mature for a confirmed
spend (`/tx/:txid/outspends`), and each spend's outputs to non-pool addresses are stored (change back to
a pool address is a coin again). Their kind comes from the registry when the view is read, so a label
learned later applies to past outflows. The network-wide miner-to-exchange total is the sum of the
exchange kind. USD uses the price each flow was classified with, and for pool outflows the stored BTC-USD
candle of the hour, else of the day (unpriced otherwise: `unpriced_sat` says how much).

Miner Position Index (CryptoQuant's definition): a day's miner outflow in USD divided by the moving
average of the daily outflow over the 365 days up to it. Days without an outflow count as 0 inside the
covered span; when fewer than 365 days are covered the average uses those days and says how many.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from monitor.core.facts import day_of, fact_at
from monitor.discovery.pools import DEFAULT_POOL_OWNERS, POOLS_SOURCE, PoolIndex, attribute_block
from monitor.model import SATS_PER_BTC, ChainTx, Fact, MalformedError, SourceError
from storage import AsyncStore, Store
from storage.miners import (
    drop_miner_blocks_from,
    mark_pool_coins,
    miner_block_hashes,
    miner_block_rows,
    miner_block_span,
    pool_coins_to_check,
    pool_outflow_rows,
    save_miner_blocks,
    save_pool_coins,
    save_pool_outflows,
    unspent_pool_coins,
)
from watchers.coinbases import BitcoindCoinbases, BlockCoinbase, EsploraCoinbases

CoinbaseReader = EsploraCoinbases | BitcoindCoinbases

__all__ = [
    "BLOCKS_PER_DAY",
    "MPI_WINDOW",
    "BlockProduction",
    "PoolDay",
    "PoolTotal",
    "FlowDay",
    "MpiPoint",
    "ScanResult",
    "Reconciliation",
    "block_subsidy",
    "measure_block",
    "pool_days",
    "pool_totals",
    "destination_kind",
    "flow_days",
    "miner_position_index",
    "reconcile_production",
    "measured_production_fact",
    "scan_blocks",
    "SpendResult",
    "pool_coins_of",
    "pool_spend",
    "follow_pool_spends",
    "pool_flow_days",
    "merge_flow_days",
    "backfill",
    "miners_view",
    "view_for_registry",
    "view_from_store",
    "coinbase_reader",
    "follow_tip",
    "with_measured_production",
]

log = logging.getLogger("treasury_monitor.miners")

#: Expected blocks per day (one per 600 s): how `--days N` becomes a height range.
BLOCKS_PER_DAY = 144
#: The Miner Position Index's moving-average window, in days.
MPI_WINDOW = 365
_HALVING = 210_000
_UNKNOWN = "unknown"
#: A coinbase output can be spent in the block 100 above it at the earliest (consensus rule).
COINBASE_MATURITY = 100
#: Pool coins checked for spends per daemon pass (`/tx/:txid/outspends` each); a backfill checks them all.
DEFAULT_MAX_COIN_CHECKS = 500
#: A stored candle older than this (seconds before the outflow) does not price it.
_PRICE_STALENESS = 7200


def block_subsidy(height: int) -> int:
    """The block subsidy at `height` in satoshis (50 BTC halved every 210,000 blocks)."""
    halvings = height // _HALVING
    return 0 if halvings >= 64 else (50 * SATS_PER_BTC) >> halvings


def _day(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class BlockProduction:
    """One scanned block: who mined it and what its coinbase paid."""

    chain: str
    height: int
    hash: str
    prev_hash: str
    time: int
    difficulty: float
    pool: str | None  # pools-v2 name, "unknown", or None when scanned without attribution
    matched_by: str  # tag | address | tag+address | ""
    tag: str
    address_pool: str  # the pool the payout address names when the tag names another
    subsidy: int
    fees: int

    @property
    def reward(self) -> int:
        return self.subsidy + self.fees

    @property
    def day(self) -> str:
        return _day(self.time)

    def row(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "height": self.height,
            "hash": self.hash,
            "prev_hash": self.prev_hash,
            "time": self.time,
            "day": self.day,
            "difficulty": self.difficulty,
            "pool": self.pool,
            "matched_by": self.matched_by,
            "tag": self.tag,
            "address_pool": self.address_pool,
            "subsidy_units": self.subsidy,
            "fees_units": self.fees,
            "reward_units": self.reward,
        }


def measure_block(block: BlockCoinbase, pools: PoolIndex | None) -> BlockProduction:
    """A block's production and pool (tag first, then payout address; see the module docstring) (pure).

    With `pools=None` the block is measured without attribution (pool None).
    """
    h, cb = block.header, block.coinbase
    reward = cb.total_out
    subsidy = min(block_subsidy(h.height), reward)
    pool: str | None = None
    matched_by = tag = address_pool = ""
    if pools is not None:
        att = attribute_block(cb, pools, block.scriptsig)
        if att is None:
            pool = _UNKNOWN
        elif att.tag_pool:  # the tag names another pool than the payout address: the tag's era wins
            pool, matched_by, tag, address_pool = att.tag_pool, "tag", att.tag, att.pool.name
        else:
            pool, tag = att.pool.name, att.tag
            matched_by = {"address+tag": "tag+address"}.get(att.matched_by, att.matched_by)
    return BlockProduction(
        cb.chain,
        h.height,
        h.hash,
        h.prev_hash or "",
        h.time,
        h.difficulty,
        pool,
        matched_by,
        tag,
        address_pool,
        subsidy,
        reward - subsidy,
    )


# --- PoolDays ---------------------------------------------------------------------------------------


def network_hashrate(difficulty: float) -> float:
    """Network hashrate in H/s implied by a difficulty (difficulty × 2^32 / 600)."""
    return difficulty * 2**32 / 600


@dataclass(frozen=True)
class PoolDay:
    """One pool's blocks, subsidy, fees and BTC produced on one UTC day, with its share of the day's blocks."""

    day: str
    pool: str
    blocks: int
    subsidy: int
    fees: int
    day_blocks: int  # every block of the day scanned
    difficulty: float  # the day's mean difficulty

    @property
    def produced(self) -> int:
        return self.subsidy + self.fees

    @property
    def share(self) -> float:
        return self.blocks / self.day_blocks if self.day_blocks else 0.0

    @property
    def hashrate(self) -> float:
        """Estimated hashrate (H/s): share of the day's blocks × the network hashrate of the day's difficulty."""
        return self.share * network_hashrate(self.difficulty)

    def record(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "pool": self.pool,
            "blocks": self.blocks,
            "subsidy_sat": self.subsidy,
            "fees_sat": self.fees,
            "produced_sat": self.produced,
            "day_blocks": self.day_blocks,
            "share": round(self.share, 6),
            "difficulty": self.difficulty,
            "est_hashrate_eh_s": round(self.hashrate / 1e18, 3),
        }


def pool_days(rows: Iterable[Mapping[str, Any]]) -> list[PoolDay]:
    """PoolDays from stored block rows (pool None rows count in the day's blocks only), by day then pool."""
    per: dict[tuple[str, str], list[int]] = {}
    days: dict[str, list[float]] = {}
    for r in rows:
        days.setdefault(r["day"], []).append(float(r["difficulty"]))
        if r["pool"] is None:
            continue
        acc = per.setdefault((r["day"], r["pool"] or _UNKNOWN), [0, 0, 0])
        acc[0] += 1
        acc[1] += int(r["subsidy_units"])
        acc[2] += int(r["fees_units"])
    return [
        PoolDay(day, pool, n, sub, fees, len(days[day]), sum(days[day]) / len(days[day]))
        for (day, pool), (n, sub, fees) in sorted(per.items())
    ]


@dataclass(frozen=True)
class PoolTotal:
    """One pool over a window: blocks, subsidy, fees, produced, share of the window's blocks."""

    pool: str
    blocks: int
    subsidy: int
    fees: int
    window_blocks: int
    days: int  # days with at least one block of the pool
    owner: str = ""  # the tracked miner whose pool this is

    @property
    def produced(self) -> int:
        return self.subsidy + self.fees

    @property
    def share(self) -> float:
        return self.blocks / self.window_blocks if self.window_blocks else 0.0

    def record(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "owner": self.owner or None,
            "blocks": self.blocks,
            "subsidy_sat": self.subsidy,
            "fees_sat": self.fees,
            "produced_sat": self.produced,
            "share": round(self.share, 6),
            "days": self.days,
        }


def pool_totals(days: Sequence[PoolDay], owners: Mapping[str, str] = DEFAULT_POOL_OWNERS) -> list[PoolTotal]:
    """Per pool over all the given PoolDays, most blocks first."""
    window = sum({d.day: d.day_blocks for d in days}.values())
    acc: dict[str, list[int]] = {}
    for d in days:
        a = acc.setdefault(d.pool, [0, 0, 0, 0])
        a[0] += d.blocks
        a[1] += d.subsidy
        a[2] += d.fees
        a[3] += 1
    out = [PoolTotal(p, n, s, f, window, k, owners.get(p, "")) for p, (n, s, f, k) in acc.items()]
    return sorted(out, key=lambda t: (-t.blocks, t.pool))


# --- miners' outflows -------------------------------------------------------------------------------

DESTINATION_KINDS = ("exchange", "otc", "miner", "custodian", "other", "unknown")


def destination_kind(attribution: str, kind_of: Mapping[str, str]) -> str | None:
    """exchange | otc | miner | custodian | other | unknown for an attribution string; None for `self`."""
    head, _, name = attribution.partition(":")
    if head == "self":
        return None
    if head in ("exchange", "otc", "custodian"):
        return head
    if head == "entity":
        k = kind_of.get(name, "")
        return "miner" if k == "miner" else k if k in ("exchange", "otc", "custodian") else "other"
    return "unknown" if head in ("unknown", "") else "other"


@dataclass(frozen=True)
class FlowDay:
    """Miners' outflow on one UTC day to one destination kind (sats, and USD where the price was known)."""

    day: str
    kind: str
    sat: int
    usd: float
    flows: int
    priced_sat: int  # the part of `sat` whose USD value is known


def flow_days(flows: Iterable[Mapping[str, Any]], kind_of: Mapping[str, str]) -> list[FlowDay]:
    """Daily outflows of miner entities by destination kind, from stored flow rows (`storage.reads.flow_rows`)."""
    acc: dict[tuple[str, str], list[Any]] = {}
    for f in flows:
        if (f.get("entity_kind") or kind_of.get(f["entity"])) != "miner" or f["direction"] != "out":
            continue
        if f.get("status") not in ("confirmed", None) or f.get("asset", "BTC") != "BTC" or f.get("block_time") is None:
            continue
        cls = f.get("classification") or {}
        price = cls.get("btc_usd") if cls.get("status") != "retracted" else None
        seen: set[tuple[str, str]] = set()
        for d in f.get("destinations", ()):
            kind = destination_kind(d["attribution"], kind_of)
            if kind is None:
                continue
            key = (_day(f["block_time"]), kind)
            a = acc.setdefault(key, [0, 0.0, 0, 0])
            a[0] += int(d["value_units"])
            if price:
                a[1] += int(d["value_units"]) / SATS_PER_BTC * float(price)
                a[3] += int(d["value_units"])
            if key not in seen:
                a[2] += 1
                seen.add(key)
    return [FlowDay(day, kind, s, u, n, p) for (day, kind), (s, u, n, p) in sorted(acc.items())]


def pool_flow_days(
    rows: Iterable[Mapping[str, Any]],
    address_kind: Callable[[str], str],
    price_at: Callable[[int], float | None] = lambda t: None,
    *,
    skip_txids: frozenset[str] = frozenset(),
) -> list[FlowDay]:
    """Daily outflows from pool payout addresses by destination kind, from stored pool outflow rows.

    `address_kind` gives exchange | otc | custodian | miner | other | unknown for a destination address;
    `skip_txids` are txs already counted as a miner entity's flows (a pool address configured as a miner's).
    """
    acc: dict[tuple[str, str], list[Any]] = {}
    seen: set[tuple[str, str, str]] = set()
    for r in rows:
        if r["txid"] in skip_txids:
            continue
        key = (r["day"], address_kind(r["address"]))
        a = acc.setdefault(key, [0, 0.0, 0, 0])
        value = int(r["value_units"])
        a[0] += value
        price = price_at(int(r["block_time"]))
        if price:
            a[1] += value / SATS_PER_BTC * price
            a[3] += value
        if (*key, r["txid"]) not in seen:
            a[2] += 1
            seen.add((*key, r["txid"]))
    return [FlowDay(day, kind, s, u, n, p) for (day, kind), (s, u, n, p) in sorted(acc.items())]


def merge_flow_days(*parts: Iterable[FlowDay]) -> list[FlowDay]:
    """FlowDays of several origins summed per (day, kind)."""
    acc: dict[tuple[str, str], list[Any]] = {}
    for part in parts:
        for f in part:
            a = acc.setdefault((f.day, f.kind), [0, 0.0, 0, 0])
            a[0] += f.sat
            a[1] += f.usd
            a[2] += f.flows
            a[3] += f.priced_sat
    return [FlowDay(day, kind, s, u, n, p) for (day, kind), (s, u, n, p) in sorted(acc.items())]


@dataclass(frozen=True)
class MpiPoint:
    """The Miner Position Index on one day."""

    day: str
    outflow_usd: float
    average_usd: float  # moving average of the daily outflow over `days_used` days up to this one
    days_used: int  # 365, or fewer when the data covers fewer days

    @property
    def value(self) -> float | None:
        return self.outflow_usd / self.average_usd if self.average_usd > 0 else None

    def record(self) -> dict[str, Any]:
        v = self.value
        return {
            "day": self.day,
            "outflow_usd": round(self.outflow_usd, 2),
            "average_usd": round(self.average_usd, 2),
            "days_used": self.days_used,
            "mpi": None if v is None else round(v, 4),
        }


def _days_between(first: str, last: str) -> list[str]:
    a, b = _dt.date.fromisoformat(first), _dt.date.fromisoformat(last)
    return [(a + _dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def miner_position_index(
    daily_usd: Mapping[str, float], *, first: str | None = None, last: str | None = None, window: int = MPI_WINDOW
) -> list[MpiPoint]:
    """MPI for every day of the covered span (`first`..`last`, default the series' own): outflow / its trailing mean.

    A day missing from `daily_usd` inside the span is a day without outflow (0). The mean of day d is over
    the `window` days ending at d, or over the days covered so far when fewer.
    """
    if not daily_usd and (first is None or last is None):
        return []
    days = _days_between(first or min(daily_usd), last or max(daily_usd))
    values = [float(daily_usd.get(d, 0.0)) for d in days]
    out = []
    running = 0.0
    for i, (d, v) in enumerate(zip(days, values)):
        running += v
        if i >= window:
            running -= values[i - window]
        n = min(i + 1, window)
        out.append(MpiPoint(d, v, running / n, n))
    return out


# --- reconciliation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    """A tracked miner's production measured from its pool's coinbases beside its reported monthly figure."""

    entity: str
    pool: str
    since: str  # first day of the window (UTC date)
    until: str  # last day of the window
    days: int
    blocks: int
    produced: int  # sats in the pool's coinbases
    reported: Fact | None
    window_blocks: int

    @property
    def measured_monthly_btc(self) -> float:
        """The measured figure scaled to a 30-day month."""
        return self.produced / SATS_PER_BTC * 30 / self.days if self.days else 0.0

    @property
    def ratio(self) -> float | None:
        """Measured monthly rate ÷ reported monthly figure."""
        return None if self.reported is None or not self.reported.value else self.measured_monthly_btc / self.reported.value

    def sentence(self) -> str:
        seen = (
            f"{self.pool} mined {self.blocks:,} of {self.window_blocks:,} blocks scanned {self.since}..{self.until} "
            f"({self.days} days): {self.produced / SATS_PER_BTC:,.2f} BTC, {self.measured_monthly_btc:,.1f} BTC per 30 days"
        )
        if self.reported is None:
            return f"{self.entity}: {seen}; no reported monthly production"
        return (
            f"{self.entity}: {seen}; reported {self.reported.value:,.0f} BTC/month (as of {self.reported.as_of}, "
            f"{self.reported.source.split(' (via ', 1)[0]}): measured is {self.ratio:.0%} of reported"
        )

    def record(self) -> dict[str, Any]:
        r = self.reported
        return {
            "entity": self.entity,
            "pool": self.pool,
            "since": self.since,
            "until": self.until,
            "days": self.days,
            "blocks": self.blocks,
            "window_blocks": self.window_blocks,
            "produced_sat": self.produced,
            "measured_monthly_btc": round(self.measured_monthly_btc, 4),
            "reported_monthly_btc": None if r is None else r.value,
            "reported_as_of": None if r is None else r.as_of,
            "reported_source": None if r is None else r.source,
            "ratio": None if self.ratio is None else round(self.ratio, 4),
            "sentence": self.sentence(),
        }


def reconcile_production(
    days: Sequence[PoolDay], entity: str, pool: str, reported: Fact | None, *, since: str | None = None, until: str | None = None
) -> Reconciliation:
    """The pool's production over the scanned days in [since, until] (default: all) beside the reported figure."""
    covered = sorted({d.day for d in days if (since is None or d.day >= since) and (until is None or d.day <= until)})
    mine = [d for d in days if d.pool == pool and d.day in covered]
    window_blocks = sum({d.day: d.day_blocks for d in days if d.day in covered}.values())
    first, last = (covered[0], covered[-1]) if covered else (since or "", until or "")
    n_days = len(_days_between(first, last)) if covered else 0
    return Reconciliation(
        entity, pool, first, last, n_days, sum(d.blocks for d in mine), sum(d.produced for d in mine), reported, window_blocks
    )


def measured_production_fact(rec: Reconciliation, *, min_days: int = 7) -> Fact | None:
    """A monthly-production Fact from the measured figure, when it is fresher than the reported one.

    None when the window is too short to say, or the reported figure is as recent as the measured window.
    The Fact's source says it was measured, so a classification citing it says which figure it used.
    """
    if rec.days < min_days or rec.blocks == 0:
        return None
    if rec.reported is not None and rec.reported.as_of >= rec.until:
        return None
    return Fact(
        round(rec.measured_monthly_btc, 2),
        f"measured on chain: {rec.blocks:,} {rec.pool} blocks, {rec.produced / SATS_PER_BTC:,.2f} BTC in the "
        f"{rec.days} days to {rec.until}, scaled to 30 days (pool tags and addresses: pools-v2)",
        rec.until,
        note=("fresher than the reported figure as of " + rec.reported.as_of) if rec.reported else "no reported figure",
    )


# --- scanning ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanResult:
    """What one scan did."""

    start: int
    end: int
    scanned: int  # blocks whose coinbase was read
    skipped: int  # blocks already stored with the same hash (a resumed scan)
    orphaned: int  # stored blocks deleted because a reorg replaced them
    requests: int
    error: str = ""
    spends: int = 0  # pool payout spends read (in the scanned blocks, or per coin after the scan)
    pool_outflows: int = 0  # their outputs to non-pool addresses stored


async def scan_blocks(
    store: AsyncStore,
    reader: CoinbaseReader,
    *,
    start: int,
    end: int,
    now: int,
    pools: PoolIndex | None,
    progress: Callable[[int, int], Any] | None = None,
) -> ScanResult:
    """Scan heights `start..end` (headers 10 at a time, one coinbase request per new block), committing per page.

    A block already stored with the same hash is skipped, so an interrupted scan resumes where it stopped.
    A stored block whose height now holds another hash, or whose child does not point at it, was orphaned:
    it and every stored block above it are deleted in the transaction that stores the new branch.
    A source error stops the scan with what was committed kept (`error` says why).
    """
    from watchers.http import RequestTally

    tally = RequestTally()
    chain = reader.chain
    scanned = skipped = orphaned = spends = outflows_n = 0
    # A reader that can list a block's spends of given outpoints (a Core node: no spender index) follows pool
    # coins block by block here; others (Esplora) are asked per coin afterwards (`follow_pool_spends`).
    in_block = pools is not None and hasattr(reader, "spends")
    unspent: dict[tuple[str, int], str] | None = None
    h = start
    total = end - start + 1
    while h <= end:
        top = min(h + 9, end)
        try:
            headers = sorted((x for x in await reader.headers(top, tally=tally) if x.height >= h), key=lambda x: x.height)
            stored = await store.run(miner_block_hashes, chain, h - 1, top)
            below = stored.get(h - 1)
            if below is not None and headers and headers[0].prev_hash != below:
                # The block under this page was orphaned: step back a page (its rows are compared there).
                h = max(h - 10, 0)
                continue
            rows: list[dict[str, Any]] = []
            coins: list[dict[str, Any]] = []
            spent: list[tuple[str, int, str, int]] = []
            outflows: list[dict[str, Any]] = []
            drop_from = min((x.height for x in headers if x.height in stored and stored[x.height] != x.hash), default=None)
            if in_block and (unspent is None or drop_from is not None):
                unspent = await store.run(unspent_pool_coins, chain, below=drop_from)
            for x in headers:
                if stored.get(x.height) == x.hash:
                    skipped += 1
                    continue
                if in_block and unspent:
                    assert pools is not None
                    for tx in await reader.spends(x, unspent, tally=tally):  # type: ignore[union-attr]
                        mine = [(i.prev_txid, i.prev_vout) for i in tx.inputs if (i.prev_txid, i.prev_vout) in unspent]
                        out, change = pool_spend(tx, pools, unspent[mine[0]])
                        for k in mine:
                            spent.append((k[0], k[1], tx.txid, x.height))
                            del unspent[k]
                        outflows.extend(out)
                        coins.extend(change)
                        unspent.update({(c["txid"], c["n"]): c["pool"] for c in change})
                        spends += 1
                block = await reader.coinbase(x, tally=tally)
                measured = measure_block(block, pools)
                rows.append(measured.row())
                if pools is not None:
                    new = pool_coins_of(block, measured.pool, pools)
                    coins.extend(new)
                    if unspent is not None:
                        unspent.update({(c["txid"], c["n"]): c["pool"] for c in new})
        except SourceError as exc:
            log.warning("miner scan stopped at height %d: %s", h, exc)
            return ScanResult(start, end, scanned, skipped, orphaned, tally.requests, str(exc), spends, outflows_n)

        # awaited below within this iteration, so the closure sees this iteration's values (B023 is a false alarm)
        def commit(s: Store) -> int:
            with s.batch():
                n = drop_miner_blocks_from(s, chain, drop_from) if drop_from is not None else 0  # noqa: B023
                save_miner_blocks(s, rows, now=now)  # noqa: B023
                save_pool_coins(s, coins)  # before the spends: a change coin may be spent in the same page  # noqa: B023
                mark_pool_coins(s, chain, (), spent, tip=top)  # noqa: B023
                save_pool_outflows(s, outflows)  # noqa: B023
            return n

        if drop_from is not None or rows:
            dropped = await store.run(commit)
            if dropped:
                log.warning("miner view: reorg at height %d, %d stored block(s) orphaned and undone", drop_from, dropped)
            orphaned += dropped
        scanned += len(rows)
        outflows_n += len(outflows)
        h = top + 1
        if progress is not None:
            progress(min(h - start, total), total)
    return ScanResult(start, end, scanned, skipped, orphaned, tally.requests, "", spends, outflows_n)


async def backfill(
    store: AsyncStore,
    reader: CoinbaseReader,
    *,
    days: int,
    now: int,
    pools: PoolIndex | None,
    progress: Callable[[int, int], Any] | None = None,
    blocks_per_day: int = BLOCKS_PER_DAY,
) -> ScanResult:
    """Scan the last `days` × 144 blocks up to the tip (resumable: stored blocks are skipped), then follow
    every pool payout coin seen to its spend."""
    tip = await reader.tip_height()
    start = max(0, tip - days * blocks_per_day + 1)
    res = await scan_blocks(store, reader, start=start, end=tip, now=now, pools=pools, progress=progress)
    return await _with_spends(store, reader, res, pools, tip, None)


async def follow_tip(
    store: AsyncStore,
    reader: CoinbaseReader,
    *,
    now: int,
    pools: PoolIndex | None,
    max_coin_checks: int | None = DEFAULT_MAX_COIN_CHECKS,
) -> ScanResult:
    """Scan from the last stored block (re-checking it, for reorgs) to the tip, then follow pool coins to their
    spends (at most `max_coin_checks` coins); nothing when nothing is stored."""
    span = await store.run(miner_block_span, reader.chain)
    if span is None:
        return ScanResult(0, -1, 0, 0, 0, 0)
    tip = await reader.tip_height()
    res = await scan_blocks(store, reader, start=min(span[1], tip), end=tip, now=now, pools=pools)
    return await _with_spends(store, reader, res, pools, tip, max_coin_checks)


async def _with_spends(
    store: AsyncStore, reader: CoinbaseReader, res: ScanResult, pools: PoolIndex | None, tip: int, max_checks: int | None
) -> ScanResult:
    if res.error or pools is None:
        return res
    spent = await follow_pool_spends(store, reader, pools=pools, tip=tip, max_checks=max_checks)
    return replace(
        res,
        requests=res.requests + spent.requests,
        error=spent.error,
        spends=res.spends + spent.spends,
        pool_outflows=res.pool_outflows + spent.outflows,
    )


# --- pool payout coins and their spends ---------------------------------------------------------------


def pool_coins_of(block: BlockCoinbase, pool: str | None, pools: PoolIndex) -> list[dict[str, Any]]:
    """The coinbase outputs paying a pool payout address, as pool coin rows (pure).

    A coin is counted for the block's pool when the block has one (the tag's era wins, as for production),
    else for the pool whose address it pays.
    """
    cb = block.coinbase
    out = []
    for o in cb.outputs:
        p = pools.pool_of_address(o.address)
        if p is None or o.value <= 0 or not o.address:
            continue
        out.append(
            {
                "chain": cb.chain,
                "txid": cb.txid,
                "n": o.n,
                "pool": pool if pool and pool != _UNKNOWN else p.name,
                "address": o.address,
                "value_units": o.value,
                "height": block.header.height,
                "coinbase": 1,
            }
        )
    return out


def pool_spend(tx: ChainTx, pools: PoolIndex, pool: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(outflow rows, change coin rows) of a confirmed tx spending pool coins of `pool` (pure).

    Outputs to any pool payout address stay pool coins (change, or another pool's); every other output is
    an outflow of its value times the share of the tx's inputs that came from pool addresses.
    """
    assert tx.block_height is not None and tx.block_time is not None
    total_in = sum(i.value for i in tx.inputs)
    pool_in = sum(i.value for i in tx.inputs if pools.pool_of_address(i.address) is not None)
    outflows, change = [], []
    for o in tx.outputs:
        if o.value <= 0 or not o.address:
            continue
        p = pools.pool_of_address(o.address)
        if p is not None:
            change.append(
                {
                    "chain": tx.chain,
                    "txid": tx.txid,
                    "n": o.n,
                    "pool": pool,
                    "address": o.address,
                    "value_units": o.value,
                    "height": tx.block_height,
                    "coinbase": 0,
                }
            )
        elif total_in:
            outflows.append(
                {
                    "chain": tx.chain,
                    "txid": tx.txid,
                    "n": o.n,
                    "pool": pool,
                    "block_height": tx.block_height,
                    "block_time": tx.block_time,
                    "day": _day(tx.block_time),
                    "address": o.address,
                    "value_units": o.value * pool_in // total_in,
                }
            )
    return outflows, change


@dataclass(frozen=True)
class SpendResult:
    """What one pass over the pool coins did."""

    checked: int
    spends: int  # spending txs read
    outflows: int  # outflow rows stored
    requests: int
    error: str = ""


async def follow_pool_spends(
    store: AsyncStore, reader: CoinbaseReader, *, pools: PoolIndex, tip: int, max_checks: int | None = DEFAULT_MAX_COIN_CHECKS
) -> SpendResult:
    """Check unspent pool coins for a confirmed spend at or below `tip`; store each spend's outflows and change.

    One `/tx/:txid/outspends` per tx holding coins to check (coinbase coins once mature; each coin at most
    once per tip), one `/tx/:txid` per spending tx. A reader without outspends (a Core node has no spender
    index) checks nothing. A source error stores nothing of the pass (it is repeated at the next one).
    """
    from watchers.http import RequestTally

    if not hasattr(reader, "outspends"):
        return SpendResult(0, 0, 0, 0)
    chain = reader.chain
    coins = await store.run(pool_coins_to_check, chain, tip=tip, mature=tip - COINBASE_MATURITY, limit=max_checks)
    if not coins:
        return SpendResult(0, 0, 0, 0)
    tally = RequestTally()
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for c in coins:
        by_tx.setdefault(c["txid"], []).append(c)
    checked: list[tuple[str, int]] = []
    spent: list[tuple[str, int, str, int]] = []
    by_spender: dict[str, list[tuple[str, int, str]]] = {}  # spending txid → the coins it spends (txid, n, pool)
    outflows: list[dict[str, Any]] = []
    change: list[dict[str, Any]] = []
    try:
        for txid, group in by_tx.items():
            outs = await reader.outspends(txid, tally=tally)
            for c in group:
                if c["n"] >= len(outs):
                    raise MalformedError(f"outspends of {txid}: no output {c['n']}")
                o = outs[c["n"]]
                # mempool.space on a Core backend may say confirmed without the block: the tx tells
                if o.spent and o.confirmed and o.txid and (o.block_height is None or o.block_height <= tip):
                    by_spender.setdefault(o.txid, []).append((txid, c["n"], c["pool"]))
                else:
                    checked.append((txid, c["n"]))
        for txid, coins_spent in by_spender.items():
            tx = await reader.tx(txid, tally=tally)
            if tx.block_height is None or tx.block_time is None or tx.block_height > tip:
                checked.extend((t, n) for t, n, _ in coins_spent)  # not in a scanned block yet: next time
                continue
            spent.extend((t, n, txid, tx.block_height) for t, n, _ in coins_spent)
            o, ch = pool_spend(tx, pools, coins_spent[0][2])
            outflows.extend(o)
            change.extend(ch)
    except SourceError as exc:
        log.warning("miner view: pool coin check stopped: %s", exc)
        return SpendResult(len(coins), 0, 0, tally.requests, str(exc))

    def commit(s: Store) -> None:
        with s.batch():
            mark_pool_coins(s, chain, checked, spent, tip=tip)
            save_pool_outflows(s, outflows)
            save_pool_coins(s, change)

    await store.run(commit)
    return SpendResult(len(coins), len({t for _, _, t, _ in spent}), len(outflows), tally.requests)


# --- the view ---------------------------------------------------------------------------------------


def miners_view(
    store: Store,
    *,
    kind_of: Mapping[str, str],
    reported: Mapping[str, Fact | None],
    owners: Mapping[str, str] = DEFAULT_POOL_OWNERS,
    since: int | None = None,
    chain: str = "bitcoin",
    address_kind: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Everything `treasury-monitor miners` and `/api/miners` show, as JSON-ready data (store thread).

    Miners' outflows are the stored flows of miner entities plus the outflows from pool payout addresses
    (destinations classified by `address_kind`, default: all unknown).
    """
    from storage.prices import candle_at
    from storage.reads import flow_rows

    rows = miner_block_rows(store, chain, since=since)
    days = pool_days(rows)
    totals = pool_totals(days, owners)
    entity_rows = list(flow_rows(store, since=since, direction="out"))
    entity_flows = flow_days(entity_rows, kind_of)
    counted = frozenset(f["txid"] for f in entity_rows if (f.get("entity_kind") or kind_of.get(f["entity"])) == "miner")

    def price_at(t: int) -> float | None:
        for granularity in (3600, 86_400):  # the hour's candle, else the day's (the CSV source stores days)
            c = candle_at(store, "BTC-USD", t, granularity)
            if c is not None and t - c.end <= _PRICE_STALENESS:
                return c.close
        return None

    pool_rows = pool_outflow_rows(store, chain, since=since)
    pool_flows = pool_flow_days(pool_rows, address_kind or (lambda a: "unknown"), price_at, skip_txids=counted)
    flows = merge_flow_days(entity_flows, pool_flows)
    scanned_days = sorted({r["day"] for r in rows})
    flow_span = sorted({f.day for f in flows})
    covered = sorted(set(scanned_days) | set(flow_span))
    usd: dict[str, float] = {}
    priced = unpriced = 0
    for f in flows:
        usd[f.day] = usd.get(f.day, 0.0) + f.usd
        priced += f.priced_sat
        unpriced += f.sat - f.priced_sat
    mpi = miner_position_index(usd, first=covered[0], last=covered[-1]) if covered else []
    to_exchange: dict[str, int] = {}
    for f in flows:
        if f.kind == "exchange":
            to_exchange[f.day] = to_exchange.get(f.day, 0) + f.sat
    recs = [reconcile_production(days, entity, pool, reported.get(entity)).record() for pool, entity in sorted(owners.items())]
    return {
        "schema": "treasury-monitor.miners/1",
        "blocks_scanned": len(rows),
        "first_height": rows[0]["height"] if rows else None,
        "last_height": rows[-1]["height"] if rows else None,
        "days": scanned_days,
        "attributed": any(r["pool"] is not None for r in rows),
        "pools": [t.record() for t in totals],
        "pool_days": [d.record() for d in days],
        "tracked_miners": recs,
        "flows": [{"day": f.day, "kind": f.kind, "sat": f.sat, "usd": round(f.usd, 2), "flows": f.flows} for f in flows],
        "pool_flows": [
            {"day": f.day, "kind": f.kind, "sat": f.sat, "usd": round(f.usd, 2), "flows": f.flows} for f in pool_flows
        ],
        "miner_to_exchange": [{"day": d, "sat": s} for d, s in sorted(to_exchange.items())],
        "mpi": [p.record() for p in mpi],
        "mpi_days_used": mpi[-1].days_used if mpi else 0,
        "mpi_window": MPI_WINDOW,
        "unpriced_sat": unpriced,
        "source": f"coinbases of every scanned block; pools from {POOLS_SOURCE}",
    }


def view_for_registry(
    store: Store, registry: Any, *, since: int | None = None, owners: Mapping[str, str] = DEFAULT_POOL_OWNERS
) -> dict[str, Any]:
    """`miners_view` with entity kinds and reported monthly production taken from a Registry (store thread)."""
    kind_of = {e.name: e.kind for e in registry.entities.values()}
    reported = {e.name: e.profile.monthly_production_btc for e in registry.entities.values()}

    def address_kind(address: str) -> str:
        owner = registry.entity_of("bitcoin", address)
        if owner is None:
            return "unknown"
        if owner.kind in ("exchange", "otc", "custodian", "miner"):
            return owner.kind
        return "other"

    return miners_view(store, kind_of=kind_of, reported=reported, owners=owners, since=since, address_kind=address_kind)


def view_from_store(store: Store, *, since: int | None = None, owners: Mapping[str, str] = DEFAULT_POOL_OWNERS) -> dict[str, Any]:
    """`miners_view` with entity kinds, reported production and address owners read from storage alone (the
    entities and addresses the last run synced), for readers without a config: the report (store thread)."""
    from monitor.core.registry import normalise_address

    entities = store.entity_rows()
    kind_of = {e["name"]: e["kind"] for e in entities}
    reported = {e["name"]: store.entity_profile(e["name"]).monthly_production_btc for e in entities}
    owner = {(a["chain"], a["address"]): a["entity"] for a in store.address_rows(status="active")}

    def address_kind(address: str) -> str:
        k = kind_of.get(owner.get(("bitcoin", normalise_address("bitcoin", address)), ""), "")
        return k if k in ("exchange", "otc", "custodian", "miner") else "other" if k else "unknown"

    return miners_view(store, kind_of=kind_of, reported=reported, owners=owners, since=since, address_kind=address_kind)


def coinbase_reader(sources: Sequence[Any], name: str | None = None) -> CoinbaseReader | None:
    """The miner view's block reader over a built source: `name`, else the first Esplora or Bitcoin Core
    source on chain bitcoin (EsploraCoinbases or BitcoindCoinbases); None when there is none."""
    from watchers.bitcoind.source import BitcoindSource
    from watchers.http import HttpClient

    for s in sources:
        if getattr(s, "chain", "") != "bitcoin" or (name is not None and s.name != name):
            continue
        if isinstance(s, BitcoindSource):
            return BitcoindCoinbases(s.rpc, chain="bitcoin")
        if isinstance(getattr(s, "http", None), HttpClient):
            return EsploraCoinbases(s.http, chain="bitcoin")
    return None


def with_measured_production(
    store: Store, entity: Any, *, at: int, owners: Mapping[str, str] = DEFAULT_POOL_OWNERS, days: int = 30, chain: str = "bitcoin"
) -> Any:
    """The entity, its monthly production replaced by its own pool's measured one when that is fresher (store thread).

    The measured figure is the pool's coinbases over the `days` before `at` (at least 7 scanned days),
    scaled to 30 days; it replaces the reported Fact only when its window ends after the reported as-of
    date. The Fact's source starts "measured on chain", so the classification's reasons say which figure
    was used. Entities without a pool of their own, or with nothing scanned, come back unchanged.
    """
    pools = [p for p, e in owners.items() if e == entity.name]
    if not pools or entity.kind != "miner":
        return entity
    rows = miner_block_rows(store, chain, since=at - days * 86_400, until=at)
    if not rows:
        return entity
    # Compared with the reported point in force at `at` (a figure dated after the flow is not "fresher").
    in_force = fact_at(entity.profile, "monthly_production_btc", day_of(at))
    reported = in_force.fact if in_force is not None and not in_force.is_later else None
    rec = reconcile_production(pool_days(rows), entity.name, pools[0], reported)
    fact = measured_production_fact(rec)
    if fact is None:
        return entity
    # The measured point joins the dated series (the newest reported one moves to `earlier`).
    p = entity.profile
    earlier = p.earlier + ((("monthly_production_btc", p.monthly_production_btc),) if p.monthly_production_btc else ())
    return replace(entity, profile=replace(p, monthly_production_btc=fact, earlier=earlier))
