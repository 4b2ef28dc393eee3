"""Typed read queries for export, the CLI and the HTTP API (filters: since, entity, direction, ...).

Reads return plain dicts of stored columns (amounts as exact integers); shaping them into the export
schema is `monitor.output.export`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from storage.store import Store

__all__ = [
    "flow_rows",
    "flow_row",
    "entity_summaries",
    "events_after",
    "last_event_id",
    "save_source_health",
    "source_health_rows",
    "has_digest",
    "alert_counts",
    "latest_verdicts",
    "newest_chain_context",
    "newest_candle",
]

_PAGE = 500


def flow_rows(
    store: Store,
    *,
    since: int | None = None,
    until: int | None = None,
    entity: str | None = None,
    direction: str | None = None,
    chain: str | None = None,
    txid: str | None = None,
    verdict: str | None = None,
    include_internal: bool = True,
) -> Iterator[dict[str, Any]]:
    """Stored entity flows, oldest first, each with destinations, entity kind and newest classification.

    `since`/`until` filter on the block time, or on the time first seen for unconfirmed flows.
    Rows are read in pages so an export of a large history streams in constant memory.
    """
    where, params = [], []
    at = "coalesce(f.block_time, f.first_seen)"
    if since is not None:
        where.append(f"{at} >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{at} < ?")
        params.append(until)
    if entity is not None:
        where.append("f.entity = ?")
        params.append(entity)
    if direction is not None:
        where.append("f.direction = ?")
        params.append(direction)
    if chain is not None:
        where.append("f.chain = ?")
        params.append(chain)
    if txid is not None:
        where.append("f.txid = ?")
        params.append(txid)
    if verdict is not None:
        where.append(
            "(select c.verdict from classifications c where c.chain = f.chain and c.txid = f.txid"
            " and c.entity = f.entity order by c.version desc limit 1) = ?"
        )
        params.append(verdict)
    if not include_internal:
        where.append("f.direction != 'internal'")
    sql = (
        "select f.*, e.kind as entity_kind from flows f left join entities e on e.name = f.entity"
        + (" where " + " and ".join(where) if where else "")
        + f" order by {at}, f.block_height, f.txid, f.entity limit ? offset ?"
    )
    offset = 0
    while True:
        rows = store._query(sql, [*params, _PAGE, offset])
        if not rows:
            return
        keys = [(r["chain"], r["txid"], r["entity"]) for r in rows]
        dests = _destinations(store, keys)
        classes = _latest_classifications(store, keys)
        for r in rows:
            r["destinations"] = dests.get((r["chain"], r["txid"], r["entity"]), [])
            r["classification"] = classes.get((r["chain"], r["txid"], r["entity"]))
            for k in ("spent_units", "change_units", "received_units", "fee_share_units", "out_units"):
                r[k] = int(r[k])
            yield r
        offset += len(rows)


def flow_row(store: Store, chain: str, txid: str, entity: str) -> dict[str, Any] | None:
    """One stored flow with destinations, entity kind and newest classification, or None."""
    return next((r for r in flow_rows(store, chain=chain, txid=txid, entity=entity)), None)


def _destinations(store: Store, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    txids = sorted({k[1] for k in keys})
    for i in range(0, len(txids), 400):
        chunk = txids[i : i + 400]
        marks = ",".join("?" * len(chunk))
        for d in store._query(f"select * from destinations where txid in ({marks}) order by n", chunk):
            d["value_units"] = int(d["value_units"])
            d["path"] = json.loads(d["path"] or "[]")
            d["shares"] = [{**x, "value_units": int(x["value_units"])} for x in json.loads(d.get("shares") or "[]")]
            out.setdefault((d["chain"], d["txid"], d["entity"]), []).append(d)
    return out


def _latest_classifications(store: Store, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    txids = sorted({k[1] for k in keys})
    for i in range(0, len(txids), 400):
        chunk = txids[i : i + 400]
        marks = ",".join("?" * len(chunk))
        for c in store._query(
            f"select * from classifications where txid in ({marks}) order by version", chunk
        ):  # ascending versions: the newest one per flow wins
            c["reasons"] = json.loads(c["reasons"])
            c["context"] = json.loads(c["context"] or "{}")
            c["facts"] = json.loads(c.get("facts") or "[]")
            out[(c["chain"], c["txid"], c["entity"])] = c
    return out


def entity_summaries(store: Store) -> list[dict[str, Any]]:
    """Per stored entity: kind, address counts (active/candidate/rejected), latest balance, flow counts."""
    balances = store.latest_balances()
    out = []
    for e in store.entity_rows():
        addrs = store.address_rows(entity=e["name"])
        active = [a for a in addrs if a["status"] == "active"]
        bal = sum(balances.get((a["chain"], a["address"], "BTC"), 0) for a in active if a["chain"] == "bitcoin")
        seen = sum(1 for a in active if (a["chain"], a["address"], "BTC") in balances)
        counts = store._query("select direction, count(*) as n from flows where entity = ? group by direction", [e["name"]])
        out.append(
            {
                "name": e["name"],
                "kind": e["kind"],
                "note": e["note"],
                "watch": bool(e["watch"]),
                "addresses": len(active),
                "candidates": sum(1 for a in addrs if a["status"] == "candidate"),
                "rejected": sum(1 for a in addrs if a["status"] == "rejected"),
                "addresses_with_balance": seen,
                "balance_units": bal,
                "flows": {c["direction"]: c["n"] for c in counts},
            }
        )
    return out


def events_after(store: Store, after: int, *, limit: int = 500) -> list[dict[str, Any]]:
    """Events with id > `after`, oldest first, each with the classification it refers to (decoded)."""
    rows = store._query(
        """select e.id as event_id, e.kind as event_kind, e.created_at as event_at, c.* from events e
           join classifications c on c.id = e.classification_id where e.id > ? order by e.id limit ?""",
        [after, limit],
    )
    for r in rows:
        r["reasons"] = json.loads(r["reasons"])
        r["context"] = json.loads(r["context"] or "{}")
        if r["event_kind"] == "retraction":
            r["status"] = "retracted"
    return rows


def last_event_id(store: Store) -> int:
    """The newest event id (0 when there is none)."""
    return store._db.execute("select coalesce(max(id), 0) from events").fetchone()[0]


def save_source_health(store: Store, row: dict[str, Any]) -> None:
    """Upsert one source's health row (keys as the source_health table)."""
    store._db["source_health"].upsert(row, pk="source")


