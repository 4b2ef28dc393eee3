"""The classifier: what an entity's outflow most likely is, how much it matters, and why (pure).

`classify(flow, entity, ctx, history, thresholds, now=...)` returns a Classification whose reasons are
sentences that each carry their numbers and sources.

Verdict precedence (first match wins):
 1. `internal`        nothing left the entity: `flow.out == 0`, or every destination is attributed `self`.
 2. The destinations (own `self` outputs excluded) are grouped: sale (`exchange`, `otc`), `custodian`,
    `entity` (another tracked entity), `unknown`. The group holding the most value decides; on a tie the
    order just given wins (a possible sale is not hidden behind an unknown output).
    - custodian → `custody_move` (a sale is not implied).
    - entity    → `unknown_transfer`: coins moved between tracked treasuries are not a sale by themselves;
                  the receiving entity's own later flows are classified on their own.
    - unknown   → `unknown_transfer`: hop tracing may attribute it later and re-classify.
    A destination that hop tracing broke down (`Destination.shares`) counts each share in its own group
    (what was not traced further, fees on the way included, counts as unknown). When tracing attributed
    it to an exchange or OTC desk — it does so only once a significant share reached one — the sale
    group decides even when more value is still unattributed: a sale of part of the coins is a sale
    (the reasons give the breakdown with shares and hops).
 3. sale group, sovereign → `sovereign_sale`.
 4. sale group, miner (or any other tracked treasury):
    a. the 30-day total out (this flow included) is within `production_multiple` × monthly production
       → `production_sale` (routine, even below cost: miners sell output to pay power; severity notes it);
    b. large and tagged `convertible_repurchase` / `debt_repurchase` → `balance_sheet_sale` (even below
       cost: the sale funds a deliberate liability buy-back, ChainCatcher 2026-04-03 on MARA);
    c. large and tagged `ai_shift` (the article's "complete shift to AI" path: BTC is no longer a core
       asset) → `reallocation_sale`, even below cost: an expected reallocation, not distress;
    d. price below the entity's cash cost → `distress_sale`; one severity step more when tagged
       `mining_focus` ("stick to mining": such a miner sells beyond production only under pressure);
    e. large, tagged `dual_track` ("walk on two legs": keeps BTC, funds AI/HPC) or `ai_hpc_pivot` (an
       AI/HPC move on no named path), at or above cost (or cost not comparable) → `reallocation_sale`;
    f. large, at or above cost → `strategic_sale` (for a `mining_focus` miner the reason says it is unusual);
    g. otherwise (not large, no production figure to call it routine) → `production_sale`, saying so.
    The figures (production, holdings, cash cost, efficiency) are the profile points in force on the flow's
    UTC day (`monitor.core.facts`): the newest dated on or before it, else the earliest later one, which the
    reason then says. Holdings are rolled forward from the reported point with the flows seen since its
    date. Each reason names the price's source and candle and the hashprice's inputs.
    "Large" means beyond `production_multiple` × monthly production, or a 30-day total of at least
    `large_share_of_holdings` of holdings, or, when the entity has neither figure, a USD value of at least
    `large_usd_fallback`.
    "Hashprice below fleet breakeven" needs the fleet's power price, which no bundled source gives; the
    breakeven power price at the current hashprice is reported as a reason instead.

Severity (info < notice < warning < critical) is the highest step reached by the USD value of this flow,
the 30-day total as a share of holdings, and the 30-day total as a multiple of monthly production; one
step more when selling accelerates (this transfer at least `acceleration_factor` × the median of up to
the previous `acceleration_window` transfers, needing at least `acceleration_min_count` of them; with
fewer than five, the median of those there are). Then per verdict: `internal` is info; `production_sale`
is info, notice when below cost; `custody_move` is at most warning; `distress_sale` at least notice.

A missing or stale price (`ctx.is_price_stale`) never blocks a classification: the reasons say so (with
the price's age), the USD value, the cost comparison and the USD severity step are skipped, and
acceleration is measured in coins instead of dollars.
"""

from __future__ import annotations

import datetime as _dt
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from monitor.bundled import is_sector_default, short_source
from monitor.core.facts import FactUse, Holdings, cite, day_of, fact_at, holdings_at
from monitor.core.hashprice import breakeven_power_usd_per_kwh
from monitor.model import (
    SATS_PER_BTC,
    SEVERITIES,
    Classification,
    Entity,
    EntityAddress,
    EntityFlow,
    FactUsed,
    FlowHistory,
    MarketContext,
    TraceShare,
)

