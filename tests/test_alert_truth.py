"""Every field of every channel's message comes from what a real pipeline run stored.

The simulated 2026 episode (reduced scale) is played through the real pipeline, step by step, as the
demo drives the daemon; the alerts it queued are then sent, as stored, through each real channel: Slack
to a local HTTP receiver, email to a real aiosmtpd, a signed webhook, the console. Each message is checked
against the stored classification and flow it came from (read from their own tables, not from the
alert's payload), with figures formatted here independently of the renderer. No payload is built by hand.
"""

import asyncio
import email
import email.policy
import html as html_lib
import io
import json
from decimal import Decimal
from pathlib import Path

import aiohttp
from aiosmtpd.controller import Controller
from builders import sql_dicts
from fakes.offloop import in_store
from fakes.receiver import Receiver, block_kit_problems, free_port

from alerts.channels.console import ConsoleChannel
from alerts.channels.email import EmailChannel
from alerts.channels.slack import SlackChannel
from alerts.channels.webhook import WebhookChannel, verify_standard
from monitor.clock import FrozenClock
from monitor.config import load_config
from monitor.run.runtime import runtime
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.scenario import build_scenario
from storage.alerts import alert_rows
from storage.reads import flow_rows

SCALE = 0.2
SECRET = "whsec-truth-test"
_PLAYED: dict[str, Path] = {}


async def _play(tmp: Path) -> Path:
    sc = await asyncio.to_thread(build_scenario, seed=2026, scale=SCALE)
    run = sc.start()
    db = tmp / "episode.db"
    async with EsploraServer(run.chain) as server:
        path = tmp / "episode.toml"
        await asyncio.to_thread(path.write_text, sc.config_toml(server.url, db, alert_max_age=400 * 86_400))
        clock = FrozenClock(now=sc.start_time)
        async with runtime(await asyncio.to_thread(load_config, path), clock=clock) as rt:
            for step in sc.steps:
                run.apply(step)
                clock.now = step.at + 60
                if step.observe:
                    await rt.pipeline.tick(rt.sources[0])
            clock.now = sc.end_time + 3_600
            await rt.pipeline.tick(rt.sources[0])
    return db


async def played(tmp_path_factory) -> Path:
    """The database of one played episode, shared by the tests of this module."""
    if "db" not in _PLAYED:
        _PLAYED["db"] = await _play(await asyncio.to_thread(tmp_path_factory.mktemp, "episode"))
    return _PLAYED["db"]


def _load(store):
    """(alerts as Alert objects, {(txid, entity): flow row with its newest classification row})."""
    from storage.alerts import due

    flows = {(r["txid"], r["entity"]): r for r in flow_rows(store)}
    # The stored classifications, straight from their table: the source of truth the messages must match.
    by_id = {}
    for r in sql_dicts(store, "select * from classifications"):
        r["reasons"] = json.loads(r["reasons"])
        r["facts"] = json.loads(r["facts"] or "[]")
        by_id[r["id"]] = r
    rows = alert_rows(store)
    # Each alert against the classification that caused it (a later version may have superseded it).
    cls = {r["id"]: by_id[r["classification_id"]] for r in rows if r["classification_id"] is not None}
    pending = due(store, now=2**40, limit=10_000)
    alerts = {p.alert.id: p.alert for p in pending}
    return [a for a in alerts.values() if a.id in cls], flows, cls, rows


async def episode(tmp_path_factory):
    db = await played(tmp_path_factory)
    alerts, flows, cls, rows = await in_store(db, _load)
    return alerts, flows, cls, rows


def _one_per_verdict(alerts, cls):
    picked = {}
    for a in alerts:
        if a.kind != "new":
            continue
        picked.setdefault(cls[a.id]["verdict"], a)
    return list(picked.values())


def expected_fields(c: dict, flow: dict) -> dict[str, str]:
    """What a reader must find in the message, formatted here from the stored rows."""
    out = Decimal(c["out_units"]).scaleb(-8)
    fields = {
        "verdict": c["verdict"],
        "severity": c["severity"],
        "amount": f"{out:,.8f} BTC",
        "entity": c["entity"],
        "height": f"{flow['block_height']:,}" if flow["block_height"] is not None else "unconfirmed (mempool)",
    }
    if c["usd_value"] is not None:
        fields["usd"] = f"${c['usd_value'] / 1e6:,.1f}M"
    if c["btc_usd"] is not None:
        fields["price"] = f"BTC ${c['btc_usd']:,.0f}"
    cost = next((f for f in c["facts"] if f["figure"] == "cash_cost_usd"), None)
    if cost is not None and c["btc_usd"] is not None:
        gap = (c["btc_usd"] - cost["value"]) / cost["value"] * 100
        fields["cost"] = f"cash cost ${cost['value']:,.0f} ({abs(gap):.1f}% {'below' if gap < 0 else 'above'}"
        fields["cost date"] = f"cost as of {cost['as_of']}"
    if c["hashprice_usd"] is not None:
        fields["hashprice"] = f"${c['hashprice_usd']:,.2f}/PH/day"
    return fields


