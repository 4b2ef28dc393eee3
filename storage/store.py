"""Store: the sqlite-utils database (WAL, one writer) and its typed writes.

`Store` is synchronous and owns one connection. Everything that must land together goes through
`with store.batch():` — one SQLite transaction, so a tick's rows and its advanced cursors commit
together or not at all. `AsyncStore` runs every call on one dedicated thread, so the asyncio loop never
blocks on disk and there is exactly one writer.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from monitor.model import (
    Attribution,
    BalanceSnapshot,
    ChainTx,
    Classification,
    Cursor,
    Destination,
    Entity,
    EntityAddress,
    EntityFlow,
    Fact,
    FactUsed,
    Profile,
    StorageError,
    TraceShare,
    TxInput,
    TxOutput,
)
from storage.migrations import migrations

__all__ = [
    "Store",
    "AsyncStore",
    "tx_status_of",
    "address_values",
    "where_equal",
    "shares_json",
    "shares_from_json",
    "path_problem",
]


def shares_json(shares: tuple[TraceShare, ...] | list[TraceShare]) -> str:
    """TraceShares as stored (a JSON list; amounts as decimal strings)."""
    return json.dumps(
        [
            {"attribution": s.attribution, "value_units": str(s.value), "hops": s.hops, "path": list(s.path), "note": s.note}
            for s in shares
        ]
    )


def shares_from_json(text: str | None) -> tuple[TraceShare, ...]:
    """Inverse of `shares_json` ("" or NULL → no shares)."""
    return tuple(
        TraceShare(d["attribution"], int(d["value_units"]), int(d["hops"]), tuple(d["path"]), d.get("note", ""))
        for d in json.loads(text or "[]")
    )


T = TypeVar("T")


def tx_status_of(tx: ChainTx) -> str:
    """Stored status of a tx as a source reports it: `confirmed` or `mempool`."""
    return "confirmed" if tx.is_confirmed else "mempool"


def where_equal(**filters: Any) -> tuple[str, list[Any]]:
    """` where col = ? and ...` for the filters that are not None, and its parameters ("" when none)."""
    cols = [k for k, v in filters.items() if v is not None]
    return (" where " + " and ".join(f"{c} = ?" for c in cols) if cols else ""), [filters[c] for c in cols]


def address_values(entity: str, a: EntityAddress, *, status: str, added_at: int) -> dict[str, Any]:
    """The `addresses` row of an entity's address."""
    return {
        "chain": a.chain,
        "address": a.address,
        "entity": entity,
        "learned_by": a.learned_by,
        "source": a.source,
        "label": a.label,
        "as_of": a.as_of,
        "evidence": a.evidence,
        "status": status,
        "added_at": added_at,
    }