__all__ = [
    "Thresholds",
    "classify",
    "trace_breakdown",
    "price_basis",
    "BTC_ASSETS",
    "CONVERTIBLE_TAGS",
    "AI_HPC_TAGS",
    "MINING_FOCUS_TAGS",
    "DUAL_TRACK_TAGS",
    "AI_SHIFT_TAGS",
]

#: Assets measured against BTC production and holdings (BTC itself and 1:1 wrapped BTC tokens).
BTC_ASSETS = frozenset({"BTC", "WBTC", "CBBTC", "TBTC"})
CONVERTIBLE_TAGS = frozenset({"convertible_repurchase", "debt_repurchase"})
#: The ChainCatcher article's (2026-04-03) three paths: "stick to mining" (CleanSpark, HIVE), "walk on two
#: legs" (MARA, IREN, Riot: keep BTC, add AI/HPC) and "a complete shift to AI" (Core Scientific, TeraWulf,
#: Cipher: BTC no longer a core asset). `ai_hpc_pivot` is an AI/HPC move whose path no source names.
MINING_FOCUS_TAGS = frozenset({"mining_focus"})
DUAL_TRACK_TAGS = frozenset({"dual_track"})
AI_SHIFT_TAGS = frozenset({"ai_shift"})
AI_HPC_TAGS = frozenset({"ai_hpc_pivot"}) | DUAL_TRACK_TAGS | AI_SHIFT_TAGS
_PRICE_SOURCES = {
    "coinbase": "Coinbase",
    "kraken": "Kraken",
    "coingecko": "CoinGecko",
    "csv": "CSV price file",
    "simulated": "bundled SIMULATED series",
}
_CANDLES = {60: "1-minute candle", 3600: "1-hour candle", 86400: "daily close"}
_SALE_KINDS = frozenset({"exchange", "otc"})
_GROUP_ORDER = ("sale", "custodian", "entity", "unknown")


@dataclass(frozen=True)
class Thresholds:
    """Tunable limits of the classifier (config `[classify]`); the defaults are documented per field."""

    #: Routine when the 30-day total out, this flow included, is at most this × monthly production.
    production_multiple: float = 1.5
    #: A 30-day total of at least this share of holdings is a large sale (10%).
    large_share_of_holdings: float = 0.10
    #: With no production and no holdings figure, a flow worth at least this many USD is large.
    large_usd_fallback: float = 10_000_000.0
    #: USD value of this flow → notice / warning / critical ($1M / $10M / $50M: Bhutan's clips were
    #: $5-10M and its March 2026 transfers $35-45M; MARA's 15,133 BTC averaged ~$70M a day of selling).
    usd_notice: float = 1_000_000.0
    usd_warning: float = 10_000_000.0
    usd_critical: float = 50_000_000.0
    #: 30-day total as a share of holdings → notice / warning / critical (2% / 5% / 25%).
    share_notice: float = 0.02
    share_warning: float = 0.05
    share_critical: float = 0.25
    #: 30-day total as a multiple of monthly production → notice / warning / critical (1.5× / 3× / 10×).
    production_notice: float = 1.5
    production_warning: float = 3.0
    production_critical: float = 10.0
    #: Acceleration: this transfer ≥ factor × median of up to `window` previous ones, given ≥ min_count.
    acceleration_window: int = 5
    acceleration_min_count: int = 2
    acceleration_factor: float = 1.5

    def __post_init__(self) -> None:
        for name in ("usd", "share", "production"):
            steps = [getattr(self, f"{name}_{s}") for s in ("notice", "warning", "critical")]
            if not all(x > 0 for x in steps) or steps != sorted(steps):
                raise ValueError(f"{name} steps must be positive and ascending (notice <= warning <= critical): {steps}")
        if not self.production_multiple > 0 or not 0 < self.large_share_of_holdings <= 1:
            raise ValueError("production_multiple must be > 0 and large_share_of_holdings in (0, 1]")
        if self.large_usd_fallback <= 0 or self.acceleration_factor < 1:
            raise ValueError("large_usd_fallback must be > 0 and acceleration_factor >= 1")
        if not 1 <= self.acceleration_min_count <= self.acceleration_window:
            raise ValueError("need 1 <= acceleration_min_count <= acceleration_window")


