"""Stored facts the balance and dormancy alerts read: entity balances, net flows over time, the age of
spent outputs (their funding tx's block time), and the state that keeps a condition from alerting twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from storage.store import Store

__all__ = [
    "confirmed_balance",
    "net_flows_since",
    "funding_times",
    "state",
    "set_state",
    "alert_exists",
]


def confirmed_balance(store: Store, chain: str, addresses: Sequence[str], *, now: int) -> tuple[int, int] | None:
    """(the addresses' confirmed balance, as of when): from block mode's watched UTXO set when it holds
    any of them (as of the newest stored confirmed tx), else from their latest balance snapshots
    (address mode; as of the oldest of those); None when neither has anything for these addresses."""
    total, seen = 0, False
    for i in range(0, len(addresses), 400):
        chunk = list(addresses[i : i + 400])
        marks = ",".join("?" * len(chunk))
        for r in store._query(
            f"select value_units from watched_utxos where chain = ? and address in ({marks}) and height is not null",
            [chain, *chunk],
        ):
            seen = True
            total += int(r["value_units"])
    if seen:
        # The set is as current as the newest block applied; the newest stored confirmed tx is a safe
        # "as of" (a poll that has not applied the latest block yet must not date the balance `now`).
        row = store._db.execute(
            "select max(block_time) from transactions where chain = ? and status = 'confirmed' and block_time <= ?",
            [chain, now],
        ).fetchone()
        return total, (row[0] if row and row[0] is not None else now)
    # Block mode may also have seeded snapshots once; they are stale there, hence the UTXO set first.
    return _snapshot_balance(store, chain, addresses)


def _snapshot_balance(store: Store, chain: str, addresses: Sequence[str]) -> tuple[int, int] | None:
    total, oldest, seen = 0, None, False
    for i in range(0, len(addresses), 400):
        chunk = list(addresses[i : i + 400])
        marks = ",".join("?" * len(chunk))
        rows = store._query(
            f"""select s.confirmed_units, s.at from balance_snapshots s
                join (select address, max(at) as at from balance_snapshots
                      where chain = ? and asset = 'BTC' and address in ({marks}) group by address) m
                  on s.address = m.address and s.at = m.at
                where s.chain = ? and s.asset = 'BTC'""",
            [chain, *chunk, chain],
        )
        for r in rows:
            seen = True
            total += int(r["confirmed_units"])
            oldest = r["at"] if oldest is None else min(oldest, r["at"])
    return (total, oldest) if seen and oldest is not None else None


def net_flows_since(store: Store, chain: str, entity: str, since: int) -> list[tuple[int, int, str]]:
    """(block time, net change in base units, txid) of the entity's confirmed flows after `since`, newest
    first; net = received + change − spent (what the tx added to or took from the entity's balance)."""
    rows = store._query(
        """select block_time, txid, received_units, change_units, spent_units from flows
           where chain = ? and entity = ? and status = 'confirmed' and block_time > ? order by block_time desc, txid""",
        [chain, entity, since],
    )
    return [(r["block_time"], int(r["received_units"]) + int(r["change_units"]) - int(r["spent_units"]), r["txid"]) for r in rows]


def funding_times(store: Store, chain: str, txids: Sequence[str]) -> dict[str, tuple[int, int | None]]:
    """txid → (block time, block height) of the stored, confirmed transactions among `txids`."""
    out: dict[str, tuple[int, int | None]] = {}
    uniq = sorted(set(txids))
    for i in range(0, len(uniq), 400):
        chunk = uniq[i : i + 400]
        marks = ",".join("?" * len(chunk))
        for r in store._query(
            f"select txid, block_time, block_height from transactions where chain = ? and txid in ({marks}) "
            "and block_time is not null and status = 'confirmed'",
            [chain, *chunk],
        ):
            out[r["txid"]] = (r["block_time"], r["block_height"])
    return out


def state(store: Store, key: str) -> dict[str, Any] | None:
    """The stored state of a watched condition, or None."""
    rows = store._query("select value from watch_state where key = ?", [key])
    return json.loads(rows[0]["value"]) if rows else None


def set_state(store: Store, key: str, value: dict[str, Any], *, now: int) -> None:
    """Record a watched condition's state (inside the tick's transaction)."""
    store._db["watch_state"].upsert({"key": key, "value": json.dumps(value, sort_keys=True), "updated_at": now}, pk="key")


def alert_exists(store: Store, dedup_key: str) -> bool:
    """Whether an alert with this dedup key was ever queued."""
    return bool(store._query("select 1 from alerts where dedup_key = ? limit 1", [dedup_key]))
