"""The HTML report and PNG charts, from a real SQLite store filled through the pipeline's commit path:
valid self-contained HTML, decodable inlined PNGs, a section per entity, every alert with its reasons,
escaping of hostile strings, and the documented balance basis."""

import base64
import io
from collections import Counter
from html.parser import HTMLParser

import pytest
from builders import addr, make_tx
from PIL import Image

from alerts.router import Rule
from monitor.core.attribution import attribute
from monitor.core.flows import entity_flows
from monitor.core.hashprice import build_context
from monitor.core.registry import Registry
from monitor.model import VERDICTS, BalanceSnapshot, Batch, Entity, EntityAddress, Fact, Profile
from monitor.output.report import RETRACTED_STYLE, VERDICT_STYLES, build_report, render_png, summarize_entities, write_report
from monitor.run.alert_plan import AlertPlanner, AlertSettings
from monitor.run.pipeline import commit_batch
from storage import Store
from storage.alerts import alert_rows
from storage.prices import save_candles

COIN = 100_000_000
DAY = 86_400
MARCH_2 = 1_772_409_600  # 2026-03-02T00:00:00Z
EVIL = "Evil <script>alert('x')</script> & $\\nosuchmacro{$ Co"
EVIL_SOURCE = "<img src=x onerror=alert(1)>"
PNG = b"\x89PNG\r\n\x1a\n"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

A_HOT, A_COLD, E_HOT, S_MAIN, X_DEP, C_DEP, FAUCET = (
    addr(f"report-{k}") for k in ("a-hot", "a-cold", "e-hot", "s-main", "x-dep", "c-dep", "faucet")
)


def fact(value, source="test fixture"):
    return Fact(value, source, "2026-03-01")


def entities():
    def ea(a):
        return (EntityAddress("bitcoin", a, source="test fixture"),)

    return [
        Entity(
            "Alpha Mining",
            "miner",
            ea(A_HOT) + ea(A_COLD),
            Profile(
                holdings_btc=fact(1000),
                monthly_production_btc=fact(100),
                cash_cost_usd=fact(80_000),
                efficiency_j_th=fact(20),
                strategy_tags=("ai_hpc_pivot",),
                strategy_source="<b>test</b> source",
            ),
        ),
        Entity(
            EVIL,
            "miner",
            ea(E_HOT),
            Profile(holdings_btc=fact(200), monthly_production_btc=fact(10, EVIL_SOURCE), cash_cost_usd=fact(90_000)),
        ),
        Entity("Sov", "sovereign", ea(S_MAIN), Profile(holdings_btc=fact(5000))),
        Entity("Ex", "exchange", ea(X_DEP), watch=False),
        Entity("Cust", "custodian", ea(C_DEP), watch=False),
    ]