# --- formatting -----------------------------------------------------------------------------------


def _amount(units: int, decimals: int, asset: str) -> str:
    q = Decimal(units).scaleb(-decimals)
    if abs(q) >= 100:
        return f"{q:,.2f} {asset}"
    # Small amounts keep their significant digits, so change of 9.99999 never reads as 10.00.
    text = f"{q:,.8f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')} {asset}"


def _price(usd: float) -> str:
    return f"${usd:,.0f}"


def _money(usd: float) -> str:
    if abs(usd) >= 1e9:
        return f"${usd / 1e9:,.2f}B"
    if abs(usd) >= 1e6:
        return f"${usd / 1e6:,.1f}M"
    return f"${usd:,.0f}"


def _num(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:,.2f}"


def _age(seconds: float) -> str:
    s = abs(seconds)
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _cite(use: FactUse) -> str:
    return cite(use, short_source(use.fact))


def _when(at: int, granularity: int | None) -> str:
    t = _dt.datetime.fromtimestamp(at, tz=_dt.UTC)
    return t.strftime("%Y-%m-%d") if granularity == 86400 else t.strftime("%Y-%m-%d %H:%M UTC")


def price_basis(ctx: MarketContext) -> str:
    """Where the price came from and for when: 'Coinbase 1-hour candle, 2026-03-10 14:00 UTC'."""
    source = _PRICE_SOURCES.get(ctx.price_source, ctx.price_source or "unknown source")
    if ctx.price_start is not None:
        kind = _CANDLES.get(ctx.price_granularity or 0, "candle")
        return f"{source} {kind}, {_when(ctx.price_start, ctx.price_granularity)}"
    if ctx.price_at is not None:
        return f"{source}, observed {_when(ctx.price_at, None)}"
    return source


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _hops(shares: list[TraceShare]) -> str:
    n = max(s.hops for s in shares)
    return f"{n} hop" if n == 1 else f"{n} hops"


def trace_breakdown(
    total: int,
    shares: tuple[TraceShare, ...],
    *,
    entity: str = "",
    floor_sat: int | None = None,
    decimals: int = 8,
    asset: str = "BTC",
) -> str:
    """Where a traced amount went, in words: "1,000.00 of 6,500.00 BTC (15%) reached exchange:Kraken and
    exchange:Coinbase within 2 hops; 4,500.00 BTC (69%) wait at an unattributed address; ..."."""

    def amount(v: int) -> str:
        return _amount(v, decimals, asset)

    def pct(v: int) -> str:
        return f"{v / total:.0%}" if total > 0 else "?"

    groups: dict[str, list[TraceShare]] = {}
    for s in shares:
        kind = s.attribution.partition(":")[0]
        key = (
            "counterparty"
            if kind in ("exchange", "otc", "custodian")
            else kind
            if kind in ("self", "entity")
            else s.note or "unknown"
        )
        groups.setdefault(key, []).append(s)
    parts: list[str] = []
    if "counterparty" in groups:
        g = groups["counterparty"]
        v = sum(s.value for s in g)
        names = _and(list(dict.fromkeys(s.attribution for s in sorted(g, key=lambda s: -s.value))))
        parts.append(f"{amount(v).removesuffix(' ' + asset)} of {amount(total)} ({pct(v)}) reached {names} within {_hops(g)}")
    if "self" in groups:
        v = sum(s.value for s in groups["self"])
        parts.append(f"{amount(v)} ({pct(v)}) came back to {entity or 'the entity'} after {_hops(groups['self'])}")
    if "entity" in groups:
        g = groups["entity"]
        v = sum(s.value for s in g)
        parts.append(f"{amount(v)} ({pct(v)}) reached tracked {_and(list(dict.fromkeys(s.attribution for s in g)))}")
    texts: dict[str, Callable[[int], str]] = {
        "waiting": lambda n: f"wait at {'an unattributed address' if n == 1 else f'{n} unattributed addresses'}",
        "below_floor": lambda n: (
            f"went on in {n} branch(es) below the {floor_sat} sat floor"
            if floor_sat is not None
            else f"went on in {n} branch(es) below the value floor"
        ),
        "max_hops": lambda n: f"were still unattributed at the hop limit ({n} branch(es))",
        "fan_out": lambda n: f"went on in {n} branch(es) beyond the fan-out limit",
        "gave_up": lambda n: f"did not move before the trace gave up ({n} branch(es))",
        "no_output": lambda n: f"went to {n} output(s) the source does not show",
    }
    for key, text in texts.items():
        if key in groups:
            g = groups[key]
            v = sum(s.value for s in g)
            parts.append(f"{amount(v)} ({pct(v)}) {text(len({(s.path, s.value) for s in g}))}")
    if not parts:
        return f"nothing of {amount(total)} could be followed"
    if "counterparty" not in groups:
        parts[0] = f"of {amount(total)}: {parts[0]}"
    return "; ".join(parts)


