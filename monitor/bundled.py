"""The bundled, sourced data: entity registry, checked addresses, and shared market constants.

`monitor/data/registry.toml` describes the entities (miners, sovereigns, pools, and the exchanges, OTC
desks and custodians sales go through) with profile facts that each carry a source and an as-of date.
`monitor/data/addresses.csv` is a verbatim copy of the checked, sourced address list (see
`monitor/data/README.md`); its rows are attached to entities by the `entity` column. Every address is
validated when loaded and a bad one stops the load: the bundled data is ours, so an error in it is a bug
to fix, never something to skip. `addresses_unverified.csv` is never loaded as entity addresses; it is
available only as `UnverifiedHint`s, which must never be alerted on.

The market constants below (CoinShares' sector cash cost and hashprice range, scenario prices, ASIC
efficiencies) are quoted from the project's sourced economics notes and the ChainCatcher article of
2026-04-03, each with the original source those documents give (listed in `monitor/data/README.md`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import tomllib
from dataclasses import dataclass
from importlib import resources

from monitor.model import ENTITY_KINDS, Entity, EntityAddress, Fact, Profile
from watchers.addresses import InvalidAddress, validate_address

__all__ = [
    "SECTOR_CASH_COST",
    "HASHPRICE_Q4_2025",
    "HASHPRICE_Q1_2026",
    "ALL_TIME_HIGH_USD",
    "ScenarioPrice",
    "SCENARIO_PRICES",
    "ASIC_EFFICIENCIES",
    "UnverifiedHint",
    "CSV_COLUMNS",
    "load_bundled_entities",
    "load_unverified_hints",
    "parse_registry",
    "parse_unverified",
    "is_sector_default",
    "short_source",
]

_COINSHARES_Q1_2026 = (
    "CoinShares Q1-2026 mining report (via tokenpost.com/news/insights/19340; "
    "t.signalplus.com/crypto-news/detail/bitcoin-mining-unprofitable-hashprice-5yr-low)"
)

#: Weighted average cash cost per BTC of listed miners, Q4 2025: the stand-in for miners with no own figure.
SECTOR_CASH_COST = Fact(
    79_995.0,
    _COINSHARES_Q1_2026,
    "2025-12-31",
    note="sector weighted average of listed miners (Q4 2025), not a company's own cost",
    quote="Weighted average cash cost per BTC, listed miners | $79,995 | Q4 2025 (economics.md §1); "
    "'the weighted average cash cost for publicly listed mining companies to mine one BTC is approximately "
    "$79,995' (ChainCatcher 2026-04-03)",
)

#: Hashprice ranges CoinShares reported, USD per PH/s per day (low, high).
HASHPRICE_Q4_2025 = (
    Fact(36.0, _COINSHARES_Q1_2026, "2025-12-31", note="Q4 2025 range, low end"),
    Fact(38.0, _COINSHARES_Q1_2026, "2025-12-31", note="Q4 2025 range, high end"),
)
HASHPRICE_Q1_2026 = (
    Fact(28.0, _COINSHARES_Q1_2026, "2026-03-31", note="Q1 2026 range ('early March'), low end"),
    Fact(30.0, _COINSHARES_Q1_2026, "2026-03-31", note="Q1 2026 range ('early March'), high end"),
)

#: BTC peak of the cycle: "~$124,500 (Oct 2025) -> ~$86,000 (Dec 2025)".
ALL_TIME_HIGH_USD = Fact(
    124_500.0,
    "CoinShares Q1-2026 mining report, BTC price path (via tokenpost.com/news/insights/19340; t.signalplus.com)",
    "2025-10-31",
    note="approximate, month-level (October 2025)",
)

_CHAINCATCHER = "CoinShares scenarios, quoted by ChainCatcher 'Bitcoin mining companies' Nth exodus' (2026-04-03)"


@dataclass(frozen=True)
class ScenarioPrice:
    """A named BTC price scenario and, when the source gave one, its quoted hashprice."""

    label: str
    price: Fact
    quoted_hashprice: Fact | None = None


_BELOW_COST = (
    "scenario case chosen below CoinShares' weighted average cash cost of listed miners ($79,995, Q4 2025); "
    "ChainCatcher 2026-04-03 puts the March 2026 price at $68,000-70,000"
)
#: Default scenarios of `treasury-monitor scenarios` (the CLI adds "today" from the price source): CoinShares'
#: cases, three below the sector's cash cost, and the all-time high.
SCENARIO_PRICES: tuple[ScenarioPrice, ...] = (
    ScenarioPrice(
        "CoinShares rebound: $100k by end-2026",
        Fact(100_000.0, _CHAINCATCHER, "2026-04-03"),
        Fact(37.0, _CHAINCATCHER, "2026-04-03", note="secondary: the primary report text was not found"),
    ),
    ScenarioPrice(
        "CoinShares stress: below $80k",
        Fact(80_000.0, _CHAINCATCHER, "2026-04-03", note="'high-cost miners will accelerate their exit'"),
    ),
    *(
        ScenarioPrice(
            f"below cost: ${p // 1000}k",
            Fact(
                float(p),
                _BELOW_COST,
                "2025-12-31",
                note="a chosen case below the $79,995 sector cash cost (Q4 2025), not a forecast",
            ),
        )
        for p in (75_000, 70_000, 65_000)
    ),
    ScenarioPrice(
        "all-time high (Oct 2025)",
        ALL_TIME_HIGH_USD,
        Fact(59.0, _CHAINCATCHER, "2026-04-03", note="CoinShares' 'new highs' case; secondary"),
    ),
)

_ECON = "economics.md §3"
#: Fleet and machine efficiencies (J/TH) for breakeven tables, with their sources.
ASIC_EFFICIENCIES: tuple[tuple[str, Fact], ...] = (
    ("Antminer S21 XP", Fact(13.5, "btcminermarketplace.com/how-to-calculate-roi-for-bitcoin-miner-s21-xp", "2026-11-25")),
    ("Antminer S21+ Hydro", Fact(15.0, "top-crypto-mining-asics.com/?p=4692", "2026-11-25", note="derived: 4,785 W / 319 TH/s")),
    (
        "Antminer S21",
        Fact(16.0, "btccontract.de/s/en/Antminer+S21+Profitability/10624", "2026-11-25", note="derived: ~3,200 W / ~200 TH/s"),
    ),
    (
        "MARA fleet (end-2024)",
        Fact(20.0, "exbasi.com/blog/bitcoin-mining-giant-marathon-has-lent-out-730m-in-btc-9095", "2024-12-31"),
    ),
    (
        "Antminer S19 XP",
        Fact(21.5, "miningstore.com (is-the-antminer-s19-xp-worth-it-part-1)", "2026-11-25", note="derived: 3,010 W / 140 TH/s"),
    ),
)

#: Columns of addresses.csv and addresses_unverified.csv, in order.
CSV_COLUMNS = ("address", "chain", "entity", "entity_type", "label", "source_url", "source_note")

# Which registry kinds a CSV `entity_type` may map to (pools are miners in the CSV, "other" here).
_TYPE_KINDS = {
    "exchange": {"exchange"},
    "government": {"sovereign"},
    "sovereign": {"sovereign"},
    "miner": {"miner", "other"},
    "otc": {"otc"},
    "custodian": {"custodian"},
}
_ENTITY_KEYS = {
    "name",
    "kind",
    "watch",
    "note",
    "csv_names",
    "strategy_tags",
    "strategy_source",
    "holdings_btc",
    "monthly_production_btc",
    "cash_cost_usd",
    "efficiency_j_th",
}
_FACT_FIELDS = ("holdings_btc", "monthly_production_btc", "cash_cost_usd", "efficiency_j_th")
_FACT_KEYS = {"value", "source", "as_of", "note", "quote"}
_SECTOR_REF = "sector_cash_cost"


@dataclass(frozen=True)
class UnverifiedHint:
    """An address with a single weak or conflicting source: shown as a hint, never alerted on."""

    chain: str
    address: str
    claimed_entity: str
    label: str
    source: str
    note: str


def short_source(fact: Fact) -> str:
    """The citation part of a fact's source, without the '(via ...)' locator."""
    return fact.source.split(" (via ", 1)[0].strip()


