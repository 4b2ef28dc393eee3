"""Channels against real local servers: Slack and webhook sinks (aiohttp), SMTP (aiosmtpd), console.

Fault classification only: retrying and giving up belong to the outbox.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import io
import logging
import ssl
import traceback

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from builders import self_signed_cert
from fakes.receiver import Receiver, Reply, block_kit_problems, free_port
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from alerts.channels import REGISTRY, Channel, build_channel
from alerts.channels.console import ConsoleChannel
from alerts.channels.email import DEDUP_HEADER, EmailChannel
from alerts.channels.http import parse_retry_after
from alerts.channels.slack import SlackChannel
from alerts.channels.webhook import (
    WebhookChannel,
    dedup_header,
    sign,
    signing_keys,
    standard_signature,
    verify_signature,
    verify_standard,
)
from alerts.ratelimit import MinInterval, RateLimitedChannel
from alerts.render import payload_of, render_webhook
from monitor.clock import FrozenClock, SystemClock
from monitor.model import Alert, ConfigError, DeliveryError

TXID = "4f" * 32
DEDUP = f"bitcoin:{TXID}:MARA:balance_sheet_sale"
SLACK_TOKEN = "XoXbSeCrEtToKeN42"
SLACK_PATH = f"/services/T0000AAAA/B0000BBBB/{SLACK_TOKEN}"
HMAC_SECRET = "whsec-hmac-s3cr3t-value"
SMTP_USER = "alerts@example.com"
SMTP_PASSWORD = "smtp-pa55word-s3cr3t"
NOW = 1_772_625_600  # 2026-03-04T12:00:00Z


def make_payload(**overrides):
    payload = {
        "kind": "new",
        "dedup_key": DEDUP,
        "changes": [],
        "explorer_url": f"https://mempool.space/tx/{TXID}",
        "flow": {
            "schema": "treasury-monitor.flow/1",
            "chain": "bitcoin",
            "txid": TXID,
            "entity": "MARA",
            "entity_kind": "miner",
            "direction": "out",
            "status": "confirmed",
            "block_height": 886000,
            "block_time": "2026-03-04T12:00:00Z",
            "seen_at": "2026-03-04T11:58:10Z",
            "asset": "BTC",
            "decimals": 8,
            "spent_units": 125000100000,
            "spent_amount": "1250.00100000",
            "change_units": 0,
            "change_amount": "0.00000000",
            "received_units": 0,
            "received_amount": "0.00000000",
            "fee_share_units": 100000,
            "fee_share_amount": "0.00100000",
            "out_units": 125000000000,
            "out_amount": "1250.00000000",
            "destinations": [
                {
                    "address": "bc1qgdjqv0av3q56jvd82tkdjpy7gdp9ut8tlqmgrpmv24sq90ecnvqqjwvw97",
                    "n": 0,
                    "value_units": 125000000000,
                    "value_amount": "1250.00000000",
                    "attribution": "exchange:Binance",
                }
            ],
            "classification": {
                "verdict": "balance_sheet_sale",
                "severity": "critical",
                "reasons": ["price $68,400 is 14.5% below MARA's cash cost $79,995 (CoinShares Q1 2026)"],
                "usd_value": 85500000.0,
                "btc_usd": 68400.0,
                "hashprice_usd": 29.1,
                "cash_cost_usd": 79995.0,
                "version": 1,
                "status": "active",
                "classified_at": "2026-03-04T12:01:00Z",
            },
        },
    }
    payload.update(overrides)
    return payload


def make_alert(alert_id: int = 1, **payload_overrides) -> Alert:
    payload = make_payload(**payload_overrides)
    return Alert(
        dedup_key=payload["dedup_key"], kind=payload["kind"], channels=("x",), payload=payload, created_at=NOW, id=alert_id
    )


def assert_no_secret(err: BaseException, caplog, *secrets: str) -> None:
    """Neither the message, the printed traceback (with its chained causes) nor any log shows a secret."""
    shown = "".join(traceback.format_exception(err)) + "\n" + caplog.text
    shown += "\n".join(str(r.args) for r in caplog.records)
    for secret in secrets:
        assert secret not in str(err)
        assert secret not in shown


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def receiver():
    async with Receiver() as rx:
        yield rx


@pytest.fixture
def clock():
    return FrozenClock(now=NOW)


# --- Slack ----------------------------------------------------------------------------------------


async def test_slack_receiver_gets_valid_block_kit_with_the_numbers(receiver, session):
    channel = SlackChannel("slack-ops", receiver.url(SLACK_PATH), session)
    await channel.send(make_alert())
    [req] = receiver.requests
    assert req.method == "POST" and req.path == SLACK_PATH
    assert req.headers["Content-Type"].startswith("application/json")
    body = req.json
    assert block_kit_problems(body) == []
    text = req.text
    for expected in (
        "1,250.00000000 BTC",
        "$85.5M",
        "balance_sheet_sale",
        "critical",
        "exchange:Binance",
        "$68,400",
        "$79,995",
        "14.5% below MARA",
        f"https://mempool.space/tx/{TXID}",
        DEDUP,
    ):
        assert expected in text, expected
    assert body["blocks"][0]["type"] == "header"


async def test_slack_4xx_is_permanent_with_slack_reason_and_no_token(receiver, session, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.script(Reply(400, "invalid_payload"))
    channel = SlackChannel("slack-ops", receiver.url(SLACK_PATH), session)
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    err = info.value
    assert err.retryable is False
    assert str(err) == "slack-ops: HTTP 400 from 127.0.0.1: invalid_payload"
    assert_no_secret(err, caplog, SLACK_TOKEN)


async def test_slack_token_echoed_by_the_server_is_scrubbed(receiver, session, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.script(Reply(404, f"no_service for {receiver.url(SLACK_PATH)}"))
    channel = SlackChannel("slack-ops", receiver.url(SLACK_PATH), session)
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    assert "no_service for" in str(info.value)
    assert_no_secret(info.value, caplog, SLACK_TOKEN, SLACK_PATH)


# --- fault classification (Slack and webhook share it) ---------------------------------------------


def _http_channel(kind: str, url: str, session, clock, timeout: float = 5.0):
    if kind == "slack":
        return SlackChannel("sink", url, session, timeout=timeout)
    return WebhookChannel("sink", url, HMAC_SECRET, session, clock=clock, timeout=timeout)


@pytest.mark.parametrize("kind", ["slack", "webhook"])
@pytest.mark.parametrize(
    ("reply", "retryable", "retry_after"),
    [
        (Reply(500, "boom"), True, None),
        (Reply(502, "bad gateway"), True, None),
        (Reply(503, "busy", {"Retry-After": "7"}), True, 7.0),
        (Reply(429, "rate_limited", {"Retry-After": "2"}), True, 2.0),
        (Reply(429, "rate_limited"), True, None),
        (Reply(400, "invalid_payload"), False, None),
        (Reply(403, "invalid_token"), False, None),
        (Reply(410, "channel_is_archived"), False, None),
        (Reply(301, "", {"Location": "http://127.0.0.1:1/elsewhere"}), False, None),
    ],
    ids=lambda v: str(v.status) if isinstance(v, Reply) else None,
)
async def test_http_status_classification(kind, reply, retryable, retry_after, receiver, session, clock, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.script(reply)
    channel = _http_channel(kind, receiver.url(SLACK_PATH), session, clock)
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    assert info.value.retryable is retryable
    assert info.value.retry_after == retry_after
    assert f"HTTP {reply.status} from 127.0.0.1" in str(info.value)
    assert len(receiver.requests) == 1  # one attempt, no redirect followed, no hidden retry
    assert_no_secret(info.value, caplog, SLACK_TOKEN, HMAC_SECRET)


@pytest.mark.parametrize("kind", ["slack", "webhook"])
async def test_connection_refused_is_retryable(kind, session, clock, caplog):
    caplog.set_level(logging.DEBUG)
    down = Receiver()  # port reserved, nothing listening
    channel = _http_channel(kind, down.url(SLACK_PATH), session, clock)
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    assert info.value.retryable is True
    assert "cannot connect to 127.0.0.1" in str(info.value)
    assert_no_secret(info.value, caplog, SLACK_TOKEN, HMAC_SECRET)
    # The same URL works once the receiver comes up, and again after a restart on the same port.
    async with down:
        await channel.send(make_alert())
        await down.restart()
        await channel.send(make_alert())
    assert [r.status for r in down.requests] == [200, 200]


@pytest.mark.parametrize("kind", ["slack", "webhook"])
async def test_timeout_is_retryable(kind, receiver, session, clock, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.delay(30)
    channel = _http_channel(kind, receiver.url(SLACK_PATH), session, clock, timeout=0.2)
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    assert info.value.retryable is True
    assert "no answer from 127.0.0.1 within 0.2s" in str(info.value)
    assert_no_secret(info.value, caplog, SLACK_TOKEN, HMAC_SECRET)


@pytest.mark.parametrize("kind", ["slack", "webhook"])
async def test_dropped_connection_is_retryable(kind, receiver, session, clock):
    receiver.drop()
    channel = _http_channel(kind, receiver.url("/hook"), session, clock)
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    assert info.value.retryable is True
    await channel.send(make_alert())  # the next request is answered
    assert [r.status for r in receiver.requests] == [None, 200]


async def test_500_three_times_then_200(receiver, session):
    receiver.fail(3)
    channel = SlackChannel("s", receiver.url("/h"), session)
    outcomes = []
    for _ in range(4):
        try:
            await channel.send(make_alert())
            outcomes.append("ok")
        except DeliveryError as exc:
            outcomes.append(exc.retryable)
    assert outcomes == [True, True, True, "ok"]
    assert len(receiver.json_bodies()) == 1


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 04 Mar 2026 12:00:30 GMT", now=NOW) == 30.0
    assert parse_retry_after("Wed, 04 Mar 2026 12:00:30 GMT") is None  # a date needs a clock


async def test_retry_after_http_date_uses_the_clock(receiver, session, clock):
    receiver.rate_limit(retry_after="Wed, 04 Mar 2026 12:01:00 GMT")
    channel = WebhookChannel("w", receiver.url("/h"), HMAC_SECRET, session, clock=clock)
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    assert info.value.retry_after == 60.0


# --- webhook --------------------------------------------------------------------------------------


def verifying(secret, clock=None):
    """An on_request hook: 401 unless the Standard Webhooks signature verifies with the reference library.

    `standardwebhooks.Webhook.verify` checks the timestamp against the wall clock (5 minutes), so the
    sending channel in these tests runs on `SystemClock`."""

    def check(req):
        try:
            Webhook(secret).verify(req.body, dict(req.headers))
        except WebhookVerificationError:
            return Reply(401, "bad signature")
        return None

    return check


WHSEC = "whsec_" + base64.b64encode(b"a 32-byte key for the test hook!").decode()
WHSEC_OLD = "whsec_" + base64.b64encode(b"the key being rotated out, 32 b.").decode()


async def test_webhook_standard_signature_verifies_with_the_reference_library(session):
    clock = SystemClock()
    async with Receiver(on_request=verifying(WHSEC)) as rx:
        channel = WebhookChannel("hook", rx.url("/ingest?token=abc123456"), WHSEC, session, clock=clock)
        alert = make_alert(kind="update", changes=["severity notice → critical"], message_id="msg_upd", amends="msg_first")
        await channel.send(alert)
        await channel.send(alert)  # a resend (e.g. after a timeout) repeats the id, not the message
    first, again = rx.requests
    assert first.status == again.status == 200
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == "msg_upd"
    assert first.headers["webhook-signature"].startswith("v1,")
    assert "X-Signature" not in first.headers and "X-Dedup-Key" not in first.headers  # legacy is opt-in
    assert first.json == render_webhook(payload_of(alert))
    assert first.json["kind"] == "update" and first.json["changes"] == ["severity notice → critical"]
    assert first.json["message_id"] == "msg_upd" and first.json["amends"] == "msg_first"
    assert first.json["dedup_key"] == DEDUP
    assert first.json["out_amount"] == "1250.00000000" and first.json["out_units"] == 125000000000
    # a raw (non-whsec_) secret is the key's UTF-8 bytes, as the reference library takes bytes
    async with Receiver(on_request=verifying(HMAC_SECRET.encode())) as rx:
        await WebhookChannel("hook", rx.url("/i"), HMAC_SECRET, session, clock=clock).send(make_alert())
    assert rx.requests[0].status == 200


async def test_webhook_messages_without_a_stored_id_get_distinct_stable_ids(receiver, session, clock):
    channel = WebhookChannel("hook", receiver.url("/h"), WHSEC, session, clock=clock)
    new, upd = make_alert(alert_id=1), make_alert(alert_id=2, kind="update")
    for a in (new, upd, new):
        await channel.send(a)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids[0] == ids[2] != ids[1] and all(i.startswith("msg_") for i in ids)
    assert receiver.requests[0].headers["webhook-timestamp"] == str(NOW)


async def test_webhook_rotation_signs_with_every_secret(session):
    clock = SystemClock()
    for receivers_secret in (WHSEC, WHSEC_OLD):  # a receiver on either key accepts the message
        async with Receiver(on_request=verifying(receivers_secret)) as rx:
            await WebhookChannel("hook", rx.url("/i"), f"{WHSEC} {WHSEC_OLD}", session, clock=clock).send(make_alert())
        [req] = rx.requests
        assert req.status == 200 and len(req.headers["webhook-signature"].split(" ")) == 2


async def test_webhook_legacy_headers_behind_the_deprecated_option(session, clock):
    async with Receiver() as rx:
        channel = WebhookChannel("hook", rx.url("/ingest"), HMAC_SECRET, session, clock=clock, legacy_headers=True)
        await channel.send(make_alert())
    [req] = rx.requests
    assert req.headers["X-Timestamp"] == str(NOW)
    assert req.headers["X-Dedup-Key"] == DEDUP
    assert req.headers["X-Signature"] == sign(HMAC_SECRET, NOW, req.body)
    assert verify_signature(HMAC_SECRET, req.headers["X-Timestamp"], req.body, req.headers["X-Signature"], now=NOW)
    assert verify_standard(HMAC_SECRET, req.headers, req.body, now=NOW)  # and the standard headers too


async def test_webhook_dedup_header_is_safe_for_any_key(receiver, session, clock):
    key = "bitcoin:ab:Druk Holding – Bhutan\r\nX-Evil: 1:sovereign_sale"
    channel = WebhookChannel("hook", receiver.url("/h"), HMAC_SECRET, session, clock=clock, legacy_headers=True)
    await channel.send(make_alert(dedup_key=key, message_id="msg_a\r\nX-Evil: 2"))
    [req] = receiver.requests
    assert "X-Evil" not in req.headers
    assert req.headers["X-Dedup-Key"] == ("bitcoin:ab:Druk%20Holding%20%E2%80%93%20Bhutan%0D%0AX-Evil:%201:sovereign_sale")
    assert req.json["dedup_key"] == key
    assert dedup_header(DEDUP) == DEDUP  # ordinary keys are sent as they are


async def test_webhook_wrong_secret_fails_verification(session, caplog):
    caplog.set_level(logging.DEBUG)
    other = "whsec_" + base64.b64encode(b"the receiver's own different key").decode()
    async with Receiver(on_request=verifying(other)) as rx:
        channel = WebhookChannel("hook", rx.url("/ingest"), WHSEC, session, clock=SystemClock())
        with pytest.raises(DeliveryError) as info:
            await channel.send(make_alert())
    assert info.value.retryable is False
    assert str(info.value) == "hook: HTTP 401 from 127.0.0.1: bad signature"
    [req] = rx.requests
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(req.body, dict(req.headers))
    Webhook(WHSEC).verify(req.body, dict(req.headers))
    assert_no_secret(info.value, caplog, WHSEC)


def test_verify_signature_rejects_stale_tampered_and_malformed():
    body = b'{"kind":"new"}'
    sig = sign(HMAC_SECRET, NOW, body)
    assert verify_signature(HMAC_SECRET, NOW, body, sig, now=NOW + 299)
    assert verify_signature(HMAC_SECRET, str(NOW), body, sig, now=NOW - 299)
    assert not verify_signature(HMAC_SECRET, NOW, body, sig, now=NOW + 301)  # replayed too late
    assert not verify_signature(HMAC_SECRET, NOW, body, sig, now=NOW - 301)  # from the future
    assert verify_signature(HMAC_SECRET, NOW, body, sig, now=NOW + 1000, tolerance=1000)
    assert not verify_signature(HMAC_SECRET, NOW, body + b" ", sig, now=NOW)  # tampered body
    assert not verify_signature(HMAC_SECRET, NOW + 1, body, sig, now=NOW)  # timestamp moved
    assert not verify_signature(HMAC_SECRET, NOW, body, sig.removeprefix("sha256="), now=NOW)
    assert not verify_signature(HMAC_SECRET, "not-a-number", body, sig, now=NOW)
    assert not verify_signature(HMAC_SECRET, None, body, sig, now=NOW)
    assert not verify_signature(HMAC_SECRET, NOW, body, None, now=NOW)


def test_verify_standard_rejects_stale_tampered_and_malformed():
    body = b'{"kind":"new"}'
    keys = signing_keys(WHSEC)
    h = {"webhook-id": "msg_1", "webhook-timestamp": str(NOW), "webhook-signature": standard_signature(keys, "msg_1", NOW, body)}
    assert verify_standard(WHSEC, h, body, now=NOW + 299)
    assert not verify_standard(WHSEC, h, body, now=NOW + 301)
    assert not verify_standard(WHSEC, h, body + b" ", now=NOW)
    assert not verify_standard(WHSEC, {**h, "webhook-id": "msg_2"}, body, now=NOW)  # the id is signed
    assert not verify_standard(WHSEC_OLD, h, body, now=NOW)
    assert not verify_standard(WHSEC, {**h, "webhook-timestamp": "x"}, body, now=NOW)
    assert not verify_standard(WHSEC, {"webhook-id": "msg_1"}, body, now=NOW)
    # the reference library agrees with our signer
    assert Webhook(WHSEC).sign("msg_1", dt.datetime.fromtimestamp(NOW, dt.UTC), body) == h["webhook-signature"]
    with pytest.raises(ValueError, match="part 1 starts with whsec_ but is not base64"):
        signing_keys("whsec_@@@notbase64")


async def test_stale_webhook_is_rejected_by_a_verifying_receiver(session):
    sender_clock = FrozenClock(now=NOW)  # years before the receiver's (wall) clock
    async with Receiver(on_request=verifying(WHSEC)) as rx:
        channel = WebhookChannel("hook", rx.url("/ingest"), WHSEC, session, clock=sender_clock)
        with pytest.raises(DeliveryError) as info:
            await channel.send(make_alert())
    assert info.value.retryable is False and "401" in str(info.value)


# --- email ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 / localhost: (cert path, key path)."""
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server_tls(certificate):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    return ctx


