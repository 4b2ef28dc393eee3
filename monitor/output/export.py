"""Export: the stable JSON schema of an entity flow, and streaming JSON / JSONL / CSV writers.

Schema `treasury-monitor.flow/1` (documented in README, checked by tests): one record per entity flow.
Amounts appear twice: `*_units` is the exact integer in base units (satoshis on Bitcoin, wei or token
base units on EVM chains) and `*_amount` the exact decimal string in whole units (BTC, ETH, ...).
Times are ISO 8601 UTC strings. The same record is the body of webhook alerts and of `/api/flows`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from monitor.clock import iso
from monitor.model import format_btc
from storage import Store
from storage.reads import flow_rows

__all__ = [
    "SCHEMA",
    "FLOW_FIELDS",
    "CSV_FIELDS",
    "flow_record",
    "write_json",
    "write_jsonl",
    "write_csv",
    "FORMATS",
    "CLASSIFICATION_FIELDS",
    "classification_record",
    "flow_records",
    "export_flows",
]

SCHEMA = "treasury-monitor.flow/1"

#: Top-level fields of a flow record, in order (README documents each).
FLOW_FIELDS = (
    "schema",
    "chain",
    "txid",
    "entity",
    "entity_kind",
    "direction",
    "status",
    "block_height",
    "block_time",
    "seen_at",
    "asset",
    "decimals",
    "spent_units",
    "spent_amount",
    "change_units",
    "change_amount",
    "received_units",
    "received_amount",
    "fee_share_units",
    "fee_share_amount",
    "out_units",
    "out_amount",
    "destinations",
    "classification",
)
_AMOUNTS = ("spent", "change", "received", "fee_share", "out")

#: CSV has one row per flow; destinations and reasons are flattened into `;`-joined columns.
CSV_FIELDS = tuple(f for f in FLOW_FIELDS if f not in ("destinations", "classification")) + (
    "destinations",
    "verdict",
    "severity",
    "usd_value",
    "reasons",
)


def flow_record(row: dict[str, Any], classification: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export record of one stored flow row (from `storage.reads.flow_rows`)."""
    dec = row["decimals"]
    rec: dict[str, Any] = {
        "schema": SCHEMA,
        "chain": row["chain"],
        "txid": row["txid"],
        "entity": row["entity"],
        "entity_kind": row.get("entity_kind"),
        "direction": row["direction"],
        "status": row["status"],
        "block_height": row["block_height"],
        "block_time": iso(row["block_time"]),
        "seen_at": iso(row["first_seen"]),
        "asset": row["asset"],
        "decimals": dec,
    }
    for k in _AMOUNTS:
        units = int(row[f"{k}_units"])
        rec[f"{k}_units"] = units
        rec[f"{k}_amount"] = format_btc(units, dec)
    rec["destinations"] = [
        {
            "address": d["address"],
            "n": d["n"],
            "value_units": int(d["value_units"]),
            "value_amount": format_btc(int(d["value_units"]), dec),
            "attribution": d["attribution"],
            **({"path": list(d["path"])} if d.get("path") else {}),
            **(
                {"shares": [{**x, "value_amount": format_btc(int(x["value_units"]), dec)} for x in d["shares"]]}
                if d.get("shares")
                else {}
            ),
        }
        for d in row.get("destinations", [])
    ]
    c = classification if classification is not None else row.get("classification")
    rec["classification"] = classification_record(c) if c is not None else None
    return rec


#: Fields of `classification` in a flow record.
CLASSIFICATION_FIELDS = (
    "verdict",
    "severity",
    "reasons",
    "usd_value",
    "btc_usd",
    "hashprice_usd",
    "price_source",
    "price_at",
    "price_stale",
    "attribution",
    "cash_cost_usd",
    "facts",
    "version",
    "status",
    "classified_at",
)


def classification_record(c: dict[str, Any]) -> dict[str, Any]:
    """The `classification` object of a flow record from a stored classification row."""
    ctx = c.get("context") or {}
    facts = c.get("facts") or []
    if isinstance(facts, str):
        facts = json.loads(facts)
    return {
        "verdict": c["verdict"],
        "severity": c["severity"],
        "reasons": list(c["reasons"]),
        "usd_value": c["usd_value"],
        "btc_usd": c["btc_usd"],
        "hashprice_usd": c["hashprice_usd"],
        "price_source": ctx.get("price_source") or None,
        "price_at": iso(ctx.get("price_at")),
        "price_stale": bool(ctx.get("is_price_stale", False)),
        "attribution": c.get("attribution") or None,
        "cash_cost_usd": next((f["value"] for f in facts if f["figure"] == "cash_cost_usd"), None),
        "facts": facts,
        "version": c["version"],
        "status": c["status"],
        "classified_at": iso(c["created_at"]),
    }


def write_json(records: Iterable[dict[str, Any]], out: io.TextIOBase) -> int:
    """Write a JSON array, one record per line, streaming; returns the count."""
    n = 0
    out.write("[")
    for rec in records:
        out.write(("\n" if n == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def write_jsonl(records: Iterable[dict[str, Any]], out: io.TextIOBase) -> int:
    """Write one JSON object per line; returns the count."""
    n = 0
    for rec in records:
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        n += 1
    return n


def _csv_rows(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for rec in records:
        row = {k: rec[k] for k in CSV_FIELDS if k in rec and k != "destinations"}
        row["destinations"] = ";".join(f"{d['address']}={d['value_amount']}@{d['attribution']}" for d in rec["destinations"])
        c = rec.get("classification") or {}
        row["verdict"] = c.get("verdict", "")
        row["severity"] = c.get("severity", "")
        row["usd_value"] = "" if c.get("usd_value") is None else f"{c['usd_value']:.2f}"
        row["reasons"] = " | ".join(c.get("reasons", []))
        yield row


def write_csv(records: Iterable[dict[str, Any]], out: io.TextIOBase) -> int:
    """Write CSV with a header row (`CSV_FIELDS`); returns the count."""
    w = csv.DictWriter(out, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    w.writeheader()
    n = 0
    for row in _csv_rows(records):
        w.writerow(row)
        n += 1
    return n


FORMATS = {"json": write_json, "jsonl": write_jsonl, "csv": write_csv}


def flow_records(store: Store, **filters: Any) -> Iterator[dict[str, Any]]:
    """Export records of stored flows, oldest first (filters as `storage.reads.flow_rows`)."""
    for row in flow_rows(store, **filters):
        yield flow_record(row)


def export_flows(db: str | Path, out: io.TextIOBase, *, fmt: str = "json", **filters: Any) -> int:
    """Stream stored flows from the database at `db` to `out` in `fmt`; returns the record count."""
    store = Store(db)
    try:
        return FORMATS[fmt](flow_records(store, **filters), out)
    finally:
        store.close()
