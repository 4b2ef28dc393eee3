"""The dashboard: server-rendered HTML pages over storage, served by the daemon beside its JSON API.

    GET /                         one card per tracked entity and the live feed of classifications,
                                  updates and retractions (from /api/events/stream, resuming after a
                                  reconnect with Last-Event-ID)
    GET /entity/{name}?verdict=&destination=&since=&until=&page=   (`name` percent-encoded, '/' too)
                                  balance and price with outflows by verdict, the flows table with
                                  filters and paging, hop traces, dated facts with sources, candidates
    GET /scenarios                price and difficulty cases → hashprice, breakeven, miners below cost
    GET /miners?since=            the chain-wide miner view (`monitor.output.dashboard_miners`, the same view as
                                  /api/miners): production by pool, measured vs reported, outflows, MPI
    GET /static/...               the CSS and the one small script; no asset comes from elsewhere

Read-only and offline: pages are rendered with jinja2 (autoescaped) from storage reads, charts are inline
SVG (`monitor.output.dashboard_charts`), and the only script (static/dashboard.js) keeps the feed live. The
same bind and token rules as the API apply (`monitor.run.httpapi`).

Facts and traces are read through `entity_facts` and `flow_traces` only, so their storage can change
shape without touching the pages.
"""

from __future__ import annotations

import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from jinja2 import DictLoader, Environment, select_autoescape

from monitor.clock import iso, parse_iso
from monitor.model import SALE_VERDICTS, SATS_PER_BTC, severity_rank
from monitor.output.dashboard_charts import Branch, Marker, balance_chart, marker_shape, sparkline, trace_graph
from monitor.output.export import flow_record
from monitor.output.report import (
    RETRACTED_STYLE,
    VERDICT_STYLES,
    entity_histories,
    format_usd,
    is_retracted,
    price_series,
    scenario_html,
)
from storage.dashboard import DESTINATION_KINDS, flow_page, recent_events
from storage.discovery import candidate_rows, trace_rows
from storage.reads import entity_summaries, flow_row

if TYPE_CHECKING:
    from storage import Store

__all__ = ["add_routes", "entity_facts", "flow_traces", "overview", "entity_page", "PAGE_SIZE", "STATIC_DIR"]

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"
PAGE_SIZE = 25
DAY = 86_400
_TRACKED_KINDS = ("miner", "sovereign", "other")
_FEED_SIZE = 40

