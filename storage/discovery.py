"""Discovery storage: candidate and learned addresses with their evidence, the rejected list, pool blocks,
flagged co-spends, hop-trace state and small job state.

Addresses live in the `addresses` table (status `active` | `candidate` | `rejected`, `learned_by` says
how); this module adds the rows that prove them (`address_evidence`) and the rules discovery must keep:
an address with a row of any status is never re-added by discovery (so a rejected one stays rejected),
and an address owned by one entity is never proposed for another. Every function runs on the store
thread inside the caller's transaction when there is one (`with store.batch():`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitor.model import ChainTx, EntityAddress, TraceShare
from storage.store import Store, address_values, shares_from_json, shares_json, where_equal

__all__ = [
    "Evidence",
    "TraceState",
    "TraceBranch",
    "address_row",
    "upsert_address",
    "propose_address",
    "set_status",
    "update_address",
    "rejected_addresses",
    "provisional_rows",
    "is_outpoint_spent",
    "add_evidence",
    "evidence_rows",
    "candidate_rows",
    "save_learned",
    "flag_rows",
    "save_pool_block",
    "pool_block_rows",
    "pool_blocks_known",
    "queue_traces",
    "due_traces",
    "save_trace",
    "trace_rows",
    "get_state",
    "set_state",
    "transactions_after",
    "latest_btc_balances",
]


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence for an address (a payout that paid it, a co-spend, a file row)."""

    chain: str
    address: str
    entity: str
    kind: str  # pool_payout | cospend | change | import | manual
    txid: str = ""
    block_height: int | None = None
    block_time: int | None = None
    value: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class _LearnedLike(Protocol):
    entity: str
    address: EntityAddress
    reason: str


class _FlagLike(Protocol):
    chain: str
    txid: str
    entity: str
    kind: str
    detail: str


def address_row(store: Store, chain: str, address: str) -> dict[str, Any] | None:
    """The stored row of one address (any status), or None."""
    rows = store._query("select * from addresses where chain = ? and address = ?", [chain, address])
    return rows[0] if rows else None


def upsert_address(store: Store, entity: str, a: EntityAddress, *, status: str, now: int) -> str:
    """Insert an address for `entity`, or update this entity's own row (status, origin, source).

    Returns `added`, `updated` or `conflict:<owner>` when another entity owns the row (nothing written).
    """
    row = address_row(store, a.chain, a.address)
    if row is not None and row["entity"] != entity:
        return f"conflict:{row['entity']}"
    values = address_values(entity, a, status=status, added_at=now if row is None else row["added_at"])
    store._db["addresses"].upsert(values, pk=("chain", "address"))
    return "added" if row is None else "updated"


def propose_address(store: Store, entity: str, a: EntityAddress, *, status: str, now: int) -> str:
    """Add a discovered address (status `candidate` or `active`) unless any row for it exists.

    Returns `added`, `known` (already this entity's, with its status kept), `rejected` (a user rejected
    it: never re-added), or `conflict:<owner>`. Candidates are promoted to `active` when `status` is
    active (auto-accept), never the other way.
    """
    row = address_row(store, a.chain, a.address)
    if row is None:
        store.add_addresses(entity, [a], now=now, status=status)
        return "added"
    if row["status"] == "rejected":
        return "rejected"
    if row["entity"] != entity:
        return f"conflict:{row['entity']}"
    if row["status"] == "candidate" and status == "active":
        store.set_address_status(a.chain, a.address, "active")
        return "added"
    return "known"


def update_address(store: Store, chain: str, address: str, **fields: Any) -> None:
    """Set some columns of a stored address (status, learned_by, source, label, as_of, evidence)."""
    store._db["addresses"].update((chain, address), fields)


def set_status(store: Store, chain: str, address: str, status: str) -> dict[str, Any] | None:
    """Set the status of an existing row; returns the row as it was before, or None when unknown."""
    row = address_row(store, chain, address)
    if row is not None:
        store.set_address_status(chain, address, status)
    return row


def rejected_addresses(store: Store, chain: str | None = None) -> set[tuple[str, str]]:
    """(chain, address) of every rejected address."""
    sql = "select chain, address from addresses where status = 'rejected'" + (" and chain = ?" if chain else "")
    return {(r["chain"], r["address"]) for r in store._query(sql, [chain] if chain else [])}


def provisional_rows(store: Store, *, added_before: int | None = None) -> list[dict[str, Any]]:
    """Addresses watched provisionally (a sweep's destination not decided yet), optionally added before a time."""
    sql = "select * from addresses where status = 'provisional'" + (" and added_at <= ?" if added_before is not None else "")
    return store._query(sql + " order by added_at, address", [added_before] if added_before is not None else [])


