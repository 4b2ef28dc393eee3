"""Incident alerting: the part of the alert hook that groups sale-type flows into incidents (store thread).

Runs inside the tick's storage transaction, after the per-flow alerts (`monitor.run.alert_plan.AlertPlanner`).
What an incident is and how it grows and closes is told in `monitor.run.incidents`; this module keeps the
stored incidents in step with the tick's decisions and retractions and queues one message per touched
incident per tick, threaded under the incident's opening message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alerts.render import format_usd
from alerts.router import Route, changes_between, incident_channels
from monitor.core.registry import Registry
from monitor.model import Alert, Classification
from monitor.output.export import flow_record
from monitor.run.incidents import (
    DEFAULT_GROUP_INTERVAL,
    DEFAULT_GROUP_WAIT,
    DEFAULT_INCIDENT_WINDOW,
    incident_dedup_key,
    summarize,
    union,
)
from monitor.run.pipeline import Decision
from monitor.run.threads import thread_fields  # the one id scheme for every message
from storage import Store
from storage import alerts as outbox_store
from storage import incidents as inc_store
from storage.reads import flow_row

__all__ = ["IncidentSettings", "plan_incidents", "incident_payload"]


@dataclass(frozen=True)
class IncidentSettings:
    """Config `[alerts]` `incident_window`, `group_wait` and `group_interval` (seconds)."""

    window: int = DEFAULT_INCIDENT_WINDOW
    group_wait: int = DEFAULT_GROUP_WAIT
    group_interval: int = DEFAULT_GROUP_INTERVAL
    label: str = ""  # e.g. SIMULATED (the demo): on every incident message


def _short(txid: str) -> str:
    return f"{txid[:10]}…" if len(txid) > 12 else txid


def _flow_at(d: Decision, now: int) -> int:
    return d.flow.block_time if d.flow.block_time is not None else now


def _describe(c: Classification, record: dict) -> str:
    dest = ", ".join(dict.fromkeys(x.get("attribution") or "unknown" for x in record.get("destinations") or ()))
    usd = f" ({format_usd(c.usd_value, compact=True)})" if c.usd_value is not None else ""
    return f"new transfer {_short(c.txid)}: {record['out_amount']} {record['asset']}{usd} to {dest or 'unknown'} — {c.verdict}"


def incident_payload(
    store: Store, registry: Registry, inc: inc_store.IncidentRow, kind: str, changes: Sequence[str], *, now: int
) -> dict:
    """The message model of an incident message, totals recomputed from the stored flows."""
    records = []
    for chain, txid, entity in inc_store.flow_keys(store, inc.id):
        row = flow_row(store, chain, txid, entity)
        if row is not None:
            records.append(flow_record(row))
    records.sort(key=lambda r: (r.get("block_time") or r.get("seen_at") or "", r["txid"]))
    summary = summarize(
        inc.id,
        inc.status,
        registry.get(inc.entity),
        records,
        opened_at=inc.opened_at,
        last_flow_at=inc.last_flow_at,
        closed_at=inc.closed_at,
    )
    return {
        "kind": kind,
        "dedup_key": incident_dedup_key(inc.chain, inc.entity, inc.id),
        "changes": list(changes),
        "explorer_url": None,
        "flow": None,
        "incident": summary,
    }


def _queue(
    store: Store,
    registry: Registry,
    inc: inc_store.IncidentRow,
    kind: str,
    changes: Sequence[str],
    channels: tuple[str, ...],
    *,
    now: int,
    settings: IncidentSettings,
    fold: bool = True,
) -> int:
    payload = incident_payload(store, registry, inc, kind, changes, now=now)
    if settings.label:
        payload["label"] = settings.label
    earlier = inc_store.incident_messages(store, inc.id)
    last = earlier[-1] if earlier else None
    if fold and last is not None and last.id is not None and outbox_store.is_unsent(store, last.id):
        # The last message is still waiting (group_wait / group_interval): it goes out once, with the
        # latest totals and every change since the message before it.
        payload.update({k: last.payload.get(k) for k in ("message_id", "amends", "thread")})
        payload["kind"] = last.kind
        payload["changes"] = [] if last.kind == "new" else [*last.payload.get("changes", []), *changes]
        outbox_store.replace_payload(store, last.id, payload, channels=channels, now=now)
        return 0
    route = Route(kind, payload["dedup_key"], channels, tuple(changes))
    payload.update(thread_fields(store, route, earlier, now=now))
    alert = Alert(route.dedup_key, kind, channels, payload, created_at=now)
    if kind == "new":
        not_before = now + settings.group_wait
    elif fold and last is not None and settings.group_interval:
        sent = outbox_store.first_attempt_at(store, last.id) or now
        not_before = max(now, sent + settings.group_interval)
    else:
        not_before = now
    outbox_store.queue_alert(store, alert, chain=inc.chain, entity=inc.entity, incident_id=inc.id, now=now, not_before=not_before)
    return 1


def plan_incidents(
    store: Store,
    registry: Registry,
    rules: Sequence,
    settings: IncidentSettings,
    decisions: Sequence[Decision],
    retracted: Sequence[Classification],
    *,
    replacing: dict[str, str],
    is_live,
    now: int,
) -> int:
    """Update stored incidents from one tick and queue their messages; returns how many were queued."""
    changes: dict[int, list[str]] = {}
    extra_channels: dict[int, tuple[str, ...]] = {}
    opened: set[int] = set()
    moved: dict[tuple[str, str], int] = {}  # (old txid, entity) → incident, for RBF replacements
    closed_count = [0]

    for c in retracted:
        iid = inc_store.incident_of_flow(store, c.chain, c.txid, c.entity)
        if iid is None:
            continue
        inc_store.remove_flow(store, c.chain, c.txid, c.entity)
        if c.txid in replacing.values():
            moved[(c.txid, c.entity)] = iid  # told once, with its replacement, below
            continue
        why = "its block was orphaned by a reorg" if store.tx_status(c.chain, c.txid) == "orphaned" else "it was replaced"
        changes.setdefault(iid, []).append(f"transfer {_short(c.txid)} retracted: {why}; no longer counted")

    for d in decisions:
        c = d.classification
        if not (d.is_new or d.is_changed) or not is_live(c, d.flow.block_time, now):
            continue
        kind = registry.get(c.entity).kind
        channels = incident_channels(rules, c, kind) if c.status == "active" else ()
        iid = inc_store.incident_of_flow(store, c.chain, c.txid, c.entity)
        if iid is not None:
            if not channels:
                inc_store.remove_flow(store, c.chain, c.txid, c.entity)
                changes.setdefault(iid, []).append(f"transfer {_short(c.txid)} no longer counted: now {c.verdict} ({c.severity})")
            elif d.previous is not None:
                said = changes_between(d.previous, c)
                if said:
                    changes.setdefault(iid, []).extend(f"transfer {_short(c.txid)}: {x}" for x in said)
            continue
        if not channels:
            continue
        at = _flow_at(d, now)
        inc = inc_store.find_open(store, c.chain, c.entity)
        if inc is not None and at - inc.last_flow_at > settings.window:
            queued_early = _close(store, registry, inc, now=now, settings=settings)
            closed_count[0] += queued_early
            inc = None
        if inc is None:
            inc = inc_store.open_incident(store, c.chain, c.entity, at=at, channels=channels, now=now)
            opened.add(inc.id)
        inc_store.add_flow(store, inc.id, c.chain, c.txid, c.entity, now=now)
        inc_store.touch(store, inc.id, last_flow_at=at, channels=union(inc.channels, channels), now=now)
        extra_channels[inc.id] = union(extra_channels.get(inc.id, ()), channels)
        if inc.id not in opened:
            row = flow_row(store, c.chain, c.txid, c.entity)
            old = replacing.get(c.txid)
            if old is not None and moved.get((old, c.entity)) == inc.id:
                note = f"transfer {_short(old)} replaced (RBF) by {_short(c.txid)}"
            else:
                note = _describe(c, flow_record(row)) if row is not None else f"new transfer {_short(c.txid)}"
            changes.setdefault(inc.id, []).append(note)

    queued = closed_count[0]
    for iid in sorted(opened | set(changes)):
        inc = inc_store.get_incident(store, iid)
        if inc is None:
            continue
        kind = "new" if iid in opened else "update"
        channels = union(inc.channels, extra_channels.get(iid, ()))
        queued += _queue(
            store, registry, inc, kind, changes.get(iid, ()) if kind == "update" else (), channels, now=now, settings=settings
        )

    touched = opened | set(changes)
    for inc in inc_store.open_incidents(store):
        if inc.id not in touched and now - inc.last_flow_at > settings.window:
            queued += _close(store, registry, inc, now=now, settings=settings)
    return queued


def _close(store: Store, registry: Registry, inc: inc_store.IncidentRow, *, now: int, settings: IncidentSettings) -> int:
    inc_store.close(store, inc.id, now=now)
    closed = inc_store.get_incident(store, inc.id)
    assert closed is not None
    days = (now - inc.last_flow_at) / 86_400
    note = f"incident closed: no sale for {days:.1f} days since its last transfer"
    # Never folded into a pending message and never held: the closing summary is its own message, now.
    return _queue(store, registry, closed, "update", (note,), closed.channels, now=now, settings=settings, fold=False)
