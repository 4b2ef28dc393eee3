"""Renderers: one message model → Slack Block Kit, email text + HTML, webhook JSON, console lines."""

from __future__ import annotations

import copy
import json
import re

import pytest
from fakes.receiver import block_kit_problems

from alerts.render import (
    SLACK_BLOCKS_MAX,
    SLACK_HEADER_MAX,
    build_title,
    format_amount,
    format_usd,
    headline,
    render_console,
    render_email,
    render_slack,
    render_webhook,
)

TXID = "4f" * 32
DEDUP = f"bitcoin:{TXID}:MARA:balance_sheet_sale"


def make_flow(**overrides):
    flow = {
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
            "reasons": [
                "price $68,400 is 14.5% below MARA's cash cost $79,995 (CoinShares Q1 2026)",
                "1,250 BTC is 2.6x MARA's monthly production of 480 BTC",
            ],
            "usd_value": 85500000.0,
            "btc_usd": 68400.0,
            "hashprice_usd": 29.1,
            "cash_cost_usd": 79995.0,
            "version": 1,
            "status": "active",
            "classified_at": "2026-03-04T12:01:00Z",
        },
    }
    flow.update(overrides)
    return flow


def make_payload(**overrides):
    payload = {
        "kind": "new",
        "dedup_key": DEDUP,
        "title": "MARA sold 1,250.00000000 BTC ($85.5M) to exchange:Binance — balance_sheet_sale",
        "changes": [],
        "explorer_url": f"https://mempool.space/tx/{TXID}",
        "flow": make_flow(),
    }
    payload.update(overrides)
    return payload


def slack_text(body) -> str:
    """Every string in a Slack body, joined (what a reader could see)."""
    out = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str):
            out.append(x)

    walk(body)
    return "\n".join(out)


# --- formatting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "compact", "expected"),
    [
        (85_500_000.0, True, "$85.5M"),
        (1_234_567, False, "$1,234,567"),
        (1_234_567, True, "$1.2M"),
        (999_960_000, True, "$1.0B"),
        (68_400.0, False, "$68,400"),
        (29.1, False, "$29.10"),
        (-2_500_000, True, "-$2.5M"),
        (None, False, "n/a"),
        (float("nan"), False, "n/a"),
    ],
)
def test_format_usd(value, compact, expected):
    assert format_usd(value, compact=compact) == expected


def test_amounts_are_exact_decimal_strings_never_floats():
    # 20,999,999.99999999 is not representable as a float: float formatting would print 21,000,000.
    assert format_amount({"out_amount": "20999999.99999999"}, "out") == "20,999,999.99999999"
    assert format_amount({"out_units": 1}, "out") == "0.00000001"
    assert format_amount({"out_units": 10**18 + 1}, "out", decimals=18) == "1.000000000000000001"
    assert format_amount({"balance_change_amount": "-1250.5"}, "balance_change") == "-1,250.5"
    assert format_amount({}, "out") is None


def test_title_is_built_when_absent():
    payload = make_payload()
    del payload["title"]
    assert build_title(payload) == "MARA sold 1,250.00000000 BTC ($85.5M) to exchange:Binance — balance_sheet_sale"


def test_built_title_for_non_sale_and_many_destinations():
    flow = make_flow(
        destinations=[
            {"address": "a1", "n": 0, "value_units": 5, "value_amount": "0.00000005", "attribution": "unknown"},
            {"address": "a2", "n": 1, "value_units": 9, "value_amount": "0.00000009", "attribution": "custodian:Coinbase"},
            {"address": "a3", "n": 2, "value_units": 1, "value_amount": "0.00000001", "attribution": "otc:Cumberland"},
        ]
    )
    flow["classification"]["verdict"] = "custody_move"
    title = build_title(make_payload(flow=flow, title=None))
    assert title.startswith("MARA moved 1,250.00000000 BTC ($85.5M) to custodian:Coinbase and 2 others")


# --- Slack ----------------------------------------------------------------------------------------


