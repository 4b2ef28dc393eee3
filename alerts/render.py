"""Renderers: one alert message model → Slack Block Kit, email (text + HTML), webhook JSON, console lines.

The message model is `Alert.payload`, a JSON-able dict. The keys read here (and nothing else):

    kind          "new" | "update" | "retraction" | "digest" | "test"        (default "new")
    dedup_key     "bitcoin:<txid>:<entity>:<verdict>"
    title         optional headline; built from the flow when absent
    changes       list of "what changed" sentences (updates); [] otherwise
    explorer_url  link to the tx on a block explorer, or null (only http/https URLs are linked)
    flow          the export record of one entity flow (schema "treasury-monitor.flow/1"), or null:
                  chain, txid, entity, entity_kind, direction, status, block_height, block_time,
                  seen_at, asset, decimals, {spent,change,received,fee_share,out}_{units,amount},
                  destinations[{address, n, value_units, value_amount, attribution}],
                  classification{verdict, severity, reasons, usd_value, btc_usd, hashprice_usd,
                                 price_source, cash_cost_usd (the cost it was compared with, or null),
                                 facts[{figure, value, as_of, ...}], version, status, classified_at} | null
    digest        kind == "digest" only: {period_start, period_end,
                  entities[{entity, asset?, out_amount, balance_change_amount, verdicts{verdict: n}}]}
    attachments   optional [{filename, content_type, data_base64}]; only the email channel uses them
    label         optional, e.g. "SIMULATED" (the demo): every channel puts it in the title and the body
    message_id    this message's own id ("msg_…"): the webhook `webhook-id`, the email Message-ID;
                  unique per message, stable across resends (stored with the alert)
    amends        for update/retraction: the `message_id` of the message it amends (the first one
                  about the same flow, or the incident's opening message); null otherwise
    thread        earlier message ids of the same flow or incident, oldest first (email References)
    facts, reasons, severity
                  balance and dormancy alerts: [[label, value]], [sentence], severity (override the flow's)
    watch         balance and dormancy alerts: {type, rule, entity, ...their numbers}
    incident      incident messages only: {id, entity, status, opened_at, last_flow_at, closed_at,
                  flows, out_amount, usd_value, share_of_holdings, production_multiple,
                  destinations[{attribution, amount}], verdicts{verdict: n}, transfers[...]}

Why the renderers are written the way they are:
- Amounts are shown from their exact decimal strings (`*_amount`, or `*_units` through `format_btc`),
  grouped with `Decimal`; a float never touches a BTC amount. USD figures are floats by design.
- Everything in a payload that came from outside (reasons quote labels, addresses, attribution names)
  is untrusted: control and bidi characters are stripped everywhere, Slack mrkdwn gets `& < >`
  escaped (so a label cannot smuggle `<!channel>` or a fake link), HTML is escaped, and only
  http/https explorer URLs become links.
- Slack limits (header ≤ 150 chars, section text ≤ 3000, field ≤ 2000, ≤ 10 fields, ≤ 50 blocks)
  are enforced here with clipping that never cuts an `&amp;` entity in half.
- A retraction's reason comes from the flow's status: `replaced` (RBF) or `orphaned` (reorg).
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from monitor.model import SALE_VERDICTS, Alert, format_btc

__all__ = [
    "SLACK_HEADER_MAX",
    "SLACK_TEXT_MAX",
    "SLACK_FIELD_MAX",
    "SLACK_FIELDS_MAX",
    "SLACK_BLOCKS_MAX",
    "payload_of",
    "build_title",
    "headline",
    "label_note",
    "format_usd",
    "format_amount",
    "render_slack",
    "render_email",
    "render_webhook",
    "render_console",
    "message_id_of",
    "render_apprise",
    "APPRISE_FORMATS",
]

SLACK_HEADER_MAX = 150
SLACK_TEXT_MAX = 3000
SLACK_FIELD_MAX = 2000
SLACK_FIELDS_MAX = 10
SLACK_BLOCKS_MAX = 50
SLACK_CONTEXT_ELEMENTS_MAX = 10
SLACK_BUTTON_TEXT_MAX = 75
SLACK_URL_MAX = 3000
#: Slack accepts 40,000 characters of fallback text but truncates notifications far earlier.
SLACK_FALLBACK_MAX = 3000
EMAIL_SUBJECT_MAX = 200
MAX_DESTINATIONS_SHOWN = 10
DIGEST_SCHEMA = "treasury-monitor.digest/1"
INCIDENT_SCHEMA = "treasury-monitor.incident/1"
WATCH_SCHEMA = "treasury-monitor.watch/1"
MAX_TRANSFERS_SHOWN = 12

_SEVERITY_EMOJI = {
    "critical": ":rotating_light:",
    "warning": ":warning:",
    "notice": ":large_blue_circle:",
    "info": ":information_source:",
}
_LABEL_NOTES = {
    "SIMULATED": "an invented chain replayed by the treasury-monitor demo; no real coins moved and no real address is shown",
}
_RETRACTION_WHY = {
    "replaced": ("tx replaced", "the transaction was replaced (RBF) by another one and will not confirm"),
    "orphaned": ("block orphaned", "the block that confirmed it was orphaned in a reorg"),
}
# C0/C1 controls and the Unicode bidi overrides/isolates that can make text display reversed.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def message_id_of(alert: Alert) -> str:
    """The alert's message id: the stored `message_id`, or one derived from its row for alerts queued before ids."""
    stored = (alert.payload or {}).get("message_id")
    if isinstance(stored, str) and stored:
        return stored
    # Not `created_at`: `alerts retry` restarts that clock, and a retried message must keep its id.
    digest = hashlib.sha256(f"{alert.dedup_key}\n{alert.kind}\n{alert.id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def payload_of(alert: Alert) -> dict[str, Any]:
    """The alert's message model, with `kind`, `dedup_key` and `message_id` filled in from the Alert when absent."""
    payload = {"kind": alert.kind, "dedup_key": alert.dedup_key, **(alert.payload or {})}
    if not payload.get("message_id"):
        payload["message_id"] = message_id_of(alert)
    return payload


# --- small formatters -----------------------------------------------------------------------------


def _clean(value: Any) -> str:
    """Untrusted value → one line of text without control or bidi characters."""
    text = _UNSAFE_CHARS.sub(" ", "" if value is None else str(value))
    return re.sub(" {2,}", " ", text).strip()


def _clip(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` chars with an ellipsis, never inside an HTML/mrkdwn entity."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 1)]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:] and len(cut) - amp <= 6:
        cut = cut[:amp]
    return cut + "…"


def format_usd(value: float | int | None, *, compact: bool = False) -> str:
    """USD for humans: `$1,234,567` (or `$85.5M` / `$1.2B` when compact); cents below $1,000."""
    if value is None or isinstance(value, bool):
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if v != v or v in (float("inf"), float("-inf")):
        return "n/a"
    sign = "-" if v < 0 else ""
    a = abs(v)
    if compact and round(a / 1e9, 1) >= 1:
        return f"{sign}${a / 1e9:,.1f}B"
    if compact and round(a / 1e6, 1) >= 1:
        return f"{sign}${a / 1e6:,.1f}M"
    if a >= 1000:
        return f"{sign}${a:,.0f}"
    return f"{sign}${a:,.2f}"


def _decimal(text: Any) -> Decimal | None:
    if not isinstance(text, str):
        return None
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def format_amount(record: dict[str, Any] | None, key: str, *, decimals: int = 8) -> str | None:
    """Exact, grouped amount of `record[key + '_amount']` (or `_units`): `'1,250.00000000'`; None if absent."""
    if not record:
        return None
    d = _decimal(record.get(f"{key}_amount"))
    if d is None:
        units = record.get(f"{key}_units")
        if isinstance(units, int) and not isinstance(units, bool):
            d = Decimal(format_btc(units, decimals))
    if d is None:
        # Not a decimal string: show it cleaned rather than guess a number.
        return _clean(record.get(f"{key}_amount")) or None
    return f"{d:,f}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# --- the intermediate message ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    """Everything a renderer shows, as plain (unescaped, cleaned) text."""

    kind: str
    headline: str
    note: str  # the label's body line ("" when unlabelled)
    severity: str
    dedup_key: str
    why: str  # retraction explanation, "" otherwise
    changes: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]  # (label, value) pairs, in display order
    reasons: tuple[str, ...]
    destinations: tuple[tuple[str, str, str], ...]  # (address, amount with asset, attribution)
    more_destinations: int
    digest_lines: tuple[str, ...]
    explorer_url: str | None
    txid: str
    transfer_lines: tuple[str, ...] = ()  # incidents: the transfers counted, newest last


def _flow(payload: dict[str, Any]) -> dict[str, Any]:
    flow = payload.get("flow")
    return flow if isinstance(flow, dict) else {}


def _classification(flow: dict[str, Any]) -> dict[str, Any]:
    cls = flow.get("classification")
    return cls if isinstance(cls, dict) else {}


def _decimals(flow: dict[str, Any]) -> int:
    d = _int(flow.get("decimals"))
    return d if d is not None and 0 <= d <= 36 else 8


def _sorted_destinations(flow: dict[str, Any]) -> list[dict[str, Any]]:
    dests = [d for d in flow.get("destinations") or () if isinstance(d, dict)]
    return sorted(dests, key=lambda d: -(_int(d.get("value_units")) or 0))


_SALE_KINDS = ("exchange", "otc")


def _traced_sale_units(flow: dict[str, Any]) -> int | None:
    """Units that reached exchanges/OTC desks when hop tracing broke a destination down (`shares`), else None.

    Direct sale destinations count in full; a traced one only by its shares that reached a sale counterparty.
    """
    dests = [d for d in flow.get("destinations") or () if isinstance(d, dict)]
    if not any(isinstance(d.get("shares"), list) and d["shares"] for d in dests):
        return None
    total = 0
    for d in dests:
        shares = d.get("shares") if isinstance(d.get("shares"), list) else None
        if shares:
            total += sum(
                _int(x.get("value_units")) or 0
                for x in shares
                if isinstance(x, dict) and str(x.get("attribution", "")).partition(":")[0] in _SALE_KINDS
            )
        elif str(d.get("attribution", "")).partition(":")[0] in _SALE_KINDS:
            total += _int(d.get("value_units")) or 0
    return total


def _traced_note(d: dict[str, Any], decimals: int, asset: str) -> str:
    shares = d.get("shares") if isinstance(d.get("shares"), list) else None
    if not shares:
        return ""
    reached = sum(
        _int(x.get("value_units")) or 0
        for x in shares
        if isinstance(x, dict) and str(x.get("attribution", "")).partition(":")[0] in ("exchange", "otc", "custodian")
    )
    return f" (traced: {format_btc(reached, decimals)} {asset} reached counterparties)"


def _attribution_summary(flow: dict[str, Any], *, limit: int = 2) -> str:
    seen: list[str] = []
    for d in _sorted_destinations(flow):
        a = _clean(d.get("attribution")) or "unknown"
        if a not in seen:
            seen.append(a)
    if not seen:
        return ""
    if len(seen) <= limit:
        return " and ".join(seen)
    return f"{seen[0]} and {len(seen) - 1} others"


def build_title(payload: dict[str, Any]) -> str:
    """The headline when the payload has no `title`: who moved how much, to whom, with what verdict."""
    kind = payload.get("kind") or "new"
    if kind == "digest":
        digest = payload.get("digest") if isinstance(payload.get("digest"), dict) else {}
        entities = [e for e in digest.get("entities") or () if isinstance(e, dict)]
        return (
            f"Digest {_clean(digest.get('period_start')) or '?'} → {_clean(digest.get('period_end')) or '?'}: "
            f"{len(entities)} {'entity' if len(entities) == 1 else 'entities'}"
        )
    if isinstance(payload.get("incident"), dict):
        return _incident_title(payload["incident"])
    flow = _flow(payload)
    if not flow:
        return "treasury-monitor test alert" if kind == "test" else "treasury-monitor alert"
    cls = _classification(flow)
    verdict = _clean(cls.get("verdict"))
    asset = _clean(flow.get("asset")) or "BTC"
    incoming = flow.get("direction") == "in"
    amount = format_amount(flow, "received" if incoming else "out", decimals=_decimals(flow)) or "?"
    if incoming:
        verb = "received"
    elif verdict in SALE_VERDICTS:
        verb = "sold"
    else:
        verb = "moved"
    usd = _num(cls.get("usd_value"))
    sold = _traced_sale_units(flow) if verb == "sold" else None
    out = _int(flow.get("out_units"))
    if sold is not None and out and 0 < sold < out:
        # hop tracing found only part of the coins at exchanges: say how much of how much
        part = f"{Decimal(format_btc(sold, _decimals(flow))):,f}"
        title = f"{_clean(flow.get('entity')) or '?'} sold {part} of {amount} {asset} moved"
        usd = usd * sold / out if usd is not None else None
    else:
        title = f"{_clean(flow.get('entity')) or '?'} {verb} {amount} {asset}"
    if usd is not None:
        title += f" ({format_usd(usd, compact=True)})"
    dest = _attribution_summary(flow)
    if dest and not incoming:
        title += f" to {dest}"
    if verdict:
        title += f" — {verdict}"
    return title


def _retraction(flow: dict[str, Any]) -> tuple[str, str]:
    status = flow.get("status")
    if status in _RETRACTION_WHY:
        return _RETRACTION_WHY[status]
    return ("retracted", "the classification was withdrawn")


def _label(payload: dict[str, Any]) -> str:
    return _clean(payload.get("label"))[:40]


def label_note(payload: dict[str, Any]) -> str:
    """The body line of a labelled alert ("" when unlabelled)."""
    label = _label(payload)
    if not label:
        return ""
    return f"{label}: " + _LABEL_NOTES.get(label.upper(), "labelled so by its sender; not a live event")


def headline(payload: dict[str, Any]) -> str:
    """One-line summary with the kind made explicit (`UPDATE: …`, `RETRACTED: … (tx replaced)`), after
    the payload's label (`SIMULATED: …`) when it has one."""
    label = _label(payload)
    text = _headline(payload)
    return f"{label}: {text}" if label else text


def _headline(payload: dict[str, Any]) -> str:
    kind = payload.get("kind") or "new"
    title = _clean(payload.get("title")) or build_title(payload)
    incident = payload.get("incident") if isinstance(payload.get("incident"), dict) else {}
    if kind == "update" and incident.get("status") != "closed":  # a closing summary says CLOSED instead
        return f"UPDATE: {title}"
    if kind == "retraction":
        return f"RETRACTED: {title} ({_retraction(_flow(payload))[0]})"
    if kind == "test":
        return title if title.upper().startswith("TEST") else f"TEST: {title}"
    return title


def _status_text(flow: dict[str, Any]) -> str:
    status = _clean(flow.get("status"))
    height = _int(flow.get("block_height"))
    if status == "confirmed" and height is not None:
        when = _clean(flow.get("block_time"))
        return f"confirmed in block {height:,}" + (f" ({when})" if when else "")
    if status == "mempool":
        return "unconfirmed (mempool)"
    return status or "unknown"


def _price_vs_cost(cls: dict[str, Any]) -> tuple[str, str] | None:
    """("Price vs cost", text) when the classification compared the price with a cost, else ("Price", text)."""
    price = _num(cls.get("btc_usd"))
    if price is None:
        return None
    source = _clean(cls.get("price_source"))
    shown = f"BTC {format_usd(price)}" + (f" ({source})" if source else "")
    cost = _num(cls.get("cash_cost_usd"))
    if cost is None or cost <= 0:
        # Sovereigns and miners without a cost figure: the classification compared nothing.
        return ("Price", shown)
    pct = (price - cost) / cost * 100
    side = "below" if pct < 0 else "above"
    facts = [f for f in cls.get("facts") or () if isinstance(f, dict) and f.get("figure") == "cash_cost_usd"]
    as_of = _clean(facts[0].get("as_of")) if facts else ""
    dated = f", cost as of {as_of}" if as_of else ""
    return ("Price vs cost", f"{shown} vs cash cost {format_usd(cost)} ({abs(pct):.1f}% {side}{dated})")


def _message(payload: dict[str, Any]) -> _Message:
    kind = _clean(payload.get("kind")) or "new"
    flow = _flow(payload)
    cls = _classification(flow)
    decimals = _decimals(flow)
    asset = _clean(flow.get("asset")) or "BTC"
    severity = _clean(cls.get("severity")) or ("info" if kind in ("digest", "test") else "unknown")

    facts: list[tuple[str, str]] = []
    if flow:
        entity = _clean(flow.get("entity")) or "?"
        ekind = _clean(flow.get("entity_kind"))
        facts.append(("Entity", f"{entity} ({ekind})" if ekind else entity))
        if cls:
            verdict = _clean(cls.get("verdict")) or "?"
            cstatus = _clean(cls.get("status"))
            if cstatus and cstatus != "active":
                verdict += f" ({cstatus})"
            version = _int(cls.get("version"))
            if version is not None and version > 1:
                verdict += f", v{version}"
            facts.append(("Verdict", verdict))
            facts.append(("Severity", severity))
        key = "received" if flow.get("direction") == "in" else "out"
        amount = format_amount(flow, key, decimals=decimals)
        if amount is not None:
            usd = _num(cls.get("usd_value"))
            value = f"{amount} {asset}"
            if usd is not None:
                value += f" ≈ {format_usd(usd, compact=True)} ({format_usd(usd)})"
            facts.append(("Amount", value))
        dest = _attribution_summary(flow, limit=4)
        if dest:
            facts.append(("Destination", dest))
        pvc = _price_vs_cost(cls)
        if pvc:
            facts.append(pvc)
        hashprice = _num(cls.get("hashprice_usd"))
        if hashprice is not None:
            facts.append(("Hashprice", f"{format_usd(hashprice)}/PH/day"))
        facts.append(("Status", _status_text(flow)))

    dests = _sorted_destinations(flow)
    shown = tuple(
        (
            _clean(d.get("address")) or "(no address)",
            f"{format_amount(d, 'value', decimals=decimals) or '?'} {asset}",
            (_clean(d.get("attribution")) or "unknown") + _traced_note(d, decimals, asset),
        )
        for d in dests[:MAX_DESTINATIONS_SHOWN]
    )

    digest_lines: list[str] = []
    if kind == "digest" and isinstance(payload.get("digest"), dict):
        for e in payload["digest"].get("entities") or ():
            if not isinstance(e, dict):
                continue
            e_asset = _clean(e.get("asset")) or "BTC"
            line = f"{_clean(e.get('entity')) or '?'}: out {format_amount(e, 'out') or '0'} {e_asset}"
            change = format_amount(e, "balance_change")
            if change is not None:
                line += f", balance change {change} {e_asset}"
            verdicts = e.get("verdicts") if isinstance(e.get("verdicts"), dict) else {}
            if verdicts:
                line += ", " + ", ".join(f"{_clean(v)} ×{_clean(n)}" for v, n in verdicts.items())
            digest_lines.append(line)

    url = payload.get("explorer_url")
    if not (isinstance(url, str) and re.match(r"https?://[^\s<>\"'`|]+$", url)):
        url = None

    why = ""
    if kind == "retraction":
        why = _retraction(flow)[1]
        if flow.get("txid"):
            why = f"{why} (txid {_clean(flow.get('txid'))})"

    incident = payload.get("incident") if isinstance(payload.get("incident"), dict) else None
    transfer_lines: tuple[str, ...] = ()
    if incident is not None:
        facts, transfer_lines = _incident_facts(incident)
        severity = _clean(incident.get("severity")) or severity
    reasons = tuple(_clean(r) for r in cls.get("reasons") or () if _clean(r))
    # Balance and dormancy alerts state their own facts, reasons and severity (a flow may ride along).
    if isinstance(payload.get("facts"), list):
        facts = [(_clean(f[0]), _clean(f[1])) for f in payload["facts"] if isinstance(f, (list, tuple)) and len(f) == 2]
    if isinstance(payload.get("reasons"), list):
        reasons = tuple(_clean(r) for r in payload["reasons"] if _clean(r))
    if _clean(payload.get("severity")):
        severity = _clean(payload.get("severity"))

    return _Message(
        transfer_lines=transfer_lines,
        kind=kind,
        headline=headline(payload),
        note=label_note(payload),
        severity=severity,
        dedup_key=_clean(payload.get("dedup_key")),
        why=why,
        changes=tuple(_clean(c) for c in payload.get("changes") or () if _clean(c)),
        facts=tuple(facts),
        reasons=reasons,
        destinations=shown,
        more_destinations=max(0, len(dests) - len(shown)),
        digest_lines=tuple(digest_lines),
        explorer_url=url,
        txid=_clean(flow.get("txid")),
    )


# --- Slack ----------------------------------------------------------------------------------------


def _mrkdwn(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control (`<!channel>`, `<url|label>`)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, SLACK_TEXT_MAX)}}


