"""The dashboard's Miners page: the chain-wide miner view (`monitor.discovery.miners.miners_view`) as tables and inline SVG.

The page shows the very dict `treasury-monitor miners --json` and `GET /api/miners` return: this module
only lays it out (no figure is recomputed here, only summed for display: a per-day stack, a per-kind total).
Charts follow `monitor.output.dashboard_charts`: server-side SVG with a viewBox, a `<title>` on every bar and
point, every string escaped. Pools get the Okabe-Ito colours, most blocks first; pools past the seventh
and blocks of no known pool are grey, and every colour is named in the legend and the table, so no figure
depends on colour alone.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from monitor.model import SATS_PER_BTC
from monitor.output.dashboard_charts import _ticks
from monitor.output.report import mpi_summary

__all__ = ["POOL_PALETTE", "OTHER_COLOUR", "pool_colours", "bar_chart", "mpi_chart", "miners_page"]

#: Okabe-Ito, without grey and black (grey is "other / unknown pool"; black reads as an axis).
POOL_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OTHER_COLOUR = "#999999"
_UNKNOWN = "unknown"
_OTHERS = "other pools"
_EXCHANGE_COLOUR = "#D55E00"


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _f(x: float) -> str:
    return f"{x:.1f}"


def pool_colours(pools: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Pool → colour: the palette in the view's order (most blocks first), grey past it and for `unknown`."""
    out: dict[str, str] = {}
    named = [p["pool"] for p in pools if p["pool"] != _UNKNOWN]
    for i, pool in enumerate(named):
        out[pool] = POOL_PALETTE[i] if i < len(POOL_PALETTE) else OTHER_COLOUR
    out[_UNKNOWN] = OTHER_COLOUR
    return out


def _stack_key(pool: str, colours: Mapping[str, str]) -> str:
    """Pools drawn in grey share one stack segment per day ("other pools"), so the legend stays truthful."""
    return pool if colours.get(pool, OTHER_COLOUR) != OTHER_COLOUR else _OTHERS


