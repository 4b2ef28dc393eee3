"""The bundled registry: sourced facts, checked addresses, honest gaps, and a loud failure on bad data."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from importlib import resources

import pytest

from monitor.bundled import (
    SCENARIO_PRICES,
    SECTOR_CASH_COST,
    is_sector_default,
    load_bundled_entities,
    load_unverified_hints,
    parse_registry,
    short_source,
)
from monitor.core.registry import Registry
from watchers.addresses import validate_address

# The copies must stay verbatim copies of shared/data (hashes recorded in monitor/data/README.md).
SHA256 = {
    "addresses.csv": "c13af132f9676dfebe8230ba78fd1d75d930799e5a7fef94c78176abde3f609c",
    "addresses_unverified.csv": "fc450cc4d9bf29f4cddec38615b2a9ba2e0e10bc17888029820285d060ca2865",
}
MINERS = ["MARA", "Riot", "CleanSpark", "Core Scientific", "Bitdeer", "Cango", "HIVE", "Hut 8", "Cipher", "TeraWulf", "IREN"]
SOVEREIGNS = ["Bhutan", "US Government", "United Kingdom", "El Salvador", "Germany (BKA)"]
COUNTERPARTIES = {
    "QCP Capital": "otc",
    "Cumberland DRW": "otc",
    "Flow Traders": "otc",
    "Coinbase Prime": "custodian",
    "Cobo": "custodian",
    "BitGo": "custodian",
    "Binance": "exchange",
    "Kraken": "exchange",
    "Coinbase": "exchange",
    "OKX": "exchange",
}


def read(name: str) -> str:
    return resources.files("monitor.data").joinpath(name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def entities():
    return {e.name: e for e in load_bundled_entities()}


def test_copies_are_verbatim():
    for name, digest in SHA256.items():
        assert hashlib.sha256(resources.files("monitor.data").joinpath(name).read_bytes()).hexdigest() == digest


def test_the_sell_off_cast_is_present(entities):
    for n in MINERS:
        assert entities[n].kind == "miner" and entities[n].watch
    for n in SOVEREIGNS:
        assert entities[n].kind == "sovereign" and entities[n].watch
    for n, kind in COUNTERPARTIES.items():
        assert entities[n].kind == kind and not entities[n].watch
    registry = Registry(entities.values())
    assert {e.name for e in registry.tracked()} == set(MINERS) | set(SOVEREIGNS)


def test_every_csv_row_is_loaded_with_its_source(entities):
    rows = list(csv.DictReader(io.StringIO(read("addresses.csv"))))
    loaded = {(a.address, e.name): a for e in entities.values() for a in e.addresses}
    assert len(loaded) == len(rows) == 1021
    for a in (a for e in entities.values() for a in e.addresses):
        assert validate_address(a.address).address == a.address
        assert a.source.startswith("https://") and a.learned_by == "registry"
        dt.date.fromisoformat(a.as_of)
    registry = Registry(entities.values())
    assert registry.entity_of("bitcoin", "32ixEdVJWo3kmvJGMTZq5jAQVZZeuwnqzo").name == "El Salvador"
    assert registry.entity_of("bitcoin", "1PJiGp2yDLvUgqeBsuZVCBADArNsk6XEiw").name == "Binance"
    assert registry.address_record("bitcoin", "bc1q0unygz3ddt8x0v33s6ztxkrnw0s0tl7zk4yxwd").as_of == "2024-06-19"


def test_no_invented_treasury_addresses(entities):
    # Known gaps (shared/data/README.md): no public treasury address for these; they say so.
    for n in MINERS + ["Bhutan", "United Kingdom"]:
        assert entities[n].addresses == ()
        assert "no public" in entities[n].note.lower()


def test_pools_are_separate_unwatched_entities(entities):
    for n, count in [("MARA Pool", 2), ("Foundry USA Pool", 4), ("Luxor Pool", 3)]:
        e = entities[n]
        assert (e.kind, e.watch, len(e.addresses)) == ("other", False, count)
        assert all("POOL address, not a company treasury" in a.label for a in e.addresses)
        assert "not" in e.note and "treasury" in e.note


def test_unverified_addresses_are_hints_only(entities):
    hints = load_unverified_hints()
    assert len(hints) == 6
    owned = {a.address for e in entities.values() for a in e.addresses}
    assert not owned & {h.address for h in hints}


def test_every_fact_is_sourced_and_dated(entities):
    n_facts = 0
    for e in entities.values():
        p = e.profile
        for fact in (p.holdings_btc, p.monthly_production_btc, p.cash_cost_usd, p.efficiency_j_th):
            if fact is None:
                continue
            n_facts += 1
            assert fact.source and short_source(fact)
            dt.date.fromisoformat(fact.as_of)
        if p.strategy_tags:
            assert p.strategy_source
    assert n_facts >= 30


def test_seed_figures(entities):
    # economics.md §4 and ChainCatcher 2026-04-03.
    mara = entities["MARA"].profile
    assert mara.monthly_production_btc.value == 736 and mara.monthly_production_btc.as_of == "2025-09-30"
    assert set(mara.strategy_tags) == {"convertible_repurchase", "dual_track"}
    assert "convertible bonds" in mara.strategy_source
    assert entities["Cango"].profile.cash_cost_usd.value == 70_602
    assert entities["Cango"].profile.holdings_btc.value == 7474.67
    assert entities["Bhutan"].profile.holdings_btc.value == 5400
    assert entities["HIVE"].profile.holdings_btc is None and entities["HIVE"].profile.monthly_production_btc is None
    # The article's three paths, each its own tag: stick to mining / walk on two legs / complete shift to AI.
    for names, tag in (
        (["CleanSpark", "HIVE"], "mining_focus"),
        (["MARA", "IREN", "Riot"], "dual_track"),
        (["Core Scientific", "TeraWulf", "Cipher"], "ai_shift"),
    ):
        for n in names:
            assert tag in entities[n].profile.strategy_tags, (n, tag)
    assert "ai_hpc_pivot" in entities["Hut 8"].profile.strategy_tags  # AI/HPC contracts, no path named


def _grouped(value: float) -> set[str]:
    whole = f"{value:,.0f}" if float(value).is_integer() else f"{value:,}".rstrip("0")
    forms = {whole, whole.replace(",", " "), f"{value:g}"}
    if value >= 1000 and value % 1000 == 0:
        forms.add(f"{value / 1000:g}k")  # "~$81k"
    return forms


def test_every_bundled_point_is_dated_sourced_and_quotes_its_figure(entities):
    points = 0
    for e in entities.values():
        for figure in ("holdings_btc", "monthly_production_btc", "cash_cost_usd", "efficiency_j_th"):
            series = e.profile.series(figure)
            assert len({f.as_of for f in series}) == len(series), (e.name, figure)
            for f in series:
                points += 1
                dt.date.fromisoformat(f.as_of)
                assert f.source and f.quote, (e.name, figure, f)
                if f.note.startswith("derived"):
                    continue  # the inputs are quoted, the note gives the arithmetic
                assert any(g in f.quote for g in _grouped(f.value)), (e.name, figure, f.value, f.quote)
    assert points >= 40


def test_holdings_cite_a_source_about_them(entities):
    # A figure may come from an article about someone else only when its citation says so.
    for e in entities.values():
        for f in e.profile.series("holdings_btc"):
            if "Bitdeer" in f.source and e.name != "Bitdeer":
                assert "other miners" in f.source and "secondary" in f.note, (e.name, f.source)


def test_january_points_differ_from_the_newest(entities):
    from monitor.core.facts import fact_at

    bitdeer = entities["Bitdeer"].profile
    jan = fact_at(bitdeer, "holdings_btc", "2026-01-15")
    assert (jan.fact.value, jan.fact.as_of, jan.is_later) == (2000, "2025-12-31", False)
    assert fact_at(bitdeer, "monthly_production_btc", "2026-01-15").fact.as_of == "2025-05-31"
    assert bitdeer.holdings_btc.value == 171  # the newest point, used only from 2026-05-31


def test_sector_cash_cost_stands_in_and_says_so(entities):
    assert SECTOR_CASH_COST.value == 79_995 and "CoinShares" in SECTOR_CASH_COST.source
    assert "sector" in SECTOR_CASH_COST.note
    assert is_sector_default(entities["MARA"].profile.cash_cost_usd)
    assert not is_sector_default(entities["IREN"].profile.cash_cost_usd)
    for n in MINERS:
        assert entities[n].profile.cash_cost_usd is not None


def test_scenario_constants_are_sourced():
    prices = [s.price.value for s in SCENARIO_PRICES]
    assert prices == [100_000, 80_000, 75_000, 70_000, 65_000, 124_500]
    assert all("not a forecast" in s.price.note for s in SCENARIO_PRICES[2:5])
    assert all(s.price.source for s in SCENARIO_PRICES)
    assert SCENARIO_PRICES[0].quoted_hashprice.value == 37


# --- loud failures ---------------------------------------------------------------------------------

MINI_TOML = """
[[address_sources]]
url_prefix = "https://example.org/"
name = "example"
as_of = "2026-01-01"