def _bulleted_sections(title: str, items: list[str], budget: int) -> list[dict[str, Any]]:
    """`items` as bullet lines packed into ≤ `budget` sections of ≤ 3000 chars; overflow says how many."""
    blocks: list[dict[str, Any]] = []
    current = f"*{title}*"
    for i, item in enumerate(items):
        line = "\n• " + _clip(_mrkdwn(item), SLACK_TEXT_MAX - 64)
        if len(current) + len(line) > SLACK_TEXT_MAX - 32:
            if len(blocks) + 1 >= budget:
                current += f"\n…and {len(items) - i} more"
                break
            blocks.append(_section(current))
            current = ""
        current += line
    if current:
        blocks.append(_section(current.lstrip("\n")))
    return blocks[:budget]


def render_slack(payload: dict[str, Any]) -> dict[str, Any]:
    """Slack Incoming Webhook body: Block Kit blocks within Slack's limits plus a `text` fallback."""
    m = _message(payload)
    emoji = _SEVERITY_EMOJI.get(m.severity, "")
    header = f"{emoji} {m.headline}" if emoji else m.headline
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(header, SLACK_HEADER_MAX), "emoji": True}}
    ]
    if m.note:
        blocks.append(_section(f"*{_mrkdwn(m.note)}*"))
    if m.why:
        blocks.append(_section(f"*Retracted:* {_mrkdwn(m.why)}"))
    if m.changes:
        blocks.extend(_bulleted_sections("What changed", list(m.changes), 3))
    if m.facts:
        fields = [
            {"type": "mrkdwn", "text": _clip(f"*{label}*\n{_mrkdwn(value)}", SLACK_FIELD_MAX)}
            for label, value in m.facts[:SLACK_FIELDS_MAX]
        ]
        blocks.append({"type": "section", "fields": fields})
    if m.reasons:
        blocks.extend(_bulleted_sections("Reasons", list(m.reasons), 5))
    if m.destinations:
        lines = [f"{_code(_mrkdwn(addr))} {_mrkdwn(amount)} → {_mrkdwn(attr)}" for addr, amount, attr in m.destinations]
        if m.more_destinations:
            lines.append(f"…and {m.more_destinations} more")
        text = "*Destinations*\n" + "\n".join(lines)
        blocks.append(_section(text))
    if m.transfer_lines:
        blocks.extend(_bulleted_sections("Transfers", list(m.transfer_lines), 3))
    # Tail blocks (link, context) always fit: the digest gets what is left of the budget.
    tail: list[dict[str, Any]] = []
    if m.explorer_url and len(m.explorer_url) <= SLACK_URL_MAX:
        tail.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "View transaction", "emoji": False},
                        "url": m.explorer_url,
                        "action_id": "open_explorer",
                    }
                ],
            }
        )
    context_text = f"dedup key {_code(_mrkdwn(m.dedup_key))}" if m.dedup_key else "treasury-monitor"
    if m.explorer_url:
        context_text += f" · <{m.explorer_url}|explorer>"
    tail.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(context_text, SLACK_FIELD_MAX)}]})
    if m.digest_lines:
        budget = SLACK_BLOCKS_MAX - len(blocks) - len(tail)
        blocks.extend(_bulleted_sections("Entities", list(m.digest_lines), budget))
    blocks = blocks[: SLACK_BLOCKS_MAX - len(tail)] + tail

    fallback = [_mrkdwn(m.headline)] + ([_mrkdwn(m.note)] if m.note else [])
    fallback += [f"{label}: {_mrkdwn(value)}" for label, value in m.facts]
    if m.why:
        fallback.append(f"Retracted: {_mrkdwn(m.why)}")
    fallback += [f"Changed: {_mrkdwn(c)}" for c in m.changes]
    fallback += [_mrkdwn(line) for line in m.digest_lines]
    fallback += [_mrkdwn(line) for line in m.transfer_lines]
    if m.explorer_url:
        fallback.append(m.explorer_url)
    return {"text": _clip("\n".join(fallback), SLACK_FALLBACK_MAX), "blocks": blocks}


