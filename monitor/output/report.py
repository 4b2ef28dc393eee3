"""The report: one self-contained HTML page (charts inlined as PNG) and single PNG charts, from storage only.

`build_report(store, ...)` returns the page; `render_png(store, ...)` one chart for a Slack message or an
email digest; `summarize_entities(store, ...)` the per-entity figures both use (also handy for a demo's
summary table); `write_report(db, out, ...)` is what a `report` CLI command calls.

What the page shows, per tracked entity with flows (watched miners, sovereigns, `other`):
- the on-chain balance over time with the BTC price on a second axis, each outflow marked and coloured by
  its verdict (`VERDICT_STYLES`, below), retracted ones as grey crosses, unconfirmed ones hollow;
- 30-day outflow bars (consecutive 30-day windows ending at the end of the period, stacked by verdict)
  against the monthly production of the entity's profile, with its source, and the classifier's
  routine bound (1.5× production by default);
- a table of its outflows and internal moves with verdict, severity, amounts, destinations and reasons.
Then the scenario table (hashprice and miners below cash cost at each price scenario, at the difficulty
and fees of the newest stored classification context), the miner view when blocks were scanned
(`miner_view_section`: production by pool, tracked miners measured vs reported, miners' outflows by
destination kind, miner-to-exchange total and the Miner Position Index), and every alert with its reasons.

Balance over time. The balance is the running sum of the entity's confirmed flows (`received + change −
spent` per transaction; replaced and orphaned ones are left out). It is *anchored at the latest balance
snapshot* when every active address of the entity has one: the curve is shifted so that it ends at the
sum of those snapshots, which stays right when older history was not backfilled. Otherwise it is
*cumulative from zero*, which is the on-chain balance only when the whole history was fetched. The page
says which basis each chart uses.

Prices come from the caller (`prices=`), else from the daily (then hourly) candles cached in storage,
else from the prices stored with the classifications.

Verdict colours (Okabe-Ito, a palette readable with the common colour-vision deficiencies) each come with
their own marker shape, so no verdict depends on colour alone:
    distress_sale      vermillion      #D55E00  down triangle
    balance_sheet_sale reddish purple  #CC79A7  diamond
    reallocation_sale  orange          #E69F00  square
    strategic_sale     yellow          #F0E442  up triangle (dark edge)
    production_sale    bluish green    #009E73  circle
    sovereign_sale     blue            #0072B2  plus (filled)
    custody_move       sky blue        #56B4E9  hexagon
    unknown_transfer   grey            #999999  star
    internal           black           #000000  small dot
    retracted          grey cross (x), whatever the verdict was

Charts are drawn with matplotlib's Agg canvas, set explicitly per figure (`FigureCanvasAgg`, no pyplot
and no global backend switch), with its bundled DejaVu fonts; the page has no external CSS, JS, font or
image. Every string that comes from the chain, the config or the store is escaped (`html.escape`) and
`$` is escaped in chart text so matplotlib never parses it as mathtext.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from monitor.bundled import ASIC_EFFICIENCIES, SCENARIO_PRICES, short_source
from monitor.clock import iso
from monitor.core.classify import Thresholds
from monitor.core.hashprice import default_scenario_prices
from monitor.core.hashprice import scenarios as price_scenarios
from monitor.model import SALE_VERDICTS, SATS_PER_BTC, Entity, Profile, severity_rank
from storage import Store
from storage.alerts import alert_rows
from storage.prices import candles_between
from storage.reads import entity_summaries, flow_rows

__all__ = [
    "format_usd",
    "VERDICT_STYLES",
    "RETRACTED_STYLE",
    "EntitySummary",
    "summarize_entities",
    "build_report",
    "miner_view_section",
    "mpi_summary",
    "render_png",
    "write_report",
    "REPORT_FORMATS",
    "entity_histories",
    "price_series",
    "scenario_html",
    "is_retracted",
]


@dataclass(frozen=True)
class VerdictStyle:
    """How a verdict is drawn: colour (hex), matplotlib marker, and a short label."""

    colour: str
    marker: str
    label: str
    edge: str = "#000000"


#: The fixed verdict → colour/marker map (see the module docstring).
VERDICT_STYLES: dict[str, VerdictStyle] = {
    "distress_sale": VerdictStyle("#D55E00", "v", "distress sale"),
    "balance_sheet_sale": VerdictStyle("#CC79A7", "D", "balance-sheet sale"),
    "reallocation_sale": VerdictStyle("#E69F00", "s", "reallocation sale"),
    "strategic_sale": VerdictStyle("#F0E442", "^", "strategic sale"),
    "production_sale": VerdictStyle("#009E73", "o", "production sale"),
    "sovereign_sale": VerdictStyle("#0072B2", "P", "sovereign sale"),
    "custody_move": VerdictStyle("#56B4E9", "h", "custody move"),
    "unknown_transfer": VerdictStyle("#999999", "*", "unknown transfer"),
    "internal": VerdictStyle("#000000", ".", "internal"),
}
RETRACTED_STYLE = VerdictStyle("#777777", "x", "retracted (replaced / reorged out)", edge="#777777")
_UNCLASSIFIED = VerdictStyle("#BBBBBB", "o", "not classified")
_SEVERITY_COLOURS = {"info": "#E8E8E8", "notice": "#CFE3F3", "warning": "#F6D9A8", "critical": "#F2B8A0"}
_TRACKED_KINDS = ("miner", "sovereign", "other")
_DPI = 100
_WIDE = (9.6, 3.9)
DAY = 86_400
_MAX_WINDOWS = 12


def _style(verdict: str | None) -> VerdictStyle:
    return VERDICT_STYLES.get(verdict or "", _UNCLASSIFIED)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _mpl(text: str) -> str:
    # A '$' pair would start matplotlib mathtext (and a malformed one raises); '\$' is a literal '$' in
    # plain text, and once no '$' is unescaped the whole string is plain text (backslashes stay literal).
    return str(text).replace("$", r"\$")


def _btc(units: int | float) -> str:
    return f"{units / SATS_PER_BTC:,.2f}"


def format_usd(v: float | None) -> str:
    """Dollars for a reader: $1.23B, $4.5M, $678; – when unknown (the report and the dashboard)."""
    if v is None:
        return "–"
    if abs(v) >= 1e9:
        return f"${v / 1e9:,.2f}B"
    if abs(v) >= 1e6:
        return f"${v / 1e6:,.1f}M"
    return f"${v:,.0f}"


def _date(t: int | None) -> str:
    return iso(t)[:10] if t is not None else "–"


def _when(t: int | None) -> str:
    return iso(t).replace("T", " ").replace("Z", " UTC") if t is not None else "–"


def _dt_of(t: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC)


# --- data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntitySummary:
    """Per-entity figures over a period (amounts in base units, active classifications only)."""

    name: str
    kind: str
    balance_units: int  # at the end of the data (snapshot-anchored or cumulative, see `balance_basis`)
    balance_basis: str  # "snapshot" | "flows"
    out_units: int  # outflows to others in the period (sales, custody, unknown)
    sold_units: int  # outflows with a sale verdict
    sold_usd: float
    custody_units: int
    internal: int  # internal moves in the period
    received_units: int  # received in the period
    verdicts: dict[str, int] = field(default_factory=dict)  # active classifications in the period
    max_severity: str | None = None
    retracted: int = 0
    flows: int = 0


@dataclass
class _EntityData:
    name: str
    kind: str
    note: str
    profile: Profile
    rows: list[dict[str, Any]]  # every flow of the entity, oldest first
    anchored_end: int | None  # sum of latest snapshots when every active address has one

    def at(self, r: dict[str, Any]) -> int:
        return r["block_time"] if r["block_time"] is not None else r["first_seen"]

    def in_period(self, since: int | None, until: int | None) -> list[dict[str, Any]]:
        return [r for r in self.rows if (since is None or self.at(r) >= since) and (until is None or self.at(r) < until)]

    def balance_series(self) -> tuple[list[tuple[int, int]], str]:
        """[(time, balance after the flow)] of confirmed flows, and the basis ('snapshot' or 'flows')."""
        confirmed = [r for r in self.rows if r["status"] == "confirmed"]
        nets = [(self.at(r), r["received_units"] + r["change_units"] - r["spent_units"]) for r in confirmed]
        total = sum(n for _, n in nets)
        start, basis = (self.anchored_end - total, "snapshot") if self.anchored_end is not None else (0, "flows")
        out, bal = [], start
        for t, n in nets:
            bal += n
            out.append((t, bal))
        return out, basis


def _is_retracted(r: dict[str, Any]) -> bool:
    c = r.get("classification")
    return r["status"] in ("orphaned", "replaced") or (c is not None and c["status"] == "retracted")


def _load(store: Store, entity: str | None) -> list[_EntityData]:
    """Tracked entities (or the one asked for) that have flows, with all their flows."""
    rows_by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in flow_rows(store, entity=entity):
        rows_by[r["entity"]].append(r)
    summaries = {s["name"]: s for s in entity_summaries(store)}
    out = []
    for e in store.entity_rows():
        name = e["name"]
        if entity is not None and name != entity:
            continue
        if entity is None and not (e["watch"] and e["kind"] in _TRACKED_KINDS):
            continue
        if not rows_by.get(name):
            continue
        s = summaries.get(name, {})
        anchored = s.get("addresses", 0) > 0 and s.get("addresses_with_balance") == s.get("addresses")
        out.append(
            _EntityData(
                name,
                e["kind"],
                e["note"] or "",
                store.entity_profile(name),
                rows_by[name],
                s.get("balance_units") if anchored else None,
            )
        )
    return out


def entity_histories(store: Store, entity: str | None = None) -> list[_EntityData]:
    """Tracked entities (or the one asked for) that have flows, each with all its flows and balance series."""
    return _load(store, entity)


def is_retracted(row: dict[str, Any]) -> bool:
    """True when a stored flow row was replaced or reorged out, or its classification retracted."""
    return _is_retracted(row)


def _summary(d: _EntityData, since: int | None, until: int | None) -> EntitySummary:
    series, basis = d.balance_series()
    period = d.in_period(since, until)
    verdicts: Counter[str] = Counter()
    out = sold = custody = received = internal = retracted = 0
    sold_usd = 0.0
    worst = None
    for r in period:
        c = r["classification"]
        received += r["received_units"]
        if _is_retracted(r):
            retracted += 1
            continue
        if c is None:
            continue
        verdicts[c["verdict"]] += 1
        if worst is None or severity_rank(c["severity"]) > severity_rank(worst):
            worst = c["severity"]
        if c["verdict"] == "internal":
            internal += 1
            continue
        out += r["out_units"]
        if c["verdict"] in SALE_VERDICTS:
            sold += r["out_units"]
            sold_usd += c["usd_value"] or 0.0
        elif c["verdict"] == "custody_move":
            custody += r["out_units"]
    return EntitySummary(
        name=d.name,
        kind=d.kind,
        balance_units=series[-1][1] if series else (d.anchored_end or 0),
        balance_basis=basis,
        out_units=out,
        sold_units=sold,
        sold_usd=sold_usd,
        custody_units=custody,
        internal=internal,
        received_units=received,
        verdicts=dict(verdicts),
        max_severity=worst,
        retracted=retracted,
        flows=len(period),
    )


def summarize_entities(
    store: Store, *, since: int | None = None, until: int | None = None, entity: str | None = None
) -> list[EntitySummary]:
    """Per tracked entity with flows: balance, sold/custody/internal over [since, until), verdict counts."""
    return [_summary(d, since, until) for d in _load(store, entity)]


def _price_series(
    store: Store, lo: int, hi: int, data: Sequence[_EntityData], prices: Sequence[tuple[int, float]] | None
) -> list[tuple[int, float]]:
    if prices is not None:
        return sorted((int(t), float(p)) for t, p in prices if lo - DAY <= t <= hi + DAY)
    for granularity in (DAY, 3600):
        candles = candles_between(store, "BTC-USD", lo - granularity, hi + granularity, granularity)
        if candles:
            # A candle's close is the price at its end.
            return [(c.start + c.granularity, c.close) for c in candles]
    pts = {}
    for d in data:
        for r in d.rows:
            c = r["classification"]
            if c is not None and c["btc_usd"]:
                pts[d.at(r)] = c["btc_usd"]
    return sorted(pts.items())


def price_series(store: Store, lo: int, hi: int, data: Sequence[_EntityData]) -> list[tuple[int, float]]:
    """(Unix time, BTC/USD) points over [lo, hi]: cached daily or hourly candles, else classification prices."""
    return _price_series(store, lo, hi, data, None)


def scenario_html(store: Store) -> str:
    """The scenario table (hashprice, breakeven, miners below cost per price case) as an HTML fragment."""
    data = _load(store, None)
    lo, hi = _period(data, None, None)
    series = _price_series(store, lo, hi, data, None)
    return _scenario_section(store, data, None, series[-1] if series else None)


def _period(data: Sequence[_EntityData], since: int | None, until: int | None) -> tuple[int, int]:
    times = [d.at(r) for d in data for r in d.rows]
    lo = since if since is not None else (min(times) if times else 0)
    hi = until if until is not None else (max(times) if times else lo + DAY)
    return lo, max(hi, lo + 3600)


# --- charts -------------------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # the Agg canvas, explicitly: no pyplot, no global backend
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _thousands(x: float, _pos: Any = None) -> str:
    return f"{x:,.0f}"


def _balance_chart(d: _EntityData, lo: int, hi: int, prices: list[tuple[int, float]]) -> bytes:
    series, basis = d.balance_series()
    fig = Figure(figsize=_WIDE)
    ax = fig.add_axes((0.075, 0.25, 0.84, 0.63))
    # The balance entering the period, then every change inside it.
    before = [b for t, b in series if t < lo]
    inside = [(t, b) for t, b in series if lo <= t <= hi]
    end = hi + max(3600, (hi - lo) // 60)  # a little room so the last marker is not cut in half
    xs = [lo] + [t for t, _ in inside] + [end]
    start = before[-1] if before else 0
    ys = [start] + [b for _, b in inside] + [inside[-1][1] if inside else start]
    ax.step([_dt_of(t) for t in xs], [y / SATS_PER_BTC for y in ys], where="post", color="#222222", lw=1.6, zorder=3)
    handles: list[Any] = [Line2D([], [], color="#222222", lw=1.6, label="on-chain balance, BTC (left)")]
    if prices:
        ax2 = ax.twinx()
        ax2.plot([_dt_of(t) for t, _ in prices], [p for _, p in prices], color="#6F6F6F", lw=1.0, ls="--", zorder=1)
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"${v:,.0f}"))
        ax2.tick_params(labelsize=8, colors="#555555")
        handles.append(Line2D([], [], color="#6F6F6F", lw=1.0, ls="--", label="BTC/USD (right)"))
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
    balance_after = dict(series)
    outs = [r for r in d.rows if lo <= d.at(r) <= hi and (r["direction"] == "out" or _is_retracted(r))]
    biggest = max((r["out_units"] for r in outs), default=0) or 1
    seen: dict[str, VerdictStyle] = {}
    for r in outs:
        c = r["classification"]
        t = d.at(r)
        y = balance_after.get(t)
        if y is None:  # unconfirmed or retracted: mark it on the curve at its time
            prior = [b for s, b in series if s <= t]
            y = prior[-1] if prior else start
        size = 24 + 170 * math.sqrt(r["out_units"] / biggest)
        if _is_retracted(r):
            st = RETRACTED_STYLE
            ax.scatter([_dt_of(t)], [y / SATS_PER_BTC], s=size, marker="x", c=st.colour, linewidths=1.5, zorder=5)
        else:
            st = _style(c["verdict"] if c else None)
            hollow = r["status"] == "mempool"
            ax.scatter(
                [_dt_of(t)],
                [y / SATS_PER_BTC],
                s=size,
                marker=st.marker,
                zorder=6,
                linewidths=0.8,
                facecolors="none" if hollow else st.colour,
                edgecolors=st.colour if hollow else st.edge,
            )
        seen[st.label] = st
    for st in seen.values():
        if st is RETRACTED_STYLE:
            handles.append(Line2D([], [], ls="", marker="x", color=st.colour, markersize=7, label=st.label))
        else:
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker=st.marker,
                    markerfacecolor=st.colour,
                    markeredgecolor=st.edge,
                    markersize=7,
                    label=st.label,
                )
            )
    ax.set_xlim(_dt_of(lo), _dt_of(end))
    locator = AutoDateLocator(maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#E5E5E5", lw=0.6)
    ax.set_ylim(bottom=0)
    how = "anchored at the latest balance snapshot" if basis == "snapshot" else "cumulative from zero (sum of stored flows)"
    ax.set_title(
        _mpl(f"{d.name}: on-chain balance and BTC price; outflows marked by verdict (balance {how})"), fontsize=9.5, loc="left"
    )
    fig.legend(
        handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=7.5, frameon=False, bbox_to_anchor=(0.5, 0.0)
    )
    return _png(fig)


def _windows(lo: int, hi: int) -> list[tuple[int, int]]:
    out, end = [], hi
    while end > lo and len(out) < _MAX_WINDOWS:
        out.append((end - 30 * DAY, end))
        end -= 30 * DAY
    return out[::-1]


def _outflow_bars(d: _EntityData, lo: int, hi: int, multiple: float) -> bytes:
    wins = _windows(lo, hi)
    stacks: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(wins))
    for r in d.rows:
        c = r["classification"]
        if r["direction"] != "out" or c is None or _is_retracted(r) or c["verdict"] == "internal":
            continue
        t = d.at(r)
        for i, (a, b) in enumerate(wins):
            if a <= t < b or (i == len(wins) - 1 and t == b):
                stacks[c["verdict"]][i] += r["out_units"] / SATS_PER_BTC
    fig = Figure(figsize=(9.6, 3.4))
    ax = fig.add_axes((0.075, 0.27, 0.9, 0.6))
    xs = list(range(len(wins)))
    bottom = [0.0] * len(wins)
    handles: list[Any] = []
    for verdict in VERDICT_STYLES:
        if verdict not in stacks:
            continue
        st = VERDICT_STYLES[verdict]
        ax.bar(xs, stacks[verdict], bottom=bottom, color=st.colour, edgecolor="#333333", lw=0.5, width=0.7)
        bottom = [b + v for b, v in zip(bottom, stacks[verdict])]
        handles.append(Patch(facecolor=st.colour, edgecolor="#333333", label=st.label))
    prod = d.profile.monthly_production_btc
    if prod is not None and prod.value > 0:
        ax.axhline(prod.value, color="#000000", lw=1.2)
        ax.axhline(prod.value * multiple, color="#000000", lw=1.0, ls="--")
        handles.append(Line2D([], [], color="#000000", lw=1.2, label=_mpl(f"monthly production {prod.value:,.2f} BTC")))
        handles.append(Line2D([], [], color="#000000", lw=1.0, ls="--", label=f"{multiple:g}× production (routine bound)"))
        note = f"production: {short_source(prod)}, as of {prod.as_of}"
    else:
        note = "no monthly production figure in the profile"
    ax.set_xticks(xs, [f"{_date(a)}\n→ {_date(b)}" for a, b in wins], fontsize=7)
    ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", color="#E5E5E5", lw=0.6)
    ax.set_ylabel("BTC", fontsize=8)
    ax.set_axisbelow(True)
    ax.set_title(_mpl(f"{d.name}: outflows per 30 days by verdict ({note})"[:160]), fontsize=9, loc="left")
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=7.5, frameon=False)
    return _png(fig)


def _overview_png(data: Sequence[_EntityData], since: int | None, until: int | None, lo: int, hi: int) -> bytes:
    per: list[tuple[str, dict[str, float]]] = []
    for d in data:
        amounts: dict[str, float] = defaultdict(float)
        for r in d.in_period(since, until):
            c = r["classification"]
            if r["direction"] == "out" and c is not None and not _is_retracted(r) and c["verdict"] != "internal":
                amounts[c["verdict"]] += r["out_units"] / SATS_PER_BTC
        per.append((d.name, amounts))
    height = max(2.2, 1.2 + 0.42 * len(per))
    fig = Figure(figsize=(9.6, height))
    bottom_margin = 0.75 / height
    ax = fig.add_axes((0.17, bottom_margin + 0.06, 0.8, 1 - bottom_margin - 0.06 - 0.45 / height))
    ys = list(range(len(per)))[::-1]
    left = [0.0] * len(per)
    handles: list[Any] = []
    for verdict, st in VERDICT_STYLES.items():
        vals = [a.get(verdict, 0.0) for _, a in per]
        if not any(vals):
            continue
        ax.barh(ys, vals, left=left, color=st.colour, edgecolor="#333333", lw=0.5, height=0.6)
        left = [x + v for x, v in zip(left, vals)]
        handles.append(Patch(facecolor=st.colour, edgecolor="#333333", label=st.label))
    ax.set_yticks(ys, [_mpl(n) for n, _ in per], fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#E5E5E5", lw=0.6)
    ax.set_xlabel("BTC sent out", fontsize=8)
    ax.set_axisbelow(True)
    ax.set_title(f"Outflows by verdict, {_date(lo)} to {_date(hi)}", fontsize=9.5, loc="left")
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=7.5, frameon=False)
    return _png(fig)


# --- HTML ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1080px;padding:0 18px 40px;
color:#1d1d1d;background:#fff;font-size:14px;line-height:1.45}
h1{font-size:24px;margin:22px 0 4px}h2{font-size:19px;margin:34px 0 8px;border-bottom:2px solid #222;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.small{font-size:12px}
.banner{background:#FFF3C4;border:2px solid #B58900;padding:10px 14px;margin:14px 0;border-radius:4px}
.banner strong{font-size:16px}
table{border-collapse:collapse;width:100%;margin:8px 0 14px;font-size:12.5px}
th,td{border-bottom:1px solid #E3E3E3;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#F4F4F4;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.num .small{display:block;white-space:normal;min-width:14em}th{vertical-align:bottom}th.num{white-space:normal}
.chip{display:inline-block;padding:1px 7px;border-radius:9px;font-size:11.5px;white-space:nowrap;border:1px solid #444}
.sev{display:inline-block;padding:1px 6px;border-radius:3px;font-size:11.5px}
tr.retracted td{color:#888;text-decoration:line-through}tr.retracted td.keep{text-decoration:none}
ul.reasons{margin:0;padding-left:16px}ul.reasons li{margin:1px 0}
img{max-width:100%;height:auto;display:block;margin:6px 0}
nav{display:flex;flex-wrap:wrap;gap:2px 12px}code{font-size:12px}
.scroll{overflow-x:auto;max-width:100%;margin:8px 0 14px}.scroll table{margin:0}
details{margin:6px 0}details>summary{cursor:pointer;padding:3px 0}section.entity>details>summary{font-weight:600}
#alerts>details{border-bottom:1px solid #E3E3E3}
.legend span{margin-right:12px;white-space:nowrap}
"""


