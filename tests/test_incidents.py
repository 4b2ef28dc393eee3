"""Incidents through the real pipeline: the simulated MARA campaign (served by the local Esplora server, polled
step by step as the demo drives the daemon) becomes ONE incident that grows, delivered to a Standard Webhooks
receiver and as one email thread to a real aiosmtpd server, while an every-flow rule still gets its alerts."""

import asyncio
import base64
import datetime as dt
import email
import email.policy
import functools
import json
from decimal import Decimal

from aiosmtpd.controller import Controller
from fakes.offloop import in_store
from fakes.receiver import Receiver, Reply, free_port
from standardwebhooks import Webhook

from monitor.clock import FrozenClock
from monitor.config import load_config
from monitor.model import SALE_VERDICTS
from monitor.run.httpapi import incident_records
from monitor.run.runtime import runtime
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.scenario import build_scenario
from storage import incidents as inc_store
from storage.alerts import alert_rows
from storage.reads import flow_rows

HOOK_SECRET = "whsec_" + base64.b64encode(b"incident-test-key-of-32-bytes!!!").decode()
COIN = 100_000_000


@functools.cache
def scenario():
    return build_scenario(seed=2026, scale=1.0)


class Sink:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self):
        return [email.message_from_bytes(e.content, policy=email.policy.default) for e in self.envelopes]


def extra_toml(smtp_port: int, slack_api_url: str) -> str:
    return f"""
[[alerts.channels]]
name = "hook"
type = "webhook"
url = {{ env = "TM_INC_HOOK" }}
secret = {{ env = "TM_INC_SECRET" }}
min_interval = 0

[[alerts.channels]]
name = "mail"
type = "email"
host = "127.0.0.1"
port = {smtp_port}
security = "none"
sender = "alerts@treasury.example"
recipients = ["desk@fund.example"]

[[alerts.channels]]
name = "flows"
type = "webhook"
url = {{ env = "TM_INC_FLOWS" }}
secret = {{ env = "TM_INC_SECRET" }}
min_interval = 0

[[alerts.channels]]
name = "slackbot"
type = "slack"
bot_token = {{ env = "TM_INC_SLACK_TOKEN" }}
channel_id = "C0DESK"
api_url = "{slack_api_url}"
min_interval = 0

[[alerts.rules]]
name = "mara-campaign"
entities = ["MARA"]
mode = "incident"
channels = ["hook", "mail", "slackbot"]

[[alerts.rules]]
name = "mara-every-flow"
entities = ["MARA"]
min_usd = 30000000
channels = ["flows"]
"""


SLACK_TOKEN = "xoxb-0000-incident-test-token"


def slack_api(req):
    """Slack's chat.postMessage as documented: 200 {"ok": true, "channel", "ts", "message"}; the ts is new each time."""
    if req.headers.get("Authorization") != f"Bearer {SLACK_TOKEN}":
        return Reply(200, json.dumps({"ok": False, "error": "invalid_auth"}))
    slack_api.n = getattr(slack_api, "n", 0) + 1
    return Reply(
        200,
        json.dumps(
            {
                "ok": True,
                "channel": req.json["channel"],
                "ts": f"1772600000.{slack_api.n:06d}",
                "message": {"text": req.json.get("text", "")},
            }
        ),
    )


def signed_bodies(rx: Receiver) -> list[dict]:
    """Each request's body after checking its signature with the reference library's signer (the simulated
    clock is in March 2026, so the library's wall-clock tolerance check cannot be used)."""
    out = []
    for r in rx.requests:
        ts = dt.datetime.fromtimestamp(int(r.headers["webhook-timestamp"]), dt.UTC)
        expected = Webhook(HOOK_SECRET).sign(r.headers["webhook-id"], ts, r.body)
        assert expected in r.headers["webhook-signature"].split(" ")
        out.append(r.json)
    return out