def _step(value: float | None, notice: float, warning: float, critical: float) -> int:
    if value is None:
        return 0
    return 3 if value >= critical else 2 if value >= warning else 1 if value >= notice else 0


# --- the classifier -------------------------------------------------------------------------------


def classify(
    flow: EntityFlow,
    entity: Entity,
    ctx: MarketContext,
    history: FlowHistory,
    thresholds: Thresholds = Thresholds(),
    *,
    now: int,
    provisional: tuple[EntityAddress, ...] = (),
) -> Classification:
    """Verdict, severity and reasons for one outgoing (or internal) EntityFlow of a tracked entity.

    `provisional` names the entity's provisional addresses the flow spends from (monitor.discovery.provisional):
    the flow is the entity's, and its reasons say it is provisionally so.

    The steps, in order: internal moves; where the coins went (`_destinations`); the price sentence; the
    dated measures (production multiple, share of holdings, cost, hashprice: `_measure`); acceleration;
    severity; and the verdict by precedence (`_verdict`), whose sentence goes second in the reasons.

    :raises ValueError: for an incoming flow (not a sale: do not classify it), a flow of another entity,
        or an entity that is a counterparty (exchange, OTC desk, custodian).
    """
    if flow.entity != entity.name:
        raise ValueError(f"flow belongs to {flow.entity!r}, not {entity.name!r}")
    if entity.kind not in ("miner", "sovereign", "other"):
        raise ValueError(f"{entity.name} is a counterparty ({entity.kind}); its flows are not classified")
    if flow.direction == "in":
        raise ValueError(f"flow {flow.txid} is incoming to {entity.name}; only outflows are classified")
    name, asset, dec = entity.name, flow.asset, flow.decimals
    reasons: list[str] = []
    used: list[FactUsed] = []

    # Price state first: every later USD figure depends on it.
    price_ok = ctx.btc_usd is not None and not ctx.is_price_stale
    is_btc = asset.upper() in BTC_ASSETS
    asset_usd = ctx.asset_usd if ctx.asset_usd is not None else (ctx.btc_usd if is_btc else None)

    def result(verdict: str, severity: int, usd: float | None = None, attribution: str = "") -> Classification:
        return Classification(
            chain=flow.chain,
            txid=flow.txid,
            entity=name,
            verdict=verdict,
            severity=SEVERITIES[severity],
            reasons=tuple(reasons),
            out=flow.out,
            asset=asset,
            usd_value=usd,
            btc_usd=ctx.btc_usd if price_ok else None,
            hashprice_usd=ctx.hashprice_usd if price_ok else None,
            attribution=attribution,
            facts=tuple(used),
            created_at=now,
        )

    if provisional:
        reasons.append(
            f"spent from {_and([a.address for a in provisional])}: provisionally {name}'s ({provisional[0].source}); "
            f"counted as {name}'s until its behaviour confirms it or shows an exchange deposit"
        )

    # 1. internal
    self_value = sum(d.value for d in flow.destinations if d.attribution.kind == "self")
    moved = max(0, flow.out - self_value)
    if flow.out == 0 or moved == 0 or (flow.destinations and all(d.attribution.kind == "self" for d in flow.destinations)):
        reasons.append(_internal_reason(flow, entity))
        usd = flow.out / 10**dec * asset_usd if price_ok and asset_usd is not None else None
        return result("internal", 0, usd, "self")

    # 2. where the coins went
    dest = _destinations(flow, moved, name)
    usd_value = moved / 10**dec * asset_usd if price_ok and asset_usd is not None else None
    worth = f" (≈ {_money(usd_value)})" if usd_value is not None else ""
    reasons.append(f"{_amount(moved, dec, asset)}{worth} left {name}: {dest.split}")
    reasons.extend(dest.traced)
    reasons.extend(_price_reasons(ctx, price_ok))

    # Measures, acceleration, severity.
    m = _measure(flow, entity, ctx, history, moved, price_ok=price_ok, is_btc=is_btc, reasons=reasons, used=used)
    accelerating = _acceleration(history, usd_value, moved, thresholds, flow, reasons)
    t = thresholds
    usd_step = _step(usd_value, t.usd_notice, t.usd_warning, t.usd_critical)
    share_step = _step(m.share, t.share_notice, t.share_warning, t.share_critical)
    prod_step = _step(m.multiple, t.production_notice, t.production_warning, t.production_critical)
    severity = min(3, max(usd_step, share_step, prod_step) + (1 if accelerating else 0))

    # 3. the verdict
    verdict, level, why = _verdict(entity, dest, m, severity, usd_value, t, is_btc=is_btc, asset=asset)
    reasons.insert(1, why)
    return result(verdict, level, usd_value, dest.main_attr)