def check_message(text: str, c: dict, flow: dict) -> None:
    for name, value in expected_fields(c, flow).items():
        assert value in text, (name, value, text[:2000])
    for reason in c["reasons"]:
        assert reason in text, (reason, text[:3000])
    assert "no cost data" not in text
    # every number of the reasons is the stored one: the sale's price appears in the price reason
    if c["btc_usd"] is not None:
        assert any(r.startswith(f"BTC price ${c['btc_usd']:,.0f}: ") for r in c["reasons"]), c["reasons"]


def _flow_and_cls(alert, flows, cls):
    f = alert.payload["flow"]
    flow = dict(flows[(f["txid"], f["entity"])])
    if f["status"] == "mempool":  # alerted while unconfirmed: the message says so, no block yet
        flow["block_height"] = None
    return cls[alert.id], flow


async def test_episode_alerts_cover_every_verdict_and_carry_the_stored_facts(tmp_path_factory):
    alerts, flows, cls, _ = await episode(tmp_path_factory)
    verdicts = {cls[a.id]["verdict"] for a in alerts}
    assert {"balance_sheet_sale", "sovereign_sale", "distress_sale", "strategic_sale", "reallocation_sale"} <= verdicts
    for a in alerts:
        c, _flow = _flow_and_cls(a, flows, cls)
        rec = a.payload["flow"]["classification"]
        cost = next((f["value"] for f in c["facts"] if f["figure"] == "cash_cost_usd"), None)
        assert rec["cash_cost_usd"] == cost  # what the renderer reads is what the classifier used
        if c["verdict"] == "sovereign_sale":
            assert cost is None


async def test_slack_messages_from_the_episode(tmp_path_factory):
    alerts, flows, cls, _ = await episode(tmp_path_factory)
    chosen = _one_per_verdict(alerts, cls)
    async with Receiver() as rx, aiohttp.ClientSession() as session:
        channel = SlackChannel("slack", rx.url("/services/T0/B0/truth"), session)
        for a in chosen:
            await channel.send(a)
        reqs = await rx.wait_for(len(chosen))
    for a, req in zip(chosen, reqs):
        c, flow = _flow_and_cls(a, flows, cls)
        assert block_kit_problems(req.json) == []
        blocks = json.dumps(req.json["blocks"], ensure_ascii=False)
        text = html_lib.unescape(json.loads(json.dumps(req.json["text"])))
        # mrkdwn escapes & < >; every block's text, unescaped, is what a reader sees
        shown = "\n".join(html_lib.unescape(t) for t in _texts(req.json["blocks"]))
        check_message(shown, c, flow)
        assert "Price vs cost" in shown or c["verdict"] == "sovereign_sale"
        assert expected_fields(c, flow)["verdict"] in text and "no cost data" not in blocks