@pytest.fixture(scope="module")
def client_tls(certificate):
    """A client context that trusts only the test certificate (hostname checked against 127.0.0.1)."""
    return ssl.create_default_context(cafile=str(certificate[0]))


class Sink:
    """aiosmtpd handler: records envelopes (and whether the session authenticated); scripts refusals."""

    def __init__(self):
        self.envelopes = []
        self.authenticated = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        self.envelopes.append(envelope)
        self.authenticated.append(session.authenticated)
        return "250 Message accepted for delivery"

    def messages(self):
        return [email.message_from_bytes(e.content, policy=email.policy.default) for e in self.envelopes]


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


def start_smtp(**kwargs):
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return sink, controller


@pytest.fixture
def smtp_plain():
    sink, controller = start_smtp()
    yield sink, controller.port
    controller.stop()


@pytest.fixture
def smtp_starttls(server_tls):
    """STARTTLS required, AUTH required (only after TLS)."""
    sink, controller = start_smtp(
        tls_context=server_tls, require_starttls=True, authenticator=authenticator, auth_required=True, auth_require_tls=True
    )
    yield sink, controller.port
    controller.stop()


@pytest.fixture
def smtp_implicit_tls(server_tls):
    # aiosmtpd counts only STARTTLS as TLS for auth_require_tls, and warns on every connection when
    # AUTH is required without it; this connection is TLS from the first byte, so AUTH is offered
    # (auth_require_tls=False) and the test checks it was used.
    sink, controller = start_smtp(ssl_context=server_tls, authenticator=authenticator, auth_require_tls=False)
    yield sink, controller.port
    controller.stop()