# Templates and static files are read once, at import: serving them never touches the disk on the loop.
_TEMPLATES = {p.name: p.read_text(encoding="utf-8") for p in sorted(TEMPLATE_DIR.glob("*.html"))}
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}
_STATIC = {p.name: (p.read_bytes(), _STATIC_TYPES[p.suffix]) for p in sorted(STATIC_DIR.iterdir()) if p.suffix in _STATIC_TYPES}
_env = Environment(loader=DictLoader(_TEMPLATES), autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def _btc(units: int | float | None) -> str:
    return "–" if units is None else f"{units / SATS_PER_BTC:,.2f}"


def _when(t: int | None) -> str:
    return (iso(t) or "–").replace("T", " ").replace("Z", "")[:16]


def _ink(colour: str) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#000" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "#fff"


def _verdict_css() -> str:
    """One class per verdict: its Okabe-Ito colour with a readable ink (the report's palette)."""
    rules = [f".v-{v}{{background:{s.colour};color:{_ink(s.colour)}}}" for v, s in VERDICT_STYLES.items()]
    rules.append(".v-retracted{background:#fff;color:#555;border-style:dashed}")
    return "".join(rules)


def _segment(text: str) -> str:
    # jinja's urlencode keeps '/', which would split an entity name like "A/B" into two path segments
    return urllib.parse.quote(str(text), safe="")


_env.filters.update(btc=_btc, usd=format_usd, when=_when, segment=_segment)
_env.globals.update(verdict_css=_verdict_css(), verdicts=list(VERDICT_STYLES), destination_kinds=DESTINATION_KINDS)


# --- data reads (store thread) ------------------------------------------------------------------------


def entity_facts(store: Store, name: str) -> list[dict[str, Any]]:
    """The entity's dated facts with their sources, every point of each series newest first."""
    p = store.entity_profile(name)
    out = []
    for label, unit, figure in (
        ("holdings", "BTC", "holdings_btc"),
        ("monthly production", "BTC", "monthly_production_btc"),
        ("cash cost per BTC", "USD", "cash_cost_usd"),
        ("fleet efficiency", "J/TH", "efficiency_j_th"),
    ):
        # Every dated point, newest first: the first of a label is the last reported figure.
        for fact in reversed(p.series(figure)):
            out.append(
                {
                    "label": label,
                    "value": fact.value,
                    "unit": unit,
                    "as_of": fact.as_of,
                    "source": fact.source,
                    "note": fact.note,
                    "quote": fact.quote,
                }
            )
    if p.strategy_tags:
        out.append(
            {
                "label": "strategy",
                "value": ", ".join(p.strategy_tags),
                "unit": "",
                "as_of": "",
                "source": p.strategy_source,
                "note": "",
            }
        )
    return out


def _fact(facts: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    return next((f for f in facts if f["label"] == label), None)


def flow_traces(store: Store, entity: str) -> dict[tuple[str, str], list[Branch]]:
    """Per traced flow (chain, txid) of the entity: where each followed output's coins went, as Branches.

    One Branch per share of a multi-branch trace (an attribution reached, or why following stopped)
    and per branch still being followed; a trace without shares is drawn from its tip.
    """
    flows_out: dict[tuple[str, str], int] = {}
    out: dict[tuple[str, str], list[Branch]] = {}
    for t in trace_rows(store, entity=entity):
        key = (t.chain, t.txid)
        if key not in flows_out:
            row = flow_row(store, t.chain, t.txid, entity)
            flows_out[key] = (row or {}).get("out_units") or t.value or 1
        whole = flows_out[key]
        parts = [
            Branch(
                n=t.n,
                value_units=sh.value,
                share=sh.value / whole,
                path=tuple(sh.path),
                status="attributed" if sh.attribution != "unknown" else (sh.note or "unknown"),
                end=sh.attribution if not sh.note else f"{sh.attribution} ({sh.note})",
            )
            for sh in getattr(t, "shares", ())
        ] + [
            Branch(
                n=t.n,
                value_units=b.value,
                share=b.value / whole,
                path=tuple(b.path),
                status="pending",
                end=f"following {b.address or b.txid[:12]}",
            )
            for b in getattr(t, "branches", ())
        ]
        if not parts:
            parts = [
                Branch(
                    n=t.n,
                    value_units=t.value,
                    share=t.value / whole,
                    path=tuple(t.path),
                    status=t.status,
                    end=t.attribution or t.result or t.status,
                )
            ]
        out.setdefault(key, []).extend(parts)
    for branches in out.values():
        branches.sort(key=lambda b: (b.n, -b.value_units))
    return out


def _worst(c_rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    worst = None
    for c in c_rows:
        if worst is None or severity_rank(c["severity"]) > severity_rank(worst["severity"]):
            worst = c
    return worst


def overview(store: Store, now: int) -> dict[str, Any]:
    """Cards per tracked entity (balance seen vs reported, 30-day outflow vs production, worst verdict,
    last move, sparkline) and the newest events for the feed."""
    histories = {d.name: d for d in entity_histories(store)}
    summaries = {s["name"]: s for s in entity_summaries(store)}
    cards = []
    for e in store.entity_rows():
        if not e["watch"] or e["kind"] not in _TRACKED_KINDS:
            continue
        name = e["name"]
        d = histories.get(name)
        s = summaries.get(name, {})
        facts = entity_facts(store, name)
        rows = d.rows if d else []
        live = [r for r in rows if not is_retracted(r) and r["classification"] is not None]
        recent = [
            r
            for r in live
            if d is not None
            and d.at(r) >= now - 30 * DAY
            and r["direction"] == "out"
            and r["classification"]["verdict"] != "internal"
        ]
        series, basis = d.balance_series() if d else ([], "flows")
        worst = _worst([r["classification"] for r in live if r["classification"]["verdict"] != "internal"])
        last = max(rows, key=lambda r: d.at(r)) if rows and d else None
        has_all = s.get("addresses", 0) > 0 and s.get("addresses_with_balance") == s.get("addresses")
        cards.append(
            {
                "name": name,
                "kind": e["kind"],
                "addresses": s.get("addresses", 0),
                "balance_units": s.get("balance_units") if has_all else (series[-1][1] if series else None),
                "balance_basis": "snapshot" if has_all else ("flows" if series else "none"),
                "holdings": _fact(facts, "holdings"),
                "production": _fact(facts, "monthly production"),
                "out30_units": sum(r["out_units"] for r in recent),
                "sold30_units": sum(r["out_units"] for r in recent if r["classification"]["verdict"] in SALE_VERDICTS),
                "worst": worst,
                "last": last
                and {
                    "at": d.at(last),
                    "direction": last["direction"],
                    "out_units": last["out_units"],
                    "received_units": last["received_units"],
                    "verdict": (last["classification"] or {}).get("verdict"),
                    "retracted": is_retracted(last),
                },
                "flows": len(rows),
                "spark": sparkline(series, label=f"{name}: balance over time") if series else "",
            }
        )
    raw = recent_events(store, _FEED_SIZE)
    events = [_feed_item(store, ev) for ev in raw]
    feed: dict[str, dict[str, Any]] = {}
    for item in events:  # the newest state of each flow, newest first
        if item is not None:
            feed.pop(item["key"], None)
            feed[item["key"]] = item
    return {"cards": cards, "feed": list(reversed(feed.values())), "last_event_id": raw[-1]["event_id"] if raw else 0, "now": now}


def _feed_item(store: Store, ev: dict[str, Any]) -> dict[str, Any] | None:
    """A feed item from one event, the same fields dashboard.js fills from the event stream."""
    row = flow_row(store, ev["chain"], ev["txid"], ev["entity"])
    if row is None:
        return None
    rec = flow_record(row, ev)
    return feed_fields(ev["event_id"], ev["event_kind"], rec)


def feed_fields(event_id: int, kind: str, rec: dict[str, Any]) -> dict[str, Any] | None:
    """What a feed item shows (internal moves are left out): the same logic as `render` in dashboard.js."""
    c = rec.get("classification") or {}
    if c.get("verdict") in (None, "internal"):
        return None
    retracted = kind == "retraction" or c.get("status") == "retracted"
    return {
        "id": event_id,
        "key": f"{rec['chain']}:{rec['txid']}:{rec['entity']}",
        "kind": kind,
        "entity": rec["entity"],
        "txid": rec["txid"],
        "verdict": c.get("verdict"),
        "severity": c.get("severity"),
        "amount": rec.get("out_amount"),
        "usd": c.get("usd_value"),
        "at": rec.get("block_time") or rec.get("seen_at"),
        "retracted": retracted,
        "status": rec.get("status"),
        "reasons": c.get("reasons") or [],
        "version": c.get("version"),
    }


@dataclass(frozen=True)
class FlowFilters:
    """The flows table's filters and page, as parsed from the query string."""

    verdict: str | None = None
    destination: str | None = None
    since: int | None = None
    until: int | None = None
    page: int = 1


def entity_page(store: Store, name: str, f: FlowFilters) -> dict[str, Any] | None:
    """Everything the entity page shows, or None when the entity is unknown."""
    row = next((e for e in store.entity_rows() if e["name"] == name), None)
    if row is None:
        return None
    hist = entity_histories(store, name)
    d = hist[0] if hist else None
    rows, total = flow_page(
        store,
        name,
        verdict=f.verdict,
        destination=f.destination,
        since=f.since,
        until=f.until,
        limit=PAGE_SIZE,
        offset=(f.page - 1) * PAGE_SIZE,
    )
    chart = ""
    counts: Counter[str] = Counter()
    if d is not None and d.rows:
        series, basis = d.balance_series()
        lo, hi = min(d.at(r) for r in d.rows), max(d.at(r) for r in d.rows)
        lo, hi = lo - DAY, max(hi, lo + DAY) + DAY
        balance_after = dict(series)
        markers = []
        for r in d.rows:
            if r["direction"] != "out" and not is_retracted(r):
                continue
            c = r["classification"] or {}
            t = d.at(r)
            b = balance_after.get(t)
            if b is None:
                prior = [v for s, v in series if s <= t]
                b = prior[-1] if prior else 0
            counts["retracted" if is_retracted(r) else (c.get("verdict") or "not classified")] += 1
            markers.append(
                Marker(
                    at=t,
                    balance_units=b,
                    out_units=r["out_units"],
                    verdict=c.get("verdict"),
                    retracted=is_retracted(r),
                    unconfirmed=r["status"] == "mempool",
                    label=f"{_when(t)} · {_btc(r['out_units'])} BTC · {c.get('verdict') or 'not classified'}"
                    + (" (retracted)" if is_retracted(r) else "")
                    + f" · {r['txid'][:12]}…",
                )
            )
        how = "anchored at the latest balance snapshot" if basis == "snapshot" else "cumulative from zero over the stored flows"
        chart = balance_chart(
            series,
            price_series(store, lo, hi, hist),
            markers,
            lo=lo,
            hi=hi,
            title=f"{name}: on-chain balance (BTC, {how}) and BTC/USD, outflows by verdict",
        )
    traces = flow_traces(store, name)
    trace_views = []
    for (chain, txid), branches in sorted(traces.items(), key=lambda kv: kv[0][1]):
        fr = flow_row(store, chain, txid, name)
        out_units = (fr or {}).get("out_units") or sum(b.value_units for b in branches)
        trace_views.append(
            {
                "txid": txid,
                "svg": trace_graph(name, txid, out_units, branches),
                "branches": branches,
                "verdict": ((fr or {}).get("classification") or {}).get("verdict"),
            }
        )
    pages = max(1, -(-total // PAGE_SIZE))
    return {
        "name": name,
        "kind": row["kind"],
        "note": row["note"] or "",
        "facts": entity_facts(store, name),
        "chart": chart,
        "legend": _legend(counts),
        "flows": [_flow_view(r, traces) for r in rows],
        "total": total,
        "page": f.page,
        "pages": pages,
        "filters": f,
        "traces": trace_views,
        "candidates": [
            {
                **c,
                "kinds": Counter(e["kind"] for e in c["evidence"]).most_common(),
                "txids": [e["txid"] for e in c["evidence"] if e["txid"]][:3],
            }
            for c in candidate_rows(store, entity=name)
        ],
    }


def _legend(counts: Counter[str]) -> list[dict[str, Any]]:
    out = []
    for v, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        st = RETRACTED_STYLE if v == "retracted" else VERDICT_STYLES.get(v)
        if st is None:
            continue
        out.append(
            {
                "verdict": v,
                "n": n,
                "svg": f'<svg width="16" height="16" viewBox="0 0 16 16" aria-hidden="true">{marker_shape(st, 8, 8, 6)}</svg>',
            }
        )
    return out


def _flow_view(r: dict[str, Any], traces: dict[tuple[str, str], list[Branch]]) -> dict[str, Any]:
    c = r["classification"] or {}
    return {
        "txid": r["txid"],
        "at": r["block_time"] if r["block_time"] is not None else r["first_seen"],
        "direction": r["direction"],
        "status": r["status"],
        "out_units": r["out_units"],
        "received_units": r["received_units"],
        "verdict": c.get("verdict"),
        "severity": c.get("severity"),
        "usd": c.get("usd_value"),
        "reasons": c.get("reasons") or [],
        "retracted": is_retracted(r),
        "destinations": [(d["attribution"], d["value_units"]) for d in r["destinations"]],
        "traced": (r["chain"], r["txid"]) in traces,
    }


# --- HTTP ---------------------------------------------------------------------------------------------


def _render(template: str, **ctx: Any) -> web.Response:
    body = _env.get_template(template).render(**ctx)
    resp = web.Response(
        text=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; script-src 'self'",
        },
    )
    resp.enable_compression()  # gzip/deflate when the browser accepts it: the feed's reasons compress well
    return resp


def _filters(request: web.Request) -> FlowFilters:
    q = request.query
    verdict = q.get("verdict") or None
    if verdict is not None and verdict not in VERDICT_STYLES:
        raise web.HTTPBadRequest(text=f"verdict: one of {', '.join(VERDICT_STYLES)}")
    dest = q.get("destination") or None
    if dest is not None and dest not in DESTINATION_KINDS:
        raise web.HTTPBadRequest(text=f"destination: one of {', '.join(DESTINATION_KINDS)}")
    try:
        since = parse_iso(q["since"]) if q.get("since") else None
        until = parse_iso(q["until"]) + DAY if q.get("until") else None  # an end date includes its day
        page = int(q.get("page") or 1)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"bad filter: {exc}") from None
    return FlowFilters(verdict=verdict, destination=dest, since=since, until=until, page=max(1, page))


def add_routes(app: web.Application, daemon_key: web.AppKey) -> None:
    """Add the dashboard's pages and static files to the daemon's app."""

    def daemon_of(request: web.Request):
        return request.app[daemon_key]

    async def index(request: web.Request) -> web.Response:
        daemon = daemon_of(request)
        data = await daemon.rt.store.run(overview, int(daemon.clock.time()))
        return _render("overview.html", nav="overview", **data)

    async def entity(request: web.Request) -> web.Response:
        daemon = daemon_of(request)
        f = _filters(request)
        data = await daemon.rt.store.run(entity_page, request.match_info["name"], f)
        if data is None:
            raise web.HTTPNotFound(text=f"no entity named {request.match_info['name']!r}")
        q = {k: v for k, v in request.query.items() if k != "page" and v}
        return _render("entity.html", nav="entity", query=q, **data)

    async def scenarios(request: web.Request) -> web.Response:
        daemon = daemon_of(request)
        table = await daemon.rt.store.run(scenario_html)
        return _render("scenarios.html", nav="scenarios", table=table)

    async def miners(request: web.Request) -> web.Response:
        from monitor.discovery.miners import view_for_registry
        from monitor.output.dashboard_miners import miners_page

        daemon = daemon_of(request)
        raw = request.query.get("since") or ""
        try:
            since = parse_iso(raw) if raw else None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"since: expected an ISO date: {exc}") from None
        registry = daemon.rt.pipeline.registry
        view = await daemon.rt.store.run(lambda store: view_for_registry(store, registry, since=since))
        return _render("miners.html", nav="miners", since=raw, entities=set(registry.entities), **miners_page(view))

    async def static(request: web.Request) -> web.Response:
        found = _STATIC.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, ctype = found
        return web.Response(
            body=body,
            content_type=ctype,
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"},
        )

    app.router.add_get("/", index)
    app.router.add_get("/entity/{name:.+}", entity)
    app.router.add_get("/scenarios", scenarios)
    app.router.add_get("/miners", miners)
    app.router.add_get("/static/{name}", static)
