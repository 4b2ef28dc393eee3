"""config.toml → one typed, frozen `Config`, checked completely before anything runs.

Rules (STYLE.md rule 4):
- TOML is parsed once (tomllib) into frozen dataclasses; an unknown key or section is an error.
- Every problem is collected and raised together as `ConfigError(problems)`, each a line
  `key.path: message` naming the key path and the bad value (`sources[0].timeout: expected a number,
  got 'ten'`). Values that may be secrets are never echoed.
- Secrets are written `{ env = "NAME" }` (or `{ file = "path" }`) and become `Secret`, which prints as
  `***`; they are accepted only where a field says so.
- Defaults, bounds and docs of scalar keys are the settings table (`monitor/settings.py`), read with
  `_opt`; the `DEFAULT_*` names below are taken from it.
- Plain `http://` to a host other than loopback is allowed but logged as a warning (and kept in
  `Config.warnings` so `check-config` can show it).

Paths: `monitor.storage` is used as given, so a relative path is relative to the working directory of
the process (as sqlite would take it), not to the config file. `{ file = "..." }` secrets are relative to
the directory of the config file (`base_dir`), because they are usually shipped next to it.

Adding a section (e.g. `[alerts]`): write a frozen dataclass, one `_parse_<section>(value, ctx)`
function built from the shared helpers (`_check_keys`, `_take`, `_tables`, `_take_secret`), add the
name to `SECTIONS` and a field to `Config`, and call the function in `parse_config`.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alerts.router import DEFAULT_RULE_VERDICTS, MODES, BalanceRule, DormancyRule, Rule
from monitor.core.classify import Thresholds
from monitor.core.registry import normalise_address
from monitor.model import ENTITY_KINDS, SEVERITIES, VERDICTS, ConfigError, Entity, EntityAddress, Fact, Profile
from monitor.settings import max_values, setting
from watchers.addresses import InvalidAddress, validate_address

__all__ = [
    "Config",
    "SourceConfig",
    "PricesConfig",
    "AlertsConfig",
    "ChannelConfig",
    "DaemonConfig",
    "DiscoveryConfig",
    "MinersConfig",
    "Secret",
    "load_config",
    "parse_config",
    "NETWORKS",
    "SECTIONS",
    "SOURCE_TYPES",
    "SOURCE_CHAINS",
    "SOURCE_MODES",
    "DEFAULT_NETWORK",
    "DEFAULT_STORAGE",
    "DEFAULT_CHAIN",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_MODE",
    "DEFAULT_WATCH",
]

log = logging.getLogger(__name__)

# --- defaults and allowed values: the one place they are written -----------------------------------

DEFAULT_NETWORK = setting("monitor", "network").default
DEFAULT_STORAGE = setting("monitor", "storage").default
DEFAULT_CHAIN = "bitcoin"
DEFAULT_RATE_LIMIT = setting("sources", "rate_limit").default
DEFAULT_TIMEOUT = setting("sources", "timeout").default
DEFAULT_RETRIES = setting("sources", "retries").default
DEFAULT_POLL_INTERVAL = setting("sources", "poll_interval").default
DEFAULT_MODE = setting("sources", "mode").default
DEFAULT_WATCH = True
DEFAULT_PRICE_SOURCES = setting("prices", "sources").default
DEFAULT_PRICE_STALENESS = setting("prices", "staleness").default
DEFAULT_EXPLORER_URL = setting("alerts", "explorer_url").default
DEFAULT_ALERT_MAX_AGE = setting("alerts", "max_age").default
DEFAULT_GIVE_UP_AFTER = setting("alerts", "give_up_after").default
DEFAULT_RETRY_BASE = setting("alerts", "retry_base").default
DEFAULT_RETRY_CAP = setting("alerts", "retry_cap").default
DEFAULT_DISPATCH_INTERVAL = setting("alerts", "dispatch_interval").default
DEFAULT_INCIDENT_WINDOW = setting("alerts", "incident_window").default
DEFAULT_GROUP_WAIT = setting("alerts", "group_wait").default
DEFAULT_GROUP_INTERVAL = setting("alerts", "group_interval").default
DEFAULT_HTTP_HOST = setting("daemon", "host").default
DEFAULT_HTTP_PORT = setting("daemon", "port").default
DEFAULT_SHUTDOWN_GRACE = setting("daemon", "shutdown_grace").default
DEFAULT_UNHEALTHY_AFTER = setting("daemon", "unhealthy_after").default
DEFAULT_DIGEST_HOUR = setting("daemon", "digest_hour").default
DEFAULT_PRICE_INTERVAL = setting("prices", "refresh_interval").default
DEFAULT_DISCOVERY_INTERVAL = setting("discovery", "interval").default
DEFAULT_MINERS_FOLLOW = setting("miners", "follow").default
DEFAULT_MINERS_INTERVAL = setting("miners", "interval").default

#: Largest value of each numeric key (in any section), from the settings table: beyond it a value is a
#: mistake that would break the daemon, e.g. `poll_interval = 1e300` does not fit a timer.
MAX_VALUES: dict[str, float] = max_values()
#: Any other number (thresholds, profile figures, USD amounts): beyond this it is a typo, not a setting.
MAX_NUMBER = 1e15
DEFAULT_POOL_OWNERS = {"MARA Pool": "MARA"}  # pools-v2 pool name → the miner whose own pool it is
DEFAULT_POOL_MIN_PAYOUTS = setting("discovery", "pool_min_payouts").default
DEFAULT_TRACE_MAX_HOPS = setting("discovery", "trace_max_hops").default
DEFAULT_TRACE_VALUE_FLOOR_BTC = setting("discovery", "trace_value_floor_btc").default
DEFAULT_TRACE_FLOOR_SHARE = setting("discovery", "trace_floor_share").default
DEFAULT_TRACE_MAX_BRANCHES = setting("discovery", "trace_max_branches").default
DEFAULT_TRACE_MAX_AGE_DAYS = setting("discovery", "trace_max_age_days").default
DEFAULT_TRACE_SIGNIFICANT_SHARE = setting("discovery", "trace_significant_share").default
DEFAULT_PROVISIONAL_SETTLE_DAYS = setting("discovery", "provisional_settle_days").default

NETWORKS = setting("monitor", "network").choices or ()
PRICE_SOURCES = ("coinbase", "kraken", "coingecko", "csv")
CHANNEL_TYPES = ("slack", "email", "webhook", "console", "apprise")
SOURCE_TYPES = ("esplora", "evm", "bitcoind")
SOURCE_CHAINS = ("bitcoin", "ethereum")
#: The chain each source type serves.
SOURCE_TYPE_CHAINS = {"esplora": ("bitcoin",), "evm": ("ethereum",), "bitcoind": ("bitcoin",)}
DEFAULT_PUSH_CAP = setting("sources", "push_cap").default
DEFAULT_MEMPOOL_CHECKS = setting("sources", "mempool_checks").default
DEFAULT_EVM_CONFIRMATIONS = setting("sources", "confirmations").default
DEFAULT_MAX_LOG_RANGE = setting("sources", "max_log_range").default
SOURCE_MODES = setting("sources", "mode").choices or ()
#: Top-level sections, in the order they are parsed.
SECTIONS = ("monitor", "sources", "entities", "classify", "prices", "alerts", "daemon", "discovery", "miners")

_MONITOR_KEYS = ("network", "storage")
_SOURCE_KEYS = (
    "name",
    "type",
    "chain",
    "urls",
    "rate_limit",
    "timeout",
    "retries",
    "poll_interval",
    "mode",
    "headers",
    "push_url",
    "push_cap",
    "mempool_checks",
)
#: Keys of a bitcoind source (Bitcoin Core JSON-RPC): one `url`, credentials by cookie file or secrets.
_BITCOIND_SOURCE_KEYS = (
    "name",
    "type",
    "chain",
    "timeout",
    "retries",
    "poll_interval",
    "url",
    "network",
    "cookie_file",
    "rpc_user",
    "rpc_password",
    "max_blocks",
    "max_mempool_txs",
    "mempool",
    "start_height",
    "zmq_hashblock",
    "zmq_rawtx",
)
#: Keys of an evm source: the common ones, then its own (it has one RPC `url`, no `urls`).
_EVM_SOURCE_KEYS = (
    "name",
    "type",
    "chain",
    "timeout",
    "retries",
    "poll_interval",
    "url",
    "chain_id",
    "confirmations",
    "max_log_range",
    "start_block",
    "tokens",
    "ws_url",
)
_TOKEN_KEYS = ("symbol", "address", "decimals")
_ENTITY_KEYS = ("name", "kind", "addresses", "ethereum", "note", "watch", "profile")
_ADDRESS_KEYS = ("address", "source", "label", "as_of")
_PROFILE_FACTS = ("holdings_btc", "monthly_production_btc", "cash_cost_usd", "efficiency_j_th")
_PROFILE_KEYS = (*_PROFILE_FACTS, "strategy_tags", "strategy_source")
_FACT_KEYS = ("value", "source", "as_of", "note", "quote")
_SECRET_KEYS = ("env", "file")
_CLASSIFY_KEYS = tuple(f.name for f in fields(Thresholds))
_PRICE_KEYS = ("sources", "csv", "staleness", "refresh_interval")
_ALERTS_KEYS = (
    "explorer_url",
    "max_age",
    "give_up_after",
    "retry_base",
    "retry_cap",
    "dispatch_interval",
    "notify_confirmations",
    "incident_window",
    "group_wait",
    "group_interval",
    "channels",
    "rules",
    "dormancy",
    "balance",
)
_DORMANCY_KEYS = ("name", "entities", "min_years", "min_btc", "channels")
_BALANCE_KEYS = ("name", "entities", "below_btc", "drop_pct", "within_days", "channels")
_RULE_KEYS = ("name", "entities", "kinds", "verdicts", "min_severity", "min_usd", "channels", "mode")
#: Settings per channel type: key → (kind, how): "plain", "secret" (must be { env } / { file }), "either".
_CHANNEL_SETTINGS: dict[str, dict[str, tuple[str, str]]] = {
    "slack": {
        "webhook_url": ("string", "secret"),
        "bot_token": ("string", "secret"),  # chat.postMessage: threads updates and incidents
        "channel_id": ("string", "plain"),
        "api_url": ("string", "plain"),
        "timeout": ("number", "plain"),
    },
    "email": {
        "host": ("string", "plain"),
        "port": ("integer", "plain"),
        "sender": ("string", "plain"),
        "recipients": ("strings", "plain"),
        "username": ("string", "either"),
        "password": ("string", "secret"),
        "security": ("string", "plain"),
        "timeout": ("number", "plain"),
    },
    "webhook": {
        "url": ("string", "secret"),
        "secret": ("string", "secret"),
        "timeout": ("number", "plain"),
        "legacy_headers": ("boolean", "plain"),  # deprecated: also send X-Timestamp/X-Signature/X-Dedup-Key
    },
    "console": {"stream": ("string", "plain")},
    "apprise": {"url": ("string", "secret"), "format": ("string", "plain"), "timeout": ("number", "plain")},
}
_CHANNEL_REQUIRED = {
    "slack": (),
    "email": ("host", "sender", "recipients"),
    "webhook": ("url", "secret"),
    "console": (),
    "apprise": ("url",),
}
_DISCOVERY_KEYS = (
    "cospend",
    "pools",
    "trace",
    "interval",
    "pool_owners",
    "pool_min_payouts",
    "pool_auto_accept_payouts",
    "trace_max_hops",
    "trace_value_floor_btc",
    "trace_floor_share",
    "trace_max_branches",
    "trace_max_age_days",
    "trace_significant_share",
    "provisional",
    "provisional_settle_days",
)
_MINERS_KEYS = ("follow", "interval", "source")
_DAEMON_KEYS = ("host", "port", "token", "shutdown_grace", "unhealthy_after", "digest_hour", "digest_channels")
# Header names whose plain-string values are most likely credentials.
_SENSITIVE_HEADER = re.compile(r"auth|token|key|secret|cookie|password", re.IGNORECASE)
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# --- public types ---------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Secret:
    """A value read from the environment or a file; prints as `***` so reprs and logs never show it.

    `ref` says where it came from (`env ESPLORA_TOKEN`, `file secrets/token`) and is safe to print.
    `dataclasses.asdict` does copy the value: never serialise a Config with it.
    """

    _value: str
    ref: str = ""

    def reveal(self) -> str:
        """The secret value itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """One chain source (`[[sources]]`): where to fetch from and how politely."""

    name: str
    type: str  # one of SOURCE_TYPES
    urls: tuple[str, ...]  # base URLs, http(s), no trailing slash; tried in order (failover)
    chain: str = DEFAULT_CHAIN
    rate_limit: float = DEFAULT_RATE_LIMIT  # requests per second, per URL
    timeout: float = DEFAULT_TIMEOUT  # seconds per request
    retries: int = DEFAULT_RETRIES  # attempts per request, >= 1
    poll_interval: float = DEFAULT_POLL_INTERVAL  # seconds
    headers: tuple[tuple[str, str | Secret], ...] = ()
    mode: str = DEFAULT_MODE  # address | block | auto
    # EVM sources (type "evm"): one JSON-RPC URL (may carry an API key, so it may be a secret)
    url: str | Secret | None = None
    chain_id: int | None = None
    confirmations: int = DEFAULT_EVM_CONFIRMATIONS
    max_log_range: int = DEFAULT_MAX_LOG_RANGE
    start_block: int | None = None
    tokens: tuple[tuple[str, str, int], ...] | None = None  # (symbol, address, decimals); None: the defaults for chain id 1

    # Esplora push (mempool.space websocket)
    push_url: str | None = None
    push_cap: int = DEFAULT_PUSH_CAP
    mempool_checks: int = DEFAULT_MEMPOOL_CHECKS  # Esplora block mode: addresses whose mempool is read per poll
    # bitcoind sources (type "bitcoind")
    network: str | None = None  # checked against the node's chain; default [monitor].network
    cookie_file: Path | None = None
    rpc_user: str | Secret | None = None
    rpc_password: Secret | None = None
    max_blocks: int = 20
    max_mempool_txs: int = 10_000
    mempool: bool = True
    start_height: int | None = None
    zmq_hashblock: str | None = None
    zmq_rawtx: str | None = None
    ws_url: str | Secret | None = None  # EVM: websocket for the newHeads subscription (push)

    def revealed_url(self) -> str | None:
        """The EVM RPC URL with its secret revealed (never log it)."""
        return self.url.reveal() if isinstance(self.url, Secret) else self.url

    def revealed_headers(self) -> dict[str, str]:
        """Headers with secrets revealed, to hand to the HTTP client (watchers cannot see `Secret`)."""
        return {k: v.reveal() if isinstance(v, Secret) else v for k, v in self.headers}


