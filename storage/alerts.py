"""The durable alert outbox: queued alerts, per-channel delivery state and every attempt.

An alert is queued in the same transaction as the classification that caused it (the pipeline calls
`queue_alert` inside `store.batch()`). Each (alert, channel) pair moves queued → sending → delivered,
back to queued with a `next_at` after a failed attempt, or to failed. `sending` is committed before
the send, by a conditional claim (only from `queued`, recording the claiming process), so two
dispatchers never both send one pair; after a crash `recover_in_flight` requeues the pairs whose owner
is gone, which may have been sent already: at most one resend per crash, carrying the same dedup key.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from monitor.model import Alert, Delivery
from storage.store import Store

__all__ = [
    "Pending",
    "queue_alert",
    "alerted_channels",
    "flow_messages",
    "alert_count",
    "is_unsent",
    "first_attempt_at",
    "replace_payload",
    "due",
    "begin_attempt",
    "finish_attempt",
    "recover_in_flight",
    "alert_rows",
    "deliveries_of",
    "retry_alert",
    "next_due_at",
    "status_counts",
]


@dataclass(frozen=True)
class Pending:
    """One (alert, channel) pair due for an attempt."""

    alert: Alert
    channel: str
    attempts: int


def _alert_from_row(r: dict[str, Any], channels: tuple[str, ...]) -> Alert:
    return Alert(
        dedup_key=r["dedup_key"],
        kind=r["kind"],
        channels=channels,
        payload=json.loads(r["payload"]),
        created_at=r["created_at"],
        status=r["status"],
        id=r["id"],
    )


def queue_alert(
    store: Store,
    alert: Alert,
    *,
    chain: str = "",
    txid: str = "",
    entity: str = "",
    classification_id: int | None = None,
    incident_id: int | None = None,
    now: int,
    not_before: int | None = None,
) -> int:
    """Queue an alert for each of its channels, due at `not_before` (default now); returns its id (call
    inside the tick's batch)."""
    aid = (
        store._db["alerts"]
        .insert(
            {
                "dedup_key": alert.dedup_key,
                "kind": alert.kind,
                "chain": chain,
                "txid": txid,
                "entity": entity,
                "classification_id": classification_id,
                "incident_id": incident_id,
                "payload": json.dumps(alert.payload, ensure_ascii=False, sort_keys=True),
                "status": "queued",
                "created_at": alert.created_at,
                "updated_at": now,
            }
        )
        .last_pk
    )
    store._db["alert_channels"].insert_all(
        {
            "alert_id": aid,
            "channel": c,
            "status": "queued",
            "attempts": 0,
            "next_at": not_before or now,
            "last_error": "",
            "delivered_at": None,
        }
        for c in dict.fromkeys(alert.channels)
    )
    return aid


def alerted_channels(store: Store, chain: str, txid: str, entity: str) -> set[str]:
    """Channels that were sent (or are queued to get) an alert about this flow."""
    rows = store._query(
        """select distinct ac.channel from alerts a join alert_channels ac on ac.alert_id = a.id
           where a.chain = ? and a.txid = ? and a.entity = ? and a.kind != 'retraction'""",
        [chain, txid, entity],
    )
    return {r["channel"] for r in rows}


def flow_messages(store: Store, chain: str, txid: str, entity: str) -> list[Alert]:
    """Alerts already queued about this flow (every kind), oldest first, to thread and amend."""
    rows = store._query("select * from alerts where chain = ? and txid = ? and entity = ? order by id", [chain, txid, entity])
    return [_alert_from_row(r, ()) for r in rows]


def is_unsent(store: Store, alert_id: int | None) -> bool:
    """True when no attempt was made yet on any channel of the alert (it can still be rewritten)."""
    row = store._db.execute(
        "select count(*), coalesce(sum(attempts), 0) from alert_channels where alert_id = ?", [alert_id]
    ).fetchone()
    return bool(row and row[0] and row[1] == 0)


def replace_payload(store: Store, alert_id: int | None, payload: dict[str, Any], *, channels: tuple[str, ...], now: int) -> None:
    """Rewrite a not-yet-sent alert's message model and add channels to it (keeps when it is due)."""
    store._db.execute(
        "update alerts set payload = ?, updated_at = ? where id = ?",
        [json.dumps(payload, ensure_ascii=False, sort_keys=True), now, alert_id],
    )
    due = store._db.execute("select min(next_at) from alert_channels where alert_id = ?", [alert_id]).fetchone()[0]
    have = {r["channel"] for r in store._query("select channel from alert_channels where alert_id = ?", [alert_id])}
    store._db["alert_channels"].insert_all(
        {
            "alert_id": alert_id,
            "channel": c,
            "status": "queued",
            "attempts": 0,
            "next_at": due,
            "last_error": "",
            "delivered_at": None,
        }
        for c in channels
        if c not in have
    )


def first_attempt_at(store: Store, alert_id: int | None) -> int | None:
    """When the alert was first attempted on any channel (≈ sent), or None."""
    row = store._db.execute("select min(at) from deliveries where alert_id = ?", [alert_id]).fetchone()
    return row[0] if row else None


def alert_count(store: Store) -> int:
    """How many alerts were ever queued (a sequence for ids made inside the writing transaction)."""
    row = store._db.execute("select count(*), coalesce(max(id), 0) from alerts").fetchone()
    return max(row[0], row[1]) if row else 0


def _channels_of(store: Store, alert_id: int) -> tuple[str, ...]:
    return tuple(
        r["channel"] for r in store._query("select channel from alert_channels where alert_id = ? order by rowid", [alert_id])
    )


def due(store: Store, *, now: int, limit: int = 100) -> list[Pending]:
    """Queued pairs whose next attempt is due, oldest alert first."""
    rows = store._query(
        """select a.*, ac.channel as ch, ac.attempts as attempts from alert_channels ac
           join alerts a on a.id = ac.alert_id
           where ac.status = 'queued' and ac.next_at <= ? order by a.id, ac.channel limit ?""",
        [now, limit],
    )
    return [Pending(_alert_from_row(r, _channels_of(store, r["id"])), r["ch"], r["attempts"]) for r in rows]


def next_due_at(store: Store) -> int | None:
    """When the next queued pair is due, or None when nothing is queued."""
    row = store._db.execute("select min(next_at) from alert_channels where status = 'queued'").fetchone()
    return row[0] if row else None


def begin_attempt(store: Store, alert_id: int, channel: str, *, now: int, owner: str = "") -> int | None:
    """Claim a queued pair for sending (committed before the send); returns the attempt number.

    The claim is one conditional update: only a pair still `queued` is taken, so when two dispatchers
    see the same pair due, one wins and the other gets None and must not send.
    """
    with store.batch():
        cur = store._db.execute(
            """update alert_channels set status = 'sending', attempts = attempts + 1, claimed_by = ?
               where alert_id = ? and channel = ? and status = 'queued'""",
            [owner, alert_id, channel],
        )
        if cur.rowcount != 1:
            return None
        row = store._db.execute(
            "select attempts from alert_channels where alert_id = ? and channel = ?", [alert_id, channel]
        ).fetchone()
        attempt = row[0]
        store._db["deliveries"].insert(
            {
                "alert_id": alert_id,
                "channel": channel,
                "attempt": attempt,
                "at": now,
                "status": "sending",
                "error": "",
                "next_at": None,
            }
        )
    return attempt


def finish_attempt(store: Store, d: Delivery) -> None:
    """Record how an attempt ended: ok → delivered, retry → queued until `next_at`, failed → failed."""
    state = {"ok": "delivered", "retry": "queued", "failed": "failed"}[d.status]
    with store.batch():
        store._db.execute(
            """update alert_channels set status = ?, next_at = coalesce(?, next_at), last_error = ?,
               delivered_at = case when ? = 'delivered' then ? else delivered_at end
               where alert_id = ? and channel = ?""",
            [state, d.next_at, d.error, state, d.at, d.alert_id, d.channel],
        )
        store._db.execute(
            """update deliveries set status = ?, error = ?, next_at = ?
               where alert_id = ? and channel = ? and attempt = ?""",
            [d.status, d.error, d.next_at, d.alert_id, d.channel, d.attempt],
        )
        _refresh_status(store, d.alert_id, now=d.at)


def _refresh_status(store: Store, alert_id: int, *, now: int) -> None:
    states = {r["status"] for r in store._query("select status from alert_channels where alert_id = ?", [alert_id])}
    if states & {"queued", "sending"}:
        status = "queued"
    elif "failed" in states:
        status = "failed"
    else:
        status = "delivered"
    store._db.execute("update alerts set status = ?, updated_at = ? where id = ?", [status, now, alert_id])


def recover_in_flight(store: Store, *, now: int, live_owners: Collection[str] = ()) -> int:
    """Queue again the pairs left `sending` by owners that are gone (at most one resend per crash).

    A pair claimed by one of `live_owners` is being sent right now by a live process and stays as it is;
    the caller knows who is alive (the database's process lock).
    """
    with store.batch():
        rows = [
            r
            for r in store._query("select alert_id, channel, attempts, claimed_by from alert_channels where status = 'sending'")
            if r["claimed_by"] not in live_owners
        ]
        for r in rows:
            store._db.execute(
                "update alert_channels set status = 'queued', next_at = ? where alert_id = ? and channel = ? and status = 'sending'",
                [now, r["alert_id"], r["channel"]],
            )
            store._db.execute(
                """update deliveries set status = 'interrupted', error = 'process stopped during the send; resending once'
                   where alert_id = ? and channel = ? and attempt = ?""",
                [r["alert_id"], r["channel"], r["attempts"]],
            )
    return len(rows)


def retry_alert(store: Store, alert_id: int, *, now: int) -> int:
    """Queue an alert's failed channels again now; returns how many pairs were requeued."""
    with store.batch():
        cur = store._db.execute(
            "update alert_channels set status = 'queued', next_at = ? where alert_id = ? and status = 'failed'",
            [now, alert_id],
        )
        n = cur.rowcount
        if n:
            store._db.execute("update alerts set created_at = ? where id = ?", [now, alert_id])  # restart give-up age
            _refresh_status(store, alert_id, now=now)
    return n


def alert_rows(store: Store, *, status: str | None = None, after_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
    """Stored alerts with their per-channel state, oldest first."""
    sql = "select * from alerts where id > ?" + (" and status = ?" if status else "") + " order by id"
    params: list[Any] = [after_id] + ([status] if status else [])
    if limit:
        sql += " limit ?"
        params.append(limit)
    rows = store._query(sql, params)
    for r in rows:
        r["payload"] = json.loads(r["payload"])
        r["channels"] = store._query(
            "select channel, status, attempts, next_at, last_error, delivered_at from alert_channels where alert_id = ? order by channel",
            [r["id"]],
        )
    return rows


def deliveries_of(store: Store, alert_id: int) -> list[Delivery]:
    """Every recorded attempt of an alert, in order."""
    return [
        Delivery(r["alert_id"], r["channel"], r["attempt"], r["at"], r["status"], r["error"] or "", r["next_at"])
        for r in store._query("select * from deliveries where alert_id = ? order by id", [alert_id])
    ]


def status_counts(store: Store) -> dict[str, int]:
    """Number of alerts by status."""
    return {r["status"]: r["n"] for r in store._query("select status, count(*) as n from alerts group by status")}
