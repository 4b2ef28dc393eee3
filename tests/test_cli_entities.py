"""`treasury-monitor entities` and its subcommands on a real SQLite file (no chain needed)."""

import json

import pytest
from builders import addr
from fakes.discovery import cli_sync, entity_toml, write_config

from monitor.cli.entities import entities
from monitor.model import EntityAddress
from storage import Store
from storage.discovery import Evidence, add_evidence

KNOWN, EXCH = addr("cli-e-known"), addr("cli-e-exchange")


@pytest.fixture
def cfg(tmp_path):
    return write_config(
        tmp_path,
        None,
        entity_toml("Test Miner", "miner", [KNOWN], holdings=1000, production=50)
        + entity_toml("Test Exchange", "exchange", [EXCH], watch=False),
    )


def db(cfg):
    return Store(cfg.parent / "tm.db")


def test_group_prints_the_table_only_without_a_subcommand(cfg):
    r = cli_sync("-c", cfg, "entities")
    assert r.exit_code == 0 and "Test Miner" in r.output and "reported BTC" in r.output
    r = cli_sync("-c", cfg, "entities", "candidates")
    assert r.exit_code == 0 and "reported BTC" not in r.output and r.output.strip() == "no candidates"
    for sub in entities.commands:
        h = cli_sync("entities", sub, "--help")
        assert h.exit_code == 0 and "Usage:" in h.output, sub


def test_add_show_remove_manual_address(cfg):
    a = addr("cli-e-manual")
    r = cli_sync("-c", cfg, "entities", "add", a.upper(), "--entity", "Test Miner", "--source", "10-Q p. 12", "--label", "cold")
    assert r.exit_code == 0 and f"added {a} to Test Miner; source: 10-Q p. 12" in r.output, r.output
    r = cli_sync("-c", cfg, "entities", "show", "Test Miner")
    assert f"{a}  manual [cold]: 10-Q p. 12" in r.output
    assert "monthly production: 50 BTC (as of 2026-03-01; source: test fixture production)" in r.output
    r = cli_sync("-c", cfg, "entities", "add", a, "--entity", "Test Miner", "--source", "again")
    assert r.exit_code == 0 and "already Test Miner's (manual: 10-Q p. 12)" in r.output
    r = cli_sync("-c", cfg, "entities", "remove", a)
    assert r.exit_code == 0 and f"removed {a} from Test Miner (manual: 10-Q p. 12)" in r.output
    assert a not in {r["address"] for r in db(cfg).address_rows()}


def test_add_refuses_conflicts_bad_addresses_and_unknown_entities(cfg):
    r = cli_sync("-c", cfg, "entities", "add", EXCH, "--entity", "Test Miner", "--source", "s")
    assert r.exit_code == 1 and "already belongs to 'Test Exchange'" in r.output
    r = cli_sync("-c", cfg, "entities", "add", KNOWN[:-1] + "x", "--entity", "Test Miner", "--source", "s")
    assert r.exit_code == 1 and "not a valid mainnet Bitcoin address" in r.output
    r = cli_sync("-c", cfg, "entities", "add", addr("z"), "--entity", "Nobody", "--source", "s")
    assert r.exit_code == 1 and "no entity named 'Nobody'" in r.output
    r = cli_sync("-c", cfg, "entities", "remove", KNOWN)
    assert r.exit_code == 1 and "comes from config.toml" in r.output
    r = cli_sync("-c", cfg, "entities", "remove", addr("never-seen"))
    assert r.exit_code == 1 and "is not a known address" in r.output


def test_candidates_accept_reject_and_remove_of_a_discovered_address(cfg):
    cli_sync("-c", cfg, "entities")  # creates the database
    c1, c2 = addr("cli-e-cand-1"), addr("cli-e-cand-2")
    store = db(cfg)
    with store.batch():
        for c in (c1, c2):
            store.add_addresses(
                "Test Miner",
                [EntityAddress("bitcoin", c, "recipient of pool payouts", "pool_payout", evidence="2 MARA Pool payouts")],
                now=1,
                status="candidate",
            )
            add_evidence(
                store,
                [
                    Evidence(
                        "bitcoin", c, "Test Miner", "pool_payout", f"{k:064x}", 880_000 + k, 1, 312_499_000, {"pool": "MARA Pool"}
                    )
                    for k in (1, 2)
                ],
                now=1,
            )
    store.close()
    r = cli_sync("-c", cfg, "entities", "candidates")
    assert r.output.count("pool_payout: 2 payouts, 6.24998000 BTC, blocks 880001-880002") == 2
    assert f"pool_payout: block 880001 tx {1:064x} 3.12499000 BTC MARA Pool" in r.output
    r = cli_sync("-c", cfg, "entities", "candidates", "--json")
    assert {x["address"] for x in json.loads(r.output)} == {c1, c2}

    assert "accepted" in cli_sync("-c", cfg, "entities", "accept", c1).output
    assert "rejected" in cli_sync("-c", cfg, "entities", "reject", c2).output
    r = cli_sync("-c", cfg, "entities", "accept", c2)
    assert r.exit_code == 1 and "was rejected" in r.output
    # a discovered address is rejected, not forgotten, so discovery cannot add it back
    r = cli_sync("-c", cfg, "entities", "remove", c1)
    assert r.exit_code == 0 and "discovery will not add it again" in r.output
    statuses = {r["address"]: r["status"] for r in db(cfg).address_rows(entity="Test Miner")}
    assert statuses[c1] == statuses[c2] == "rejected"
    # on purpose, a user can still add it by hand
    r = cli_sync("-c", cfg, "entities", "add", c2, "--entity", "Test Miner", "--source", "verified with the company")
    assert r.exit_code == 0 and "(was rejected, pool_payout)" in r.output
    r = cli_sync("-c", cfg, "entities", "show", "Test Miner", "--json")
    d = json.loads(r.output)
    by = {a["address"]: a for a in d["addresses"]}
    assert (by[c2]["status"], by[c2]["learned_by"]) == ("active", "manual")
    assert d["reconciliation"]["text"] == (
        "we see 0% of Test Miner's reported 1,000 BTC (as of 2026-03-01, test fixture "
        "holdings): 0.00 BTC on 0 of 2 known address(es)"
    )