@dataclass(frozen=True, kw_only=True)
class PricesConfig:
    """[prices]: where BTC/USD (and ETH/USD) come from, in failover order."""

    sources: tuple[str, ...] = DEFAULT_PRICE_SOURCES
    csv: Path | None = (
        None  # series for the `csv` source (date,close or time,open,high,low,close); None: the bundled simulated BTC/USD series
    )
    staleness: int = DEFAULT_PRICE_STALENESS
    refresh_interval: float = DEFAULT_PRICE_INTERVAL


@dataclass(frozen=True, kw_only=True)
class ChannelConfig:
    """One [[alerts.channels]] entry; secret settings stay `Secret` until `revealed_settings()`."""

    name: str
    type: str
    settings: tuple[tuple[str, Any], ...] = ()
    min_interval: float | None = None

    def revealed_settings(self) -> dict[str, Any]:
        """Settings with secrets revealed, for building the channel (never log the result)."""
        out = {k: (v.reveal() if isinstance(v, Secret) else v) for k, v in self.settings}
        if self.min_interval is not None:
            out["min_interval"] = self.min_interval
        return out

    def secret_values(self) -> list[str]:
        """The revealed secret values, so logs can redact them."""
        return [v.reveal() for _, v in self.settings if isinstance(v, Secret)]