def test_slack_has_the_numbers_of_the_classification():
    body = render_slack(make_payload())
    assert block_kit_problems(body) == []
    blocks = body["blocks"]
    assert blocks[0]["type"] == "header"
    fields = next(b["fields"] for b in blocks if "fields" in b)
    labels = {f["text"].split("\n")[0].strip("*"): f["text"].split("\n", 1)[1] for f in fields}
    assert labels["Entity"] == "MARA (miner)"
    assert labels["Verdict"] == "balance_sheet_sale"
    assert labels["Severity"] == "critical"
    assert "1,250.00000000 BTC" in labels["Amount"] and "$85.5M" in labels["Amount"]
    assert labels["Destination"] == "exchange:Binance"
    assert "$68,400" in labels["Price vs cost"] and "$79,995" in labels["Price vs cost"]
    assert "14.5% below" in labels["Price vs cost"]
    text = slack_text(body)
    assert "price $68,400 is 14.5% below MARA's cash cost $79,995 (CoinShares Q1 2026)" in text
    assert DEDUP in next(b for b in blocks if b["type"] == "context")["elements"][0]["text"]
    button = next(b for b in blocks if b["type"] == "actions")["elements"][0]
    assert button["url"] == f"https://mempool.space/tx/{TXID}"
    assert body["text"].startswith("MARA sold 1,250.00000000 BTC ($85.5M)")


def test_slack_without_explorer_url_has_no_link():
    body = render_slack(make_payload(explorer_url=None))
    assert block_kit_problems(body) == []
    assert not any(b["type"] == "actions" for b in body["blocks"])
    assert "http" not in slack_text(body)


def test_slack_limits_are_respected_by_truncation():
    flow = make_flow()
    flow["classification"]["reasons"] = [f"reason {i} " + "x&y " * 300 for i in range(300)]
    flow["destinations"] = [
        {"address": f"bc1q{i:040d}", "n": i, "value_units": 1000 + i, "value_amount": "0.00001000", "attribution": "unknown"}
        for i in range(400)
    ]
    payload = make_payload(title="T" * 400, flow=flow, changes=["c" * 5000] * 40)
    body = render_slack(payload)
    assert block_kit_problems(body) == []
    header = body["blocks"][0]["text"]["text"]
    assert len(header) <= SLACK_HEADER_MAX and header.endswith("…")
    assert "more" in slack_text(body)
    # Clipping never leaves half an entity such as "&am…" behind.
    assert not re.search(r"&[a-z]{0,3}…", slack_text(body))


def test_slack_digest_with_many_entities_stays_within_50_blocks():
    entities = [
        {
            "entity": f"Miner{i}",
            "out_amount": f"{i}.50000000",
            "balance_change_amount": f"-{i}.50000000",
            "verdicts": {"production_sale": i % 4 + 1},
        }
        for i in range(2000)
    ]
    payload = {
        "kind": "digest",
        "dedup_key": "digest:2026-03-04",
        "changes": [],
        "explorer_url": None,
        "flow": None,
        "digest": {"period_start": "2026-03-03T00:00:00Z", "period_end": "2026-03-04T00:00:00Z", "entities": entities},
    }
    body = render_slack(payload)
    assert block_kit_problems(body) == []
    assert len(body["blocks"]) <= SLACK_BLOCKS_MAX
    text = slack_text(body)
    assert "Digest 2026-03-03T00:00:00Z → 2026-03-04T00:00:00Z: 2000 entities" in text
    assert "Miner1: out 1.50000000 BTC, balance change -1.50000000 BTC, production_sale ×2" in text
    assert "more" in text


def test_slack_escapes_untrusted_text():
    flow = make_flow()
    flow["classification"]["reasons"] = ["label <!channel> & <https://evil.example|click>"]
    flow["destinations"][0]["attribution"] = "exchange:<!here>"
    body = render_slack(make_payload(flow=flow))
    text = slack_text(body)
    assert "<!channel>" not in text and "<!here>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in text


# --- kinds ----------------------------------------------------------------------------------------


def test_update_says_what_changed_everywhere():
    changes = ["verdict unknown_transfer → sovereign_sale", "severity notice → warning"]
    payload = make_payload(kind="update", changes=changes)
    assert headline(payload).startswith("UPDATE: MARA sold")
    slack = slack_text(render_slack(payload))
    subject, text, html = render_email(payload)
    console = render_console(payload)
    webhook = render_webhook(payload)
    for change in changes:
        assert change in slack and change in text and change in html and change in console
    assert webhook["changes"] == changes and webhook["kind"] == "update"
    assert "UPDATE" in subject