def path_problem(path: str | Path) -> str | None:
    """Why a database cannot be opened or created at `path`, or None when it can (nothing is created)."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a directory; give the path of a database file (it is created if missing)"
    if path.exists():
        return None if os.access(path, os.R_OK | os.W_OK) else f"{path} is not readable and writable by this user"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not writable by this user"
    return None


def _file_identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _profile_to_json(p: Profile) -> str:
    return json.dumps(asdict(p), sort_keys=True)


def _profile_from_json(text: str | None) -> Profile:
    if not text:
        return Profile()
    d = json.loads(text)
    facts = {
        k: (Fact(**v) if isinstance(v, dict) else None)
        for k, v in d.items()
        if k not in ("strategy_tags", "strategy_source", "earlier")
    }
    earlier = tuple((name, Fact(**f)) for name, f in d.get("earlier", ()))
    return Profile(
        **facts, strategy_tags=tuple(d.get("strategy_tags", ())), strategy_source=d.get("strategy_source", ""), earlier=earlier
    )


# Batch upserts (`Store.save_txs`, `save_flows`): the same columns and values as the per-row writes.
_CHUNK = 500
_TX_COLS = (
    "chain",
    "txid",
    "block_height",
    "block_hash",
    "block_time",
    "fee_units",
    "asset",
    "decimals",
    "is_coinbase",
    "inputs",
    "outputs",
    "status",
    "first_seen",
    "updated_at",
)
_FLOW_COLS = (
    "chain",
    "txid",
    "entity",
    "asset",
    "decimals",
    "block_height",
    "block_time",
    "spent_units",
    "change_units",
    "received_units",
    "fee_share_units",
    "out_units",
    "direction",
    "status",
    "first_seen",
    "updated_at",
)


def _upsert_sql(table: str, cols: tuple[str, ...], pk: tuple[str, ...]) -> str:
    keep = set(pk) | {"first_seen"}
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keep)
    return (
        f"insert into {table} ({', '.join(cols)}) values ({', '.join('?' * len(cols))}) "
        f"on conflict ({', '.join(pk)}) do update set {sets}"
    )


_UPSERT_TX = _upsert_sql("transactions", _TX_COLS, ("chain", "txid"))
_UPSERT_FLOW = _upsert_sql("flows", _FLOW_COLS, ("chain", "txid", "entity"))


def _tx_values(tx: ChainTx, now: int) -> tuple[Any, ...]:
    return (
        tx.chain,
        tx.txid,
        tx.block_height,
        tx.block_hash,
        tx.block_time,
        str(tx.fee),
        tx.asset,
        tx.decimals,
        int(tx.is_coinbase),
        json.dumps([[i.address, str(i.value), i.prev_txid, i.prev_vout] for i in tx.inputs]),
        json.dumps([[o.address, str(o.value), o.n] for o in tx.outputs]),
        tx_status_of(tx),
        now,
        now,
    )


def _flow_values(flow: EntityFlow, now: int, status: str | None) -> tuple[Any, ...]:
    return (
        flow.chain,
        flow.txid,
        flow.entity,
        flow.asset,
        flow.decimals,
        flow.block_height,
        flow.block_time,
        str(flow.spent),
        str(flow.change),
        str(flow.received),
        str(flow.fee_share),
        str(flow.out),
        flow.direction,
        status or ("confirmed" if flow.is_confirmed else "mempool"),
        now,
        now,
    )


class Store:
    """The treasury-monitor database file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: AsyncStore moves all use of this connection onto its one thread.
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0)
            self._db = Database(conn)
            with self._db.ensure_autocommit_on():
                self._db.execute("PRAGMA journal_mode=wal")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
            migrations.apply(self._db)
            self._identity = _file_identity(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from exc

    def check_file(self) -> None:
        """Check that the path still names the file this connection writes to.

        A database deleted or replaced under a running process leaves the connection writing into an
        unlinked file: everything written from then on is lost at exit.

        :raises StorageError: when the file is gone or another file now has its path.
        """
        try:
            now = _file_identity(self.path)
        except FileNotFoundError:
            raise StorageError(f"database {self.path} was deleted while in use; what was written since is lost") from None
        except OSError as exc:
            raise StorageError(f"database {self.path} cannot be checked: {exc}") from exc
        if now != self._identity:
            raise StorageError(
                f"database {self.path} was replaced by another file while in use; this process was writing to the old one"
            ) from None

    def close(self) -> None:
        """Close the connection (a WAL checkpoint happens on the last close)."""
        self._db.close()

    def applied_migrations(self) -> list[str]:
        """Names of the schema steps applied to this file, in order."""
        return [m.name for m in migrations.applied(self._db)]

    @contextmanager
    def batch(self) -> Iterator[Store]:
        """One transaction: everything written inside commits together or not at all.

        :raises StorageError: when SQLite refuses the write.
        """
        try:
            with self._db.atomic():
                yield self
        except sqlite3.Error as exc:
            raise StorageError(f"write to {self.path} failed: {exc}") from exc

    # --- entities and addresses -----------------------------------------------------------------

    def sync_entities(self, entities: Iterable[Entity], *, now: int) -> None:
        """Record the configured and bundled entities and their addresses (rejected ones stay rejected)."""
        with self.batch():
            for e in entities:
                self._db["entities"].upsert(
                    {
                        "name": e.name,
                        "kind": e.kind,
                        "note": e.note,
                        "watch": int(e.watch),
                        "profile": _profile_to_json(e.profile),
                        "updated_at": now,
                    },
                    pk="name",
                )
                self.add_addresses(e.name, e.addresses, now=now)

    def add_addresses(self, entity: str, addresses: Iterable[EntityAddress], *, now: int, status: str = "active") -> int:
        """Add addresses to an entity; existing rows keep their status and origin. Returns how many were new."""
        added = 0
        for a in addresses:
            existing = self._db.execute(
                "select entity, status from addresses where chain = ? and address = ?", [a.chain, a.address]
            ).fetchone()
            if existing is not None:
                continue
            self._db["addresses"].insert(address_values(entity, a, status=status, added_at=now))
            added += 1
        return added

    def set_address_status(self, chain: str, address: str, status: str) -> bool:
        """Set an address's status (active | candidate | rejected); False when it is unknown."""
        cur = self._db.execute("update addresses set status = ? where chain = ? and address = ?", [status, chain, address])
        return cur.rowcount > 0

    def remove_address(self, chain: str, address: str) -> bool:
        """Forget an address entirely; False when it is unknown."""
        cur = self._db.execute("delete from addresses where chain = ? and address = ?", [chain, address])
        return cur.rowcount > 0

    def address_rows(self, *, entity: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Stored addresses with their origin, optionally for one entity and/or status."""
        where, params = where_equal(entity=entity, status=status)
        return [dict(r) for r in self._rows(f"select * from addresses{where} order by entity, chain, address", params)]

    def learned_addresses(self) -> dict[str, list[EntityAddress]]:
        """Active and provisional addresses learned at run time (import, clustering, pool payouts, sweeps,
        manual), by entity; a provisional one carries `learned_by = "provisional"` while undecided."""
        out: dict[str, list[EntityAddress]] = {}
        for r in self._rows(
            "select * from addresses where status in ('active', 'provisional') and learned_by not in ('config', 'registry') "
            "order by added_at, address"
        ):
            out.setdefault(r["entity"], []).append(
                EntityAddress(
                    chain=r["chain"],
                    address=r["address"],
                    source=r["source"] or "",
                    learned_by="provisional" if r["status"] == "provisional" else r["learned_by"],
                    label=r["label"] or "",
                    as_of=r["as_of"] or "",
                    evidence=r["evidence"] or "",
                )
            )
        return out

    def entity_rows(self) -> list[dict[str, Any]]:
        """Stored entities (name, kind, note, watch, profile JSON)."""
        return [dict(r) for r in self._rows("select * from entities order by name")]

    def entity_profile(self, name: str) -> Profile:
        """The stored profile of an entity (empty when unknown)."""
        row = self._db.execute("select profile from entities where name = ?", [name]).fetchone()
        return _profile_from_json(row[0] if row else None)

    # --- chain data -----------------------------------------------------------------------------

    def _by_txids(self, table: str, cols: str, chain: str, txids: Iterable[str]) -> list[tuple[Any, ...]]:
        """`cols` of the rows of `table` on `chain` whose txid is among `txids`, one indexed query per 500."""
        ids = list(dict.fromkeys(txids))
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            sql = f"select {cols} from {table} where chain = ? and txid in ({', '.join('?' * len(chunk))})"
            out.extend(tuple(r) for r in self._db.execute(sql, [chain, *chunk]).fetchall())
        return out

    def tx_statuses(self, chain: str, txids: Iterable[str]) -> dict[str, str]:
        """Stored status of each of `txids` that is known (see `tx_status`), in one query per 500."""
        return {t: s for t, s in self._by_txids("transactions", "txid, status", chain, txids)}

    def save_txs(self, txs: Iterable[ChainTx], *, now: int) -> int:
        """Insert or update many txs at once (what `save_tx` does for one); returns how many were new.

        One `executemany` upsert instead of a sqlite-utils call per row: a backfill writes thousands of
        rows per step, and per-row writes were most of its CPU. `first_seen` is kept on update.
        """
        rows = [_tx_values(tx, now) for tx in txs]
        keys = {(r[0], r[1]) for r in rows}
        known = {(c, t) for c in {k[0] for k in keys} for t in self.tx_statuses(c, (k[1] for k in keys if k[0] == c))}
        self._db.conn.executemany(_UPSERT_TX, rows)
        return len(keys - known)

    def save_flows(self, flows: Iterable[EntityFlow], *, now: int) -> int:
        """Insert or update many flows and their destinations at once (see `save_txs`); returns how many were new."""
        flows = list(flows)
        if not flows:
            return 0
        keys = [(f.chain, f.txid, f.entity) for f in flows]
        known = {
            (c, t, e)
            for c in {k[0] for k in keys}
            for t, e in self._by_txids("flows", "txid, entity", c, (k[1] for k in keys if k[0] == c))
        }
        self._db.conn.executemany(_UPSERT_FLOW, [_flow_values(f, now, None) for f in flows])
        self._db.conn.executemany("delete from destinations where chain = ? and txid = ? and entity = ?", keys)
        self._db.conn.executemany(
            "insert or replace into destinations (chain, txid, entity, n, address, value_units, attribution, path, shares) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    f.chain,
                    f.txid,
                    f.entity,
                    d.n,
                    d.address,
                    str(d.value),
                    str(d.attribution),
                    json.dumps(list(d.attribution.path)),
                    shares_json(d.shares),
                )
                for f in flows
                for d in f.destinations
            ],
        )
        return len(set(keys) - known)

    def save_tx(self, tx: ChainTx, *, now: int) -> bool:
        """Insert or update a tx (a mempool tx that confirms is updated in place). True when it was new."""
        old = self._db.execute("select first_seen from transactions where chain = ? and txid = ?", [tx.chain, tx.txid]).fetchone()
        row = {
            "chain": tx.chain,
            "txid": tx.txid,
            "block_height": tx.block_height,
            "block_hash": tx.block_hash,
            "block_time": tx.block_time,
            "fee_units": str(tx.fee),
            "asset": tx.asset,
            "decimals": tx.decimals,
            "is_coinbase": int(tx.is_coinbase),
            "inputs": json.dumps([[i.address, str(i.value), i.prev_txid, i.prev_vout] for i in tx.inputs]),
            "outputs": json.dumps([[o.address, str(o.value), o.n] for o in tx.outputs]),
            "status": tx_status_of(tx),
            "first_seen": old[0] if old else now,
            "updated_at": now,
        }
        self._db["transactions"].upsert(row, pk=("chain", "txid"))
        return old is None

    def get_tx(self, chain: str, txid: str) -> ChainTx | None:
        """A stored tx, or None."""
        rows = self._rows("select * from transactions where chain = ? and txid = ?", [chain, txid])
        return self.tx_from_row(rows[0]) if rows else None

    @staticmethod
    def tx_from_row(r: dict[str, Any]) -> ChainTx:
        """A ChainTx from a `transactions` row."""
        return ChainTx(
            chain=r["chain"],
            txid=r["txid"],
            block_height=r["block_height"],
            block_time=r["block_time"],
            block_hash=r["block_hash"],
            inputs=tuple(TxInput(a, int(v), p or "", pv or 0) for a, v, p, pv in json.loads(r["inputs"])),
            outputs=tuple(TxOutput(a, int(v), n) for a, v, n in json.loads(r["outputs"])),
            fee=int(r["fee_units"]),
            asset=r["asset"],
            decimals=r["decimals"],
            is_coinbase=bool(r["is_coinbase"]),
        )

    def tx_status(self, chain: str, txid: str) -> str | None:
        """Stored status of a tx (mempool | confirmed | orphaned | replaced), or None when unknown."""
        r = self._db.execute("select status from transactions where chain = ? and txid = ?", [chain, txid]).fetchone()
        return r[0] if r else None

    def set_tx_status(self, chain: str, txid: str, status: str, *, now: int) -> None:
        """Mark a tx and its flows (e.g. `replaced`, `orphaned`, or `mempool` after a reorg)."""
        self._db.execute(
            "update transactions set status = ?, updated_at = ? where chain = ? and txid = ?", [status, now, chain, txid]
        )
        self._db.execute("update flows set status = ?, updated_at = ? where chain = ? and txid = ?", [status, now, chain, txid])

    def save_flow(self, flow: EntityFlow, *, now: int, status: str | None = None) -> bool:
        """Insert or update an entity flow and its destinations. True when it was new."""
        old = self._db.execute(
            "select first_seen from flows where chain = ? and txid = ? and entity = ?", [flow.chain, flow.txid, flow.entity]
        ).fetchone()
        self._db["flows"].upsert(
            {
                "chain": flow.chain,
                "txid": flow.txid,
                "entity": flow.entity,
                "asset": flow.asset,
                "decimals": flow.decimals,
                "block_height": flow.block_height,
                "block_time": flow.block_time,
                "spent_units": str(flow.spent),
                "change_units": str(flow.change),
                "received_units": str(flow.received),
                "fee_share_units": str(flow.fee_share),
                "out_units": str(flow.out),
                "direction": flow.direction,
                "status": status or ("confirmed" if flow.is_confirmed else "mempool"),
                "first_seen": old[0] if old else now,
                "updated_at": now,
            },
            pk=("chain", "txid", "entity"),
        )
        self._db.execute(
            "delete from destinations where chain = ? and txid = ? and entity = ?", [flow.chain, flow.txid, flow.entity]
        )
        self._db["destinations"].insert_all(
            (
                {
                    "chain": flow.chain,
                    "txid": flow.txid,
                    "entity": flow.entity,
                    "n": d.n,
                    "address": d.address,
                    "value_units": str(d.value),
                    "attribution": str(d.attribution),
                    "path": json.dumps(list(d.attribution.path)),
                    "shares": shares_json(d.shares),
                }
                for d in flow.destinations
            ),
            pk=("chain", "txid", "entity", "n"),
            replace=True,
        )
        return old is None

    def get_flow(self, chain: str, txid: str, entity: str) -> EntityFlow | None:
        """A stored flow with its destinations, or None."""
        rows = self._rows("select * from flows where chain = ? and txid = ? and entity = ?", [chain, txid, entity])
        return self._flow_from_row(rows[0]) if rows else None

    def flows_of_tx(self, chain: str, txid: str) -> list[EntityFlow]:
        """Every stored entity flow of one tx."""
        return [self._flow_from_row(r) for r in self._rows("select * from flows where chain = ? and txid = ?", [chain, txid])]

    def _flow_from_row(self, r: dict[str, Any]) -> EntityFlow:
        dests = []
        for d in self._rows(
            "select * from destinations where chain = ? and txid = ? and entity = ? order by n",
            [r["chain"], r["txid"], r["entity"]],
        ):
            att = Attribution.parse(d["attribution"])
            path = tuple(json.loads(d["path"] or "[]"))
            dests.append(
                Destination(
                    d["address"],
                    int(d["value_units"]),
                    d["n"],
                    Attribution(att.kind, att.name, path),
                    shares_from_json(d.get("shares")),
                )
            )
        return EntityFlow(
            chain=r["chain"],
            txid=r["txid"],
            entity=r["entity"],
            block_height=r["block_height"],
            block_time=r["block_time"],
            spent=int(r["spent_units"]),
            change=int(r["change_units"]),
            received=int(r["received_units"]),
            fee_share=int(r["fee_share_units"]),
            out=int(r["out_units"]),
            destinations=tuple(dests),
            asset=r["asset"],
            decimals=r["decimals"],
        )

    # --- classifications and events -------------------------------------------------------------

    @staticmethod
    def _cls_from_row(r: dict[str, Any]) -> Classification:
        return Classification(
            chain=r["chain"],
            txid=r["txid"],
            entity=r["entity"],
            verdict=r["verdict"],
            severity=r["severity"],
            reasons=tuple(json.loads(r["reasons"])),
            out=int(r["out_units"]),
            asset=r["asset"],
            usd_value=r["usd_value"],
            btc_usd=r["btc_usd"],
            hashprice_usd=r["hashprice_usd"],
            attribution=r["attribution"] or "",
            facts=tuple(FactUsed(**f) for f in json.loads(r.get("facts") or "[]")),
            version=r["version"],
            status=r["status"],
            created_at=r["created_at"],
            id=r["id"],
        )

    def latest_classification(self, chain: str, txid: str, entity: str) -> Classification | None:
        """The newest classification of a flow (active, or retracted), or None."""
        rows = self._rows(
            "select * from classifications where chain = ? and txid = ? and entity = ? order by version desc limit 1",
            [chain, txid, entity],
        )
        return self._cls_from_row(rows[0]) if rows else None

    def classification_by_id(self, cid: int) -> Classification | None:
        """One classification row by id."""
        rows = self._rows("select * from classifications where id = ?", [cid])
        return self._cls_from_row(rows[0]) if rows else None

    def classification_context(self, cid: int) -> dict[str, Any]:
        """The market context stored with a classification."""
        row = self._db.execute("select context from classifications where id = ?", [cid]).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def save_classification(
        self, c: Classification, *, context: dict[str, Any], now: int
    ) -> tuple[Classification, Classification | None]:
        """Store `c` as the flow's active classification, versioned.

        Returns (stored, previous). When the newest stored classification is active and has the same
        verdict, severity and attribution, nothing is written and (that one, that one) is returned, so
        re-processing a tick is harmless. Otherwise the previous one (if any) is marked superseded, a
        new row with version + 1 is added, and an event is recorded.
        """
        prev = self.latest_classification(c.chain, c.txid, c.entity)
        if (
            prev is not None
            and prev.status == "active"
            and (prev.verdict, prev.severity, prev.attribution) == (c.verdict, c.severity, c.attribution)
        ):
            return prev, prev
        if prev is not None and prev.status == "active":
            self._db.execute("update classifications set status = 'superseded' where id = ?", [prev.id])
        version = (prev.version + 1) if prev is not None else 1
        row = {
            "chain": c.chain,
            "txid": c.txid,
            "entity": c.entity,
            "version": version,
            "verdict": c.verdict,
            "severity": c.severity,
            "reasons": json.dumps(list(c.reasons), ensure_ascii=False),
            "out_units": str(c.out),
            "asset": c.asset,
            "usd_value": c.usd_value,
            "btc_usd": c.btc_usd,
            "hashprice_usd": c.hashprice_usd,
            "attribution": c.attribution,
            "facts": json.dumps([asdict(f) for f in c.facts], ensure_ascii=False),
            "context": json.dumps(context, sort_keys=True),
            "status": "active",
            "created_at": now,
        }
        cid = self._db["classifications"].insert(row).last_pk
        stored = self.classification_by_id(cid)
        assert stored is not None
        self.add_event("classification" if prev is None else "update", cid, now=now)
        return stored, prev

    def retract(self, chain: str, txid: str, *, now: int) -> list[Classification]:
        """Mark the active classifications of a tx retracted (replaced or orphaned); returns them."""
        rows = self._rows("select * from classifications where chain = ? and txid = ? and status = 'active'", [chain, txid])
        out = []
        for r in rows:
            self._db.execute("update classifications set status = 'retracted' where id = ?", [r["id"]])
            self.add_event("retraction", r["id"], now=now)
            out.append(self._cls_from_row({**r, "status": "retracted"}))
        return out

    def add_event(self, kind: str, classification_id: int, *, now: int) -> int:
        """Append an event (classification | update | retraction); returns its id."""
        return self._db["events"].insert({"kind": kind, "classification_id": classification_id, "created_at": now}).last_pk

    def outflow_history(self, entity: str, *, since: int, before: tuple[int, str]) -> list[dict[str, Any]]:
        """An entity's earlier outflows with their active classification, oldest first.

        Only flows at (time, txid) before `before` and at or after `since`; time is the block time, or
        the time first seen while unconfirmed. Retracted classifications are left out.
        """
        at = "coalesce(f.block_time, f.first_seen)"
        return self._rows(
            f"""select {at} as at, f.txid, f.out_units, c.verdict, c.usd_value from flows f
                join classifications c on c.chain = f.chain and c.txid = f.txid and c.entity = f.entity
                     and c.status = 'active'
                where f.entity = ? and f.direction = 'out' and f.status in ('confirmed', 'mempool')
                  and {at} >= ? and ({at} < ? or ({at} = ? and f.txid < ?))
                order by {at}, f.txid""",
            [entity, since, before[0], before[0], before[1]],
        )

    def flow_totals(self, entity: str, *, asset: str, since: int, before: tuple[int, str]) -> tuple[int, int]:
        """(received, left) base units of an entity's flows in one asset from `since` up to `before`.

        `left` is what its inputs spent minus what came back as change (fees included). Flows count by
        block time, or first seen while unconfirmed; orphaned and replaced txs are left out.
        """
        at = "coalesce(block_time, first_seen)"
        rows = self._db.execute(
            f"""select received_units, spent_units, change_units from flows
                where entity = ? and asset = ? and status in ('confirmed', 'mempool')
                  and {at} >= ? and ({at} < ? or ({at} = ? and txid < ?))""",
            [entity, asset, since, before[0], before[0], before[1]],
        ).fetchall()
        received = sum(int(r[0]) for r in rows)
        left = sum(int(r[1]) - int(r[2]) for r in rows)
        return received, left

    # --- cursors and snapshots ------------------------------------------------------------------

    def set_cursors(self, cursors: Iterable[Cursor], *, now: int) -> None:
        """Store cursors (call inside the batch that stores the data they cover)."""
        self._db["cursors"].upsert_all(
            ({"source": c.source, "key": c.key, "state": c.state, "updated_at": now} for c in cursors),
            pk=("source", "key"),
        )

    def cursors(self, source: str) -> dict[str, str]:
        """Stored cursor states of a source, by key."""
        return {r["key"]: r["state"] for r in self._rows("select key, state from cursors where source = ?", [source])}

    def save_snapshots(self, snapshots: Iterable[BalanceSnapshot]) -> None:
        """Record address balances as a source reported them."""
        self._db["balance_snapshots"].upsert_all(
            (
                {
                    "chain": s.chain,
                    "address": s.address,
                    "at": s.at,
                    "asset": s.asset,
                    "confirmed_units": str(s.confirmed),
                    "mempool_delta_units": str(s.mempool_delta),
                    "tx_count": s.tx_count,
                }
                for s in snapshots
            ),
            pk=("chain", "address", "asset", "at"),
        )

    def latest_balances(self) -> dict[tuple[str, str, str], int]:
        """Latest confirmed balance per (chain, address, asset)."""
        sql = """
            select s.chain, s.address, s.asset, s.confirmed_units from balance_snapshots s
            join (select chain, address, asset, max(at) as at from balance_snapshots group by chain, address, asset) m
              on s.chain = m.chain and s.address = m.address and s.asset = m.asset and s.at = m.at
        """
        return {(r["chain"], r["address"], r["asset"]): int(r["confirmed_units"]) for r in self._rows(sql)}

    # --- helpers --------------------------------------------------------------------------------

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self._db.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts (for storage.reads)."""
        return self._rows(sql, params)


class AsyncStore:
    """Runs Store calls on one dedicated thread so the event loop never waits on disk."""

    def __init__(self, store: Store):
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call `fn(store, *args, **kwargs)` on the store thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, self.store, *args, **kwargs))

    async def close(self) -> None:
        """Close the database on its thread and stop the thread."""
        await self.run(Store.close)
        # joining the thread blocks (briefly): do it off the loop
        await asyncio.to_thread(self._executor.shutdown, wait=True)