@dataclass(frozen=True, kw_only=True)
class AlertsConfig:
    """[alerts]: channels, routing rules and outbox behaviour."""

    explorer_url: str | None = DEFAULT_EXPLORER_URL
    max_age: int = DEFAULT_ALERT_MAX_AGE
    give_up_after: float = DEFAULT_GIVE_UP_AFTER
    retry_base: float = DEFAULT_RETRY_BASE
    retry_cap: float = DEFAULT_RETRY_CAP
    dispatch_interval: float = DEFAULT_DISPATCH_INTERVAL
    notify_confirmations: bool = False  # an update when an alerted unconfirmed outflow confirms
    incident_window: int = DEFAULT_INCIDENT_WINDOW
    group_wait: int = DEFAULT_GROUP_WAIT
    group_interval: int = DEFAULT_GROUP_INTERVAL
    channels: tuple[ChannelConfig, ...] = ()
    rules: tuple[Rule, ...] = ()
    dormancy: tuple[DormancyRule, ...] = ()
    balance: tuple[BalanceRule, ...] = ()

    def channel(self, name: str) -> ChannelConfig:
        """The channel called `name`.

        :raises KeyError: when there is none.
        """
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True, kw_only=True)
class DiscoveryConfig:
    """[discovery]: learning addresses (co-spend, pool payouts) and tracing unknown destinations."""

    cospend: bool = True
    pools: bool = True
    trace: bool = True
    interval: float = DEFAULT_DISCOVERY_INTERVAL
    pool_owners: tuple[tuple[str, str], ...] = tuple(DEFAULT_POOL_OWNERS.items())
    pool_min_payouts: int = DEFAULT_POOL_MIN_PAYOUTS
    pool_auto_accept_payouts: int | None = None  # accept candidates paid at least this often; None: never
    trace_max_hops: int = DEFAULT_TRACE_MAX_HOPS
    trace_value_floor_btc: float = DEFAULT_TRACE_VALUE_FLOOR_BTC
    trace_floor_share: float = DEFAULT_TRACE_FLOOR_SHARE
    trace_max_branches: int = DEFAULT_TRACE_MAX_BRANCHES
    trace_max_age_days: float = DEFAULT_TRACE_MAX_AGE_DAYS
    trace_significant_share: float = DEFAULT_TRACE_SIGNIFICANT_SHARE
    provisional: bool = True  # watch a sweep's fresh destination at once, provisionally
    provisional_settle_days: float = DEFAULT_PROVISIONAL_SETTLE_DAYS


@dataclass(frozen=True, kw_only=True)
class MinersConfig:
    """[miners]: the daemon's upkeep of the chain-wide miner view."""

    follow: bool = DEFAULT_MINERS_FOLLOW  # scan new blocks' coinbases (and reorgs) once something is stored
    interval: float = DEFAULT_MINERS_INTERVAL
    source: str | None = None  # the [[sources]] entry read; None: the first bitcoin source that can


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """[daemon]: the HTTP endpoint, shutdown grace, health bound and daily digest."""

    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    token: Secret | None = None  # bearer token; required when `host` is not loopback
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    unhealthy_after: float = DEFAULT_UNHEALTHY_AFTER
    digest_hour: int = DEFAULT_DIGEST_HOUR
    digest_channels: tuple[str, ...] = ()  # default: every channel of every rule


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole validated configuration."""

    network: str = DEFAULT_NETWORK  # one of NETWORKS; every address is checked against it
    storage: Path = Path(DEFAULT_STORAGE)  # as given: relative to the working directory
    sources: tuple[SourceConfig, ...] = ()
    entities: tuple[Entity, ...] = ()
    origin: str = "config.toml"  # the file (or label) this came from
    warnings: tuple[str, ...] = ()  # non-fatal findings, also logged
    classify: Thresholds = field(default_factory=Thresholds)
    prices: PricesConfig = field(default_factory=PricesConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    miners: MinersConfig = field(default_factory=MinersConfig)

    def source(self, name: str) -> SourceConfig:
        """The source called `name`.

        :raises KeyError: when there is none.
        """
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)


# --- public functions -----------------------------------------------------------------------------


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; `env` replaces `os.environ` for `{ env = ... }` secrets.

    :raises ConfigError: listing every problem; a missing file or TOML syntax error names file and line.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the file ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}: line {line}: not UTF-8 text") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {_toml_error(exc)}") from exc
    if not data:  # an empty (or all-comment) file is a mistake: it would run with every default, watching nothing
        raise ConfigError(
            f"{p}: the file has no settings; start from the example config.toml "
            "(treasury-monitor check-config says what is wrong with a config)"
        )
    return parse_config(data, base_dir=p.parent, env=env, origin=str(p))


def parse_config(
    data: dict,
    *,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    origin: str = "config.toml",
) -> Config:
    """Validate parsed TOML into a Config; `base_dir` anchors `{ file = ... }` secrets.

    :raises ConfigError: listing every problem found, not only the first.
    """
    ctx = _Context(base_dir=Path(base_dir), env=os.environ if env is None else env, origin=origin)
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a TOML document (a table), got {_show(data)}")
    _check_keys(data, SECTIONS, "", ctx.problems, what="section")
    network, storage = _parse_monitor(data.get("monitor", {}), ctx)
    sources = _parse_sources(data.get("sources", []), ctx)
    entities = _parse_entities(data.get("entities", []), ctx, network)
    classify = _parse_classify(data.get("classify", {}), ctx)
    prices = _parse_prices(data.get("prices", {}), ctx)
    alerts = _parse_alerts(data.get("alerts", {}), ctx)
    daemon = _parse_daemon(data.get("daemon", {}), ctx, alerts)
    discovery = _parse_discovery(data.get("discovery", {}), ctx)
    miners = _parse_miners(data.get("miners", {}), ctx, sources)
    if ctx.problems or network is None:
        raise ConfigError(ctx.problems)
    return Config(
        network=network,
        storage=storage,
        sources=sources,
        entities=entities,
        origin=origin,
        warnings=tuple(ctx.warnings),
        classify=classify,
        prices=prices,
        alerts=alerts,
        daemon=daemon,
        discovery=discovery,
        miners=miners,
    )


# --- shared helpers -------------------------------------------------------------------------------


@dataclass
class _Context:
    base_dir: Path
    env: Mapping[str, str]
    origin: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, path: str, message: str) -> None:
        line = f"{path}: {message}"
        self.warnings.append(line)
        log.warning("config %s", line)


@dataclass(frozen=True)
class _Kind:
    """A TOML value type: its name in messages, its test, and the conversion to the stored type."""

    name: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda v: v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


STRING = _Kind("a string", lambda v: isinstance(v, str))
NUMBER = _Kind("a number", _is_number, float)
INTEGER = _Kind("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
BOOLEAN = _Kind("true or false", lambda v: isinstance(v, bool))
TABLE = _Kind("a table", lambda v: isinstance(v, dict))
ARRAY = _Kind("an array", lambda v: isinstance(v, list))
STRINGS = _Kind("an array of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), tuple)

_SETTING_KINDS = {"string": STRING, "number": NUMBER, "integer": INTEGER, "strings": STRINGS, "boolean": BOOLEAN}

_REQUIRED: Any = object()


def _join(path: str, key: str) -> str:
    """Key path of `key` inside `path`, quoting keys that are not bare TOML keys."""
    k = key if _BARE_KEY.match(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}.{k}" if path else k


def _show(value: Any, limit: int = 120) -> str:
    """A bad value as the user wrote it, short enough for one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _type_name(value: Any) -> str:
    """What a value is, without showing it (for values that may be secrets)."""
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time" if isinstance(value, (date, datetime)) else type(value).__name__


def _check_keys(table: dict, allowed: tuple[str, ...], path: str, problems: list[str], *, what: str = "key") -> None:
    """Record every key of `table` not in `allowed`, with the allowed keys and a near match."""
    for key in table:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(f"{_join(path, key)}: unknown {what} (expected one of: {', '.join(allowed)}{hint})")