def _email_channel(port, **kwargs):
    kwargs.setdefault("security", "none")
    return EmailChannel(
        "mail", "127.0.0.1", port, "monitor@treasury.example", ["ops@example.com", "cfo@example.com"], timeout=5.0, **kwargs
    )


def assert_alert_message(msg):
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Subject"] == ("[CRITICAL] MARA sold 1,250.00000000 BTC ($85.5M) to exchange:Binance — balance_sheet_sale")
    assert msg[DEDUP_HEADER] == DEDUP
    assert msg["From"] == "monitor@treasury.example"
    assert msg["To"] == "ops@example.com, cfo@example.com"
    assert msg["Message-ID"].endswith("@treasury.example>")
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for expected in ("1,250.00000000 BTC", "$85.5M", "balance_sheet_sale", "critical", "$68,400", DEDUP):
        assert expected in text and expected in html
    assert "MARA&#x27;s cash cost $79,995" in html
    assert f'href="https://mempool.space/tx/{TXID}"' in html


async def test_email_plain_smtp_multipart_alternative(smtp_plain):
    sink, port = smtp_plain
    await _email_channel(port).send(make_alert())
    [envelope] = sink.envelopes
    assert envelope.mail_from == "monitor@treasury.example"
    assert envelope.rcpt_tos == ["ops@example.com", "cfo@example.com"]
    assert_alert_message(sink.messages()[0])


