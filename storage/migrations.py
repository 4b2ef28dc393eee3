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


@migrations(name="006_discovery")
def _discovery(db: Database) -> None:
    # Why an address was learned or proposed: one row per (address, kind, txid) — the pool payouts that
    # paid it, the co-spend that proved it, the change heuristics that picked it, an import or a manual add.
    db["address_evidence"].create(
        {
            "id": int,
            "chain": str,
            "address": str,
            "entity": str,
            "kind": str,  # pool_payout | cospend | change | import | manual
            "txid": str,  # "" when the evidence is not a tx (import, manual)
            "block_height": int,
            "block_time": int,
            "value_units": str,  # what the tx paid the address (pool payouts), or ""
            "detail": str,  # JSON: pool, coinbase txids, heuristics, file and row, ...
            "created_at": int,
        },
        pk="id",
    )
    db["address_evidence"].create_index(["chain", "address", "kind", "txid"], unique=True)
    db["address_evidence"].create_index(["entity", "kind"])
    # Blocks attributed to a mining pool (coinbase paying a pools-v2 payout address, or carrying its tag).
    db["pool_blocks"].create(
        {
            "chain": str,
            "txid": str,  # the coinbase
            "pool": str,
            "pool_address": str,
            "block_height": int,
            "block_hash": str,
            "block_time": int,
            "reward_units": str,  # what the coinbase paid the pool's addresses
            "matched_by": str,  # address | tag | address+tag
            "tag": str,  # the pool tag found in the coinbase scriptSig, "" when not looked up or absent
            "tag_pool": str,  # pool the tag names when it disagrees with the address, else ""
            "created_at": int,
        },
        pk=("chain", "txid"),
    )
    db["pool_blocks"].create_index(["pool", "block_time"])
    # Txs whose co-spent inputs were NOT merged (CoinJoin-shaped, or mixing two known entities).
    db["discovery_flags"].create(
        {"id": int, "chain": str, "txid": str, "entity": str, "kind": str, "detail": str, "created_at": int},
        pk="id",
    )
    db["discovery_flags"].create_index(["chain", "txid", "kind"], unique=True)
    # Hop tracing of unknown destinations: one row per (flow, output), resumable after a restart.
    db["traces"].create(
        {
            "chain": str,
            "txid": str,  # the flow's tx
            "entity": str,
            "n": int,  # the destination's output index
            "address": str,
            "value_units": str,
            "status": str,  # pending | attributed | ended | exhausted | gave_up
            "hops": int,  # txs on the path so far, the flow's own tx being hop 1
            "path": str,  # JSON list of txids, the flow's tx first
            "tip_txid": str,  # the coins are now in output tip_vout of tip_txid
            "tip_vout": int,
            "tip_value_units": str,
            "tip_address": str,
            "attempts": int,  # checks that found the coins unspent
            "next_at": int,
            "result": str,  # what ended the trace, in words
            "attribution": str,  # e.g. exchange:Binance when attributed
            "created_at": int,
            "updated_at": int,
        },
        pk=("chain", "txid", "entity", "n"),
    )
    db["traces"].create_index(["status", "next_at"])
    # Small resumable state of discovery jobs (e.g. the co-spend scan's position in `transactions`).
    db["discovery_state"].create({"key": str, "value": str, "updated_at": int}, pk="key")


@migrations(name="007_source_health")
def _source_health(db: Database) -> None:
    # What `status` and /healthz report about each source, kept across restarts.
    db["source_health"].create(
        {
            "source": str,
            "last_success_at": int,
            "last_error": str,
            "last_error_at": int,
            "failing_since": int,
            "polls": int,
            "errors": int,
            "tip_height": int,
            "updated_at": int,
        },
        pk="source",
    )


@migrations(name="008_trace_branches")
def _trace_branches(db: Database) -> None:
    # Multi-branch tracing: a trace follows every output above its floor. `branches` holds the outputs
    # still being followed (JSON list), `shares` where the rest went (JSON list of TraceShare fields),
    # `reported` whether the flow was re-classified from them (one update alert per trace).
    db["traces"].add_column("branches", str)
    db["traces"].add_column("shares", str)
    db["traces"].add_column("reported", int)
    # The traced breakdown of a destination, kept with the flow (JSON list of TraceShare fields).
    db["destinations"].add_column("shares", str)