def _take(
    table: dict,
    key: str,
    kind: _Kind,
    path: str,
    problems: list[str],
    default: Any = _REQUIRED,
    *,
    choices: tuple[str, ...] | None = None,
    above: float | None = None,
    at_least: float | None = None,
    nonempty: bool = False,
) -> Any:
    """`table[key]` checked against `kind` and the constraints, converted; `default` when absent.

    A problem is recorded (and `default`, or None for a required key, returned) when the key is
    missing but required, has the wrong type, or breaks a constraint. Every number also has a ceiling:
    `MAX_VALUES[key]`, else `MAX_NUMBER`.
    """
    p = _join(path, key)
    fallback = None if default is _REQUIRED else default
    if key not in table:
        if default is _REQUIRED:
            problems.append(f"{p}: required key is missing")
        return fallback
    value = table[key]
    if not kind.accepts(value):
        problems.append(f"{p}: expected {kind.name}, got {_show(value)}")
        return fallback
    if nonempty and not (value.strip() if isinstance(value, str) else value):
        problems.append(f"{p}: must not be empty")
        return fallback
    if choices is not None and value not in choices:
        problems.append(f"{p}: {_show(value)} is not one of {', '.join(choices)}")
        return fallback
    if above is not None and not value > above:
        problems.append(f"{p}: must be greater than {above:g}, got {_show(value)}")
        return fallback
    if at_least is not None and not value >= at_least:
        problems.append(f"{p}: must be at least {at_least:g}, got {_show(value)}")
        return fallback
    if kind is NUMBER or kind is INTEGER:
        ceiling = MAX_VALUES.get(key, MAX_NUMBER)
        if value > ceiling:
            problems.append(f"{p}: must be at most {ceiling:,g}, got {_show(value)}")
            return fallback
    return kind.convert(value)


def _opt(table: dict, section: str, key: str, path: str, problems: list[str]) -> Any:
    """`table[key]` checked by its row of the settings table (kind, default, bounds, choices)."""
    row = setting(section, key)
    return _take(
        table,
        key,
        _SETTING_KINDS[row.type],
        path,
        problems,
        row.default,
        choices=row.choices,
        above=row.above,
        at_least=row.at_least,
    )


def _tables(value: Any, path: str, problems: list[str], *, section: bool = False) -> Iterator[tuple[str, dict]]:
    """(path, table) for each table in an array of tables; records items that are not tables."""
    if not isinstance(value, list):
        want = f"an array of tables ([[{path}]])" if section else "an array of tables"
        problems.append(f"{path}: expected {want}, got {_show(value)}")
        return
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        if isinstance(item, dict):
            yield p, item
        else:
            problems.append(f"{p}: expected a table, got {_show(item)}")


def _take_date(table: dict, key: str, path: str, problems: list[str]) -> str:
    """An ISO date (`2026-03-01`, quoted or a TOML date) as a string; '' when absent."""
    p = _join(path, key)
    value = table.get(key, "")
    if isinstance(value, datetime):
        problems.append(f"{p}: expected a date (YYYY-MM-DD), got the date-time {_show(value)}")
        return ""
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        problems.append(f"{p}: expected a date (YYYY-MM-DD), got {_show(value)}")
        return ""
    if value == "":
        return ""
    try:
        if not _ISO_DATE.match(value):
            raise ValueError
        date.fromisoformat(value)
    except ValueError:
        problems.append(f"{p}: {_show(value)} is not a date (YYYY-MM-DD)")
        return ""
    return value


def _take_secret(
    table: dict, key: str, path: str, ctx: _Context, *, plain_ok: bool, default: Any = _REQUIRED
) -> str | Secret | None:
    """A secret written `{ env = "NAME" }` or `{ file = "path" }`, or a plain string where `plain_ok`.

    Problems name the key and the variable or file, never the value.
    """
    p = _join(path, key)
    if key not in table:
        if default is _REQUIRED:
            ctx.problems.append(f"{p}: required key is missing")
            return None
        return default
    value = table[key]
    if isinstance(value, str):
        if plain_ok:
            return value
        ctx.problems.append(
            f'{p}: a secret must not be written in the file; set an environment variable and write {{ env = "NAME" }}'
        )
        return None
    if not isinstance(value, dict):
        want = 'a string or { env = "NAME" }' if plain_ok else '{ env = "NAME" }'
        ctx.problems.append(f"{p}: expected {want}, got {_type_name(value)}")
        return None
    _check_keys(value, _SECRET_KEYS, p, ctx.problems)
    given = [k for k in _SECRET_KEYS if k in value]
    if len(given) != 1:
        ctx.problems.append(f'{p}: give exactly one of {{ env = "NAME" }} or {{ file = "path" }}')
        return None
    how = given[0]
    ref = _take(value, how, STRING, p, ctx.problems, nonempty=True)
    if ref is None:
        return None
    if how == "env":
        secret = ctx.env.get(ref)
        if secret is None:
            ctx.problems.append(f"{p}: environment variable {ref} is not set")
            return None
        if not secret.strip():
            ctx.problems.append(f"{p}: environment variable {ref} is empty")
            return None
        return Secret(secret, f"env {ref}")
    file = Path(ref) if Path(ref).is_absolute() else ctx.base_dir / ref
    try:
        secret = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        ctx.problems.append(f"{p}: cannot read secret file {str(file)!r} ({reason})")
        return None
    if not secret:
        ctx.problems.append(f"{p}: secret file {str(file)!r} is empty")
        return None
    return Secret(secret, f"file {ref}")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: str, path: str, ctx: _Context) -> str | None:
    """A base URL: http(s), with a host, no credentials, query or fragment; trailing slash dropped."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ctx.problems.append(f"{path}: {_show(value)} is not a valid URL")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        ctx.problems.append(f"{path}: {_show(value)} is not an http(s) URL")
        return None
    if parts.username is not None or parts.password is not None:
        # Not echoed: the URL carries a credential.
        ctx.problems.append(f'{path}: must not embed credentials (user:password@); send them in headers with {{ env = "NAME" }}')
        return None
    if parts.query or parts.fragment:
        ctx.problems.append(f"{path}: a base URL must not carry a query string or fragment ({parts.scheme}://{parts.netloc}...)")
        return None
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        ctx.warn(path, f"{_show(value)} is plain http to a non-loopback host; traffic can be read and altered in transit")
    return value.rstrip("/")


# --- sections -------------------------------------------------------------------------------------


def _parse_monitor(value: Any, ctx: _Context) -> tuple[str | None, Path]:
    """[monitor]: network (None when invalid, so addresses are not judged against a wrong one) and storage."""
    if not isinstance(value, dict):
        ctx.problems.append(f"monitor: expected a table ([monitor]), got {_show(value)}")
        return None, Path(DEFAULT_STORAGE)
    _check_keys(value, _MONITOR_KEYS, "monitor", ctx.problems)
    before = len(ctx.problems)
    network = _opt(value, "monitor", "network", "monitor", ctx.problems)
    if len(ctx.problems) > before:
        network = None
    storage = _take(value, "storage", STRING, "monitor", ctx.problems, DEFAULT_STORAGE, nonempty=True)
    return network, Path(storage)


def _parse_sources(value: Any, ctx: _Context) -> tuple[SourceConfig, ...]:
    """[[sources]]: each chain source; names are unique."""
    out: list[SourceConfig] = []
    seen: dict[str, str] = {}
    for path, t in _tables(value, "sources", ctx.problems, section=True):
        pr = ctx.problems
        # the allowed keys depend on the type, which is judged (and reported) after the name
        keys = {"evm": _EVM_SOURCE_KEYS, "bitcoind": _BITCOIND_SOURCE_KEYS}.get(t.get("type"), _SOURCE_KEYS)
        _check_keys(t, keys, path, pr)
        name = _take(t, "name", STRING, path, pr, nonempty=True)
        if name is not None:
            if name in seen:
                pr.append(f"{path}.name: {_show(name)} is already the name of {seen[name]}")
            else:
                seen[name] = path
        type_ = _take(t, "type", STRING, path, pr, choices=SOURCE_TYPES)
        chain_default = SOURCE_TYPE_CHAINS.get(type_, (DEFAULT_CHAIN,))[0]
        chain = _take(t, "chain", STRING, path, pr, chain_default, choices=SOURCE_CHAINS)
        if type_ is not None and chain is not None and chain not in SOURCE_TYPE_CHAINS[type_]:
            pr.append(f"{path}.chain: a {type_} source serves {', '.join(SOURCE_TYPE_CHAINS[type_])}, not {chain!r}")
        if type_ == "evm":
            extra = _parse_evm_source(t, path, ctx)
        elif type_ == "bitcoind":
            extra = _parse_bitcoind_source(t, path, ctx)
        else:
            extra = _parse_push(t, path, ctx)
        out.append(
            SourceConfig(
                name=name,
                type=type_,
                chain=chain,
                urls=_parse_urls(t, path, ctx) if type_ in (None, "esplora") else (),
                **extra,
                rate_limit=_opt(t, "sources", "rate_limit", path, pr),
                timeout=_opt(t, "sources", "timeout", path, pr),
                retries=_opt(t, "sources", "retries", path, pr),
                poll_interval=_opt(t, "sources", "poll_interval", path, pr),
                mode=_opt(t, "sources", "mode", path, pr),
                headers=_parse_headers(t, path, ctx),
            )
        )
    return tuple(out)


def _parse_push(t: dict, path: str, ctx: _Context) -> dict[str, Any]:
    """An Esplora source's optional mempool.space websocket push: `push_url` (ws/wss), `push_cap`."""
    pr = ctx.problems
    url = _take(t, "push_url", STRING, path, pr, None, nonempty=True)
    if url is not None and urlsplit(url).scheme not in ("ws", "wss"):
        pr.append(f"{path}.push_url: {_show(url)} is not a ws:// or wss:// URL")
        url = None
    return {
        "push_url": url,
        "push_cap": _opt(t, "sources", "push_cap", path, pr),
        "mempool_checks": _opt(t, "sources", "mempool_checks", path, pr),
    }


