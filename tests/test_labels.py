"""Label imports: CSV and JSON shapes, checksum checks with row numbers, all-or-nothing writes, duplicates
and conflicts — through the library and the `entities import` command on a real SQLite file."""

import json

import pytest
from builders import addr, entity
from fakes.discovery import cli_sync, entity_toml, write_config

from monitor.core.registry import Registry
from monitor.discovery.addressbook import apply_import, plan_import
from monitor.discovery.labels import LabelImportError, parse_label_text
from storage import Store
from storage.discovery import evidence_rows

KRAKEN = "bc1qnhmemsqfhycvp6g50v732h7wfwdt68el4ux5ttu8xwsrzngmxv0qr55aga"  # bundled (DefiLlama list)


def bad_checksum(a: str) -> str:
    last = a[-1]
    return a[:-1] + ("q" if last != "q" else "p")


@pytest.fixture
def reg():
    return Registry(
        [
            entity("MARA", "miner", [addr("mara-known")]),
            entity("Riot", "miner", [addr("riot-known")]),
            entity("Binance", "exchange", [addr("binance-1")], watch=False),
        ]
    )


def plan(rows, reg, store, **kw):
    kw.setdefault("entity", "MARA")
    return plan_import(rows, registry=reg, store=store, network="mainnet", source=kw.pop("source", None), file="labels.csv", **kw)


def test_csv_with_a_bad_checksum_row_fails_whole_naming_the_row(reg, db_path):
    good = [addr(f"w{i}") for i in range(4)]
    text = "address,label,source\n" + "\n".join(
        f"{a},wallet {i},https://example.org/filing" for i, a in enumerate([good[0], good[1], bad_checksum(good[2]), good[3]])
    )
    store = Store(db_path)
    p = plan(parse_label_text(text, fmt="csv"), reg, store)
    assert not p.ok
    [err] = p.errors
    assert err.startswith("row 3 (line 4):") and "not a valid mainnet Bitcoin address" in err
    with pytest.raises(LabelImportError, match="row 3"):
        apply_import(store, p, now=1)
    assert store.address_rows(entity="MARA") == []  # nothing half-imported


def test_valid_csv_imports_with_sources_in_one_transaction(reg, db_path):
    a1, a2, a3 = addr("imp-1"), addr("imp-2", "p2pkh"), addr("imp-3", "p2tr")
    text = (
        "Address,Label,Entity,Source\n"
        f"{a1},hot wallet,Marathon Digital,https://arkham.example/mara\n"
        f"{a2.upper() if a2.startswith('bc1') else a2},cold,,\n"
        f"{a3.upper()},taproot vault,Marathon Digital,10-K filing\n"
        f"{a1},hot wallet,Marathon Digital,https://arkham.example/mara\n"  # duplicate
    )
    store = Store(db_path)
    p = plan(parse_label_text(text, fmt="csv"), reg, store, source="analyst notes 2026-03")
    assert p.ok and len(p.to_add) == 3
    assert p.duplicates == (f"row 4 (line 5): {a1} repeats row 1 (line 2) (skipped)",)
    assert apply_import(store, p, now=100) == 3
    rows = {r["address"]: r for r in store.address_rows(entity="MARA")}
    assert set(rows) == {a1, a2, a3}  # bech32 stored lower-cased (canonical)
    assert rows[a1]["source"] == "https://arkham.example/mara" and rows[a1]["learned_by"] == "import"
    assert rows[a1]["label"] == "hot wallet (file entity: Marathon Digital)"
    assert rows[a2]["source"] == "analyst notes 2026-03"  # the row named none: --source
    assert rows[a3]["source"] == "10-K filing" and rows[a3]["status"] == "active"
    ev = evidence_rows(store, address=a3)
    assert ev[0]["kind"] == "import" and ev[0]["detail"]["row"] == 3
    # the imported addresses are learned addresses: the registry of the next run owns them
    assert {a.address for a in store.learned_addresses()["MARA"]} == {a1, a2, a3}
    # importing the same file again adds nothing and says why
    p2 = plan(parse_label_text(text, fmt="csv"), reg, store)
    assert p2.ok and p2.to_add == () and len(p2.duplicates) == 4


