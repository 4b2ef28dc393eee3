"""The shared vocabulary of treasury-monitor: frozen dataclasses, stdlib only.

Every room (`watchers`, `alerts`, `storage`, `monitor`) may import this module and nothing else of
`monitor`. Names follow DESIGN.md: Entity, ChainTx, EntityFlow, Attribution, MarketContext,
Classification, Alert, Delivery, Cursor.

It also holds the exception tree every room raises and the Clock protocol, because the other rooms
may import nothing else of ours. The exception tree (third-party errors are translated into it at the
boundary with `raise X(...) from exc`):

        MonitorError
        ├── ConfigError            config.toml is wrong; carries every problem, each with its key path
        ├── SourceError            a chain or price source failed
        │   ├── TransientError     timeout, connection refused, 5xx: retry later
        │   ├── RateLimitedError   429; `retry_after` seconds when the server said so
        │   └── MalformedError     the answer does not have the documented shape: log, skip, retry later
        ├── DeliveryError          an alert could not be delivered; `retryable` says whether to try again
        └── StorageError           the database could not be opened or written

Amounts are integers in base units (satoshis, wei, token base units) everywhere; floats are used only
for prices and ratios. Times are integer Unix seconds (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

__all__ = [
    "normalise_address",
    "normalise_bitcoin_address",
    "MonitorError",
    "ConfigError",
    "SourceError",
    "TransientError",
    "RateLimitedError",
    "MalformedError",
    "DeliveryError",
    "StorageError",
    "Clock",
    "CHAINS",
    "ENTITY_KINDS",
    "ATTRIBUTION_KINDS",
    "VERDICTS",
    "SEVERITIES",
    "SALE_VERDICTS",
    "SATS_PER_BTC",
    "severity_rank",
    "format_btc",
    "Fact",
    "Profile",
    "EntityAddress",
    "Entity",
    "TxInput",
    "TxOutput",
    "ChainTx",
    "BalanceSnapshot",
    "WatchedUtxo",
    "Cursor",
    "Batch",
    "Attribution",
    "TraceShare",
    "Destination",
    "EntityFlow",
    "FlowHistory",
    "MarketContext",
    "FactUsed",
    "Classification",
    "Alert",
    "Delivery",
]

CHAINS = ("bitcoin", "ethereum")
ENTITY_KINDS = ("miner", "sovereign", "exchange", "otc", "custodian", "other")
#: Attribution kinds of a destination; `entity` means another tracked miner or sovereign.
ATTRIBUTION_KINDS = ("self", "exchange", "otc", "custodian", "entity", "unknown")
VERDICTS = (
    "internal",
    "custody_move",
    "distress_sale",
    "reallocation_sale",
    "balance_sheet_sale",
    "strategic_sale",
    "production_sale",
    "sovereign_sale",
    "unknown_transfer",
)
#: Verdicts that mean coins most likely went to be sold.
SALE_VERDICTS = frozenset(
    {
        "distress_sale",
        "reallocation_sale",
        "balance_sheet_sale",
        "strategic_sale",
        "production_sale",
        "sovereign_sale",
    }
)
SEVERITIES = ("info", "notice", "warning", "critical")
SATS_PER_BTC = 100_000_000


def severity_rank(severity: str) -> int:
    """Position of a severity in `SEVERITIES` (info=0 ... critical=3)."""
    return SEVERITIES.index(severity)


def format_btc(sats: int, decimals: int = 8) -> str:
    """Exact decimal string of a base-unit amount (`150000000` → `'1.50000000'`)."""
    if decimals == 0:
        return str(sats)
    q = Decimal(sats).scaleb(-decimals)
    return f"{q:.{decimals}f}"


# --- errors and time ------------------------------------------------------------------------------


class MonitorError(Exception):
    """Base of every error treasury-monitor raises on purpose."""


class ConfigError(MonitorError):
    """The configuration is invalid; `problems` lists every finding as 'key.path: message'."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class SourceError(MonitorError):
    """A chain or price source could not give a usable answer."""


