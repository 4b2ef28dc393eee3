"""The apprise channel against real local receivers through apprise's generic `json://` and `ntfy://` schemas,
alone and through the durable outbox (one apprise attempt per send; the outbox retries 500s and honours a
429's Retry-After)."""

import asyncio
import logging

import pytest
from fakes.receiver import Receiver, Reply, free_port

from alerts.channels import AppriseChannel, build_channel
from alerts.outbox import Dispatcher, RetryPolicy
from alerts.render import render_apprise
from monitor.clock import FrozenClock
from monitor.config import parse_config
from monitor.model import ConfigError, DeliveryError
from monitor.run.alert_plan import StoreQueue, sample_alert
from storage import AsyncStore, Store
from storage import alerts as ob

NOW = 1_772_625_600
TOKEN = "s3cr3tTopicToken77"


def json_url(rx, path="/hook"):
    return "json://" + rx.url(path).removeprefix("http://")


def ntfy_url(rx, topic=TOKEN):
    host = rx.url("/").removeprefix("http://").rstrip("/")
    return f"ntfy://{host}/{topic}"


async def test_json_schema_delivers_the_rendered_message():
    alert = sample_alert(NOW, ("ap",))
    async with Receiver() as rx:
        await AppriseChannel("ap", json_url(rx)).send(alert)
    [req] = rx.requests
    title, body = render_apprise(alert.payload)
    assert req.path == "/hook" and req.json["title"] == title and req.json["message"] == body
    assert "1,250.00000000 BTC" in req.json["message"] and "exchange:Example" in req.json["message"]
    assert req.json["type"] == "info"  # severity info → apprise's info type


async def test_ntfy_schema_delivers_to_the_topic():
    alert = sample_alert(NOW, ("ap",))
    async with Receiver() as rx:
        await AppriseChannel("ap", ntfy_url(rx, "treasury"), format="text").send(alert)
    [req] = rx.requests
    assert req.json["topic"] == "treasury"
    assert req.json["title"].startswith("[INFO] TEST") and "Dedup key: test:" in req.json["message"]


@pytest.mark.parametrize(
    "reply, retryable, retry_after",
    [
        (Reply(500, "boom"), True, None),
        (Reply(503, "busy"), True, None),
        (Reply(429, "slow", headers={"Retry-After": "7"}), True, 7.0),
        (Reply(400, "bad"), False, None),
        (Reply(401, "who"), False, None),
    ],
)
async def test_failures_are_classified_from_the_http_answer(reply, retryable, retry_after):
    async with Receiver() as rx:
        rx.script(reply)
        with pytest.raises(DeliveryError) as info:
            await AppriseChannel("ap", json_url(rx)).send(sample_alert(NOW, ("ap",)))
    assert len(rx.requests) == 1  # apprise made one attempt, never more
    assert (info.value.retryable, info.value.retry_after) == (retryable, retry_after)
    assert str(info.value) == f"ap: HTTP {reply.status} through apprise"


async def test_a_retry_in_the_url_is_overridden_to_one_attempt():
    async with Receiver() as rx:
        rx.fail(1)
        with pytest.raises(DeliveryError):
            await AppriseChannel("ap", json_url(rx) + "?retry=3").send(sample_alert(NOW, ("ap",)))
    assert len(rx.requests) == 1


