"""The Datasette-friendly views: numeric amounts that sort as numbers, ISO-8601 times, newest classification.

Queried with the standard library's sqlite3, as Datasette (or any SQL browser) would read the file.
"""

import json
import sqlite3
from pathlib import Path

from monitor.model import (
    Alert,
    Attribution,
    BalanceSnapshot,
    Classification,
    Destination,
    Entity,
    EntityAddress,
    EntityFlow,
)
from storage import Store
from storage.alerts import queue_alert

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_772_618_400  # 2026-03-04T10:00:00Z
SAT = 100_000_000


def _flow(
    txid: str,
    entity: str,
    out: int,
    *,
    t: int,
    asset: str = "BTC",
    decimals: int = 8,
    to: str = "exchange:Kraken",
    chain: str = "bitcoin",
) -> EntityFlow:
    att = Attribution.parse(to)
    return EntityFlow(
        chain,
        txid,
        entity,
        900_000,
        t,
        spent=out + 1_000,
        change=0,
        received=0,
        fee_share=1_000,
        out=out,
        destinations=(Destination(f"addr-{txid}", out, 0, att),),
        asset=asset,
        decimals=decimals,
    )


def _fill(path: Path) -> None:
    store = Store(path)
    try:
        with store.batch():
            store.sync_entities([Entity("MARA", "miner"), Entity("Bhutan", "sovereign")], now=T0)
            flows = [
                (_flow("a" * 64, "MARA", 9_852_000_000, t=T0), 6.8e6),  # 98.52 BTC
                (_flow("b" * 64, "MARA", 304_530_000_000, t=T0 + 3600), 208.7e6),  # 3,045.30 BTC
                (_flow("c" * 64, "Bhutan", 65_217_000_000, t=T0 + 7200), 45.0e6),  # 652.17 BTC
                (_flow("d" * 64, "MARA", 5 * SAT, t=T0 + 10_800, to="unknown"), 0.34e6),  # 5 BTC
                # 1,500 tokens of 18 decimals: beyond 64-bit integers, stored as text
                (_flow("e" * 64, "MARA", 1_500 * 10**18, t=T0 + 14_400, asset="WBTC-like", decimals=18, chain="ethereum"), None),
            ]
            for f, usd in flows:
                store.save_flow(f, now=T0)
                c = Classification(
                    f.chain,
                    f.txid,
                    f.entity,
                    "unknown_transfer",
                    "info",
                    ("first look",),
                    out=f.out,
                    asset=f.asset,
                    usd_value=usd,
                )
                store.save_classification(c, context={}, now=T0)
                # a re-classification: the views must show the newest version only
                c2 = Classification(
                    f.chain,
                    f.txid,
                    f.entity,
                    "balance_sheet_sale",
                    "critical",
                    ("sold",),
                    out=f.out,
                    asset=f.asset,
                    usd_value=usd,
                    attribution=str(f.destinations[0].attribution),
                )
                stored, _ = store.save_classification(c2, context={}, now=T0 + 60)
                queue_alert(
                    store,
                    Alert(
                        dedup_key=f"{f.chain}:{f.txid}:{f.entity}",
                        kind="new",
                        channels=("console",),
                        payload={"flow": {}},
                        created_at=T0 + 120,
                    ),
                    chain=f.chain,
                    txid=f.txid,
                    entity=f.entity,
                    classification_id=stored.id,
                    now=T0 + 120,
                )
            # two snapshots of one address: the balance is the newest, in BTC
            store.add_addresses("MARA", [EntityAddress("bitcoin", "bc1-test-mara", source="test fixture")], now=T0)
            store.save_snapshots(
                [
                    BalanceSnapshot("bitcoin", "bc1-test-mara", T0, 5 * SAT),
                    BalanceSnapshot("bitcoin", "bc1-test-mara", T0 + 60, 123_456_789_000_000),
                ]
            )
    finally:
        store.close()


def _rows(path: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_views_sort_amounts_as_numbers_and_show_iso_times(tmp_path):
    db = tmp_path / "tm.db"
    _fill(db)
    # The tables keep exact integers as text: sorted as text, 98.52 BTC comes before 3,045.30 BTC.
    as_text = [r[0] for r in _rows(db, "select txid from flows where asset = 'BTC' order by out_units desc")]
    assert as_text[0] == "a" * 64
    # The view sorts numerically, largest first.
    rows = _rows(
        db,
        "select txid, out_btc, out_amount, block_time, verdict, classification_version, usd_value "
        "from flows_view where out_btc is not null order by out_btc desc",
    )
    assert [(r[0][0], r[1]) for r in rows] == [("b", 3045.3), ("c", 652.17), ("a", 98.52), ("d", 5.0)]
    assert rows[0][3] == "2026-03-04T11:00:00Z"
    assert {r[4] for r in rows} == {"balance_sheet_sale"} and {r[5] for r in rows} == {2}
    assert [r[0][0] for r in _rows(db, "select txid from flows_view order by usd_value desc limit 3")] == ["b", "c", "a"]
    # The 18-decimal token flow: a number in its own unit, no BTC column.
    (evm,) = _rows(db, "select out_amount, out_btc, typeof(out_amount) from flows_view where chain = 'ethereum'")
    assert evm == (1500.0, None, "real")
    alerts = _rows(db, "select txid, out_btc, created_at, verdict from alerts_view order by out_btc desc")
    assert [(a[0][0], a[1]) for a in alerts][:4] == [("b", 3045.3), ("c", 652.17), ("a", 98.52), ("d", 5.0)]
    assert alerts[0][2] == "2026-03-04T10:02:00Z" and alerts[0][3] == "balance_sheet_sale"
    ents = {r[0]: r[1:] for r in _rows(db, "select name, out_btc, balance_btc, last_flow_at from entities_view")}
    assert ents["MARA"] == (3045.3 + 98.52 + 5.0, 1_234_567.89, "2026-03-04T14:00:00Z")
    assert ents["Bhutan"] == (652.17, None, "2026-03-04T12:00:00Z")


def test_datasette_metadata_names_the_views_and_their_columns(tmp_path):
    db = tmp_path / "tm.db"
    _fill(db)
    meta = json.loads((ROOT / "deploy" / "datasette-metadata.json").read_text())
    tables = meta["databases"]["treasury-monitor"]["tables"]
    con = sqlite3.connect(db)
    try:
        for view in ("flows_view", "alerts_view", "entities_view"):
            cols = {r[1] for r in con.execute(f"pragma table_info({view})")}
            described = tables[view]
            assert set(described["columns"]) <= cols, view
            assert described.get("sort_desc", next(iter(cols))) in cols
            for facet in described.get("facets", []):
                assert facet in cols, (view, facet)
    finally:
        con.close()