class TransientError(SourceError):
    """A failure worth retrying: timeout, refused connection, 5xx."""


class RateLimitedError(TransientError):
    """HTTP 429; `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class MalformedError(SourceError):
    """An answer that does not have the documented shape (garbage, truncated JSON, wrong types)."""


class DeliveryError(MonitorError):
    """An alert could not be delivered on a channel."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class StorageError(MonitorError):
    """The database could not be opened, migrated or written."""


class Clock(Protocol):
    """Wall time in Unix seconds and an awaitable sleep; `monitor.clock` has the implementations."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


# --- entities -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """One dated point of a sourced figure: value, as-of date, source and the sentence that states it."""

    value: float
    source: str
    as_of: str  # ISO date (YYYY-MM-DD) the figure describes; "" when the config gave a bare, undated number
    note: str = ""
    quote: str = ""  # the source's sentence stating the figure, verbatim as read


@dataclass(frozen=True)
class Profile:
    """Facts about an entity that put its flows in context; every figure carries its source.

    Each figure is a dated series of Facts: the field holds its newest point and `earlier` the older
    points as (field name, Fact). A judgment uses the point in force at the flow's time (`series`).
    """

    holdings_btc: Fact | None = None
    monthly_production_btc: Fact | None = None
    cash_cost_usd: Fact | None = None  # cash cost per BTC mined
    efficiency_j_th: Fact | None = None  # fleet efficiency, joules per terahash
    strategy_tags: tuple[str, ...] = ()  # e.g. mining_focus, dual_track, ai_shift, convertible_repurchase
    strategy_source: str = ""
    earlier: tuple[tuple[str, Fact], ...] = ()  # older points of the figures above: (field name, Fact)

    def series(self, figure: str) -> tuple[Fact, ...]:
        """Every point of one figure (`holdings_btc`, ...), oldest first; undated points sort first."""
        newest = getattr(self, figure)
        points = [f for name, f in self.earlier if name == figure] + ([newest] if newest is not None else [])
        return tuple(sorted(points, key=lambda f: f.as_of))


@dataclass(frozen=True)
class EntityAddress:
    """One address of an entity, with how it was learned and from what source."""

    chain: str
    address: str
    source: str
    learned_by: str = "config"  # config | registry | import | manual | cospend | pool_payout | change
    label: str = ""
    as_of: str = ""
    evidence: str = ""  # e.g. the txid that proved co-ownership


@dataclass(frozen=True)
class Entity:
    """A treasury holder or a counterparty (exchange, OTC desk, custodian) with its addresses."""

    name: str
    kind: str  # one of ENTITY_KINDS
    addresses: tuple[EntityAddress, ...] = ()
    profile: Profile = field(default_factory=Profile)
    note: str = ""  # e.g. "no public treasury address; add yours in config.toml"
    watch: bool = True  # counterparties are labels only: their own flows are not classified


# --- chain data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TxInput:
    """One spent output: the address it paid (None for non-standard scripts) and its value."""

    address: str | None
    value: int
    prev_txid: str = ""
    prev_vout: int = 0


@dataclass(frozen=True)
class TxOutput:
    """One created output (`n` is its index in the transaction)."""

    address: str | None
    value: int
    n: int = 0


@dataclass(frozen=True)
class ChainTx:
    """One normalised transaction (or, on EVM chains, one native transfer or token Transfer log)."""

    chain: str
    txid: str
    block_height: int | None  # None while unconfirmed
    block_time: int | None  # Unix seconds; for mempool txs the time first seen, when known
    inputs: tuple[TxInput, ...]
    outputs: tuple[TxOutput, ...]
    fee: int
    block_hash: str | None = None
    asset: str = "BTC"
    decimals: int = 8
    is_coinbase: bool = False

    @property
    def is_confirmed(self) -> bool:
        return self.block_height is not None

    @property
    def total_in(self) -> int:
        return sum(i.value for i in self.inputs)

    @property
    def total_out(self) -> int:
        return sum(o.value for o in self.outputs)


@dataclass(frozen=True)
class BalanceSnapshot:
    """An address balance as a source reported it at a time (confirmed and mempool delta)."""

    chain: str
    address: str
    at: int
    confirmed: int
    mempool_delta: int = 0
    tx_count: int = 0
    asset: str = "BTC"


@dataclass(frozen=True)
class WatchedUtxo:
    """An unspent output paying a watched address (block mode keeps this set to see spends in raw blocks)."""

    chain: str
    txid: str
    vout: int
    address: str
    value: int
    height: int | None = None


@dataclass(frozen=True)
class Cursor:
    """Where a source stopped for one key (an address, or `tip`); `state` is JSON owned by the source."""

    source: str
    key: str
    state: str


@dataclass(frozen=True)
class Batch:
    """What one watcher pass returns: new or changed txs and the cursors to store with them.

    `failed` names the keys (addresses) that could not be read this pass; their cursors are absent, so
    they are retried next time. `gone` lists txids that left the chain and the mempool (reorg, RBF).
    """

    source: str
    txs: tuple[ChainTx, ...] = ()
    cursors: tuple[Cursor, ...] = ()
    chain: str = "bitcoin"
    snapshots: tuple[BalanceSnapshot, ...] = ()
    failed: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()
    tip_height: int | None = None
    requests: int = 0  # HTTP/RPC requests this pass made
    utxos_added: tuple[WatchedUtxo, ...] = ()  # block mode: outputs to watched addresses created
    utxos_spent: tuple[tuple[str, int], ...] = ()  # block mode: (txid, vout) of watched outputs spent
    # keys read only up to a per-poll cap (history pages, seeding, blocks behind): polling again continues them
    unfinished: tuple[str, ...] = ()


# --- decisions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribution:
    """Who a destination belongs to: `self`, `exchange:<name>`, ..., or `unknown`."""

    kind: str
    name: str = ""
    path: tuple[str, ...] = ()  # txids of the hops that led there, when traced

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind

    @classmethod
    def parse(cls, text: str) -> Attribution:
        """Inverse of `str()`: `'exchange:Binance'` → Attribution('exchange', 'Binance')."""
        kind, _, name = text.partition(":")
        if kind not in ATTRIBUTION_KINDS:
            raise ValueError(f"unknown attribution kind {kind!r}")
        return cls(kind, name)


UNKNOWN = Attribution("unknown")


@dataclass(frozen=True)
class TraceShare:
    """How much of a traced destination reached one attribution, after how many hops, by which path.

    `attribution` is `exchange:<name>`, `otc:<name>`, `custodian:<name>`, `self`, `entity:<name>` or
    `unknown`; for `unknown`, `note` says why the coins were not followed further: `waiting` (unspent at
    an unattributed address), `below_floor`, `max_hops`, `fan_out`, `gave_up`.
    """

    attribution: str
    value: int
    hops: int
    path: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Destination:
    """One output of an entity's spend that left the entity."""

    address: str | None
    value: int
    n: int = 0
    attribution: Attribution = UNKNOWN
    shares: tuple[TraceShare, ...] = ()  # where hop tracing found this output's coins went (multi-branch)