def _parse_bitcoind_source(t: dict, path: str, ctx: _Context) -> dict[str, Any]:
    """A bitcoind source: url (no credentials in it), cookie file or user/password secrets, ZMQ."""
    pr = ctx.problems
    url = _take(t, "url", STRING, path, pr)
    if url is not None:
        url = _check_url(url, f"{path}.url", ctx)
    cookie = _take(t, "cookie_file", STRING, path, pr, None, nonempty=True)
    user = _take_secret(t, "rpc_user", path, ctx, plain_ok=True, default=None)
    password = _take_secret(t, "rpc_password", path, ctx, plain_ok=False, default=None)
    if cookie is not None and (user is not None or password is not None):
        pr.append(f"{path}: give either cookie_file or rpc_user/rpc_password, not both")
    if (user is None) != (password is None) and cookie is None:
        pr.append(f"{path}: rpc_user and rpc_password go together")
    cookie_path = None
    if cookie is not None:
        cookie_path = Path(cookie).expanduser()
        if not cookie_path.is_absolute():
            cookie_path = ctx.base_dir / cookie_path
    zmq = {}
    for key in ("zmq_hashblock", "zmq_rawtx"):
        v = _take(t, key, STRING, path, pr, None, nonempty=True)
        if v is not None and not re.match(r"^(tcp|ipc)://", v):
            pr.append(f"{path}.{key}: {_show(v)} is not a ZMQ endpoint (tcp://host:port)")
            v = None
        zmq[key] = v
    return {
        "url": url,
        "network": _take(t, "network", STRING, path, pr, None, choices=NETWORKS),
        "cookie_file": cookie_path,
        "rpc_user": user,
        "rpc_password": password if isinstance(password, Secret) else None,
        "max_blocks": _opt(t, "sources", "max_blocks", path, pr),
        "max_mempool_txs": _opt(t, "sources", "max_mempool_txs", path, pr),
        "mempool": _opt(t, "sources", "mempool", path, pr),
        "start_height": _opt(t, "sources", "start_height", path, pr),
        **zmq,
    }


def _parse_evm_source(t: dict, path: str, ctx: _Context) -> dict[str, Any]:
    """The keys of an evm source: url (may be a secret), chain_id, confirmations, ranges, tokens."""
    from watchers.addresses import validate_evm_address

    pr = ctx.problems
    url = _take_secret(t, "url", path, ctx, plain_ok=True)
    if isinstance(url, str):
        url = _check_url(url, f"{path}.url", ctx)
    ws = _take_secret(t, "ws_url", path, ctx, plain_ok=True, default=None)
    if isinstance(ws, str) and urlsplit(ws).scheme not in ("ws", "wss"):
        pr.append(f"{path}.ws_url: {_show(ws)} is not a ws:// or wss:// URL")
        ws = None
    out: dict[str, Any] = {
        "url": url,
        "ws_url": ws,
        "chain_id": _take(t, "chain_id", INTEGER, path, pr, at_least=1),
        "confirmations": _opt(t, "sources", "confirmations", path, pr),
        "max_log_range": _opt(t, "sources", "max_log_range", path, pr),
        "start_block": _opt(t, "sources", "start_block", path, pr),
    }
    if "tokens" in t:
        tokens = []
        for tp, tok in _tables(t["tokens"], f"{path}.tokens", pr):
            _check_keys(tok, _TOKEN_KEYS, tp, pr)
            symbol = _take(tok, "symbol", STRING, tp, pr, nonempty=True)
            addr = _take(tok, "address", STRING, tp, pr)
            decimals = _take(tok, "decimals", INTEGER, tp, pr, at_least=0)
            if addr is not None:
                try:
                    addr = validate_evm_address(addr)
                except ValueError as exc:
                    pr.append(f"{tp}.address: {exc}")
                    addr = None
            if symbol and addr and decimals is not None:
                tokens.append((symbol, addr, decimals))
        out["tokens"] = tuple(tokens)
    return out


def _parse_urls(t: dict, path: str, ctx: _Context) -> tuple[str, ...]:
    """A source's `urls`: a non-empty array of distinct http(s) base URLs."""
    raw = _take(t, "urls", ARRAY, path, ctx.problems)
    if raw is None:
        return ()
    p = f"{path}.urls"
    if not raw:
        ctx.problems.append(f"{p}: must list at least one URL")
        return ()
    urls: list[str] = []
    for i, item in enumerate(raw):
        ip = f"{p}[{i}]"
        if not isinstance(item, str):
            ctx.problems.append(f"{ip}: expected a string, got {_show(item)}")
            continue
        url = _check_url(item, ip, ctx)
        if url is None:
            continue
        if url in urls:
            ctx.problems.append(f"{ip}: {_show(item)} is already listed at {p}[{urls.index(url)}]")
            continue
        urls.append(url)
    return tuple(urls)


def _parse_headers(t: dict, path: str, ctx: _Context) -> tuple[tuple[str, str | Secret], ...]:
    """A source's `headers`: name → string or secret."""
    raw = _take(t, "headers", TABLE, path, ctx.problems, {})
    p = f"{path}.headers"
    out: list[tuple[str, str | Secret]] = []
    for name in raw:
        hp = _join(p, name)
        if not _HEADER_NAME.match(name):
            ctx.problems.append(f"{hp}: {_show(name)} is not a valid HTTP header name")
            continue
        value = _take_secret(raw, name, p, ctx, plain_ok=True)
        if value is None:
            continue
        text = value.reveal() if isinstance(value, Secret) else value
        if "\r" in text or "\n" in text:
            ctx.problems.append(f"{hp}: header value contains a line break")
            continue
        if isinstance(value, str) and _SENSITIVE_HEADER.search(name):
            ctx.warn(hp, 'looks like a credential written in the file; prefer { env = "NAME" }')
        out.append((name, value))
    return tuple(out)


