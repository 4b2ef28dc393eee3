"""Label imports: read CSV / JSON address-label exports, check every row, and add them all or nothing.

Accepted files (the format is chosen by the extension, `.csv` / `.json`, or by the first character):

CSV, with a header row; column names are case-insensitive and these aliases are understood:
    address (addr, wallet, address_id)  required
    label   (name, tag, address_label)  optional, kept as the address's label
    entity  (owner, entity_name)        optional; see below
    source  (source_url, url, reference) optional; the row's source (else --source, else the file name)
    chain   (network, blockchain)       optional; must be "bitcoin" (or btc) when given
    as_of   (date)                      optional ISO date

JSON, one of:
    ["bc1q...", "3J98..."]                                   plain list of addresses
    [{"address": ..., "label": ..., "entity": ..., "source": ...}, ...]   the CSV columns as keys
    [{"address": ..., "chain": "bitcoin",                  Arkham-style address objects (Intel API
      "arkhamEntity": {"name": ..., "type": ...},            `/intelligence/address` answers and exports):
      "arkhamLabel": {"name": ...}}, ...]                     entity name and label are kept in the label
    {"addresses": [...]} / {"data": [...]} / {"results": [...]}   any of the lists above, wrapped
    {"<address>": {...} or "<label>", ...}                   an object keyed by address

Rules:
- Every address is checked (checksum, format, network) with `watchers.addresses.validate_address`
  against the configured network and stored in canonical form. Any invalid row fails the whole import;
  every problem is reported with its row number (row 1 = the first data row; CSV rows also give the line).
- Duplicates (the same address twice for the same entity in the file, or already known for the entity)
  are reported and skipped.
- Conflicts (one address, two entities: two rows naming different entities, or an address that config,
  the bundled registry, a learned address or a candidate already gives to another entity) are reported;
  they fail the import unless `skip_conflicts` is set, in which case only the conflicting rows are left out.
- An address a user rejected earlier is reported and skipped (`entities add` re-adds it on purpose).
- With `entity` given every row goes to it (a row's own entity column is kept in its label, because
  label exports name companies their own way: "Marathon Digital" for MARA); without it, each row's
  entity column must name a registry entity.
- Writing is one storage transaction: all new rows (learned_by "import", status active, with source,
  label and an evidence row naming file and row) or none.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.clock import iso
from monitor.model import EntityAddress, MonitorError
from monitor.core.registry import Registry, normalise_address
from storage import Store
from storage.discovery import Evidence, add_evidence, address_row
from watchers.addresses import InvalidAddress, validate_address

__all__ = [
    "LabelRow",
    "ImportPlan",
    "LabelImportError",
    "parse_label_file",
    "parse_label_text",
    "plan_import",
    "apply_import",
    "check_new_address",
]

_ALIASES = {
    "address": ("address", "addr", "wallet", "address_id", "wallet_address"),
    "label": ("label", "name", "tag", "address_label", "labels"),
    "entity": ("entity", "owner", "entity_name"),
    "source": ("source", "source_url", "url", "reference"),
    "chain": ("chain", "network", "blockchain"),
    "as_of": ("as_of", "date", "asof"),
}
_BITCOIN_NAMES = {"bitcoin", "btc", ""}
_WRAPPERS = ("addresses", "data", "results", "items", "labels")
#: Problems listed at most (a file of 100,000 bad rows must not print 100,000 lines).
MAX_PROBLEMS = 50


class LabelImportError(MonitorError):
    """The file cannot be imported; `problems` lists every finding, each naming its row."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = self.problems[:MAX_PROBLEMS]
        more = len(self.problems) - len(shown)
        super().__init__("\n".join(shown + ([f"... and {more} more"] if more > 0 else [])))


@dataclass(frozen=True)
class LabelRow:
    """One address read from a file, before checking."""

    row: int  # 1 = first data row / list item
    address: str
    label: str = ""
    entity: str = ""
    source: str = ""
    chain: str = ""
    as_of: str = ""
    line: int | None = None  # CSV line (the header is line 1)

    @property
    def where(self) -> str:
        return f"row {self.row}" + (f" (line {self.line})" if self.line is not None else "")


@dataclass(frozen=True)
class ImportPlan:
    """What an import would do: the addresses to add per entity and everything reported about the rest."""

    file: str
    to_add: tuple[tuple[str, EntityAddress, int], ...] = ()  # (entity, address, row)
    duplicates: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.errors


# --- reading ----------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _csv_rows(text: str) -> list[LabelRow]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise LabelImportError(["the file is empty"]) from None
    cols = {h.strip().lower().lstrip("\ufeff"): i for i, h in enumerate(header)}
    index: dict[str, int] = {}
    for key, names in _ALIASES.items():
        for n in names:
            if n in cols:
                index[key] = cols[n]
                break
    if "address" not in index:
        raise LabelImportError([f"line 1: no address column in the header {header!r} (expected one of "
                                f"{', '.join(_ALIASES['address'])})"])
    def get(fields: list[str], key: str) -> str:
        return _text(fields[index[key]]) if key in index and index[key] < len(fields) else ""

    out = []
    row = 0
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        row += 1
        out.append(LabelRow(row, *(get(fields, k) for k in ("address", "label", "entity", "source", "chain", "as_of")),
                            line=reader.line_num))
    return out


