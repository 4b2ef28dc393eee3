"""Block facts cache: writes and reads of the `block_facts` table (schema step 012_block_facts).

A block's height, difficulty, time and coinbase total never change for its hash, so what the market
context fetched once is kept: a CLI `poll` (a new process each time) then makes the same requests and
computes the same average fees as a daemon that kept them in memory. Functions take a `Store` (run them
through `AsyncStore.run`).
"""

from __future__ import annotations

from typing import Any

from storage.store import Store

__all__ = ["save_block_facts", "block_facts", "coinbase_totals"]


def save_block_facts(
    store: Store, chain: str, block_hash: str, *, height: int, difficulty: float, time: int, coinbase_total: int | None
) -> None:
    """Keep one block's facts (an upsert: the same hash always has the same facts)."""
    with store.batch():
        store._db["block_facts"].upsert(
            {
                "chain": chain,
                "hash": block_hash,
                "height": height,
                "difficulty": difficulty,
                "time": time,
                "coinbase_total_units": None if coinbase_total is None else str(coinbase_total),
            },
            pk=("chain", "hash"),
        )


def block_facts(store: Store, chain: str, block_hash: str) -> dict[str, Any] | None:
    """The stored facts of a block (height, difficulty, time, coinbase_total), or None."""
    row = store._db.execute(
        "select height, difficulty, time, coinbase_total_units from block_facts where chain = ? and hash = ?",
        [chain, block_hash],
    ).fetchone()
    if row is None:
        return None
    return {"height": row[0], "difficulty": row[1], "time": row[2], "coinbase_total": None if row[3] is None else int(row[3])}


def coinbase_totals(store: Store, chain: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """(height, coinbase total) of the stored blocks with lo < height <= hi, by height."""
    rows = store._db.execute(
        "select height, coinbase_total_units from block_facts where chain = ? and height > ? and height <= ? "
        "and coinbase_total_units is not null order by height",
        [chain, lo, hi],
    ).fetchall()
    return [(int(h), int(v)) for h, v in rows]