def bar_chart(days: Sequence[str], stacks: Mapping[str, Sequence[tuple[str, float, str, str]]], *, title: str, unit: str) -> str:
    """A per-day (stacked) bar chart: `stacks[day]` is [(segment, value, colour, tooltip)], bottom first."""
    w, h = 800, 240
    left, right, top, bottom = 58, 14, 14, 34
    pw, ph = w - left - right, h - top - bottom
    n = max(1, len(days))
    band = pw / n
    vmax = max((sum(v for _, v, _, _ in stacks.get(d, ())) for d in days), default=0.0) or 1.0
    ticks = _ticks(0, vmax * 1.05)
    top_v = max(ticks[-1], vmax * 1.05) or 1.0
    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{_e(title)}">', f"<title>{_e(title)}</title>"]
    for v in ticks:
        y = top + ph - ph * v / top_v
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{_f(y)}" y2="{_f(y)}" stroke="#E5E5E5"/>')
        parts.append(f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end" class="ax">{v:,.{0 if top_v >= 10 else 1}f}</text>')
    parts.append(f'<text x="4" y="{top + 10}" class="ax">{_e(unit)}</text>')
    every = max(1, -(-n // 6))
    for i, d in enumerate(days):
        x0 = left + band * i
        if i % every == 0:
            parts.append(f'<text x="{_f(x0 + band / 2)}" y="{h - 12}" text-anchor="middle" class="ax">{_e(d[5:])}</text>')
        y = top + ph
        for _seg, v, colour, tip in stacks.get(d, ()):
            if v <= 0:
                continue
            hgt = ph * v / top_v
            y -= hgt
            parts.append(
                f'<rect x="{_f(x0 + band * 0.12)}" y="{_f(y)}" width="{_f(band * 0.76)}" height="{_f(hgt)}" '
                f'fill="{colour}" stroke="#fff" stroke-width="0.5"><title>{_e(tip)}</title></rect>'
            )
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#BBB"/></svg>')
    return "".join(parts)


def mpi_chart(points: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """The Miner Position Index per day as a line, with the reference at 1 (a day at its average); "" without a value."""
    pts = [p for p in points if p["mpi"] is not None]
    if not pts:
        return ""
    w, h = 800, 220
    left, right, top, bottom = 46, 14, 14, 34
    pw, ph = w - left - right, h - top - bottom
    days = [p["day"] for p in points]
    index = {d: i for i, d in enumerate(days)}
    span = max(1, len(days) - 1)
    vmax = max(max(p["mpi"] for p in pts), 1.0) * 1.1
    ticks = _ticks(0, vmax)
    top_v = max(ticks[-1], vmax)

    def x_of(day: str) -> float:
        return left + pw * index[day] / span

    def y_of(v: float) -> float:
        return top + ph - ph * v / top_v

    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{_e(title)}">', f"<title>{_e(title)}</title>"]
    for v in ticks:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{_f(y_of(v))}" y2="{_f(y_of(v))}" stroke="#E5E5E5"/>')
        parts.append(f'<text x="{left - 6}" y="{_f(y_of(v) + 4)}" text-anchor="end" class="ax">{v:g}</text>')
    parts.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{_f(y_of(1.0))}" y2="{_f(y_of(1.0))}" stroke="#6F6F6F" stroke-dasharray="5 3"/>'
    )
    every = max(1, -(-len(days) // 6))
    for i, d in enumerate(days):
        if i % every == 0:
            parts.append(f'<text x="{_f(x_of(d))}" y="{h - 12}" text-anchor="middle" class="ax">{_e(d[5:])}</text>')
    line = " ".join(f"{_f(x_of(p['day']))},{_f(y_of(p['mpi']))}" for p in pts)
    parts.append(f'<polyline points="{line}" fill="none" stroke="#0072B2" stroke-width="2"/>')
    for p in pts:
        tip = (
            f"{p['day']}: MPI {p['mpi']:.2f} (outflow ${p['outflow_usd']:,.0f} / average ${p['average_usd']:,.0f} "
            f"over {p['days_used']} days)"
        )
        parts.append(
            f'<circle cx="{_f(x_of(p["day"]))}" cy="{_f(y_of(p["mpi"]))}" r="3" fill="#0072B2"><title>{_e(tip)}</title></circle>'
        )
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#BBB"/></svg>')
    return "".join(parts)


def _btc(sat: int) -> str:
    return f"{sat / SATS_PER_BTC:,.2f}"


def miners_page(view: Mapping[str, Any]) -> dict[str, Any]:
    """What the Miners page shows, laid out from a miner view (`miners_view`'s dict, as /api/miners serves it)."""
    colours = pool_colours(view["pools"])
    pools = [{**p, "colour": colours[p["pool"]]} for p in view["pools"]]
    stacks: dict[str, list[tuple[str, float, str, str]]] = {}
    merged: dict[tuple[str, str], list[int]] = {}
    for d in view["pool_days"]:
        key = (d["day"], _stack_key(d["pool"], colours))
        acc = merged.setdefault(key, [0, 0])
        acc[0] += d["blocks"]
        acc[1] += d["produced_sat"]
    order = {p["pool"]: i for i, p in enumerate(view["pools"])}
    for (day, seg), (blocks, sat) in sorted(merged.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)))):
        stacks.setdefault(day, []).append(
            (seg, sat / SATS_PER_BTC, colours.get(seg, OTHER_COLOUR), f"{day} · {seg}: {blocks:,} blocks, {_btc(sat)} BTC")
        )
    legend = [{"name": p["pool"], "colour": p["colour"]} for p in pools if _stack_key(p["pool"], colours) == p["pool"]]
    if any(_stack_key(p["pool"], colours) == _OTHERS for p in pools):
        legend.append({"name": f"{_OTHERS} and unknown (grey)", "colour": OTHER_COLOUR})
    days = list(view["days"])
    production = bar_chart(days, stacks, title="BTC produced per day, stacked by pool", unit="BTC") if days else ""

    kinds: dict[str, dict[str, Any]] = {}
    for f in view["flows"]:
        k = kinds.setdefault(f["kind"], {"kind": f["kind"], "sat": 0, "pool_sat": 0, "usd": 0.0, "flows": 0})
        k["sat"] += f["sat"]
        k["usd"] += f["usd"]
        k["flows"] += f["flows"]
    for f in view.get("pool_flows", ()):
        kinds.setdefault(f["kind"], {"kind": f["kind"], "sat": 0, "pool_sat": 0, "usd": 0.0, "flows": 0})["pool_sat"] += f["sat"]
    to_x = list(view["miner_to_exchange"])
    span = [p["day"] for p in view["mpi"]] or [d["day"] for d in to_x]
    x_stacks = {
        d["day"]: [
            ("exchange", d["sat"] / SATS_PER_BTC, _EXCHANGE_COLOUR, f"{d['day']}: {_btc(d['sat'])} BTC from miners to exchanges")
        ]
        for d in to_x
    }
    exchange = bar_chart(span, x_stacks, title="Miner-to-exchange BTC per day", unit="BTC") if to_x else ""
    used, window = view["mpi_days_used"], view["mpi_window"]
    caveat = (
        f"The average uses the {used} day(s) the data covers, fewer than the {window} of the definition: "
        f"early days compare against a short history."
        if used < window
        else f"The average uses the full {window} days."
    )
    return {
        "view": view,
        "pools": pools,
        "legend": legend,
        "production_chart": production,
        "recs": [r for r in view["tracked_miners"] if r["blocks"] or r["reported_monthly_btc"] is not None],
        "kinds": sorted(kinds.values(), key=lambda k: (-k["sat"], k["kind"])),
        "to_exchange": to_x,
        "to_exchange_sat": sum(d["sat"] for d in to_x),
        "exchange_chart": exchange,
        "exchange_colour": _EXCHANGE_COLOUR,
        "mpi_chart": mpi_chart(view["mpi"], title=f"Miner Position Index per day (outflow USD / its {window}-day average)"),
        "mpi_summary": mpi_summary(view),
        "mpi_caveat": caveat,
    }