def _chip(verdict: str | None, retracted: bool = False) -> str:
    st = _style(verdict)
    text = _e(verdict or "not classified")
    if retracted:
        return f'<span class="chip" style="background:#fff;color:#666;border-style:dashed">{text} (retracted)</span>'
    r, g, b = (int(st.colour[i : i + 2], 16) for i in (1, 3, 5))
    ink = "#000" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "#fff"
    return f'<span class="chip" style="background:{st.colour};color:{ink}">{text}</span>'


def _sev(severity: str | None) -> str:
    if not severity:
        return "–"
    colour = _SEVERITY_COLOURS.get(severity, "#EEE")
    return f'<span class="sev" style="background:{colour}">{_e(severity)}</span>'


def _img(png: bytes, alt: str) -> str:
    from_png = _png_size(png)
    size = f' width="{from_png[0]}" height="{from_png[1]}"' if from_png else ""
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{_e(alt)}"{size}>'


def _png_size(png: bytes) -> tuple[int, int] | None:
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _reasons(reasons: Iterable[str]) -> str:
    items = "".join(f"<li>{_e(x)}</li>" for x in reasons)
    return f'<ul class="reasons">{items}</ul>' if items else "–"


def _fact(label: str, fact: Any) -> str:
    if fact is None:
        return f"<li>{_e(label)}: <span class='muted'>no figure</span></li>"
    note = f" — {_e(fact.note)}" if fact.note else ""
    return f"<li>{_e(label)}: <strong>{fact.value:,.2f}</strong> <span class='muted small'>({_e(fact.source)}, as of {_e(fact.as_of)}{note})</span></li>"