def _parse_entities(value: Any, ctx: _Context, network: str | None) -> tuple[Entity, ...]:
    """[[entities]]: names unique, each address valid on `network` and owned by one entity only.

    With no valid network, addresses are checked for shape and duplicates only.
    """
    out: list[Entity] = []
    names: dict[str, str] = {}
    owners: dict[str, str] = {}  # canonical address → key path where it was first listed
    for path, t in _tables(value, "entities", ctx.problems, section=True):
        pr = ctx.problems
        _check_keys(t, _ENTITY_KEYS, path, pr)
        name = _take(t, "name", STRING, path, pr, nonempty=True)
        if name is not None:
            if name in names:
                pr.append(f"{path}.name: {_show(name)} is already the name of {names[name]}")
            else:
                names[name] = path
        kind = _take(t, "kind", STRING, path, pr, choices=ENTITY_KINDS)
        addresses: list[EntityAddress] = []
        raw = _take(t, "addresses", ARRAY, path, pr, [])
        for i, item in enumerate(raw):
            a = _parse_address(item, f"{path}.addresses[{i}]", ctx, network, f"{ctx.origin} {path}")
            if a is None:
                continue
            where = f"{path}.addresses[{i}]"
            if a.address in owners:
                pr.append(f"{where}: {_show(a.address)} is already listed at {owners[a.address]}")
                continue
            owners[a.address] = f"{where} (entity {_show(name)})" if name is not None else where
            addresses.append(a)
        for i, item in enumerate(_take(t, "ethereum", ARRAY, path, pr, [])):
            a = _parse_evm_address(item, f"{path}.ethereum[{i}]", ctx, f"{ctx.origin} {path}")
            if a is None:
                continue
            key = a.address.lower()
            if key in owners:
                pr.append(f"{path}.ethereum[{i}]: {_show(a.address)} is already listed at {owners[key]}")
                continue
            owners[key] = f"{path}.ethereum[{i}] (entity {_show(name)})" if name is not None else f"{path}.ethereum[{i}]"
            addresses.append(a)
        profile_raw = _take(t, "profile", TABLE, path, pr, None)
        out.append(
            Entity(
                name=name,
                kind=kind,
                addresses=tuple(addresses),
                profile=_parse_profile(profile_raw, f"{path}.profile", ctx) if profile_raw is not None else Profile(),
                note=_take(t, "note", STRING, path, pr, ""),
                watch=_take(t, "watch", BOOLEAN, path, pr, DEFAULT_WATCH),
            )
        )
    return tuple(out)


def _address_entry(item: Any, path: str, ctx: _Context, default_source: str) -> tuple[str, str, str, str, str] | None:
    """An address list entry — a string, or { address, source, label, as_of } — as
    (text, key path of the address, source, label, as_of); None (with a problem) when malformed."""
    pr = ctx.problems
    if isinstance(item, str):
        return item, path, default_source, "", ""
    if isinstance(item, dict):
        _check_keys(item, _ADDRESS_KEYS, path, pr)
        text = _take(item, "address", STRING, path, pr)
        source = _take(item, "source", STRING, path, pr, default_source, nonempty=True)
        label = _take(item, "label", STRING, path, pr, "")
        as_of = _take_date(item, "as_of", path, pr)
        return None if text is None else (text, f"{path}.address", source, label, as_of)
    pr.append(f'{path}: expected an address string or {{ address = "...", source = "..." }}, got {_show(item)}')
    return None


def _parse_address(item: Any, path: str, ctx: _Context, network: str | None, default_source: str) -> EntityAddress | None:
    """One entry of `addresses` (Bitcoin), checked against `network`."""
    entry = _address_entry(item, path, ctx, default_source)
    if entry is None:
        return None
    text, apath, source, label, as_of = entry
    if network is None:
        canonical = normalise_address("bitcoin", text)  # the network is reported as wrong: judge nothing against it
    else:
        try:
            canonical = validate_address(text, network).address
        except InvalidAddress as exc:
            ctx.problems.append(f"{apath}: {_show(text)} is not a valid {network} Bitcoin address ({exc})")
            return None
    return EntityAddress(chain="bitcoin", address=canonical, source=source, learned_by="config", label=label, as_of=as_of)


def _parse_evm_address(item: Any, path: str, ctx: _Context, default_source: str) -> EntityAddress | None:
    """One entry of `ethereum`, EIP-55 checked."""
    from watchers.addresses import validate_evm_address

    entry = _address_entry(item, path, ctx, default_source)
    if entry is None:
        return None
    text, apath, source, label, as_of = entry
    try:
        canonical = validate_evm_address(text)
    except ValueError as exc:
        ctx.problems.append(f"{apath}: {_show(text)} is not a valid Ethereum address ({exc})")
        return None
    return EntityAddress(chain="ethereum", address=canonical, source=source, learned_by="config", label=label, as_of=as_of)


def _parse_profile(t: dict, path: str, ctx: _Context) -> Profile:
    """[entities.profile]: sourced figures and strategy tags."""
    pr = ctx.problems
    _check_keys(t, _PROFILE_KEYS, path, pr)
    return Profile(
        holdings_btc=_take_fact(t, "holdings_btc", path, ctx, at_least=0),
        monthly_production_btc=_take_fact(t, "monthly_production_btc", path, ctx, at_least=0),
        cash_cost_usd=_take_fact(t, "cash_cost_usd", path, ctx, above=0),
        efficiency_j_th=_take_fact(t, "efficiency_j_th", path, ctx, above=0),
        strategy_tags=_take_tags(t, path, pr),
        strategy_source=_take(t, "strategy_source", STRING, path, pr, ""),
    )


def _take_fact(t: dict, key: str, path: str, ctx: _Context, **bounds: float) -> Fact | None:
    """A profile figure: a bare number (sourced to the config file) or { value, source, as_of, note }."""
    if key not in t:
        return None
    value = t[key]
    p = _join(path, key)
    if isinstance(value, dict):
        _check_keys(value, _FACT_KEYS, p, ctx.problems)
        number = _take(value, "value", NUMBER, p, ctx.problems, **bounds)
        source = _take(value, "source", STRING, p, ctx.problems, ctx.origin, nonempty=True)
        as_of = _take_date(value, "as_of", p, ctx.problems)
        note = _take(value, "note", STRING, p, ctx.problems, "")
        quote = _take(value, "quote", STRING, p, ctx.problems, "")
        return None if number is None else Fact(number, source, as_of, note, quote)
    if not _is_number(value):
        want = "a number or { value = ..., source = ..., as_of = ... }"
        ctx.problems.append(f"{p}: expected {want}, got {_show(value)}")
        return None
    number = _take(t, key, NUMBER, path, ctx.problems, **bounds)
    return None if number is None else Fact(number, ctx.origin, "")


def _take_tags(t: dict, path: str, problems: list[str]) -> tuple[str, ...]:
    """`strategy_tags`: distinct non-empty strings."""
    tags = _take(t, "strategy_tags", STRINGS, path, problems, ())
    p = f"{path}.strategy_tags"
    out: list[str] = []
    for i, tag in enumerate(tags):
        if not tag.strip():
            problems.append(f"{p}[{i}]: must not be empty")
        elif tag in out:
            problems.append(f"{p}[{i}]: {_show(tag)} is listed twice")
        else:
            out.append(tag)
    return tuple(out)


def _section(value: Any, name: str, ctx: _Context) -> dict | None:
    if not isinstance(value, dict):
        ctx.problems.append(f"{name}: expected a table ([{name}]), got {_show(value)}")
        return None
    return value


def _parse_classify(value: Any, ctx: _Context) -> Thresholds:
    """[classify]: the classifier's thresholds (monitor.core.classify.Thresholds), each optional."""
    t = _section(value, "classify", ctx)
    if t is None:
        return Thresholds()
    _check_keys(t, _CLASSIFY_KEYS, "classify", ctx.problems)
    defaults = Thresholds()
    kwargs = {}
    for key in _CLASSIFY_KEYS:
        default = getattr(defaults, key)
        kind = INTEGER if isinstance(default, int) and not isinstance(default, bool) else NUMBER
        v = _take(t, key, kind, "classify", ctx.problems, default, above=0)
        if v is not None:
            kwargs[key] = int(v) if kind is INTEGER else v
    try:
        return Thresholds(**kwargs)
    except ValueError as exc:
        ctx.problems.append(f"classify: {exc}")
        return defaults