[[entities]]
name = "Binance"
kind = "exchange"
watch = false
"""
GOOD = "1PJiGp2yDLvUgqeBsuZVCBADArNsk6XEiw"
HEADER = "address,chain,entity,entity_type,label,source_url,source_note\n"


def row(address=GOOD, entity="Binance", etype="exchange", url="https://example.org/x"):
    return f"{address},bitcoin,{entity},{etype},label,{url},note\n"


def test_minimal_registry_parses():
    (e,) = parse_registry(MINI_TOML, HEADER + row())
    assert e.addresses[0].address == GOOD and e.addresses[0].as_of == "2026-01-01"


def test_bad_checksum_fails_loudly_with_its_line():
    bad = GOOD[:-1] + ("w" if GOOD[-1] != "w" else "x")
    with pytest.raises(ValueError, match=r"addresses.csv line 3: address '" + bad):
        parse_registry(MINI_TOML, HEADER + row() + row(bad))


@pytest.mark.parametrize(
    "csv_text,message",
    [
        (HEADER + row(entity="Nobody"), "'Nobody' is not in the registry"),
        (HEADER + row(etype="government"), "does not fit kind"),
        (HEADER + row(url="https://elsewhere.org/"), "is not in address_sources"),
        (HEADER + row() + row(), "repeats line 2"),
        ("address,chain,entity\n", "columns"),
    ],
)
def test_csv_problems_fail_loudly(csv_text, message):
    with pytest.raises(ValueError, match=message):
        parse_registry(MINI_TOML, csv_text)


@pytest.mark.parametrize(
    "entity,message",
    [
        ('holdings_btc = { value = 10, as_of = "2026-01-01" }', "holdings_btc.source: missing"),
        ('holdings_btc = { value = 10, source = "s", as_of = "Jan 2026" }', "as_of: expected YYYY-MM-DD"),
        ('holdings_btc = { value = -1, source = "s", as_of = "2026-01-01" }', "non-negative"),
        ('cash_cost_usd = "some_other_default"', "expected a table"),
        ('strategy_tags = ["hodl"]', "tags need a source"),
        ("colour = 'red'", "unknown keys"),
    ],
)
def test_entity_problems_fail_loudly(entity, message):
    toml_text = MINI_TOML + f'\n[[entities]]\nname = "X"\nkind = "miner"\n{entity}\n'
    with pytest.raises(ValueError, match=message):
        parse_registry(toml_text, HEADER + row())


def test_data_readme_lists_every_dated_point(entities):
    """A reader checks a reason against monitor/data/README.md: every bundled point is a row there."""
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parent.parent / "monitor" / "data" / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| ")]
    for e in entities.values():
        for figure in ("holdings_btc", "monthly_production_btc", "cash_cost_usd", "efficiency_j_th"):
            for f in e.profile.series(figure):
                if is_sector_default(f):
                    name = "(sector, `sector_cash_cost`)"
                else:
                    name = e.name
                value = f"{int(f.value):,}" if float(f.value).is_integer() else f"{f.value:,.2f}".rstrip("0").rstrip(".")
                assert any(
                    r.startswith(f"| {name} |") and f"| {value} | {f.as_of} |" in r and f.quote.replace("|", "\\|") in r
                    for r in rows
                ), (e.name, figure, f.as_of)


def test_a_dated_config_figure_joins_the_bundled_series_and_the_shipped_config_agrees(entities):
    from monitor.config import load_config
    from monitor.core.facts import fact_at
    from monitor.core.registry import merge_entities
    from monitor.model import Entity, Fact, Profile

    newer = Fact(41_000.0, "MARA Apr 2026 update (test)", "2026-04-30", quote="held 41,000 BTC")
    [mara] = [
        e
        for e in merge_entities(entities.values(), [Entity("MARA", "miner", profile=Profile(holdings_btc=newer))])
        if e.name == "MARA"
    ]
    assert [f.as_of for f in mara.profile.series("holdings_btc")] == ["2024-09-30", "2025-09-30", "2026-02-28", "2026-04-30"]
    assert fact_at(mara.profile, "holdings_btc", "2026-03-10").fact.value == 53_000  # March: February's point
    assert fact_at(mara.profile, "holdings_btc", "2026-05-01").fact is newer
    bare = Fact(40_000.0, "config.toml", "")
    [mara] = [
        e
        for e in merge_entities(entities.values(), [Entity("MARA", "miner", profile=Profile(holdings_btc=bare))])
        if e.name == "MARA"
    ]
    assert mara.profile.series("holdings_btc") == (bare,)  # an undated number replaces the series
    # the shipped config.toml does not contradict the registry: every figure it sets is a registry point
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    for e in load_config(root / "config.toml", env={}).entities:
        if e.name not in entities:
            continue
        for figure in ("holdings_btc", "monthly_production_btc", "cash_cost_usd", "efficiency_j_th"):
            for f in e.profile.series(figure):
                bundled = {(p.as_of, p.value) for p in entities[e.name].profile.series(figure)}
                assert (f.as_of, f.value) in bundled, (e.name, figure, f)