def _summary_table(summaries: Sequence[EntitySummary], ids: dict[str, str]) -> str:
    head = (
        "<tr><th>Entity</th><th>Kind</th><th class='num'>Balance, BTC</th><th class='num'>Sold, BTC</th>"
        "<th class='num'>Sold, USD</th><th class='num'>Custody, BTC</th><th class='num'>Internal</th>"
        "<th>Verdicts</th><th>Worst</th><th class='num'>Retracted</th></tr>"
    )
    body = []
    for s in summaries:
        chips = " ".join(f"{_chip(v)}&nbsp;×{n}" for v, n in sorted(s.verdicts.items(), key=lambda kv: -kv[1]))
        basis = "" if s.balance_basis == "snapshot" else "<span class='muted small'> (sum of flows)</span>"
        body.append(
            f"<tr><td><a href='#{ids[s.name]}'>{_e(s.name)}</a></td><td>{_e(s.kind)}</td>"
            f"<td class='num'>{_btc(s.balance_units)}{basis}</td><td class='num'>{_btc(s.sold_units)}</td>"
            f"<td class='num'>{format_usd(s.sold_usd)}</td><td class='num'>{_btc(s.custody_units)}</td>"
            f"<td class='num'>{s.internal}</td><td>{chips or '–'}</td><td>{_sev(s.max_severity)}</td>"
            f"<td class='num'>{s.retracted}</td></tr>"
        )
    return _table(head, body)