# --- email ----------------------------------------------------------------------------------------


def render_email(payload: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, plain text, HTML) of one alert; every untrusted value in the HTML is escaped."""
    m = _message(payload)
    subject = _clip(f"[{m.severity.upper()}] {m.headline}", EMAIL_SUBJECT_MAX)

    lines = [m.headline, ""] + ([m.note, ""] if m.note else [])
    if m.why:
        lines += [f"Retracted: {m.why}", ""]
    if m.changes:
        lines += ["What changed:"] + [f"  - {c}" for c in m.changes] + [""]
    if m.facts:
        width = max(len(label) for label, _ in m.facts)
        lines += [f"{label + ':':<{width + 1}} {value}" for label, value in m.facts] + [""]
    if m.reasons:
        lines += ["Reasons:"] + [f"  - {r}" for r in m.reasons] + [""]
    if m.destinations:
        lines += ["Destinations:"] + [f"  - {a}  {amt}  -> {attr}" for a, amt, attr in m.destinations]
        if m.more_destinations:
            lines.append(f"  ...and {m.more_destinations} more")
        lines.append("")
    if m.digest_lines:
        lines += ["Entities:"] + [f"  - {d}" for d in m.digest_lines] + [""]
    if m.transfer_lines:
        lines += ["Transfers:"] + [f"  - {t}" for t in m.transfer_lines] + [""]
    if m.explorer_url:
        lines += [f"Transaction: {m.explorer_url}", ""]
    lines.append(f"Dedup key: {m.dedup_key}")
    text = "\n".join(lines) + "\n"

    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"></head>',
        '<body style="font-family: sans-serif; font-size: 14px;">',
        f"<h2>{e(m.headline)}</h2>",
    ]
    if m.note:
        parts.append(f'<p style="color:#b00"><strong>{e(m.note)}</strong></p>')
    if m.why:
        parts.append(f'<p style="color:#b00"><strong>Retracted:</strong> {e(m.why)}</p>')
    if m.changes:
        parts.append("<p><strong>What changed</strong></p><ul>")
        parts += [f"<li>{e(c)}</li>" for c in m.changes]
        parts.append("</ul>")
    if m.facts:
        parts.append('<table cellpadding="4" style="border-collapse: collapse;">')
        parts += [f'<tr><th align="left">{e(label)}</th><td>{e(value)}</td></tr>' for label, value in m.facts]
        parts.append("</table>")
    if m.reasons:
        parts.append("<p><strong>Reasons</strong></p><ul>")
        parts += [f"<li>{e(r)}</li>" for r in m.reasons]
        parts.append("</ul>")
    if m.destinations:
        parts.append('<p><strong>Destinations</strong></p><table cellpadding="4">')
        parts += [f"<tr><td><code>{e(a)}</code></td><td>{e(amt)}</td><td>{e(attr)}</td></tr>" for a, amt, attr in m.destinations]
        if m.more_destinations:
            parts.append(f'<tr><td colspan="3">…and {m.more_destinations} more</td></tr>')
        parts.append("</table>")
    if m.digest_lines:
        parts.append("<p><strong>Entities</strong></p><ul>")
        parts += [f"<li>{e(d)}</li>" for d in m.digest_lines]
        parts.append("</ul>")
    if m.transfer_lines:
        parts.append("<p><strong>Transfers</strong></p><ul>")
        parts += [f"<li>{e(t)}</li>" for t in m.transfer_lines]
        parts.append("</ul>")
    if m.explorer_url:
        parts.append(f'<p><a href="{e(m.explorer_url, quote=True)}">View transaction</a></p>')
    parts.append(f'<p style="color:#777; font-size: 12px;">Dedup key: <code>{e(m.dedup_key)}</code></p>')
    parts.append("</body></html>")
    return subject, text, "\n".join(parts) + "\n"


# --- webhook and console --------------------------------------------------------------------------


def render_webhook(payload: dict[str, Any]) -> dict[str, Any]:
    """Webhook JSON: the flow export record as is, plus `kind`, `dedup_key`, `changes` (and `digest`)."""
    flow = payload.get("flow")
    body: dict[str, Any] = dict(flow) if isinstance(flow, dict) else {"schema": DIGEST_SCHEMA}
    if not isinstance(flow, dict) and isinstance(payload.get("incident"), dict):
        body = {"schema": INCIDENT_SCHEMA}
    if not isinstance(flow, dict) and isinstance(payload.get("watch"), dict):
        body = {"schema": WATCH_SCHEMA}
    body["kind"] = payload.get("kind") or "new"
    body["dedup_key"] = payload.get("dedup_key")
    body["changes"] = list(payload.get("changes") or [])
    if _label(payload):
        # A labelled (e.g. SIMULATED) alert says so in its title and body on every channel, this one too.
        body["title"] = headline(payload)
        body["label"] = _label(payload)
        body["note"] = label_note(payload)
    if body["kind"] == "digest" and isinstance(payload.get("digest"), dict):
        body["digest"] = payload["digest"]
    # Standard Webhooks: the body names itself and what it amends, so a receiver can link them.
    body["message_id"] = payload.get("message_id")
    body["amends"] = payload.get("amends")
    if isinstance(payload.get("incident"), dict):
        body["incident_id"] = payload["incident"].get("id")
        body["incident"] = payload["incident"]
    if isinstance(payload.get("watch"), dict):
        body["watch"] = payload["watch"]
        body["reasons"] = list(payload.get("reasons") or [])
    return body


def render_console(payload: dict[str, Any]) -> str:
    """A few human lines: severity and headline, then what changed, the reasons and the link."""
    m = _message(payload)
    lines = [f"[{m.severity.upper()}] {m.headline}"] + ([f"  {m.note}"] if m.note else [])
    if m.why:
        lines.append(f"  why: {m.why}")
    lines += [f"  changed: {c}" for c in m.changes]
    lines += [f"  - {r}" for r in m.reasons]
    lines += [f"  {d}" for d in m.digest_lines]
    if m.kind in ("new", "update") and m.transfer_lines and not m.changes:
        lines += [f"  {label}: {value}" for label, value in m.facts if label in ("Total", "Transfers", "Destinations")]
    tail = "  " + " ".join(x for x in (m.explorer_url or "", f"[{m.dedup_key}]" if m.dedup_key else "") if x)
    if tail.strip():
        lines.append(tail)
    return "\n".join(lines)


# --- apprise (Telegram, Discord, Teams, ntfy, PagerDuty, ...) -------------------------------------

#: Body formats an apprise channel can ask for.
APPRISE_FORMATS = ("markdown", "text", "html")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~])")  # no `[`: no link, image or mention


def _md(text: str) -> str:
    """Untrusted text as Markdown literal: a label cannot make a link, a heading or a mention."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def render_apprise(payload: dict[str, Any], fmt: str = "markdown") -> tuple[str, str]:
    """(title, body) for apprise in `fmt` (markdown | text | html), from the same message model."""
    m = _message(payload)
    title = f"[{m.severity.upper()}] {m.headline}"
    if fmt == "html":
        _, _, body = render_email(payload)
        return title, body
    if fmt == "text":
        _, text, _ = render_email(payload)
        return title, text
    lines: list[str] = []
    if m.why:
        lines += [f"**Retracted:** {_md(m.why)}", ""]
    if m.changes:
        lines += ["**What changed**"] + [f"- {_md(c)}" for c in m.changes] + [""]
    lines += [f"**{_md(label)}:** {_md(value)}" for label, value in m.facts]
    if m.facts:
        lines.append("")
    if m.reasons:
        lines += ["**Reasons**"] + [f"- {_md(r)}" for r in m.reasons] + [""]
    if m.destinations:
        lines += ["**Destinations**"] + [f"- `{a.replace('`', '')}` {_md(amt)} → {_md(attr)}" for a, amt, attr in m.destinations]
        if m.more_destinations:
            lines.append(f"- …and {m.more_destinations} more")
        lines.append("")
    if m.digest_lines:
        lines += ["**Entities**"] + [f"- {_md(d)}" for d in m.digest_lines] + [""]
    if m.transfer_lines:
        lines += ["**Transfers**"] + [f"- {_md(t)}" for t in m.transfer_lines] + [""]
    if m.explorer_url:
        lines += [f"[View transaction]({m.explorer_url})", ""]
    lines.append(f"dedup key `{m.dedup_key.replace('`', '')}`")
    return title, "\n".join(lines)