def _internal_reason(flow: EntityFlow, entity: Entity) -> str:
    """The sentence of an internal move: a provisional sweep, everything back as change, or to own addresses."""
    name, asset, dec = entity.name, flow.asset, flow.decimals
    watching = {a.address for a in entity.addresses if a.learned_by == "provisional"}
    swept = [d for d in flow.destinations if d.attribution.kind == "self" and d.address in watching]
    if swept:
        return (
            f"probable consolidation; watching the destination: {_amount(sum(d.value for d in swept), dec, asset)} "
            f"went to {_and([d.address or '' for d in swept])}, paid by {name}'s inputs alone without change; "
            "watched provisionally as {name}'s: an exchange deposit address looks the same until its coins move".replace(
                "{name}", name
            )
        )
    if flow.out == 0:
        return (
            f"all value stayed with {name}: {_amount(flow.spent, dec, asset)} spent, "
            f"{_amount(flow.change, dec, asset)} came back as change, fee {_amount(flow.fee_share, dec, asset)}"
        )
    return f"{_amount(flow.out, dec, asset)} went to {name}'s own addresses (attributed self)"


@dataclass(frozen=True)
class _Destinations:
    """Where the coins that left went: the main group and attribution, the split sentence, hop tracing."""

    main_group: str
    main_attr: str
    split: str
    traced: tuple[str, ...]


def _destinations(flow: EntityFlow, moved: int, name: str) -> _Destinations:
    """Group the destinations (traced shares count where they ended) and pick the main one."""
    asset, dec = flow.asset, flow.decimals
    groups: dict[str, int] = dict.fromkeys(_GROUP_ORDER, 0)
    by_attr: dict[str, tuple[str, int]] = {}
    traced_sale = False
    traced: list[str] = []

    def add(attribution: str, value: int) -> None:
        kind = attribution.partition(":")[0]
        if kind == "self" or value <= 0:
            return
        group = "sale" if kind in _SALE_KINDS else kind if kind in groups else "unknown"
        groups[group] += value
        prev = by_attr.get(attribution, (group, 0))
        by_attr[attribution] = (group, prev[1] + value)

    for d in flow.destinations:
        if d.shares:
            for s in d.shares:
                add(s.attribution, s.value)
            add("unknown", d.value - sum(s.value for s in d.shares))
            traced_sale = traced_sale or d.attribution.kind in _SALE_KINDS
            path = d.attribution.path
            via = (
                f" (largest part to {d.attribution} via {' → '.join(t[:12] + '…' for t in path)})"
                if 0 < len(path) <= 4
                else f" (largest part to {d.attribution} via {path[0][:12]}… → … → {path[-1][:12]}…, {len(path)} txs)"
                if path
                else ""
            )
            traced.append(
                f"hop tracing of {d.address} ({_amount(d.value, dec, asset)}): "
                + trace_breakdown(d.value, d.shares, entity=name, decimals=dec, asset=asset)
                + via
            )
        else:
            add(str(d.attribution), d.value)
    if not by_attr:
        groups["unknown"] = moved
        by_attr["unknown"] = ("unknown", moved)
    main_group = max(_GROUP_ORDER, key=lambda g: (groups[g], -_GROUP_ORDER.index(g)))
    if traced_sale and groups["sale"] > 0:
        main_group = "sale"
    main_attr = max((a for a, (g, _) in by_attr.items() if g == main_group), key=lambda a: by_attr[a][1])
    total_dest = sum(groups.values()) or 1
    split = ", ".join(f"{v / total_dest:.0%} to {a}" for a, (_, v) in sorted(by_attr.items(), key=lambda kv: -kv[1][1]))
    return _Destinations(main_group, main_attr, split, tuple(traced))