def is_sector_default(fact: Fact | None) -> bool:
    """Whether a cash-cost fact is the sector average standing in for a company's own figure."""
    return fact is not None and fact.source == SECTOR_CASH_COST.source and fact.value == SECTOR_CASH_COST.value


def _fact(where: str, raw: object, problems: list[str]) -> Fact | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a table {{ value, source, as_of }}, got {raw!r}")
        return None
    unknown = set(raw) - _FACT_KEYS
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    value, source, as_of = raw.get("value"), raw.get("source"), raw.get("as_of")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        problems.append(f"{where}.value: expected a non-negative number, got {value!r}")
        return None
    if not isinstance(source, str) or not source.strip():
        problems.append(f"{where}.source: missing")
        return None
    try:
        if not isinstance(as_of, str) or len(as_of) != 10:
            raise ValueError
        _dt.date.fromisoformat(as_of)
    except ValueError:
        problems.append(f"{where}.as_of: expected YYYY-MM-DD, got {as_of!r}")
        return None
    quote = raw.get("quote")
    if not isinstance(quote, str) or not quote.strip():
        problems.append(f"{where}.quote: missing (the source's sentence stating the figure)")
        return None
    return Fact(float(value), source.strip(), as_of, str(raw.get("note", "")), quote.strip())


def _rows(csv_text: str, what: str) -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(csv_text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise ValueError(f"{what}: columns {reader.fieldnames} are not {list(CSV_COLUMNS)}")
    # line_num counts physical lines; quoted fields here never span lines, so it names the row's line.
    return [(reader.line_num, row) for row in reader]


def _checked_address(what: str, line: int, row: dict[str, str]) -> str:
    if row["chain"] != "bitcoin":
        raise ValueError(f"{what} line {line}: no validator for chain {row['chain']!r} ({row['address']})")
    try:
        return validate_address(row["address"], "mainnet").address
    except InvalidAddress as exc:
        raise ValueError(f"{what} line {line}: address {row['address']!r} {exc}") from exc


def parse_registry(toml_text: str, csv_text: str) -> list[Entity]:
    """Entities from registry TOML text and addresses CSV text.

    :raises ValueError: listing every problem (unknown keys, unsourced facts, CSV entities nobody owns),
        or naming the first invalid address with its CSV line.
    """
    doc = tomllib.loads(toml_text)
    problems: list[str] = []
    sources = []
    for i, s in enumerate(doc.get("address_sources", [])):
        if not all(isinstance(s.get(k), str) and s.get(k) for k in ("url_prefix", "name", "as_of")):
            problems.append(f"address_sources[{i}]: needs url_prefix, name and as_of")
            continue
        sources.append(s)

    specs: list[dict] = []
    owner_of_csv_name: dict[str, int] = {}
    for i, raw in enumerate(doc.get("entities", [])):
        where = f"entities[{i}]"
        unknown = set(raw) - _ENTITY_KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        name, kind = raw.get("name"), raw.get("kind")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: missing")
            continue
        if kind not in ENTITY_KINDS:
            problems.append(f"{where} ({name}).kind: {kind!r} is not one of {ENTITY_KINDS}")
        for csv_name in [name, *raw.get("csv_names", [])]:
            if csv_name in owner_of_csv_name and owner_of_csv_name[csv_name] != i:
                problems.append(f"{where} ({name}): CSV entity {csv_name!r} is claimed twice")
            owner_of_csv_name[csv_name] = i
        facts: dict[str, Fact | None] = {}
        earlier: list[tuple[str, Fact]] = []
        for key in _FACT_FIELDS:
            # A figure is one fact table or a dated series of them (an array), oldest or newest first.
            items = raw.get(key, [])
            items = items if isinstance(items, list) else [items]
            points: list[Fact] = []
            for j, item in enumerate(items):
                at = f"{where} ({name}).{key}" + (f"[{j}]" if isinstance(raw.get(key), list) else "")
                point = SECTOR_CASH_COST if key == "cash_cost_usd" and item == _SECTOR_REF else _fact(at, item, problems)
                if point is not None:
                    points.append(point)
            points.sort(key=lambda f: f.as_of)
            dates = [f.as_of for f in points]
            if len(set(dates)) != len(dates):
                problems.append(f"{where} ({name}).{key}: two points share an as_of date {dates}")
            facts[key] = points[-1] if points else None
            earlier += [(key, f) for f in points[:-1]]
        tags = raw.get("strategy_tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            problems.append(f"{where} ({name}).strategy_tags: expected a list of names")
            tags = []
        if tags and not raw.get("strategy_source"):
            problems.append(f"{where} ({name}).strategy_source: tags need a source")
        specs.append({"raw": raw, "facts": facts, "earlier": tuple(earlier), "tags": tuple(tags), "addresses": []})

    by_index = {i: spec for i, spec in enumerate(specs)}
    seen: dict[str, int] = {}
    for line, row in _rows(csv_text, "addresses.csv"):
        idx = owner_of_csv_name.get(row["entity"])
        if idx is None or idx not in by_index:
            problems.append(f"addresses.csv line {line}: entity {row['entity']!r} is not in the registry")
            continue
        spec = by_index[idx]
        allowed = _TYPE_KINDS.get(row["entity_type"], set())
        if spec["raw"].get("kind") not in allowed:
            problems.append(
                f"addresses.csv line {line}: entity_type {row['entity_type']!r} does not fit kind "
                f"{spec['raw'].get('kind')!r} of {spec['raw']['name']!r}"
            )
        src = next((s for s in sources if row["source_url"].startswith(s["url_prefix"])), None)
        if src is None:
            problems.append(f"addresses.csv line {line}: source {row['source_url']!r} is not in address_sources")
            continue
        address = _checked_address("addresses.csv", line, row)
        if address in seen:
            problems.append(f"addresses.csv line {line}: {address} repeats line {seen[address]}")
            continue
        seen[address] = line
        spec["addresses"].append(
            EntityAddress(
                chain=row["chain"],
                address=address,
                source=row["source_url"],
                learned_by="registry",
                label=row["label"],
                as_of=src["as_of"],
                evidence=row["source_note"],
            )
        )
    if problems:
        raise ValueError("bundled registry is invalid:\n" + "\n".join(problems))

    out: list[Entity] = []
    for spec in specs:
        raw, f = spec["raw"], spec["facts"]
        out.append(
            Entity(
                name=raw["name"],
                kind=raw["kind"],
                addresses=tuple(spec["addresses"]),
                profile=Profile(
                    holdings_btc=f["holdings_btc"],
                    monthly_production_btc=f["monthly_production_btc"],
                    cash_cost_usd=f["cash_cost_usd"],
                    efficiency_j_th=f["efficiency_j_th"],
                    strategy_tags=spec["tags"],
                    strategy_source=raw.get("strategy_source", ""),
                    earlier=spec["earlier"],
                ),
                note=raw.get("note", ""),
                watch=bool(raw.get("watch", True)),
            )
        )
    return out


def parse_unverified(csv_text: str) -> list[UnverifiedHint]:
    """Hints from addresses_unverified.csv text; each address is validated like the verified ones.

    :raises ValueError: on a bad column set or an invalid address.
    """
    hints = []
    for line, row in _rows(csv_text, "addresses_unverified.csv"):
        address = _checked_address("addresses_unverified.csv", line, row)
        hints.append(UnverifiedHint(row["chain"], address, row["entity"], row["label"], row["source_url"], row["source_note"]))
    return hints


def _read(name: str) -> str:
    return resources.files("monitor.data").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _bundled() -> tuple[Entity, ...]:
    return tuple(parse_registry(_read("registry.toml"), _read("addresses.csv")))


def load_bundled_entities() -> list[Entity]:
    """The bundled entities with their checked addresses and sourced profiles (parsed once per process).

    :raises ValueError: when the bundled data is invalid (a packaging bug).
    """
    return list(_bundled())


def load_unverified_hints() -> list[UnverifiedHint]:
    """Addresses with weak or conflicting sources: for display as 'unverified' only, never for alerts."""
    return parse_unverified(_read("addresses_unverified.csv"))