@dataclass(frozen=True)
class EntityFlow:
    """What one ChainTx did to one entity.

    `spent` is the value of the entity's inputs, `change` what came back to its own addresses,
    `fee_share` its share of the fee (pro rata to inputs), `out` = spent − change − fee_share, and
    `received` what the entity got from outputs it did not fund itself.
    """

    chain: str
    txid: str
    entity: str
    block_height: int | None
    block_time: int | None
    spent: int
    change: int
    received: int
    fee_share: int
    out: int
    destinations: tuple[Destination, ...] = ()
    asset: str = "BTC"
    decimals: int = 8

    @property
    def direction(self) -> str:
        """`out` when value left, `in` when value arrived, `internal` otherwise."""
        if self.out > 0:
            return "out"
        if self.received > 0:
            return "in"
        return "internal"

    @property
    def net(self) -> int:
        """Change of the entity's balance through this tx."""
        return self.received + self.change - self.spent

    @property
    def is_confirmed(self) -> bool:
        return self.block_height is not None


@dataclass(frozen=True)
class FlowHistory:
    """An entity's recent outflows before the one being classified (from storage)."""

    out_30d: int = 0  # base units sent out in the 30 days before, this flow excluded
    count_30d: int = 0
    recent_usd: tuple[float, ...] = ()  # USD sizes of the last transfers, oldest first
    recent_out: tuple[int, ...] = ()  # base-unit sizes of the last transfers, oldest first
    #: Per holdings point: (its as-of date, base units received, base units that left) in the flows seen
    #: after that date and before this flow, so holdings can be rolled forward from the reported figure.
    since: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class MarketContext:
    """Market facts at a time: price, hashprice and how they were obtained."""

    at: int
    btc_usd: float | None = None
    price_at: int | None = None  # time of the price observation used
    price_source: str = ""
    is_price_stale: bool = False
    asset_usd: float | None = None  # USD price of the flow's asset (== btc_usd for BTC)
    difficulty: float | None = None
    height: int | None = None
    subsidy_sat: int | None = None
    avg_fees_sat: int | None = None
    hashprice_usd: float | None = None  # USD per PH/s per day
    context_source: str = ""
    price_granularity: int | None = None  # seconds of the price candle used (3600, 86400)
    price_start: int | None = None  # start of that candle