async def test_the_mara_campaign_is_one_incident_that_grows(tmp_path, monkeypatch):
    sc = await asyncio.to_thread(scenario)
    mara = sc.expected["MARA"]
    sales = [f for f in mara.flows if f.verdict in SALE_VERDICTS and f.status == "active"]
    run = sc.start()
    db = tmp_path / "demo.db"
    sink = Sink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    await asyncio.to_thread(smtp.start)
    try:
        async with (
            EsploraServer(run.chain) as server,
            Receiver() as hook,
            Receiver() as flows,
            Receiver(on_request=slack_api) as slack,
        ):
            monkeypatch.setenv("TM_INC_SLACK_TOKEN", SLACK_TOKEN)
            monkeypatch.setenv("TM_INC_HOOK", hook.url("/incidents"))
            monkeypatch.setenv("TM_INC_FLOWS", flows.url("/flows"))
            monkeypatch.setenv("TM_INC_SECRET", HOOK_SECRET)
            path = tmp_path / "demo.toml"
            text = sc.config_toml(
                server.url, db, alert_max_age=400 * 86_400, extra_toml=extra_toml(smtp.port, slack.url("/api/chat.postMessage"))
            )
            await asyncio.to_thread(path.write_text, text)
            clock = FrozenClock(now=sc.start_time)
            async with runtime(await asyncio.to_thread(load_config, path), clock=clock) as rt:
                for step in sc.steps:
                    run.apply(step)
                    clock.now = step.at + 60
                    if step.observe or step.entity == "MARA":
                        await rt.pipeline.tick(rt.sources[0])
                        await rt.dispatcher.dispatch_once()
                clock.now = sc.end_time + 3_600
                await rt.pipeline.tick(rt.sources[0])
                await rt.dispatcher.dispatch_once()
                before_quiet_end = len(hook.requests)
                # a week after MARA's last sale the incident closes on the next tick, with a summary
                clock.now = sales[-1].at + 7 * 86_400 + 60
                await rt.pipeline.tick(rt.sources[0])
                await rt.dispatcher.dispatch_once()
    finally:
        await asyncio.to_thread(smtp.stop)

    bodies = signed_bodies(hook)
    incident_msgs = [b for b in bodies if b.get("incident_id") is not None]
    per_flow = [b for b in bodies if b.get("incident_id") is None]
    # one incident: an opening message, then one update per later sale, then (after a quiet week) the close
    ids = {b["incident_id"] for b in incident_msgs}
    assert len(ids) == 1
    opening, *updates = incident_msgs
    assert opening["kind"] == "new" and opening["schema"] == "treasury-monitor.incident/1"
    closing = updates[-1]
    assert hook.requests[before_quiet_end].json is closing or hook.requests[before_quiet_end].json == closing
    assert closing["incident"]["status"] == "closed" and "incident closed" in closing["changes"][0]
    growth = updates[:-1]
    assert len(growth) == len(sales) - 1
    # running totals after each message: the scripted sales so far, exactly
    running = 0
    for n, (body, sale) in enumerate(zip([opening, *growth], sales), start=1):
        running += sale.out_sat
        inc = body["incident"]
        assert (inc["flows"], inc["out_units"]) == (n, running), n
        assert inc["transfers"][-1]["txid"] == sale.txid
    final = closing["incident"]
    assert final["out_units"] == mara.sold_sat == 1_426_967_000_000  # 14,269.67 BTC
    assert final["verdicts"] == {"balance_sheet_sale": len(sales)}
    # every message threads under the opening one and has its own id
    assert all(b["amends"] == opening["message_id"] for b in updates)
    assert len({b["message_id"] for b in incident_msgs}) == len(incident_msgs)
    assert [r.headers["webhook-id"] for r in hook.requests if r.json.get("incident_id")] == [
        b["message_id"] for b in incident_msgs
    ]

    def stored(store):
        recs = {(r["txid"]): r for r in flow_rows(store, entity="MARA")}
        return recs, alert_rows(store), inc_store.incident_rows(store), incident_records(store, None, "MARA")

    recs, alerts, incidents, api = await in_store(db, stored)
    # what /api/incidents answers: the incident, its flows, every message id and the final totals
    [api_incident] = api
    assert api_incident["totals"] == final and api_incident["status"] == "closed"
    assert [a["payload"]["message_id"] for a in alerts if a["id"] in api_incident["messages"]] == [
        b["message_id"] for b in incident_msgs
    ]
    [incident] = incidents
    assert incident["status"] == "closed" and len(incident["flows"]) == len(sales)
    usd = sum(recs[s.txid]["classification"]["usd_value"] for s in sales)
    assert final["usd_value"] == round(usd, 2)
    holdings = final["holdings_btc"]
    assert abs(final["share_of_holdings"] - 14_269.67 / holdings) < 1e-9
    assert abs(final["production_multiple"] - 14_269.67 / final["monthly_production_btc"]) < 1e-9
    dest_total = sum(Decimal(d["out_amount"]) for d in final["destinations"])
    assert dest_total == Decimal("14269.67")  # every sold satoshi has a destination
    # the custody moves (not sales) still go out one by one on the incident rule's channels
    assert sorted(b["classification"]["verdict"] for b in per_flow) == ["custody_move", "custody_move"]
    # the every-flow rule still gets each MARA flow above its USD floor on its own
    flow_bodies = signed_bodies(flows)
    big = [s for s in mara.flows if s.verdict != "internal" and recs[s.txid]["classification"]["usd_value"] >= 30e6]
    assert sorted(b["txid"] for b in flow_bodies) == sorted(s.txid for s in big)
    assert all(b.get("incident_id") is None for b in flow_bodies)

    # email: one thread; each reply carries In-Reply-To (the previous) and References (all before it)
    mails = [m for m in sink.messages() if m["Subject"] and "selling" in m["Subject"]]
    assert len(mails) == len(incident_msgs)
    first_id = mails[0]["Message-ID"]
    assert mails[0]["In-Reply-To"] is None and first_id == f"<{opening['message_id']}@treasury.example>"
    for prev, (i, m) in zip(mails, enumerate(mails[1:], start=1)):
        assert m["In-Reply-To"] == prev["Message-ID"]
        assert m["References"].split() == [x["Message-ID"] for x in mails[:i]]
    assert "14,269.67 BTC ($982M) over 21.2 days" in mails[-1]["Subject"] and mails[-1]["Subject"].startswith(
        "[CRITICAL] CLOSED: MARA selling"
    )
    text = mails[-1].get_body(preferencelist=("plain",)).get_content()
    assert "Share of holdings:" in text and "monthly production" in text

    # Slack (bot token): the opening message is top-level, every later one replies in its thread
    posts = [r.json for r in slack.requests if "incident:bitcoin:MARA" in r.text]
    assert len(posts) == len(incident_msgs) and all(p["channel"] == "C0DESK" for p in posts)
    assert len(slack.requests) == len(posts) + 2  # and the two custody moves, each its own message
    assert "thread_ts" not in posts[0] and posts[0]["text"].startswith("MARA selling: 1 transfer")
    assert {p.get("thread_ts") for p in posts[1:]} == {"1772600000.000001"}


