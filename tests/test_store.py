"""Storage on a real SQLite file: schema, upserts, one-transaction batches, the async facade."""

import asyncio
import sqlite3

import pytest
from builders import addr, entity, make_tx, sql, sql_dicts

from monitor.core.flows import entity_flows
from monitor.core.registry import Registry
from monitor.model import BalanceSnapshot, Cursor, EntityAddress, Fact, Profile, StorageError
from storage import AsyncStore, Store

A, B = addr("store-a"), addr("store-b")


def test_schema_is_migrated_once_and_wal(db_path):
    s = Store(db_path)
    assert s.applied_migrations()[0] == "001_foundation"
    assert sql(s, "pragma journal_mode")[0][0] == "wal"
    s.close()
    s2 = Store(db_path)  # reopening applies nothing twice
    assert s2.applied_migrations().count("001_foundation") == 1
    assert {"entities", "addresses", "transactions", "flows", "destinations", "cursors", "balance_snapshots"} <= set(
        r[0] for r in sql(s2, "select name from sqlite_master where type = 'table'")
    )
    s2.close()


def test_mempool_tx_that_confirms_is_stored_once_and_updated(db_path):
    s = Store(db_path)
    mem = make_tx([(A, 100_000)], [(B, 90_000)], height=None, txid="aa" * 32)
    assert s.save_tx(mem, now=10) is True
    assert s.tx_status("bitcoin", "aa" * 32) == "mempool"
    conf = make_tx([(A, 100_000)], [(B, 90_000)], height=880_001, txid="aa" * 32)
    assert s.save_tx(conf, now=20) is False
    rows = sql_dicts(s, "select * from transactions")
    assert len(rows) == 1 and rows[0]["block_height"] == 880_001 and rows[0]["first_seen"] == 10
    assert s.get_tx("bitcoin", "aa" * 32) == conf


def test_batch_commits_rows_and_cursor_together_or_not_at_all(db_path):
    s = Store(db_path)
    tx = make_tx([(A, 100_000)], [(B, 90_000)])
    with pytest.raises(RuntimeError):
        with s.batch():
            s.save_tx(tx, now=1)
            s.set_cursors([Cursor("src", A, '{"n": 1}')], now=1)
            raise RuntimeError("crash before commit")
    assert s.get_tx("bitcoin", tx.txid) is None and s.cursors("src") == {}
    with s.batch():
        s.save_tx(tx, now=1)
        s.set_cursors([Cursor("src", A, '{"n": 1}')], now=1)
    # a second connection (another process) sees both
    other = sqlite3.connect(db_path)
    assert other.execute("select count(*) from transactions").fetchone()[0] == 1
    assert other.execute("select state from cursors").fetchone()[0] == '{"n": 1}'


def test_flows_round_trip_with_destinations_and_big_amounts(db_path):
    s = Store(db_path)
    reg = Registry([entity("M", addresses=[A])])
    tx = make_tx([(A, 2_100_000_000_000_000)], [(B, 2_099_999_999_990_000)])
    [flow] = entity_flows(tx, reg)
    s.save_flow(flow, now=5)
    assert s.get_flow("bitcoin", tx.txid, "M") == flow
    # wei-sized amounts do not fit SQLite integers; they are stored exactly as text
    big = flow.__class__(**{**flow.__dict__, "spent": 10**24, "out": 10**24 - 1, "fee_share": 1, "asset": "ETH", "decimals": 18})
    s.save_flow(big, now=6)
    assert s.get_flow("bitcoin", tx.txid, "M").out == 10**24 - 1


def test_entities_addresses_and_learned(db_path):
    s = Store(db_path)
    e = entity("M", addresses=[A], profile=Profile(holdings_btc=Fact(100.0, "filing", "2026-01-01"), strategy_tags=("hodl",)))
    s.sync_entities([e], now=1)
    s.add_addresses("M", [EntityAddress("bitcoin", B, "tx abc", learned_by="cospend", evidence="ab" * 32)], now=2)
    assert s.entity_profile("M") == e.profile
    assert [a.address for a in s.learned_addresses()["M"]] == [B]
    assert s.set_address_status("bitcoin", B, "rejected")
    assert s.learned_addresses() == {}
    s.sync_entities([e], now=3)  # re-syncing never resurrects a rejected address
    assert [r["status"] for r in s.address_rows(entity="M") if r["address"] == B] == ["rejected"]


def test_balances_latest_snapshot(db_path):
    s = Store(db_path)
    s.save_snapshots([BalanceSnapshot("bitcoin", A, 1, 500), BalanceSnapshot("bitcoin", A, 2, 700)])
    assert s.latest_balances() == {("bitcoin", A, "BTC"): 700}


def test_unwritable_path_is_a_storage_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="cannot open database"):
        Store(tmp_path / "f" / "db.sqlite")


async def test_async_store_runs_on_one_thread(db_path):
    s = AsyncStore(await asyncio.to_thread(Store, db_path))
    tx = make_tx([(A, 100_000)], [(B, 90_000)])
    assert await s.run(Store.save_tx, tx, now=1) is True
    assert (await s.run(Store.get_tx, "bitcoin", tx.txid)) == tx
    await s.close()
