"""The offline demo end to end at reduced size: the real daemon against the simulated 2026 episode."""

import asyncio
import json
import sqlite3
from html.parser import HTMLParser

from monitor.cli.demo import run_demo
from monitor.sim.scenario import build_scenario

SEED, SCALE = 7, 0.1


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


async def test_demo_plays_the_episode_and_the_monitor_concludes_what_was_scripted(tmp_path):
    lines: list[str] = []
    result = await run_demo(
        seed=SEED, scale=SCALE, speed=3_000_000, out=tmp_path / "report.html", db=tmp_path / "demo.db", echo=lines.append
    )
    scenario = await asyncio.to_thread(build_scenario, seed=SEED, scale=SCALE)
    out = "\n".join(lines)
    assert out.startswith("SIMULATED DATA") and "ChainCatcher" in out
    assert result.is_ok, out
    by_name = {c.name: c for c in result.checks}
    # every treasury's sold total equals the scripted one; MARA's sold + custody is exactly 15,133 BTC
    for name in scenario.expected:
        assert by_name[name].sold_btc == by_name[name].expected_btc
    mara = scenario.expected["MARA"]
    assert mara.sold_sat + mara.custody_sat == 15_133 * 100_000_000
    assert scenario.expected["Cango"].sold_sat >= 4_451 * 100_000_000
    # the reorged-out tranche is retracted; the RBF-replaced sale becomes one update of its alert
    assert result.alerts.get("retraction") == 1 and result.alerts.get("update") == 1 and result.alerts.get("new", 0) > 5

    async def query(sql: str) -> list[tuple]:
        return await asyncio.to_thread(lambda: sqlite3.connect(result.db).execute(sql).fetchall())

    rows = await query(
        "select c.txid, c.entity, c.verdict, c.status, c.reasons from classifications c "
        "where c.version = (select max(version) from classifications d where d.txid = c.txid and d.entity = c.entity)"
    )
    latest = {(t, e): (v, s, json.loads(r)) for t, e, v, s, r in rows}
    for name, exp in scenario.expected.items():
        for f in exp.flows:
            verdict, status, reasons = latest[(f.txid, name)]
            assert verdict == f.verdict, (name, f.description)
            assert status == ("retracted" if f.status == "retracted" else "active"), (name, f.description)
            if f.accelerating:
                assert any("selling accelerates" in r for r in reasons), (name, f.description)
        for txid in exp.internal_txids:
            assert latest[(txid, name)][0] == "internal"
    # the replaced Riot tx and the reorged-out Cango tranche end retracted
    retracted = {t for (t, _e), (_v, s, _r) in latest.items() if s == "retracted"}
    assert retracted == {t for exp in scenario.expected.values() for t in exp.retracted_txids}
    assert any(f.accelerating for f in scenario.expected["Bhutan"].flows)
    # the report: valid HTML with decodable charts, every entity and every alert
    html = await asyncio.to_thread((tmp_path / "report.html").read_text)
    p = _Images()
    p.feed(html)
    assert p.images and all(src.startswith("data:image/png;base64,") for src in p.images)
    text = " ".join(p.text)
    for name in scenario.expected:
        assert name in text
    assert "SIMULATED" in html
    n_alerts = (await query("select count(*) from alerts"))[0][0]
    for (key,) in await query("select dedup_key from alerts"):
        assert key.split(":")[1][:12] in html
    assert n_alerts == sum(result.alerts.values())


def _user_toml(path, slack_url: str, hook_url: str) -> None:
    path.write_text(
        f"""
[monitor]
storage = "{path.parent / "user.db"}"

[[alerts.channels]]
name = "my-slack"
type = "slack"
webhook_url = {{ env = "TM_DEMO_SLACK" }}
min_interval = 0

[[alerts.channels]]
name = "my-hook"
type = "webhook"
url = {{ env = "TM_DEMO_HOOK_URL" }}
secret = {{ env = "TM_DEMO_HOOK_SECRET" }}

[[alerts.rules]]
name = "mine"
min_severity = "warning"
channels = ["my-slack", "my-hook"]
""",
        encoding="utf-8",
    )


async def test_demo_alerts_say_simulated_reach_user_channels_only_when_asked_and_verify(tmp_path, monkeypatch):
    from fakes.receiver import Receiver
    from standardwebhooks import Webhook

    from monitor.clock import SystemClock

    async with Receiver() as slack, Receiver() as hook:
        monkeypatch.setenv("TM_DEMO_SLACK", slack.url("/services/T0/B0/demo"))
        monkeypatch.setenv("TM_DEMO_HOOK_SECRET", "demo-hook-secret")
        monkeypatch.setenv("TM_DEMO_HOOK_URL", hook.url("/hook"))
        cfg = tmp_path / "my.toml"
        await asyncio.to_thread(_user_toml, cfg, slack.url("/services/T0/B0/demo"), hook.url("/hook"))
        lines: list[str] = []
        # Without the option: the user's channels get nothing, and the demo says how to opt in.
        await run_demo(
            seed=SEED, scale=SCALE, speed=3_000_000, out=None, db=tmp_path / "a.db", user_config=str(cfg), echo=lines.append
        )
        assert slack.requests == [] and hook.requests == []
        assert any("--to-my-channels" in line and "my-slack" in line for line in lines), lines[-12:]
        started = SystemClock().time()
        result = await run_demo(
            seed=SEED,
            scale=SCALE,
            speed=3_000_000,
            out=None,
            db=tmp_path / "b.db",
            user_config=str(cfg),
            to_user_channels=True,
            echo=lines.append,
        )
        # (verdicts are the other test's subject; at this speed a mempool tx's first-seen time depends on load)
        assert all(c.sold_btc == c.expected_btc for c in result.checks)
        finished = SystemClock().time()
    assert slack.requests and hook.requests
    for req in slack.requests:
        header = req.json["blocks"][0]["text"]["text"]
        assert "SIMULATED: " in header and req.json["text"].startswith("SIMULATED: ")
        assert any("SIMULATED: an invented chain" in b.get("text", {}).get("text", "") for b in req.json["blocks"][1:])
    for req in hook.requests:
        # signed with the real send time (the event, months earlier in simulated time, is in the body)
        ts = int(req.headers["webhook-timestamp"])
        assert started - 1 <= ts <= finished + 1
        # the reference Standard Webhooks verifier (it checks the timestamp against the wall clock too)
        assert Webhook(b"demo-hook-secret").verify(req.body, dict(req.headers)) == req.json
        assert req.json["label"] == "SIMULATED" and req.json["title"].startswith("SIMULATED: ")
        assert req.json["block_time"] is None or req.json["block_time"].startswith("2026-")
