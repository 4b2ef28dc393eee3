"""Incidents: one entity's run of sale-type flows grouped into one alert thread with running totals.

MARA's March 2026 campaign was 30 sales in three weeks; a desk wants ONE incident that grows ("MARA selling:
12 transfers, 4,690 BTC, $322M over 6 days, to Coinbase and Kraken"), not 30 alerts. For rules with
`mode = "incident"` (see `alerts.router`):

- a sale-type flow of an entity with no open incident opens one: a `new` message;
- a later sale-type flow of the same entity within `incident_window` seconds of the incident's latest flow
  joins it: an `update` with the new running totals; several flows in one tick make one update;
- a flow of the incident that is re-classified (verdict, severity), retracted (reorg, RBF) or no longer a
  sale updates the totals with what changed;
- when no sale joined for `incident_window` seconds, the incident closes with a final `update` (the
  summary); the next sale opens a new incident;
- `group_wait` (seconds, Alertmanager's name): the opening message waits this long, so a burst of flows
  goes out as ONE opening message with the burst's totals rather than an opening plus updates;
- `group_interval` (seconds, Alertmanager's name): at most one update per interval; the flows in between
  fold into the waiting update (86,400 = a daily summary of a campaign that sells twice a day).

A message still waiting to be sent is rewritten in place (latest totals, every change since the message
before it), never sent twice; the closing summary is never held.

Totals are recomputed from what is stored (the flows' newest classifications) each time, never kept as
running sums that could drift: BTC out (exact), USD (sum of the flows' USD values at their own prices),
share of the entity's holdings and multiple of its monthly production (the profile's sourced figures),
destinations by attribution, and the verdict mix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from monitor.clock import iso
from monitor.model import SALE_VERDICTS, SATS_PER_BTC, Entity, format_btc, severity_rank

__all__ = [
    "DEFAULT_INCIDENT_WINDOW",
    "DEFAULT_GROUP_WAIT",
    "DEFAULT_GROUP_INTERVAL",
    "counts_in_incident",
    "summarize",
    "incident_dedup_key",
]

#: Seconds without a new sale after which an incident closes (MARA paused over weekends: 3 days).
DEFAULT_INCIDENT_WINDOW = 7 * 86_400
DEFAULT_GROUP_WAIT = 0
DEFAULT_GROUP_INTERVAL = 0
MAX_TRANSFERS_LISTED = 50


def incident_dedup_key(chain: str, entity: str, incident_id: int) -> str:
    """Stable key of one incident: every message about it carries it."""
    return f"incident:{chain}:{entity}:{incident_id}"


def counts_in_incident(record: Mapping[str, Any]) -> bool:
    """Whether a flow record (export form) counts in an incident's totals: an active sale-type verdict."""
    cls = record.get("classification") or {}
    return (
        record.get("direction") == "out"
        and record.get("status") not in ("orphaned", "replaced")
        and cls.get("status", "active") == "active"
        and cls.get("verdict") in SALE_VERDICTS
    )


def _flow_time(record: Mapping[str, Any]) -> str | None:
    return record.get("block_time") or record.get("seen_at")


def summarize(
    incident_id: int,
    status: str,
    entity: Entity,
    records: Sequence[Mapping[str, Any]],
    *,
    opened_at: int,
    last_flow_at: int,
    closed_at: int | None = None,
) -> dict[str, Any]:
    """The `incident` part of the message model from the incident's stored flow records (oldest first)."""
    counted = [r for r in records if counts_in_incident(r)]
    decimals = counted[0]["decimals"] if counted else 8
    out_units = sum(int(r["out_units"]) for r in counted)
    usd = [r["classification"].get("usd_value") for r in counted]
    usd_known = [float(u) for u in usd if isinstance(u, (int, float)) and not isinstance(u, bool)]
    dests: Counter[str] = Counter()
    for r in counted:
        for d in r.get("destinations") or ():
            attribution = d.get("attribution") or "unknown"
            if attribution != "self":
                dests[attribution] += int(d["value_units"])
    verdicts = Counter(r["classification"]["verdict"] for r in counted)
    severities = [r["classification"].get("severity") or "info" for r in counted]
    out_btc = Decimal(out_units) / SATS_PER_BTC
    profile = entity.profile
    holdings = profile.holdings_btc.value if profile.holdings_btc else None
    production = profile.monthly_production_btc.value if profile.monthly_production_btc else None
    transfers = [
        {
            "txid": r["txid"],
            "at": _flow_time(r),
            "out_units": int(r["out_units"]),
            "out_amount": r["out_amount"],
            "usd_value": r["classification"].get("usd_value"),
            "verdict": r["classification"]["verdict"],
            "severity": r["classification"].get("severity"),
        }
        for r in counted
    ]
    return {
        "id": incident_id,
        "chain": counted[0]["chain"] if counted else (records[0]["chain"] if records else "bitcoin"),
        "entity": entity.name,
        "entity_kind": entity.kind,
        "status": status,
        "opened_at": iso(opened_at),
        "last_flow_at": iso(last_flow_at),
        "closed_at": iso(closed_at),
        "days": round((last_flow_at - opened_at) / 86_400, 1),
        "flows": len(counted),
        "asset": counted[0]["asset"] if counted else "BTC",
        "out_units": out_units,
        "out_amount": format_btc(out_units, decimals),
        "usd_value": round(sum(usd_known), 2) if usd_known else None,
        "usd_missing": len(usd) - len(usd_known),
        "holdings_btc": holdings,
        "share_of_holdings": float(out_btc) / holdings if holdings else None,
        "monthly_production_btc": production,
        "production_multiple": float(out_btc) / production if production else None,
        "destinations": [
            {"attribution": a, "out_units": u, "out_amount": format_btc(u, decimals)} for a, u in dests.most_common()
        ],
        "verdicts": dict(sorted(verdicts.items())),
        "severity": max(severities, key=severity_rank) if severities else "info",
        "transfers": transfers[-MAX_TRANSFERS_LISTED:],
        "transfers_omitted": max(0, len(transfers) - MAX_TRANSFERS_LISTED),
    }


def union(*groups: Iterable[str]) -> tuple[str, ...]:
    """Channels of several groups in order, without repeats."""
    out: dict[str, None] = {}
    for g in groups:
        out.update(dict.fromkeys(g))
    return tuple(out)