async def test_email_starttls_with_auth(smtp_starttls, client_tls, caplog):
    caplog.set_level(logging.DEBUG, logger="alerts")
    sink, port = smtp_starttls
    channel = _email_channel(port, security="starttls", tls_context=client_tls, username=SMTP_USER, password=SMTP_PASSWORD)
    await channel.send(make_alert())
    assert_alert_message(sink.messages()[0])
    assert sink.authenticated == [True]
    assert SMTP_PASSWORD not in caplog.text


async def test_email_starttls_wrong_password_is_permanent_and_secret(smtp_starttls, client_tls, caplog):
    caplog.set_level(logging.DEBUG)
    sink, port = smtp_starttls
    channel = _email_channel(
        port, security="starttls", tls_context=client_tls, username=SMTP_USER, password=SMTP_PASSWORD + "-wrong"
    )
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    err = info.value
    assert err.retryable is False
    assert "authentication failed for user 'alerts@example.com'" in str(err) and "535" in str(err)
    assert_no_secret(err, caplog, SMTP_PASSWORD)
    assert sink.envelopes == []


async def test_email_server_echoing_the_password_is_scrubbed(server_tls, client_tls, caplog):
    caplog.set_level(logging.DEBUG, logger="alerts")

    def echoing(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad password {auth_data.password.decode()}")

    sink = Sink()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_tls,
        require_starttls=True,
        authenticator=echoing,
        auth_required=True,
    )
    # aiosmtpd's Controller starts and stops its server thread synchronously (it waits for it): off the loop
    await asyncio.to_thread(controller.start)
    try:
        channel = _email_channel(
            controller.port, security="starttls", tls_context=client_tls, username=SMTP_USER, password=SMTP_PASSWORD
        )
        with pytest.raises(DeliveryError) as info:
            await channel.send(make_alert())
    finally:
        await asyncio.to_thread(controller.stop)
    assert "bad password ***" in str(info.value)
    assert_no_secret(info.value, caplog, SMTP_PASSWORD)