def test_conflicts_with_other_owners_fail_unless_skipped(reg, db_path):
    store = Store(db_path)
    store.add_addresses("Riot", [entity("x", addresses=[addr("riot-learned")]).addresses[0]], now=1, status="candidate")
    a_ok = addr("fresh-ok")
    text = json.dumps(
        [
            {"address": addr("binance-1"), "label": "said to be MARA"},  # bundled/config owner: Binance
            {"address": addr("riot-learned")},  # a candidate of Riot in storage
            {"address": a_ok, "source": "court filing"},
            {"address": addr("twice"), "entity": "MARA"},
            {"address": addr("twice"), "entity": "Riot"},  # one address, two entities in the file
        ]
    )
    p = plan(parse_label_text(text, fmt="json"), reg, store)
    assert not p.ok
    assert len(p.conflicts) == 3
    assert "row 1:" in p.conflicts[0] and "'Binance'" in p.conflicts[0]
    assert "row 2:" in p.conflicts[1] and "'Riot'" in p.conflicts[1] and "candidate" in p.conflicts[1]
    assert "row 5:" in p.conflicts[2] and "row 4" in p.conflicts[2]
    with pytest.raises(LabelImportError):
        apply_import(store, p, now=1)
    skipped = plan(parse_label_text(text, fmt="json"), reg, store, skip_conflicts=True)
    assert skipped.ok and [a.address for _, a, _ in skipped.to_add] == [a_ok]  # both rows of "twice" left out
    assert apply_import(store, skipped, now=2) == 1


@pytest.mark.parametrize("shape", ["plain", "objects", "arkham", "wrapped", "keyed"])
def test_json_shapes(shape, reg, db_path):
    a, b = addr(f"{shape}-a"), addr(f"{shape}-b")
    data = {
        "plain": [a, b],
        "objects": [{"address": a, "label": "x"}, {"address": b, "source": "s"}],
        "arkham": [
            {
                "address": a,
                "chain": "bitcoin",
                "arkhamEntity": {"name": "Marathon Digital", "id": "marathon", "type": "miner"},
                "arkhamLabel": {"name": "Hot Wallet", "address": a, "chainType": "bitcoin"},
                "isUserAddress": False,
            },
            {"address": b, "chain": "bitcoin", "arkhamEntity": {"name": "Marathon Digital"}},
        ],
        "wrapped": {"addresses": [a, {"address": b}]},
        "keyed": {a: "hot wallet", b: {"label": "cold"}},
    }[shape]
    rows = parse_label_text(json.dumps(data), fmt="json")
    assert [r.address for r in rows] == [a, b] and [r.row for r in rows] == [1, 2]
    if shape == "arkham":
        assert rows[0].label == "Arkham: Marathon Digital — Hot Wallet"
    p = plan(rows, reg, Store(db_path))
    assert p.ok and len(p.to_add) == 2


def test_shape_errors_name_rows_and_other_chains_are_refused(reg, db_path):
    with pytest.raises(LabelImportError, match="row 2: expected an address string or an object"):
        parse_label_text(json.dumps([addr("a"), 5]), fmt="json")
    with pytest.raises(LabelImportError, match="not valid JSON"):
        parse_label_text("[1,", fmt="json")
    with pytest.raises(LabelImportError, match="no address column"):
        parse_label_text("wallet_name,label\nx,y\n", fmt="csv")
    rows = parse_label_text(
        f"address,chain\n{addr('e')},ethereum\n{'tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx'},bitcoin\n", fmt="csv"
    )
    p = plan(rows, reg, Store(db_path))
    assert p.errors[0].startswith("row 1 (line 2): chain 'ethereum'")
    assert p.errors[1].startswith("row 2 (line 3):") and "mainnet" in p.errors[1]


def test_cli_import_reports_and_writes_nothing_on_error(tmp_path):
    a1, a2 = addr("cli-imp-1"), addr("cli-imp-2")
    cfg = write_config(tmp_path, None, entity_toml("Test Miner", "miner", [addr("cli-known")]))
    bad = tmp_path / "bad.csv"
    bad.write_text(f"address,label\n{a1},one\n{bad_checksum(a2)},two\n")
    r = cli_sync("-c", cfg, "entities", "import", bad, "--entity", "Test Miner")
    assert r.exit_code == 1 and "nothing imported" in r.output and "row 2 (line 3)" in r.output, r.output

    good = tmp_path / "good.csv"
    good.write_text(f"address,label,source\n{a1},one,exchange filing\n{a2},two,\n{KRAKEN},claimed,\n")
    r = cli_sync("-c", cfg, "entities", "import", good, "--entity", "Test Miner", "--source", "desk notes")
    assert r.exit_code == 1 and "conflict: row 3 (line 4)" in r.output and "'Kraken'" in r.output, r.output
    r = cli_sync("-c", cfg, "entities", "import", good, "--entity", "Test Miner", "--source", "desk notes", "--skip-conflicts")
    assert r.exit_code == 0, r.output
    assert "imported 2 address(es) (Test Miner: 2); 0 duplicate(s), 1 conflict(s) skipped" in r.output
    r = cli_sync("-c", cfg, "entities", "show", "Test Miner")
    assert r.exit_code == 0, r.output
    assert f"{a1}  import [one]: exchange filing" in r.output
    assert f"{a2}  import [two]: desk notes" in r.output
    assert "config: test fixture" in r.output