@dataclass(frozen=True)
class FactUsed:
    """One profile Fact a classification relied on, as used (holdings rolled forward)."""

    figure: str  # holdings_btc | monthly_production_btc | cash_cost_usd | efficiency_j_th
    value: float  # the value used; for holdings the rolled-forward estimate
    as_of: str  # the point's date ("" when undated)
    source: str
    reported: float | None = None  # holdings: the reported figure the estimate started from
    is_later: bool = False  # only points dated after the flow exist; this is the earliest


@dataclass(frozen=True)
class Classification:
    """The verdict on one EntityFlow, with severity and reasons that carry their numbers."""

    chain: str
    txid: str
    entity: str
    verdict: str
    severity: str
    reasons: tuple[str, ...]
    out: int = 0
    asset: str = "BTC"
    usd_value: float | None = None
    btc_usd: float | None = None
    hashprice_usd: float | None = None
    attribution: str = ""  # main destination's attribution, e.g. exchange:Binance
    facts: tuple[FactUsed, ...] = ()  # the profile points in force at the flow's time that it used
    version: int = 1
    status: str = "active"  # active | superseded | retracted
    created_at: int = 0
    id: int | None = None


@dataclass(frozen=True)
class Alert:
    """One delivery-worthy event (new, update, retraction, digest, test) and the channels it goes to."""

    dedup_key: str
    kind: str  # new | update | retraction | digest | test
    channels: tuple[str, ...]
    payload: dict[str, Any]  # the message model; renderers turn it into Slack/email/webhook bodies
    created_at: int
    status: str = "queued"  # queued | delivered | failed
    id: int | None = None


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver one alert on one channel."""

    alert_id: int
    channel: str
    attempt: int
    at: int
    status: str  # ok | retry | failed
    error: str = ""
    next_at: int | None = None


def normalise_bitcoin_address(address: str) -> str:
    """Index key of a Bitcoin address: bech32 is case-insensitive (lower-cased), base58 is not (kept)."""
    a = address.strip()
    low = a.lower()
    if low.startswith(("bc1", "tb1", "bcrt1")):
        return a if low == a else low  # the same object when already canonical: one string per address
    return a


def normalise_address(chain: str, address: str) -> str:
    """Index key of an address on `chain`: Bitcoin as above; EVM hex is case-insensitive (lower-cased)."""
    return normalise_bitcoin_address(address) if chain == "bitcoin" else address.strip().lower()