def _table(head: str, body: list[str]) -> str:
    """A table that scrolls sideways inside itself when it is wider than the page (phones)."""
    return f"<div class='scroll'><table>{head}{''.join(body)}</table></div>"


def _details(summary: str, body: str, *, is_open: bool) -> str:
    return f"<details{' open' if is_open else ''}><summary>{summary}</summary>{body}</details>"


def _flow_table(d: _EntityData, rows: list[dict[str, Any]], max_rows: int, *, full: bool = False) -> str:
    shown = [r for r in rows if r["direction"] != "in" or _is_retracted(r)]
    inflows = [r for r in rows if r["direction"] == "in" and not _is_retracted(r)]
    parts = []
    if inflows:
        parts.append(
            f"<p class='muted small'>{len(inflows)} incoming transaction(s) in the period, "
            f"{_btc(sum(r['received_units'] for r in inflows))} BTC received (not classified: only "
            "outflows and internal moves are).</p>"
        )
    if not shown:
        return "".join(parts) + "<p class='muted'>No outflows or internal moves in the period.</p>"
    cut = len(shown) > max_rows
    shown = shown[-max_rows:] if cut else shown
    head = (
        "<tr><th>Time (UTC)</th><th>Transaction</th><th>Verdict</th><th>Severity</th><th class='num'>Out, BTC</th>"
        "<th class='num'>USD</th><th>Destinations</th><th>Status</th><th>Reasons</th></tr>"
    )
    body = []
    for r in shown:
        c = r["classification"] or {}
        retracted = _is_retracted(r)
        dests = "<br>".join(f"{_e(x['attribution'])}: {_btc(x['value_units'])}" for x in r["destinations"]) or (
            "own addresses" if c.get("verdict") == "internal" else "–"
        )
        status = r["status"] + (f", classification v{c['version']} {c['status']}" if c else "")
        body.append(
            f"<tr class='{'retracted' if retracted else ''}'><td>{_e(_when(d.at(r)))}</td>"
            f"<td><code title='{_e(r['txid'])}'>{_e(r['txid'][:16])}…</code></td>"
            f"<td class='keep'>{_chip(c.get('verdict'), retracted)}</td><td class='keep'>{_sev(c.get('severity'))}</td>"
            f"<td class='num'>{_btc(r['out_units'])}</td><td class='num'>{format_usd(c.get('usd_value'))}</td>"
            f"<td class='small'>{dests}</td><td class='small keep'>{_e(status)}</td>"
            f"<td class='small'><details{' open' if full else ''}><summary>{len(c.get('reasons') or ())} reason(s)"
            f"</summary>{_reasons(c.get('reasons', ()))}</details></td></tr>"
        )
    note = f"<p class='muted small'>Only the newest {max_rows} rows are shown.</p>" if cut else ""
    return "".join(parts) + note + _table(head, body)