def is_outpoint_spent(store: Store, chain: str, txid: str, vout: int) -> bool:
    """Whether a stored, still valid tx spends output `vout` of `txid` (inputs are stored as JSON lists)."""
    rows = store._query(
        "select 1 from transactions where chain = ? and status in ('confirmed', 'mempool') and inputs like ? limit 1",
        [chain, f'%"{txid}", {int(vout)}]%'],
    )
    return bool(rows)


def add_evidence(store: Store, items: Iterable[Evidence], *, now: int) -> int:
    """Record evidence rows (idempotent per address, kind and txid); returns how many were new."""
    added = 0
    for e in items:
        exists = store._db.execute(
            "select 1 from address_evidence where chain = ? and address = ? and kind = ? and txid = ?",
            [e.chain, e.address, e.kind, e.txid],
        ).fetchone()
        if exists:
            continue
        store._db["address_evidence"].insert(
            {
                "chain": e.chain,
                "address": e.address,
                "entity": e.entity,
                "kind": e.kind,
                "txid": e.txid,
                "block_height": e.block_height,
                "block_time": e.block_time,
                "value_units": "" if e.value is None else str(e.value),
                "detail": json.dumps(e.detail, sort_keys=True),
                "created_at": now,
            }
        )
        added += 1
    return added


def _evidence_from_row(r: dict[str, Any]) -> dict[str, Any]:
    r = dict(r)
    r["value_units"] = int(r["value_units"]) if r["value_units"] else None
    r["detail"] = json.loads(r["detail"] or "{}")
    return r