def _price_reasons(ctx: MarketContext, price_ok: bool) -> list[str]:
    """The price sentence: always where the price came from and for when, or why there is none."""
    out = []
    if price_ok and ctx.btc_usd is not None:
        out.append(f"BTC price {_price(ctx.btc_usd)}: {price_basis(ctx)}")
    if ctx.btc_usd is None:
        out.append(
            "no BTC price for the transaction time: the USD value, the cost comparison and the USD severity step are skipped"
        )
    elif ctx.is_price_stale:
        age = _age(ctx.at - ctx.price_at) if ctx.price_at is not None else "an unknown time"
        when = "before" if ctx.price_at is not None and ctx.price_at <= ctx.at else "after"
        out.append(
            f"price {_price(ctx.btc_usd)} ({price_basis(ctx)}) is stale: observed {age} "
            f"{when} the transaction, beyond the staleness bound, so the USD value, the cost comparison "
            f"and the USD severity step are skipped"
        )
    return out


@dataclass(frozen=True)
class _Measures:
    """The flow measured against the entity's dated figures."""

    multiple: float | None  # 30-day total / monthly production
    share: float | None  # 30-day total / holdings
    below: bool | None  # price below cash cost (None: not comparable)


def _measure(
    flow: EntityFlow,
    entity: Entity,
    ctx: MarketContext,
    history: FlowHistory,
    moved: int,
    *,
    price_ok: bool,
    is_btc: bool,
    reasons: list[str],
    used: list[FactUsed],
) -> _Measures:
    """Each figure is the profile point in force on the flow's day; appends its sentences and the facts used."""
    name, asset, dec, profile = entity.name, flow.asset, flow.decimals, entity.profile
    day = day_of(flow.block_time if flow.block_time is not None else ctx.at)
    total_30d = history.out_30d + moved
    total_coins = total_30d / 10**dec
    prod = fact_at(profile, "monthly_production_btc", day)
    cost = fact_at(profile, "cash_cost_usd", day)
    hold = holdings_at(profile, history, day)
    multiple = total_coins / prod.fact.value if is_btc and prod is not None and prod.fact.value > 0 else None
    share = total_coins / hold.btc if is_btc and hold is not None and hold.btc > 0 else None
    if prod is not None:
        used.append(
            FactUsed("monthly_production_btc", prod.fact.value, prod.fact.as_of, prod.fact.source, is_later=prod.is_later)
        )
    if hold is not None:
        used.append(
            FactUsed(
                "holdings_btc",
                hold.btc,
                hold.use.fact.as_of,
                hold.use.fact.source,
                reported=hold.reported_btc,
                is_later=hold.use.is_later,
            )
        )
    if multiple is not None and prod is not None:
        reasons.append(
            f"{_amount(total_30d, dec, asset)} in 30 days is {multiple:.1f}× {name}'s monthly production of "
            f"{_num(prod.fact.value)} BTC ({_cite(prod)})"
        )
    if hold is not None and (share is not None or is_btc):
        held = _holdings_text(name, hold)
        if share is not None:
            reasons.append(f"{_amount(total_30d, dec, asset)} in 30 days is {share:.1%} of {held}")
        else:
            reasons.append(f"{held}: these coins came in since")
    if not is_btc:
        reasons.append(f"{asset} is not BTC: production and holdings comparisons are skipped")

    below: bool | None = None
    if price_ok and ctx.btc_usd is not None and cost is not None and cost.fact.value > 0 and entity.kind != "sovereign":
        used.append(FactUsed("cash_cost_usd", cost.fact.value, cost.fact.as_of, cost.fact.source, is_later=cost.is_later))
        gap = (ctx.btc_usd - cost.fact.value) / cost.fact.value
        below = gap < 0
        whose = f"{name}'s cash cost {_price(cost.fact.value)} ({_cite(cost)}"
        whose += f"; sector average of listed miners, not {name}'s own)" if is_sector_default(cost.fact) else ")"
        reasons.append(f"price {_price(ctx.btc_usd)} is {abs(gap):.1%} {'below' if below else 'above'} {whose}")
    elif price_ok and cost is None and entity.kind == "miner":
        reasons.append(f"no cash-cost figure for {name}: the price cannot be compared with its cost")
    if entity.kind == "miner":
        hp = _hashprice_reason(entity, ctx, day, used)
        if hp:
            reasons.append(hp)
    return _Measures(multiple, share, below)