async def test_email_implicit_tls(smtp_implicit_tls, client_tls):
    sink, port = smtp_implicit_tls
    channel = _email_channel(port, security="tls", tls_context=client_tls, username=SMTP_USER, password=SMTP_PASSWORD)
    await channel.send(make_alert())
    assert_alert_message(sink.messages()[0])
    assert sink.authenticated == [True]


async def test_email_untrusted_certificate_is_permanent(smtp_starttls):
    sink, port = smtp_starttls
    untrusting = ssl.create_default_context()  # system CAs only: the self-signed certificate is unknown
    channel = _email_channel(port, security="starttls", tls_context=untrusting, username=SMTP_USER, password=SMTP_PASSWORD)
    with pytest.raises(DeliveryError) as info:
        await channel.send(make_alert())
    assert info.value.retryable is False
    assert "certificate" in str(info.value)


async def test_email_starttls_required_but_not_offered_is_permanent(smtp_plain, client_tls):
    _, port = smtp_plain
    with pytest.raises(DeliveryError) as info:
        await _email_channel(port, security="starttls", tls_context=client_tls).send(make_alert())
    assert info.value.retryable is False
    assert "STARTTLS" in str(info.value)


@pytest.mark.parametrize(
    ("where", "reply", "retryable"),
    [
        ("data", "451 4.3.0 Try again later", True),
        ("data", "554 5.7.1 Rejected as spam", False),
        ("rcpt", "450 4.2.1 Mailbox busy", True),
        ("rcpt", "550 5.1.1 No such user", False),
    ],
)
async def test_email_smtp_codes(where, reply, retryable, smtp_plain):
    sink, port = smtp_plain
    setattr(sink, f"{where}_reply", reply)
    with pytest.raises(DeliveryError) as info:
        await _email_channel(port).send(make_alert())
    assert info.value.retryable is retryable
    assert reply.split(" ", 1)[0] in str(info.value)


