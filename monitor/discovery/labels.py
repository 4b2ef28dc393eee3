"""Label files: read CSV / JSON address-label exports into rows (checking and adding is monitor.discovery.addressbook).

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

The import rules (checksums, duplicates, conflicts, rejected addresses, one transaction) are
`monitor.discovery.addressbook`'s: `plan_import` and `apply_import`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.model import MonitorError

__all__ = ["LabelRow", "LabelImportError", "parse_label_file", "parse_label_text"]

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
        raise LabelImportError(
            [f"line 1: no address column in the header {header!r} (expected one of {', '.join(_ALIASES['address'])})"]
        )

    def get(fields: list[str], key: str) -> str:
        return _text(fields[index[key]]) if key in index and index[key] < len(fields) else ""

    out = []
    row = 0
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        row += 1
        out.append(
            LabelRow(
                row, *(get(fields, k) for k in ("address", "label", "entity", "source", "chain", "as_of")), line=reader.line_num
            )
        )
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
    fmt = (
        "json"
        if ext == ".json"
        else "csv"
        if ext in (".csv", ".tsv", ".txt")
        else ("json" if text.lstrip()[:1] in "[{" else "csv")
    )
    return parse_label_text(text, fmt=fmt)