def _latest_context(data: Sequence[_EntityData]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    best = None
    for d in data:
        for r in d.rows:
            c = r["classification"]
            ctx = (c or {}).get("context") or {}
            if ctx.get("difficulty") and ctx.get("height") is not None:
                key = (ctx.get("at") or 0, c["created_at"])
                if best is None or key > best[0]:
                    best = (key, ctx, r)
    return (best[1], best[2]) if best else None


def _scenario_section(
    store: Store,
    data: Sequence[_EntityData],
    scenario_prices: Sequence[tuple[str, float]] | None,
    today: tuple[int, float] | None,
) -> str:
    found = _latest_context(data)
    if found is None:
        return "<p class='muted'>No stored classification carries a difficulty yet, so the scenario table cannot be computed.</p>"
    ctx, row = found
    miners = []
    for e in store.entity_rows():
        if e["kind"] != "miner" or not e["watch"]:
            continue
        miners.append(Entity(e["name"], "miner", profile=store.entity_profile(e["name"])))
    on_chain = {d.name for d in data}
    tracked = [m for m in miners if m.name in on_chain] or miners
    if scenario_prices is not None:
        prices = list(scenario_prices)
    else:
        fixed = default_scenario_prices()
        latest = [(f"latest price in the data (${today[1]:,.0f}, {_date(today[0])})", today[1])] if today else []
        prices = fixed[:2] + latest + fixed[2:]
    effs = [(label, f.value) for label, f in ASIC_EFFICIENCIES if f.value in (13.5, 16.0, 21.5)]
    result = price_scenarios(
        prices, ctx["difficulty"], ctx["height"], ctx.get("avg_fees_sat") or 0, [v for _, v in effs], tracked
    )
    quoted = {s.label: s.quoted_hashprice for s in SCENARIO_PRICES}
    head = (
        "<tr><th>Scenario</th><th class='num'>BTC/USD</th><th class='num'>Hashprice, $/PH/day</th>"
        + "".join(f"<th class='num'>Breakeven power at {v:g} J/TH ({_e(label)})</th>" for label, v in effs)
        + "<th>Tracked miners below cash cost</th></tr>"
    )
    body = []
    for s in result:
        q = quoted.get(s.label)
        qtext = f"<br><span class='muted small'>quoted: ${q.value:,.0f} ({_e(short_source(q))})</span>" if q else ""
        below = ", ".join(
            f"{_e(b.name)} (cost ${b.cash_cost.value:,.0f}, {b.gap_pct:.0f}% above the price)" for b in s.below_cost
        )
        body.append(
            f"<tr><td>{_e(s.label)}</td><td class='num'>${s.price:,.0f}</td><td class='num'>${s.hashprice:,.2f}{qtext}</td>"
            + "".join(f"<td class='num'>${kwh:.3f}/kWh</td>" for _, kwh in s.breakeven)
            + f"<td class='small'>{below or 'none'}</td></tr>"
        )
    sources = "; ".join(f"{_e(s.label)}: {_e(short_source(s.price))}" for s in SCENARIO_PRICES)
    costs = "; ".join(
        f"{_e(m.name)} ${m.profile.cash_cost_usd.value:,.0f} ({_e(short_source(m.profile.cash_cost_usd))})"
        for m in tracked
        if m.profile.cash_cost_usd is not None
    )
    return (
        f"<p>Hashprice at difficulty <strong>{ctx['difficulty'] / 1e12:,.2f} T</strong> (height {_e(ctx['height'])}, "
        f"average fees {(ctx.get('avg_fees_sat') or 0) / SATS_PER_BTC:.4f} BTC per block), from the newest stored "
        f"classification context (transaction <code>{_e(row['txid'][:16])}…</code>, {_e(_when(ctx.get('at')))}).</p>"
        + _table(head, body)
        + f"<p class='muted small'>Scenario prices: {sources}. Cash costs: {costs or 'none'}. Hashprice = 144 × (subsidy + "
        "fees) × price × 1e15 / (difficulty × 2^32 / 600); breakeven = hashprice / (J/TH × 24) (economics.md §2-3).</p>"
    )


def _alerts_section(store: Store, entity: str | None, since: int | None, until: int | None, *, full: bool = False) -> str:
    rows = [
        a
        for a in alert_rows(store)
        if (entity is None or a["entity"] == entity)
        and (since is None or a["created_at"] >= since)
        and (until is None or a["created_at"] < until)
    ]
    if not rows:
        return "<p class='muted'>No alerts stored for this period.</p>"
    head = (
        "<tr><th>#</th><th>Created (UTC)</th><th>Kind</th><th>Verdict</th><th>Severity</th>"
        "<th class='num'>BTC</th><th class='num'>USD</th><th>Delivery</th><th>Reasons</th></tr>"
    )
    by_entity: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in rows:
        by_entity[a["entity"] or "(none)"].append(a)
    groups = []
    for name, alerts in by_entity.items():
        body = []
        severities: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        usd = 0.0
        for a in alerts:
            flow = (a["payload"] or {}).get("flow") or {}
            c = flow.get("classification") or {}
            kinds[a["kind"]] += 1
            if c.get("severity"):
                severities[c["severity"]] += 1
            if a["kind"] == "new" and c.get("usd_value"):
                usd += c["usd_value"]
            changes = a["payload"].get("changes") or []
            delivery = ", ".join(f"{ch['channel']}: {ch['status']}" for ch in a["channels"]) or a["status"]
            why = "".join(f"<li><em>{_e(x)}</em></li>" for x in changes)
            reasons = _reasons(c.get("reasons", ()))
            if why:
                reasons = f'<ul class="reasons">{why}</ul>' + reasons
            body.append(
                f"<tr id='alert-{int(a['id'])}'><td class='num'>{int(a['id'])}</td><td>{_e(_when(a['created_at']))}</td>"
                f"<td>{_e(a['kind'])}</td><td>{_chip(c.get('verdict'), a['kind'] == 'retraction')}</td>"
                f"<td>{_sev(c.get('severity'))}</td><td class='num'>{_e(flow.get('out_amount', '–'))}</td>"
                f"<td class='num'>{format_usd(c.get('usd_value'))}</td><td class='small'>{_e(delivery)}</td>"
                f"<td class='small'><details{' open' if full else ''}><summary>{len(c.get('reasons') or ()) + len(changes)} "
                f"reason(s)</summary>{reasons}</details></td></tr>"
            )
        sev = ", ".join(f"{_sev(k)}&nbsp;×{severities[k]}" for k in sorted(severities, key=severity_rank, reverse=True))
        kind = ", ".join(f"{_e(k)} {n}" for k, n in sorted(kinds.items()))
        summary = f"<strong>{_e(name)}</strong>: {len(alerts)} alert(s) ({kind}); {sev}" + (
            f"; new alerts worth {format_usd(usd)}" if usd else ""
        )
        groups.append(_details(summary, _table(head, body), is_open=full))
    return f"<p>{len(rows)} alert(s), per entity, oldest first within each; open an entity to see them.</p>" + "".join(groups)


def _legend() -> str:
    items = "".join(
        f"<span>{_chip(v)} {_e(st.colour)}, marker <code>{_e(st.marker)}</code></span>" for v, st in VERDICT_STYLES.items()
    )
    return (
        f"<p class='legend small'>{items}<span>{_chip('retracted', True)} grey cross</span></p>"
        "<p class='muted small'>Okabe-Ito colours, each with its own marker shape; hollow markers are unconfirmed "
        "transactions.</p>"
    )


def build_report(
    store: Store,
    *,
    since: int | None = None,
    until: int | None = None,
    entity: str | None = None,
    scenarios: Sequence[tuple[str, float]] | None = None,
    simulated: bool | None = None,
    sources: Sequence[str] = (),
    prices: Sequence[tuple[int, float]] | None = None,
    now: int | None = None,
    title: str = "treasury-monitor report",
    max_rows: int = 500,
    full: bool = False,
    miners: dict[str, Any] | None = None,
) -> str:
    """The whole report as one self-contained HTML page.

    By default it stays short (under ten 1280×800 screens for the demo): alerts are grouped per entity and
    collapsed, each entity's 30-day bars and flow table sit behind `<details>`, and wide tables scroll
    inside themselves. `full=True` opens every `<details>`.

    `scenarios` are (label, BTC price) pairs for the scenario table (default: CoinShares' cases, the latest
    price in the data and the all-time high). `simulated=True` puts a banner on top listing `sources` (the
    public figures a simulated dataset follows); None (default) shows it when any stored address says
    SIMULATED in its source, as the demo scenario's invented addresses do. `prices` are (Unix time, USD) points to draw instead of the
    cached candles. `now` is printed as the generation time. `miners` is the miner view
    (`monitor.discovery.miners.miners_view`); default: read from the store, shown when blocks were scanned.
    """
    data = _load(store, entity)
    lo, hi = _period(data, since, until)
    series = _price_series(store, lo, hi, data, prices)
    today = series[-1] if series else None
    if simulated is None:
        simulated = any("SIMULATED" in (a.get("source") or "") for a in store.address_rows(status="active"))
    summaries = [_summary(d, since, until) for d in data]
    ids = {d.name: f"entity-{i}" for i, d in enumerate(data)}
    multiple = Thresholds().production_multiple
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f"<p class='muted'>Period {_e(_date(lo))} to {_e(_date(hi))}"
        + (f" · entity {_e(entity)}" if entity else "")
        + (f" · generated {_e(_when(now))}" if now is not None else "")
        + "</p></header>",
    ]
    if simulated:
        items = "".join(f"<li>{_e(s)}</li>" for s in sources)
        out.append(
            "<div class='banner' role='note'><strong>SIMULATED DATA.</strong> The transactions, blocks and addresses "
            "in this report are invented (a simulated chain); none is a real address of the entity it is attached to. "
            "The simulation follows published figures"
            + (f":<ul>{items}</ul>" if items else " (listed by the scenario that made it).")
            + "</div>"
        )
    nav = "".join(f"<a href='#{ids[d.name]}'>{_e(d.name)}</a>" for d in data)
    out.append(
        f"<nav class='small'><a href='#summary'>Summary</a><a href='#scenarios'>Scenarios</a>"
        f"<a href='#alerts'>Alerts</a>{nav}<a href='#legend'>Legend</a></nav>"
    )
    out.append("<section id='summary'><h2>Summary</h2>")
    if data:
        out.append(_summary_table(summaries, ids))
        out.append(_img(_overview_png(data, since, until, lo, hi), "outflows by verdict per entity"))
    else:
        out.append("<p class='muted'>No flows of tracked entities are stored for this selection.</p>")
    out.append("</section>")
    out.append(f"<section id='scenarios'><h2>Price scenarios</h2>{_scenario_section(store, data, scenarios, today)}</section>")
    out.append(miner_view_section(miners if miners is not None else _miners_view(store, since)))
    out.append(f"<section id='alerts'><h2>Alerts</h2>{_alerts_section(store, entity, since, until, full=full)}</section>")
    for d, s in zip(data, summaries):
        p = d.profile
        facts = "".join(
            [
                _fact("holdings, BTC", p.holdings_btc),
                _fact("monthly production, BTC", p.monthly_production_btc),
                _fact("cash cost per BTC, USD", p.cash_cost_usd),
                _fact("fleet efficiency, J/TH", p.efficiency_j_th),
            ]
        )
        tags = (
            f"<li>strategy: {_e(', '.join(p.strategy_tags))} <span class='muted small'>({_e(p.strategy_source)})</span></li>"
            if p.strategy_tags
            else ""
        )
        basis = (
            "anchored at the latest balance snapshot of every address"
            if s.balance_basis == "snapshot"
            else "cumulative from zero over the stored flows (not every address has a balance snapshot)"
        )
        out.append(
            f"<section class='entity' id='{ids[d.name]}'><h2>{_e(d.name)} <span class='muted small'>({_e(d.kind)})</span></h2>"
            + (f"<p class='muted small'>{_e(d.note)}</p>" if d.note else "")
            + f"<ul class='small'>{facts}{tags}</ul>"
            + f"<p>Balance {_btc(s.balance_units)} BTC ({_e(basis)}); in the period: sold {_btc(s.sold_units)} BTC "
            f"({format_usd(s.sold_usd)}), custody moves {_btc(s.custody_units)} BTC, {s.internal} internal move(s), "
            f"received {_btc(s.received_units)} BTC.</p>"
            + _img(_balance_chart(d, lo, hi, series), f"{d.name}: balance and BTC price with outflows by verdict")
            + _details(
                "Outflows per 30 days against monthly production",
                _img(_outflow_bars(d, lo, hi, multiple), f"{d.name}: outflows per 30 days against monthly production"),
                is_open=full,
            )
            + _details(
                f"Outflows and internal moves ({s.flows} in the period)",
                _flow_table(d, d.in_period(since, until), max_rows, full=full),
                is_open=full,
            )
            + "</section>"
        )
    out.append(f"<section id='legend'><h2>Legend</h2>{_legend()}</section>")
    out.append(
        "<footer class='muted small'><p>Made by treasury-monitor from its database only; charts are PNG images "
        "drawn with matplotlib and embedded in this file, so it opens offline.</p></footer>"
    )
    out.append("</body></html>")
    return "\n".join(out)