async def test_email_connection_refused_is_retryable():
    with pytest.raises(DeliveryError) as info:
        await _email_channel(free_port()).send(make_alert())
    assert info.value.retryable is True


async def test_email_message_id_is_stable_per_alert_and_distinct_per_kind(smtp_plain):
    sink, port = smtp_plain
    channel = _email_channel(port)
    await channel.send(make_alert(alert_id=7))
    await channel.send(make_alert(alert_id=7))  # a resend after a crash
    await channel.send(make_alert(alert_id=8, kind="update", changes=["severity warning → critical"]))
    first, resend, update = sink.messages()
    assert first["Message-ID"] == resend["Message-ID"] != update["Message-ID"]
    assert first[DEDUP_HEADER] == resend[DEDUP_HEADER] == update[DEDUP_HEADER] == DEDUP
    assert update["Subject"].startswith("[CRITICAL] UPDATE: ")


async def test_email_attachments(smtp_plain):
    sink, port = smtp_plain
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    alert = make_alert(
        attachments=[{"filename": "digest.png", "content_type": "image/png", "data_base64": base64.b64encode(png).decode()}]
    )
    await _email_channel(port).send(alert)
    [msg] = sink.messages()
    assert msg.get_content_type() == "multipart/mixed"
    assert msg.get_body(("plain",)) is not None and msg.get_body(("html",)) is not None
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "digest.png" and att.get_content_type() == "image/png"
    assert att.get_content() == png


