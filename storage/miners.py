"""Storage of the chain-wide miner view: one row per scanned block of the best chain (`miner_blocks`).

PoolDays are sums over these rows; a reorg deletes the orphaned heights and the new branch is written in
the same transaction. Every function runs on the store thread inside the caller's transaction when there
is one (`with store.batch():`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.store import Store

__all__ = ["save_miner_blocks", "drop_miner_blocks_from", "miner_block_hashes", "miner_block_rows", "miner_block_span"]


def save_miner_blocks(store: Store, rows: Iterable[dict[str, Any]], *, now: int) -> int:
    """Upsert scanned blocks (keyed by chain and height); amounts as ints. Returns how many."""
    out = [
        {**r, "subsidy_units": str(r["subsidy_units"]), "fees_units": str(r["fees_units"]),
         "reward_units": str(r["reward_units"]), "scanned_at": now}
        for r in rows
    ]
    if out:
        store.db["miner_blocks"].upsert_all(out, pk=("chain", "height"))
    return len(out)


def drop_miner_blocks_from(store: Store, chain: str, height: int) -> int:
    """Delete the rows at and above `height` (blocks a reorg orphaned). Returns how many."""
    cur = store.db.execute("delete from miner_blocks where chain = ? and height >= ?", [chain, height])
    return cur.rowcount


def miner_block_hashes(store: Store, chain: str, low: int, high: int) -> dict[int, str]:
    """Height → stored hash for heights in [low, high]."""
    rows = store.db.execute(
        "select height, hash from miner_blocks where chain = ? and height between ? and ?", [chain, low, high]
    ).fetchall()
    return {h: x for h, x in rows}


def miner_block_span(store: Store, chain: str) -> tuple[int, int, int] | None:
    """(lowest height, highest height, row count) scanned, or None."""
    row = store.db.execute(
        "select min(height), max(height), count(*) from miner_blocks where chain = ?", [chain]
    ).fetchone()
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
    cur = store.db.execute(f"select * from miner_blocks where {' and '.join(where)} order by height", params)
    cols = [c[0] for c in cur.description]
    out = []
    for row in cur.fetchall():
        r = dict(zip(cols, row))
        for k in ("subsidy_units", "fees_units", "reward_units"):
            r[k] = int(r[k])
        out.append(r)
    return out