def _acceleration(
    history: FlowHistory, usd_value: float | None, moved: int, t: Thresholds, flow: EntityFlow, reasons: list[str]
) -> bool:
    """Whether selling accelerates: in USD when this flow and enough earlier ones have dollar sizes, else in coins."""
    recent_usd = history.recent_usd[-t.acceleration_window :]
    fmt: Callable[[float], str]
    if usd_value is not None and len(recent_usd) >= t.acceleration_min_count:
        prev_sizes, this_size, fmt = recent_usd, usd_value, _money
    else:
        prev_sizes, this_size = history.recent_out[-t.acceleration_window :], moved
        fmt = lambda units: _amount(int(units), flow.decimals, flow.asset)  # noqa: E731
    if len(prev_sizes) >= t.acceleration_min_count:
        med = statistics.median(prev_sizes)
        if med > 0 and this_size >= t.acceleration_factor * med:
            reasons.append(
                f"{fmt(this_size)} is {this_size / med:.1f}× the median of the previous {len(prev_sizes)} "
                f"transfers ({fmt(med)}): selling accelerates"
            )
            return True
    return False


def _verdict(
    entity: Entity,
    dest: _Destinations,
    m: _Measures,
    severity: int,
    usd_value: float | None,
    t: Thresholds,
    *,
    is_btc: bool,
    asset: str,
) -> tuple[str, int, str]:
    """(verdict, severity, the sentence that explains it) by precedence: non-sale groups, sovereign, miner sale."""
    name, profile, main_attr = entity.name, entity.profile, dest.main_attr
    multiple, share, below = m.multiple, m.share, m.below
    # non-sale groups
    if dest.main_group == "custodian":
        return "custody_move", min(severity, 2), f"to {main_attr}, a custodian: custody, a sale is not implied"
    if dest.main_group == "entity":
        other = main_attr.partition(":")[2]
        return (
            "unknown_transfer",
            severity,
            f"to {other}, another tracked entity: not a sale by itself; {other}'s own flows are classified separately",
        )
    if dest.main_group == "unknown":
        return (
            "unknown_transfer",
            severity,
            "destination not attributed yet (unknown): hop tracing may attribute it and update this verdict",
        )

    # sovereign sale
    if entity.kind == "sovereign":
        return (
            "sovereign_sale",
            severity,
            f"{name} is a sovereign sending to {main_attr}: coins sent to an exchange or OTC desk are usually sold",
        )

    # miner (or other tracked treasury) sale
    tags = set(profile.strategy_tags)
    routine = multiple <= t.production_multiple if multiple is not None else None
    if multiple is not None and multiple > t.production_multiple:
        large, why_large = True, f"beyond {t.production_multiple:g}× monthly production"
    elif share is not None and share >= t.large_share_of_holdings:
        large, why_large = True, f"at least {t.large_share_of_holdings:.0%} of holdings"
    elif multiple is not None or share is not None:
        large, why_large = False, ""
    elif usd_value is not None:
        large = usd_value >= t.large_usd_fallback
        why_large = f"no production or holdings figure, and at least {_money(t.large_usd_fallback)}"
    else:
        # Nothing to measure the size against: err towards the alerting verdicts, and say so.
        large, why_large = True, "size not measurable without a price or a production or holdings figure, so taken as large"

    def tag_reason(tag: str) -> str:
        return f"{name} is tagged {tag} ({profile.strategy_source})" if profile.strategy_source else f"{name} is tagged {tag}"

    if routine:
        return (
            "production_sale",
            1 if below else 0,
            f"within {t.production_multiple:g}× monthly production over 30 days: a routine sale of production",
        )
    conv = sorted(tags & CONVERTIBLE_TAGS)
    basis = "at or above cost" if below is False else "below cost" if below else "cost not comparable"
    if large and conv:
        return (
            "balance_sheet_sale",
            severity,
            f"a large sale ({why_large}) by a miner that sells BTC to buy back debt: {tag_reason(conv[0])}",
        )
    if large and tags & AI_SHIFT_TAGS:
        return (
            "reallocation_sale",
            severity,
            f"a large sale ({why_large}), {basis}, by a miner on the 'complete shift to AI' path, for which BTC is "
            f"no longer a core asset: an expected reallocation, not distress; {tag_reason('ai_shift')}",
        )
    if below:
        what = f"selling {'beyond production ' if multiple is not None else ''}below cash cost: distress"
        if tags & MINING_FOCUS_TAGS:
            # A miner that bets on mining through the cycle sells its stack only when it must.
            return (
                "distress_sale",
                min(3, max(1, severity) + 1),
                f"{what}, and a stronger signal for a miner on the 'stick to mining' path, which "
                f"sells beyond production only under pressure; {tag_reason('mining_focus')}",
            )
        if tags & DUAL_TRACK_TAGS:
            what += f", though a miner on the 'walk on two legs' path may also be funding AI/HPC; {tag_reason('dual_track')}"
        return "distress_sale", max(1, severity), what
    if large and tags & DUAL_TRACK_TAGS:
        return (
            "reallocation_sale",
            severity,
            f"a large sale ({why_large}), {basis}, by a miner on the 'walk on two legs' path (keeps BTC, funds "
            f"AI/HPC): a reallocation; {tag_reason('dual_track')}",
        )
    if large and tags & AI_HPC_TAGS:
        return (
            "reallocation_sale",
            severity,
            f"a large sale ({why_large}), {basis}, by a miner pivoting to AI/HPC: {tag_reason('ai_hpc_pivot')}",
        )
    if large and tags & MINING_FOCUS_TAGS:
        return (
            "strategic_sale",
            severity,
            f"a large sale ({why_large}), {basis}, by a miner on the 'stick to mining' path, which does not usually "
            f"sell its holdings: a treasury reallocation worth watching; {tag_reason('mining_focus')}",
        )
    if large:
        return (
            "strategic_sale",
            severity,
            f"a large sale ({why_large}), {basis}, with no known strategy tag: a treasury reallocation",
        )
    if not is_btc:
        presumed = f"a {asset} transfer worth less than {_money(t.large_usd_fallback)}"
    elif share is not None:
        presumed = (
            f"no monthly production figure; {share:.1%} of holdings is under the {t.large_share_of_holdings:.0%} large-sale bar"
        )
    else:
        presumed = f"no production or holdings figure and the value is under {_money(t.large_usd_fallback)}"
    return "production_sale", 1 if below else 0, f"{presumed}: treated as a routine sale of production"