def source_health_rows(store: Store) -> list[dict[str, Any]]:
    """Stored health of every source."""
    return store._query("select * from source_health order by source")


def has_digest(store: Store, dedup_key: str) -> bool:
    """Whether a digest with this dedup key was queued already."""
    return bool(store._query("select 1 from alerts where dedup_key = ? and kind = 'digest'", [dedup_key]))


def alert_counts(store: Store) -> dict[str, int]:
    """How many alerts of each kind are stored."""
    return {r["kind"]: r["n"] for r in store._query("select kind, count(*) as n from alerts group by kind")}


def latest_verdicts(store: Store) -> dict[tuple[str, str], str]:
    """(txid, entity) → the verdict of its newest classification."""
    return {
        (r["txid"], r["entity"]): r["verdict"]
        for r in store._query("select txid, entity, verdict from classifications order by version")
    }


def newest_chain_context(store: Store, *, scan: int = 50) -> dict[str, Any] | None:
    """The newest stored classification context that carries difficulty and height (of the last `scan`)."""
    rows = store._query(
        "select context from classifications where context like '%\"difficulty\": %' order by id desc limit ?", [scan]
    )
    for r in rows:
        ctx = json.loads(r["context"])
        if ctx.get("difficulty") and ctx.get("height"):
            return ctx
    return None


def newest_candle(store: Store, pair: str = "BTC-USD") -> dict[str, Any] | None:
    """The newest stored price candle of `pair` (close, start, source)."""
    rows = store._query("select close, start, source from price_candles where pair = ? order by start desc limit 1", [pair])
    return rows[0] if rows else None
