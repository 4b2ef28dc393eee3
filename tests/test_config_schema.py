"""The settings table (monitor/settings.py) drives the parser's defaults and bounds, the JSON Schema that
`check-config --schema` prints, and agrees with config.toml's annotations and README's reference."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from monitor.cli.main import cli
from monitor.config import Config, ConfigError, parse_config
from monitor.settings import SETTINGS, Setting

REPO = Path(__file__).resolve().parent.parent
SOURCE = {"name": "s", "type": "esplora", "urls": ["https://blockstream.info/api"]}
# rows whose section is a parsed object of Config (sources are checked on their one source)
OBJECTS = {"prices": "prices", "alerts": "alerts", "daemon": "daemon", "discovery": "discovery", "miners": "miners"}


def printed_schema() -> dict:
    result = CliRunner().invoke(cli, ["-c", "does-not-exist.toml", "check-config", "--schema"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def validator() -> jsonschema.Draft202012Validator:
    schema = printed_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(data: dict) -> list[str]:
    """Schema errors as `path: message`."""
    return sorted(".".join(map(str, e.absolute_path)) + ": " + e.message for e in validator().iter_errors(data))


ENV = {"HOOK_URL": "https://hooks.example.com/treasury", "HOOK_SECRET": "whsec_test"}
BITCOIND = {"name": "b", "type": "bitcoind", "url": "http://127.0.0.1:8332", "cookie_file": "cookie"}
EVM = {"name": "e", "type": "evm", "chain": "ethereum", "url": "http://127.0.0.1:8545", "chain_id": 1}


def parse(data: dict) -> Config:
    return parse_config(data, base_dir=REPO, env=ENV)


def source_for(key: str) -> dict:
    """The minimal source of the type that has `key`."""
    if key in ("max_blocks", "max_mempool_txs", "mempool", "start_height"):
        return BITCOIND
    if key in ("confirmations", "max_log_range", "start_block", "chain_id"):
        return EVM
    return SOURCE


def place(row: Setting, value: object) -> dict:
    """A minimal config with `row`'s key set to `value` where the row lives."""
    if row.section == "sources":
        return {"sources": [{**source_for(row.key), row.key: value}]}
    if row.section == "sources.tokens":
        return {"sources": [{**EVM, "tokens": [{"symbol": "T", "address": "0x" + "11" * 20, row.key: value}]}]}
    if row.section == "alerts.channels":
        hook = {"name": "c", "type": "webhook", "url": {"env": "HOOK_URL"}, "secret": {"env": "HOOK_SECRET"}}
        return {"sources": [SOURCE], "alerts": {"channels": [{**hook, row.key: value}]}}
    return {"sources": [SOURCE], row.section: {row.key: value}}


def test_the_schema_is_draft_2020_12_and_the_shipped_config_is_valid():
    schema = printed_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    data = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    assert errors(data) == []
    assert schema["properties"]["sources"]["items"]["properties"]["retries"] == {
        "description": "attempts per request, the first included",
        "type": "integer",
        "default": 3,
        "minimum": 1,
        "maximum": 10,
    }


def test_the_schema_flags_what_the_parser_refuses():
    bad = {
        "monitor": {"network": "mainnet", "netwrk": "x"},
        "sources": [{**SOURCE, "retries": 11, "poll_interval": "ten", "mode": "blocks"}],
        "daemon": {"port": 70_000},
        "prices": {"staleness": 0},
        "alerts": {"max_age": -1},
        "extra": {},
    }
    assert errors(bad) == [
        ": Additional properties are not allowed ('extra' was unexpected)",
        "alerts.max_age: -1 is less than the minimum of 0",
        "daemon.port: 70000 is greater than the maximum of 65535",
        "monitor: Additional properties are not allowed ('netwrk' was unexpected)",
        "prices.staleness: 0 is less than or equal to the minimum of 0",
        "sources.0.mode: 'blocks' is not one of ['address', 'block', 'auto']",
        "sources.0.poll_interval: 'ten' is not of type 'number'",
        "sources.0.retries: 11 is greater than the maximum of 10",
    ]
    with pytest.raises(ConfigError) as exc:
        parse(bad)
    assert len(exc.value.problems) == 8, exc.value.problems


