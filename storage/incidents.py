"""Incidents: which flows belong to which open or closed incident, and the messages sent about them.

Writes happen inside the tick's transaction (the alert planner calls these within `store.batch()`), so an
incident, its flows and the alerts about it commit together with the classifications that caused them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from monitor.model import Alert
from storage.store import Store

__all__ = [
    "IncidentRow",
    "open_incident",
    "find_open",
    "open_incidents",
    "get_incident",
    "incident_of_flow",
    "add_flow",
    "remove_flow",
    "flow_keys",
    "touch",
    "close",
    "incident_messages",
    "incident_rows",
    "save_thread_ref",
    "thread_ref",
]


@dataclass(frozen=True)
class IncidentRow:
    """One stored incident."""

    id: int
    chain: str
    entity: str
    status: str
    opened_at: int
    last_flow_at: int
    closed_at: int | None
    channels: tuple[str, ...]


def _row(r: dict[str, Any]) -> IncidentRow:
    return IncidentRow(
        r["id"],
        r["chain"],
        r["entity"],
        r["status"],
        r["opened_at"],
        r["last_flow_at"],
        r["closed_at"],
        tuple(json.loads(r["channels"] or "[]")),
    )


def open_incident(store: Store, chain: str, entity: str, *, at: int, channels: tuple[str, ...], now: int) -> IncidentRow:
    """Start an incident whose first flow is at `at`."""
    iid = (
        store._db["incidents"]
        .insert(
            {
                "chain": chain,
                "entity": entity,
                "status": "open",
                "opened_at": at,
                "last_flow_at": at,
                "closed_at": None,
                "channels": json.dumps(list(channels)),
                "updated_at": now,
            }
        )
        .last_pk
    )
    return IncidentRow(iid, chain, entity, "open", at, at, None, channels)


def find_open(store: Store, chain: str, entity: str) -> IncidentRow | None:
    """The entity's open incident on `chain`, if any (the newest)."""
    rows = store._query(
        "select * from incidents where chain = ? and entity = ? and status = 'open' order by id desc limit 1", [chain, entity]
    )
    return _row(rows[0]) if rows else None


def open_incidents(store: Store) -> list[IncidentRow]:
    """Every open incident, oldest first."""
    return [_row(r) for r in store._query("select * from incidents where status = 'open' order by id")]


def get_incident(store: Store, incident_id: int) -> IncidentRow | None:
    """One incident by id."""
    rows = store._query("select * from incidents where id = ?", [incident_id])
    return _row(rows[0]) if rows else None


def incident_of_flow(store: Store, chain: str, txid: str, entity: str) -> int | None:
    """The id of the incident a flow belongs to, or None."""
    rows = store._query(
        "select incident_id from incident_flows where chain = ? and txid = ? and entity = ?", [chain, txid, entity]
    )
    return rows[0]["incident_id"] if rows else None


def add_flow(store: Store, incident_id: int, chain: str, txid: str, entity: str, *, now: int) -> None:
    """Count a flow in an incident."""
    store._db["incident_flows"].upsert(
        {"incident_id": incident_id, "chain": chain, "txid": txid, "entity": entity, "added_at": now},
        pk=("chain", "txid", "entity"),
    )


def remove_flow(store: Store, chain: str, txid: str, entity: str) -> None:
    """Stop counting a flow in its incident (retracted, or no longer a sale)."""
    store._db.execute("delete from incident_flows where chain = ? and txid = ? and entity = ?", [chain, txid, entity])


def flow_keys(store: Store, incident_id: int) -> list[tuple[str, str, str]]:
    """(chain, txid, entity) of the incident's flows, in the order they joined."""
    rows = store._query(
        "select chain, txid, entity from incident_flows where incident_id = ? order by added_at, rowid", [incident_id]
    )
    return [(r["chain"], r["txid"], r["entity"]) for r in rows]


def touch(store: Store, incident_id: int, *, last_flow_at: int, channels: tuple[str, ...], now: int) -> None:
    """Record the incident's latest flow time and the channels that heard of it."""
    store._db.execute(
        "update incidents set last_flow_at = max(last_flow_at, ?), channels = ?, updated_at = ? where id = ?",
        [last_flow_at, json.dumps(list(channels)), now, incident_id],
    )


def close(store: Store, incident_id: int, *, now: int) -> None:
    """Close an incident: a later flow opens a new one."""
    store._db.execute(
        "update incidents set status = 'closed', closed_at = ?, updated_at = ? where id = ?", [now, now, incident_id]
    )


def incident_messages(store: Store, incident_id: int) -> list[Alert]:
    """The alerts queued about an incident, oldest first (to thread and amend)."""
    rows = store._query("select * from alerts where incident_id = ? order by id", [incident_id])
    return [Alert(r["dedup_key"], r["kind"], (), json.loads(r["payload"]), r["created_at"], r["status"], r["id"]) for r in rows]


def incident_rows(store: Store, *, status: str | None = None, entity: str | None = None) -> list[dict[str, Any]]:
    """Stored incidents with their flow keys, newest first (for the API and export)."""
    sql = "select * from incidents where 1 = 1"
    params: list[Any] = []
    if status:
        sql += " and status = ?"
        params.append(status)
    if entity:
        sql += " and entity = ?"
        params.append(entity)
    rows = store._query(sql + " order by id desc", params)
    for r in rows:
        r["channels"] = json.loads(r["channels"] or "[]")
        r["flows"] = [{"chain": c, "txid": t, "entity": e} for c, t, e in flow_keys(store, r["id"])]
    return rows


def save_thread_ref(store: Store, message_id: str, channel: str, ref: str, *, now: int) -> None:
    """Remember what `channel` answered for a posted message (e.g. Slack's `ts`), to thread replies under it."""
    with store.batch():
        store._db["channel_threads"].upsert(
            {"message_id": message_id, "channel": channel, "ref": ref, "created_at": now},
            pk=("message_id", "channel"),
        )


def thread_ref(store: Store, message_id: str, channel: str) -> str | None:
    """What `channel` answered for `message_id`, or None."""
    rows = store._query("select ref from channel_threads where message_id = ? and channel = ?", [message_id, channel])
    return rows[0]["ref"] if rows else None