async def test_nobody_listening_is_retryable_and_the_token_never_shows(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"ntfy://127.0.0.1:{free_port()}/{TOKEN}"
    with pytest.raises(DeliveryError) as info:
        await AppriseChannel("ap", url, timeout=5).send(sample_alert(NOW, ("ap",)))
    assert info.value.retryable
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text
    assert TOKEN not in " ".join(str(r.args) for r in caplog.records)


def test_config_errors_name_the_setting_not_the_url(monkeypatch, tmp_path):
    monkeypatch.setenv("TM_AP_BAD", f"nosuchservice://{TOKEN}")
    monkeypatch.setenv("TM_AP_OK", f"ntfys://ntfy.example/{TOKEN}")
    data = {
        "monitor": {"storage": str(tmp_path / "x.db")},
        "alerts": {
            "channels": [
                {"name": "bad", "type": "apprise", "url": {"env": "TM_AP_BAD"}},
                {"name": "fmt", "type": "apprise", "url": {"env": "TM_AP_OK"}, "format": "rtf"},
                {"name": "plain", "type": "apprise", "url": f"json://127.0.0.1/{TOKEN}"},
                {"name": "ok", "type": "apprise", "url": {"env": "TM_AP_OK"}, "format": "html"},
            ]
        },
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path)
    problems = info.value.problems
    assert "alerts.channels[0].url: apprise does not recognise it (see apprise's list of services)" in problems
    assert any(p.startswith("alerts.channels[1].format:") and "is not one of markdown, text, html" in p for p in problems)
    assert any(p.startswith("alerts.channels[2].url:") for p in problems)  # a URL with a token is a secret
    assert not any(p.startswith("alerts.channels[3]") for p in problems)
    assert TOKEN not in str(info.value)


async def test_an_unusable_url_at_send_is_permanent():
    with pytest.raises(DeliveryError) as info:
        await AppriseChannel("ap", f"nosuchservice://{TOKEN}").send(sample_alert(NOW, ("ap",)))
    assert not info.value.retryable and TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match="format must be one of markdown, text, html"):
        build_channel("apprise", "ap", {"url": "json://127.0.0.1/x", "format": "rtf", "min_interval": 0})


# --- through the outbox ---------------------------------------------------------------------------


def _queue(store, alert, now):
    with store.batch():
        return ob.queue_alert(store, alert, chain="bitcoin", txid="00" * 32, entity="TEST", now=now)


@pytest.fixture
async def outbox(db_path):
    clock = FrozenClock(now=NOW)
    store = await asyncio.to_thread(Store, db_path)
    astore = AsyncStore(store)
    yield astore, clock
    await astore.close()


async def drain(d, astore, clock, passes=20):
    for _ in range(passes):
        await d.dispatch_once()
        nxt = await astore.run(ob.next_due_at)
        if nxt is None:
            return
        clock.now = max(clock.now, nxt)


async def test_outbox_retries_500s_through_apprise_until_delivered(outbox):
    astore, clock = outbox
    async with Receiver() as rx:
        rx.fail(3)
        aid = await astore.run(_queue, sample_alert(NOW, ("ap",)), NOW)
        d = Dispatcher(
            StoreQueue(astore), {"ap": AppriseChannel("ap", json_url(rx), clock=clock)}, clock, policy=RetryPolicy(base=1, cap=4)
        )
        await drain(d, astore, clock)
    assert [r.status for r in rx.requests] == [500, 500, 500, 200]
    attempts = await astore.run(ob.deliveries_of, aid)
    assert [a.status for a in attempts] == ["retry", "retry", "retry", "ok"]
    assert all("HTTP 500 through apprise" in a.error for a in attempts[:3])


async def test_outbox_honours_a_429_retry_after_from_an_ntfy_server(outbox):
    astore, clock = outbox
    async with Receiver() as rx:
        rx.rate_limit(retry_after="30")
        aid = await astore.run(_queue, sample_alert(NOW, ("ap",)), NOW)
        d = Dispatcher(
            StoreQueue(astore),
            {"ap": AppriseChannel("ap", ntfy_url(rx), clock=clock)},
            clock,
            policy=RetryPolicy(base=0.001, cap=0.001),
        )
        await d.dispatch_once()
        [first] = await astore.run(ob.deliveries_of, aid)
        assert first.status == "retry" and first.next_at - NOW >= 30  # the backoff alone would be ~0 s
        clock.now = NOW + 29
        await d.dispatch_once()
        assert len(rx.requests) == 1  # not due before Retry-After
        await drain(d, astore, clock)
    assert [r.status for r in rx.requests] == [429, 200]
    assert (await astore.run(ob.alert_rows))[0]["status"] == "delivered"