@pytest.mark.parametrize("row", [r for r in SETTINGS if r.maximum is not None], ids=lambda r: f"{r.section}.{r.key}")
def test_every_upper_bound_holds_in_the_parser_and_the_schema(row):
    at, over = row.maximum, row.maximum + 1
    if row.type == "integer":
        at, over = int(at), int(over)
    assert errors(place(row, at)) == []
    parse(place(row, at)) if row.key != "chain_id" else None  # an evm source's chain id is checked at start
    assert errors(place(row, over)), f"the schema takes {row.key} = {over}"
    with pytest.raises(ConfigError, match=re.escape(f"{row.key}: must be at most")):
        parse(place(row, over))


@pytest.mark.parametrize(
    "row", [r for r in SETTINGS if r.above is not None or r.at_least is not None], ids=lambda r: f"{r.section}.{r.key}"
)
def test_every_lower_bound_holds_in_the_parser_and_the_schema(row):
    under = row.above if row.above is not None else row.at_least - 1
    if row.type == "integer":
        under = int(under)
    assert errors(place(row, under)), f"the schema takes {row.key} = {under}"
    with pytest.raises(ConfigError, match=re.escape(f"{row.key}: must be ")):
        parse(place(row, under))


@pytest.mark.parametrize(
    "row",
    [r for r in SETTINGS if r.section in OBJECTS or r.section in ("sources", "monitor")],
    ids=lambda r: f"{r.section}.{r.key}",
)
def test_an_absent_key_takes_the_tables_default(row):
    cfg = parse({"sources": [source_for(row.key)]})
    obj = cfg.sources[0] if row.section == "sources" else cfg if row.section == "monitor" else getattr(cfg, OBJECTS[row.section])
    got = getattr(obj, row.key)
    want = row.default
    if row.key == "chain_id":
        want = 1  # required for an evm source: the minimal one above says 1
    elif row.key == "pool_auto_accept_payouts":
        want = None  # 0 in the file means never, stored as None
    elif row.key == "storage":
        got = str(got)
        want = str(Path(row.default))
    assert got == want


# --- config.toml's annotations and README's reference agree with the table -------------------------------

ANNOTATED = re.compile(r"^#?\s*(\w+)\s*=\s*(.+?)\s+#\s*default(?::?\s+([^;]+?))?\s*(?:;|$)")
HEADER = re.compile(r"^#?\s*\[\[?([\w.]+)\]\]?\s*(?:#.*)?$")


def annotated_defaults() -> dict[tuple[str, str], list[object]]:
    """(section, key) → every default config.toml states for it (`key = v  # default X; ...`)."""
    out: dict[tuple[str, str], list[object]] = {}
    section = ""
    for line in (REPO / "config.toml").read_text(encoding="utf-8").splitlines():
        if m := HEADER.match(line):
            section = m.group(1)
        elif (m := ANNOTATED.match(line)) and section:
            key, value, stated = m.groups()
            token = (stated or value).split(" (")[0].split(": ")[0].strip()
            try:
                default = None if token == "none" else tomllib.loads(f"v = {token}")["v"]
            except tomllib.TOMLDecodeError:
                continue  # prose ("the first esplora source"): nothing to compare
            out.setdefault((section, key), []).append(default)
    return out


def test_config_toml_states_each_tables_default():
    stated = annotated_defaults()
    for row in SETTINGS:
        want = list(row.default) if isinstance(row.default, tuple) else row.default
        if want is None and row.section == "alerts.channels":
            continue  # a channel's own default differs per type
        if row.default is not None:
            assert (row.section, row.key) in stated, f"config.toml does not state the default of [{row.section}] {row.key}"
        for got in stated.get((row.section, row.key), []):
            assert got == want, f"config.toml says [{row.section}] {row.key} defaults to {got!r}, the table {want!r}"


def test_readmes_stated_defaults_are_the_tables():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ref = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    by_key = {}
    for row in SETTINGS:
        by_key.setdefault(row.key, set()).add(row.default)
    found = 0
    for key, number in re.findall(r"`(\w+)` \([^()]*?default ([\d,.]+)", ref):
        if key in by_key and len(by_key[key]) == 1:
            found += 1
            assert float(number.replace(",", "")) == next(iter(by_key[key])), f"README: {key} default {number}"
    assert found >= 3
