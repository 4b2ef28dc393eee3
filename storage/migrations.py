"""Schema of the treasury-monitor database, as forward migrations.

One function per schema step, applied in order and recorded in `_sqlite_migrations` (sqlite-utils
`Migrations`). A released step is never edited: change the schema by adding a new step.

Amount columns (`*_units`) are TEXT holding exact decimal integers: satoshis fit in SQLite's 64-bit
integers but wei and token base units do not, and one representation for every chain keeps reads
simple. Times are integer Unix seconds (UTC).
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

__all__ = ["migrations"]

migrations = Migrations("treasury_monitor")


@migrations(name="001_foundation")
def _foundation(db: Database) -> None:
    db["entities"].create(
        {"name": str, "kind": str, "note": str, "watch": int, "profile": str, "updated_at": int},
        pk="name",
    )
    db["addresses"].create(
        {
            "chain": str,
            "address": str,
            "entity": str,
            "learned_by": str,  # config | registry | import | cospend | pool_payout | manual
            "source": str,
            "label": str,
            "as_of": str,
            "evidence": str,
            "status": str,  # active | candidate | rejected
            "added_at": int,
        },
        pk=("chain", "address"),
    )
    db["addresses"].create_index(["entity"])
    db["transactions"].create(
        {
            "chain": str,
            "txid": str,
            "block_height": int,
            "block_hash": str,
            "block_time": int,
            "fee_units": str,
            "asset": str,
            "decimals": int,
            "is_coinbase": int,
            "inputs": str,  # JSON [[address, value_units, prev_txid, prev_vout], ...]
            "outputs": str,  # JSON [[address, value_units, n], ...]
            "status": str,  # mempool | confirmed | orphaned | replaced
            "first_seen": int,
            "updated_at": int,
        },
        pk=("chain", "txid"),
    )
    db["transactions"].create_index(["block_height"])
    db["flows"].create(
        {
            "chain": str,
            "txid": str,
            "entity": str,
            "asset": str,
            "decimals": int,
            "block_height": int,
            "block_time": int,
            "spent_units": str,
            "change_units": str,
            "received_units": str,
            "fee_share_units": str,
            "out_units": str,
            "direction": str,  # out | in | internal
            "status": str,  # mempool | confirmed | orphaned | replaced
            "first_seen": int,
            "updated_at": int,
        },
        pk=("chain", "txid", "entity"),
    )
    db["flows"].create_index(["entity", "first_seen"])
    db["destinations"].create(
        {
            "chain": str,
            "txid": str,
            "entity": str,
            "n": int,
            "address": str,
            "value_units": str,
            "attribution": str,
            "path": str,  # JSON list of txids when the attribution came from hop tracing
        },
        pk=("chain", "txid", "entity", "n"),
    )
    db["cursors"].create({"source": str, "key": str, "state": str, "updated_at": int}, pk=("source", "key"))
    db["balance_snapshots"].create(
        {
            "chain": str,
            "address": str,
            "at": int,
            "asset": str,
            "confirmed_units": str,
            "mempool_delta_units": str,
            "tx_count": int,
        },
        pk=("chain", "address", "asset", "at"),
    )



@migrations(name="002_prices")
def _prices(db: Database) -> None:
    # Hourly (or daily) candles per pair, as each price source reported them; close is what is used.
    db["price_candles"].create(
        {
            "pair": str,  # e.g. BTC-USD, ETH-USD
            "granularity": int,  # seconds: 3600 hourly, 86400 daily
            "start": int,  # candle open time, Unix seconds
            "open": float,
            "high": float,
            "low": float,
            "close": float,
            "source": str,
            "fetched_at": int,
        },
        pk=("pair", "granularity", "start"),
    )


@migrations(name="003_classifications")
def _classifications(db: Database) -> None:
    # Versioned: a re-classification adds a row with version + 1 and marks the previous one superseded.
    db["classifications"].create(
        {
            "id": int,
            "chain": str,
            "txid": str,
            "entity": str,
            "version": int,
            "verdict": str,
            "severity": str,
            "reasons": str,  # JSON list of sentences
            "out_units": str,
            "asset": str,
            "usd_value": float,
            "btc_usd": float,
            "hashprice_usd": float,
            "attribution": str,
            "context": str,  # JSON: the MarketContext used (price source and time, staleness, difficulty, ...)
            "status": str,  # active | superseded | retracted
            "created_at": int,
        },
        pk="id",
    )
    db["classifications"].create_index(["chain", "txid", "entity", "version"], unique=True)
    db["classifications"].create_index(["entity", "status"])
    # Every stored classification, update and retraction gets a monotonically increasing event id, so a
    # consumer (/api/events?after=ID) resumes exactly where it stopped.
    db["events"].create(
        {"id": int, "kind": str, "classification_id": int, "created_at": int},
        pk="id",
    )


@migrations(name="004_alerts")
def _alerts(db: Database) -> None:
    db["alerts"].create(
        {
            "id": int,
            "dedup_key": str,  # chain:txid:entity:verdict — receivers drop a resend by it
            "kind": str,  # new | update | retraction | digest | test
            "chain": str,
            "txid": str,
            "entity": str,
            "classification_id": int,
            "payload": str,  # JSON message model (see alerts.render)
            "status": str,  # queued | delivered | failed (derived from its channels)
            "created_at": int,
            "updated_at": int,
        },
        pk="id",
    )
    db["alerts"].create_index(["status"])
    db["alerts"].create_index(["chain", "txid", "entity"])
    # Delivery state per (alert, channel): idempotent per pair; `sending` marks an attempt in flight.
    db["alert_channels"].create(
        {
            "alert_id": int,
            "channel": str,
            "status": str,  # queued | sending | delivered | failed
            "attempts": int,
            "next_at": int,
            "last_error": str,
            "delivered_at": int,
        },
        pk=("alert_id", "channel"),
    )
    db["alert_channels"].create_index(["status", "next_at"])
    # One row per attempt (a Delivery).
    db["deliveries"].create(
        {
            "id": int,
            "alert_id": int,
            "channel": str,
            "attempt": int,
            "at": int,
            "status": str,  # sending | ok | retry | failed | interrupted
            "error": str,
            "next_at": int,
        },
        pk="id",
    )
    db["deliveries"].create_index(["alert_id", "channel"])


@migrations(name="005_watched_utxos")
def _watched_utxos(db: Database) -> None:
    # Block mode's set of unspent outputs paying watched addresses: raw blocks carry no prevouts, so a
    # spend of a watched address is recognised by the outpoint it consumes.
    db["watched_utxos"].create(
        {"chain": str, "txid": str, "vout": int, "address": str, "value_units": str, "height": int},
        pk=("chain", "txid", "vout"),
    )
    db["watched_utxos"].create_index(["chain", "address"])
