"""The daily digest: per entity, what went out in the last 24 hours, the balance change and the verdicts."""

from __future__ import annotations

import base64
from collections import Counter

from monitor.clock import iso
from monitor.model import Alert, format_btc
from storage import Store
from storage import alerts as outbox_store
from storage.reads import flow_rows, has_digest

__all__ = ["digest_payload", "queue_digest", "DAY"]

DAY = 86_400


def digest_payload(store: Store, *, now: int, period: int = DAY, chart: bool = True) -> dict:
    """The digest message model for the `period` seconds before `now` (see alerts.render).

    With `chart`, a PNG of the period's outflows by verdict is attached (email shows it; other channels
    ignore attachments).
    """
    per: dict[str, dict] = {}
    for r in flow_rows(store, since=now - period, until=now):
        if r["status"] in ("orphaned", "replaced"):
            continue
        e = per.setdefault(
            r["entity"], {"out": 0, "net": 0, "verdicts": Counter(), "decimals": r["decimals"], "asset": r["asset"]}
        )
        if r["asset"] != e["asset"]:
            continue  # one asset per line; EVM tokens are summarised by their own flows
        e["out"] += r["out_units"]
        e["net"] += r["received_units"] + r["change_units"] - r["spent_units"]
        c = r.get("classification")
        if c and c["status"] != "retracted" and r["direction"] != "in":
            e["verdicts"][c["verdict"]] += 1
    entities = [
        {
            "entity": name,
            "asset": e["asset"],
            "out_amount": format_btc(e["out"], e["decimals"]),
            "balance_change_amount": ("-" if e["net"] < 0 else "") + format_btc(abs(e["net"]), e["decimals"]),
            "verdicts": dict(e["verdicts"]),
        }
        for name, e in sorted(per.items(), key=lambda kv: -kv[1]["out"])
    ]
    day = iso(now)[:10]
    attachments = []
    if chart and entities:
        from monitor.output.report import render_png

        png = render_png(store, since=now - period, until=now)
        attachments.append(
            {
                "filename": f"treasury-monitor-{day}.png",
                "content_type": "image/png",
                "data_base64": base64.b64encode(png).decode("ascii"),
            }
        )
    return {
        "kind": "digest",
        "dedup_key": f"digest:{day}",
        "title": f"treasury-monitor daily digest {day}: {len(entities)} entit{'y' if len(entities) == 1 else 'ies'} moved coins",
        "changes": [],
        "explorer_url": None,
        "digest": {"period_start": iso(now - period), "period_end": iso(now), "entities": entities},
        "attachments": attachments,
    }


def queue_digest(store: Store, channels: tuple[str, ...], *, now: int, period: int = DAY) -> int | None:
    """Queue today's digest once (its dedup key is the date); returns the alert id, or None if already queued."""
    payload = digest_payload(store, now=now, period=period)
    if has_digest(store, payload["dedup_key"]):
        return None
    with store.batch():
        return outbox_store.queue_alert(store, Alert(payload["dedup_key"], "digest", channels, payload, created_at=now), now=now)