def evidence_rows(
    store: Store, *, chain: str | None = None, address: str | None = None, entity: str | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    """Stored evidence, oldest block first, filtered by address, entity and/or kind."""
    where, params = where_equal(chain=chain, address=address, entity=entity, kind=kind)
    sql = f"select * from address_evidence{where} order by coalesce(block_height, 0), id"
    return [_evidence_from_row(r) for r in store._query(sql, params)]


def candidate_rows(store: Store, *, entity: str | None = None, status: str = "candidate") -> list[dict[str, Any]]:
    """Addresses with a status (candidates by default) and a summary of their evidence.

    Each row has the address columns plus `evidence_count`, `payouts`, `payout_units`, `first_height`,
    `last_height` and `evidence` (the rows themselves).
    """
    out = []
    for r in store.address_rows(entity=entity, status=status):
        ev = evidence_rows(store, chain=r["chain"], address=r["address"])
        pays = [e for e in ev if e["kind"] == "pool_payout"]
        heights = [e["block_height"] for e in ev if e["block_height"] is not None]
        out.append(
            {
                **r,
                "evidence_count": len(ev),
                "payouts": len(pays),
                "payout_units": sum(e["value_units"] or 0 for e in pays),
                "first_height": min(heights) if heights else None,
                "last_height": max(heights) if heights else None,
                "evidence": ev,
            }
        )
    return out


def save_learned(
    store: Store, learned: Iterable[_LearnedLike], flags: Iterable[_FlagLike] = (), *, now: int, status: str = "active"
) -> list[tuple[_LearnedLike, str]]:
    """Persist co-spend (or other) learned addresses and flags, in the caller's transaction.

    Rejected and already-stored addresses are skipped (see `propose_address`); each learned item gets an
    evidence row. Returns (item, outcome) per item.
    """
    results = []
    for item in learned:
        a = item.address
        outcome = propose_address(store, item.entity, a, status=status, now=now)
        if outcome == "added":
            add_evidence(
                store,
                [Evidence(a.chain, a.address, item.entity, a.learned_by, a.evidence, detail={"reason": item.reason})],
                now=now,
            )
        results.append((item, outcome))
    for f in flags:
        store._db.execute(
            "insert or ignore into discovery_flags (chain, txid, entity, kind, detail, created_at) values (?, ?, ?, ?, ?, ?)",
            [f.chain, f.txid, f.entity, f.kind, f.detail, now],
        )
    return results


def flag_rows(store: Store, *, entity: str | None = None) -> list[dict[str, Any]]:
    """Flagged co-spends (not merged), newest first."""
    sql = "select * from discovery_flags" + (" where entity like ?" if entity else "") + " order by id desc"
    return store._query(sql, [f"%{entity}%"] if entity else [])


# --- pool blocks ------------------------------------------------------------------------------------


def save_pool_block(store: Store, row: dict[str, Any], *, now: int) -> bool:
    """Record a block attributed to a pool; True when it was new (a known coinbase is not rewritten)."""
    exists = store._db.execute("select 1 from pool_blocks where chain = ? and txid = ?", [row["chain"], row["txid"]]).fetchone()
    if exists:
        return False
    store._db["pool_blocks"].insert({**row, "reward_units": str(row["reward_units"]), "created_at": now})
    return True


def pool_block_rows(
    store: Store, *, pools: Iterable[str] | None = None, since: int | None = None, until: int | None = None
) -> list[dict[str, Any]]:
    """Attributed pool blocks, oldest first, optionally for some pools and a block-time window [since, until)."""
    where, params = [], []
    if pools is not None:
        names = list(pools)
        where.append(f"pool in ({','.join('?' * len(names))})" if names else "0")
        params.extend(names)
    if since is not None:
        where.append("block_time >= ?")
        params.append(since)
    if until is not None:
        where.append("block_time < ?")
        params.append(until)
    sql = "select * from pool_blocks" + (" where " + " and ".join(where) if where else "") + " order by block_height, txid"
    rows = store._query(sql, params)
    for r in rows:
        r["reward_units"] = int(r["reward_units"])
    return rows


def pool_blocks_known(store: Store, chain: str, txids: Iterable[str]) -> set[str]:
    """Which of `txids` are already recorded as pool blocks."""
    ids = list(txids)
    out: set[str] = set()
    for i in range(0, len(ids), 400):
        chunk = ids[i : i + 400]
        rows = store._query(
            f"select txid from pool_blocks where chain = ? and txid in ({','.join('?' * len(chunk))})", [chain, *chunk]
        )
        out |= {r["txid"] for r in rows}
    return out


# --- hop tracing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceBranch:
    """One part of a traced destination's coins still being followed: output `vout` of `txid`.

    `value` is the traced amount this output carries (its share of the destination, haircut by the
    inputs it was mixed with), not the output's full value.
    """

    txid: str
    vout: int
    value: int
    address: str | None
    hops: int
    path: tuple[str, ...]


def _branches_json(branches: tuple[TraceBranch, ...]) -> str:
    return json.dumps(
        [
            {
                "txid": b.txid,
                "vout": b.vout,
                "value_units": str(b.value),
                "address": b.address,
                "hops": b.hops,
                "path": list(b.path),
            }
            for b in branches
        ]
    )


def _branches_from_json(text: str | None) -> tuple[TraceBranch, ...] | None:
    if not text:
        return None
    return tuple(
        TraceBranch(d["txid"], d["vout"], int(d["value_units"]), d["address"], d["hops"], tuple(d["path"]))
        for d in json.loads(text)
    )


@dataclass(frozen=True)
class TraceState:
    """Where one traced destination's coins are, and what happened so far.

    `branches` are the outputs still followed, `shares` where the rest went; the `tip_*` fields name
    the largest branch (or the last one followed) for a one-line summary.
    """

    chain: str
    txid: str
    entity: str
    n: int
    address: str | None
    value: int
    status: str
    hops: int
    path: tuple[str, ...]
    tip_txid: str
    tip_vout: int
    tip_value: int
    tip_address: str | None
    attempts: int
    next_at: int
    result: str = ""
    attribution: str = ""
    created_at: int = 0
    branches: tuple[TraceBranch, ...] = ()
    shares: tuple[TraceShare, ...] = ()
    reported: bool = False


def _trace_from_row(r: dict[str, Any]) -> TraceState:
    branches = _branches_from_json(r.get("branches"))
    if branches is None:  # a trace stored before multi-branch tracing: its single tip is its one branch
        branches = (
            (
                TraceBranch(
                    r["tip_txid"],
                    r["tip_vout"],
                    int(r["tip_value_units"]),
                    r["tip_address"],
                    r["hops"],
                    tuple(json.loads(r["path"])),
                ),
            )
            if r["status"] == "pending"
            else ()
        )
    return TraceState(
        chain=r["chain"],
        txid=r["txid"],
        entity=r["entity"],
        n=r["n"],
        address=r["address"],
        value=int(r["value_units"]),
        status=r["status"],
        hops=r["hops"],
        path=tuple(json.loads(r["path"])),
        tip_txid=r["tip_txid"],
        tip_vout=r["tip_vout"],
        tip_value=int(r["tip_value_units"]),
        tip_address=r["tip_address"],
        attempts=r["attempts"],
        next_at=r["next_at"],
        result=r["result"] or "",
        attribution=r["attribution"] or "",
        created_at=r["created_at"],
        branches=branches,
        shares=shares_from_json(r.get("shares")),
        reported=bool(r.get("reported")),
    )


def queue_traces(store: Store, *, now: int, value_floor: int = 0) -> int:
    """Start a trace for every confirmed outflow destination attributed `unknown` that has none yet.

    Only destinations worth at least `value_floor` base units, on bitcoin. Returns how many were queued.
    """
    rows = store._query(
        """select d.chain, d.txid, d.entity, d.n, d.address, d.value_units from destinations d
           join flows f on f.chain = d.chain and f.txid = d.txid and f.entity = d.entity
           left join traces t on t.chain = d.chain and t.txid = d.txid and t.entity = d.entity and t.n = d.n
           where t.txid is null and d.attribution = 'unknown' and f.direction = 'out' and f.status = 'confirmed'
             and d.chain = 'bitcoin' and d.address is not null""",
    )
    queued = 0
    for r in rows:
        if int(r["value_units"]) < value_floor:
            continue
        store._db["traces"].insert(
            {
                "chain": r["chain"],
                "txid": r["txid"],
                "entity": r["entity"],
                "n": r["n"],
                "address": r["address"],
                "value_units": r["value_units"],
                "status": "pending",
                "hops": 1,
                "path": json.dumps([r["txid"]]),
                "tip_txid": r["txid"],
                "tip_vout": r["n"],
                "tip_value_units": r["value_units"],
                "tip_address": r["address"],
                "attempts": 0,
                "next_at": now,
                "result": "",
                "attribution": "",
                "created_at": now,
                "updated_at": now,
                "shares": "[]",
                "reported": 0,
                "branches": _branches_json(
                    (TraceBranch(r["txid"], r["n"], int(r["value_units"]), r["address"], 1, (r["txid"],)),)
                ),
            }
        )
        queued += 1
    return queued


def due_traces(store: Store, *, now: int, limit: int = 50) -> list[TraceState]:
    """Pending traces whose next check is due, oldest due first."""
    rows = store._query(
        "select * from traces where status = 'pending' and next_at <= ? order by next_at, created_at limit ?", [now, limit]
    )
    return [_trace_from_row(r) for r in rows]


def save_trace(store: Store, t: TraceState, *, now: int) -> None:
    """Write a trace's new state."""
    store._db["traces"].upsert(
        {
            "chain": t.chain,
            "txid": t.txid,
            "entity": t.entity,
            "n": t.n,
            "address": t.address,
            "value_units": str(t.value),
            "status": t.status,
            "hops": t.hops,
            "path": json.dumps(list(t.path)),
            "tip_txid": t.tip_txid,
            "tip_vout": t.tip_vout,
            "tip_value_units": str(t.tip_value),
            "tip_address": t.tip_address,
            "attempts": t.attempts,
            "next_at": t.next_at,
            "result": t.result,
            "attribution": t.attribution,
            "created_at": t.created_at or now,
            "updated_at": now,
            "branches": _branches_json(t.branches),
            "shares": shares_json(t.shares),
            "reported": int(t.reported),
        },
        pk=("chain", "txid", "entity", "n"),
    )


def trace_rows(store: Store, *, entity: str | None = None, status: str | None = None) -> list[TraceState]:
    """Stored traces, optionally for one entity and/or status."""
    where, params = where_equal(entity=entity, status=status)
    return [_trace_from_row(r) for r in store._query(f"select * from traces{where} order by created_at, txid, n", params)]


# --- job state and stored txs -------------------------------------------------------------------------


def get_state(store: Store, key: str, default: Any = None) -> Any:
    """A discovery job's stored JSON state."""
    row = store._db.execute("select value from discovery_state where key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else default


def set_state(store: Store, key: str, value: Any, *, now: int) -> None:
    """Store a discovery job's JSON state."""
    store._db["discovery_state"].upsert({"key": key, "value": json.dumps(value), "updated_at": now}, pk="key")


def transactions_after(store: Store, rowid: int, *, limit: int = 500) -> list[tuple[int, str, ChainTx]]:
    """Stored txs after a position in the `transactions` table: (rowid, status, tx), in insertion order."""
    rows = store._query("select rowid as _rowid, * from transactions where rowid > ? order by rowid limit ?", [rowid, limit])
    return [(r["_rowid"], r["status"], Store.tx_from_row(r)) for r in rows]


def latest_btc_balances(store: Store) -> dict[str, tuple[int, int]]:
    """Latest confirmed BTC balance snapshot per bitcoin address: address → (base units, snapshot time)."""
    rows = store._query(
        """select s.address, s.confirmed_units, s.at from balance_snapshots s
           join (select chain, address, asset, max(at) as at from balance_snapshots group by chain, address, asset) m
             on s.chain = m.chain and s.address = m.address and s.asset = m.asset and s.at = m.at
           where s.chain = 'bitcoin' and s.asset = 'BTC'"""
    )
    return {r["address"]: (int(r["confirmed_units"]), r["at"]) for r in rows}