async def play_incident_rule(
    tmp_path,
    monkeypatch,
    alerts_lines: str,
    *,
    until: int | None = None,
    entity: str = "MARA",
    verdicts: str = '["balance_sheet_sale"]',
) -> Receiver:
    """Play the scenario (dispatching between polls, as the daemon does) with an incident rule for an
    entity's sales on a webhook; `alerts_lines` go into [alerts]. Returns the receiver."""
    sc = await asyncio.to_thread(scenario)
    run = sc.start()
    db = tmp_path / "gw.db"
    async with EsploraServer(run.chain) as server, Receiver() as hook:
        monkeypatch.setenv("TM_GW_HOOK", hook.url("/incidents"))
        monkeypatch.setenv("TM_GW_SECRET", HOOK_SECRET)
        extra = """
[[alerts.channels]]
name = "hook"
type = "webhook"
url = { env = "TM_GW_HOOK" }
secret = { env = "TM_GW_SECRET" }
min_interval = 0

[[alerts.rules]]
name = "campaign"
entities = ["ENTITY"]
mode = "incident"
verdicts = VERDICTS
channels = ["hook"]
""".replace("ENTITY", entity).replace("VERDICTS", verdicts)
        text = sc.config_toml(server.url, db, alert_max_age=400 * 86_400, extra_toml=extra)
        text = text.replace("[alerts]\n", "[alerts]\n" + alerts_lines + "\n", 1)
        path = tmp_path / "gw.toml"
        await asyncio.to_thread(path.write_text, text)
        clock = FrozenClock(now=sc.start_time)
        async with runtime(await asyncio.to_thread(load_config, path), clock=clock, alert_label="SIMULATED") as rt:
            for step in sc.steps:
                if until is not None and step.at > until:
                    break
                run.apply(step)
                clock.now = step.at + 60
                await rt.dispatcher.dispatch_once()  # what the daemon's dispatcher does between polls
                if step.observe or step.entity == entity:
                    await rt.pipeline.tick(rt.sources[0])
                    await rt.dispatcher.dispatch_once()
    return hook


def mara_sales():
    return [f for f in scenario().expected["MARA"].flows if f.verdict in SALE_VERDICTS and f.status == "active"]


