"""The settings table: each scalar config key once, with its type, default, bounds and one-line doc.

`monitor/config.py` reads its defaults and bounds from here (`setting()`), and `monitor/config_schema.py`
turns the table into a JSON Schema for editors. Keys whose shape is more than one value (sources' `urls`
and `headers`, secrets, entities, channels, rules, `[classify]`) are still parsed by hand in config.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Setting", "SETTINGS", "setting", "max_values"]

_HOUR, _DAY, _WEEK, _YEAR = 3_600, 86_400, 7 * 86_400, 365 * 86_400


@dataclass(frozen=True)
class Setting:
    """One key: `section` is its table path (`sources`, `alerts.channels`), `type` a TOML value kind."""

    section: str
    key: str
    type: str  # "string" | "number" | "integer" | "boolean" | "strings"
    default: Any  # None: no default (required, or unset means off)
    doc: str
    above: float | None = None  # exclusive lower bound
    at_least: float | None = None  # inclusive lower bound
    maximum: float | None = None  # inclusive upper bound; numbers without one are capped by config.MAX_NUMBER
    choices: tuple[str, ...] | None = None


def _s(section: str, key: str, type_: str, default: Any, doc: str, **kw: Any) -> Setting:
    return Setting(section, key, type_, default, doc, **kw)


NETWORKS = ("mainnet", "testnet", "signet", "regtest")
SOURCE_MODES = ("address", "block", "auto")

SETTINGS: tuple[Setting, ...] = (
    _s("monitor", "network", "string", "mainnet", "Bitcoin network every address is checked against", choices=NETWORKS),
    _s("monitor", "storage", "string", "./treasury-monitor.db", "SQLite file, relative to the working directory"),
    # [[sources]]: every type
    _s("sources", "timeout", "number", 10.0, "seconds per request", above=0, maximum=_HOUR),
    _s("sources", "retries", "integer", 3, "attempts per request, the first included", at_least=1, maximum=10),
    _s("sources", "poll_interval", "number", 60.0, "seconds between polls of the source", above=0, maximum=_DAY),
    # Esplora
    _s("sources", "rate_limit", "number", 1.0, "requests per second, per base URL", above=0, maximum=1_000_000),
    _s("sources", "mode", "string", "address", "how the source follows the chain", choices=SOURCE_MODES),
    _s("sources", "push_cap", "integer", 1500, "addresses tracked by websocket push", at_least=1, maximum=100_000),
    _s("sources", "mempool_checks", "integer", 25, "block mode: addresses whose mempool is read per poll", at_least=0),
    # bitcoind
    _s("sources", "max_blocks", "integer", 20, "blocks read per poll", at_least=1, maximum=10_000),
    _s("sources", "max_mempool_txs", "integer", 10_000, "mempool transactions read per poll", at_least=0, maximum=1_000_000),
    _s("sources", "mempool", "boolean", True, "read the node's mempool"),
    _s("sources", "start_height", "integer", None, "first block height read", at_least=0, maximum=100_000_000),
    # EVM
    _s("sources", "chain_id", "integer", None, "EVM chain id, checked against the node at start", at_least=1, maximum=2**53 - 1),
    _s("sources", "confirmations", "integer", 12, "blocks before an EVM transfer counts", at_least=0, maximum=10_000),
    _s("sources", "max_log_range", "integer", 2000, "eth_getLogs blocks per query", at_least=1, maximum=1_000_000),
    _s("sources", "start_block", "integer", None, "first EVM block read", at_least=0, maximum=10**12),
    _s("sources.tokens", "decimals", "integer", None, "the token's decimals", at_least=0, maximum=255),
    # [prices]
    _s("prices", "sources", "strings", ("coinbase", "kraken", "coingecko"), "price sources in failover order"),
    _s("prices", "staleness", "integer", 7200, "seconds a price observation stays usable", above=0, maximum=_YEAR),
    _s("prices", "refresh_interval", "number", 600.0, "seconds between price refreshes in the daemon", above=0, maximum=_DAY),
    # [alerts]
    _s(
        "alerts",
        "explorer_url",
        "string",
        "https://mempool.space/tx/{txid}",
        'transaction link in alerts ({txid}); "" for no links',
    ),
    _s(
        "alerts",
        "max_age",
        "integer",
        86_400,
        "seconds: older flows are classified but not alerted",
        at_least=0,
        maximum=10 * _YEAR,
    ),
    _s("alerts", "give_up_after", "number", 86_400.0, "seconds an undelivered alert is retried", above=0, maximum=_YEAR),
    _s("alerts", "retry_base", "number", 5.0, "seconds, first backoff step of the outbox", above=0, maximum=_DAY),
    _s("alerts", "retry_cap", "number", 900.0, "seconds, longest backoff step of the outbox", above=0, maximum=_WEEK),
    _s("alerts", "dispatch_interval", "number", 2.0, "seconds between outbox passes in the daemon", above=0, maximum=_HOUR),
    _s("alerts", "notify_confirmations", "boolean", False, "an update when an alerted unconfirmed outflow confirms"),
    _s("alerts", "incident_window", "integer", 7 * _DAY, "seconds: a sale this close to an incident joins it", above=0),
    _s("alerts", "group_wait", "integer", 0, "seconds an incident's first message waits for followers", at_least=0),
    _s("alerts", "group_interval", "integer", 0, "seconds at least between two updates of an incident", at_least=0),
    _s("alerts.channels", "min_interval", "number", None, "seconds at least between two messages", maximum=_DAY),
    _s("alerts.channels", "timeout", "number", None, "seconds per delivery attempt", maximum=_HOUR),
    # [daemon]
    _s("daemon", "host", "string", "127.0.0.1", "HTTP bind address (a token is required off loopback)"),
    _s("daemon", "port", "integer", 8787, "HTTP port", at_least=0, maximum=65_535),
    _s("daemon", "shutdown_grace", "number", 10.0, "seconds to flush the outbox on SIGTERM", at_least=0, maximum=_HOUR),
    _s(
        "daemon", "unhealthy_after", "number", 600.0, "seconds a source may fail before /healthz says 503", above=0, maximum=_WEEK
    ),
    _s("daemon", "digest_hour", "integer", 8, "UTC hour of the daily digest (0-23); -1 disables it", at_least=-1),
    _s("daemon", "digest_channels", "strings", (), "channels of the digest; empty: every rule's channels"),
    # [discovery]
    _s("discovery", "cospend", "boolean", True, "learn addresses spent together with known ones"),
    _s("discovery", "pools", "boolean", True, "follow mining pools' payouts"),
    _s("discovery", "trace", "boolean", True, "trace unknown destinations hop by hop"),
    _s("discovery", "interval", "number", 600.0, "seconds between discovery passes", above=0, maximum=_WEEK),
    _s("discovery", "pool_min_payouts", "integer", 2, "payouts that make a recipient a candidate", at_least=1, maximum=1_000),
    _s(
        "discovery",
        "pool_auto_accept_payouts",
        "integer",
        0,
        "accept candidates paid this often; 0: never",
        at_least=0,
        maximum=1_000,
    ),
    _s("discovery", "trace_max_hops", "integer", 20, "hops a trace follows", at_least=1, maximum=200),
    _s(
        "discovery",
        "trace_value_floor_btc",
        "number",
        0.1,
        "branches smaller than this are not followed",
        at_least=0,
        maximum=21_000_000,
    ),
    _s(
        "discovery",
        "trace_floor_share",
        "number",
        0.01,
        "nor branches below this share of the traced amount",
        at_least=0,
        maximum=1,
    ),
    _s("discovery", "trace_max_branches", "integer", 16, "outputs followed at once per trace", at_least=1, maximum=256),
    _s("discovery", "trace_max_age_days", "number", 180.0, "days a waiting trace lives", above=0, maximum=36_500),
    _s(
        "discovery",
        "trace_significant_share",
        "number",
        0.10,
        "share reaching exchanges/OTC that re-classifies",
        above=0,
        maximum=1,
    ),
    _s("discovery", "provisional", "boolean", True, "watch a sweep's fresh destination at once, provisionally"),
    _s(
        "discovery",
        "provisional_settle_days",
        "number",
        30.0,
        "days a provisional address sits before it counts",
        above=0,
        maximum=3_650,
    ),
    # [miners]
    _s("miners", "follow", "boolean", True, "keep the miner view current once a backfill started it"),
    _s("miners", "interval", "number", 120.0, "seconds between the daemon's miner-view scans", above=0, maximum=_WEEK),
)

_BY_KEY = {(s.section, s.key): s for s in SETTINGS}
assert len(_BY_KEY) == len(SETTINGS), "a setting is in the table twice"


def setting(section: str, key: str) -> Setting:
    """The table's row for `section`.`key`."""
    return _BY_KEY[(section, key)]


def max_values() -> dict[str, float]:
    """Upper bound per key name, across sections (a key has one bound wherever it appears)."""
    out: dict[str, float] = {}
    for s in SETTINGS:
        if s.maximum is not None:
            if out.setdefault(s.key, s.maximum) != s.maximum:
                raise ValueError(f"{s.key}: two different upper bounds in the settings table")
    return out