def _texts(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "text" and isinstance(v, str):
                yield v
            else:
                yield from _texts(v)
    elif isinstance(node, list):
        for x in node:
            yield from _texts(x)


class _Sink:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"


async def test_emails_from_the_episode(tmp_path_factory):
    alerts, flows, cls, _ = await episode(tmp_path_factory)
    chosen = _one_per_verdict(alerts, cls)
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    await asyncio.to_thread(controller.start)
    try:
        channel = EmailChannel(
            "mail", "127.0.0.1", controller.port, "monitor@treasury.example", ["ops@example.com"], timeout=5.0, security="none"
        )
        for a in chosen:
            await channel.send(a)
    finally:
        await asyncio.to_thread(controller.stop)
    assert len(sink.envelopes) == len(chosen)
    for a, env in zip(chosen, sink.envelopes):
        c, flow = _flow_and_cls(a, flows, cls)
        msg = email.message_from_bytes(env.content, policy=email.policy.default)
        assert msg["Subject"].startswith(f"[{c['severity'].upper()}] {c['entity']} ")
        assert c["verdict"] in msg["Subject"]
        check_message(msg.get_body(("plain",)).get_content(), c, flow)
        check_message(html_lib.unescape(msg.get_body(("html",)).get_content()), c, flow)


async def test_signed_webhooks_from_the_episode(tmp_path_factory):
    alerts, flows, cls, _ = await episode(tmp_path_factory)
    clock = FrozenClock(now=1_800_000_000)
    async with Receiver() as rx, aiohttp.ClientSession() as session:
        channel = WebhookChannel("hook", rx.url("/hook"), SECRET, session, clock=clock)
        for a in alerts:
            await channel.send(a)
        reqs = await rx.wait_for(len(alerts))
    for a, req in zip(alerts, reqs):
        assert verify_standard(SECRET, req.headers, req.body, now=clock.now)
        c, flow = _flow_and_cls(a, flows, cls)
        body = req.json["classification"]
        for key in ("verdict", "severity", "reasons", "usd_value", "btc_usd", "hashprice_usd", "version"):
            assert body[key] == c[key], key
        assert body["facts"] == c["facts"]
        assert req.json["out_units"] == int(c["out_units"]) and req.json["block_height"] == flow["block_height"]


async def test_console_lines_from_the_episode(tmp_path_factory):
    alerts, flows, cls, _ = await episode(tmp_path_factory)
    stream = io.StringIO()
    channel = ConsoleChannel("console", stream=stream)
    for a in _one_per_verdict(alerts, cls):
        stream.seek(0)
        stream.truncate()
        await channel.send(a)
        c, flow = _flow_and_cls(a, flows, cls)
        text = stream.getvalue()
        assert f"[{c['severity'].upper()}] {c['entity']} " in text and c["verdict"] in text
        for reason in c["reasons"]:
            assert reason in text


def _day(t: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d")


async def test_a_january_sale_is_judged_against_the_january_facts(tmp_path_factory):
    db = await played(tmp_path_factory)
    flows = await in_store(db, lambda store: {(r["txid"], r["entity"]): r for r in flow_rows(store)})
    latest = {(t, e): r["classification"] for (t, e), r in flows.items() if r["classification"]}
    # Bitdeer's first sale (2026-01-03): its figures in force are May 2025's production (196 BTC) and the
    # ~2,000 BTC it held at the end of December 2025, not May 2026's 921 BTC and 171 BTC.
    [c] = [c for (t, e), c in latest.items() if e == "Bitdeer" and _day(flows[(t, e)]["block_time"]) == "2026-01-03"]
    text = "\n".join(c["reasons"])
    assert "monthly production of 196 BTC (Bitdeer May 2025 update, as of 2025-05-31)" in text
    assert "holdings of 2,000 BTC reported (yellow.com on Bitdeer's drawdown, as of 2025-12-31)" in text
    assert "921" not in text and "171 BTC" not in text
    facts = {f["figure"]: f for f in c["facts"]}
    assert facts["monthly_production_btc"]["as_of"] == "2025-05-31" and facts["holdings_btc"]["as_of"] == "2025-12-31"
    # MARA's March holdings are rolled forward from the Feb 2026 figure with what was seen leaving since
    mara = [
        (flows[(t, e)]["block_time"], c) for (t, e), c in latest.items() if e == "MARA" and c["verdict"] == "balance_sheet_sale"
    ]
    last = max(mara, key=lambda x: x[0])[1]
    held = next(r for r in last["reasons"] if "holdings of ≈" in r)
    assert "53,000 BTC reported (yellow.com, Feb 2026, as of 2026-02-28)" in held and "seen leaving since" in held
    fact = next(f for f in last["facts"] if f["figure"] == "holdings_btc")
    assert fact["reported"] == 53_000 and fact["value"] < 53_000 - 10_000


async def test_only_later_figures_are_used_and_said_to_be_later():
    """A flow before every point of a figure uses the earliest point and says it is dated after the flow."""
    from monitor.core.classify import classify
    from monitor.model import Attribution, Destination, Entity, EntityFlow, Fact, FlowHistory, MarketContext, Profile

    at = 1_735_689_600  # 2025-01-01
    prod = Fact(900.0, "Example miner Mar 2026 update", "2026-03-31", quote="mined 900 BTC in March")
    ent = Entity("X", "miner", profile=Profile(monthly_production_btc=prod))
    flow = EntityFlow(
        "bitcoin",
        "ab" * 32,
        "X",
        1,
        at,
        500 * 10**8,
        0,
        0,
        0,
        500 * 10**8,
        (Destination("bc1qexample", 500 * 10**8, 0, Attribution("exchange", "Kraken")),),
    )
    c = classify(flow, ent, MarketContext(at=at), FlowHistory(), now=at)
    assert any(
        "monthly production of 900 BTC (Example miner Mar 2026 update, as of 2026-03-31: the earliest "
        "figure found, dated after this flow)" in r
        for r in c.reasons
    ), c.reasons
    assert c.facts[0].is_later