def _parse_prices(value: Any, ctx: _Context) -> PricesConfig:
    """[prices]: price sources in failover order, the offline CSV, staleness."""
    t = _section(value, "prices", ctx)
    if t is None:
        return PricesConfig()
    pr = ctx.problems
    _check_keys(t, _PRICE_KEYS, "prices", pr)
    sources = _opt(t, "prices", "sources", "prices", pr)
    for i, name in enumerate(sources):
        if name not in PRICE_SOURCES:
            pr.append(f"prices.sources[{i}]: {_show(name)} is not one of {', '.join(PRICE_SOURCES)}")
    csv = _take(t, "csv", STRING, "prices", pr, None, nonempty=True)
    csv_path = None
    if csv is not None:
        csv_path = Path(csv) if Path(csv).is_absolute() else ctx.base_dir / csv
        if not csv_path.is_file():
            pr.append(f"prices.csv: {_show(csv)} is not a readable file")
    return PricesConfig(
        sources=tuple(sources),
        csv=csv_path,
        staleness=_opt(t, "prices", "staleness", "prices", pr),
        refresh_interval=_opt(t, "prices", "refresh_interval", "prices", pr),
    )


def _parse_alerts(value: Any, ctx: _Context) -> AlertsConfig:
    """[alerts] with [[alerts.channels]] and [[alerts.rules]]; rules must name defined channels."""
    t = _section(value, "alerts", ctx)
    if t is None:
        return AlertsConfig()
    pr = ctx.problems
    _check_keys(t, _ALERTS_KEYS, "alerts", pr)
    explorer = _opt(t, "alerts", "explorer_url", "alerts", pr)
    if explorer == "":
        explorer = None
    elif explorer is not None and "{txid}" not in explorer:
        pr.append(f'alerts.explorer_url: {_show(explorer)} must contain {{txid}} (or be "" for no links)')
    channels = _parse_channels(t.get("channels", []), ctx)
    names = {c.name for c in channels}
    rules = _parse_rules(t.get("rules", []), ctx, names)
    dormancy, balance = _parse_watches(t, ctx, names)
    webhook_slack = {c.name for c in channels if c.type == "slack" and "webhook_url" in dict(c.settings)}
    for i, r in enumerate(rules):
        for ch in r.channels:
            if r.mode == "incident" and ch in webhook_slack:
                ctx.warn(
                    f"alerts.rules[{i}]",
                    f"channel {ch!r} is a Slack Incoming Webhook, which cannot thread: each "
                    "incident update arrives as its own message (a bot_token with channel_id threads them)",
                )
    return AlertsConfig(
        dormancy=dormancy,
        balance=balance,
        explorer_url=explorer,
        max_age=_opt(t, "alerts", "max_age", "alerts", pr),
        give_up_after=_opt(t, "alerts", "give_up_after", "alerts", pr),
        retry_base=_opt(t, "alerts", "retry_base", "alerts", pr),
        retry_cap=_opt(t, "alerts", "retry_cap", "alerts", pr),
        dispatch_interval=_opt(t, "alerts", "dispatch_interval", "alerts", pr),
        notify_confirmations=_opt(t, "alerts", "notify_confirmations", "alerts", pr),
        incident_window=_opt(t, "alerts", "incident_window", "alerts", pr),
        group_wait=_opt(t, "alerts", "group_wait", "alerts", pr),
        group_interval=_opt(t, "alerts", "group_interval", "alerts", pr),
        channels=channels,
        rules=rules,
    )


def _parse_channels(value: Any, ctx: _Context) -> tuple[ChannelConfig, ...]:
    out: list[ChannelConfig] = []
    seen: dict[str, str] = {}
    for path, t in _tables(value, "alerts.channels", ctx.problems, section=True):
        pr = ctx.problems
        name = _take(t, "name", STRING, path, pr, nonempty=True)
        type_ = _take(t, "type", STRING, path, pr, choices=CHANNEL_TYPES)
        if name is not None:
            if name in seen:
                pr.append(f"{path}.name: {_show(name)} is already the name of {seen[name]}")
            else:
                seen[name] = path
        if type_ is None:
            continue
        spec = _CHANNEL_SETTINGS[type_]
        _check_keys(t, ("name", "type", "min_interval", *spec), path, pr)
        settings: list[tuple[str, Any]] = []
        for key, (kind, how) in spec.items():
            if key not in t:
                if key in _CHANNEL_REQUIRED[type_]:
                    pr.append(f"{_join(path, key)}: required for a {type_} channel")
                continue
            if how == "plain":
                v = _take(t, key, _SETTING_KINDS[kind], path, pr, None)
            else:
                v = _take_secret(t, key, path, ctx, plain_ok=(how == "either"))
            if v is not None:
                settings.append((key, v))
        if type_ == "email":
            sec = dict(settings).get("security", "starttls")
            if sec not in ("starttls", "tls", "none"):
                pr.append(f"{path}.security: {_show(sec)} is not one of starttls, tls, none")
            elif sec == "none" and "password" in dict(settings):
                pr.append(f'{path}.security: "none" would send the password in clear text; use starttls or tls')
        if type_ == "apprise":
            _check_apprise(dict(settings), path, pr)
        if type_ == "slack":
            given = dict(settings)
            if ("webhook_url" in given) == ("bot_token" in given):
                pr.append(
                    f"{path}: set webhook_url (Incoming Webhook: cannot thread) or bot_token with channel_id "
                    "(chat.postMessage: threads updates), not both or neither"
                )
            elif "bot_token" in given and "channel_id" not in given:
                pr.append(f"{path}.channel_id: required with bot_token")
        min_interval = _take(t, "min_interval", NUMBER, path, pr, None, at_least=0)
        out.append(ChannelConfig(name=name, type=type_, settings=tuple(settings), min_interval=min_interval))
    return tuple(out)


def _check_apprise(settings: dict[str, Any], path: str, pr: list[str]) -> None:
    """An apprise channel's format, and a URL apprise knows (checked at load; the URL is never shown)."""
    from alerts.channels.apprise import apprise_url_problem
    from alerts.render import APPRISE_FORMATS

    fmt = settings.get("format", "markdown")
    if fmt not in APPRISE_FORMATS:
        pr.append(f"{path}.format: {_show(fmt)} is not one of {', '.join(APPRISE_FORMATS)}")
    url = settings.get("url")
    if isinstance(url, Secret):
        problem = apprise_url_problem(url.reveal())
        if problem:
            pr.append(f"{path}.url: {problem}")


def _rule_channels(t: dict, path: str, pr: list[str], channel_names: set[str]) -> tuple[str, ...]:
    channels = _take(t, "channels", STRINGS, path, pr)
    for i, ch in enumerate(channels or ()):
        if ch not in channel_names:
            pr.append(f"{path}.channels[{i}]: {_show(ch)} is not a channel defined in [[alerts.channels]]")
    if channels is not None and not channels:
        pr.append(f"{path}.channels: must name at least one channel")
    return tuple(channels or ())


def _parse_watches(t: dict, ctx: _Context, channel_names: set[str]) -> tuple[tuple[DormancyRule, ...], tuple[BalanceRule, ...]]:
    """[[alerts.dormancy]] and [[alerts.balance]]: conditions on stored data, checked every tick."""
    pr = ctx.problems
    dormancy = []
    for path, d in _tables(t.get("dormancy", []), "alerts.dormancy", pr, section=True):
        _check_keys(d, _DORMANCY_KEYS, path, pr)
        years = _take(d, "min_years", NUMBER, path, pr, None, above=0)
        if years is None and "min_years" not in d:
            pr.append(f"{path}.min_years: required (coins unmoved at least this many years)")
        dormancy.append(
            DormancyRule(
                name=_take(d, "name", STRING, path, pr, path, nonempty=True),
                channels=_rule_channels(d, path, pr, channel_names),
                min_years=years or 1.0,
                min_btc=_take(d, "min_btc", NUMBER, path, pr, 0.0, at_least=0),
                entities=_take(d, "entities", STRINGS, path, pr, ()),
            )
        )
    balance = []
    for path, b in _tables(t.get("balance", []), "alerts.balance", pr, section=True):
        _check_keys(b, _BALANCE_KEYS, path, pr)
        entities = _take(b, "entities", STRINGS, path, pr, ())
        if not entities:
            pr.append(f"{path}.entities: name at least one entity whose balance to watch")
        below = _take(b, "below_btc", NUMBER, path, pr, None, at_least=0)
        drop = _take(b, "drop_pct", NUMBER, path, pr, None, above=0)
        if drop is not None and drop >= 100:
            pr.append(f"{path}.drop_pct: must be below 100, got {_show(drop)}")
        if below is None and drop is None:
            pr.append(f"{path}: set below_btc (a level) and/or drop_pct (a fall within within_days)")
        balance.append(
            BalanceRule(
                name=_take(b, "name", STRING, path, pr, path, nonempty=True),
                channels=_rule_channels(b, path, pr, channel_names),
                entities=tuple(entities),
                below_btc=below,
                drop_pct=drop,
                within_days=_take(b, "within_days", NUMBER, path, pr, 7.0, above=0),
            )
        )
    return tuple(dormancy), tuple(balance)


