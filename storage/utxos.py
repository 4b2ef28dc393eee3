"""Block mode's watched UTXO set: outputs paying watched addresses that are not spent yet."""

from __future__ import annotations

from collections.abc import Iterable

from monitor.model import WatchedUtxo
from storage.store import Store

__all__ = ["apply_utxo_changes", "load_utxos", "count_utxos"]


def apply_utxo_changes(store: Store, chain: str, added: Iterable[WatchedUtxo], spent: Iterable[tuple[str, int]]) -> None:
    """Add created and remove spent watched outputs (call inside the tick's batch)."""
    store._db["watched_utxos"].upsert_all(
        (
            {
                "chain": u.chain,
                "txid": u.txid,
                "vout": u.vout,
                "address": u.address,
                "value_units": str(u.value),
                "height": u.height,
            }
            for u in added
        ),
        pk=("chain", "txid", "vout"),
    )
    for txid, vout in spent:
        store._db.execute("delete from watched_utxos where chain = ? and txid = ? and vout = ?", [chain, txid, vout])


def load_utxos(store: Store, chain: str) -> list[WatchedUtxo]:
    """The stored watched UTXO set of a chain."""
    return [
        WatchedUtxo(r["chain"], r["txid"], r["vout"], r["address"], int(r["value_units"]), r["height"])
        for r in store._query("select * from watched_utxos where chain = ? order by txid, vout", [chain])
    ]


def count_utxos(store: Store, chain: str) -> int:
    """How many watched outputs are unspent."""
    return store._db.execute("select count(*) from watched_utxos where chain = ?", [chain]).fetchone()[0]
