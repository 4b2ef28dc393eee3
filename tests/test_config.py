"""Tests for monitor/config.py: valid configs become typed objects, every bad one names key path and value.

Config cases are small files in tests/data/config/ (valid*.toml load; each other file holds one kind of
error, many_errors.toml several). Addresses there are real and sourced (DefiLlama-Adapters bitcoin-book at
commit 1eb4e81d4d, via shared/data/addresses.csv), BIP-173 test vectors, or copies broken on purpose.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from monitor import config as config_module
from monitor.config import (
    DEFAULT_CHAIN,
    DEFAULT_MODE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RETRIES,
    DEFAULT_STORAGE,
    DEFAULT_TIMEOUT,
    Config,
    Secret,
    SourceConfig,
    load_config,
    parse_config,
)
from monitor.core.registry import Registry
from monitor.model import ConfigError, Entity, EntityAddress, Fact, Profile

DATA = Path(__file__).parent / "data" / "config"
REPO = Path(__file__).parent.parent

TOKEN = "s3cr3t-token-7f1c"  # must never appear in any printed form of a Config
FILE_SECRET = "file-secret-value"
EL_SALVADOR = "32ixEdVJWo3kmvJGMTZq5jAQVZZeuwnqzo"
KRAKEN = "bc1qnhmemsqfhycvp6g50v732h7wfwdt68el4ux5ttu8xwsrzngmxv0qr55aga"
EL_SALVADOR_SOURCE = (
    "https://github.com/DefiLlama/DefiLlama-Adapters/blob/1eb4e81d4dd0fa8e2c27a428fe8120b37c985689"
    "/projects/helper/bitcoin-book/index.js#L179"
)


def problems_of(name: str, env: dict[str, str] | None = None) -> list[str]:
    """The problems a case file gives (the test fails if it loads)."""
    with pytest.raises(ConfigError) as info:
        load_config(DATA / name, env=env or {})
    return info.value.problems


@pytest.fixture
def valid_path(tmp_path: Path) -> Path:
    """valid.toml copied next to the secret file it reads."""
    path = tmp_path / "config.toml"
    shutil.copy(DATA / "valid.toml", path)
    (tmp_path / "secret.txt").write_text(FILE_SECRET + "\n")
    return path


# --- valid configs --------------------------------------------------------------------------------


def test_valid_config_parses_to_typed_objects(valid_path: Path):
    cfg = load_config(valid_path, env={"ESPLORA_TOKEN": TOKEN})

    assert cfg.network == "mainnet"
    assert cfg.storage == Path("data/monitor.db")  # as given, not resolved against the config's directory
    assert cfg.origin == str(valid_path)
    assert cfg.warnings == ()

    primary, fallback = cfg.sources
    headers = dict(primary.headers)
    assert primary == SourceConfig(
        name="primary",
        type="esplora",
        chain="bitcoin",
        urls=("https://blockstream.info/api", "http://127.0.0.1:3002"),  # trailing slash dropped
        rate_limit=2.5,
        timeout=5.0,
        retries=4,
        poll_interval=30.0,
        mode="block",
        headers=primary.headers,
    )
    assert isinstance(primary.timeout, float)
    assert [k for k, _ in primary.headers] == ["Authorization", "X-Api-Key", "User-Agent"]
    assert isinstance(headers["Authorization"], Secret) and headers["Authorization"].reveal() == TOKEN
    assert headers["Authorization"].ref == "env ESPLORA_TOKEN"
    assert isinstance(headers["X-Api-Key"], Secret) and headers["X-Api-Key"].reveal() == FILE_SECRET
    assert headers["User-Agent"] == "treasury-monitor"
    assert primary.revealed_headers() == {
        "Authorization": TOKEN,
        "X-Api-Key": FILE_SECRET,
        "User-Agent": "treasury-monitor",
    }
    assert fallback == SourceConfig(name="fallback", type="esplora", urls=("https://mempool.space/api",))
    assert cfg.source("fallback") is fallback

    miner, kraken, sovereign = cfg.entities
    assert miner == Entity(
        name="Example Miner",
        kind="miner",
        addresses=(
            # upper-case bech32 is stored in canonical (lower-case) form; a bare string is sourced to the file
            EntityAddress(
                chain="bitcoin",
                address="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
                source=f"{valid_path} entities[0]",
                learned_by="config",
            ),
            EntityAddress(
                chain="bitcoin",
                address=EL_SALVADOR,
                source=EL_SALVADOR_SOURCE,
                learned_by="config",
                label="cold",
                as_of="2026-03-01",  # a TOML date becomes its ISO string
            ),
        ),
        profile=Profile(
            holdings_btc=Fact(52850.0, "MARA Sep 2025 production update", "2025-09-30"),
            monthly_production_btc=Fact(736.0, str(valid_path), ""),
            cash_cost_usd=Fact(79995.5, str(valid_path), ""),
            efficiency_j_th=Fact(20.0, "fleet", "", "target"),
            strategy_tags=("convertible_repurchase", "ai_hpc_pivot"),
            strategy_source="ChainCatcher 2026-04-03",
        ),
        note="test entity",
        watch=True,
    )
    assert kraken.kind == "exchange" and kraken.watch is False
    assert kraken.addresses == (EntityAddress("bitcoin", KRAKEN, "DefiLlama"),)
    assert sovereign == Entity(name="No Address Sovereign", kind="sovereign")

    # what the config yields is what the registry indexes
    reg = Registry(cfg.entities)
    assert reg.entity_of("bitcoin", EL_SALVADOR).name == "Example Miner"
    assert reg.entity_of("bitcoin", KRAKEN.upper()).name == "Kraken"


def test_minimal_config_takes_the_named_defaults():
    cfg = load_config(DATA / "valid_minimal.toml", env={})
    assert cfg.network == "mainnet"
    assert cfg.storage == Path(DEFAULT_STORAGE)
    (src,) = cfg.sources
    assert (src.chain, src.rate_limit, src.timeout, src.retries, src.poll_interval, src.mode, src.headers) == (
        DEFAULT_CHAIN,
        DEFAULT_RATE_LIMIT,
        DEFAULT_TIMEOUT,
        DEFAULT_RETRIES,
        DEFAULT_POLL_INTERVAL,
        DEFAULT_MODE,
        (),
    )
    assert (DEFAULT_RATE_LIMIT, DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_POLL_INTERVAL) == (1.0, 10.0, 3, 60.0)
    assert cfg.entities == (Entity(name="M", kind="miner"),)
    assert parse_config({}, base_dir=Path(".")) == Config()


def test_testnet_addresses_are_right_on_a_testnet_config():
    cfg = load_config(DATA / "valid_testnet.toml", env={})
    assert cfg.network == "testnet"
    assert cfg.entities[0].addresses[0].address == "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"


def test_repo_example_config_validates():
    cfg = load_config(REPO / "config.toml", env={})
    assert cfg.network == "mainnet" and cfg.warnings == ()
    assert [s.name for s in cfg.sources] == ["blockstream"]
    kinds = {e.kind for e in cfg.entities}
    assert {"miner", "sovereign", "exchange"} <= kinds
    for e in cfg.entities:
        if e.kind == "miner":
            assert e.addresses == () and "no public treasury address" in e.note.lower()
        for a in e.addresses:  # only sourced addresses ship in the example
            assert a.source.startswith("https://"), a
    Registry(cfg.entities)


# --- one error per file -----------------------------------------------------------------------------

EXPECTED: list[tuple[str, list[str]]] = [
    (
        "invalid_address.toml",
        [
            "entities[2].addresses[0]: 'bc1qxyz' is not a valid mainnet Bitcoin address "
            "(has an invalid bech32 length or separator)"
        ],
    ),
    (
        "testnet_address.toml",
        [
            "entities[0].addresses[1]: 'tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx' is not a valid mainnet "
            "Bitcoin address (is a testnet/signet address, not mainnet)"
        ],
    ),
    (
        "bad_checksum.toml",
        [
            "entities[0].addresses[0].address: '32ixEdVJWo3kmvJGMTZq5jAQVZZeuwnqzp' is not a valid mainnet "
            "Bitcoin address (fails its base58 checksum)"
        ],
    ),
    (
        "duplicate_address.toml",
        [f"entities[1].addresses[1]: '{KRAKEN}' is already listed at entities[0].addresses[0] (entity 'Kraken')"],
    ),
    ("duplicate_name.toml", ["sources[1].name: 's' is already the name of sources[0]"]),
    (
        "unknown_key.toml",
        [
            "sources[1].urlz: unknown key (expected one of: name, type, chain, urls, rate_limit, timeout, "
            "retries, poll_interval, mode, headers, push_url, push_cap, mempool_checks; did you mean 'urls'?)"
        ],
    ),
    (
        "unknown_section.toml",
        [
            "reporting: unknown section (expected one of: monitor, sources, entities, classify, prices, alerts, daemon, discovery, miners)"
        ],
    ),
    ("wrong_type.toml", ["sources[0].timeout: expected a number, got 'ten'"]),
    ("bad_enum.toml", ["entities[1].kind: 'minor' is not one of miner, sovereign, exchange, otc, custodian, other"]),
    ("bad_url.toml", ["sources[0].urls[0]: 'ftp://x' is not an http(s) URL"]),
    (
        "missing_required.toml",
        [
            "sources[0].name: required key is missing",
            "sources[0].type: required key is missing",
            "sources[0].urls: required key is missing",
            "entities[0].kind: required key is missing",
        ],
    ),
    (
        "missing_env_secret.toml",
        ["sources[0].headers.Authorization: environment variable TM_TEST_UNSET_TOKEN is not set"],
    ),
    (
        "out_of_range.toml",
        [
            "sources[0].urls: must list at least one URL",
            "sources[0].rate_limit: must be greater than 0, got 0",
            "sources[0].timeout: must be greater than 0, got -1",
            "sources[0].retries: must be at least 1, got 0",
            "sources[0].poll_interval: must be greater than 0, got 0.0",
        ],
    ),
]


@pytest.mark.parametrize("name, expected", EXPECTED, ids=[name for name, _ in EXPECTED])
def test_error_case_reports_key_path_and_bad_value(name: str, expected: list[str]):
    assert problems_of(name) == expected


def test_every_case_file_is_covered():
    covered = {name for name, _ in EXPECTED} | {
        "valid.toml",
        "valid_minimal.toml",
        "valid_testnet.toml",
        "http_warning.toml",
        "many_errors.toml",
        "syntax_error.toml",
        "unreadable_secret_file.toml",
    }
    assert {p.name for p in DATA.glob("*.toml")} == covered


def test_all_errors_are_reported_at_once():
    assert problems_of("many_errors.toml") == [
        "monitor.storage: expected a string, got 5",
        "sources[0].urls[1]: 'ftp://x' is not an http(s) URL",
        "sources[0].retries: expected an integer, got 2.5",
        "sources[0].mode: 'fast' is not one of address, block, auto",
        "entities[0].colour: unknown key (expected one of: name, kind, addresses, ethereum, note, watch, profile)",
        "entities[0].kind: 'minor' is not one of miner, sovereign, exchange, otc, custodian, other",
        "entities[0].addresses[0]: 'bc1qxyz' is not a valid mainnet Bitcoin address (has an invalid bech32 length or separator)",
        "entities[0].profile.holdings_btc: expected a number or { value = ..., source = ..., as_of = ... }, got 'lots'",
        "entities[0].profile.cash_cost_usd.value: must be greater than 0, got -1",
    ]


def test_config_error_message_is_one_problem_per_line():
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "missing_required.toml", env={})
    assert str(info.value).splitlines() == info.value.problems


# --- files, syntax, secrets -----------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line():
    path = DATA / "syntax_error.toml"
    assert problems_of("syntax_error.toml") == [f"{path}: line 3, column 11: invalid TOML: Invalid value"]


def test_missing_file_is_a_config_error(tmp_path: Path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: no such file"]


def test_non_utf8_file_names_the_line(tmp_path: Path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[monitor]\nstorage = "caf\xe9.db"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: line 2: not UTF-8 text"]


def test_secret_prints_as_stars_and_never_leaks_into_the_config(valid_path: Path):
    cfg = load_config(valid_path, env={"ESPLORA_TOKEN": TOKEN})
    secret = dict(cfg.sources[0].headers)["Authorization"]
    assert repr(secret) == "***" and str(secret) == "***" and f"{secret}" == "***"
    assert secret.reveal() == TOKEN
    for text in (str(cfg), repr(cfg), repr(cfg.sources), str(cfg.sources[0].headers)):
        assert TOKEN not in text and FILE_SECRET not in text
    assert "***" in repr(cfg)


def test_unreadable_secret_file_names_key_and_file_not_value():
    (problem,) = problems_of("unreadable_secret_file.toml")
    assert problem.startswith("sources[0].headers.Authorization: cannot read secret file ")
    assert "no-such-secret.txt" in problem


def test_empty_env_secret_is_an_error():
    assert problems_of("missing_env_secret.toml", env={"TM_TEST_UNSET_TOKEN": "  "}) == [
        "sources[0].headers.Authorization: environment variable TM_TEST_UNSET_TOKEN is empty"
    ]


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TM_TEST_UNSET_TOKEN", TOKEN)
    cfg = load_config(DATA / "missing_env_secret.toml")
    assert cfg.sources[0].revealed_headers() == {"Authorization": TOKEN}


def test_secret_table_must_name_exactly_one_way():
    data = {
        "sources": [
            {
                "name": "s",
                "type": "esplora",
                "urls": ["https://blockstream.info/api"],
                "headers": {"A": {"env": "X", "file": "y"}, "B": {"environ": "X"}, "C": 5},
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("."), env={"X": TOKEN})
    assert info.value.problems == [
        'sources[0].headers.A: give exactly one of { env = "NAME" } or { file = "path" }',
        "sources[0].headers.B.environ: unknown key (expected one of: env, file; did you mean 'env'?)",
        'sources[0].headers.B: give exactly one of { env = "NAME" } or { file = "path" }',
        'sources[0].headers.C: expected a string or { env = "NAME" }, got an integer',
    ]


def test_plain_string_where_a_secret_is_required_is_refused_without_echoing_it():
    # No field requires a secret yet (Slack webhook URLs, SMTP passwords will); they use this helper.
    ctx = config_module._Context(base_dir=Path("."), env={"HOOK": TOKEN}, origin="t")
    assert config_module._take_secret({"url": TOKEN}, "url", "alerts.slack", ctx, plain_ok=False) is None
    assert ctx.problems == [
        'alerts.slack.url: a secret must not be written in the file; set an environment variable and write { env = "NAME" }'
    ]
    ok = config_module._take_secret({"url": {"env": "HOOK"}}, "url", "alerts.slack", ctx, plain_ok=False)
    assert isinstance(ok, Secret) and ok.reveal() == TOKEN and len(ctx.problems) == 1


def test_url_with_credentials_is_refused_without_echoing_them():
    data = {"sources": [{"name": "s", "type": "esplora", "urls": [f"https://user:{TOKEN}@host/api"]}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("."))
    (problem,) = info.value.problems
    assert problem.startswith("sources[0].urls[0]: must not embed credentials") and TOKEN not in problem


# --- warnings -------------------------------------------------------------------------------------


def test_plain_http_to_a_remote_host_warns(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="monitor.config"):
        cfg = load_config(DATA / "http_warning.toml", env={})
    expected = (
        "sources[0].urls[0]: 'http://esplora.example.com/api' is plain http to a non-loopback host; "
        "traffic can be read and altered in transit"
    )
    assert cfg.warnings == (expected,)
    assert [r.getMessage() for r in caplog.records] == [f"config {expected}"]
    assert cfg.sources[0].urls == ("http://esplora.example.com/api", "http://localhost:3002", "http://[::1]:3002")


def test_https_and_loopback_do_not_warn(valid_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="monitor.config"):
        load_config(valid_path, env={"ESPLORA_TOKEN": TOKEN})
    assert caplog.records == []


def test_plain_credential_header_warns_without_showing_the_value(caplog: pytest.LogCaptureFixture):
    data = {"sources": [{"name": "s", "type": "esplora", "urls": ["https://x.test/api"], "headers": {"Authorization": TOKEN}}]}
    with caplog.at_level(logging.WARNING, logger="monitor.config"):
        cfg = parse_config(data, base_dir=Path("."))
    assert cfg.warnings == (
        'sources[0].headers.Authorization: looks like a credential written in the file; prefer { env = "NAME" }',
    )
    assert TOKEN not in caplog.text


# --- cross-section rules --------------------------------------------------------------------------


def test_a_wrong_network_is_reported_once_and_addresses_are_not_judged_against_a_guess():
    data = {
        "monitor": {"network": "mainet"},
        "entities": [{"name": "T", "kind": "other", "addresses": ["tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"]}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("."))
    assert info.value.problems == ["monitor.network: 'mainet' is not one of mainnet, testnet, signet, regtest"]


def test_sections_of_the_wrong_shape():
    data = {"monitor": [], "sources": {"name": "s"}, "entities": [5]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("."))
    assert info.value.problems == [
        "monitor: expected a table ([monitor]), got []",
        "sources: expected an array of tables ([[sources]]), got a table",
        "entities[0]: expected a table, got 5",
    ]


def test_address_table_checks_its_own_keys_and_dates():
    data = {
        "entities": [
            {
                "name": "E",
                "kind": "miner",
                "addresses": [{"address": EL_SALVADOR, "labl": "x", "as_of": "2026-13-01"}, {"source": "s"}],
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("."))
    assert info.value.problems == [
        "entities[0].addresses[0].labl: unknown key (expected one of: address, source, label, as_of; did you mean 'label'?)",
        "entities[0].addresses[0].as_of: '2026-13-01' is not a date (YYYY-MM-DD)",
        "entities[0].addresses[1].address: required key is missing",
    ]


# --- sections added for classification, prices, alerts, daemon and discovery ----------------------

from monitor.config import parse_config as _parse  # noqa: E402


def _problems(data, env=None):
    with pytest.raises(ConfigError) as e:
        _parse(data, base_dir=Path("."), env=env or {})
    return e.value.problems


def test_full_alerts_daemon_discovery_sections_parse_to_typed_objects():
    env = {
        "SLACK_URL": "https://hooks.slack.com/services/T/B/x",
        "SMTP_PW": "pw-123456",
        "HOOK": "https://h.example/in",
        "HOOK_SECRET": "s3cr3t-value",
        "TOKEN": "tok-abcdef",
    }
    c = _parse(
        {
            "classify": {"usd_critical": 60_000_000, "acceleration_window": 4},
            "prices": {"sources": ["kraken", "csv"], "staleness": 3600},
            "alerts": {
                "max_age": 3600,
                "channels": [
                    {"name": "ops", "type": "slack", "webhook_url": {"env": "SLACK_URL"}, "min_interval": 0.5},
                    {
                        "name": "mail",
                        "type": "email",
                        "host": "smtp.example.com",
                        "port": 587,
                        "sender": "tm@example.com",
                        "recipients": ["a@example.com"],
                        "username": "tm",
                        "password": {"env": "SMTP_PW"},
                    },
                    {"name": "hook", "type": "webhook", "url": {"env": "HOOK"}, "secret": {"env": "HOOK_SECRET"}},
                    {"name": "out", "type": "console"},
                ],
                "rules": [
                    {
                        "name": "sales",
                        "kinds": ["miner"],
                        "verdicts": ["distress_sale"],
                        "min_severity": "warning",
                        "min_usd": 1e6,
                        "channels": ["ops", "mail"],
                    }
                ],
            },
            "daemon": {"host": "0.0.0.0", "port": 9000, "token": {"env": "TOKEN"}, "digest_channels": ["mail"]},
            "discovery": {"pool_owners": {"Foundry USA": "Some Miner"}, "pool_auto_accept_payouts": 5},
        },
        base_dir=Path("."),
        env=env,
    )
    assert c.classify.usd_critical == 60_000_000 and c.classify.acceleration_window == 4
    assert c.prices.sources == ("kraken", "csv") and c.prices.csv is None and c.prices.staleness == 3600
    assert [ch.name for ch in c.alerts.channels] == ["ops", "mail", "hook", "out"]
    assert c.alerts.channel("ops").revealed_settings() == {"webhook_url": env["SLACK_URL"], "min_interval": 0.5}
    assert c.alerts.rules[0].min_severity == "warning" and c.alerts.rules[0].channels == ("ops", "mail")
    assert c.daemon.token.reveal() == "tok-abcdef" and c.daemon.port == 9000
    assert c.discovery.pool_owners == (("Foundry USA", "Some Miner"),) and c.discovery.pool_auto_accept_payouts == 5
    text = repr(c) + str(c)
    for secret in env.values():
        assert secret not in text


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {"alerts": {"channels": [{"name": "ops", "type": "slack", "webhook_url": "https://hooks.slack.com/x"}]}},
            "alerts.channels[0].webhook_url: a secret must not be written in the file",
        ),
        (
            {"alerts": {"rules": [{"name": "r", "channels": ["nope"]}]}},
            "alerts.rules[0].channels[0]: 'nope' is not a channel defined in [[alerts.channels]]",
        ),
        (
            {
                "alerts": {
                    "channels": [
                        {
                            "name": "m",
                            "type": "email",
                            "host": "h",
                            "sender": "s",
                            "recipients": ["r"],
                            "security": "none",
                            "password": {"env": "PW"},
                        }
                    ]
                }
            },
            'alerts.channels[0].security: "none" would send the password in clear text',
        ),
        ({"alerts": {"channels": [{"name": "x", "type": "pager"}]}}, "alerts.channels[0].type: 'pager' is not one of"),
        (
            {"alerts": {"rules": [{"name": "r", "channels": [], "verdicts": ["panic_sale"]}]}},
            "alerts.rules[0].verdicts[0]: 'panic_sale' is not one of",
        ),
        (
            {"alerts": {"explorer_url": "https://mempool.space/tx/"}},
            "alerts.explorer_url: 'https://mempool.space/tx/' must contain {txid}",
        ),
        ({"classify": {"usd_notice": 5e7, "usd_warning": 1e7}}, "classify:"),
        ({"classify": {"usd_notice": -1}}, "classify.usd_notice: must be greater than 0"),
        ({"prices": {"sources": ["bloomberg"]}}, "prices.sources[0]: 'bloomberg' is not one of coinbase, kraken, coingecko, csv"),
        ({"prices": {"csv": "/nonexistent/prices.csv"}}, "prices.csv: '/nonexistent/prices.csv' is not a readable file"),
        ({"daemon": {"port": 70000}}, "daemon.port: must be at most 65,535, got 70000"),
        ({"daemon": {"digest_hour": 24}}, "daemon.digest_hour: 24 is not an hour"),
        ({"daemon": {"token": "plain"}}, "daemon.token: a secret must not be written in the file"),
        ({"discovery": {"pool_owners": {"MARA Pool": 3}}}, 'discovery.pool_owners."MARA Pool": expected the name of the miner'),
        ({"discovery": {"trace_max_hops": 0}}, "discovery.trace_max_hops: must be at least 1"),
    ],
)
def test_section_errors_name_the_key(data, expected):
    problems = _problems(data, env={"PW": "pw"})
    assert any(expected in p for p in problems), problems


def _accepted_keys() -> set[str]:
    """Every key name the parser accepts anywhere (sections, tables, inline tables, channel settings)."""
    import monitor.config as c

    keys = set(c.SECTIONS) | {"channels", "rules", "profile"}
    for name in dir(c):
        if name.startswith("_") and name.endswith("_KEYS") and isinstance(getattr(c, name), tuple):
            keys |= set(getattr(c, name))
    for spec in c._CHANNEL_SETTINGS.values():
        keys |= set(spec)
    return keys | {"name", "type", "min_interval"}


def test_example_config_documents_every_key_the_parser_accepts():
    import re

    text = (REPO / "config.toml").read_text(encoding="utf-8")
    assignments = set(re.findall(r"(?m)^[#\s]*([A-Za-z_]+)\s*=", text))  # key = ... (also commented examples)
    inline = set(re.findall(r"[{,]\s*([a-z_]+)\s*=", text))  # { value = ..., source = ... }
    listed = set(re.findall(r"(?m)^#\s{2,}([a-z_]+)\s{2,}", text))  # the entities' key list
    sections = {p.split(".")[-1] for p in re.findall(r"(?m)^#?\s*\[\[?([a-z_.]+)\]\]?", text)}
    documented = assignments | inline | listed | sections
    accepted = _accepted_keys()
    assert accepted - documented == set(), "keys the parser accepts but config.toml does not show"
    # and nothing config.toml shows is refused (header names and pool names are values, not keys)
    assert (assignments | inline) - accepted - {"Authorization"} == set()


def test_miners_section_defaults_and_checks(tmp_path):
    from monitor.config import DEFAULT_MINERS_INTERVAL, ConfigError, parse_config

    src = {"name": "node", "type": "esplora", "urls": ["http://127.0.0.1:1/api"]}
    cfg = parse_config({"sources": [src]}, base_dir=tmp_path)
    assert (cfg.miners.follow, cfg.miners.interval, cfg.miners.source) == (True, DEFAULT_MINERS_INTERVAL, None)
    cfg = parse_config({"sources": [src], "miners": {"follow": False, "interval": 30, "source": "node"}}, base_dir=tmp_path)
    assert (cfg.miners.follow, cfg.miners.interval, cfg.miners.source) == (False, 30, "node")
    with pytest.raises(ConfigError) as err:
        parse_config({"sources": [src], "miners": {"source": "nope", "interval": 0, "x": 1}}, base_dir=tmp_path)
    text = str(err.value)
    assert "miners.source: 'nope' is not a source" in text and "miners.interval" in text and "miners.x" in text


def test_loading_a_config_with_evm_addresses_does_not_import_web3(tmp_path):
    # EIP-55 validation lives beside the Bitcoin codec (watchers/addresses.py): check-config stays light
    import subprocess
    import sys

    cfg = tmp_path / "evm.toml"
    cfg.write_text(
        '[[entities]]\nname = "X"\nkind = "sovereign"\n'
        'ethereum = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359"]\n'
    )
    code = (
        "import sys; from monitor.config import load_config; c = load_config(sys.argv[1]); "
        "print(sorted(a.address for a in c.entities[0].addresses), 'web3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("['0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed', '0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359'] False")