@migrations(name="009_miner_blocks")
def _miner_blocks(db: Database) -> None:
    # The chain-wide miner view: one row per block of the best chain scanned (PoolDays are sums of these
    # rows, so undoing a reorg is deleting the orphaned heights).
    db["miner_blocks"].create(
        {
            "chain": str,
            "height": int,
            "hash": str,
            "prev_hash": str,
            "time": int,
            "day": str,  # UTC date of the block time, YYYY-MM-DD
            "difficulty": float,
            "pool": str,  # pools-v2 name, "" when unknown, NULL when scanned without attribution
            "matched_by": str,  # tag | address | tag+address | ""
            "tag": str,
            "address_pool": str,  # the pool the payout address names when the tag named another
            "subsidy_units": str,
            "fees_units": str,  # coinbase outputs − subsidy (what the miner claimed of the fees)
            "reward_units": str,
            "scanned_at": int,
        },
        pk=("chain", "height"),
    )
    db["miner_blocks"].create_index(["chain", "day"])
    db["miner_blocks"].create_index(["chain", "time"])


@migrations(name="010_classification_facts")
def _classification_facts(db: Database) -> None:
    # The dated profile points a classification used (JSON list of FactUsed), so every rendered figure
    # comes from what the pipeline stored.
    db["classifications"].add_column("facts", str)


@migrations(name="011_outflow_history_index")
def _outflow_history_index(db: Database) -> None:
    # `Store.outflow_history` runs once per classified outflow and reads an entity's outflows by their time
    # (block time, else first seen): without this index each call scanned every flow of the entity, so a
    # backfill of N outflows cost O(N²) row reads.
    db.execute(
        "create index if not exists idx_flows_entity_direction_at on flows (entity, direction, coalesce(block_time, first_seen))"
    )


@migrations(name="012_block_facts")
def _block_facts(db: Database) -> None:
    # Facts of blocks the market context read (storage/blockfacts.py): immutable per hash, kept across runs.
    db["block_facts"].create(
        {"chain": str, "hash": str, "height": int, "difficulty": float, "time": int, "coinbase_total_units": str},
        pk=("chain", "hash"),
    )
    db["block_facts"].create_index(["chain", "height"])


def _scale(decimals_col: str) -> str:
    # 10^decimals as a REAL, without relying on SQLite's optional math functions (power()).
    return f"(case {decimals_col} " + " ".join(f"when {d} then 1e{d}" for d in range(0, 37)) + " else null end)"