def _name_of(value: Any) -> str:
    if isinstance(value, dict):
        return _text(value.get("name"))
    if isinstance(value, list):
        return "; ".join(n for n in (_name_of(v) for v in value) if n)
    return _text(value)


def _json_item(i: int, item: Any, key: str | None = None) -> LabelRow | str:
    if isinstance(item, str) and key is None:
        return LabelRow(i, item.strip())
    if isinstance(item, str):
        return LabelRow(i, key, label=item.strip())
    if not isinstance(item, dict):
        return f"row {i}: expected an address string or an object, got {type(item).__name__}"
    d = {k.lower() if isinstance(k, str) else k: v for k, v in item.items()}
    address = _text(d.get("address") or d.get("addr") or d.get("wallet") or key)
    if isinstance(item.get("address"), dict):  # Arkham transfer-style {"address": {"address": ...}}
        address = _text(item["address"].get("address"))
    ark_entity = _name_of(item.get("arkhamEntity"))
    ark_label = _name_of(item.get("arkhamLabel"))
    label = _text(d.get("label") if not isinstance(d.get("label"), (dict, list)) else _name_of(d.get("label")))
    if ark_entity or ark_label:
        label = " — ".join(x for x in (f"Arkham: {ark_entity}" if ark_entity else "", ark_label, label) if x)
    entity = _text(d.get("entity") if not isinstance(d.get("entity"), dict) else _name_of(d.get("entity")))
    return LabelRow(
        i,
        address,
        label=label,
        entity=entity,
        source=_text(d.get("source") or d.get("source_url") or d.get("url")),
        chain=_text(d.get("chain") or d.get("network") or d.get("chaintype")),
        as_of=_text(d.get("as_of") or d.get("date")),
    )


def _json_rows(text: str) -> list[LabelRow]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelImportError([f"not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"]) from exc
    if isinstance(data, dict):
        wrapped = next((data[k] for k in _WRAPPERS if k in data), None)
        if wrapped is not None:
            data = wrapped
    items: list[tuple[Any, str | None]]
    if isinstance(data, list):
        items = [(x, None) for x in data]
    elif isinstance(data, dict) and ("arkhamEntity" in data or "address" in data):
        items = [(data, None)]  # one Arkham address object
    elif isinstance(data, dict):
        items = [(v, k) for k, v in data.items()]
    else:
        raise LabelImportError([f"expected a list of addresses or an object, got {type(data).__name__}"])
    rows, problems = [], []
    for i, (item, key) in enumerate(items, 1):
        r = _json_item(i, item, key)
        (problems if isinstance(r, str) else rows).append(r)
    if problems:
        raise LabelImportError(problems)
    return rows


def parse_label_text(text: str, *, fmt: str) -> list[LabelRow]:
    """Rows of a CSV (`fmt="csv"`) or JSON (`fmt="json"`) label export.

    :raises LabelImportError: when the file's shape is wrong (every problem, with its row).
    """
    if fmt == "csv":
        return _csv_rows(text)
    if fmt == "json":
        return _json_rows(text)
    raise ValueError(f"unknown label format {fmt!r}")