def _miners_view(store: Store, since: int | None) -> dict[str, Any]:
    from monitor.discovery.miners import view_from_store

    return view_from_store(store, since=since)


def miner_view_section(view: dict[str, Any]) -> str:
    """The "Miner view" section from a miner view (`monitor.discovery.miners.miners_view`); "" when no block was scanned."""
    if not view.get("blocks_scanned"):
        return ""
    days = view["days"]
    out = [
        f"<section id='miners'><h2>Miner view</h2><p>{view['blocks_scanned']:,} blocks scanned "
        f"(heights {view['first_height']:,}-{view['last_height']:,}, {_e(days[0])} to {_e(days[-1])}, "
        f"{len(days)} days). <span class='muted small'>Source: {_e(view['source'])}.</span></p>"
    ]
    out.append(
        "<h3>Production by pool</h3><table><thead><tr><th>pool</th><th>blocks</th><th>share</th>"
        "<th>subsidy, BTC</th><th>fees, BTC</th><th>produced, BTC</th><th>days</th><th>tracked miner</th>"
        "</tr></thead><tbody>"
    )
    for p in view["pools"]:
        out.append(
            f"<tr><td>{_e(p['pool'])}</td><td>{p['blocks']:,}</td><td>{p['share']:.1%}</td>"
            f"<td>{_btc(p['subsidy_sat'])}</td><td>{_btc(p['fees_sat'])}</td><td>{_btc(p['produced_sat'])}</td>"
            f"<td>{p['days']}</td><td>{_e(p['owner'] or '')}</td></tr>"
        )
    out.append("</tbody></table>")
    recs = [r for r in view["tracked_miners"] if r["blocks"] or r["reported_monthly_btc"] is not None]
    if recs:
        out.append("<ul class='small'>" + "".join(f"<li>{_e(r['sentence'])}</li>" for r in recs) + "</ul>")
    kinds: dict[str, list[int]] = {}
    for f in view["flows"]:
        kinds.setdefault(f["kind"], [0, 0])[0] += f["sat"]
    for f in view.get("pool_flows", ()):
        kinds.setdefault(f["kind"], [0, 0])[1] += f["sat"]
    if kinds:
        out.append(
            "<h3>Miners' outflows by destination kind</h3><table><thead><tr><th>kind</th><th>BTC</th>"
            "<th>of which from pool payout addresses</th></tr></thead><tbody>"
        )
        for kind, (sat, pool_sat) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
            out.append(f"<tr><td>{_e(kind)}</td><td>{_btc(sat)}</td><td>{_btc(pool_sat)}</td></tr>")
        out.append("</tbody></table>")
    to_x = view["miner_to_exchange"]
    line = f"Miner-to-exchange: {_btc(sum(d['sat'] for d in to_x))} BTC over {len(to_x)} day(s). {_e(mpi_summary(view))}"
    out.append(f"<p>{line}</p>")
    if any(p["mpi"] is not None for p in view["mpi"]):
        out.append(_img(_mpi_png(view), "Miner Position Index per day"))
    out.append("</section>")
    return "".join(out)