def commit(store, registry, planner, txs, *, now, gone=()):
    flows = [attribute(f, registry) for tx in txs for f in entity_flows(tx, registry)]
    contexts = {
        (f.chain, f.txid, f.entity): build_context(
            f.block_time or now,
            btc_usd=69_000.0,
            price_at=f.block_time or now,
            price_source="test",
            staleness_bound=7200,
            difficulty=150.5e12,
            height=929_100,
            avg_fees_sat=2_000_000,
        )
        for f in flows
        if f.direction != "in"
    }
    batch = Batch(source="test", txs=tuple(txs), gone=tuple(gone))
    return commit_batch(store, batch, flows, contexts, registry, now=now, alert_hook=planner)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three tracked entities with inflows, internal moves, sales, a custody move, an unconfirmed and a
    retracted outflow; alerts through a console rule; daily price candles; snapshots for one entity."""
    store = Store(tmp_path_factory.mktemp("report") / "report.db")
    ents = entities()
    registry = Registry(ents)
    store.sync_entities(ents, now=MARCH_2)
    planner = AlertPlanner(registry, AlertSettings(rules=(Rule("all", ("console",)),), explorer_url=None, max_age=10**9))
    at = [MARCH_2 + d * DAY + 3600 * 10 for d in range(12)]
    txs = [
        make_tx(
            [(FAUCET, 900 * COIN)],
            [(A_HOT, 600 * COIN), (E_HOT, 100 * COIN), (S_MAIN, 200 * COIN)],
            fee=0,
            time=at[0],
            height=929_000,
        ),
        make_tx([(FAUCET, 1000 * COIN)], [(S_MAIN, 1000 * COIN)], fee=0, time=at[0] + 60, height=929_000),
        make_tx([(A_HOT, 600 * COIN)], [(A_COLD, 200 * COIN), (A_HOT, 400 * COIN - 2_000)], time=at[1], height=929_010),
        make_tx([(A_HOT, 400 * COIN - 2_000)], [(X_DEP, 250 * COIN), (A_HOT, 150 * COIN - 7_000)], time=at[2], height=929_020),
        make_tx([(A_COLD, 200 * COIN)], [(C_DEP, 100 * COIN), (A_COLD, 100 * COIN - 3_000)], time=at[3], height=929_030),
        make_tx([(E_HOT, 100 * COIN)], [(X_DEP, 50 * COIN), (E_HOT, 50 * COIN - 1_000)], time=at[4], height=929_040),
    ]
    sov = 1200 * COIN
    for i, btc in enumerate((50, 60, 150)):  # growing transfers: the last one accelerates
        out = btc * COIN
        txs.append(make_tx([(S_MAIN, sov)], [(X_DEP, out), (S_MAIN, sov - out - 1_000)], time=at[5 + i], height=929_050 + i))
        sov -= out + 1_000
    gone = make_tx([(A_HOT, 150 * COIN - 7_000)], [(X_DEP, 30 * COIN), (A_HOT, 120 * COIN - 9_000)], time=at[9], height=929_090)
    commit(store, registry, planner, txs + [gone], now=at[9] + 600)
    pending = make_tx([(E_HOT, 50 * COIN - 1_000)], [(X_DEP, 20 * COIN), (E_HOT, 30 * COIN - 2_000)], height=None)
    commit(store, registry, planner, [pending], now=at[10], gone=[gone.txid])
    save_candles(
        store,
        "BTC-USD",
        DAY,
        [(MARCH_2 + d * DAY, 69_000.0, 70_000.0, 68_000.0, 68_500.0 + 100 * d) for d in range(12)],
        "test",
        now=at[11],
    )
    store.save_snapshots(
        [BalanceSnapshot("bitcoin", A_HOT, at[11], 4_321 * COIN), BalanceSnapshot("bitcoin", A_COLD, at[11], 100 * COIN)]
    )
    yield store
    store.close()


@pytest.fixture(scope="module")
def page(store):
    return build_report(
        store, simulated=True, sources=["MARA: sold 15,133 BTC (ChainCatcher <2026-04-03>)"], now=MARCH_2 + 12 * DAY
    )


class Page(HTMLParser):
    """Structure of a page: nesting errors, tag counts, ids, images, h2 texts and all text."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.ids, self.imgs, self.h2, self.text = [], [], Counter(), [], [], [], []
        self.doctype = None
        self._h2 = None
        self.feed(text)
        self.close()

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        if "id" in a:
            self.ids.append(a["id"])
        for k, v in attrs:
            if k.startswith("on") or (v and k in ("src", "href") and not v.startswith(("#", "data:image/png;base64,"))):
                self.errors.append(f"<{tag} {k}={v!r}>")
        if tag == "img":
            self.imgs.append(a)
        if tag == "h2":
            self._h2 = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "h2" and self._h2 is not None:
            self.h2.append("".join(self._h2).strip())
            self._h2 = None

    def handle_data(self, data):
        self.text.append(data)
        if self._h2 is not None:
            self._h2.append(data)

    @property
    def all_text(self):
        return "".join(self.text)