# --- incidents ------------------------------------------------------------------------------------


def _exact(text: Any) -> str:
    """An exact decimal string grouped, trailing zeros dropped (never rounded): `14,269.67`."""
    d = _decimal(text)
    if d is None:
        return _clean(text) or "?"
    shown = f"{d:,f}"
    if "." in shown:
        shown = shown.rstrip("0").rstrip(".")
    return shown


def _who(attribution: Any) -> str:
    """`exchange:Coinbase` → `Coinbase` for headlines; `unknown` stays."""
    text = _clean(attribution) or "unknown"
    return text.split(":", 1)[1] if ":" in text else text


def _and(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _incident_title(inc: dict[str, Any]) -> str:
    """`MARA selling: 12 transfers, 4,690.5 BTC ($322.1M) over 6.2 days, to Coinbase and Kraken`."""
    n = _int(inc.get("flows")) or 0
    asset = _clean(inc.get("asset")) or "BTC"
    title = f"{_clean(inc.get('entity')) or '?'} selling: {n} transfer{'s' if n != 1 else ''}, {_exact(inc.get('out_amount'))} {asset}"
    usd = _num(inc.get("usd_value"))
    if usd is not None:
        # "$982M" reads better than "$1.0B" for a campaign's total (three digits either way)
        title += f" (${usd / 1e6:,.0f}M)" if 1e8 <= usd < 1e10 else f" ({format_usd(usd, compact=True)})"
    days = _num(inc.get("days"))
    if days is not None and n > 1:
        title += f" over {days:g} days"
    dests = [_who(d.get("attribution")) for d in inc.get("destinations") or () if isinstance(d, dict)]
    if dests:
        shown = dests[:3] + ([f"{len(dests) - 3} more"] if len(dests) > 3 else [])
        title += f", to {_and(shown)}"
    if inc.get("status") == "closed":
        title = f"CLOSED: {title}"
    return title


def _incident_facts(inc: dict[str, Any]) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """(facts, transfer lines) of an incident: totals with their context, then each transfer."""
    asset = _clean(inc.get("asset")) or "BTC"
    facts: list[tuple[str, str]] = []
    ekind = _clean(inc.get("entity_kind"))
    entity = _clean(inc.get("entity")) or "?"
    facts.append(("Entity", f"{entity} ({ekind})" if ekind else entity))
    status = _clean(inc.get("status")) or "open"
    since = _clean(inc.get("opened_at"))
    facts.append(
        ("Incident", f"#{_clean(inc.get('id'))} {status}, first transfer {since}, latest {_clean(inc.get('last_flow_at'))}")
    )
    total = f"{_exact(inc.get('out_amount'))} {asset}"
    usd = _num(inc.get("usd_value"))
    if usd is not None:
        total += f" ≈ {format_usd(usd, compact=True)} ({format_usd(usd)})"
    missing = _int(inc.get("usd_missing")) or 0
    if missing:
        total += f"; {missing} transfer{'s' if missing != 1 else ''} without a price"
    facts.append(("Total", total))
    n = _int(inc.get("flows")) or 0
    days = _num(inc.get("days"))
    facts.append(("Transfers", f"{n}" + (f" over {days:g} days" if days is not None else "")))
    share, holdings = _num(inc.get("share_of_holdings")), _num(inc.get("holdings_btc"))
    if share is not None and holdings:
        facts.append(("Share of holdings", f"{share * 100:.1f}% of {holdings:,.0f} {asset} held"))
    mult, production = _num(inc.get("production_multiple")), _num(inc.get("monthly_production_btc"))
    if mult is not None and production:
        facts.append(("× production", f"{mult:.1f}× monthly production ({production:,.0f} {asset})"))
    dests = [d for d in inc.get("destinations") or () if isinstance(d, dict)]
    if dests:
        facts.append(
            (
                "Destinations",
                ", ".join(f"{_clean(d.get('attribution')) or 'unknown'} {_exact(d.get('out_amount'))} {asset}" for d in dests[:6])
                + (f", and {len(dests) - 6} more" if len(dests) > 6 else ""),
            )
        )
    verdicts = inc.get("verdicts") if isinstance(inc.get("verdicts"), dict) else {}
    if verdicts:
        facts.append(("Verdicts", ", ".join(f"{_clean(v)} ×{_clean(k)}" for v, k in verdicts.items())))
    facts.append(("Severity", _clean(inc.get("severity")) or "info"))
    transfers = [t for t in inc.get("transfers") or () if isinstance(t, dict)]
    lines = []
    for t in transfers[-MAX_TRANSFERS_SHOWN:]:
        line = f"{_clean(t.get('at'))} {_exact(t.get('out_amount'))} {asset}"
        tusd = _num(t.get("usd_value"))
        if tusd is not None:
            line += f" ({format_usd(tusd, compact=True)})"
        line += f" {_clean(t.get('verdict'))} {_clean(t.get('txid'))[:16]}"
        lines.append(line)
    earlier = len(transfers) - len(lines) + (_int(inc.get("transfers_omitted")) or 0)
    if earlier > 0:
        lines.insert(0, f"…{earlier} earlier transfer{'s' if earlier != 1 else ''}")
    return facts, tuple(lines)