def mpi_summary(view: dict[str, Any]) -> str:
    """The Miner Position Index in a sentence: the last and the peak value, and the days the average uses."""
    last = next((p for p in reversed(view["mpi"]) if p["mpi"] is not None), None)
    peak = max((p for p in view["mpi"] if p["mpi"] is not None), key=lambda p: p["mpi"], default=None)
    if last is None or peak is None:
        return "Miner Position Index: no priced miner outflow yet."
    used = view["mpi_days_used"]
    note = "" if used >= view["mpi_window"] else f", average over the {used} days covered (fewer than 365)"
    return (
        f"Miner Position Index (outflow USD / its {view['mpi_window']}-day average): {last['mpi']:.2f} on "
        f"{last['day']}, peak {peak['mpi']:.2f} on {peak['day']}{note}."
    )


def _mpi_png(view: dict[str, Any]) -> bytes:
    """The MPI line per day, the reference at 1 dashed, and the days-used caveat in the title."""
    pts = [p for p in view["mpi"] if p["mpi"] is not None]
    xs = [_dt.datetime.fromisoformat(p["day"]) for p in pts]
    fig = Figure(figsize=(9.6, 2.6))
    ax = fig.add_axes((0.075, 0.2, 0.9, 0.65))
    ax.plot(xs, [p["mpi"] for p in pts], color="#0072B2", marker="o", markersize=3, linewidth=1.8)
    ax.axhline(1.0, color="#6F6F6F", linestyle="--", linewidth=1)
    used, window = view["mpi_days_used"], view["mpi_window"]
    note = f"average over the {used} days covered, fewer than {window}" if used < window else f"{window}-day average"
    ax.set_title(_mpl(f"Miner Position Index: miners' outflow USD / its average ({note})"), fontsize=9, loc="left")
    ax.set_ylim(bottom=0)
    # the whole covered span, not just the priced days: how long the index has been flat at no outflow shows
    pad = _dt.timedelta(hours=12)
    ax.set_xlim(_dt.datetime.fromisoformat(view["mpi"][0]["day"]) - pad, _dt.datetime.fromisoformat(view["mpi"][-1]["day"]) + pad)
    loc = AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(loc))
    ax.grid(axis="y", color="#E5E5E5")
    return _png(fig)