def png_ok(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def test_report_is_valid_self_contained_html_with_decodable_charts(page):
    p = Page(page)
    assert p.doctype.lower() == "doctype html"
    assert p.errors == [] and p.stack == []
    assert all(p.tags[t] == 1 for t in ("html", "head", "body", "title", "style"))
    assert not p.tags["script"] and not p.tags["link"] and not p.tags["iframe"] and not p.tags["object"]
    assert len(p.ids) == len(set(p.ids))
    # one overview, then a balance chart and a 30-day bar chart per entity
    assert len(p.imgs) == 1 + 2 * 3
    for img in p.imgs:
        data = base64.b64decode(img["src"].removeprefix("data:image/png;base64,"), validate=True)
        w, h = png_ok(data)
        assert (int(img["width"]), int(img["height"])) == (w, h) and w >= 600 and h >= 150
        assert img["alt"]


def test_report_has_each_entity_and_every_alert_with_its_reasons(store, page):
    p = Page(page)
    assert [h for h in p.h2 if h.endswith(("(miner)", "(sovereign)"))] == [
        "Alpha Mining (miner)",
        f"{EVIL} (miner)",
        "Sov (sovereign)",
    ]
    assert "Ex (exchange)" not in p.h2  # counterparties are labels, not report sections
    alerts = alert_rows(store)
    kinds = Counter(a["kind"] for a in alerts)
    assert kinds["retraction"] == 1 and kinds["new"] >= 5
    text = p.all_text
    for a in alerts:
        assert f"alert-{a['id']}" in p.ids
        for reason in a["payload"]["flow"]["classification"]["reasons"] + a["payload"]["changes"]:
            assert reason in text
    assert "selling accelerates" in text and "its block was orphaned by a reorg" in text
    # the scenario table: hashprice at the stored difficulty, miners below cost at each price
    assert "150.50 T" in text and "CoinShares rebound: $100k by end-2026" in text
    assert "Alpha Mining (cost $80,000" in text


def test_hostile_strings_are_escaped_in_html_and_charts(store, page):
    p = Page(page)
    assert EVIL in p.all_text and EVIL_SOURCE in p.all_text  # shown as text...
    assert "<script>" not in page and "<img src=x" not in page  # ...never as markup
    assert "&lt;script&gt;" in page and p.tags["script"] == 0
    assert p.tags["img"] == len(p.imgs) == 7
    assert "ChainCatcher &lt;2026-04-03&gt;" in page
    assert png_ok(render_png(store, entity=EVIL))  # '$...$' in a chart title is not mathtext


def test_simulated_banner_only_when_asked(store, page):
    assert "SIMULATED DATA" in page and "MARA: sold 15,133 BTC" in Page(page).all_text
    plain = build_report(store, entity="Sov")  # no stored address says SIMULATED: no banner
    p = Page(plain)
    assert "SIMULATED DATA" not in plain and p.errors == []
    assert [h for h in p.h2 if "(" in h] == ["Sov (sovereign)"] and len(p.imgs) == 3
    assert {a["entity"] for a in alert_rows(store) if f"alert-{a['id']}" in p.ids} == {"Sov"}


def test_summaries_and_balance_basis(store):
    s = {x.name: x for x in summarize_entities(store)}
    assert set(s) == {"Alpha Mining", EVIL, "Sov"}
    alpha = s["Alpha Mining"]
    # every Alpha address has a snapshot: the curve ends at their sum
    assert alpha.balance_basis == "snapshot" and alpha.balance_units == 4_421 * COIN
    assert alpha.sold_units == 250 * COIN and alpha.custody_units == 100 * COIN and alpha.internal == 1
    assert alpha.retracted == 1 and alpha.verdicts.get("custody_move") == 1
    # no snapshot: cumulative from zero over confirmed flows (the unconfirmed one is not on chain yet)
    evil = s[EVIL]
    assert evil.balance_basis == "flows" and evil.balance_units == 50 * COIN - 1_000
    assert evil.sold_units == 50 * COIN + 20 * COIN  # the unconfirmed sale counts as classified
    sov = s["Sov"]
    assert sov.sold_units == 260 * COIN and sov.verdicts == {"sovereign_sale": 3} and sov.max_severity
    assert sov.sold_usd == pytest.approx(260 * 69_000)


def test_render_png_and_write_report(store, tmp_path):
    w, h = png_ok(render_png(store))  # the overview: outflows by verdict per entity
    assert w >= 600 and h >= 150
    assert png_ok(render_png(store, entity="Alpha Mining", since=MARCH_2 + DAY, until=MARCH_2 + 10 * DAY))
    with pytest.raises(ValueError):
        render_png(store, entity="Nobody")
    out = tmp_path / "r.png"
    assert write_report(store.path, out, fmt="png", entity="Sov") == out.stat().st_size
    png_ok(out.read_bytes())
    html_out = tmp_path / "r.html"
    write_report(store.path, html_out, since=MARCH_2 + 5 * DAY, entity="Sov")
    assert Page(html_out.read_text(encoding="utf-8")).errors == []
    with pytest.raises(ValueError):
        write_report(store.path, tmp_path / "r.svg", fmt="svg")


def test_every_verdict_has_a_distinct_colour_and_marker():
    assert set(VERDICT_STYLES) == set(VERDICTS)
    styles = list(VERDICT_STYLES.values()) + [RETRACTED_STYLE]
    assert len({s.colour for s in VERDICT_STYLES.values()}) == len(VERDICT_STYLES)
    assert len({s.marker for s in styles}) == len(styles)


class _Details(HTMLParser):
    """Each <details>: whether it is open and the first text of its <summary>; tables outside a scroller."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.details, self.bare_tables, self._stack, self._summary = [], 0, [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "details":
            self.details.append({"open": "open" in a, "summary": ""})
        if tag == "summary":
            self._summary = self.details[-1]
        if tag == "table" and not any(t == ("div", "scroll") for t in self._stack):
            self.bare_tables += 1
        if tag not in VOID:
            self._stack.append((tag, a.get("class")))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self._stack and self._stack.pop()[0] != tag:
            pass
        if tag == "summary":
            self._summary = None

    def handle_data(self, data):
        if self._summary is not None:
            self._summary["summary"] += data


def test_report_is_short_by_default_and_full_opens_everything(store, page):
    short = _Details(page)
    alerts = alert_rows(store)
    entities = {a["entity"] for a in alerts}
    # alerts grouped per entity, each group collapsed and counted in its summary
    groups = [d for d in short.details if d["summary"].split(":")[0] in entities and "alert(s)" in d["summary"]]
    assert sorted(d["summary"].split(":")[0] for d in groups) == sorted(entities)
    for d in groups:
        name = d["summary"].split(":")[0]
        assert f"{sum(1 for a in alerts if a['entity'] == name)} alert(s)" in d["summary"]
    assert short.details and not any(d["open"] for d in short.details)
    assert short.bare_tables == 0  # every table scrolls inside itself
    full = _Details(build_report(store, simulated=True, full=True))
    assert len(full.details) == len(short.details) and all(d["open"] for d in full.details)
    # nothing is left out of the short page, only folded
    assert Page(page).all_text.count("reason(s)") == Page(build_report(store, simulated=True, full=True)).all_text.count(
        "reason(s)"
    )