def _holdings_text(name: str, hold: Holdings) -> str:
    """'MARA's holdings of ≈ 37,867 BTC: 53,000 BTC reported (source, as of ...), less 15,133.00 BTC seen leaving since'."""
    reported = f"{_num(hold.reported_btc)} BTC reported ({_cite(hold.use)})"
    if not hold.is_rolled:
        return f"{name}'s holdings of {reported}"
    est = f"≈ {hold.btc:,.0f} BTC" if hold.btc >= 100 else f"≈ {hold.btc:,.2f} BTC"
    return f"{name}'s holdings of {est}: {reported}, less {_amount(hold.left, 8, 'BTC')} seen leaving since"


def _hashprice_reason(entity: Entity, ctx: MarketContext, day: str, used: list[FactUsed]) -> str | None:
    if ctx.hashprice_usd is None or ctx.is_price_stale:
        return None
    text = f"hashprice ${ctx.hashprice_usd:,.2f}/PH/day"
    if ctx.difficulty and ctx.subsidy_sat is not None and ctx.btc_usd is not None:
        fees = ctx.avg_fees_sat or 0
        per_day = 144 * (ctx.subsidy_sat + fees) / SATS_PER_BTC
        text += (
            f" (difficulty {ctx.difficulty / 1e12:,.1f} T, subsidy {_amount(ctx.subsidy_sat, 8, 'BTC')} + fees "
            f"{_amount(fees, 8, 'BTC')} per block = {per_day:,.2f} BTC a day to the network, price {_price(ctx.btc_usd)})"
        )
    eff = fact_at(entity.profile, "efficiency_j_th", day)
    if eff is not None and eff.fact.value > 0:
        used.append(FactUsed("efficiency_j_th", eff.fact.value, eff.fact.as_of, eff.fact.source, is_later=eff.is_later))
        text += (
            f"; at {_num(eff.fact.value)} J/TH ({_cite(eff)}) {entity.name}'s fleet breaks even at "
            f"${breakeven_power_usd_per_kwh(ctx.hashprice_usd, eff.fact.value):.3f}/kWh"
        )
    return text