def _iso(col: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', {col}, 'unixepoch')"


@migrations(name="013_datasette_views")
def _datasette_views(db: Database) -> None:
    # Read-only views for Datasette and other SQL browsers: amounts as REAL in the asset's unit (BTC for
    # bitcoin) so they sort and facet numerically (the tables keep exact integers as TEXT), times as
    # ISO-8601 UTC text (the tables keep Unix seconds), and each flow with its newest classification.
    scale = _scale("f.decimals")
    amounts = ", ".join(
        f"cast(f.{k}_units as real) / {scale} as {k}_amount" for k in ("out", "spent", "change", "received", "fee_share")
    )
    db.execute(
        f"""create view if not exists flows_view as
        select f.chain, f.txid, f.entity, e.kind as entity_kind, f.direction, f.status,
               f.block_height, {_iso("f.block_time")} as block_time, {_iso("f.first_seen")} as seen_at,
               f.asset, {amounts},
               case when f.asset = 'BTC' then cast(f.out_units as real) / {scale} end as out_btc,
               c.verdict, c.severity, c.usd_value, c.btc_usd, c.hashprice_usd, c.attribution,
               c.version as classification_version, c.status as classification_status,
               (select group_concat(d.attribution, '; ') from destinations d
                 where d.chain = f.chain and d.txid = f.txid and d.entity = f.entity) as destinations,
               {_iso("f.updated_at")} as updated_at
        from flows f
        left join entities e on e.name = f.entity
        left join classifications c on c.id = (
            select c2.id from classifications c2 where c2.chain = f.chain and c2.txid = f.txid
               and c2.entity = f.entity order by c2.version desc limit 1)"""
    )
    db.execute(
        f"""create view if not exists alerts_view as
        select a.id, a.kind, a.entity, a.chain, a.txid, a.status, {_iso("a.created_at")} as created_at,
               {_iso("a.updated_at")} as updated_at, c.verdict, c.severity, c.usd_value, c.btc_usd,
               case when c.asset = 'BTC' then cast(c.out_units as real) / 1e8 end as out_btc,
               (select group_concat(ac.channel || ': ' || ac.status, '; ') from alert_channels ac
                 where ac.alert_id = a.id) as channels,
               a.dedup_key
        from alerts a left join classifications c on c.id = a.classification_id"""
    )
    db.execute(
        f"""create view if not exists entities_view as
        select e.name, e.kind, e.watch, e.note,
               (select count(*) from addresses x where x.entity = e.name and x.status = 'active') as addresses,
               (select count(*) from addresses x where x.entity = e.name and x.status = 'candidate') as candidates,
               (select sum(cast(s.confirmed_units as real)) / 1e8 from balance_snapshots s
                  join addresses x on x.chain = s.chain and x.address = s.address
                 where x.entity = e.name and x.status = 'active' and s.asset = 'BTC'
                   and s.at = (select max(s2.at) from balance_snapshots s2 where s2.chain = s.chain
                                and s2.address = s.address and s2.asset = s.asset)) as balance_btc,
               (select count(*) from flows f where f.entity = e.name) as flows,
               (select sum(cast(f.out_units as real)) / 1e8 from flows f
                 where f.entity = e.name and f.direction = 'out' and f.asset = 'BTC'
                   and f.status in ('confirmed', 'mempool')) as out_btc,
               (select {_iso("max(coalesce(f.block_time, f.first_seen))")} from flows f
                 where f.entity = e.name) as last_flow_at,
               {_iso("e.updated_at")} as updated_at
        from entities e"""
    )


@migrations(name="014_pool_coins")
def _pool_coins(db: Database) -> None:
    # The miner view's pool outflows: coins paid to pool payout addresses (coinbase outputs, and the change
    # of pool spends), whether and by which tx they were spent, and each spend's outputs to others.
    db["pool_coins"].create(
        {
            "chain": str,
            "txid": str,
            "n": int,
            "pool": str,  # the pool the coin is counted for
            "address": str,
            "value_units": str,
            "height": int,  # block height of the tx that created the coin
            "coinbase": int,  # 1: spendable only after 100 confirmations
            "spent_by": str,  # NULL while unspent (as far as checked)
            "spent_height": int,
            "checked_height": int,  # the tip when it was last checked (0: never)
        },
        pk=("chain", "txid", "n"),
    )
    db["pool_coins"].create_index(["chain", "spent_by", "checked_height"])
    db["pool_outflows"].create(
        {
            "chain": str,
            "txid": str,  # the spending tx
            "n": int,  # its output
            "pool": str,
            "block_height": int,
            "block_time": int,
            "day": str,
            "address": str,  # destination (not a pool payout address)
            "value_units": str,  # the output's value, times the pool's share of the tx's inputs
        },
        pk=("chain", "txid", "n"),
    )
    db["pool_outflows"].create_index(["chain", "block_time"])


@migrations(name="015_incidents")
def _incidents(db: Database) -> None:
    # An incident: one entity's run of sale-type flows, alerted as one thread with running totals.
    db["incidents"].create(
        {
            "id": int,
            "chain": str,
            "entity": str,
            "status": str,  # open | closed
            "opened_at": int,  # time of its first flow (block time, or first seen while unconfirmed)
            "last_flow_at": int,  # time of its latest flow: the quiet period runs from here
            "closed_at": int,
            "channels": str,  # JSON list of the channels that heard of it
            "updated_at": int,
        },
        pk="id",
    )
    db["incidents"].create_index(["chain", "entity", "status"])
    db["incident_flows"].create(
        {"incident_id": int, "chain": str, "txid": str, "entity": str, "added_at": int},
        pk=("chain", "txid", "entity"),
    )
    db["incident_flows"].create_index(["incident_id"])
    db["alerts"].add_column("incident_id", int)
    db["alerts"].create_index(["incident_id"])
    # Whether a balance condition is firing, so a level crossing or a drop alerts once, not every tick.
    db["watch_state"].create({"key": str, "value": str, "updated_at": int}, pk="key")
    # What a channel answered when it posted a message that later ones thread under (Slack's `ts`).
    db["channel_threads"].create(
        {"message_id": str, "channel": str, "ref": str, "created_at": int},
        pk=("message_id", "channel"),
    )


@migrations(name="016_delivery_owner")
def _delivery_owner(db: Database) -> None:
    # The process (its lock's owner token) that claimed an (alert, channel) pair for sending: only pairs
    # whose owner is gone are recovered, never those another live dispatcher is sending.
    db["alert_channels"].add_column("claimed_by", str)
