"""The dashboard's charts as inline SVG: sparklines, balance/price with verdict markers, hop-trace graphs.

Server-side SVG keeps the page free of a chart library: it scales with its container (viewBox), needs
no JavaScript, and every marker carries a `<title>` (a tooltip, and text for screen readers). Colours and
marker shapes are the report's Okabe-Ito `VERDICT_STYLES`, so no verdict depends on colour alone. Every
string from the chain, the config or the store is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.clock import iso
from monitor.model import SATS_PER_BTC
from monitor.output.report import RETRACTED_STYLE, VERDICT_STYLES, VerdictStyle

__all__ = ["Marker", "Branch", "sparkline", "balance_chart", "trace_graph", "marker_shape"]

_UNCLASSIFIED = VerdictStyle("#BBBBBB", "o", "not classified")


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _f(x: float) -> str:
    return f"{x:.1f}"


@dataclass(frozen=True)
class Marker:
    """One outflow on the balance chart."""

    at: int
    balance_units: int
    out_units: int
    verdict: str | None
    retracted: bool
    unconfirmed: bool
    label: str  # tooltip text
    href: str = ""


@dataclass(frozen=True)
class Branch:
    """One followed output of a traced flow: where its coins went, after how many hops."""

    n: int
    value_units: int
    share: float  # of the flow's outflow, 0..1
    path: tuple[str, ...]  # txids, the flow's own tx first
    status: str
    end: str  # the attribution reached, or what ended the trace, in words


def marker_shape(style: VerdictStyle, x: float, y: float, r: float, *, hollow: bool = False) -> str:
    """An SVG shape at (x, y) for a verdict style's marker (the report's matplotlib marker letters)."""
    fill = "none" if hollow else style.colour
    stroke = style.colour if hollow else style.edge
    common = f'fill="{fill}" stroke="{stroke}" stroke-width="1"'
    m = style.marker
    if m in ("o", "."):
        return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(r if m == "o" else r * 0.5)}" {common}/>'
    if m == "s":
        return f'<rect x="{_f(x - r)}" y="{_f(y - r)}" width="{_f(2 * r)}" height="{_f(2 * r)}" {common}/>'
    if m == "x":
        return (
            f'<path d="M{_f(x - r)} {_f(y - r)}L{_f(x + r)} {_f(y + r)}M{_f(x - r)} {_f(y + r)}L{_f(x + r)} {_f(y - r)}" '
            f'stroke="{style.colour}" stroke-width="2" fill="none"/>'
        )
    if m == "P":
        w = r * 0.45
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    elif m == "v":
        pts = [(-r, -r * 0.8), (r, -r * 0.8), (0, r)]
    elif m == "^":
        pts = [(-r, r * 0.8), (r, r * 0.8), (0, -r)]
    elif m == "D":
        pts = [(0, -r), (r, 0), (0, r), (-r, 0)]
    elif m == "h":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (math.pi / 6 + k * math.pi / 3 for k in range(6))]
    else:  # '*' star
        pts = [
            (
                (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
                -(r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
    return f'<polygon points="{" ".join(f"{_f(x + dx)},{_f(y + dy)}" for dx, dy in pts)}" {common}/>'


def sparkline(points: Sequence[tuple[int, int]], *, label: str, width: int = 160, height: int = 36) -> str:
    """A small balance line (points are (time, base units)); an empty string when there is nothing to draw."""
    if len(points) < 2:
        return ""
    ts = [t for t, _ in points]
    vs = [v for _, v in points]
    t0, t1 = min(ts), max(ts)
    lo, hi = min(vs), max(vs)
    span_t, span_v = (t1 - t0) or 1, (hi - lo) or 1
    xy = []
    prev_y = None
    for t, v in points:  # a step line: the balance holds until the next flow
        x = 2 + (width - 4) * (t - t0) / span_t
        y = height - 3 - (height - 6) * (v - lo) / span_v
        if prev_y is not None:
            xy.append(f"{_f(x)},{_f(prev_y)}")
        xy.append(f"{_f(x)},{_f(y)}")
        prev_y = y
    return (
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(label)}"><polyline points="{" ".join(xy)}" fill="none" stroke="#222" stroke-width="1.5"/></svg>'
    )


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9:
        out.append(v)
        v += step
    return out


def balance_chart(
    series: Sequence[tuple[int, int]],
    prices: Sequence[tuple[int, float]],
    markers: Sequence[Marker],
    *,
    lo: int,
    hi: int,
    title: str,
) -> str:
    """Balance (BTC, left axis, step line) and BTC/USD (right axis, dashed) over [lo, hi], outflows marked by verdict."""
    w, h = 800, 280
    left, right, top, bottom = 62, 70, 14, 34
    pw, ph = w - left - right, h - top - bottom
    span = max(1, hi - lo)

    def x_of(t: int) -> float:
        return left + pw * (min(max(t, lo), hi) - lo) / span

    before = [b for t, b in series if t < lo]
    inside = [(t, b) for t, b in series if lo <= t <= hi]
    start = before[-1] if before else (inside[0][1] if inside else 0)
    vals = [start] + [b for _, b in inside] + [m.balance_units for m in markers]
    vmax = max(vals + [1]) / SATS_PER_BTC
    ticks = _ticks(0, vmax * 1.05)
    top_v = max(ticks[-1], vmax * 1.05) or 1

    def y_of(units: float) -> float:
        return top + ph - ph * (units / SATS_PER_BTC) / top_v

    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{_e(title)}">', f"<title>{_e(title)}</title>"]
    for v in ticks:  # grid and left axis
        y = top + ph - ph * v / top_v
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{_f(y)}" y2="{_f(y)}" stroke="#E5E5E5"/>')
        parts.append(f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end" class="ax">{v:,.0f}</text>')
    parts.append(f'<text x="4" y="{top + 10}" class="ax">BTC</text>')
    for k in range(5):  # dates
        t = lo + span * k // 4
        parts.append(f'<text x="{_f(x_of(t))}" y="{h - 12}" text-anchor="middle" class="ax">{_e((iso(t) or "")[:10])}</text>')
    if prices:
        pv = [p for _, p in prices]
        plo, phi = min(pv) * 0.97, max(pv) * 1.03
        pspan = (phi - plo) or 1
        pts = " ".join(f"{_f(x_of(t))},{_f(top + ph - ph * (p - plo) / pspan)}" for t, p in prices if lo <= t <= hi)
        if pts:
            parts.append(f'<polyline points="{pts}" fill="none" stroke="#6F6F6F" stroke-width="1.2" stroke-dasharray="5 3"/>')
        for v in (plo, (plo + phi) / 2, phi):
            y = top + ph - ph * (v - plo) / pspan
            parts.append(f'<text x="{left + pw + 6}" y="{_f(y + 4)}" class="ax">${v:,.0f}</text>')
    d, y_prev = [f"M{_f(x_of(lo))} {_f(y_of(start))}"], y_of(start)
    for t, b in inside:
        d.append(f"H{_f(x_of(t))}V{_f(y_of(b))}")
        y_prev = y_of(b)
    d.append(f"H{_f(left + pw)}V{_f(y_prev)}")
    parts.append(f'<path d="{"".join(d)}" fill="none" stroke="#222" stroke-width="1.8"/>')
    biggest = max((m.out_units for m in markers), default=0) or 1
    for m in markers:
        st = RETRACTED_STYLE if m.retracted else VERDICT_STYLES.get(m.verdict or "", _UNCLASSIFIED)
        r = 4 + 7 * math.sqrt(m.out_units / biggest)
        shape = marker_shape(st, x_of(m.at), y_of(m.balance_units), r, hollow=m.unconfirmed and not m.retracted)
        inner = f"<title>{_e(m.label)}</title>{shape}"
        parts.append(f'<a href="{_e(m.href)}">{inner}</a>' if m.href else f"<g>{inner}</g>")
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#BBB"/>')
    parts.append("</svg>")
    return "".join(parts)


def trace_graph(entity: str, txid: str, out_units: int, branches: Sequence[Branch], *, href_of=None) -> str:
    """A left-to-right graph: the flow's tx, then per followed output its hops and where the coins ended."""
    col, row, box_w, box_h = 240, 64, 140, 40
    hops = max((len(b.path) for b in branches), default=1)
    w = 20 + col * (hops + 1)
    h = 24 + row * max(1, len(branches))
    label = f"hop trace of {entity}'s transaction {txid[:12]}…"
    parts = [
        f'<svg class="trace" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{_e(label)}">',
        f"<title>{_e(label)}</title>",
    ]
    y0 = h / 2 - box_h / 2
    parts.append(_box(10, y0, box_w, box_h, f"{entity}", f"{out_units / SATS_PER_BTC:,.2f} BTC out", "#F4F4F4", f"tx {txid}"))
    for i, b in enumerate(branches):
        y = 16 + row * i + (row - box_h) / 2 - 4
        px, py = 10 + box_w, y0 + box_h / 2
        for k, hop in enumerate(b.path[1:], start=1):
            x = 10 + col * k
            parts.append(
                _edge(px, py, x, y + box_h / 2, f"{b.value_units / SATS_PER_BTC:,.2f} BTC · {b.share:.0%}" if k == 1 else "")
            )
            parts.append(_box(x, y, box_w, box_h, f"hop {k}", f"{hop[:10]}…", "#FFFFFF", f"tx {hop}"))
            px, py = x + box_w, y + box_h / 2
        x = 10 + col * len(b.path)
        first = len(b.path) == 1
        parts.append(_edge(px, py, x, y + box_h / 2, f"{b.value_units / SATS_PER_BTC:,.2f} BTC · {b.share:.0%}" if first else ""))
        fill = "#E8F4FB" if b.status == "attributed" else "#FFF6E0" if b.status == "pending" else "#F4F4F4"
        parts.append(_box(x, y, box_w, box_h, b.end[:22], b.status, fill, f"output {b.n}: {b.end} ({b.status})"))
    parts.append("</svg>")
    return "".join(parts)


def _box(x: float, y: float, w: float, h: float, line1: str, line2: str, fill: str, tip: str) -> str:
    return (
        f'<g><title>{_e(tip)}</title><rect x="{_f(x)}" y="{_f(y)}" width="{w}" height="{h}" rx="5" fill="{fill}" '
        f'stroke="#555"/><text x="{_f(x + 7)}" y="{_f(y + 16)}" class="b">{_e(line1)}</text>'
        f'<text x="{_f(x + 7)}" y="{_f(y + 32)}" class="ax">{_e(line2)}</text></g>'
    )


def _edge(x1: float, y1: float, x2: float, y2: float, text: str) -> str:
    mid = (x1 + x2) / 2
    path = f'<path d="M{_f(x1)} {_f(y1)}C{_f(mid)} {_f(y1)} {_f(mid)} {_f(y2)} {_f(x2)} {_f(y2)}" fill="none" stroke="#555" stroke-width="1.4"/>'
    if not text:
        return path
    return path + f'<text x="{_f(mid)}" y="{_f(min(y1, y2) - 6)}" text-anchor="middle" class="ax">{_e(text)}</text>'
