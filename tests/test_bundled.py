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
from monitor.registry import Registry
from watchers.addresses import validate_address

# The copies must stay verbatim copies of shared/data (hashes recorded in monitor/data/README.md).
SHA256 = {
    "addresses.csv": "c13af132f9676dfebe8230ba78fd1d75d930799e5a7fef94c78176abde3f609c",
    "addresses_unverified.csv": "fc450cc4d9bf29f4cddec38615b2a9ba2e0e10bc17888029820285d060ca2865",
}
MINERS = ["MARA", "Riot", "CleanSpark", "Core Scientific", "Bitdeer", "Cango", "HIVE", "Hut 8", "Cipher", "TeraWulf", "IREN"]
SOVEREIGNS = ["Bhutan", "US Government", "United Kingdom", "El Salvador", "Germany (BKA)"]
COUNTERPARTIES = {
    "QCP Capital": "otc", "Cumberland DRW": "otc", "Flow Traders": "otc",
    "Coinbase Prime": "custodian", "Cobo": "custodian", "BitGo": "custodian",
    "Binance": "exchange", "Kraken": "exchange", "Coinbase": "exchange", "OKX": "exchange",
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
    assert set(mara.strategy_tags) == {"convertible_repurchase", "ai_hpc_pivot"}
    assert "convertible bonds" in mara.strategy_source
    assert entities["Cango"].profile.cash_cost_usd.value == 70_602
    assert entities["Cango"].profile.holdings_btc.value == 7474.67
    assert entities["Bhutan"].profile.holdings_btc.value == 5400
    assert entities["HIVE"].profile.holdings_btc is None and entities["HIVE"].profile.monthly_production_btc is None
    assert "mining_focus" in entities["CleanSpark"].profile.strategy_tags
    for n in ["Core Scientific", "TeraWulf", "Hut 8", "Cipher", "IREN"]:
        assert "ai_hpc_pivot" in entities[n].profile.strategy_tags


def test_sector_cash_cost_stands_in_and_says_so(entities):
    assert SECTOR_CASH_COST.value == 79_995 and "CoinShares" in SECTOR_CASH_COST.source
    assert "sector" in SECTOR_CASH_COST.note
    assert is_sector_default(entities["MARA"].profile.cash_cost_usd)
    assert not is_sector_default(entities["IREN"].profile.cash_cost_usd)
    for n in MINERS:
        assert entities[n].profile.cash_cost_usd is not None


def test_scenario_constants_are_sourced():
    prices = [s.price.value for s in SCENARIO_PRICES]
    assert prices == [100_000, 80_000, 124_500]
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