@pytest.mark.parametrize(
    ("status", "why"),
    [("replaced", "replaced (RBF)"), ("orphaned", "orphaned in a reorg")],
)
def test_retraction_says_retracted_and_why(status, why):
    flow = make_flow(status=status)
    flow["classification"]["status"] = "retracted"
    payload = make_payload(kind="retraction", flow=flow)
    assert render_console(payload).startswith("[CRITICAL] RETRACTED: MARA sold")
    subject, text, html = render_email(payload)
    assert "RETRACTED: " in subject and why in text and why in html
    slack = render_slack(payload)
    assert block_kit_problems(slack) == []
    assert slack["blocks"][0]["text"]["text"].split(" ", 1)[1].startswith("RETRACTED: ")
    assert why in slack_text(slack)
    assert "balance_sheet_sale (retracted)" in slack_text(slack)
    assert render_webhook(payload)["status"] == status


def test_test_alert_without_flow_renders():
    payload = {"kind": "test", "dedup_key": "test:1", "changes": [], "explorer_url": None, "flow": None}
    assert block_kit_problems(render_slack(payload)) == []
    assert render_console(payload).startswith("[INFO] TEST: treasury-monitor test alert")
    subject, _, _ = render_email(payload)
    assert subject == "[INFO] TEST: treasury-monitor test alert"


# --- email, webhook, console ----------------------------------------------------------------------


def test_email_escapes_html_and_refuses_unsafe_links():
    flow = make_flow()
    flow["classification"]["reasons"] = ['<script>alert("x")</script> & co']
    flow["destinations"][0]["address"] = '"><img src=x onerror=alert(1)>'
    payload = make_payload(flow=flow, explorer_url="javascript:alert(1)", title="evil\r\nBcc: victim@example.com")
    subject, text, html = render_email(payload)
    assert "\n" not in subject and "\r" not in subject
    assert "<script>" not in html and "<img" not in html and "javascript:" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html
    assert '<script>alert("x")</script> & co' in text  # the text part is plain text: shown as is
    assert "1,250.00000000 BTC" in text and "$85.5M" in text and DEDUP in text


def test_email_links_the_explorer():
    subject, text, html = render_email(make_payload())
    assert subject == "[CRITICAL] MARA sold 1,250.00000000 BTC ($85.5M) to exchange:Binance — balance_sheet_sale"
    assert f'<a href="https://mempool.space/tx/{TXID}">' in html
    assert f"https://mempool.space/tx/{TXID}" in text


def test_webhook_is_the_flow_record_plus_kind_dedup_key_changes():
    payload = make_payload(kind="update", changes=["severity notice → warning"])
    original = copy.deepcopy(payload)
    body = render_webhook(payload)
    assert payload == original  # the payload is not mutated
    extra = {"kind": "update", "dedup_key": DEDUP, "changes": ["severity notice → warning"], "message_id": None, "amends": None}
    assert body == {**make_flow(), **extra}
    assert json.loads(json.dumps(body)) == body


def test_webhook_digest_body():
    digest = {"period_start": "a", "period_end": "b", "entities": [{"entity": "MARA", "out_amount": "1.0"}]}
    body = render_webhook({"kind": "digest", "dedup_key": "digest:a", "flow": None, "digest": digest})
    assert body == {
        "schema": "treasury-monitor.digest/1",
        "kind": "digest",
        "dedup_key": "digest:a",
        "changes": [],
        "digest": digest,
        "message_id": None,
        "amends": None,
    }


def test_console_strips_control_characters():
    flow = make_flow()
    flow["classification"]["reasons"] = ["\x1b[2J\x1b[31mred\x07 and \u202eevil"]
    out = render_console(make_payload(flow=flow))
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert out.splitlines()[0] == ("[CRITICAL] MARA sold 1,250.00000000 BTC ($85.5M) to exchange:Binance — balance_sheet_sale")
    assert f"https://mempool.space/tx/{TXID}" in out


def test_apprise_markdown_cannot_be_made_into_links_or_mentions_by_a_label():
    from alerts.render import render_apprise

    flow = make_flow()
    flow["destinations"][0]["attribution"] = "exchange:[click me](https://evil.example) <!channel> *bold*"
    flow["classification"]["reasons"] = ["label says [here](https://evil.example)"]
    title, body = render_apprise(make_payload(flow=flow))
    assert "](https://evil.example)" not in body.replace("\\](", "")  # every bracket is escaped
    assert "\\[click me\\]" in body and "\\<!channel\\>" in body and "\\*bold\\*" in body
    assert title.startswith("[CRITICAL] ") or title.startswith("[")
    _, text = render_apprise(make_payload(flow=flow), "text")
    assert "[click me](https://evil.example)" in text  # plain text shows it as text, which is safe there