def render_png(
    store: Store,
    *,
    entity: str | None = None,
    since: int | None = None,
    until: int | None = None,
    prices: Sequence[tuple[int, float]] | None = None,
) -> bytes:
    """One PNG chart: an entity's balance/price/verdict chart, or (no entity) outflows by verdict per entity.

    :raises ValueError: when `entity` has no stored flows.
    """
    data = _load(store, entity)
    if entity is not None and not data:
        raise ValueError(f"no stored flows for entity {entity!r}")
    lo, hi = _period(data, since, until)
    if entity is not None:
        return _balance_chart(data[0], lo, hi, _price_series(store, lo, hi, data, prices))
    return _overview_png(data, since, until, lo, hi)


REPORT_FORMATS = ("html", "png")


def write_report(db: str | Path, out: str | Path, *, fmt: str = "html", **options: Any) -> int:
    """Write the report of the database at `db` to `out` (`fmt` html or png); returns the bytes written.

    `options` go to `build_report` (html) or `render_png` (png: entity, since, until, prices).

    :raises ValueError: for an unknown format.
    """
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; one of {', '.join(REPORT_FORMATS)}")
    store = Store(db)
    try:
        if fmt == "html":
            data = build_report(store, **options).encode("utf-8")
        else:
            keep = {k: v for k, v in options.items() if k in ("entity", "since", "until", "prices")}
            data = render_png(store, **keep)
    finally:
        store.close()
    Path(out).write_bytes(data)
    return len(data)