def parse_label_file(path: str | Path) -> list[LabelRow]:
    """Rows of a label file; CSV or JSON by extension, else by its first character.

    :raises LabelImportError: unreadable file or wrong shape.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelImportError([f"cannot read {p}: {exc}"]) from exc
    ext = p.suffix.lower()
    fmt = "json" if ext == ".json" else "csv" if ext in (".csv", ".tsv", ".txt") else (
        "json" if text.lstrip()[:1] in "[{" else "csv")
    return parse_label_text(text, fmt=fmt)


# --- checking ---------------------------------------------------------------------------------------


def check_new_address(store: Store, registry: Registry, entity: str, chain: str, address: str) -> str | None:
    """Why `address` cannot be given to `entity` (another owner in config, bundled data or storage), or None."""
    owner = registry.entity_of(chain, address)
    if owner is not None and owner.name != entity:
        rec = registry.address_record(chain, address)
        how = f" ({rec.learned_by}: {rec.source})" if rec is not None else ""
        return f"already belongs to {owner.name!r}{how}"
    row = address_row(store, chain, address)
    if row is not None and row["entity"] != entity and row["status"] != "rejected":
        return f"already belongs to {row['entity']!r} ({row['status']}, {row['learned_by']}: {row['source']})"
    return None


def plan_import(
    rows: Iterable[LabelRow],
    *,
    registry: Registry,
    store: Store,
    network: str,
    entity: str | None,
    source: str | None,
    file: str,
    skip_conflicts: bool = False,
) -> ImportPlan:
    """Check every row and decide what to add (nothing is written). See the module docstring for the rules."""
    errors: list[str] = []
    if entity is not None and entity not in registry:
        errors.append(f"--entity {entity!r} is not a known entity (add it to config.toml first)")
    first: dict[str, tuple[str, LabelRow]] = {}  # canonical address → (entity, first row)
    to_add: list[tuple[str, EntityAddress, int]] = []
    dups: list[str] = []
    conflicts: list[str] = []
    rejected: list[str] = []
    conflicting: set[str] = set()
    for r in rows:
        if not r.address:
            errors.append(f"{r.where}: no address")
            continue
        if r.chain.lower() not in _BITCOIN_NAMES:
            errors.append(f"{r.where}: chain {r.chain!r} is not supported by import (bitcoin only)")
            continue
        try:
            canonical = validate_address(r.address, network).address
        except InvalidAddress as exc:
            errors.append(f"{r.where}: {r.address!r} is not a valid {network} Bitcoin address ({exc})")
            continue
        if r.as_of and len(r.as_of) >= 10 and r.as_of[4] == "-":
            as_of = r.as_of[:10]
        elif r.as_of:
            errors.append(f"{r.where}: as_of {r.as_of!r} is not an ISO date (YYYY-MM-DD)")
            continue
        else:
            as_of = ""
        target = entity
        if target is None:
            if not r.entity:
                errors.append(f"{r.where}: no entity column value and no --entity given")
                continue
            if r.entity not in registry:
                errors.append(f"{r.where}: entity {r.entity!r} is not a known entity")
                continue
            target = r.entity
        key = normalise_address("bitcoin", canonical)
        if key in first:
            prev_entity, prev = first[key]
            claimed = r.entity or target
            prev_claimed = prev.entity or prev_entity
            if claimed != prev_claimed:
                conflicts.append(f"{r.where}: {canonical} is given to {claimed!r} here and to {prev_claimed!r} at {prev.where}")
                conflicting.add(key)
            else:
                dups.append(f"{r.where}: {canonical} repeats {prev.where} (skipped)")
            continue
        first[key] = (target, r)
        why = check_new_address(store, registry, target, "bitcoin", canonical)
        if why is not None:
            conflicts.append(f"{r.where}: {canonical} {why}")
            conflicting.add(key)
            continue
        row = address_row(store, "bitcoin", canonical)
        known = registry.entity_of("bitcoin", canonical)
        if row is not None and row["status"] == "rejected":
            rejected.append(f"{r.where}: {canonical} was rejected for {row['entity']!r} earlier (skipped; "
                            "`entities add` re-adds it on purpose)")
            continue
        if (row is not None and row["status"] == "active") or (known is not None and known.name == target):
            how = row["learned_by"] if row is not None else "config"
            dups.append(f"{r.where}: {canonical} is already {target}'s ({how}; skipped)")
            continue
        label = r.label
        if entity is not None and r.entity and r.entity != entity:
            label = f"{label} (file entity: {r.entity})" if label else f"file entity: {r.entity}"
        src = r.source or source or f"label file {Path(file).name}"
        to_add.append((target, EntityAddress("bitcoin", canonical, source=src, learned_by="import", label=label,
                                             as_of=as_of, evidence=f"{Path(file).name} {r.where}"), r.row))
    if conflicts and not skip_conflicts:
        errors.append(f"{len(conflicts)} conflict(s): nothing imported (use --skip-conflicts to import the rest)")
    # A conflict found later in the file also removes the first row of that address.
    to_add = [t for t in to_add if normalise_address("bitcoin", t[1].address) not in conflicting]
    return ImportPlan(file, tuple(to_add), tuple(dups), tuple(conflicts), tuple(rejected), tuple(errors))


def apply_import(store: Store, plan: ImportPlan, *, now: int) -> int:
    """Write a checked plan in one transaction; returns how many addresses were added.

    :raises LabelImportError: when the plan has errors (nothing is written).
    """
    if not plan.ok:
        raise LabelImportError(list(plan.errors) + list(plan.conflicts))
    added = 0
    with store.batch():
        for entity, a, row in plan.to_add:
            # A candidate row of the same entity becomes an imported, active address.
            existing = address_row(store, a.chain, a.address)
            if existing is not None:
                store.db["addresses"].update(
                    (a.chain, a.address),
                    {"status": "active", "learned_by": "import", "source": a.source, "label": a.label,
                     "as_of": a.as_of, "evidence": a.evidence},
                )
            else:
                store.add_addresses(entity, [a], now=now)
            add_evidence(store, [Evidence(a.chain, a.address, entity, "import",
                                          detail={"file": plan.file, "row": row, "source": a.source,
                                                  "imported_at": iso(now)})], now=now)
            added += 1
    return added