def _parse_rules(value: Any, ctx: _Context, channel_names: set[str]) -> tuple[Rule, ...]:
    out: list[Rule] = []
    for path, t in _tables(value, "alerts.rules", ctx.problems, section=True):
        pr = ctx.problems
        _check_keys(t, _RULE_KEYS, path, pr)
        name = _take(t, "name", STRING, path, pr, path, nonempty=True)
        channels = _take(t, "channels", STRINGS, path, pr)
        for i, ch in enumerate(channels or ()):
            if ch not in channel_names:
                pr.append(f"{path}.channels[{i}]: {_show(ch)} is not a channel defined in [[alerts.channels]]")
        if channels is not None and not channels:
            pr.append(f"{path}.channels: must name at least one channel")
        kinds = _take(t, "kinds", STRINGS, path, pr, ())
        for i, k in enumerate(kinds):
            if k not in ENTITY_KINDS:
                pr.append(f"{path}.kinds[{i}]: {_show(k)} is not one of {', '.join(ENTITY_KINDS)}")
        verdicts = _take(t, "verdicts", STRINGS, path, pr, DEFAULT_RULE_VERDICTS)
        for i, v in enumerate(verdicts):
            if v not in VERDICTS:
                pr.append(f"{path}.verdicts[{i}]: {_show(v)} is not one of {', '.join(VERDICTS)}")
        out.append(
            Rule(
                name=name,
                channels=tuple(channels or ()),
                entities=_take(t, "entities", STRINGS, path, pr, ()),
                kinds=kinds,
                verdicts=verdicts,
                min_severity=_take(t, "min_severity", STRING, path, pr, "info", choices=SEVERITIES),
                min_usd=_take(t, "min_usd", NUMBER, path, pr, None, at_least=0),
                mode=_take(t, "mode", STRING, path, pr, "every_flow", choices=MODES),
            )
        )
    return tuple(out)


def _parse_daemon(value: Any, ctx: _Context, alerts: AlertsConfig) -> DaemonConfig:
    """[daemon]: HTTP bind (a token is required off loopback), grace, health bound, digest."""
    t = _section(value, "daemon", ctx)
    if t is None:
        return DaemonConfig()
    pr = ctx.problems
    _check_keys(t, _DAEMON_KEYS, "daemon", pr)
    host = _take(t, "host", STRING, "daemon", pr, DEFAULT_HTTP_HOST, nonempty=True)
    port = _opt(t, "daemon", "port", "daemon", pr)
    token = _take_secret(t, "token", "daemon", ctx, plain_ok=False, default=None)
    digest_channels = _take(t, "digest_channels", STRINGS, "daemon", pr, ())
    names = {c.name for c in alerts.channels}
    for i, ch in enumerate(digest_channels):
        if ch not in names:
            pr.append(f"daemon.digest_channels[{i}]: {_show(ch)} is not a channel defined in [[alerts.channels]]")
    digest_hour = _opt(t, "daemon", "digest_hour", "daemon", pr)
    if digest_hour is not None and digest_hour > 23:
        pr.append(f"daemon.digest_hour: {digest_hour} is not an hour (0-23, or -1 to disable)")
    return DaemonConfig(
        host=host,
        port=port,
        token=token if isinstance(token, Secret) else None,
        shutdown_grace=_opt(t, "daemon", "shutdown_grace", "daemon", pr),
        unhealthy_after=_opt(t, "daemon", "unhealthy_after", "daemon", pr),
        digest_hour=digest_hour,
        digest_channels=digest_channels,
    )


def _parse_discovery(value: Any, ctx: _Context) -> DiscoveryConfig:
    """[discovery]: co-spend learning, pool payout following, hop tracing."""
    t = _section(value, "discovery", ctx)
    if t is None:
        return DiscoveryConfig()
    pr = ctx.problems
    _check_keys(t, _DISCOVERY_KEYS, "discovery", pr)
    owners_raw = _take(t, "pool_owners", TABLE, "discovery", pr, dict(DEFAULT_POOL_OWNERS))
    owners = []
    for pool, miner in owners_raw.items():
        if not isinstance(miner, str) or not miner.strip():
            pr.append(f"{_join('discovery.pool_owners', pool)}: expected the name of the miner that owns the pool")
        else:
            owners.append((pool, miner))
    auto = _opt(t, "discovery", "pool_auto_accept_payouts", "discovery", pr)
    hops = _opt(t, "discovery", "trace_max_hops", "discovery", pr)
    branches = _opt(t, "discovery", "trace_max_branches", "discovery", pr)
    floor_share = _opt(t, "discovery", "trace_floor_share", "discovery", pr)
    significant = _opt(t, "discovery", "trace_significant_share", "discovery", pr)
    return DiscoveryConfig(
        cospend=_opt(t, "discovery", "cospend", "discovery", pr),
        pools=_opt(t, "discovery", "pools", "discovery", pr),
        trace=_opt(t, "discovery", "trace", "discovery", pr),
        interval=_opt(t, "discovery", "interval", "discovery", pr),
        pool_owners=tuple(owners),
        pool_min_payouts=_opt(t, "discovery", "pool_min_payouts", "discovery", pr),
        pool_auto_accept_payouts=auto or None,
        trace_max_hops=hops,
        trace_value_floor_btc=_opt(t, "discovery", "trace_value_floor_btc", "discovery", pr),
        trace_floor_share=floor_share,
        trace_max_branches=branches,
        trace_max_age_days=_opt(t, "discovery", "trace_max_age_days", "discovery", pr),
        trace_significant_share=significant,
        provisional=_opt(t, "discovery", "provisional", "discovery", pr),
        provisional_settle_days=_take(
            t, "provisional_settle_days", NUMBER, "discovery", pr, DEFAULT_PROVISIONAL_SETTLE_DAYS, above=0
        ),
    )


def _parse_miners(value: Any, ctx: _Context, sources: tuple[SourceConfig, ...]) -> MinersConfig:
    """[miners]: whether and how often the daemon scans new blocks for the miner view, and from which source."""
    t = _section(value, "miners", ctx)
    if t is None:
        return MinersConfig()
    pr = ctx.problems
    _check_keys(t, _MINERS_KEYS, "miners", pr)
    source = _take(t, "source", STRING, "miners", pr, None, nonempty=True)
    if source is not None:
        src = next((s for s in sources if s.name == source), None)
        if src is None:
            pr.append(f"miners.source: {_show(source)} is not a source defined in [[sources]]")
        elif src.type not in ("esplora", "bitcoind") or src.chain != "bitcoin":
            pr.append(f"miners.source: {_show(source)} must be an esplora or bitcoind source on chain bitcoin")
    return MinersConfig(
        follow=_opt(t, "miners", "follow", "miners", pr),
        interval=_opt(t, "miners", "interval", "miners", pr),
        source=source,
    )


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    """`line N, column M: invalid TOML: <reason>` from tomllib's '<reason> (at line N, column M)'."""
    text = str(exc)
    m = re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", text)
    if m:
        return f"line {m.group(2)}, column {m.group(3)}: invalid TOML: {m.group(1)}"
    m = re.search(r"^(.*) \(at end of document\)$", text)
    if m:
        return f"end of file: invalid TOML: {m.group(1)}"
    return f"invalid TOML: {text}"