async def test_email_bad_attachment_is_permanent():
    alert = make_alert(attachments=[{"filename": "x.png", "content_type": "image/png", "data_base64": "***"}])
    with pytest.raises(DeliveryError) as info:
        await _email_channel(free_port()).send(alert)
    assert info.value.retryable is False


# --- console, rate limit, registry ----------------------------------------------------------------


async def test_console_writes_human_lines():
    stream = io.StringIO()
    channel = ConsoleChannel("console", stream)
    await channel.send(make_alert(kind="retraction", flow={**make_payload()["flow"], "status": "orphaned"}))
    out = stream.getvalue()
    assert out.startswith("[CRITICAL] RETRACTED: MARA sold 1,250.00000000 BTC ($85.5M)")
    assert "orphaned in a reorg" in out


async def test_console_closed_stream_is_permanent():
    stream = io.StringIO()
    stream.close()
    with pytest.raises(DeliveryError) as info:
        await ConsoleChannel("console", stream).send(make_alert())
    assert info.value.retryable is False


async def test_min_interval_sleeps_on_the_clock(clock):
    limiter = MinInterval(1.0, clock)
    assert [await limiter.wait() for _ in range(3)] == [0.0, 1.0, 1.0]
    clock.advance(5)
    assert await limiter.wait() == 0.0
    clock.advance(0.25)
    assert await limiter.wait() == 0.75
    assert clock.sleeps == [1.0, 1.0, 0.75]


async def test_rate_limited_channel_serialises_concurrent_sends(clock):
    stream = io.StringIO()
    channel = RateLimitedChannel(ConsoleChannel("console", stream), 2.0, clock)
    await asyncio.gather(*(channel.send(make_alert(alert_id=i)) for i in range(4)))
    assert clock.sleeps == [2.0, 2.0, 2.0]
    assert stream.getvalue().count("[CRITICAL]") == 4
    assert channel.name == "console"


async def test_build_channel_from_settings(session, clock, receiver):
    slack = build_channel("slack", "ops", {"webhook_url": receiver.url(SLACK_PATH)}, session=session, clock=clock)
    assert isinstance(slack, RateLimitedChannel) and slack.limiter.interval == 1.0  # Slack: 1 msg/s
    assert isinstance(slack, Channel)
    hook = build_channel(
        "webhook", "hook", {"url": receiver.url("/h"), "secret": HMAC_SECRET, "timeout": 3}, session=session, clock=clock
    )
    assert isinstance(hook, WebhookChannel)
    mail = build_channel(
        "email", "mail", {"host": "127.0.0.1", "sender": "a@b.c", "recipients": ["d@e.f"], "security": "tls", "min_interval": 0}
    )
    assert isinstance(mail, EmailChannel) and mail.port == 465  # the port follows `security` when absent
    console = build_channel("console", "c", {"stream": "stdout"})
    assert isinstance(console, ConsoleChannel)
    await slack.send(make_alert())
    await hook.send(make_alert())
    assert len(receiver.requests) == 2
    assert set(REGISTRY) == {"slack", "email", "webhook", "console", "apprise"}


