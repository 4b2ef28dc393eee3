"""Storage of the chain-wide miner view: one row per scanned block of the best chain (`miner_blocks`).

PoolDays are sums over these rows; a reorg deletes the orphaned heights and the new branch is written in
the same transaction. Every function runs on the store thread inside the caller's transaction when there
is one (`with store.batch():`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.store import Store

__all__ = [
    "save_miner_blocks",
    "drop_miner_blocks_from",
    "miner_block_hashes",
    "miner_block_rows",
    "miner_block_span",
    "save_pool_coins",
    "pool_coins_to_check",
    "mark_pool_coins",
    "save_pool_outflows",
    "pool_outflow_rows",
    "unspent_pool_coins",
]


def save_miner_blocks(store: Store, rows: Iterable[dict[str, Any]], *, now: int) -> int:
    """Upsert scanned blocks (keyed by chain and height); amounts as ints. Returns how many."""
    out = [
        {
            **r,
            "subsidy_units": str(r["subsidy_units"]),
            "fees_units": str(r["fees_units"]),
            "reward_units": str(r["reward_units"]),
            "scanned_at": now,
        }
        for r in rows
    ]
    if out:
        store._db["miner_blocks"].upsert_all(out, pk=("chain", "height"))
    return len(out)


def drop_miner_blocks_from(store: Store, chain: str, height: int) -> int:
    """Delete the rows at and above `height` (blocks a reorg orphaned), with the pool coins they created, the
    pool outflows they confirmed, and the spends of older coins they held. Returns how many blocks."""
    cur = store._db.execute("delete from miner_blocks where chain = ? and height >= ?", [chain, height])
    n = cur.rowcount
    store._db.execute("delete from pool_coins where chain = ? and height >= ?", [chain, height])
    store._db.execute("delete from pool_outflows where chain = ? and block_height >= ?", [chain, height])
    store._db.execute(
        "update pool_coins set spent_by = null, spent_height = null, checked_height = 0 where chain = ? and spent_height >= ?",
        [chain, height],
    )
    return n


def miner_block_hashes(store: Store, chain: str, low: int, high: int) -> dict[int, str]:
    """Height → stored hash for heights in [low, high]."""
    rows = store._db.execute(
        "select height, hash from miner_blocks where chain = ? and height between ? and ?", [chain, low, high]
    ).fetchall()
    return {h: x for h, x in rows}


def miner_block_span(store: Store, chain: str) -> tuple[int, int, int] | None:
    """(lowest height, highest height, row count) scanned, or None."""
    row = store._db.execute("select min(height), max(height), count(*) from miner_blocks where chain = ?", [chain]).fetchone()
    return None if row is None or row[2] == 0 else (row[0], row[1], row[2])


def miner_block_rows(
    store: Store, chain: str = "bitcoin", *, since: int | None = None, until: int | None = None
) -> list[dict[str, Any]]:
    """Scanned blocks (amounts as ints), lowest height first; `since`/`until` filter on block time."""
    where, params = ["chain = ?"], [chain]
    if since is not None:
        where.append("time >= ?")
        params.append(since)
    if until is not None:
        where.append("time < ?")
        params.append(until)
    cur = store._db.execute(f"select * from miner_blocks where {' and '.join(where)} order by height", params)
    cols = [c[0] for c in cur.description]
    out = []
    for row in cur.fetchall():
        r = dict(zip(cols, row))
        for k in ("subsidy_units", "fees_units", "reward_units"):
            r[k] = int(r[k])
        out.append(r)
    return out


def save_pool_coins(store: Store, rows: Iterable[dict[str, Any]]) -> int:
    """Upsert coins paid to pool payout addresses (keyed by chain, txid, n), unspent and unchecked."""
    out = [{**r, "value_units": str(r["value_units"]), "spent_by": None, "spent_height": None, "checked_height": 0} for r in rows]
    if out:
        store._db["pool_coins"].upsert_all(out, pk=("chain", "txid", "n"))
    return len(out)


def pool_coins_to_check(store: Store, chain: str, *, tip: int, mature: int, limit: int | None) -> list[dict[str, Any]]:
    """Unspent pool coins not checked at `tip` yet, coinbase ones only when created at or below `mature`;
    least recently checked first."""
    sql = (
        "select txid, n, pool, address, value_units, height from pool_coins where chain = ? and spent_by is null "
        "and checked_height < ? and (coinbase = 0 or height <= ?) order by checked_height, height, txid, n"
    )
    params: list[Any] = [chain, tip, mature]
    if limit is not None:
        sql += " limit ?"
        params.append(limit)
    cur = store._db.execute(sql, params)
    cols = [c[0] for c in cur.description]
    return [{**dict(zip(cols, r)), "value_units": int(r[4])} for r in cur.fetchall()]


def mark_pool_coins(
    store: Store, chain: str, checked: Iterable[tuple[str, int]], spent: Iterable[tuple[str, int, str, int]], *, tip: int
) -> None:
    """Record a check at `tip` of (txid, n) coins, and the (txid, n, spending txid, its height) of spent ones."""
    store._db.conn.executemany(
        "update pool_coins set checked_height = ? where chain = ? and txid = ? and n = ?",
        [(tip, chain, t, n) for t, n in checked],
    )
    store._db.conn.executemany(
        "update pool_coins set spent_by = ?, spent_height = ?, checked_height = ? where chain = ? and txid = ? and n = ?",
        [(s, h, tip, chain, t, n) for t, n, s, h in spent],
    )


def save_pool_outflows(store: Store, rows: Iterable[dict[str, Any]]) -> int:
    """Upsert the outputs of pool spends to non-pool addresses (keyed by chain, txid, n)."""
    out = [{**r, "value_units": str(r["value_units"])} for r in rows]
    if out:
        store._db["pool_outflows"].upsert_all(out, pk=("chain", "txid", "n"))
    return len(out)


def pool_outflow_rows(store: Store, chain: str = "bitcoin", *, since: int | None = None) -> list[dict[str, Any]]:
    """Stored pool outflows (value as int), oldest first; `since` filters on block time."""
    where, params = ["chain = ?"], [chain]
    if since is not None:
        where.append("block_time >= ?")
        params.append(since)
    cur = store._db.execute(f"select * from pool_outflows where {' and '.join(where)} order by block_height, txid, n", params)
    cols = [c[0] for c in cur.description]
    return [{**dict(zip(cols, r)), "value_units": int(dict(zip(cols, r))["value_units"])} for r in cur.fetchall()]


def unspent_pool_coins(store: Store, chain: str, *, below: int | None = None) -> dict[tuple[str, int], str]:
    """(txid, n) → pool of the unspent pool coins; with `below`, as they stand once the blocks at and above it
    are dropped (coins created there gone, coins spent there unspent again)."""
    if below is None:
        cur = store._db.execute("select txid, n, pool from pool_coins where chain = ? and spent_by is null", [chain])
    else:
        cur = store._db.execute(
            "select txid, n, pool from pool_coins where chain = ? and height < ? and (spent_by is null or spent_height >= ?)",
            [chain, below, below],
        )
    return {(t, n): p for t, n, p in cur.fetchall()}