async def test_group_wait_opens_the_incident_with_the_burst_in_one_message(tmp_path, monkeypatch):
    """With `group_wait` = 6 h the 10:00 and 15:00 sales of March 4 open the incident as ONE message."""
    sales = await asyncio.to_thread(mara_sales)
    hook = await play_incident_rule(tmp_path, monkeypatch, "group_wait = 21600", until=sales[3].at)
    bodies = signed_bodies(hook)
    assert [b["kind"] for b in bodies] == ["new", "update", "update"]
    opening = bodies[0]["incident"]
    assert opening["flows"] == 2 and opening["out_units"] == sales[0].out_sat + sales[1].out_sat
    assert [b["incident"]["flows"] for b in bodies[1:]] == [3, 4]
    assert all(b["amends"] == bodies[0]["message_id"] for b in bodies[1:])


async def test_group_interval_makes_a_daily_summary_that_tells_every_sale_once(tmp_path, monkeypatch):
    sales = await asyncio.to_thread(mara_sales)
    hook = await play_incident_rule(tmp_path, monkeypatch, "group_interval = 86400")
    bodies = signed_bodies(hook)
    days = (sales[-1].at - sales[0].at) / 86_400
    assert bodies[0]["kind"] == "new" and all(b["kind"] == "update" for b in bodies[1:])
    assert len(bodies) <= days + 2 < len(sales)  # at most one message a day, not one per sale
    told = [c for b in bodies[1:] for c in b["changes"] if c.startswith("new transfer")]
    assert len(told) == len(sales) - 1  # every later sale is told exactly once, in the update that took it in
    assert bodies[-1]["incident"]["out_units"] == sum(s.out_sat for s in sales)
    # the demo's label reaches incident messages too: the scenario is simulated
    assert all(b["label"] == "SIMULATED" and b["title"].startswith("SIMULATED: ") for b in bodies)
    sent = [int(r.headers["webhook-timestamp"]) for r in hook.requests]
    assert all(b - a >= 86_400 - 3_600 for a, b in zip(sent[1:], sent[2:]))  # updates a day apart (within a tick)


async def test_a_reorged_out_tranche_and_an_rbf_replacement_update_the_incident_totals(tmp_path, monkeypatch):
    sc = await asyncio.to_thread(scenario)
    for entity in ("Cango", "Riot"):
        exp = sc.expected[entity]
        [gone] = exp.retracted_txids
        await asyncio.to_thread((tmp_path / entity).mkdir)
        hook = await play_incident_rule(
            tmp_path / entity, monkeypatch, "", entity=entity, verdicts=json.dumps(sorted(SALE_VERDICTS))
        )
        bodies = signed_bodies(hook)
        told = [c for b in bodies for c in b["changes"] if gone[:10] in c]
        final = bodies[-1]["incident"]
        counted = {t["txid"] for t in final["transfers"]}
        assert gone not in counted
        sales = [f for f in exp.flows if f.verdict in SALE_VERDICTS and f.status == "active"]
        # the totals end as the sales that stayed: the retracted one left them
        by_incident = {}
        for b in bodies:
            by_incident[b["incident_id"]] = b["incident"]
        assert sum(i["out_units"] for i in by_incident.values()) == sum(f.out_sat for f in sales)
        assert any(gone in {t["txid"] for t in b["incident"]["transfers"]} for b in bodies)  # it counted while it stood
        said = [c for c in told if not c.startswith("new transfer")]
        if entity == "Cango":  # reorged out: said so, once
            assert said == [f"transfer {gone[:10]}… retracted: its block was orphaned by a reorg; no longer counted"]
        else:  # replaced: told as the replacement of that transfer, not as a retraction plus a new sale
            assert len(said) == 1 and said[0].startswith(f"transfer {gone[:10]}… replaced (RBF) by")


def test_an_incident_rule_on_a_slack_incoming_webhook_warns_that_it_cannot_thread(tmp_path, monkeypatch):
    from monitor.config import parse_config

    monkeypatch.setenv("TM_SLACK_URL", "https://hooks.slack.com/services/T0/B0/x")
    cfg = parse_config(
        {
            "monitor": {"storage": str(tmp_path / "x.db")},
            "alerts": {
                "channels": [{"name": "s", "type": "slack", "webhook_url": {"env": "TM_SLACK_URL"}}],
                "rules": [{"name": "campaigns", "mode": "incident", "channels": ["s"]}],
            },
        },
        base_dir=tmp_path,
    )
    assert any("cannot thread" in w and "bot_token" in w for w in cfg.warnings)