def test_build_channel_reports_every_problem_without_values(clock):
    with pytest.raises(ConfigError) as info:
        build_channel("webhook", "hook", {"secret": HMAC_SECRET, "password": SMTP_PASSWORD, "min_interval": -1})
    problems = info.value.problems
    assert "channels.hook.url: required for a webhook channel" in problems
    assert "channels.hook.password: unknown setting for a webhook channel" in problems
    assert "channels.hook: a webhook channel needs a session (caller bug)" in problems
    assert "channels.hook.min_interval: must be a number of seconds >= 0" in problems
    assert HMAC_SECRET not in str(info.value) and SMTP_PASSWORD not in str(info.value)
    with pytest.raises(ConfigError, match="unknown channel type 'pager'"):
        build_channel("pager", "p", {})
    with pytest.raises(ConfigError, match="channels.mail: security must be one of"):
        build_channel("email", "mail", {"host": "h", "port": 1, "sender": "s", "recipients": ["r"], "security": "ssl"})


# --- Slack with a bot token (chat.postMessage, threads) -------------------------------------------

BOT_TOKEN = "xoxb-1111-bot-s3cr3t-token"


class MemoryThreads:
    """ThreadStore in memory (the durable one over storage is exercised in test_incidents.py)."""

    def __init__(self):
        self.refs = {}

    async def get(self, message_id, channel):
        return self.refs.get((message_id, channel))

    async def put(self, message_id, channel, ref):
        self.refs[(message_id, channel)] = ref


async def test_slack_bot_threads_an_update_under_the_first_message(session):
    answers = iter(["1772625600.000100", "1772625660.000200"])

    def api(req):
        return Reply(200, f'{{"ok":true,"channel":"C1","ts":"{next(answers)}","message":{{}}}}')

    threads = MemoryThreads()
    async with Receiver(on_request=api) as rx:
        ch = SlackChannel("bot", None, session, bot_token=BOT_TOKEN, channel_id="C1", api_url=rx.url("/api"), threads=threads)
        assert ch.can_thread
        await ch.send(make_alert(message_id="msg_first"))
        await ch.send(
            make_alert(
                alert_id=2,
                kind="update",
                message_id="msg_upd",
                thread=["msg_first"],
                amends="msg_first",
                changes=["severity notice → critical"],
            )
        )
    first, update = rx.requests
    assert first.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    assert first.json["channel"] == "C1" and "thread_ts" not in first.json and first.json["blocks"]
    assert update.json["thread_ts"] == "1772625600.000100"
    assert threads.refs == {("msg_first", "bot"): "1772625600.000100"}
    assert not SlackChannel("hook", "https://hooks.slack.com/services/x", session).can_thread


@pytest.mark.parametrize(
    "reply, retryable",
    [
        (Reply(200, '{"ok":false,"error":"invalid_auth"}'), False),
        (Reply(200, '{"ok":false,"error":"channel_not_found"}'), False),
        (Reply(200, '{"ok":false,"error":"internal_error"}'), True),
        (Reply(429, "", headers={"Retry-After": "30"}), True),
    ],
)
async def test_slack_bot_api_errors_are_classified_without_the_token(reply, retryable, session, caplog):
    caplog.set_level(logging.DEBUG)
    async with Receiver() as rx:
        rx.script(reply)
        ch = SlackChannel("bot", None, session, bot_token=BOT_TOKEN, channel_id="C1", api_url=rx.url("/api"))
        with pytest.raises(DeliveryError) as info:
            await ch.send(make_alert())
    assert info.value.retryable is retryable
    assert_no_secret(info.value, caplog, BOT_TOKEN)


async def test_slack_bot_answer_without_the_documented_json_is_not_resent(session, caplog):
    async with Receiver() as rx:
        rx.script(Reply(200, "ok"))
        ch = SlackChannel("bot", None, session, bot_token=BOT_TOKEN, channel_id="C1", api_url=rx.url("/api"))
        await ch.send(make_alert())  # 2xx: delivered, but nothing to thread under
    assert "without the documented JSON" in caplog.text


def test_slack_needs_exactly_one_way_in(session):
    with pytest.raises(ValueError, match="either webhook_url or bot_token"):
        SlackChannel("s", "https://hooks.slack.com/x", session, bot_token=BOT_TOKEN, channel_id="C1")
    with pytest.raises(ValueError, match="channel_id: required"):
        SlackChannel("s", None, session, bot_token=BOT_TOKEN)
